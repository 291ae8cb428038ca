//! Fuzz target `ingest_event`: the body is `knutepunkt::fuzzing::ingest_event`, shared with
//! the corpus replay in the normal test suite (`tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| knutepunkt::fuzzing::ingest_event(data));
