//! # Knutepunkt
//!
//! A welfare-technology integration hub. Vendors submit events over gRPC;
//! the hub checks them, maps each to one FHIR R4 resource, stores it durably
//! and serves it to the municipality's EPJ over FHIR REST.
//!
//! ```text
//! vendor gRPC ─► ingest ─► normalize ─► store ─► api (FHIR REST for EPJ)
//!               (check)    (→ FHIR)   (durable, outbox)
//! ```
//!
//! Map of the crate (see ARCHITECTURE.md for the invariants):
//! - [`domain`]: the hub's own event types and national identifiers.
//! - [`ingest`]: the gRPC edge; the only module that knows proto types.
//! - [`normalize`]: event → FHIR JSON, pure, with the code tables.
//! - [`store`]: the store traits (event log, consumers, audit, replay guard)
//!   and the embedded fjall backend (group commit).
//! - [`deliver`]: push workers, escalation; [`retention`]: removes old events.
//! - [`api`]: FHIR R4 REST for EPJ systems (axum).
//! - [`config`]: the config file, environment and flags.
//! - [`server`]: wires it together; `run(config, shutdown)`.
//! - [`auth`]: who may do what (EPJ OAuth2 tokens, admin credential).
//! - [`audit`]: the access log of patient data, served as AuditEvents.
//! - [`backup`]: online backup over the admin API, and its file format.
//! - [`telemetry`]: OpenTelemetry traces over OTLP, one trace per event.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod compact;
pub mod config;
pub mod deliver;
pub mod demo;
pub mod devcerts;
pub mod domain;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod normalize;
pub mod ops_metrics;
pub mod private_files;
pub mod retention;
pub mod server;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod tls;

/// Generated gRPC code for `proto/knutepunkt/v1`. Only `ingest`, the
/// adapters and the tests use it.
pub mod proto {
    pub mod client;
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("knutepunkt.v1");
    }
    /// Descriptor set for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("knutepunkt_descriptor");
}
