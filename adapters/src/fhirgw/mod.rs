//! A FHIR gateway for home-monitoring platforms (binary `fhir-gateway`):
//! they POST FHIR R4 Observations in the personal-health-device style (MDC
//! or LOINC codes, UCUM units, a device reference), alone or in
//! `transaction`/`batch` Bundles, over HTTPS with a client certificate; the
//! gateway maps each to a hub event, submits it over gRPC with the
//! platform's vendor certificate, and answers with the hub's verdict.
//!
//! Map of the module:
//! - [`config`]: the TOML file (platforms, allow-lists, certificates).
//! - [`server`]: HTTPS with client certificates; who is calling.
//! - [`token`]: `private_key_jwt` for platforms without a certificate.
//! - [`http`]: the routes and the access decision.
//! - [`bundle`]: a request's entries → verdicts → the FHIR answer.
//! - [`observation`]: one Observation → a hub event, every element checked.
//! - [`codes`]: MDC and LOINC codes → measurement kinds, as data.
//! - [`hub`]: the only file that knows the proto: submit, verdicts.
//! - [`issue`]: problems as OperationOutcomes naming the element.
//!
//! **Invariant: the hub decides.** The gateway refuses only what it cannot
//! map; values are checked by the hub's own `normalize`, and an entry is
//! reported stored only on the hub's ACCEPTED or DUPLICATE receipt.
//!
//! **Invariant: a repeated POST is harmless.** The event id is derived from
//! the Observation (its identifier, else its content and device), so a
//! repeat is a DUPLICATE at the hub and gets the same resource reference.
//!
//! **Invariant: no national id or request body in a log line or message.**

pub mod bundle;
pub mod codes;
pub mod config;
pub mod http;
pub mod hub;
pub mod issue;
pub mod observation;
pub mod server;
pub mod token;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use knutepunkt::domain::Orgnr;
use tokio::net::TcpListener;

pub use config::FileConfig;

/// Default listen address when neither the file nor the flag gives one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8445";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}; check the [tls] files")]
    Tls(#[from] knutepunkt::tls::TlsError),
    #[error(transparent)]
    Hub(#[from] hub::ChannelError),
    #[error("platform {platform}: {what}")]
    Jwk { platform: String, what: String },
    #[error("signing_key_file: {0}")]
    SigningKey(String),
    #[error("cannot listen on {addr}: {source}; pick a free port (0 picks one)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A gateway that is bound and ready to serve.
pub struct Gateway {
    listener: TcpListener,
    tls: server::Tls,
    app: axum::Router,
    /// The bound address.
    pub local_addr: SocketAddr,
}

impl Gateway {
    /// Loads the certificates, prepares a hub channel per platform (they
    /// connect on first use) and binds the listener.
    pub async fn bind(cfg: FileConfig, listen: SocketAddr) -> Result<Gateway, StartError> {
        let token_url = cfg.token_url();
        let tls = server::Tls::load(cfg.tls.clone(), token_url.is_some())?;
        let tokens = match token_url {
            Some(url) => Some(Arc::new(tokens(&cfg, url)?)),
            None => None,
        };
        let mut platforms = HashMap::new();
        for p in &cfg.platforms {
            let channel = hub::channel(
                &p.id,
                &cfg.hub.addr,
                &cfg.hub.server_name,
                &cfg.hub.ca_file,
                &p.hub_cert_file,
                &p.hub_key_file,
            )?;
            let municipalities = p
                .municipalities
                .iter()
                .filter_map(|m| Orgnr::parse(m).ok())
                .collect();
            platforms.insert(
                p.id.clone(),
                http::Platform {
                    municipalities,
                    channel,
                },
            );
        }
        let app = http::router(
            http::AppState {
                platforms: Arc::new(platforms),
                max_entries: cfg.max_entries,
                tokens,
            },
            cfg.max_body_bytes,
        );
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
        Ok(Gateway {
            listener,
            tls,
            app,
            local_addr,
        })
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        server::run(self.listener, self.tls, self.app, shutdown).await
    }
}

/// The token issuer for the platforms that have a `jwk_file`.
fn tokens(cfg: &FileConfig, token_url: String) -> Result<token::Tokens, StartError> {
    use knutepunkt::auth::keys::{HubKey, client_key, read_jwk_file};
    let mut clients = HashMap::new();
    for p in &cfg.platforms {
        let Some(path) = &p.jwk_file else { continue };
        let bad = |what: String| StartError::Jwk {
            platform: p.id.clone(),
            what,
        };
        let (key, alg) = read_jwk_file(path)
            .and_then(|jwk| client_key(&jwk))
            .map_err(bad)?;
        let municipality = p
            .municipalities
            .first()
            .and_then(|m| Orgnr::parse(m).ok())
            .ok_or_else(|| StartError::Jwk {
                platform: p.id.clone(),
                what: "the platform needs a municipality".into(),
            })?;
        let client = knutepunkt::auth::Client {
            id: p.id.clone(),
            // Unused by the gateway: the allow-list decides (see `http`).
            municipality,
            scopes: Vec::new(),
            key,
            alg,
            consumer: None,
        };
        clients.insert(p.id.clone(), client);
    }
    let key = HubKey::load_or_generate(cfg.signing_key_file.as_deref())
        .map_err(|e| StartError::SigningKey(e.to_string()))?;
    Ok(token::Tokens::new(
        clients,
        token_url,
        key,
        knutepunkt::auth::now_secs(),
    ))
}
