//! `private_key_jwt` for platforms without a client certificate: the same
//! OAuth2 client-credentials grant the hub's FHIR API uses (RFC 7523, SMART
//! Backend Services), checked by the hub's own code.
//!
//! - `POST /oauth/token` takes a client assertion signed with the key
//!   registered for the platform (`jwk_file`); the rules are the hub's
//!   ([`knutepunkt::auth::assertion::verify`]): alg pinned to the key, `iss`
//!   = `sub` = platform id, `aud` = this gateway's token URL exactly, `exp`
//!   at most 5 minutes ahead, a `jti`.
//! - The answer is an access token (ES256, signed by the gateway, 5 minutes)
//!   that names the platform; `POST /fhir/...` takes it as
//!   `Authorization: Bearer`.
//!
//! **Replay.** The gateway keeps no store, so it remembers used `jti`s in
//! memory until their assertion expires. A restart forgets them; to keep a
//! captured assertion from being replayed after one, the gateway requires
//! `iat` and refuses assertions issued before it started.

use std::collections::HashMap;
use std::sync::Mutex;

use jsonwebtoken::{Algorithm, Header, Validation};
use knutepunkt::auth::keys::HubKey;
use knutepunkt::auth::token::{OAuthError, parse_form};
use knutepunkt::auth::{Client, LEEWAY_SECS, MAX_JWT_BYTES, Reason, assertion};
use serde::{Deserialize, Serialize};

/// Access-token lifetime, seconds.
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// Most used `jti`s kept at once; beyond it new assertions are refused
/// until old ones expire (a flood cannot grow memory without bound).
const MAX_USED_JTIS: usize = 100_000;

/// `iss` of the gateway's access tokens.
const ISSUER: &str = "knutepunkt-fhir-gateway";

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// Issues and checks the gateway's access tokens.
pub struct Tokens {
    clients: HashMap<String, Client>,
    token_url: String,
    key: HubKey,
    started: u64,
    /// (platform, jti) → the assertion's `exp`.
    used: Mutex<HashMap<(String, String), u64>>,
}

impl Tokens {
    /// `clients`: the platforms with a registered key; `token_url`: the
    /// exact `aud` their assertions carry; `started`: now, in seconds.
    pub fn new(
        clients: HashMap<String, Client>,
        token_url: String,
        key: HubKey,
        started: u64,
    ) -> Tokens {
        Tokens {
            clients,
            token_url,
            key,
            started,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// The token endpoint's decision for one form body.
    pub fn issue(&self, body: &[u8], now: u64) -> Result<serde_json::Value, OAuthError> {
        let form = parse_form(body).map_err(OAuthError::new)?;
        let v = assertion::verify(&form.assertion, &self.clients, &self.token_url, now)
            .map_err(OAuthError::new)?;
        if v.iat.is_none_or(|iat| iat + LEEWAY_SECS < self.started) {
            return Err(OAuthError::new(Reason::StaleAssertion));
        }
        self.claim(&v.client_id, &v.jti, v.exp, now)?;
        let claims = AccessClaims {
            iss: ISSUER.into(),
            aud: self.token_url.clone(),
            sub: v.client_id.clone(),
            iat: now,
            exp: now + TOKEN_LIFETIME_SECS,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key.encoding).map_err(|e| {
            tracing::error!(error = %e, "cannot sign an access token");
            OAuthError::new(Reason::InvalidRequest)
        })?;
        tracing::info!(platform = %v.client_id, "access token issued");
        Ok(serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_SECS,
        }))
    }

    /// Records a used `jti`; refuses one seen before.
    fn claim(&self, client: &str, jti: &str, exp: u64, now: u64) -> Result<(), OAuthError> {
        let mut used = self
            .used
            .lock()
            .map_err(|_| OAuthError::new(Reason::InvalidRequest))?;
        if used.len() >= MAX_USED_JTIS {
            used.retain(|_, e| *e + LEEWAY_SECS > now);
            if used.len() >= MAX_USED_JTIS {
                tracing::warn!("too many unexpired assertions in memory; refusing new ones");
                return Err(OAuthError::new(Reason::ReplayedJti));
            }
        }
        if used
            .insert((client.to_string(), jti.to_string()), exp)
            .is_some()
        {
            return Err(OAuthError::new(Reason::ReplayedJti));
        }
        Ok(())
    }

    /// The platform an `Authorization` header's bearer token names.
    pub fn platform_of(&self, authorization: Option<&str>, now: u64) -> Result<String, Reason> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Reason::MissingToken)?;
        if token.len() > MAX_JWT_BYTES {
            return Err(Reason::Malformed);
        }
        let mut val = Validation::new(Algorithm::ES256);
        val.set_issuer(&[ISSUER]);
        val.set_audience(&[&self.token_url]);
        val.leeway = LEEWAY_SECS;
        val.validate_exp = false;
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.key.decoding, &val).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => Reason::BadSignature,
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => Reason::WrongAudience,
                    jsonwebtoken::errors::ErrorKind::InvalidIssuer => Reason::WrongIssuer,
                    jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => Reason::AlgMismatch,
                    _ => Reason::Malformed,
                }
            })?;
        // Checked here against the caller's clock, so tests can move time.
        if data.claims.exp <= now {
            return Err(Reason::Expired);
        }
        Ok(data.claims.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knutepunkt::domain::Orgnr;

    const URL: &str = "https://gw.test/oauth/token";

    fn tokens(started: u64) -> (Tokens, jsonwebtoken::EncodingKey) {
        // The platform's own key pair (any P-256 key will do).
        let platform = HubKey::load_or_generate(None).expect("key");
        let client = Client {
            id: "acme".into(),
            municipality: Orgnr::parse("958935420").expect("orgnr"),
            scopes: vec![],
            key: platform.decoding,
            alg: Algorithm::ES256,
            consumer: None,
        };
        let key = HubKey::load_or_generate(None).expect("key");
        let t = Tokens::new(
            HashMap::from([("acme".to_string(), client)]),
            URL.into(),
            key,
            started,
        );
        (t, platform.encoding)
    }

    fn form(key: &jsonwebtoken::EncodingKey, iat: Option<u64>, jti: &str, now: u64) -> String {
        let mut c = serde_json::json!({"iss":"acme","sub":"acme","aud":URL,"exp":now+60,"jti":jti});
        if let Some(i) = iat {
            c["iat"] = i.into();
        }
        let a = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, key).expect("sign");
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", &a)
            .finish()
    }

    #[test]
    fn a_token_names_the_platform_and_expires() {
        let now = 1_800_000_000;
        let (t, key) = tokens(now - 10);
        let v = t
            .issue(form(&key, Some(now), "j1", now).as_bytes(), now)
            .expect("issued");
        let tok = v["access_token"].as_str().expect("token");
        let h = format!("Bearer {tok}");
        assert_eq!(t.platform_of(Some(&h), now).as_deref(), Ok("acme"));
        assert_eq!(
            t.platform_of(Some(&h), now + TOKEN_LIFETIME_SECS),
            Err(Reason::Expired)
        );
        assert_eq!(t.platform_of(None, now), Err(Reason::MissingToken));
        // A signature character changed (not the last one: its low bits are padding).
        let mut b = tok.as_bytes().to_vec();
        let at = b.len() - 10;
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        let forged = format!("Bearer {}", String::from_utf8_lossy(&b));
        assert!(t.platform_of(Some(&forged), now).is_err());
    }

    #[test]
    fn replays_and_assertions_from_before_the_start_are_refused() {
        let now = 1_800_000_000;
        let (t, key) = tokens(now);
        let f = form(&key, Some(now), "j1", now);
        assert!(t.issue(f.as_bytes(), now).is_ok());
        let again = t.issue(f.as_bytes(), now).expect_err("replay");
        assert_eq!(again.reason, Reason::ReplayedJti);
        let old = t
            .issue(form(&key, Some(now - 120), "j2", now).as_bytes(), now)
            .expect_err("stale");
        assert_eq!(old.reason, Reason::StaleAssertion);
        let no_iat = t
            .issue(form(&key, None, "j3", now).as_bytes(), now)
            .expect_err("no iat");
        assert_eq!(no_iat.reason, Reason::StaleAssertion);
    }
}
