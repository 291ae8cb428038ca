//! HTTP as an EPJ client or operator: a client trusting the dev CA, OAuth2
//! tokens by `private_key_jwt`, and paged FHIR searches.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use knutepunkt::proto::v1 as pb;

use super::{ADMIN_TOKEN, certs};

/// An HTTP client that trusts the dev CA (and speaks plain HTTP too).
pub fn http_client() -> Result<reqwest::Client> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let ca = std::fs::read(certs().map_err(|e| e.to_string())?.join("ca.pem"))
                .map_err(|e| e.to_string())?;
            reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(&ca).map_err(|e| e.to_string())?])
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The EPJ client a test acts as for `url`: the pull consumer named by a
/// `consumer=` parameter, else the municipality's own client from the path
/// (`/fhir/r4/{orgnr}/…`). `None` outside the FHIR API.
fn client_for(url: &str) -> Option<String> {
    if let Some(c) = url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("consumer="))
        && certs().is_ok_and(|d| d.join(format!("epj-{c}.key")).exists())
    {
        return Some(c.to_string());
    }
    let org = url.split("/fhir/r4/").nth(1)?.split(['/', '?']).next()?;
    match org {
        "958935420" => Some("oslo-epj".into()),
        "964338531" => Some("bergen-epj".into()),
        _ => None,
    }
}

/// A signed `private_key_jwt` assertion of dev EPJ client `client` for `aud`.
pub fn assertion(client: &str, aud: &str) -> Result<String> {
    let key = std::fs::read(certs()?.join(format!("epj-{client}.key")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let jti = format!(
        "{}-{}-{}",
        std::process::id(),
        now,
        JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let claims = serde_json::json!({ "iss": client, "sub": client, "aud": aud, "exp": now + 120, "iat": now, "jti": jti });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(client.to_string());
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(&key)?,
    )?)
}

/// Asks the hub at `origin` (`https://host:port`) for an access token with
/// `assertion` (which names the client); (status, body).
pub async fn request_token(origin: &str, assertion: &str) -> Result<(u16, serde_json::Value)> {
    let form = [
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&form)
        .finish();
    let r = http_client()?
        .post(format!("{origin}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    Ok((
        r.status().as_u16(),
        r.json().await.unwrap_or(serde_json::Value::Null),
    ))
}

/// A cached access token for `client` at `origin`.
pub async fn token(origin: &str, client: &str) -> Result<String> {
    type Cache = std::sync::Mutex<std::collections::HashMap<(String, String), (String, Instant)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (origin.to_string(), client.to_string());
    if let Some((t, at)) = cache.lock().map_err(|_| anyhow!("poisoned"))?.get(&key)
        && at.elapsed() < Duration::from_secs(120)
    {
        return Ok(t.clone());
    }
    let (status, body) = request_token(
        origin,
        &assertion(client, &format!("{origin}/oauth/token"))?,
    )
    .await?;
    let t = body["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token for {client} from {origin} ({status}): {body}"))?
        .to_string();
    cache
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .insert(key, (t.clone(), Instant::now()));
    Ok(t)
}

/// The bearer a test request to `url` carries: an EPJ client's token on
/// FHIR URLs of a TLS hub, the admin token on `/admin/`, none otherwise.
async fn bearer_for(url: &str) -> Result<Option<String>> {
    if url.contains("/admin/") {
        return Ok(Some(ADMIN_TOKEN.to_string()));
    }
    let Some(rest) = url.strip_prefix("https://") else {
        return Ok(None);
    };
    let origin = format!("https://{}", rest.split('/').next().unwrap_or_default());
    match client_for(url) {
        Some(c) if url.contains("/fhir/r4/") && !url.ends_with("/metadata") => {
            Ok(Some(token(&origin, &c).await?))
        }
        _ => Ok(None),
    }
}

/// A request builder for `url` with the right bearer token.
pub async fn authed(method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder> {
    let mut r = http_client()?.request(method, url);
    if let Some(t) = bearer_for(url).await? {
        r = r.bearer_auth(t);
    }
    Ok(r)
}

/// GETs a FHIR (or admin) URL as the right client; (status, JSON body).
pub async fn get_json(url: &str) -> Result<(u16, serde_json::Value)> {
    let r = authed(reqwest::Method::GET, url)
        .await?
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body))
}

/// `$confirm` as the pull client `oslo-vakt` at `base` (a municipality's
/// FHIR base) with a Parameters `body`: (status, answer as text).
pub async fn vakt_confirm(base: &str, body: &serde_json::Value) -> Result<(u16, String)> {
    let url = format!("{base}/$confirm?consumer=oslo-vakt");
    let r = authed(reqwest::Method::POST, &url)
        .await?
        .timeout(Duration::from_secs(10))
        .json(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.unwrap_or_default()))
}

/// Follows a search's `next` links and returns every resource, in order.
pub async fn search_all(first_url: &str) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut url = Some(first_url.to_string());
    let mut pages = 0;
    while let Some(u) = url.take() {
        let (status, b) = get_json(&u).await?;
        if status != 200 {
            bail!("GET {u} answered {status}: {b}");
        }
        for e in b["entry"].as_array().into_iter().flatten() {
            out.push(e["resource"].clone());
        }
        url = b["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
        pages += 1;
        if pages > 100_000 {
            bail!("more than 100,000 pages: the next links loop");
        }
    }
    Ok(out)
}

pub use pb::ReceiptStatus;
