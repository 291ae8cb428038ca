//! Keys: the hub's own ES256 key for access tokens, and the clients' and
//! the external issuer's public keys (JWK / JWKS).
//!
//! Crypto is aws-lc-rs (already the TLS provider) through `jsonwebtoken`;
//! nothing here is hand-written crypto. Key material never reaches a log
//! line or an error message: errors name the file and what is wrong with it.

use std::path::Path;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use sha2::{Digest, Sha256};

use super::AuthSetupError;

/// The key the hub signs access tokens with (ES256).
pub struct HubKey {
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// Key id in the token header: a hash of the public key.
    pub kid: String,
}

impl HubKey {
    /// Loads the PKCS#8 PEM at `path`, or generates a fresh key when none
    /// is configured (tokens then do not survive a restart).
    pub fn load_or_generate(path: Option<&Path>) -> Result<HubKey, AuthSetupError> {
        let pkcs8 = match path {
            Some(p) => {
                let bad = |what: &str| AuthSetupError::SigningKey {
                    path: p.display().to_string(),
                    what: what.to_string(),
                };
                let text = std::fs::read(p).map_err(|e| bad(&format!("cannot read it: {e}")))?;
                let pem = pem::parse(&text)
                    .map_err(|_| bad("not a PEM file; give a PKCS#8 \"PRIVATE KEY\" (EC P-256)"))?;
                if pem.tag() != "PRIVATE KEY" {
                    return Err(bad(
                        "the PEM block must be \"PRIVATE KEY\" (PKCS#8); convert with openssl pkcs8 -topk8 -nocrypt",
                    ));
                }
                pem.contents().to_vec()
            }
            None => {
                let doc = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &aws_lc_rs::rand::SystemRandom::new(),
                )
                .map_err(|_| AuthSetupError::SigningKey {
                    path: "(generated)".into(),
                    what: "cannot generate a key".into(),
                })?;
                tracing::warn!(
                    "auth.signing_key_file is not set: generated an access-token signing key for this run; tokens will not be valid after a restart (clients simply get new ones)"
                );
                doc.as_ref().to_vec()
            }
        };
        Self::from_pkcs8(&pkcs8).map_err(|what| AuthSetupError::SigningKey {
            path: path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(generated)".into()),
            what,
        })
    }

    fn from_pkcs8(der: &[u8]) -> Result<HubKey, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| "not an EC P-256 private key in PKCS#8".to_string())?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = hex(&Sha256::digest(&public)[..8]);
        Ok(HubKey {
            encoding: EncodingKey::from_ec_der(der),
            decoding: DecodingKey::from_ec_der(&public),
            kid,
        })
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    // By table, not `format!` per byte: every audit pseudonym goes through
    // here, and the formatting machinery was 7 % of the instructions per
    // delivered event (BENCHMARKS.md, callgrind).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 0x0f)]));
    }
    s
}

/// The verification key and the one algorithm a client's JWK allows:
/// RSA → RS256, EC P-256 → ES256. Anything else is refused.
pub fn client_key(jwk: &Jwk) -> Result<(DecodingKey, Algorithm), String> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => {
            return Err(
                "the JWK must be an RSA key (RS256) or an EC P-256 key (ES256)".to_string(),
            );
        }
    };
    if let Some(declared) = jwk.common.key_algorithm {
        let matches = matches!(
            (declared, alg),
            (KeyAlgorithm::RS256, Algorithm::RS256) | (KeyAlgorithm::ES256, Algorithm::ES256)
        );
        if !matches {
            return Err("the JWK's alg must be RS256 for an RSA key or ES256 for EC P-256".into());
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "the JWK's key parameters are invalid")?;
    Ok((key, alg))
}

/// Reads one JWK from a JSON file.
pub fn read_jwk_file(path: &Path) -> Result<Jwk, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read jwk_file {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("jwk_file {} is not a JWK: {e}", path.display()))
}

/// Reads a JWKS (`{"keys": [...]}`) from a JSON file.
pub fn read_jwks_file(path: &Path) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("not a JWK Set: {e}"))
}
