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
    /// "text" for people, "json" for log collectors.
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Municipality {
    /// 9-digit organisation number. Example: "958935420".
    pub orgnr: String,
    /// Name for logs and the admin view. Example: "Oslo kommune".
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Free disk kept in reserve; below it events are refused with
    /// RESOURCE_EXHAUSTED until space is freed. Example: 268435456.
    pub min_free_bytes: u64,
    /// sled page cache in bytes. Example: 67108864.
    pub cache_bytes: u64,
    /// Most events written and synced together (group commit). Example: 256.
    pub max_batch: usize,
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
            },
            log_format: LogFormat::Text,
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

    /// Embedded defaults for the demo and tests: loopback, any free port.
    pub fn for_dev(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
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
        if self.store.max_batch == 0 {
            return Err(ConfigError::Invalid(
                "store.max_batch must be at least 1".into(),
            ));
        }
        Ok(())
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
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "grpc_addr = \"127.0.0.1:1111\"\n").unwrap_or_else(|e| panic!("{e}"));
        let flags = Overrides {
            grpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 2222))),
            ..Overrides::default()
        };
        let cfg = Config::load(Some(&f), &flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.grpc_addr.port(), 2222);
    }
}
