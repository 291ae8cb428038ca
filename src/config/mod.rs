//! Configuration: embedded defaults, then an optional TOML file, then
//! `KNUTEPUNKT_*` environment variables, then command-line flags — each
//! layer overriding the one before. Unknown keys are errors, so a typo in a
//! config file stops the hub instead of being silently ignored.
//!
//! `knutepunkt.example.toml` at the repository root documents every field.
//! Nested fields take `__` in environment variables:
//! `KNUTEPUNKT_STORE__MIN_FREE_BYTES=1073741824`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::Orgnr;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of the embedded store. Example: "/var/lib/knutepunkt".
    pub data_dir: PathBuf,
    /// Where vendors reach the gRPC ingest API. Example: "0.0.0.0:50051".
    pub grpc_addr: SocketAddr,
    /// Where EPJ systems reach the FHIR REST API, plus /healthz, /readyz and
    /// /metrics. Example: "0.0.0.0:8080".
    pub http_addr: SocketAddr,
    /// Public base URL of the HTTP API as EPJ systems see it, used in Bundle
    /// links. Example: "https://knutepunkt.kommune.no". Default: taken from
    /// the request's Host header.
    pub public_url: Option<String>,
    /// Vendor system id used for every gRPC caller until vendor mTLS
    /// identifies callers by certificate. Example: "acme-alarm".
    pub default_vendor: String,
    /// The municipalities this hub serves. Empty: any valid orgnr (logged as
    /// a warning at start-up). Example: [{ orgnr = "958935420", name = "Oslo" }].
    pub municipalities: Vec<Municipality>,
    /// How far ahead of the hub's clock a device time may be, in seconds,
    /// before an event is rejected. Example: 300.
    pub max_future_skew_secs: u64,
    pub store: StoreConfig,
    /// How long events are kept, per data class (hub-wide; a municipality
    /// may override it). Default: kept forever.
    #[serde(default)]
    pub retention: RetentionConfig,
    pub delivery: DeliveryConfig,
    /// TLS for the gRPC and HTTP listeners. Required unless `insecure_dev`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Vendor systems and their agreements. A gRPC caller is identified by
    /// its client certificate and may submit only for its municipalities.
    #[serde(default)]
    pub vendors: Vec<VendorConfig>,
    /// Where the vendor id is read from in a client certificate: "san_uri"
    /// (a SAN URI `urn:knutepunkt:vendor:<id>`) or "cn" (the subject CN).
    #[serde(default)]
    pub vendor_identity: VendorIdentity,
    /// Development only: plain gRPC and HTTP, no client certificates, every
    /// gRPC caller is `default_vendor`, no EPJ tokens. Logged loudly. Never
    /// in production. Example: false.
    #[serde(default)]
    pub insecure_dev: bool,
    /// Where the admin API (dead letters, destinations) listens. Keep it on
    /// loopback. Example: "127.0.0.1:8081".
    pub admin_addr: SocketAddr,
    /// "text" for people, "json" for log collectors.
    pub log_format: LogFormat,
    // --- security (src/auth/config.rs) ---
    #[serde(default)]
    pub auth: crate::auth::config::AuthConfig,
    #[serde(default)]
    pub admin: crate::auth::config::AdminConfig,
    #[serde(default)]
    pub audit: crate::auth::config::AuditConfig,
    /// OpenTelemetry traces (off by default).
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Municipality {
    /// 9-digit organisation number. Example: "958935420".
    pub orgnr: String,
    /// Name for logs and the admin view. Example: "Oslo kommune".
    #[serde(default)]
    pub name: String,
    /// Where this municipality's events go. Each destination reads every
    /// event of its municipality stored after it was first configured.
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// This municipality's retention; a field given here replaces the
    /// hub-wide `[retention]` one for its data. Example: { notes_days = 365 }.
    #[serde(default)]
    pub retention: RetentionConfig,
}

/// Days an event is kept after it was received, per data class. Left out:
/// kept forever. An event past its retention leaves the log, every search
/// and the idempotency keys, unless a destination has not yet settled it
/// (delivered, dead-lettered and discarded): then it is kept and counted in
/// `knutepunkt_retention_held`. Must be at least
/// `store.idempotency_window_days`, so that a resend inside the window is
/// still recognised.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Alarms (Communication with category alert). Example: 365.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarms_days: Option<u64>,
    /// Notes (other Communications). Example: 365.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes_days: Option<u64>,
    /// Measurements (Observations). Example: 90.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurements_days: Option<u64>,
}

impl RetentionConfig {
    /// `[alarms, notes, measurements]` in days, in the order of
    /// [`crate::store::DataClass`].
    fn days(&self) -> [Option<u64>; 3] {
        [self.alarms_days, self.notes_days, self.measurements_days]
    }

    /// Each field of `self`, or `base`'s where `self` has none.
    fn over(&self, base: &RetentionConfig) -> RetentionConfig {
        RetentionConfig {
            alarms_days: self.alarms_days.or(base.alarms_days),
            notes_days: self.notes_days.or(base.notes_days),
            measurements_days: self.measurements_days.or(base.measurements_days),
        }
    }
}

/// Certificates and keys for TLS (rustls, TLS 1.2 and 1.3 only). The files
/// are read again on SIGHUP and when they change, without dropping
/// connections.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The hub's certificate chain, PEM. Example: "/etc/knutepunkt/tls/server.pem".
    pub cert_file: PathBuf,
    /// The hub's private key, PEM (PKCS#8, PKCS#1 or SEC1). Example: "/etc/knutepunkt/tls/server.key".
    pub key_file: PathBuf,
    /// CA(s) whose client certificates identify vendors on gRPC, PEM.
    /// Example: "/etc/knutepunkt/tls/vendor-ca.pem".
    pub vendor_ca_file: PathBuf,
    /// TLS handshakes in progress at once, per listener; a connection over
    /// the cap is closed at once and counted in
    /// `knutepunkt_tls_handshakes_refused_total`. Example: 256.
    #[serde(default = "TlsConfig::default_max_handshakes")]
    pub max_handshakes: usize,
    /// Seconds a client gets to finish its handshake. Example: 10.
    #[serde(default = "TlsConfig::default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
}

impl TlsConfig {
    pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
    pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;

    fn default_max_handshakes() -> usize {
        Self::DEFAULT_MAX_HANDSHAKES
    }

    fn default_handshake_timeout_secs() -> u64 {
        Self::DEFAULT_HANDSHAKE_TIMEOUT_SECS
    }

    /// The certificate files with the default handshake limits.
    pub fn files(cert_file: PathBuf, key_file: PathBuf, vendor_ca_file: PathBuf) -> TlsConfig {
        TlsConfig {
            cert_file,
            key_file,
            vendor_ca_file,
            max_handshakes: Self::DEFAULT_MAX_HANDSHAKES,
            handshake_timeout_secs: Self::DEFAULT_HANDSHAKE_TIMEOUT_SECS,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VendorIdentity {
    #[default]
    SanUri,
    Cn,
}

/// One vendor system and what its agreement allows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VendorConfig {
    /// The vendor system id, as in its certificate, a-z, 0-9 and '-'.
    /// Example: "acme-alarm".
    pub id: String,
    /// Organisation numbers of the municipalities it has an agreement with.
    /// Example: ["958935420"].
    pub municipalities: Vec<String>,
    /// Largest event it may send, bytes. Example: 65536.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most SubmitStream calls open at once. Example: 16.
    #[serde(default = "defaults::max_streams")]
    pub max_streams: u32,
    /// Sustained events per second (token bucket). Example: 2000.
    #[serde(default = "defaults::rate_per_sec")]
    pub rate_per_sec: u32,
    /// Burst size of the token bucket. Example: 4000.
    #[serde(default = "defaults::burst")]
    pub burst: u32,
}

/// One EPJ system (or response centre) that receives events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Unique name across the hub, a-z, 0-9 and '-'. It keys the
    /// destination's queue: renaming it starts an empty queue.
    /// Example: "oslo-epj".
    pub name: String,
    /// "push": the hub POSTs FHIR transaction Bundles to `url`.
    /// "pull": the EPJ fetches with `$pending` and answers with `$confirm`.
    pub kind: DestinationKind,
    /// Push only: the FHIR base the Bundles are POSTed to.
    /// Example: "https://epj.kommune.no/fhir".
    #[serde(default)]
    pub url: Option<String>,
    /// Push only: PEM file with an extra CA to trust for `url` (e.g. a
    /// municipality's own CA). Example: "/etc/knutepunkt/epj-ca.pem".
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Push only: most entries in one Bundle while a backlog drains (one
    /// event per Bundle, without waiting, when there is no backlog). Example: 100.
    #[serde(default = "defaults::max_batch")]
    pub max_batch: usize,
    /// Push only: most events per second while a backlog drains. Example: 5000.
    #[serde(default = "defaults::max_rate")]
    pub max_rate: u32,
    /// Push only: time allowed for one request, ms. Example: 10000.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Push only: first retry delay, ms; doubles per failure, with full jitter. Example: 200.
    #[serde(default = "defaults::backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// Push only: longest retry delay, ms. Example: 60000.
    #[serde(default = "defaults::backoff_cap_ms")]
    pub backoff_cap_ms: u64,
    /// Push only: consecutive failures that open the circuit breaker. Example: 5.
    #[serde(default = "defaults::breaker_failures")]
    pub breaker_failures: u32,
    /// Push only: how long an open breaker waits before one probe request, s. Example: 30.
    #[serde(default = "defaults::breaker_open_secs")]
    pub breaker_open_secs: u64,
    /// Pull only: how long `$pending` hands an item to the consumer before
    /// offering it again when it is not confirmed, s. Example: 60.
    #[serde(default = "defaults::lease_secs")]
    pub lease_secs: u64,
    /// Name of another destination that gets RED/YELLOW alarms this one has
    /// not delivered by their deadline (e.g. the response centre). Example: "oslo-responssenter".
    #[serde(default)]
    pub escalate_to: Option<String>,
    /// Receives only alarms escalated to it by other destinations, not every
    /// event of the municipality (e.g. a response centre). Example: true.
    #[serde(default)]
    pub escalation_only: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Push,
    Pull,
}

/// Delivery deadlines for time-critical alarms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// A RED alarm not delivered this many seconds after it was received is
    /// escalated. Example: 30.
    pub deadline_red_secs: u64,
    /// The same for YELLOW alarms. Example: 300.
    pub deadline_yellow_secs: u64,
}

mod defaults {
    pub fn max_message_bytes() -> usize {
        64 * 1024
    }
    pub fn max_streams() -> u32 {
        16
    }
    pub fn rate_per_sec() -> u32 {
        20_000
    }
    pub fn burst() -> u32 {
        40_000
    }
    pub fn max_batch() -> usize {
        100
    }
    pub fn max_rate() -> u32 {
        5000
    }
    pub fn timeout_ms() -> u64 {
        10_000
    }
    pub fn backoff_base_ms() -> u64 {
        200
    }
    pub fn backoff_cap_ms() -> u64 {
        60_000
    }
    pub fn breaker_failures() -> u32 {
        5
    }
    pub fn breaker_open_secs() -> u64 {
        30
    }
    pub fn lease_secs() -> u64 {
        60
    }
    pub fn idempotency_window_days() -> u64 {
        30
    }
    pub fn pool_size() -> usize {
        16
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Free disk kept in reserve; below it events are refused with
    /// RESOURCE_EXHAUSTED until space is freed. Example: 268435456.
    pub min_free_bytes: u64,
    /// Block cache of the storage engine (fjall), bytes. Bounds most of the
    /// hub's memory beyond its fixed working set. Example: 67108864.
    pub cache_bytes: u64,
    /// Most events written and synced together (group commit). Example: 256.
    pub max_batch: usize,
    /// Days a vendor's `event_id` is remembered: a resend within them is a
    /// DUPLICATE (or ALREADY_EXISTS with other content); after them it is
    /// stored as a new event. Example: 30.
    #[serde(default = "defaults::idempotency_window_days")]
    pub idempotency_window_days: u64,
    /// Where events are kept: "embedded" (fjall in `data_dir`, one hub) or
    /// "postgres" (several hubs on one PostgreSQL; `url` and `pool_size`).
    #[serde(default)]
    pub backend: StoreBackend,
    /// PostgreSQL connection string (backend "postgres"). Example:
    /// "postgres://knutepunkt@db.internal:5432/knutepunkt". A password is
    /// better given in `KNUTEPUNKT_STORE__URL` or a pgpass file than here.
    #[serde(default)]
    pub url: Option<String>,
    /// Connections to PostgreSQL this hub keeps open at most. Example: 16.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// This hub's name among the hubs sharing one PostgreSQL (lease rows).
    /// A hub that starts again under the same name forgets the `$pending`
    /// leases it handed out. Default: a new random name at each start.
    /// Example: "hub-1".
    #[serde(default)]
    pub hub_id: Option<String>,
    /// CA certificate (PEM) that signed PostgreSQL's server certificate.
    /// With it the hub requires TLS to PostgreSQL and verifies the server's
    /// certificate and the host name in `url`; without it, plain text
    /// (meant for a database on the same machine). Example:
    /// "/etc/knutepunkt/pg-ca.pem".
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Embedded,
    Postgres,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./knutepunkt-data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            default_vendor: "demo-vendor".into(),
            municipalities: Vec::new(),
            max_future_skew_secs: 300,
            store: StoreConfig {
                min_free_bytes: 128 * 1024 * 1024,
                cache_bytes: 64 * 1024 * 1024,
                max_batch: 256,
                idempotency_window_days: defaults::idempotency_window_days(),
                backend: StoreBackend::Embedded,
                url: None,
                pool_size: defaults::pool_size(),
                hub_id: None,
                ca_file: None,
            },
            retention: RetentionConfig::default(),
            delivery: DeliveryConfig {
                deadline_red_secs: 30,
                deadline_yellow_secs: 300,
            },
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            tls: None,
            vendors: Vec::new(),
            vendor_identity: VendorIdentity::SanUri,
            insecure_dev: false,
            log_format: LogFormat::Text,
            auth: Default::default(),
            admin: Default::default(),
            audit: Default::default(),
            telemetry: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_dev: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Defaults ← `file` (if given) ← environment ← `flags`.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist; see knutepunkt.example.toml",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        let cfg: Config = fig
            .merge(Env::prefixed("KNUTEPUNKT_").split("__"))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Defaults ← the TOML `text`, checked: `load` without the environment
    /// and flags (used by the config fuzz target).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Embedded defaults for the demo and tests: loopback, any free port,
    /// insecure dev mode (callers that want TLS set `tls` and clear it).
    pub fn for_dev(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            insecure_dev: true,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        }
    }
}

mod options;
mod validate;

#[cfg(test)]
mod tests;
