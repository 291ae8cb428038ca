//! Fuzz target `token_assertion`: the body is `knutepunkt::fuzzing::token_assertion`, shared with
//! the corpus replay in the normal test suite (`tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| knutepunkt::fuzzing::token_assertion(data));
