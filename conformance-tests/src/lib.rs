//! Black-box conformance tests for Knutepunkt: the tests in `tests/` start
//! the real binary through [`harness`], talk gRPC and HTTP to it, kill it and
//! restart it; [`fhir_validator`] checks FHIR output with an independent
//! validator; [`mqtt`] drives the MQTT gateway against the real broker;
//! [`pg`] and [`pgserver`] give hubs PostgreSQL (the shared test database,
//! or a private server a test may crash).

pub mod buf;
pub mod cache;
pub mod fhir_validator;
pub mod fhirgw;
pub mod harness;
pub mod mqtt;
pub mod pg;
pub mod pgserver;
pub mod promtool;
