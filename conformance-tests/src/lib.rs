//! Black-box conformance tests for Knutepunkt: the tests in `tests/` start
//! the real binary through [`harness`], talk gRPC and HTTP to it, kill it and
//! restart it.

pub mod harness;
