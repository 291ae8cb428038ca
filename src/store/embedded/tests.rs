//! Unit tests of the embedded backend's own rules; the model-based test
//! (`store/model_test.rs`) covers the traits' contract.
