//! EPJ clients against the real binary over HTTPS: each client sees only
//! its own municipality (another's data answers 404 exactly like data that
//! does not exist), every bad assertion at `/oauth/token` and every bad
//! bearer token is refused and counted by reason, a scope that does not
//! cover the request is 403, and the admin API has its own credential.

use conformance_tests::harness::ok;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use conformance_tests::harness::events::{self, BERGEN, OSLO};
use conformance_tests::harness::{
    self, ADMIN_TOKEN, Hub, HubOptions, ReceiptStatus, assertion, http_client, metric,
    request_token, token,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use knutepunkt::proto::v1 as pb;
use serde_json::{Value, json};

fn now() -> u64 {
    ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)).as_secs()
}

/// A hub that signs its access tokens with a key the test knows (so it can
/// forge tokens that break exactly one rule).
async fn hub() -> (tempfile::TempDir, Hub) {
    let dir = ok(tempfile::tempdir());
    let key = ok(harness::certs()).join("epj-oslo-vakt.key");
    let opts = HubOptions {
        env: vec![(
            "KNUTEPUNKT_AUTH__SIGNING_KEY_FILE".into(),
            key.display().to_string(),
        )],
        ..HubOptions::default()
    };
    let hub = Hub::start(dir.path(), opts)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    (dir, hub)
}

fn origin(hub: &Hub) -> String {
    format!("https://{}", hub.http)
}

/// GET `url` with `Authorization: <auth>` (none with `None`): status,
/// `WWW-Authenticate`, body.
async fn get_with(url: &str, auth: Option<&str>) -> (u16, Option<String>, Value) {
    let mut r = ok(http_client()).get(url);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let resp = ok(r.send().await);
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, www, body)
}

async fn get_as(client: &str, hub: &Hub, url: &str) -> (u16, Value) {
    let t = ok(token(&origin(hub), client).await);
    let (status, _, body) = get_with(url, Some(&format!("Bearer {t}"))).await;
    (status, body)
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    ok(jsonwebtoken::encode(&h, claims, key))
}

fn ec_key(path: &Path) -> EncodingKey {
    ok(EncodingKey::from_ec_pem(&ok(std::fs::read(path))))
}

/// An unsigned JWT (`alg: none`).
fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// The claims of a JWT, unverified.
fn claims_of(jwt: &str) -> Value {
    let body = jwt.split('.').nth(1).unwrap_or_default();
    ok(serde_json::from_slice(&ok(URL_SAFE_NO_PAD.decode(body))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_sees_only_its_own_municipality() {
    let (_d, hub) = hub().await;
    let mut c = ok(hub.client().await);
    let mut refs: Vec<(&str, &str, String)> = Vec::new();
    for (org, n) in [(OSLO, 1), (BERGEN, 2)] {
        for ev in [
            events::heart_rate(&format!("hr-{n}"), org, n),
            events::alarm(&format!("al-{n}"), org, n, "4.2", pb::Severity::Yellow),
        ] {
            let r = ok(c.submit(ev).await).into_inner();
            assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
            let rt = if r.resource.starts_with("Observation/") {
                "Observation"
            } else {
                "Communication"
            };
            refs.push((org, rt, r.resource));
        }
    }
    for (client, own) in [("oslo-epj", OSLO), ("bergen-epj", BERGEN)] {
        for (org, rt, r) in &refs {
            let (status, body) = get_as(client, &hub, &format!("{}/{r}", hub.fhir_base(org))).await;
            let missing = format!("{rt}/{}", uuid_like(r));
            let (m_status, m_body) =
                get_as(client, &hub, &format!("{}/{missing}", hub.fhir_base(own))).await;
            assert_eq!(m_status, 404);
            if *org == own {
                assert_eq!(status, 200, "{client} {r}: {body}");
                assert_eq!(format!("{rt}/{}", body["id"].as_str().unwrap_or("")), *r);
            } else {
                assert_eq!(status, 404, "{client} read {org}'s {r}: {body}");
                assert_eq!(
                    body, m_body,
                    "another municipality's resource must look exactly like a missing one"
                );
            }
            let (status, body) =
                get_as(client, &hub, &format!("{}/{rt}", hub.fhir_base(org))).await;
            if *org == own {
                assert_eq!(status, 200, "{body}");
                let ids: Vec<String> = body["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| format!("{rt}/{}", e["resource"]["id"].as_str().unwrap_or("")))
                    .collect();
                assert_eq!(ids, vec![r.clone()], "{client} search {rt}");
            } else {
                assert_eq!(status, 404, "{client} searched {org}: {body}");
                let (_, nobody) =
                    get_as(client, &hub, &hub.url(&format!("/fhir/r4/000000000/{rt}"))).await;
                assert_eq!(body, nobody, "the 404 tells the municipality exists");
            }
        }
        // Audit trail and $pending of another municipality: 404 too.
        let other = if own == OSLO { BERGEN } else { OSLO };
        for path in ["AuditEvent", "$pending"] {
            let (status, body) =
                get_as(client, &hub, &format!("{}/{path}", hub.fhir_base(other))).await;
            assert_eq!(status, 404, "{client} {other}/{path}: {body}");
        }
    }
    let m = ok(hub.metrics().await);
    // 2 clients × (2 reads + 2 searches + 2 other endpoints). Searches of
    // 000000000 are refused before auth: it is no organisation number.
    assert_eq!(
        metric(
            &m,
            "knutepunkt_auth_rejected_total",
            &[("endpoint", "fhir"), ("reason", "other_municipality")]
        ),
        12.0,
        "{m}"
    );
}

/// The same id shape, but an id nothing has.
fn uuid_like(r: &str) -> String {
    let id = r.split('/').nth(1).unwrap_or_default();
    let flipped: String = id
        .chars()
        .map(|c| {
            if c == '0' {
                '1'
            } else if c.is_ascii_hexdigit() {
                '0'
            } else {
                c
            }
        })
        .collect();
    flipped
}

/// The value of `knutepunkt_auth_rejected_total{endpoint, reason}`.
async fn rejected(hub: &Hub, endpoint: &str, reason: &str) -> f64 {
    metric(
        &ok(hub.metrics().await),
        "knutepunkt_auth_rejected_total",
        &[("endpoint", endpoint), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_assertions_are_refused_and_counted() {
    let (_d, hub) = hub().await;
    let foreign = foreign_certs();
    let aud = format!("{}/oauth/token", origin(&hub));
    let cases = bad_assertions(&hub, &aud, foreign.path());
    for (reason, a) in &cases {
        let before = rejected(&hub, "token", reason).await;
        let (status, body) = ok(request_token(&origin(&hub), a).await);
        assert_eq!(status, 400, "{reason}: {body}");
        assert_eq!(body["error"], "invalid_client", "{reason}: {body}");
        assert!(body.get("access_token").is_none(), "{reason}: {body}");
        assert!(
            !body.to_string().contains(a.as_str()),
            "{reason}: the answer echoes the assertion"
        );
        let after = rejected(&hub, "token", reason).await;
        assert_eq!(after - before, 1.0, "{reason} not counted once");
    }
    let good = a_replay_is_refused(&hub, &aud).await;
    a_scope_not_granted_is_refused(&hub, &aud).await;
    // Nothing of any assertion reached the log.
    let logs = hub.logs();
    for (reason, a) in &cases {
        let sig = a.rsplit('.').next().unwrap_or_default();
        assert!(
            sig.len() < 8 || !logs.contains(sig),
            "{reason}: the assertion is in the log"
        );
    }
    assert!(!logs.contains(&good), "an assertion is in the log");
}

/// Another PKI with a client of the same name: its key is not the one the
/// hub knows.
fn foreign_certs() -> tempfile::TempDir {
    let foreign = ok(tempfile::tempdir());
    ok(harness::dev_certs(
        foreign.path(),
        &["--vendor", "x", "--epj-client", "oslo-epj"],
    ));
    foreign
}

/// One client assertion per way of getting it wrong, with the
/// `knutepunkt_auth_rejected_total` reason each must be counted under.
fn bad_assertions(hub: &Hub, aud: &str, foreign: &std::path::Path) -> Vec<(&'static str, String)> {
    let certs = ok(harness::certs());
    let key = ec_key(&certs.join("epj-oslo-epj.key"));
    let other_key = ec_key(&foreign.join("epj-oslo-epj.key"));
    let public = ok(std::fs::read(certs.join("epj-oslo-epj.jwk.json")));
    let t = now();
    let claims = |jti: &str, f: &dyn Fn(&mut Value)| {
        let mut c = json!({
            "iss": "oslo-epj", "sub": "oslo-epj", "aud": aud,
            "iat": t, "exp": t + 120, "jti": format!("bad-{jti}-{t}"),
        });
        f(&mut c);
        c
    };
    let es = |c: &Value| sign(Algorithm::ES256, &key, Some("oslo-epj"), c);
    let cases: Vec<(&str, String)> = vec![
        ("alg_none", unsigned(&claims("none", &|_| {}))),
        (
            "alg_hmac",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&public),
                Some("oslo-epj"),
                &claims("hs", &|_| {}),
            ),
        ),
        (
            "expired",
            es(&claims("exp", &|c| {
                c["iat"] = json!(t - 600);
                c["exp"] = json!(t - 60);
            })),
        ),
        (
            "exp_too_far",
            es(&claims("far", &|c| c["exp"] = json!(t + 3600))),
        ),
        (
            "not_yet_valid",
            es(&claims("iat", &|c| c["iat"] = json!(t + 600))),
        ),
        (
            "wrong_audience",
            es(&claims("aud", &|c| {
                c["aud"] = json!(format!("{}/fhir/r4", origin(hub)))
            })),
        ),
        (
            "wrong_issuer",
            es(&claims("sub", &|c| c["sub"] = json!("bergen-epj"))),
        ),
        (
            "unknown_client",
            es(&claims("unk", &|c| {
                c["iss"] = json!("nobody-epj");
                c["sub"] = json!("nobody-epj");
            })),
        ),
        (
            "bad_signature",
            sign(
                Algorithm::ES256,
                &other_key,
                Some("oslo-epj"),
                &claims("key", &|_| {}),
            ),
        ),
        (
            "missing_jti",
            es(&claims("jti", &|c| {
                c.as_object_mut().map(|o| o.remove("jti"));
            })),
        ),
        ("malformed", "not.a.jwt".to_string()),
    ];
    cases
}

/// A fresh, valid assertion works once; its replay is refused. Returns it.
async fn a_replay_is_refused(hub: &Hub, aud: &str) -> String {
    let good = ok(assertion("oslo-epj", aud));
    let (status, body) = ok(request_token(&origin(hub), &good).await);
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
    let (status, body) = ok(request_token(&origin(hub), &good).await);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(rejected(hub, "token", "replayed_jti").await, 1.0);
    good
}

/// A scope the client was not granted.
async fn a_scope_not_granted_is_refused(hub: &Hub, aud: &str) {
    let form = format!(
        "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={}&scope=system%2FPatient.rs",
        ok(assertion("oslo-epj", aud))
    );
    let r = ok(ok(http_client())
        .post(aud)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await);
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = ok(r.json().await);
    assert_eq!(body["error"], "invalid_scope", "{body}");
    assert_eq!(rejected(hub, "token", "invalid_scope").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bearer_tokens_are_401_and_counted_and_scopes_are_403() {
    let (_d, hub) = hub().await;
    let foreign = foreign_certs();
    let url = format!("{}/Observation", hub.fhir_base(OSLO));
    let real = ok(token(&origin(&hub), "oslo-epj").await);
    let cases = bad_bearer_tokens(&hub, &url, &real, foreign.path()).await;
    for (reason, auth) in &cases {
        let before = rejected(&hub, "fhir", reason).await;
        let (status, www, body) = get_with(&url, auth.as_deref()).await;
        assert_eq!(status, 401, "{reason}: {body}");
        let www = www.unwrap_or_else(|| panic!("{reason}: no WWW-Authenticate"));
        assert!(www.starts_with("Bearer"), "{reason}: {www}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{reason}: {body}");
        if let Some(a) = auth {
            let tok = a.split(' ').nth(1).unwrap_or_default();
            assert!(
                !body.to_string().contains(tok) && !www.contains(tok),
                "{reason}: the answer echoes the token"
            );
        }
        let after = rejected(&hub, "fhir", reason).await;
        assert_eq!(after - before, 1.0, "{reason} not counted once");
    }

    a_narrow_scope_is_403(&hub, &url).await;
    // No token, key or assertion reached the log.
    let logs = hub.logs();
    assert!(!logs.contains(&real), "an access token is in the log");
    for (reason, auth) in &cases {
        if let Some(sig) = auth.as_deref().and_then(|a| a.rsplit('.').next())
            && sig.len() > 16
        {
            assert!(!logs.contains(sig), "{reason}: a token is in the log");
        }
    }
}

/// One `Authorization` header per way of getting a bearer token wrong,
/// with its rejection reason. `real` is a token the hub issued.
async fn bad_bearer_tokens(
    hub: &Hub,
    url: &str,
    real: &str,
    foreign: &std::path::Path,
) -> Vec<(&'static str, Option<String>)> {
    let certs = ok(harness::certs());
    // A real token, to learn the claims' shape; the forgeries below change
    // one claim each and are signed with the hub's (test) key.
    let base = claims_of(real);
    let hub_key = ec_key(&certs.join("epj-oslo-vakt.key"));
    let t = now();
    let forge = |f: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        c["iat"] = json!(t);
        c["exp"] = json!(t + 120);
        f(&mut c);
        sign(Algorithm::ES256, &hub_key, None, &c)
    };
    // The control: a forgery that breaks nothing is accepted, so each case
    // below fails for its one broken rule.
    let (status, _, body) = get_with(url, Some(&format!("Bearer {}", forge(&|_| {})))).await;
    assert_eq!(status, 200, "{body}");

    let public = ok(std::fs::read(certs.join("epj-oslo-vakt.jwk.json")));
    let other_key = ec_key(&foreign.join("epj-oslo-epj.key"));
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing_token", None),
        ("malformed", Some("Bearer not-a-token".into())),
        ("malformed", Some(format!("Basic {real}"))),
        ("alg_none", Some(format!("Bearer {}", unsigned(&base)))),
        (
            "alg_hmac",
            Some(format!(
                "Bearer {}",
                sign(
                    Algorithm::HS256,
                    &EncodingKey::from_secret(&public),
                    None,
                    &base
                )
            )),
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                forge(&|c| {
                    c["iat"] = json!(t - 900);
                    c["exp"] = json!(t - 600);
                })
            )),
        ),
        (
            "exp_too_far",
            Some(format!("Bearer {}", forge(&|c| c["exp"] = json!(t + 3600)))),
        ),
        (
            "not_yet_valid",
            Some(format!("Bearer {}", forge(&|c| c["iat"] = json!(t + 600)))),
        ),
        (
            "wrong_audience",
            Some(format!(
                "Bearer {}",
                forge(&|c| c["aud"] = json!("https://elsewhere.example/fhir/r4"))
            )),
        ),
        (
            "wrong_issuer",
            Some(format!(
                "Bearer {}",
                forge(&|c| c["iss"] = json!("https://elsewhere.example"))
            )),
        ),
        (
            "unknown_client",
            Some(format!(
                "Bearer {}",
                forge(&|c| c["client_id"] = json!("nobody-epj"))
            )),
        ),
        (
            "bad_signature",
            Some(format!(
                "Bearer {}",
                sign(Algorithm::ES256, &other_key, None, &claims_of(real))
            )),
        ),
        (
            // A client assertion is not an access token.
            "bad_signature",
            Some(format!(
                "Bearer {}",
                ok(assertion(
                    "oslo-epj",
                    &format!("{}/oauth/token", origin(hub))
                ))
            )),
        ),
    ];
    cases
}

/// Scopes: a token for Observations only reads Observations, and gets 403
/// (counted) for the rest.
async fn a_narrow_scope_is_403(hub: &Hub, url: &str) {
    let aud = format!("{}/oauth/token", origin(hub));
    let form = format!(
        "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={}&scope=system%2FObservation.rs",
        ok(assertion("oslo-epj", &aud))
    );
    let r = ok(ok(http_client())
        .post(&aud)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await);
    assert_eq!(r.status().as_u16(), 200);
    let narrow: Value = ok(r.json().await);
    let narrow = format!("Bearer {}", narrow["access_token"].as_str().unwrap_or(""));
    let (status, _, body) = get_with(url, Some(&narrow)).await;
    assert_eq!(status, 200, "{body}");
    for path in ["Communication", "AuditEvent", "$pending"] {
        let before = rejected(hub, "fhir", "insufficient_scope").await;
        let (status, _, body) =
            get_with(&format!("{}/{path}", hub.fhir_base(OSLO)), Some(&narrow)).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(
            rejected(hub, "fhir", "insufficient_scope").await - before,
            1.0,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_its_own_token() {
    let (_d, hub) = hub().await;
    let url = format!("http://{}/admin/destinations", hub.admin);
    let epj = ok(token(&origin(&hub), "oslo-epj").await);
    for (what, auth) in [
        ("no token", None),
        (
            "wrong token",
            Some("Bearer wrong-admin-token-0000".to_string()),
        ),
        ("an EPJ access token", Some(format!("Bearer {epj}"))),
    ] {
        let (status, www, body) = get_with(&url, auth.as_deref()).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(www.is_some_and(|w| w.starts_with("Bearer")), "{what}");
    }
    assert_eq!(rejected(&hub, "admin", "admin_token").await, 3.0);
    let (status, _, body) = get_with(&url, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    assert_eq!(status, 200, "{body}");
    // … and the admin token is no FHIR credential.
    let (status, _, _) = get_with(
        &format!("{}/Observation", hub.fhir_base(OSLO)),
        Some(&format!("Bearer {ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        !hub.logs().contains(ADMIN_TOKEN),
        "the admin token is in the log"
    );
}
