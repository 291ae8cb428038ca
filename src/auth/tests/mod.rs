//! One test per assertion and token rule, with keys generated here.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::token::{JWT_BEARER, issue};
use super::*;
use crate::auth::config::ClientConfig;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};

const OSLO: &str = "958935420";
const BERGEN: &str = "964338531";
const TOKEN_URL: &str = "https://hub.example/oauth/token";

struct TestKey {
    enc: EncodingKey,
    jwk: Value,
    /// The public key bytes (for the HS256-with-public-key trick).
    public: Vec<u8>,
    alg: Algorithm,
}

fn ec_key() -> TestKey {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .unwrap_or_else(|e| panic!("{e}"));
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
        .unwrap_or_else(|e| panic!("{e}"));
    let point = pair.public_key().as_ref().to_vec();
    TestKey {
        enc: EncodingKey::from_ec_der(doc.as_ref()),
        jwk: json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
        public: point,
        alg: Algorithm::ES256,
    }
}

fn rsa_key() -> TestKey {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .unwrap_or_else(|e| panic!("{e}"));
    let der: aws_lc_rs::encoding::Pkcs8V1Der = pair.as_der().unwrap_or_else(|e| panic!("{e}"));
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
    let public = pair.public_key();
    let n = public.modulus().big_endian_without_leading_zero().to_vec();
    let e = public.exponent().big_endian_without_leading_zero().to_vec();
    TestKey {
        enc: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
        jwk: json!({ "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(&e) }),
        public: n,
        alg: Algorithm::RS256,
    }
}

struct Fixture {
    /// The store's futures run here; tests stay synchronous.
    rt: tokio::runtime::Runtime,
    auth: Authority,
    oslo: TestKey,
    bergen: TestKey,
    _dir: tempfile::TempDir,
}

fn client(
    id: &str,
    org: &str,
    scopes: &[&str],
    key: &TestKey,
    consumer: Option<&str>,
) -> ClientConfig {
    ClientConfig {
        id: id.into(),
        municipality: org.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        jwk: Some(serde_json::from_value(key.jwk.clone()).unwrap_or_else(|e| panic!("{e}"))),
        jwk_file: None,
        consumer: consumer.map(str::to_string),
    }
}

/// A runtime and a store in `dir`, opened inside the runtime.
fn open_store(dir: &std::path::Path) -> (tokio::runtime::Runtime, EmbeddedStore) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let opts = EmbeddedOptions {
        min_free_bytes: 0,
        ..EmbeddedOptions::default()
    };
    let store = {
        let _in = rt.enter();
        EmbeddedStore::open(&dir.join("store"), opts, Vec::new()).unwrap_or_else(|e| panic!("{e}"))
    };
    (rt, store)
}

impl Fixture {
    fn issue(&self, body: &[u8]) -> Result<Value, super::token::OAuthError> {
        self.rt.block_on(issue(&self.auth, body, now()))
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (rt, store) = open_store(dir.path());
    let oslo = ec_key();
    let bergen = rsa_key();
    let mut cfg = Config::default();
    cfg.auth.token_url = Some(TOKEN_URL.into());
    cfg.auth.clients = vec![
        client(
            "oslo-epj",
            OSLO,
            &["system/Observation.rs", "system/pending.rs"],
            &oslo,
            None,
        ),
        client(
            "bergen-epj",
            BERGEN,
            &["system/Communication.rs"],
            &bergen,
            None,
        ),
    ];
    let auth = Authority::from_config(&cfg, Arc::new(store)).unwrap_or_else(|e| panic!("{e}"));
    Fixture {
        rt,
        auth,
        oslo,
        bergen,
        _dir: dir,
    }
}

fn now() -> u64 {
    now_secs()
}

fn claims(id: &str) -> Value {
    let n = now();
    json!({
        "iss": id, "sub": id, "aud": TOKEN_URL,
        "exp": n + 120, "iat": n,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

fn sign(key: &TestKey, claims: &Value) -> String {
    encode(&Header::new(key.alg), claims, &key.enc).unwrap_or_else(|e| panic!("{e}"))
}

fn form(assertion: &str, scope: Option<&str>) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    s.append_pair("grant_type", "client_credentials");
    s.append_pair("client_assertion_type", JWT_BEARER);
    s.append_pair("client_assertion", assertion);
    if let Some(sc) = scope {
        s.append_pair("scope", sc);
    }
    s.finish().into_bytes()
}

/// The OAuth error and reason of a token request, or "ok".
fn outcome(f: &Fixture, body: &[u8]) -> (&'static str, &'static str) {
    match f.issue(body) {
        Ok(_) => ("ok", "ok"),
        Err(e) => (e.error, e.reason.as_str()),
    }
}

fn assertion_outcome(f: &Fixture, assertion: &str) -> (&'static str, &'static str) {
    outcome(f, &form(assertion, None))
}

#[test]
fn valid_assertions_es256_and_rs256_get_tokens() {
    let f = fixture();
    assert_eq!(
        assertion_outcome(&f, &sign(&f.oslo, &claims("oslo-epj"))),
        ("ok", "ok")
    );
    assert_eq!(
        assertion_outcome(&f, &sign(&f.bergen, &claims("bergen-epj"))),
        ("ok", "ok")
    );
    // aud as an array holding the token URL is accepted too.
    let mut c = claims("oslo-epj");
    c["aud"] = json!([TOKEN_URL]);
    assert_eq!(assertion_outcome(&f, &sign(&f.oslo, &c)), ("ok", "ok"));
}

#[test]
fn bad_signature_and_wrong_key_are_refused() {
    let f = fixture();
    let good = sign(&f.oslo, &claims("oslo-epj"));
    let (head, rest) = good.split_once('.').unwrap_or_default();
    let (body, sig) = rest.split_once('.').unwrap_or_default();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap_or_default();
    sig[5] ^= 1;
    let tampered = format!("{head}.{body}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(
        assertion_outcome(&f, &tampered),
        ("invalid_client", "bad_signature")
    );
    // Signed by another EC key than the one registered.
    let other = ec_key();
    assert_eq!(
        assertion_outcome(&f, &sign(&other, &claims("oslo-epj"))),
        ("invalid_client", "bad_signature")
    );
    // Bergen's RSA key claiming to be Oslo's EC client.
    assert_eq!(
        assertion_outcome(&f, &sign(&f.bergen, &claims("oslo-epj"))),
        ("invalid_client", "alg_mismatch")
    );
}

#[test]
fn alg_none_and_hmac_with_the_public_key_are_refused() {
    let f = fixture();
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims("oslo-epj").to_string());
    assert_eq!(
        assertion_outcome(&f, &format!("{head}.{body}.")),
        ("invalid_client", "alg_none")
    );
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let key = EncodingKey::from_secret(&f.oslo.public);
        let t = encode(&Header::new(alg), &claims("oslo-epj"), &key).unwrap_or_default();
        assert_eq!(assertion_outcome(&f, &t), ("invalid_client", "alg_hmac"));
        let key = EncodingKey::from_secret(&f.bergen.public);
        let t = encode(&Header::new(alg), &claims("bergen-epj"), &key).unwrap_or_default();
        assert_eq!(assertion_outcome(&f, &t), ("invalid_client", "alg_hmac"));
    }
}

#[test]
fn time_rules() {
    let f = fixture();
    let n = now();
    let with = |k: &str, v: Value| {
        let mut c = claims("oslo-epj");
        c[k] = v;
        assertion_outcome(&f, &sign(&f.oslo, &c))
    };
    assert_eq!(with("exp", json!(n - 1)), ("invalid_client", "expired"));
    assert_eq!(
        with("exp", json!(n + 600)),
        ("invalid_client", "exp_too_far")
    );
    assert_eq!(with("exp", json!(n + 300)), ("ok", "ok"));
    assert_eq!(
        with("iat", json!(n + 120)),
        ("invalid_client", "not_yet_valid")
    );
    assert_eq!(
        with("nbf", json!(n + 120)),
        ("invalid_client", "not_yet_valid")
    );
    assert_eq!(with("iat", json!(n + 10)), ("ok", "ok"), "within leeway");
    let mut c = claims("oslo-epj");
    c.as_object_mut().map(|o| o.remove("exp"));
    assert_eq!(
        assertion_outcome(&f, &sign(&f.oslo, &c)),
        ("invalid_client", "malformed")
    );
}

#[test]
fn audience_issuer_subject_and_client_rules() {
    let f = fixture();
    let with = |k: &str, v: Value| {
        let mut c = claims("oslo-epj");
        c[k] = v;
        assertion_outcome(&f, &sign(&f.oslo, &c))
    };
    assert_eq!(
        with("aud", json!("https://hub.example/oauth/token/")),
        ("invalid_client", "wrong_audience")
    );
    assert_eq!(
        with("aud", json!("https://hub.example")),
        ("invalid_client", "wrong_audience")
    );
    assert_eq!(
        with("sub", json!("bergen-epj")),
        ("invalid_client", "wrong_issuer")
    );
    let mut c = claims("oslo-epj");
    c["iss"] = json!("nobody");
    c["sub"] = json!("nobody");
    assert_eq!(
        assertion_outcome(&f, &sign(&f.oslo, &c)),
        ("invalid_client", "unknown_client")
    );
    assert_eq!(with("jti", json!("")), ("invalid_client", "missing_jti"));
    assert_eq!(
        with("jti", json!("x".repeat(300))),
        ("invalid_client", "missing_jti")
    );
}

#[test]
fn a_jti_is_used_once_and_a_refused_assertion_does_not_use_it_up() {
    let f = fixture();
    let mut c = claims("oslo-epj");
    c["aud"] = json!("wrong");
    let jti = c["jti"].clone();
    assert_eq!(
        assertion_outcome(&f, &sign(&f.oslo, &c)).1,
        "wrong_audience"
    );
    let mut good = claims("oslo-epj");
    good["jti"] = jti;
    let a = sign(&f.oslo, &good);
    assert_eq!(assertion_outcome(&f, &a), ("ok", "ok"));
    assert_eq!(
        assertion_outcome(&f, &a),
        ("invalid_client", "replayed_jti")
    );
}

#[test]
fn form_rules_and_scopes() {
    let f = fixture();
    let a = || sign(&f.oslo, &claims("oslo-epj"));
    let body = |pairs: &[(&str, &str)]| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(k, v);
        }
        s.finish().into_bytes()
    };
    let x = a();
    assert_eq!(
        outcome(
            &f,
            &body(&[
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &x)
            ])
        ),
        ("invalid_request", "invalid_request")
    );
    assert_eq!(
        outcome(
            &f,
            &body(&[
                ("grant_type", "authorization_code"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &x)
            ])
        ),
        ("unsupported_grant_type", "unsupported_grant_type")
    );
    assert_eq!(
        outcome(
            &f,
            &body(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "urn:other"),
                ("client_assertion", &x)
            ])
        ),
        ("invalid_request", "invalid_request")
    );
    assert_eq!(
        outcome(
            &f,
            &body(&[
                ("grant_type", "client_credentials"),
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &x)
            ])
        ),
        ("invalid_request", "invalid_request")
    );
    assert_eq!(
        outcome(&f, &form(&a(), Some("system/Communication.rs"))),
        ("invalid_scope", "invalid_scope")
    );
    assert_eq!(
        outcome(&f, &form(&a(), Some("system/Patient.rs"))),
        ("invalid_scope", "invalid_scope")
    );
    let ok = f
        .issue(&form(&a(), Some("system/Observation.rs")))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(ok["scope"], "system/Observation.rs");
    assert_eq!(ok["token_type"], "Bearer");
    let all = f
        .issue(&form(&a(), None))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(all["scope"], "system/Observation.rs system/pending.rs");
}

#[test]
fn errors_never_echo_the_assertion() {
    let f = fixture();
    let mut c = claims("oslo-epj");
    c["aud"] = json!("wrong");
    let a = sign(&f.oslo, &c);
    let Err(e) = f.issue(&form(&a, None)) else {
        panic!("accepted");
    };
    let resp = axum::response::IntoResponse::into_response(e);
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    assert!(!super::Reason::WrongAudience.describe().contains(&a));
}

mod caller;
