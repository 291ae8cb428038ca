//! An EPJ client's access token for the FHIR API, the way a real EPJ gets
//! one: a `private_key_jwt` assertion signed with ES256 by the client's key
//! (from `knutepunkt dev-certs --epj-client ID`), posted to
//! `/oauth/token` with the client-credentials grant.
//!
//! Why it exists: the bench times FHIR searches as an EPJ makes them, with
//! a bearer token checked on every request, not against an open dev hub.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// An HTTPS client that trusts only the dev CA at `ca` (loopback use).
pub fn https_client(ca: &Path) -> Result<reqwest::Client> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let cert = reqwest::Certificate::from_pem(&pem).context("CA certificate")?;
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([cert])
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTPS client")
}

/// Gets an access token for EPJ client `client` whose key is
/// `certs/epj-<client>.key`, from the hub at `origin` (`https://ADDR`), with
/// the library's client side of the token endpoint.
pub async fn request(
    web: &reqwest::Client,
    certs: &Path,
    origin: &str,
    client: &str,
) -> Result<String> {
    let key_path = certs.join(format!("epj-{client}.key"));
    let key =
        std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    Ok(
        knutepunkt::auth::client::request_token(
            web,
            &format!("{origin}/oauth/token"),
            client,
            &key,
        )
        .await?,
    )
}
