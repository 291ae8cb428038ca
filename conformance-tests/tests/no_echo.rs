//! No answer copies a request value (security review, finding 1).
//!
//! A synthetic national id is sent as parameter names, parameter values,
//! path segments, headers and bodies to every HTTP endpoint (FHIR API,
//! token endpoint, health, admin API, metrics) and in every field of a
//! gRPC event, unary and streamed. Each input is one the hub refuses; the
//! id must appear in no answer: body, header, gRPC status message,
//! metadata or receipt error. The hub's log must not hold it either.
//!
//! Successful searches are left out on purpose: a FHIR Bundle's `self`
//! link repeats the caller's own query, as FHIR requires.

use std::time::Duration;

use conformance_tests::harness::{
    ADMIN_TOKEN, Hub, HubOptions, authed, events, http_client, ok, oslo_pulled_by_vakt,
};
use knutepunkt::domain::synthetic;
use knutepunkt::proto::v1 as pb;
use reqwest::Method;

const OSLO: &str = events::OSLO;

/// The national id the test hides everywhere (day 21: no leading zero, so
/// its digits also show when it is sent as a number).
fn fnr() -> String {
    synthetic::fnr(20)
}

/// The same number with a wrong control digit.
fn bad_fnr() -> String {
    let f = fnr();
    let last = f.as_bytes()[10];
    let swapped = if last == b'9' {
        '0'
    } else {
        (last + 1) as char
    };
    format!("{}{swapped}", &f[..10])
}

fn assert_clean(what: &str, text: &str) {
    for secret in [fnr(), bad_fnr()] {
        assert!(
            !text.contains(&secret),
            "{what}: the answer copies the national id sent:\n{text}"
        );
    }
}

async fn hub() -> (tempfile::TempDir, Hub) {
    let dir = ok(tempfile::tempdir());
    // Bergen and Oslo, Oslo pulled by `oslo-vakt`.
    let extra = ok(oslo_pulled_by_vakt(None));
    let hub = ok(Hub::start(
        &dir.path().join("data"),
        HubOptions {
            config_extra: extra,
            ..HubOptions::default()
        },
    )
    .await);
    (dir, hub)
}

/// Sends one request and checks its answer; returns the status.
async fn check_http(
    what: &str,
    req: reqwest::RequestBuilder,
    expect_error: bool,
) -> reqwest::StatusCode {
    let r = ok(req.timeout(Duration::from_secs(10)).send().await);
    let status = r.status();
    let mut text = String::new();
    for (k, v) in r.headers() {
        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    text.push_str(&ok(r.text().await));
    assert_clean(what, &text);
    if expect_error {
        assert!(
            status.is_client_error(),
            "{what}: expected a 4xx, got {status}: {text}"
        );
    }
    status
}

/// FHIR API, token endpoint and health: the id as names, values, path
/// segments and headers.
async fn public_http(hub: &Hub) {
    let (f, b) = (fnr(), bad_fnr());
    let fhir = hub.fhir_base(OSLO);
    let oid = "urn:oid:2.16.578.1.12.4.1.4.1";
    let gets = [
        format!("{fhir}/metadata?{f}={f}"),
        format!("{fhir}/metadata?mode={f}"),
        format!("{fhir}/metadata?_format={f}"),
        hub.url(&format!("/fhir/r4/{f}/metadata")),
        hub.url(&format!("/fhir/r4/{f}/Observation?code=1")),
        hub.url(&format!("/fhir/r4/{f}")),
        format!("{fhir}/Observation?{f}={f}"),
        format!("{fhir}/Observation?{f}="),
        format!("{fhir}/Observation?code:{f}=1"),
        format!("{fhir}/Observation?{f}:identifier={oid}%7C{f}"),
        format!("{fhir}/Observation?subject:identifier={f}"),
        format!("{fhir}/Observation?subject:identifier={oid}%7C{b}"),
        format!("{fhir}/Observation?subject:identifier={oid}%7C{f}%7C{f}"),
        format!("{fhir}/Observation?subject={f}"),
        format!("{fhir}/Observation?patient:{f}={f}"),
        format!("{fhir}/Observation?_lastUpdated={f}"),
        format!("{fhir}/Observation?_lastUpdated=ge{f}"),
        format!("{fhir}/Observation?_count={f}x"),
        format!("{fhir}/Observation?_sort={f}"),
        format!("{fhir}/Observation?_cursor={f}"),
        format!("{fhir}/Observation?_format={f}"),
        format!("{fhir}/Communication?category={f}%7C{f}%7C{f}"),
        format!("{fhir}/{f}?code=1"),
        format!("{fhir}/Observation/{f}?{f}=1"),
        format!("{fhir}/{f}/{f}"),
        format!("{fhir}/AuditEvent?{f}={f}"),
        format!("{fhir}/AuditEvent?date={f}"),
        format!("{fhir}/AuditEvent?patient:identifier={f}"),
        format!("{fhir}/AuditEvent?patient:identifier={oid}%7C{b}"),
        format!("{fhir}/AuditEvent?_count={f}x"),
        format!("{fhir}/AuditEvent?_cursor={f}"),
        format!("{fhir}/$pending?{f}={f}"),
        format!("{fhir}/$pending?consumer={f}"),
        format!("{fhir}/$pending?_count={f}x"),
        format!("{fhir}/$status?{f}={f}"),
        format!("{fhir}/$status?resource=Observation/{f}"),
        format!("{fhir}/$status?resource={f}"),
        format!("{fhir}/$confirm?{f}={f}"),
    ];
    for url in &gets {
        check_http(url, ok(authed(Method::GET, url).await), true).await;
    }
    let url = format!("{fhir}/Observation?code=1");
    let req = http_client().map(|c| c.get(&url).bearer_auth(&f));
    check_http("bearer token = id", ok(req), true).await;
    let req = ok(authed(Method::GET, &url).await).header("accept", format!("text/{f}"));
    check_http("Accept = id", req, true).await;
    let del = format!("{fhir}/Observation/{f}");
    check_http(&del, ok(authed(Method::DELETE, &del).await), true).await;
    for path in [format!("/healthz?{f}={f}"), format!("/readyz?{f}={f}")] {
        let url = hub.url(&path);
        check_http(&url, ok(http_client()).get(&url), false).await;
    }
    confirm_bodies(&fhir, &f, &b).await;
    token_bodies(hub, &f).await;
}

/// `$confirm` with the id in every part of the Parameters body.
async fn confirm_bodies(fhir: &str, f: &str, b: &str) {
    let conf = |name: &str, reference: &str, outcome: &str| {
        serde_json::json!({
            "resourceType": "Parameters",
            "parameter": [{ "name": name, "part": [
                { "name": "resource", "valueReference": { "reference": reference } },
                { "name": "outcome", "valueCode": outcome },
                { "name": "reason", "valueString": f }
            ]}]
        })
        .to_string()
    };
    let bodies = [
        f.to_string(),
        format!("{{\"resourceType\":\"{f}\"}}"),
        conf(f, "Observation/x", "journaled"),
        conf("confirmation", &format!("Observation/{f}"), "journaled"),
        conf("confirmation", &format!("{f}/{b}"), "journaled"),
        conf("confirmation", "Observation/x", f),
    ];
    let url = format!("{fhir}/$confirm");
    for body in bodies {
        let req = ok(authed(Method::POST, &url).await)
            .header("content-type", "application/fhir+json")
            .body(body.clone());
        check_http(&format!("$confirm {body}"), req, true).await;
    }
}

/// The token endpoint with the id in every form field and as a field name.
async fn token_bodies(hub: &Hub, f: &str) {
    let url = hub.url("/oauth/token");
    let jwt = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    let forms = [
        format!("grant_type={f}"),
        format!("grant_type=client_credentials&client_assertion_type={f}&client_assertion=x"),
        format!("grant_type=client_credentials&client_assertion_type={jwt}&client_assertion={f}"),
        format!(
            "grant_type=client_credentials&client_assertion_type={jwt}&client_assertion={f}.{f}.{f}&scope={f}"
        ),
        format!("{f}={f}"),
        f.to_string(),
    ];
    for form in forms {
        let req = ok(http_client())
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone());
        check_http(&format!("token {form}"), req, true).await;
    }
    let req = ok(http_client())
        .post(&url)
        .header("content-type", format!("application/{f}"))
        .body("grant_type=client_credentials");
    check_http("token content-type", req, true).await;
}

/// The admin API and /metrics, with and without the admin token.
async fn admin_http(hub: &Hub) {
    let f = fnr();
    let base = format!("http://{}", hub.admin);
    let client = ok(http_client());
    let gets = [
        (format!("/admin/dlq?{f}={f}"), true),
        (format!("/admin/dlq?from={f}"), true),
        (format!("/admin/dlq?to={f}"), true),
        (format!("/admin/dlq?limit={f}x"), true),
        (format!("/admin/dlq/{f}/{f}"), true),
        (format!("/admin/dlq/oslo-vakt/{f}"), true),
        (format!("/admin/dlq/{f}/{f}x"), true),
        (format!("/admin/{f}"), true),
        (format!("/admin/dlq?destination={f}"), false),
        (format!("/admin/dlq?code={f}"), false),
        (format!("/admin/destinations?{f}={f}"), false),
        (format!("/metrics?{f}={f}"), false),
    ];
    for (path, expect_error) in gets {
        let req = client.get(format!("{base}{path}")).bearer_auth(ADMIN_TOKEN);
        check_http(&path, req, expect_error).await;
    }
    let posts = [
        ("/admin/dlq/replay".to_string(), format!("{{\"{f}\":1}}")),
        (
            "/admin/dlq/replay".to_string(),
            format!("{{\"from\":\"{f}\"}}"),
        ),
        ("/admin/dlq/replay".to_string(), f.clone()),
        (format!("/admin/dlq/{f}/{f}/replay"), String::new()),
        (format!("/admin/dlq/x/{f}x/replay"), String::new()),
        (
            format!("/admin/dlq/{f}/{f}/discard"),
            "{\"reason\":\"r\"}".into(),
        ),
        (
            "/admin/dlq/x/1/discard".to_string(),
            format!("{{\"{f}\":\"r\"}}"),
        ),
        ("/admin/dlq/x/1/discard".to_string(), f.clone()),
    ];
    for (path, body) in posts {
        let req = client
            .post(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.clone());
        check_http(&format!("POST {path} {body}"), req, true).await;
    }
    for path in ["/metrics", "/admin/dlq"] {
        let req = client.get(format!("{base}{path}")).bearer_auth(&f);
        check_http(&format!("{path} with the id as token"), req, true).await;
    }
}

/// Events that each put the id in one field, and are each refused.
fn bad_events() -> Vec<(&'static str, pb::Event)> {
    let f = fnr();
    let num: f64 = f.parse().unwrap_or(0.0);
    let hr = || events::heart_rate("no-echo-1", OSLO, 3);
    let mut out = Vec::new();
    let mut e = hr();
    e.municipality = f.clone();
    out.push(("municipality", e));
    let mut e = hr();
    e.municipality = events::BERGEN.into();
    e.patient = Some(pb::PersonId {
        system: 1,
        value: bad_fnr(),
    });
    out.push(("patient.value, bad control digit", e));
    let mut e = hr();
    e.patient = Some(pb::PersonId {
        system: 99,
        value: f.clone(),
    });
    out.push(("patient.system", e));
    let mut e = hr();
    e.patient = Some(pb::PersonId {
        system: 1,
        value: format!("{f}0"),
    });
    out.push(("patient.value, 12 digits", e));
    let mut e = hr();
    e.event_id = format!("{f} {f}");
    out.push(("event_id", e));
    let mut e = hr();
    e.device = Some(pb::Device {
        id: format!("{f} x"),
        kind: "sensor".into(),
    });
    out.push(("device.id", e));
    let mut e = hr();
    e.device = Some(pb::Device {
        id: "d".into(),
        kind: format!("{f}\u{1}"),
    });
    out.push(("device.kind", e));
    out.push((
        "quantity.unit",
        events::quantity(
            "no-echo-2",
            OSLO,
            3,
            pb::MeasurementKind::HeartRate,
            70.0,
            &f,
        ),
    ));
    out.push((
        "quantity.value",
        events::quantity(
            "no-echo-3",
            OSLO,
            3,
            pb::MeasurementKind::HeartRate,
            num,
            "/min",
        ),
    ));
    out.push((
        "blood_pressure",
        events::blood_pressure("no-echo-4", OSLO, 3, num, num),
    ));
    out.push((
        "blood_pressure swapped",
        events::blood_pressure("no-echo-5", OSLO, 3, 80.0, 120.0),
    ));
    out.push((
        "alarm.code",
        events::alarm("no-echo-6", OSLO, 3, &f, pb::Severity::Red),
    ));
    out.push((
        "note.in_response_to",
        events::note("no-echo-7", OSLO, 3, &f),
    ));
    let mut e = hr();
    e.occurred_at = Some(prost_types::Timestamp {
        seconds: num as i64,
        nanos: 0,
    });
    out.push(("occurred_at.seconds", e));
    let mut e = hr();
    e.occurred_at = Some(prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: num as i32,
    });
    out.push(("occurred_at.nanos", e));
    out
}

fn status_text(s: &tonic::Status) -> String {
    let mut t = format!("{:?} {}\n", s.code(), s.message());
    for kv in s.metadata().iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
            t.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
    }
    t.push_str(&String::from_utf8_lossy(s.details()));
    t
}

async fn grpc(hub: &Hub) {
    let mut client = ok(hub.client().await);
    for (what, ev) in bad_events() {
        match client.submit(ev).await {
            Ok(r) => panic!("{what}: accepted: {:?}", r.into_inner()),
            Err(s) => assert_clean(what, &status_text(&s)),
        }
    }
    let stream = tokio_stream::iter(bad_events().into_iter().map(|(_, e)| e));
    let mut receipts = ok(client.submit_stream(stream).await).into_inner();
    let mut n = 0;
    while let Some(r) = tokio_stream::StreamExt::next(&mut receipts).await {
        let r = r.unwrap_or_else(|s| panic!("stream failed: {}", status_text(&s)));
        assert_eq!(r.status, pb::ReceiptStatus::Rejected as i32, "{r:?}");
        assert_clean("stream receipt", &format!("{} {}", r.error, r.error_code));
        n += 1;
    }
    assert_eq!(n, bad_events().len());
    // A vendor outside its agreement: the municipality is not repeated.
    let mut other = ok(hub.client_as(Some("other-vendor")).await);
    let e = events::heart_rate("no-echo-8", OSLO, 3);
    let s = other.submit(e).await.err();
    let s = s.unwrap_or_else(|| panic!("other-vendor may not submit for Oslo"));
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    assert!(!s.message().contains(OSLO), "{}", s.message());
}

#[tokio::test]
async fn no_answer_copies_a_national_id_sent_to_the_hub() {
    let (_dir, hub) = hub().await;
    public_http(&hub).await;
    admin_http(&hub).await;
    grpc(&hub).await;
    // The audit trail records searches with identifiers pseudonymised.
    let audit = format!("{}/AuditEvent?_count=500", hub.fhir_base(OSLO));
    check_http("AuditEvent", ok(authed(Method::GET, &audit).await), false).await;
    assert_clean("the hub's log", &hub.logs());
}
