//! Client assertions (`private_key_jwt`, RFC 7523): the JWT an EPJ client
//! signs with its own key to get an access token.
//!
//! Rules, each refused with its own [`Reason`]:
//! - the header's `alg` must be the one the client's registered key allows
//!   (RS256 for RSA, ES256 for EC P-256): `none` and HS256/384/512 (the
//!   "public key as HMAC secret" trick) are refused before any key is used;
//! - the signature verifies against the client's registered key;
//! - `iss` = `sub` = the client id; `aud` = the token URL, exactly;
//! - `exp` in the future and at most 5 minutes (+ leeway) ahead; `iat` and
//!   `nbf`, when given, not in the future (30 s leeway);
//! - `jti` present (at most 256 characters); single use is checked by the
//!   caller against the store ([`super::token`]), after everything else.
//!
//! This is a pure function of the assertion, the registry and the clock.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode};
use serde::Deserialize;

use super::{Client, LEEWAY_SECS, MAX_ASSERTION_LIFETIME_SECS, MAX_JWT_BYTES, Reason};

/// An assertion that passed every check but the replay check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub client_id: String,
    pub jti: String,
    pub exp: u64,
    /// `iat`, when the assertion gives one.
    pub iat: Option<u64>,
}

/// `aud`: a string or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// Exactly `want`: the single value, or one element of the array.
    pub(crate) fn is(&self, want: &str) -> bool {
        match self {
            Audience::One(a) => a == want,
            Audience::Many(v) => v.iter().any(|a| a == want),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<u64>,
    iat: Option<u64>,
    nbf: Option<u64>,
    jti: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
}

/// The header's `alg`, checked before any key is touched: `none` and HMAC
/// algorithms are refused outright.
pub(crate) fn header_alg(jwt: &str) -> Result<String, Reason> {
    if jwt.len() > MAX_JWT_BYTES || jwt.split('.').count() != 3 {
        return Err(Reason::Malformed);
    }
    let head = jwt.split('.').next().ok_or(Reason::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| Reason::Malformed)?;
    let h: RawHeader = serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)?;
    let alg = h.alg.ok_or(Reason::Malformed)?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(Reason::AlgNone);
    }
    if alg.to_ascii_uppercase().starts_with("HS") {
        return Err(Reason::AlgHmac);
    }
    Ok(alg)
}

/// Verifies the signature with `key` for exactly `alg` and returns the
/// claims; every time and audience rule is left to the caller.
pub(crate) fn verify_signature<T: serde::de::DeserializeOwned>(
    jwt: &str,
    key: &jsonwebtoken::DecodingKey,
    alg: jsonwebtoken::Algorithm,
) -> Result<T, Reason> {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    decode::<T>(jwt, key, &v)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => Reason::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Reason::AlgMismatch,
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => Reason::AlgMismatch,
            _ => Reason::Malformed,
        })
}

/// Checks `exp`, `iat` and `nbf` against `now` (Unix seconds).
pub(crate) fn check_times(
    exp: Option<u64>,
    iat: Option<u64>,
    nbf: Option<u64>,
    now: u64,
    max_ahead: u64,
) -> Result<u64, Reason> {
    let exp = exp.ok_or(Reason::Malformed)?;
    if exp <= now {
        return Err(Reason::Expired);
    }
    if exp > now + max_ahead + LEEWAY_SECS {
        return Err(Reason::ExpTooFar);
    }
    if iat.is_some_and(|t| t > now + LEEWAY_SECS) || nbf.is_some_and(|t| t > now + LEEWAY_SECS) {
        return Err(Reason::NotYetValid);
    }
    Ok(exp)
}

/// Checks one assertion against the registered clients.
pub fn verify(
    assertion: &str,
    clients: &HashMap<String, Client>,
    token_url: &str,
    now: u64,
) -> Result<Verified, Reason> {
    let alg = header_alg(assertion)?;
    // Which client? Read `iss` before verifying (to pick its key); nothing
    // of it is trusted until the signature checks out.
    let body = assertion.split('.').nth(1).ok_or(Reason::Malformed)?;
    let unverified: Claims = URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Reason::Malformed)?;
    let claimed = unverified.iss.or(unverified.sub).ok_or(Reason::Malformed)?;
    let client = clients.get(&claimed).ok_or(Reason::UnknownClient)?;
    let expected = match client.alg {
        jsonwebtoken::Algorithm::RS256 => "RS256",
        jsonwebtoken::Algorithm::ES256 => "ES256",
        _ => return Err(Reason::AlgMismatch),
    };
    if alg != expected {
        return Err(Reason::AlgMismatch);
    }
    let claims: Claims = verify_signature(assertion, &client.key, client.alg)?;
    if claims.iss.as_deref() != Some(client.id.as_str())
        || claims.sub.as_deref() != Some(client.id.as_str())
    {
        return Err(Reason::WrongIssuer);
    }
    if !claims.aud.as_ref().is_some_and(|a| a.is(token_url)) {
        return Err(Reason::WrongAudience);
    }
    let exp = check_times(
        claims.exp,
        claims.iat,
        claims.nbf,
        now,
        MAX_ASSERTION_LIFETIME_SECS,
    )?;
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(Reason::MissingJti)?;
    Ok(Verified {
        client_id: client.id.clone(),
        jti,
        exp,
        iat: claims.iat,
    })
}
