//! The HTTP side of push delivery: the rustls client of one destination,
//! and a POST of a Bundle turned into a [`Verdict`].

use std::time::Duration;

use super::push::Transport;
use super::retry::{Verdict, classify, parse_retry_after};
use crate::config::Destination;

/// Largest answer body kept with a dead letter.
const MAX_KEPT_RESPONSE: usize = 8 * 1024;

/// Most bytes of a success answer read (and thrown away) so that its
/// connection can carry the next request.
const MAX_DRAINED_RESPONSE: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PushSetupError {
    #[error("destination {name}: cannot read ca_file {path}: {source}")]
    CaFile {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("destination {name}: {what}: {source}")]
    Client {
        name: String,
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

/// The HTTP client for one destination: rustls, its own timeout, plus the
/// destination's extra CA when configured.
pub fn client(d: &Destination) -> Result<reqwest::Client, PushSetupError> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_millis(d.timeout_ms))
        .connect_timeout(Duration::from_millis(d.timeout_ms.min(5_000)))
        .user_agent(concat!("knutepunkt/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &d.ca_file {
        let pem = std::fs::read(path).map_err(|source| PushSetupError::CaFile {
            name: d.name.clone(),
            path: path.display().to_string(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            PushSetupError::Client {
                name: d.name.clone(),
                what: "ca_file holds no PEM certificate",
                source,
            }
        })?;
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|source| PushSetupError::Client {
        name: d.name.clone(),
        what: "cannot build the HTTP client",
        source,
    })
}

/// HTTPS POST of the Bundle to the destination's FHIR base.
pub struct HttpTransport {
    pub http: reqwest::Client,
    pub url: String,
}

impl Transport for HttpTransport {
    fn send(&self, bundle: String) -> futures::future::BoxFuture<'_, Verdict> {
        Box::pin(send(&self.http, &self.url, bundle))
    }
}

async fn send(http: &reqwest::Client, url: &str, body: String) -> Verdict {
    let resp = http
        .post(url)
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .body(body)
        .send()
        .await;
    match resp {
        Err(e) => Verdict::Retry {
            reason: if e.is_timeout() {
                "request timed out".into()
            } else if e.is_connect() {
                "cannot connect".into()
            } else {
                "connection failed".into()
            },
            after: None,
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after =
                parse_retry_after(r.headers().get("retry-after").and_then(|v| v.to_str().ok()));
            let body = if (200..300).contains(&status) {
                drain(r).await;
                None
            } else {
                r.text().await.ok().map(|mut t| {
                    if t.len() > MAX_KEPT_RESPONSE {
                        let mut cut = MAX_KEPT_RESPONSE;
                        while !t.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        t.truncate(cut);
                    }
                    t
                })
            };
            classify(status, retry_after, body)
        }
    }
}

/// Reads a success answer to its end and throws it away: hyper puts a
/// connection back in the pool only when its answer was read to the end,
/// so an unread transaction-response would cost a new TCP and TLS
/// handshake for every Bundle. An answer past [`MAX_DRAINED_RESPONSE`] or
/// one that fails midway just closes the connection.
async fn drain(mut r: reqwest::Response) {
    let mut read = 0usize;
    while let Ok(Some(chunk)) = r.chunk().await {
        read += chunk.len();
        if read > MAX_DRAINED_RESPONSE {
            break;
        }
    }
}
