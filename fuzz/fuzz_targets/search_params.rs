//! Fuzz target `search_params`: the body is `knutepunkt::fuzzing::search_params`, shared with
//! the corpus replay in the normal test suite (`tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| knutepunkt::fuzzing::search_params(data));
