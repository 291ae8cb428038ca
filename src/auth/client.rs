//! The client side of the hub's token endpoint: how an EPJ system gets an
//! access token with OAuth2 client credentials and a `private_key_jwt`
//! assertion (ES256). The demo and the load generator use it; it doubles as
//! the reference for EPJ developers (README, "Pull").

use std::sync::atomic::{AtomicU64, Ordering};

/// The assertion type of RFC 7523 client authentication.
pub const JWT_BEARER_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Debug, thiserror::Error)]
pub enum ClientTokenError {
    #[error("the client key is not a PEM EC (P-256) private key: {0}")]
    Key(jsonwebtoken::errors::Error),
    #[error("signing the assertion: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("POST {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("no access token for {client} ({status}): {body}")]
    Refused {
        client: String,
        status: u16,
        body: String,
    },
}

/// A signed assertion: iss = sub = `client`, aud = `token_url`, valid for
/// 2 minutes, with a jti unique to this process.
pub fn assertion(
    key_pem: &[u8],
    client: &str,
    token_url: &str,
) -> Result<String, ClientTokenError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let jti = format!(
        "{}-{}-{}",
        uuid::Uuid::new_v4(),
        now,
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let claims = serde_json::json!({
        "iss": client, "sub": client, "aud": token_url,
        "iat": now, "exp": now + 120, "jti": jti,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(client.to_string());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pem).map_err(ClientTokenError::Key)?;
    jsonwebtoken::encode(&header, &claims, &key).map_err(ClientTokenError::Sign)
}

/// Asks `token_url` for an access token as `client`, signing with `key_pem`.
pub async fn request_token(
    http: &reqwest::Client,
    token_url: &str,
    client: &str,
    key_pem: &[u8],
) -> Result<String, ClientTokenError> {
    let jwt = assertion(key_pem, client, token_url)?;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_assertion_type", JWT_BEARER_TYPE)
        .append_pair("client_assertion", &jwt)
        .finish();
    let http_err = |source| ClientTokenError::Http {
        url: token_url.to_string(),
        source,
    };
    let r = http
        .post(token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(http_err)?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    match v["access_token"].as_str() {
        Some(t) if status.is_success() => Ok(t.to_string()),
        // The error body is the hub's RFC 6749 answer: no secrets in it.
        _ => Err(ClientTokenError::Refused {
            client: client.to_string(),
            status: status.as_u16(),
            body: v.to_string(),
        }),
    }
}
