//! The FHIR gateway's `private_key_jwt` path: a home-monitoring platform
//! without a client certificate gets an access token at the gateway's
//! `POST /oauth/token` with an assertion signed by its registered key, and
//! posts Observations with it. The real hub and gateway binaries; the
//! platform's key pair comes from a second `knutepunkt dev-certs` run.

use anyhow::{Result, anyhow};
use conformance_tests::fhirgw::{Gateway, platform_client};
use conformance_tests::harness::events::{BERGEN, OSLO};
use conformance_tests::harness::{self, Hub, HubOptions, get_json, ok};
use knutepunkt::domain::synthetic;
use serde_json::{Value, json};

const PLATFORM: &str = "nordic-rpm";

struct Setup {
    _dir: tempfile::TempDir,
    keys: tempfile::TempDir,
    hub: Hub,
    gw: Gateway,
}

/// Hub + gateway; platform `nordic-rpm` (Oslo only) has a `jwk_file` and no
/// client certificate; it submits to the hub with the demo vendor's.
async fn setup() -> Result<Setup> {
    let dir = tempfile::tempdir()?;
    let keys = tempfile::tempdir()?;
    harness::dev_certs(keys.path(), &["--epj-client", PLATFORM])?;
    let hub = Hub::start(dir.path(), HubOptions::default()).await?;
    let certs = harness::certs()?;
    let (c, k) = (certs.display(), keys.path().display());
    let platforms = format!(
        r#"
[[platforms]]
id = "{PLATFORM}"
municipalities = ["{OSLO}"]
jwk_file = "{k}/epj-{PLATFORM}.jwk.json"
hub_cert_file = "{c}/vendor-demo-vendor.pem"
hub_key_file = "{c}/vendor-demo-vendor.key"
"#
    );
    let gw = Gateway::start_with(
        &hub,
        r#"public_url = "https://localhost:{PORT}""#,
        &platforms,
    )
    .await?;
    Ok(Setup {
        _dir: dir,
        keys,
        hub,
        gw,
    })
}

impl Setup {
    fn token_url(&self) -> String {
        self.gw.url("/oauth/token")
    }

    /// An assertion signed with the platform's key; `claims` override the
    /// defaults (iss = sub = platform, aud = token URL, fresh iat/exp/jti).
    fn assertion(&self, claims: Value) -> Result<String> {
        self.signed(
            &self.keys.path().join(format!("epj-{PLATFORM}.key")),
            claims,
        )
    }

    /// The same, signed with the key in `key_file`.
    fn signed(&self, key_file: &std::path::Path, claims: Value) -> Result<String> {
        let pem = std::fs::read(key_file)?;
        let now = chrono::Utc::now().timestamp();
        let mut c = json!({
            "iss": PLATFORM, "sub": PLATFORM, "aud": self.token_url(),
            "iat": now, "exp": now + 60, "jti": uuid_like(),
        });
        for (k, v) in claims.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        Ok(jsonwebtoken::encode(
            &header,
            &c,
            &jsonwebtoken::EncodingKey::from_ec_pem(&pem)?,
        )?)
    }

    /// POST /oauth/token without a client certificate: (status, body).
    async fn token_request(&self, assertion: &str) -> Result<(u16, Value)> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", assertion)
            .finish();
        let r = platform_client(None)?
            .post(self.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    async fn token(&self) -> Result<String> {
        let (status, body) = self.token_request(&self.assertion(json!({}))?).await?;
        body["access_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no token ({status}): {body}\n{}", self.gw.log()))
    }

    /// POSTs an Observation for `orgnr` without a client certificate, with
    /// `bearer` if given: (status, Location, body, WWW-Authenticate).
    async fn post(
        &self,
        orgnr: &str,
        bearer: Option<&str>,
        obs: &Value,
    ) -> Result<(u16, Option<String>, Value, Option<String>)> {
        let mut r = platform_client(None)?
            .post(self.gw.url(&format!("/fhir/r4/{orgnr}/Observation")))
            .header("content-type", "application/fhir+json")
            .body(obs.to_string());
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        let r = r.send().await?;
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (status, location, www) = (r.status().as_u16(), h("location"), h("www-authenticate"));
        Ok((status, location, r.json().await.unwrap_or(Value::Null), www))
    }
}

/// `s` with the ASCII character at `at` replaced by another base64url one.
fn flip(s: &str, at: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap_or_default()
}

fn uuid_like() -> String {
    format!("jti-{}-{}", std::process::id(), fastrand::u64(..))
}

fn spo2(resident: u32) -> Value {
    let at = (chrono::Utc::now() - chrono::Duration::minutes(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "urn:iso:std:iso:11073:10101", "code": "150456" }] },
        "subject": { "identifier": { "system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": synthetic::fnr(resident) } },
        "effectiveDateTime": at,
        "device": { "identifier": { "value": "00-1C-05-FF-FE-00-00-07" } },
        "valueQuantity": { "value": 96, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%" },
    })
}

#[tokio::test]
async fn a_platform_with_a_signed_assertion_posts_without_a_certificate() {
    let s = setup().await.unwrap_or_else(|e| panic!("{e:#}"));
    let token = s.token().await.unwrap_or_else(|e| panic!("{e:#}"));

    let (status, location, body, _) = ok(s.post(OSLO, Some(&token), &spo2(31)).await);
    assert_eq!(status, 201, "{body}\n{}", s.gw.log());
    let location = location.unwrap_or_else(|| panic!("no Location: {body}"));
    let (st, stored) = ok(get_json(&format!("{}/{location}", s.hub.fhir_base(OSLO))).await);
    assert_eq!(st, 200, "{stored}");
    assert_eq!(stored["subject"]["identifier"]["value"], synthetic::fnr(31));

    // The token names the platform; its allow-list still decides.
    let (status, _, body, _) = ok(s.post(BERGEN, Some(&token), &spo2(32)).await);
    assert_eq!(status, 403, "{body}");

    // The gateway's log names the platform, never the token or the id.
    let log = s.gw.log();
    assert!(log.contains(PLATFORM), "{log}");
    assert!(!log.contains(&token), "token in the log");
    assert!(!log.contains(&synthetic::fnr(31)), "national id in the log");
}

#[tokio::test]
async fn without_a_valid_token_a_certificate_less_request_is_401() {
    let s = setup().await.unwrap_or_else(|e| panic!("{e:#}"));
    let (status, _, body, www) = ok(s.post(OSLO, None, &spo2(33)).await);
    assert_eq!(status, 401, "{body}");
    assert_eq!(www.as_deref(), Some("Bearer"));
    assert!(body.to_string().contains("/oauth/token"), "{body}");

    let token = s.token().await.unwrap_or_else(|e| panic!("{e:#}"));
    // One signature character changed (not the last: its low bits are padding).
    let forged = flip(&token, token.len() - 10);
    let (status, _, body, _) = ok(s.post(OSLO, Some(&forged), &spo2(33)).await);
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn bad_assertions_are_refused_and_none_is_good_twice() {
    let s = setup().await.unwrap_or_else(|e| panic!("{e:#}"));
    let good = ok(s.assertion(json!({})));
    let (status, body) = ok(s.token_request(&good).await);
    assert_eq!(status, 200, "{body}");
    // The same assertion again: a replay.
    let (status, body) = ok(s.token_request(&good).await);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client"))
    );
    assert!(body.to_string().contains("jti"), "{body}");

    let now = chrono::Utc::now().timestamp();
    let cases = [
        (
            "other audience",
            json!({ "aud": "https://elsewhere.test/oauth/token" }),
        ),
        (
            "issued before the gateway started",
            json!({ "iat": now - 3600 }),
        ),
        ("expired", json!({ "exp": now - 10 })),
        (
            "unknown platform",
            json!({ "iss": "stranger", "sub": "stranger" }),
        ),
    ];
    for (what, claims) in cases {
        let a = ok(s.assertion(claims));
        let (status, body) = ok(s.token_request(&a).await);
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_client", "{what}: {body}");
    }
    // The platform's name, signed with another key (an EPJ client's).
    let other_key = ok(harness::certs()).join("epj-oslo-epj.key");
    let forged = ok(s.signed(&other_key, json!({})));
    let (status, body) = ok(s.token_request(&forged).await);
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("signature"), "{body}");
}
