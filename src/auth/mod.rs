//! Who may do what: the one place that decides.
//!
//! EPJ systems authenticate with OAuth2 client credentials and a signed JWT
//! assertion (`private_key_jwt`, as in SMART Backend Services and HelseID)
//! at `POST /oauth/token` ([`token`]) and get a short-lived access token
//! signed by the hub ([`keys`]). Every FHIR request then carries it as a
//! bearer token; [`Authority::caller`] checks it ([`bearer`]) and the
//! handlers ask the resulting [`Caller`] whether it may see a municipality's
//! data with a scope ([`Caller::authorize`]). Tokens of an external issuer
//! (HelseID-like) can be accepted too. The admin API has its own credential
//! ([`admin`]).
//!
//! Decisions made here and nowhere else:
//! - no or a bad token → 401 with `WWW-Authenticate: Bearer`;
//! - a municipality other than the token's → 404, exactly as for data that
//!   does not exist (the caller learns nothing about another municipality);
//! - the right municipality but a missing scope → 403;
//! - `insecure_dev` lets requests without a token through (loudly logged).
//!
//! Every rejection is counted in `knutepunkt_auth_rejected_total{endpoint,
//! reason}` with a reason from the fixed set [`Reason`]. No token,
//! assertion or key ever reaches a log line, a metric or an error message.

pub mod admin;
pub mod assertion;
pub mod bearer;
pub mod client;
pub mod config;
pub mod keys;
pub mod token;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use crate::api::outcome::ApiError;
use crate::config::Config;
use crate::domain::{Orgnr, ResourceType};
use crate::store::Store;
use crate::store::audit::AuditAgent;

/// Largest token or assertion the hub looks at.
pub const MAX_JWT_BYTES: usize = 8 * 1024;

/// Clock skew tolerated on `iat`, `nbf` and `exp`, seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Longest an assertion may be valid ahead, seconds.
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;

/// What a token may be used for (SMART v1 style `system/<Type>.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read and search Observations.
    Observation,
    /// Read and search Communications.
    Communication,
    /// Read and search the municipality's own audit trail.
    AuditEvent,
    /// `$pending`, `$confirm` and `$status`: pull delivery.
    Pending,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::Observation,
        Scope::Communication,
        Scope::AuditEvent,
        Scope::Pending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Observation => "system/Observation.rs",
            Scope::Communication => "system/Communication.rs",
            Scope::AuditEvent => "system/AuditEvent.rs",
            Scope::Pending => "system/pending.rs",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The scope that covers reading and searching a resource type.
    pub fn for_resource(rt: ResourceType) -> Scope {
        match rt {
            ResourceType::Observation => Scope::Observation,
            ResourceType::Communication => Scope::Communication,
        }
    }

    /// Space-separated, as in OAuth2.
    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Why a credential was refused: the `reason` label of
/// `knutepunkt_auth_rejected_total`. A fixed set; never a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MissingToken,
    Malformed,
    AlgNone,
    AlgHmac,
    AlgMismatch,
    BadSignature,
    UnknownClient,
    Expired,
    ExpTooFar,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    MissingJti,
    ReplayedJti,
    InvalidRequest,
    UnsupportedGrantType,
    InvalidScope,
    InsufficientScope,
    OtherMunicipality,
    NotConsumer,
    AdminToken,
    StaleAssertion,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::Malformed => "malformed",
            Reason::AlgNone => "alg_none",
            Reason::AlgHmac => "alg_hmac",
            Reason::AlgMismatch => "alg_mismatch",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownClient => "unknown_client",
            Reason::Expired => "expired",
            Reason::ExpTooFar => "exp_too_far",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongAudience => "wrong_audience",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::MissingJti => "missing_jti",
            Reason::ReplayedJti => "replayed_jti",
            Reason::InvalidRequest => "invalid_request",
            Reason::UnsupportedGrantType => "unsupported_grant_type",
            Reason::InvalidScope => "invalid_scope",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::OtherMunicipality => "other_municipality",
            Reason::NotConsumer => "not_consumer",
            Reason::AdminToken => "admin_token",
            Reason::StaleAssertion => "stale_assertion",
        }
    }

    /// A sentence for the caller: what to change. Fixed text, no input.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::MissingToken => {
                "no bearer token: get one at POST /oauth/token and send Authorization: Bearer <token>"
            }
            Reason::Malformed => {
                "the JWT is not a well-formed compact JWS with the required claims"
            }
            Reason::AlgNone => "unsigned JWTs (alg none) are refused",
            Reason::AlgHmac => {
                "HMAC-signed JWTs (HS256/384/512) are refused; sign with your registered RSA or EC key"
            }
            Reason::AlgMismatch => {
                "the JWT's alg does not match the registered key (RS256 for RSA, ES256 for EC P-256)"
            }
            Reason::BadSignature => "the signature does not verify against the registered key",
            Reason::UnknownClient => "no client with this id is registered at this hub",
            Reason::Expired => "the JWT has expired; make a new one",
            Reason::ExpTooFar => "exp is more than 5 minutes ahead; assertions must be short-lived",
            Reason::NotYetValid => "iat or nbf is in the future; check the client's clock",
            Reason::WrongAudience => {
                "aud must be exactly the hub's token URL (for access tokens: the hub's FHIR audience)"
            }
            Reason::WrongIssuer => {
                "iss and sub must both be the client id (for access tokens: the expected issuer)"
            }
            Reason::MissingJti => {
                "jti is required: a unique id (at most 256 characters) per assertion"
            }
            Reason::ReplayedJti => "this jti was used before; every assertion needs a new jti",
            Reason::InvalidRequest => {
                "the request lacks a required parameter, repeats one, or has a wrong client_assertion_type"
            }
            Reason::UnsupportedGrantType => "only grant_type=client_credentials is supported",
            Reason::InvalidScope => "a requested scope is unknown or not granted to this client",
            Reason::InsufficientScope => "the token's scopes do not cover this request",
            Reason::OtherMunicipality => "not found",
            Reason::NotConsumer => "this client is not registered as a pull consumer here",
            Reason::AdminToken => "missing or wrong admin token",
            Reason::StaleAssertion => {
                "iat is required and must not be older than the server's last start; make a new assertion"
            }
        }
    }
}

/// Counts one rejection. `endpoint`: `token`, `fhir` or `admin`.
pub fn count_rejection(endpoint: &'static str, reason: Reason) {
    metrics::counter!(
        "knutepunkt_auth_rejected_total",
        "endpoint" => endpoint,
        "reason" => reason.as_str()
    )
    .increment(1);
}

/// An authenticated EPJ client, as its access token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub client_id: String,
    pub municipality: Orgnr,
    pub scopes: Vec<Scope>,
    /// The pull destination it consumes, when registered as one.
    pub consumer: Option<String>,
}

/// Who is calling a FHIR endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Client(Principal),
    /// No token, let in because `insecure_dev` is on.
    InsecureDev,
}

impl Caller {
    /// May the caller use `scope` on `municipality`'s data? A municipality
    /// other than the token's answers `not_found()`, exactly as for data that
    /// does not exist; a missing scope is 403.
    pub fn authorize(
        &self,
        municipality: Orgnr,
        scope: Scope,
        not_found: impl FnOnce() -> ApiError,
    ) -> Result<(), ApiError> {
        let Caller::Client(p) = self else {
            return Ok(());
        };
        if p.municipality != municipality {
            count_rejection("fhir", Reason::OtherMunicipality);
            return Err(not_found());
        }
        if !p.scopes.contains(&scope) {
            count_rejection("fhir", Reason::InsufficientScope);
            return Err(ApiError::insufficient_scope(scope.as_str()));
        }
        Ok(())
    }

    /// The pull consumer to act as. A client registered as a consumer acts
    /// as that one (a `consumer` query parameter must then name it); a client
    /// that is not registered as one may not pull. In insecure-dev mode the
    /// parameter is taken as given.
    pub fn pull_consumer(&self, asked: Option<&str>) -> Result<Option<String>, ApiError> {
        match self {
            Caller::InsecureDev => Ok(asked.map(str::to_string)),
            Caller::Client(p) => match (&p.consumer, asked) {
                (None, _) => {
                    count_rejection("fhir", Reason::NotConsumer);
                    Err(ApiError::forbidden(
                        "this client is not registered as a pull consumer: the hub operator sets consumer = \"<destination>\" in its [[auth.clients]] entry",
                    ))
                }
                (Some(mine), Some(a)) if a != mine => {
                    count_rejection("fhir", Reason::NotConsumer);
                    Err(ApiError::forbidden(
                        "consumer: this client may only pull as its own registered consumer; leave the parameter out",
                    ))
                }
                (Some(mine), _) => Ok(Some(mine.clone())),
            },
        }
    }

    /// Who to name in the audit trail.
    pub fn audit_agent(&self) -> AuditAgent {
        match self {
            Caller::Client(p) => AuditAgent::Client(p.client_id.clone()),
            Caller::InsecureDev => AuditAgent::Unauthenticated,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth.clients {client:?}: {what}")]
    ClientKey { client: String, what: String },
    #[error("auth.signing_key_file {path}: {what}")]
    SigningKey { path: String, what: String },
    #[error("auth.external.jwks_file {path}: {what}")]
    Jwks { path: String, what: String },
    #[error("admin.token_file {path}: {what}")]
    AdminToken { path: String, what: String },
}

/// A registered client with its verification key.
pub struct Client {
    pub id: String,
    pub municipality: Orgnr,
    pub scopes: Vec<Scope>,
    pub key: jsonwebtoken::DecodingKey,
    pub alg: jsonwebtoken::Algorithm,
    pub consumer: Option<String>,
}

/// Everything needed to decide: registered clients, the hub's token key,
/// the optional external issuer. Built once at start-up.
pub struct Authority {
    pub insecure_dev: bool,
    pub clients: HashMap<String, Client>,
    /// The exact `aud` of client assertions.
    pub token_url: Option<String>,
    /// `iss` and `aud` of the hub's access tokens.
    pub issuer: String,
    pub audience: String,
    pub hub_key: keys::HubKey,
    pub token_lifetime_secs: u64,
    pub external: Option<bearer::External>,
    pub store: Arc<dyn Store>,
    warned: AtomicBool,
}

impl Authority {
    pub fn from_config(cfg: &Config, store: Arc<dyn Store>) -> Result<Authority, AuthSetupError> {
        let mut clients = HashMap::new();
        for c in &cfg.auth.clients {
            let jwk = match (&c.jwk, &c.jwk_file) {
                (Some(j), _) => j.clone(),
                (None, Some(path)) => {
                    keys::read_jwk_file(path).map_err(|what| AuthSetupError::ClientKey {
                        client: c.id.clone(),
                        what,
                    })?
                }
                (None, None) => {
                    return Err(AuthSetupError::ClientKey {
                        client: c.id.clone(),
                        what: "no jwk or jwk_file".into(),
                    });
                }
            };
            let (key, alg) = keys::client_key(&jwk).map_err(|what| AuthSetupError::ClientKey {
                client: c.id.clone(),
                what,
            })?;
            let municipality =
                Orgnr::parse(&c.municipality).map_err(|e| AuthSetupError::ClientKey {
                    client: c.id.clone(),
                    what: format!("municipality: {e}"),
                })?;
            clients.insert(
                c.id.clone(),
                Client {
                    id: c.id.clone(),
                    municipality,
                    scopes: c.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                    key,
                    alg,
                    consumer: c.consumer.clone(),
                },
            );
        }
        let token_url = cfg.auth.effective_token_url(cfg.public_url.as_deref());
        let issuer = token_url
            .as_deref()
            .map(|u| u.strip_suffix("/oauth/token").unwrap_or(u).to_string())
            .unwrap_or_else(|| "knutepunkt".into());
        let audience = format!("{issuer}/fhir/r4");
        let hub_key = keys::HubKey::load_or_generate(cfg.auth.signing_key_file.as_deref())?;
        let external = cfg
            .auth
            .external
            .as_ref()
            .map(bearer::External::from_config)
            .transpose()?;
        if cfg.insecure_dev {
            tracing::warn!(
                "INSECURE DEV MODE: FHIR requests without a bearer token and admin requests without the admin token are let in; never run like this with real data"
            );
        } else if clients.is_empty() && external.is_none() {
            tracing::warn!(
                "no EPJ clients are registered ([[auth.clients]]): every FHIR request will be refused with 401"
            );
        }
        Ok(Authority {
            insecure_dev: cfg.insecure_dev,
            clients,
            token_url,
            issuer,
            audience,
            hub_key,
            token_lifetime_secs: cfg.auth.token_lifetime_secs,
            external,
            store,
            warned: AtomicBool::new(false),
        })
    }

    /// Who is calling, from the `Authorization` header. A token, when sent,
    /// is always checked (also in insecure-dev mode).
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            if self.insecure_dev {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "INSECURE DEV MODE: serving a FHIR request without a bearer token (logged once)"
                    );
                }
                metrics::counter!("knutepunkt_auth_insecure_requests_total", "endpoint" => "fhir")
                    .increment(1);
                return Ok(Caller::InsecureDev);
            }
            count_rejection("fhir", Reason::MissingToken);
            return Err(ApiError::unauthorized(
                None,
                Reason::MissingToken.describe(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            count_rejection("fhir", Reason::Malformed);
            return Err(ApiError::unauthorized(
                Some("invalid_request"),
                "the Authorization header must be: Bearer <access token>",
            ));
        };
        match bearer::verify(self, token, now_secs()) {
            Ok(p) => Ok(Caller::Client(p)),
            Err(reason) => {
                count_rejection("fhir", reason);
                Err(ApiError::unauthorized(
                    Some("invalid_token"),
                    format!("invalid access token: {}", reason.describe()),
                ))
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Router states that carry the [`Authority`].
pub trait AuthState: Clone + Send + Sync + 'static {
    fn authority(&self) -> &Arc<Authority>;
}

impl<S: AuthState> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        state.authority().caller(&parts.headers)
    }
}
