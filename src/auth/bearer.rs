//! Access tokens on FHIR requests: the hub's own (ES256, issued by
//! [`super::token`]) and, when configured, an external issuer's
//! (HelseID-like: its JWKS file, issuer and audience, with a claim mapping
//! for municipality, scopes and client id).
//!
//! The same header rules as for assertions apply (`none` and HS* refused
//! first), then signature, `iss`, `aud`, `exp`/`iat`/`nbf`. A hub token's
//! client must still be registered; its scopes are narrowed to what the
//! client has now, so a config change takes effect without waiting for
//! tokens to expire.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};

use super::assertion::{Audience, check_times, header_alg, verify_signature};
use super::config::ExternalIssuerConfig;
use super::{AuthSetupError, Authority, Principal, Reason, Scope};
use crate::domain::Orgnr;

/// Longest an external issuer's token may still be valid, seconds.
const MAX_EXTERNAL_LIFETIME_SECS: u64 = 3600;

/// The claims of a hub access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub client_id: String,
    pub municipality: String,
    pub scope: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

#[derive(Deserialize)]
struct Peek {
    iss: Option<String>,
}

#[derive(Deserialize)]
struct HubClaims {
    iss: Option<String>,
    aud: Option<Audience>,
    client_id: Option<String>,
    municipality: Option<String>,
    scope: Option<String>,
    exp: Option<u64>,
    iat: Option<u64>,
    nbf: Option<u64>,
}

/// A configured external issuer.
pub struct External {
    pub issuer: String,
    pub audience: String,
    pub keys: JwkSet,
    pub municipality_claim: String,
    pub scope_claim: String,
    pub client_claim: String,
    pub consumers: BTreeMap<String, String>,
}

impl External {
    pub fn from_config(c: &ExternalIssuerConfig) -> Result<External, AuthSetupError> {
        let keys =
            super::keys::read_jwks_file(&c.jwks_file).map_err(|what| AuthSetupError::Jwks {
                path: c.jwks_file.display().to_string(),
                what,
            })?;
        for k in &keys.keys {
            super::keys::client_key(k).map_err(|what| AuthSetupError::Jwks {
                path: c.jwks_file.display().to_string(),
                what,
            })?;
        }
        Ok(External {
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            keys,
            municipality_claim: c.municipality_claim.clone(),
            scope_claim: c.scope_claim.clone(),
            client_claim: c.client_claim.clone(),
            consumers: c.consumers.clone(),
        })
    }
}

/// Checks a bearer token and says who it names.
pub fn verify(auth: &Authority, token: &str, now: u64) -> Result<Principal, Reason> {
    let alg = header_alg(token)?;
    let iss = token
        .split('.')
        .nth(1)
        .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
        .and_then(|b| serde_json::from_slice::<Peek>(&b).ok())
        .ok_or(Reason::Malformed)?
        .iss;
    match &auth.external {
        Some(x) if iss.as_deref() == Some(x.issuer.as_str()) => {
            verify_external(x, token, &alg, now)
        }
        _ => verify_hub(auth, token, &alg, now),
    }
}

fn verify_hub(auth: &Authority, token: &str, alg: &str, now: u64) -> Result<Principal, Reason> {
    if alg != "ES256" {
        return Err(Reason::AlgMismatch);
    }
    let c: HubClaims = verify_signature(
        token,
        &auth.hub_key.decoding,
        jsonwebtoken::Algorithm::ES256,
    )?;
    if c.iss.as_deref() != Some(auth.issuer.as_str()) {
        return Err(Reason::WrongIssuer);
    }
    if !c.aud.as_ref().is_some_and(|a| a.is(&auth.audience)) {
        return Err(Reason::WrongAudience);
    }
    check_times(c.exp, c.iat, c.nbf, now, auth.token_lifetime_secs)?;
    let client_id = c.client_id.ok_or(Reason::Malformed)?;
    let client = auth.clients.get(&client_id).ok_or(Reason::UnknownClient)?;
    let municipality = c
        .municipality
        .and_then(|m| Orgnr::parse(&m).ok())
        .ok_or(Reason::Malformed)?;
    if municipality != client.municipality {
        return Err(Reason::Malformed);
    }
    let scopes = c
        .scope
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(Scope::parse)
        .filter(|s| client.scopes.contains(s))
        .collect();
    Ok(Principal {
        client_id,
        municipality,
        scopes,
        consumer: client.consumer.clone(),
    })
}

fn verify_external(x: &External, token: &str, alg: &str, now: u64) -> Result<Principal, Reason> {
    let kid = jsonwebtoken::decode_header(token)
        .map_err(|_| Reason::Malformed)?
        .kid;
    let jwk = match kid {
        Some(kid) => x.keys.find(&kid),
        None if x.keys.keys.len() == 1 => x.keys.keys.first(),
        None => None,
    }
    .ok_or(Reason::BadSignature)?;
    let (key, key_alg) = super::keys::client_key(jwk).map_err(|_| Reason::BadSignature)?;
    let want = match key_alg {
        jsonwebtoken::Algorithm::RS256 => "RS256",
        _ => "ES256",
    };
    if alg != want {
        return Err(Reason::AlgMismatch);
    }
    let claims: serde_json::Map<String, serde_json::Value> =
        verify_signature(token, &key, key_alg)?;
    let str_claim = |name: &str| claims.get(name).and_then(|v| v.as_str());
    if str_claim("iss") != Some(x.issuer.as_str()) {
        return Err(Reason::WrongIssuer);
    }
    let aud_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => *a == x.audience,
        Some(serde_json::Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(&x.audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(Reason::WrongAudience);
    }
    let num = |name: &str| claims.get(name).and_then(serde_json::Value::as_u64);
    check_times(
        num("exp"),
        num("iat"),
        num("nbf"),
        now,
        MAX_EXTERNAL_LIFETIME_SECS,
    )?;
    let municipality = str_claim(&x.municipality_claim)
        .and_then(|m| Orgnr::parse(m).ok())
        .ok_or(Reason::Malformed)?;
    let client_id = str_claim(&x.client_claim)
        .filter(|c| !c.is_empty() && c.len() <= 128)
        .ok_or(Reason::Malformed)?
        .to_string();
    let scopes = match claims.get(&x.scope_claim) {
        Some(serde_json::Value::String(s)) => {
            s.split_whitespace().filter_map(Scope::parse).collect()
        }
        Some(serde_json::Value::Array(v)) => v
            .iter()
            .filter_map(|s| s.as_str().and_then(Scope::parse))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Principal {
        consumer: x.consumers.get(&client_id).cloned(),
        client_id,
        municipality,
        scopes,
    })
}
