//! Bearer tokens on requests: missing, invalid, expired, tampered, foreign;
//! scopes, municipalities, the pull consumer, external issuers.

use super::*;

fn token(f: &Fixture, key: &TestKey, id: &str, scope: Option<&str>) -> String {
    let v = f
        .issue(&form(&sign(key, &claims(id)), scope))
        .unwrap_or_else(|e| panic!("{e:?}"));
    v["access_token"].as_str().unwrap_or_default().to_string()
}

fn bearer(t: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap_or_else(|e| panic!("{e}")),
    );
    h
}

fn org(s: &str) -> Orgnr {
    Orgnr::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn nf() -> ApiError {
    ApiError::not_found("no such thing")
}

#[test]
fn bearer_missing_invalid_and_valid() {
    let f = fixture();
    let e = f.auth.caller(&HeaderMap::new()).err().unwrap_or_else(nf);
    assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    assert_eq!(e.challenge.as_deref(), Some("Bearer realm=\"knutepunkt\""));
    let e = f
        .auth
        .caller(&bearer("abc.def.ghi"))
        .err()
        .unwrap_or_else(nf);
    assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    assert!(e.challenge.unwrap_or_default().contains("invalid_token"));
    let mut basic = HeaderMap::new();
    basic.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic dXNlcjpwYXNz"),
    );
    assert_eq!(
        f.auth.caller(&basic).err().map(|e| e.status),
        Some(StatusCode::UNAUTHORIZED)
    );
    // A client assertion is not an access token.
    let assertion = sign(&f.oslo, &claims("oslo-epj"));
    assert_eq!(
        f.auth.caller(&bearer(&assertion)).err().map(|e| e.status),
        Some(StatusCode::UNAUTHORIZED)
    );
    let t = token(&f, &f.oslo, "oslo-epj", None);
    let caller = f.auth.caller(&bearer(&t)).unwrap_or_else(|e| panic!("{e}"));
    let Caller::Client(p) = &caller else {
        panic!("not a client")
    };
    assert_eq!(p.client_id, "oslo-epj");
    assert_eq!(p.municipality, org(OSLO));
}

#[test]
fn expired_tampered_and_foreign_tokens_are_401() {
    let f = fixture();
    let t = token(&f, &f.oslo, "oslo-epj", None);
    assert_eq!(
        super::bearer::verify(&f.auth, &t, now() + 301),
        Err(Reason::Expired)
    );
    // Re-signed with a client key instead of the hub's.
    let mut c: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap_or_default())
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    assert_eq!(
        super::bearer::verify(&f.auth, &sign(&f.oslo, &c), now()),
        Err(Reason::BadSignature)
    );
    // HS256 with the hub's public key as the secret.
    let hub_public = match f.auth.hub_key.decoding.kind() {
        jsonwebtoken::DecodingKeyKind::SecretOrDer(b) => b.clone(),
        _ => Vec::new(),
    };
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(&hub_public),
    )
    .unwrap_or_default();
    assert_eq!(
        super::bearer::verify(&f.auth, &forged, now()),
        Err(Reason::AlgHmac)
    );
    c["exp"] = json!(now() + 3600);
    let too_long =
        encode(&Header::new(Algorithm::ES256), &c, &f.auth.hub_key.encoding).unwrap_or_default();
    assert_eq!(
        super::bearer::verify(&f.auth, &too_long, now()),
        Err(Reason::ExpTooFar)
    );
    c["exp"] = json!(now() + 60);
    c["aud"] = json!("elsewhere");
    let wrong_aud =
        encode(&Header::new(Algorithm::ES256), &c, &f.auth.hub_key.encoding).unwrap_or_default();
    assert_eq!(
        super::bearer::verify(&f.auth, &wrong_aud, now()),
        Err(Reason::WrongAudience)
    );
}

#[test]
fn scope_and_municipality_decisions() {
    let f = fixture();
    let t = token(&f, &f.oslo, "oslo-epj", Some("system/Observation.rs"));
    let caller = f.auth.caller(&bearer(&t)).unwrap_or_else(|e| panic!("{e}"));
    assert!(caller.authorize(org(OSLO), Scope::Observation, nf).is_ok());
    let e = caller
        .authorize(org(OSLO), Scope::Communication, nf)
        .err()
        .unwrap_or_else(nf);
    assert_eq!(e.status, StatusCode::FORBIDDEN);
    assert!(
        e.challenge
            .unwrap_or_default()
            .contains("insufficient_scope")
    );
    // Not granted in the token even though the client has it.
    let e = caller
        .authorize(org(OSLO), Scope::Pending, nf)
        .err()
        .unwrap_or_else(nf);
    assert_eq!(e.status, StatusCode::FORBIDDEN);
    // Another municipality: exactly the handler's not-found.
    let e = caller.authorize(org(BERGEN), Scope::Observation, nf).err();
    assert_eq!(e, Some(nf()));
    let e = caller
        .authorize(org(BERGEN), Scope::Communication, nf)
        .err();
    assert_eq!(
        e,
        Some(nf()),
        "404 before 403: no hint that the scope matters"
    );
}

#[test]
fn pull_consumer_comes_from_the_registration() {
    let p = |consumer: Option<&str>| {
        Caller::Client(Principal {
            client_id: "c".into(),
            municipality: org(OSLO),
            scopes: vec![Scope::Pending],
            consumer: consumer.map(str::to_string),
        })
    };
    assert_eq!(
        p(Some("oslo-epj")).pull_consumer(None).ok(),
        Some(Some("oslo-epj".into()))
    );
    assert_eq!(
        p(Some("oslo-epj")).pull_consumer(Some("oslo-epj")).ok(),
        Some(Some("oslo-epj".into()))
    );
    assert_eq!(
        p(Some("oslo-epj"))
            .pull_consumer(Some("oslo-other"))
            .err()
            .map(|e| e.status),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        p(None).pull_consumer(None).err().map(|e| e.status),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        Caller::InsecureDev.pull_consumer(Some("x")).ok(),
        Some(Some("x".into()))
    );
}

/// Access tokens of a configured external issuer (HelseID-like): accepted
/// with the municipality, client and scopes taken from their claims; every
/// rule checked as for the hub's own tokens.
#[test]
fn external_issuer_tokens() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_rt, store) = open_store(dir.path());
    let issuer_key = ec_key();
    let stranger_key = ec_key();
    let mut jwk = issuer_key.jwk.clone();
    jwk["kid"] = json!("ext-1");
    jwk["alg"] = json!("ES256");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = Config::default();
    cfg.auth.external = Some(crate::auth::config::ExternalIssuerConfig {
        issuer: "https://sts.example".into(),
        jwks_file: jwks,
        audience: "knutepunkt".into(),
        municipality_claim: "orgnr".into(),
        scope_claim: "scope".into(),
        client_claim: "client_id".into(),
        consumers: [("dips".to_string(), "oslo-epj".to_string())].into(),
    });
    let auth = Authority::from_config(&cfg, Arc::new(store)).unwrap_or_else(|e| panic!("{e}"));
    let n = now();
    let good = json!({
        "iss": "https://sts.example", "aud": "knutepunkt", "exp": n + 120, "iat": n,
        "orgnr": OSLO, "scope": "system/Observation.rs system/pending.rs", "client_id": "dips",
    });
    let sign = |claims: &Value, key: &TestKey| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("ext-1".into());
        encode(&h, claims, &key.enc).unwrap_or_else(|e| panic!("{e}"))
    };
    let p = bearer::verify(&auth, &sign(&good, &issuer_key), n).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.municipality.to_string(), OSLO);
    assert_eq!(p.client_id, "dips");
    assert_eq!(p.consumer.as_deref(), Some("oslo-epj"));
    assert!(p.scopes.contains(&Scope::Observation) && !p.scopes.contains(&Scope::Communication));

    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let cases = [
        (
            "other key",
            sign(&good, &stranger_key),
            Reason::BadSignature,
        ),
        // An issuer nobody configured is checked as a hub token: no trusted
        // key signed it.
        (
            "unknown issuer",
            sign(&with("iss", json!("https://evil.example")), &issuer_key),
            Reason::BadSignature,
        ),
        (
            "wrong audience",
            sign(&with("aud", json!("someone-else")), &issuer_key),
            Reason::WrongAudience,
        ),
        (
            "expired",
            sign(&with("exp", json!(n - 60)), &issuer_key),
            Reason::Expired,
        ),
        (
            "no municipality",
            sign(&with("orgnr", json!("123")), &issuer_key),
            Reason::Malformed,
        ),
    ];
    for (what, token, want) in cases {
        let got = bearer::verify(&auth, &token, n).err();
        assert_eq!(got, Some(want), "{what}");
    }
}
