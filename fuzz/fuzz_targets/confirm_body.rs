//! Fuzz target `confirm_body`: the body is `knutepunkt::fuzzing::confirm_body`, shared with
//! the corpus replay in the normal test suite (`tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| knutepunkt::fuzzing::confirm_body(data));
