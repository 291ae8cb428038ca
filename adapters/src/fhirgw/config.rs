//! The gateway's configuration file (TOML): its TLS identity, the CA that
//! platforms' client certificates must chain to, the hub to submit to, and
//! per platform the municipalities it may post for and the vendor
//! certificate it submits with. Unknown keys are refused, so a typo is an
//! error at start, not a silently ignored setting.
//!
//! ```toml
//! listen = "0.0.0.0:8445"          # optional; --listen overrides
//!
//! [tls]
//! cert_file = "/etc/fhir-gateway/server.pem"
//! key_file = "/etc/fhir-gateway/server.key"
//! client_ca_file = "/etc/fhir-gateway/platform-ca.pem"
//!
//! [hub]
//! addr = "knutepunkt:50051"
//! server_name = "knutepunkt.kommune.no"
//! ca_file = "/etc/fhir-gateway/hub-ca.pem"
//!
//! [[platforms]]
//! id = "acme-homecare"             # SAN URI urn:knutepunkt:vendor:acme-homecare
//! municipalities = ["958935420"]
//! hub_cert_file = "/etc/fhir-gateway/vendor-acme-homecare.pem"
//! hub_key_file = "/etc/fhir-gateway/vendor-acme-homecare.key"
//!
//! # A platform without a client certificate authenticates with
//! # private_key_jwt at POST /oauth/token (needs public_url).
//! [[platforms]]
//! id = "nordic-rpm"
//! municipalities = ["958935420"]
//! jwk_file = "/etc/fhir-gateway/nordic-rpm.jwk.json"
//! hub_cert_file = "/etc/fhir-gateway/vendor-nordic-rpm.pem"
//! hub_key_file = "/etc/fhir-gateway/vendor-nordic-rpm.key"
//! ```
//!
//! With `public_url = "https://gw.kommune.no:8445"` at the top level, the
//! token URL (the `aud` of assertions) is `https://gw.kommune.no:8445/oauth/token`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use knutepunkt::domain::Orgnr;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on. Example: "0.0.0.0:8445". Default 127.0.0.1:8445.
    pub listen: Option<SocketAddr>,
    /// Largest request body in bytes. Default 4 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Most entries in one Bundle. Default 500.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// The base URL platforms reach the gateway at, without a trailing
    /// slash. Needed when a platform has a `jwk_file`: the token URL, the
    /// exact `aud` of its assertions, is this + "/oauth/token".
    /// Example: "https://gw.kommune.no:8445".
    pub public_url: Option<String>,
    /// PKCS#8 PEM EC P-256 key that signs access tokens. Without it a key is
    /// generated per run (tokens then end with the process; platforms fetch
    /// new ones).
    pub signing_key_file: Option<PathBuf>,
    pub tls: TlsSection,
    pub hub: HubSection,
    /// The platforms that may post, at least one.
    pub platforms: Vec<PlatformConfig>,
}

fn default_max_body() -> usize {
    4 * 1024 * 1024
}

fn default_max_entries() -> usize {
    500
}

/// The gateway's own TLS identity and whom it lets in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate chain, PEM. Example: "/etc/fhir-gateway/server.pem".
    pub cert_file: PathBuf,
    /// Private key, PEM. Example: "/etc/fhir-gateway/server.key".
    pub key_file: PathBuf,
    /// CA(s), PEM, that platforms' client certificates must chain to.
    /// Example: "/etc/fhir-gateway/platform-ca.pem".
    pub client_ca_file: PathBuf,
}

/// Where the hub's gRPC ingest is and how to trust it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// host:port of the hub's gRPC listener. Example: "127.0.0.1:50051".
    pub addr: String,
    /// The name the hub's certificate is checked against. Default "localhost".
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// CA(s), PEM, the hub's server certificate must chain to.
    pub ca_file: PathBuf,
}

fn default_server_name() -> String {
    "localhost".into()
}

/// One home-monitoring platform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// The platform id in its client certificate: SAN URI
    /// `urn:knutepunkt:vendor:<id>` (as `knutepunkt dev-certs` writes it).
    pub id: String,
    /// Organisation numbers it may post for. Example: ["958935420"].
    pub municipalities: Vec<String>,
    /// The vendor client certificate the gateway presents to the hub for
    /// this platform, PEM.
    pub hub_cert_file: PathBuf,
    /// Its private key, PEM.
    pub hub_key_file: PathBuf,
    /// Its public key as a JWK (EC P-256 for ES256, or RSA for RS256), for
    /// `private_key_jwt` at `POST /oauth/token` instead of a client
    /// certificate. Example: "/etc/fhir-gateway/nordic-rpm.jwk.json".
    #[serde(default)]
    pub jwk_file: Option<PathBuf>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl FileConfig {
    /// The token URL, when some platform uses `private_key_jwt`.
    pub fn token_url(&self) -> Option<String> {
        if self.platforms.iter().any(|p| p.jwk_file.is_some()) {
            self.public_url.as_ref().map(|u| format!("{u}/oauth/token"))
        } else {
            None
        }
    }

    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.platforms.is_empty() {
            return Err(ConfigError::Invalid(
                "no [[platforms]]: add one per home-monitoring platform".into(),
            ));
        }
        let mut ids = BTreeSet::new();
        for p in &self.platforms {
            if p.id.is_empty() || !ids.insert(p.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "platform id {:?} is empty or given twice",
                    p.id
                )));
            }
            if p.municipalities.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "platform {}: municipalities is empty; list the orgnrs it may post for",
                    p.id
                )));
            }
            for m in &p.municipalities {
                Orgnr::parse(m).map_err(|e| {
                    ConfigError::Invalid(format!("platform {}: municipality {m:?} {e}", p.id))
                })?;
            }
        }
        if self.platforms.iter().any(|p| p.jwk_file.is_some()) {
            match self.public_url.as_deref() {
                Some(u) if u.starts_with("https://") && !u.ends_with('/') => {}
                _ => {
                    return Err(ConfigError::Invalid(
                        "a platform has a jwk_file, so public_url is needed: the https:// base URL platforms use, without a trailing slash (example: \"https://gw.kommune.no:8445\")".into(),
                    ));
                }
            }
        }
        if self.max_entries == 0 || self.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_entries and max_body_bytes must be above 0".into(),
            ));
        }
        Ok(())
    }
}
