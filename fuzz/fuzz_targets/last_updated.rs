//! Fuzz target `last_updated`: the body is `knutepunkt::fuzzing::last_updated`, shared with
//! the corpus replay in the normal test suite (`tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| knutepunkt::fuzzing::last_updated(data));
