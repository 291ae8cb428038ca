//! Test harness
pub mod fhir_validator;
