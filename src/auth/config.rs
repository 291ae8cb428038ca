//! Configuration of EPJ authentication (`[auth]`), the admin credential
//! (`[admin]`) and the audit trail (`[audit]`).
//!
//! Kept apart from `config.rs` so that the security settings are in one
//! place and can be read (and reviewed) together. Every field is documented
//! with an example in `knutepunkt.example.toml`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Scope;
use crate::config::{Config, ConfigError, DestinationKind};
use crate::domain::Orgnr;

/// `[auth]`: OAuth2 client credentials with `private_key_jwt` for EPJ systems.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The token endpoint's URL as clients address it: the `aud` their
    /// assertions must carry, exactly. Default: `<public_url>/oauth/token`.
    /// Example: "https://knutepunkt.kommune.no/oauth/token".
    #[serde(default)]
    pub token_url: Option<String>,
    /// PEM file (PKCS#8 "PRIVATE KEY", EC P-256) with the key the hub signs
    /// access tokens with. Default: a key generated at start-up (tokens
    /// then do not outlive a restart). Example: "/etc/knutepunkt/token-key.pem".
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// Lifetime of an access token, seconds, 1-300. Example: 300.
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_secs: u64,
    /// The registered EPJ clients.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Optional: also accept access tokens from an external issuer
    /// (HelseID-like).
    #[serde(default)]
    pub external: Option<ExternalIssuerConfig>,
}

fn default_token_lifetime() -> u64 {
    300
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_url: None,
            signing_key_file: None,
            token_lifetime_secs: default_token_lifetime(),
            clients: Vec::new(),
            external: None,
        }
    }
}

/// One EPJ client: one system of one municipality.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Client id: `iss` and `sub` of its assertions. 1-64 characters of
    /// a-z, A-Z, 0-9, '-', '_', '.'. Example: "oslo-gerica".
    pub id: String,
    /// The one municipality whose data it may see (orgnr). Example: "958935420".
    pub municipality: String,
    /// What it may do. Example: ["system/Observation.rs", "system/pending.rs"].
    pub scopes: Vec<String>,
    /// Its public key as a JWK (RSA for RS256 or EC P-256 for ES256).
    /// Example: { kty = "EC", crv = "P-256", x = "…", y = "…" }.
    #[serde(default)]
    pub jwk: Option<jsonwebtoken::jwk::Jwk>,
    /// …or a JSON file holding that JWK. Example: "/etc/knutepunkt/clients/oslo-gerica.jwk".
    #[serde(default)]
    pub jwk_file: Option<PathBuf>,
    /// The pull destination (kind = "pull") of its municipality it consumes:
    /// `$pending`/`$confirm` then act as that consumer. Example: "oslo-epj".
    #[serde(default)]
    pub consumer: Option<String>,
}

/// `[auth.external]`: an external authorization server whose access tokens
/// the hub accepts as they are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuerConfig {
    /// `iss` of its tokens, exactly. Example: "https://helseid-sts.nhn.no".
    pub issuer: String,
    /// JSON Web Key Set file with its signing keys (RS256/ES256).
    /// Example: "/etc/knutepunkt/helseid-jwks.json".
    pub jwks_file: PathBuf,
    /// `aud` its tokens must carry for this hub. Example: "knutepunkt".
    pub audience: String,
    /// Claim holding the municipality's orgnr. Example: "helseid://claims/client/claims/orgnr_parent".
    #[serde(default = "default_municipality_claim")]
    pub municipality_claim: String,
    /// Claim holding the scopes (space-separated string or array). Example: "scope".
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// Claim holding the client id (audit and consumer). Example: "client_id".
    #[serde(default = "default_client_claim")]
    pub client_claim: String,
    /// Client id → pull destination it consumes. Example: { "oslo-dips" = "oslo-epj" }.
    #[serde(default)]
    pub consumers: std::collections::BTreeMap<String, String>,
}

fn default_municipality_claim() -> String {
    "helseid://claims/client/claims/orgnr_parent".into()
}
fn default_scope_claim() -> String {
    "scope".into()
}
fn default_client_claim() -> String {
    "client_id".into()
}

/// `[admin]`: the admin API's credential.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// SHA-256 (hex) of the bearer token the admin API accepts.
    /// Make one: `openssl rand -hex 32 | tee admin.token | tr -d '\n' | sha256sum`.
    /// Example: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// …or a file holding the token itself (e.g. a mounted secret); the hub
    /// keeps only its hash. Example: "/run/secrets/knutepunkt-admin-token".
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// `[audit]`: the access log the municipality can read as AuditEvents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File with the key (at least 32 bytes) for patient pseudonyms
    /// (HMAC-SHA256). Default: `<data_dir>/audit-pseudonym.key`, created on
    /// first start. Example: "/etc/knutepunkt/audit-pseudonym.key".
    #[serde(default)]
    pub pseudonym_key_file: Option<PathBuf>,
    /// Days an audit record is kept. Example: 3650.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// How often expired audit records and used assertion ids are pruned,
    /// seconds. Example: 3600.
    #[serde(default = "default_prune_interval")]
    pub prune_interval_secs: u64,
}

fn default_retention_days() -> u32 {
    3650
}
fn default_prune_interval() -> u64 {
    3600
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            pseudonym_key_file: None,
            retention_days: default_retention_days(),
            prune_interval_secs: default_prune_interval(),
        }
    }
}

impl AuthConfig {
    /// The token URL: configured, or derived from `public_url`.
    pub fn effective_token_url(&self, public_url: Option<&str>) -> Option<String> {
        self.token_url
            .clone()
            .or_else(|| public_url.map(|u| format!("{}/oauth/token", u.trim_end_matches('/'))))
    }
}

fn invalid(msg: String) -> ConfigError {
    ConfigError::Invalid(msg)
}

/// Checks `[auth]`, `[admin]` and `[audit]` against the rest of the config.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let auth = &cfg.auth;
    if !(1..=300).contains(&auth.token_lifetime_secs) {
        return Err(invalid(
            "auth.token_lifetime_secs must be from 1 to 300 (access tokens live at most 5 minutes)"
                .into(),
        ));
    }
    if let Some(u) = &auth.token_url
        && !(u.starts_with("https://") || u.starts_with("http://"))
    {
        return Err(invalid(format!(
            "auth.token_url {u:?}: must be an absolute http(s) URL"
        )));
    }
    if !auth.clients.is_empty()
        && auth
            .effective_token_url(cfg.public_url.as_deref())
            .is_none()
    {
        return Err(invalid(
            "auth.clients are registered but the hub does not know its token URL: set public_url or auth.token_url"
                .into(),
        ));
    }
    let served = cfg.served_municipalities()?;
    let mut ids = BTreeSet::new();
    for c in &auth.clients {
        validate_client(cfg, served.as_ref(), &mut ids, c)?;
    }
    if let Some(x) = &auth.external
        && (x.issuer.is_empty() || x.audience.is_empty())
    {
        return Err(invalid(
            "auth.external: issuer and audience must not be empty".into(),
        ));
    }
    validate_admin_and_audit(cfg)
}

/// One registered client: its id (unique), municipality (served), scopes
/// (known), key (one of jwk and jwk_file) and pull consumer (its own).
fn validate_client<'a>(
    cfg: &Config,
    served: Option<&BTreeSet<Orgnr>>,
    ids: &mut BTreeSet<&'a str>,
    c: &'a ClientConfig,
) -> Result<(), ConfigError> {
    let bad = |why: &str| Err(invalid(format!("auth.clients {:?}: {why}", c.id)));
    if c.id.is_empty()
        || c.id.len() > 64
        || !c
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return bad("id: use 1-64 characters of a-z, A-Z, 0-9, '-', '_' and '.'");
    }
    if !ids.insert(c.id.as_str()) {
        return bad("id is registered twice");
    }
    let Ok(org) = Orgnr::parse(&c.municipality) else {
        return bad("municipality is not a valid 9-digit orgnr");
    };
    if served.as_ref().is_some_and(|s| !s.contains(&org)) {
        return bad("municipality is not one of the municipalities this hub serves");
    }
    if c.scopes.is_empty() {
        return bad("scopes is empty: give the scopes the client needs");
    }
    for s in &c.scopes {
        if Scope::parse(s).is_none() {
            return bad(&format!(
                "scope {s:?} is unknown; known scopes: {}",
                Scope::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    match (&c.jwk, &c.jwk_file) {
        (Some(_), Some(_)) => return bad("give jwk or jwk_file, not both"),
        (None, None) => return bad("needs its public key: jwk or jwk_file"),
        _ => {}
    }
    if let Some(name) = &c.consumer {
        let ok = cfg
            .destinations()
            .iter()
            .any(|(o, d)| *o == org && &d.name == name && d.kind == DestinationKind::Pull);
        if !ok {
            return bad(
                "consumer names no pull destination (kind = \"pull\") of the client's municipality",
            );
        }
    }
    Ok(())
}

/// The admin token's hash and the audit log's retention.
fn validate_admin_and_audit(cfg: &Config) -> Result<(), ConfigError> {
    if let Some(h) = &cfg.admin.token_sha256 {
        if cfg.admin.token_file.is_some() {
            return Err(invalid(
                "admin: give token_sha256 or token_file, not both".into(),
            ));
        }
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                "admin.token_sha256 must be 64 hex digits (the SHA-256 of the admin token)".into(),
            ));
        }
    }
    if cfg.audit.retention_days == 0 || cfg.audit.prune_interval_secs == 0 {
        return Err(invalid(
            "audit.retention_days and audit.prune_interval_secs must be at least 1".into(),
        ));
    }
    Ok(())
}
