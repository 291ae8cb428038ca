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

    /// Checks what types alone cannot, with a message saying what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.served_municipalities()?;
        let v = &self.default_vendor;
        if v.is_empty()
            || v.len() > 64
            || !v
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::Invalid(format!(
                "default_vendor {v:?}: use 1-64 characters of a-z, 0-9 and '-'"
            )));
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "public_url {u:?}: must start with http:// or https://"
            )));
        }
        self.validate_destinations()?;
        self.validate_security()?;
        crate::auth::config::validate(self)?;
        if self.store.max_batch == 0 {
            return Err(ConfigError::Invalid(
                "store.max_batch must be at least 1".into(),
            ));
        }
        self.validate_postgres()?;
        self.validate_retention()
    }

    fn validate_retention(&self) -> Result<(), ConfigError> {
        let window = self.store.idempotency_window_days;
        if window == 0 || window > 36_500 {
            return Err(ConfigError::Invalid(format!(
                "store.idempotency_window_days = {window}: use 1-36500"
            )));
        }
        let names = ["alarms_days", "notes_days", "measurements_days"];
        let check = |section: String, r: &RetentionConfig| {
            for (name, days) in names.iter().zip(r.days()) {
                match days {
                    Some(d) if d > 36_500 => {
                        return Err(ConfigError::Invalid(format!(
                            "{section}.{name} = {d}: use at most 36500 days, or leave it out to keep events forever"
                        )));
                    }
                    Some(d) if d < window => {
                        return Err(ConfigError::Invalid(format!(
                            "{section}.{name} = {d} is shorter than store.idempotency_window_days = {window}: a resend after {d} days would be stored and delivered again; raise it or shorten the window"
                        )));
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        check("retention".into(), &self.retention)?;
        for m in &self.municipalities {
            check(
                format!("municipalities.{}.retention", m.orgnr),
                &m.retention,
            )?;
        }
        Ok(())
    }

    /// The retention policy the store applies, in microseconds.
    pub fn retention_policy(&self) -> crate::store::RetentionPolicy {
        let us = |days: [Option<u64>; 3]| days.map(|d| d.map(|d| d.saturating_mul(86_400_000_000)));
        crate::store::RetentionPolicy {
            default: us(self.retention.days()),
            per_municipality: self
                .municipalities
                .iter()
                .filter_map(|m| {
                    let org = Orgnr::parse(&m.orgnr).ok()?;
                    Some((org, us(m.retention.over(&self.retention).days())))
                })
                .collect(),
        }
    }

    /// The store's options from `[store]`.
    pub fn store_options(&self) -> crate::store::embedded::EmbeddedOptions {
        crate::store::embedded::EmbeddedOptions {
            max_batch: self.store.max_batch,
            min_free_bytes: self.store.min_free_bytes,
            cache_bytes: self.store.cache_bytes,
            idempotency_window_us: self
                .store
                .idempotency_window_days
                .saturating_mul(86_400_000_000),
            ..crate::store::embedded::EmbeddedOptions::default()
        }
    }

    fn validate_postgres(&self) -> Result<(), ConfigError> {
        if self.store.backend != StoreBackend::Postgres {
            return Ok(());
        }
        let Some(url) = self.store.url.as_deref().filter(|u| !u.is_empty()) else {
            return Err(ConfigError::Invalid(
                "store.backend = \"postgres\" needs store.url, e.g. \"postgres://knutepunkt@db.internal:5432/knutepunkt\"".into(),
            ));
        };
        if let Err(e) = url.parse::<tokio_postgres::Config>() {
            return Err(ConfigError::Invalid(format!(
                "store.url is not a PostgreSQL connection string ({e}); use postgres://user@host:port/database"
            )));
        }
        if !(1..=1000).contains(&self.store.pool_size) {
            return Err(ConfigError::Invalid(format!(
                "store.pool_size = {}: use 1-1000",
                self.store.pool_size
            )));
        }
        Ok(())
    }

    /// The PostgreSQL store's options from `[store]` (backend "postgres").
    pub fn postgres_options(&self) -> crate::store::postgres::PostgresOptions {
        let defaults = crate::store::postgres::PostgresOptions::default();
        crate::store::postgres::PostgresOptions {
            url: self.store.url.clone().unwrap_or_default(),
            pool_size: self.store.pool_size,
            schema: None,
            hub_id: self.store.hub_id.clone().unwrap_or(defaults.hub_id),
            max_batch: self.store.max_batch,
            idempotency_window_us: self
                .store
                .idempotency_window_days
                .saturating_mul(86_400_000_000),
            queue_depth: defaults.queue_depth,
            ca_file: self.store.ca_file.clone(),
        }
    }

    /// One consumer per configured destination, for the store.
    pub fn consumer_specs(&self) -> Vec<crate::store::ConsumerSpec> {
        let us = |secs: u64| secs.saturating_mul(1_000_000);
        self.destinations()
            .into_iter()
            .map(|(org, d)| crate::store::ConsumerSpec {
                name: d.name,
                municipality: org,
                escalation_only: d.escalation_only,
                escalate_to: d.escalate_to,
                red_deadline_us: us(self.delivery.deadline_red_secs),
                yellow_deadline_us: us(self.delivery.deadline_yellow_secs),
            })
            .collect()
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        if self.tls.is_none() && !self.insecure_dev {
            return Err(ConfigError::Invalid(
                "no [tls] section: configure tls.cert_file, tls.key_file and tls.vendor_ca_file (`knutepunkt dev-certs` makes a set for testing), or run with --insecure-dev on a development machine".into(),
            ));
        }
        let mut ids = BTreeSet::new();
        for v in &self.vendors {
            if v.id.is_empty()
                || v.id.len() > 64
                || !v
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(ConfigError::Invalid(format!(
                    "vendors: id {:?}: use 1-64 characters of a-z, 0-9 and '-'",
                    v.id
                )));
            }
            if !ids.insert(v.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "vendors: id {:?} is listed twice",
                    v.id
                )));
            }
            for m in &v.municipalities {
                Orgnr::parse(m).map_err(|e| {
                    ConfigError::Invalid(format!("vendors.{}: municipality {m:?} {e}", v.id))
                })?;
            }
            if v.rate_per_sec == 0 || v.burst == 0 || v.max_streams == 0 || v.max_message_bytes == 0
            {
                return Err(ConfigError::Invalid(format!(
                    "vendors.{}: rate_per_sec, burst, max_streams and max_message_bytes must be at least 1",
                    v.id
                )));
            }
        }
        Ok(())
    }

    fn validate_destinations(&self) -> Result<(), ConfigError> {
        let bad = |d: &Destination, why: &str| {
            Err(ConfigError::Invalid(format!(
                "destination {:?}: {why}",
                d.name
            )))
        };
        let all: Vec<&Destination> = self
            .municipalities
            .iter()
            .flat_map(|m| &m.destinations)
            .collect();
        let mut names = BTreeSet::new();
        for d in &all {
            if d.name.is_empty()
                || d.name.len() > 64
                || !d
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return bad(d, "name: use 1-64 characters of a-z, 0-9 and '-'");
            }
            if !names.insert(d.name.as_str()) {
                return bad(d, "name is used twice; names must be unique across the hub");
            }
            match (d.kind, &d.url) {
                (DestinationKind::Push, None) => return bad(d, "kind = \"push\" needs url"),
                (DestinationKind::Push, Some(u))
                    if !(u.starts_with("https://") || u.starts_with("http://")) =>
                {
                    return bad(
                        d,
                        "url must start with https:// (or http:// on loopback for tests)",
                    );
                }
                (DestinationKind::Pull, Some(_)) => return bad(d, "kind = \"pull\" takes no url"),
                _ => {}
            }
            if d.max_batch == 0 || d.max_rate == 0 || d.breaker_failures == 0 || d.lease_secs == 0 {
                return bad(
                    d,
                    "max_batch, max_rate, breaker_failures and lease_secs must be at least 1",
                );
            }
            if d.backoff_base_ms == 0 || d.backoff_cap_ms < d.backoff_base_ms {
                return bad(
                    d,
                    "backoff_base_ms must be at least 1 and at most backoff_cap_ms",
                );
            }
        }
        for d in &all {
            if let Some(e) = &d.escalate_to {
                if e == &d.name {
                    return bad(d, "escalate_to names the destination itself");
                }
                if !names.contains(e.as_str()) {
                    return bad(d, "escalate_to names no configured destination");
                }
            }
        }
        Ok(())
    }

    /// Every configured destination with the orgnr it belongs to.
    pub fn destinations(&self) -> Vec<(Orgnr, Destination)> {
        self.municipalities
            .iter()
            .filter_map(|m| Orgnr::parse(&m.orgnr).ok().map(|o| (o, m)))
            .flat_map(|(o, m)| m.destinations.iter().map(move |d| (o, d.clone())))
            .collect()
    }

    /// The configured municipalities, or `None` when any orgnr is served.
    pub fn served_municipalities(&self) -> Result<Option<BTreeSet<Orgnr>>, ConfigError> {
        if self.municipalities.is_empty() {
            return Ok(None);
        }
        self.municipalities
            .iter()
            .map(|m| {
                Orgnr::parse(&m.orgnr).map_err(|e| {
                    ConfigError::Invalid(format!("municipalities: orgnr {:?} {e}", m.orgnr))
                })
            })
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("knutepunkt.example.toml");
        let cfg = Config::load(Some(&path), &Overrides::default());
        assert!(cfg.is_ok(), "{cfg:?}");
    }

    #[test]
    fn postgres_backend_needs_a_url() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("knutepunkt.example.toml");
        let Ok(mut cfg) = Config::load(Some(&path), &Overrides::default()) else {
            panic!("example config does not load");
        };
        assert_eq!(cfg.store.backend, StoreBackend::Embedded, "default");
        cfg.store.backend = StoreBackend::Postgres;
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("store.url"), "{err}");
        cfg.store.url = Some("postgres://knutepunkt@db.internal:5432/knutepunkt".into());
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.postgres_options().pool_size, 16);
        cfg.store.pool_size = 0;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn unknown_keys_and_bad_orgnr_are_rejected() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "data_dirr = \"/x\"\n").unwrap_or_else(|e| panic!("{e}"));
        let err = Config::load(Some(&f), &Overrides::default());
        assert!(format!("{err:?}").contains("data_dirr"), "{err:?}");
        std::fs::write(&f, "[[municipalities]]\norgnr = \"123456789\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(Config::load(Some(&f), &Overrides::default()).is_err());
    }

    #[test]
    fn retention_per_municipality_overrides_the_hub_wide_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("c.toml");
        let toml = "insecure_dev = true\n\
            [retention]\nmeasurements_days = 90\nnotes_days = 365\n\
            [[municipalities]]\norgnr = \"958935420\"\n\
            [municipalities.retention]\nmeasurements_days = 30\n\
            [[municipalities]]\norgnr = \"964338531\"\n";
        std::fs::write(&f, toml).unwrap_or_else(|e| panic!("{e}"));
        let cfg = Config::load(Some(&f), &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        let p = cfg.retention_policy();
        let day = 86_400_000_000u64;
        let oslo = Orgnr::parse("958935420").unwrap_or_else(|e| panic!("{e}"));
        let bergen = Orgnr::parse("964338531").unwrap_or_else(|e| panic!("{e}"));
        let other = Orgnr::parse("974760673").unwrap_or_else(|e| panic!("{e}"));
        use crate::store::DataClass::{Alarm, Measurement, Note};
        assert_eq!(p.keep_us(oslo, Measurement), Some(30 * day));
        assert_eq!(p.keep_us(oslo, Note), Some(365 * day), "inherited");
        assert_eq!(p.keep_us(oslo, Alarm), None, "kept forever");
        assert_eq!(p.keep_us(bergen, Measurement), Some(90 * day));
        assert_eq!(p.keep_us(other, Note), Some(365 * day));
        assert_eq!(cfg.store.idempotency_window_days, 30, "default");

        // Shorter than the idempotency window: refused, saying why.
        std::fs::write(&f, "insecure_dev = true\n[retention]\nalarms_days = 7\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = format!("{:?}", Config::load(Some(&f), &Overrides::default()));
        assert!(err.contains("idempotency_window_days"), "{err}");
        std::fs::write(&f, "insecure_dev = true\n[retention]\nalarm_days = 70\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = format!("{:?}", Config::load(Some(&f), &Overrides::default()));
        assert!(err.contains("alarm_days"), "unknown key refused: {err}");
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "grpc_addr = \"127.0.0.1:1111\"\n").unwrap_or_else(|e| panic!("{e}"));
        let flags = Overrides {
            grpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 2222))),
            insecure_dev: Some(true),
            ..Overrides::default()
        };
        let cfg = Config::load(Some(&f), &flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.grpc_addr.port(), 2222);
    }
}
