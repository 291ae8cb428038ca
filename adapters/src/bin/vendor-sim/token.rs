//! An EPJ client's access token for the FHIR API, the way a real EPJ gets
//! one: a `private_key_jwt` assertion signed with ES256 by the client's key
//! (from `knutepunkt dev-certs --epj-client ID`), posted to
//! `/oauth/token` with the client-credentials grant.
//!
//! Why it exists: the bench times FHIR searches as an EPJ makes them, with
//! a bearer token checked on every request, not against an open dev hub.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

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

/// A signed assertion (iss = sub = `client`, aud = `token_url`, 2 minutes).
pub fn assertion(key_pem: &[u8], client: &str, token_url: &str) -> Result<String> {
    static JTI: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_secs();
    let jti = format!(
        "vendor-sim-{}-{now}-{}",
        std::process::id(),
        JTI.fetch_add(1, Ordering::Relaxed)
    );
    let claims = serde_json::json!({
        "iss": client, "sub": client, "aud": token_url,
        "iat": now, "exp": now + 120, "jti": jti,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(client.to_string());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pem).context("EPJ client key (PEM)")?;
    jsonwebtoken::encode(&header, &claims, &key).context("signing the assertion")
}

/// Gets an access token for EPJ client `client` whose key is
/// `certs/epj-<client>.key`, from the hub at `origin` (`https://ADDR`).
pub async fn request(
    web: &reqwest::Client,
    certs: &Path,
    origin: &str,
    client: &str,
) -> Result<String> {
    let key_path = certs.join(format!("epj-{client}.key"));
    let key =
        std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let token_url = format!("{origin}/oauth/token");
    let jwt = assertion(&key, client, &token_url)?;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .append_pair("client_assertion", &jwt)
        .finish();
    let r = web
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {token_url}"))?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    match v["access_token"].as_str() {
        Some(t) if status.is_success() => Ok(t.to_string()),
        _ => bail!("no access token for {client} ({status}): {v}"),
    }
}
