//! # knutepunkt-adapters
//!
//! Programs that stand on either side of the hub and talk to it over its
//! public interfaces only, so tests and benchmarks exercise the same wire the
//! vendors and EPJ systems use.
//!
//! Map of the crate:
//! - [`conn`]: how an adapter reaches the hub's gRPC ingest (vendor mutual
//!   TLS), shared by `vendor-sim` and `mqtt-gateway`.
//! - [`epj`]: an EPJ import endpoint (binary `epj-adapter`) that receives the
//!   hub's FHIR `transaction` Bundles over HTTPS, with failure switches.
//! - [`kit`]: the conformance kit for vendor developers: a strict local hub
//!   (binary `knutepunkt-mock`) and a scripted scenario (binary
//!   `conformance`) that writes a pass/fail report.
//! - [`fhirgw`]: a FHIR gateway (binary `fhir-gateway`) where home-monitoring
//!   platforms POST Observations that it submits to the hub over gRPC.
//! - [`mqtt`]: the MQTT/SenML device gateway (binary `mqtt-gateway`): broker
//!   → hub events, acked to the broker only after the hub's receipt.
//! - [`signal`] and [`logging`]: how every binary stops and logs.

pub mod conn;
pub mod epj;
pub mod fhirgw;
pub mod kit;
pub mod logging;
pub mod mqtt;
pub mod signal;
