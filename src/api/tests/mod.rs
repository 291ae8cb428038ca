//! Router tests: real HTTP requests through [`router`] against a real
//! `EmbeddedStore` in a temp dir, records written with `EventLog::put`.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;

use super::search_params::encode_cursor;
use super::*;
use crate::domain::{VendorId, resource_id, synthetic};
use crate::normalize::Normalized;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::store::{EventLog, NewRecord, PutOutcome, patient_key, seq_to_time};

const OSLO: &str = "958935420";
const BERGEN: &str = "964338531";
const FNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.1";
const LOINC: &str = "http://loinc.org";
const VKP: &str = "http://ehelse.no/fhir/CodeSystem/vkp-alert-code-v090";
const HOST: &str = "hub.test:8080";
const NONE: Vec<uuid::Uuid> = Vec::new();

struct Hub {
    _dir: tempfile::TempDir,
    store: EmbeddedStore,
    app: Router,
}

fn orgnr(s: &str) -> Orgnr {
    Orgnr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn hub_with(municipalities: Option<BTreeSet<Orgnr>>, public_url: Option<&str>) -> Hub {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let opts = EmbeddedOptions {
        min_free_bytes: 0,
        cache_bytes: 4 * 1024 * 1024,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(dir.path(), opts, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let dyn_store: Arc<dyn Store> = Arc::new(store.clone());
    let app = router(ApiState {
        store: dyn_store.clone(),
        municipalities,
        public_url: public_url.map(str::to_string),
        pull: Arc::default(),
        destinations: Arc::default(),
        https: false,
        auth: insecure_authority(dyn_store.clone()),
        audit: crate::audit::Auditor::new(dyn_store, vec![7; 32]),
    });
    Hub {
        _dir: dir,
        store,
        app,
    }
}

/// The API tests here are about FHIR, not auth: insecure-dev mode.
fn insecure_authority(store: Arc<dyn Store>) -> Arc<crate::auth::Authority> {
    let cfg = crate::config::Config {
        insecure_dev: true,
        ..crate::config::Config::default()
    };
    Arc::new(crate::auth::Authority::from_config(&cfg, store).unwrap_or_else(|e| panic!("{e}")))
}

fn hub() -> Hub {
    hub_with(Some([orgnr(OSLO), orgnr(BERGEN)].into()), None)
}

/// What to store: one event, built by hand (normalize is not needed here).
struct Ev {
    org: &'static str,
    rt: ResourceType,
    event: String,
    patient: u32,
    code: (&'static str, &'static str),
    category: &'static str,
}

fn obs(org: &'static str, event: impl Into<String>, patient: u32, code: &'static str) -> Ev {
    Ev {
        org,
        rt: ResourceType::Observation,
        event: event.into(),
        patient,
        code: (LOINC, code),
        category: "vital-signs",
    }
}

fn alarm(org: &'static str, event: impl Into<String>, patient: u32, code: &'static str) -> Ev {
    Ev {
        org,
        rt: ResourceType::Communication,
        event: event.into(),
        patient,
        code: (VKP, code),
        category: "alert",
    }
}

/// Stores one event and returns its id and sequence number.
async fn put(store: &EmbeddedStore, ev: Ev) -> (uuid::Uuid, u64) {
    let vendor = VendorId("test-vendor".into());
    let id = resource_id(&vendor, &ev.event);
    let json = format!(
        r#"{{"resourceType":"{}","id":"{id}","status":"final","code":{{"coding":[{{"system":"{}","code":"{}"}}]}}}}"#,
        ev.rt.as_str(),
        ev.code.0,
        ev.code.1
    );
    let rec = NewRecord {
        vendor,
        event_id: ev.event.clone(),
        content_hash: [7; 32],
        municipality: orgnr(ev.org),
        patient_key: patient_key(FNR_OID, &synthetic::fnr(ev.patient)),
        resource: Normalized {
            resource_type: ev.rt,
            id,
            json,
            codes: vec![(ev.code.0.into(), ev.code.1.into())],
            category: ev.category,
            urgent: false,
        },
        answers_alarm: None,
        is_alarm: ev.rt == ResourceType::Communication,
        class: crate::store::Class::Routine,
    };
    let out = store.put(rec).await;
    assert!(matches!(out, Ok(PutOutcome::Accepted(_))), "{out:?}");
    let got = store
        .get(orgnr(ev.org), ev.rt, id)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("stored record not readable"));
    (id, got.seq)
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    fn is_fhir(&self) -> bool {
        self.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes())
            == Some(b"application/fhir+json".as_slice())
    }

    /// Asserts an OperationOutcome with this status and returns its diagnostics.
    fn outcome(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        assert!(self.is_fhir(), "{:?}", self.headers);
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{}", self.text);
        assert_eq!(v["issue"][0]["severity"], "error");
        v["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The ids in a searchset Bundle, in order.
    fn ids(&self) -> Vec<uuid::Uuid> {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text);
        assert!(self.is_fhir());
        let v = self.json();
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "searchset");
        v["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                assert_eq!(e["search"]["mode"], "match");
                let id = e["resource"]["id"].as_str().unwrap_or_default();
                let rt = e["resource"]["resourceType"].as_str().unwrap_or_default();
                assert_eq!(
                    e["fullUrl"],
                    format!("http://{HOST}/fhir/r4/{OSLO}/{rt}/{id}")
                );
                uuid::Uuid::try_parse(id).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    }

    fn link(&self, relation: &str) -> Option<String> {
        self.json()["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == relation)
            .and_then(|l| l["url"].as_str().map(str::to_string))
    }
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let resp = app
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn request(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, HOST)
}

async fn get(app: &Router, uri: &str) -> Answer {
    let req = request("GET", uri)
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("{uri}: {e}"));
    send(app, req).await
}

/// GET of an absolute link the server made.
async fn follow(app: &Router, url: &str) -> Answer {
    let path = url
        .strip_prefix(&format!("http://{HOST}"))
        .unwrap_or_else(|| panic!("link not on this host: {url}"));
    get(app, path).await
}

fn subject(n: u32) -> String {
    format!("subject:identifier={FNR_OID}%7C{}", synthetic::fnr(n))
}

fn base(org: &str) -> String {
    format!("/fhir/r4/{org}")
}

fn stamp(seq: u64) -> String {
    seq_to_time(seq).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[tokio::test]
async fn health_and_readiness() {
    let h = hub();
    let a = get(&h.app, "/healthz").await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::OK, "ok"));
    let a = get(&h.app, "/readyz").await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn metadata_lists_what_search_accepts() {
    let h = hub();
    let a = get(&h.app, &format!("{}/metadata", base(OSLO))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.is_fhir());
    let v = a.json();
    assert_eq!(v["fhirVersion"], "4.0.1");
    assert_eq!(
        v["implementation"]["url"],
        format!("http://{HOST}/fhir/r4/{OSLO}")
    );
    // Every documented parameter is accepted by search, with a sample value.
    let sample = |name: &str| -> String {
        match name {
            "subject" | "patient" => format!("{name}:identifier={FNR_OID}%7C{}", synthetic::fnr(1)),
            "code" => "code=8867-4".into(),
            "category" => "category=vital-signs".into(),
            "_lastUpdated" => "_lastUpdated=ge2024-01-01".into(),
            "_count" => "_count=5".into(),
            "_sort" => "_sort=-_lastUpdated".into(),
            "_cursor" => format!("_cursor={}", encode_cursor(false, 1)),
            "_format" => "_format=json".into(),
            other => panic!("no sample for documented parameter {other}"),
        }
    };
    for res in v["rest"][0]["resource"].as_array().into_iter().flatten() {
        let rt = res["type"].as_str().unwrap_or_default();
        for p in res["searchParam"].as_array().into_iter().flatten() {
            let q = sample(p["name"].as_str().unwrap_or_default());
            let a = get(&h.app, &format!("{}/{rt}?{q}", base(OSLO))).await;
            assert_eq!(a.status, StatusCode::OK, "{rt}?{q}: {}", a.text);
        }
    }
    // mode=full and _format are fine; other parameters are not.
    let a = get(
        &h.app,
        &format!("{}/metadata?mode=full&_format=json", base(OSLO)),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    get(&h.app, &format!("{}/metadata?foo=bar", base(OSLO)))
        .await
        .outcome(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn public_url_is_used_in_links() {
    let h = hub_with(None, Some("https://kp.kommune.no/"));
    put(&h.store, obs(OSLO, "e1", 1, "8867-4")).await;
    let v = get(&h.app, &format!("{}/metadata", base(OSLO)))
        .await
        .json();
    assert_eq!(
        v["implementation"]["url"],
        format!("https://kp.kommune.no/fhir/r4/{OSLO}")
    );
    let a = get(&h.app, &format!("{}/Observation?_count=1", base(OSLO))).await;
    assert_eq!(
        a.link("self").as_deref(),
        Some(format!("https://kp.kommune.no/fhir/r4/{OSLO}/Observation?_count=1").as_str())
    );
    let v = a.json();
    assert!(
        v["entry"][0]["fullUrl"]
            .as_str()
            .unwrap_or_default()
            .starts_with("https://kp.kommune.no/fhir/r4/958935420/Observation/")
    );
    // None = every valid orgnr is served.
    let other = synthetic::orgnr(12345678).unwrap_or_else(|| panic!("stem"));
    let a = get(&h.app, &format!("{}/Observation", base(&other))).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn read_and_not_found() {
    let h = hub();
    let (id, seq) = put(&h.store, obs(OSLO, "e1", 1, "8867-4")).await;
    let (bergen_id, _) = put(&h.store, obs(BERGEN, "b1", 1, "8867-4")).await;

    let a = get(&h.app, &format!("{}/Observation/{id}", base(OSLO))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.is_fhir());
    let v = a.json();
    assert_eq!(v["id"], id.to_string());
    assert_eq!(v["meta"]["lastUpdated"], stamp(seq));
    assert!(a.headers.contains_key(header::LAST_MODIFIED));

    let missing = get(
        &h.app,
        &format!("{}/Observation/{}", base(OSLO), uuid::Uuid::from_u128(1)),
    )
    .await
    .outcome(StatusCode::NOT_FOUND);
    // Another municipality's resource looks exactly like a missing one.
    let elsewhere = get(&h.app, &format!("{}/Observation/{bergen_id}", base(OSLO)))
        .await
        .outcome(StatusCode::NOT_FOUND);
    assert_eq!(elsewhere, missing);
    get(&h.app, &format!("{}/Observation/not-a-uuid", base(OSLO)))
        .await
        .outcome(StatusCode::NOT_FOUND);
    // The right id under the wrong type.
    get(&h.app, &format!("{}/Communication/{id}", base(OSLO)))
        .await
        .outcome(StatusCode::NOT_FOUND);
    get(&h.app, &format!("{}/Patient/{id}", base(OSLO)))
        .await
        .outcome(StatusCode::NOT_FOUND);
    // A read takes only _format.
    get(
        &h.app,
        &format!("{}/Observation/{id}?_format=json", base(OSLO)),
    )
    .await
    .json();
    get(
        &h.app,
        &format!("{}/Observation/{id}?_elements=id", base(OSLO)),
    )
    .await
    .outcome(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_or_unserved_municipality_is_404() {
    let h = hub();
    let (id, _) = put(&h.store, obs(OSLO, "e1", 1, "8867-4")).await;
    let unserved = synthetic::orgnr(12345678).unwrap_or_else(|| panic!("stem"));
    let fnr = synthetic::fnr(9);
    for org in [
        unserved.as_str(),
        "958935421",
        "95893542",
        fnr.as_str(),
        "abc",
    ] {
        for path in [
            format!("/fhir/r4/{org}/metadata"),
            format!("/fhir/r4/{org}/Observation"),
            format!("/fhir/r4/{org}/Observation/{id}"),
        ] {
            let msg = get(&h.app, &path).await.outcome(StatusCode::NOT_FOUND);
            assert!(!msg.contains(org), "{msg}");
        }
    }
    for path in [
        "/fhir/r4",
        "/fhir/r4/",
        "/fhir/r4/958935420",
        "/fhir/r4/958935420/Observation/x/y",
    ] {
        let a = get(&h.app, path).await;
        assert!(a.is_fhir(), "{path}: {} {:?}", a.status, a.headers);
        a.outcome(StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn methods_and_formats() {
    let h = hub();
    for (method, path) in [
        ("POST", format!("{}/Observation", base(OSLO))),
        (
            "PUT",
            format!("{}/Observation/{}", base(OSLO), uuid::Uuid::from_u128(1)),
        ),
        (
            "DELETE",
            format!("{}/Observation/{}", base(OSLO), uuid::Uuid::from_u128(1)),
        ),
        ("POST", format!("{}/metadata", base(OSLO))),
    ] {
        let req = request(method, &path)
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let a = send(&h.app, req).await;
        a.outcome(StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(a.headers[header::ALLOW], "GET, HEAD");
    }
    let path = format!("{}/Observation", base(OSLO));
    let with_accept = |accept: &'static str, path: String| {
        request("GET", &path)
            .header(header::ACCEPT, accept)
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    send(&h.app, with_accept("application/fhir+xml", path.clone()))
        .await
        .outcome(StatusCode::NOT_ACCEPTABLE);
    send(
        &h.app,
        with_accept("application/fhir+json;q=0, text/html", path.clone()),
    )
    .await
    .outcome(StatusCode::NOT_ACCEPTABLE);
    for ok in [
        "application/fhir+json",
        "application/fhir+json; fhirVersion=4.0",
        "application/json",
        "text/html, */*;q=0.1",
    ] {
        let a = send(&h.app, with_accept(ok, path.clone())).await;
        assert_eq!(a.status, StatusCode::OK, "{ok}");
    }
    // _format overrides Accept.
    let a = send(
        &h.app,
        with_accept("application/xml", format!("{path}?_format=json")),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    get(&h.app, &format!("{path}?_format=xml"))
        .await
        .outcome(StatusCode::NOT_ACCEPTABLE);
}

mod failures;
mod search;
