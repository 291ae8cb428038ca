//! The FHIR gateway (`fhir-gateway`) between a home-monitoring platform and
//! the real hub: the platform POSTs personal-health-device Observations over
//! mutual TLS, the gateway submits them over gRPC, and what it answers must
//! match what the hub stored (read back through the hub's FHIR API).

use anyhow::Result;
use conformance_tests::fhir_validator;
use conformance_tests::fhirgw::{Gateway, platform_client};
use conformance_tests::harness::events::{BERGEN, OSLO};
use conformance_tests::harness::{self, Hub, HubOptions, get_json, ok, search_all};
use knutepunkt::domain::synthetic;
use serde_json::{Value, json};

const FNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.1";
const MDC: &str = "urn:iso:std:iso:11073:10101";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

/// POSTs FHIR JSON as platform `demo-vendor`: (status, Location, body).
async fn post(url: &str, body: &Value) -> Result<(u16, Option<String>, Value)> {
    post_as(Some("vendor-demo-vendor"), url, body).await
}

async fn post_as(
    cert: Option<&str>,
    url: &str,
    body: &Value,
) -> Result<(u16, Option<String>, Value)> {
    post_with(&platform_client(cert)?, url, body).await
}

async fn post_with(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(u16, Option<String>, Value)> {
    let r = client
        .post(url)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await?;
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.json().await.unwrap_or(Value::Null);
    Ok((status, location, body))
}

/// Device time a minute ago, RFC 3339 with an offset.
fn just_now() -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(1))
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap_or_else(|| panic!("offset")))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

fn coding(system: &str, code: &str) -> Value {
    json!({ "system": system, "code": code })
}

/// A PHD-style Observation with one quantity.
fn quantity_obs(codes: &[Value], value: Value, unit: &str, resident: u32, device: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }],
        "code": { "coding": codes },
        "subject": { "identifier": { "system": FNR_OID, "value": synthetic::fnr(resident) } },
        "effectiveDateTime": just_now(),
        "device": { "identifier": { "value": device } },
        "valueQuantity": { "value": value, "unit": unit, "system": UCUM, "code": unit },
    })
}

fn spo2(resident: u32, value: f64) -> Value {
    quantity_obs(
        &[coding(MDC, "150456"), coding(LOINC, "59408-5")],
        json!(value),
        "%",
        resident,
        "00-1C-05-FF-FE-00-00-01",
    )
}

fn entry(full_url: &str, resource: Value) -> Value {
    json!({ "fullUrl": full_url, "resource": resource, "request": { "method": "POST", "url": resource["resourceType"] } })
}

/// Reads what the hub stored under `location` (`Observation/<id>`).
async fn stored(hub: &Hub, location: &str) -> Value {
    let (status, body) = ok(get_json(&format!("{}/{location}", hub.fhir_base(OSLO))).await);
    assert_eq!(status, 200, "GET {location}: {body}");
    body
}

fn has_code(resource: &Value, code: &str) -> bool {
    resource["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["code"] == code)
}

fn expression(outcome: &Value) -> String {
    outcome["issue"][0]["expression"][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn setup() -> (tempfile::TempDir, Hub, Gateway) {
    let dir = ok(tempfile::tempdir());
    let hub = Hub::start(dir.path(), HubOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let gw = Gateway::start(&hub)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    (dir, hub, gw)
}

#[tokio::test]
async fn a_single_observation_is_stored_and_a_repeat_is_the_same_resource() {
    let (_d, hub, gw) = setup().await;
    let url = gw.url(&format!("/fhir/r4/{OSLO}/Observation"));
    let obs = spo2(1, 97.0);

    let (status, location, body) = ok(post(&url, &obs).await);
    assert_eq!(status, 201, "{body}\n{}", gw.log());
    let location = location.unwrap_or_else(|| panic!("no Location: {body}"));
    assert!(location.starts_with("Observation/"), "{location}");

    let stored = stored(&hub, &location).await;
    assert!(has_code(&stored, "59408-5"), "{stored}");
    assert_eq!(stored["valueQuantity"]["value"], 97.0);
    assert_eq!(stored["valueQuantity"]["code"], "%");
    assert_eq!(stored["subject"]["identifier"]["value"], synthetic::fnr(1));
    assert_eq!(
        stored["device"]["identifier"]["value"],
        "00-1C-05-FF-FE-00-00-01"
    );

    // The same resource again: harmless, same resource, 200 instead of 201.
    let (status, again, body) = ok(post(&url, &obs).await);
    assert_eq!(status, 200, "{body}");
    assert_eq!(again.as_deref(), Some(location.as_str()));

    // With an identifier, the identifier is the key: same answer again too.
    let mut with_id = spo2(2, 95.0);
    with_id["identifier"] = json!([{ "system": "urn:uuid:platform", "value": "obs-42" }]);
    let (s1, l1, _) = ok(post(&url, &with_id).await);
    let (s2, l2, _) = ok(post(&url, &with_id).await);
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(l1, l2);
    assert_ne!(l1.as_deref(), Some(location.as_str()));

    // Same identifier, other content: the hub's conflict comes through.
    with_id["valueQuantity"]["value"] = json!(91.0);
    let (status, _, body) = ok(post(&url, &with_id).await);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["issue"][0]["code"], "conflict", "{body}");

    let all = ok(search_all(&format!("{}/Observation?_count=50", hub.fhir_base(OSLO))).await);
    assert_eq!(all.len(), 2, "two resources, however often posted");

    // Nothing identifying reaches the gateway's log.
    let log = gw.log();
    assert!(
        !log.contains(&synthetic::fnr(1)) && !log.contains(&synthetic::fnr(2)),
        "{log}"
    );
}

#[tokio::test]
async fn a_transaction_bundle_gets_a_verdict_per_entry_and_mdc_bp_and_spo2_map_right() {
    let (_d, hub, gw) = setup().await;
    let b = mixed_transaction();
    let (status, _, resp) = ok(post(&gw.url(&format!("/fhir/r4/{OSLO}")), &b).await);
    assert_eq!(status, 200, "{resp}\n{}", gw.log());
    let entries = verdict_per_entry(&resp);
    answers_are_valid_fhir(&resp, &entries);
    let (bp_loc, pulse_loc) = bp_and_pulse_map_right(&hub, &entries).await;
    // Only the two good Observations are in the hub.
    let all = ok(search_all(&format!("{}/Observation?_count=50", hub.fhir_base(OSLO))).await);
    assert_eq!(all.len(), 2, "{all:?}");

    // The same Bundle again: every good entry is now 200 with the same location.
    let (_, _, again) = ok(post(&gw.url(&format!("/fhir/r4/{OSLO}")), &b).await);
    assert_eq!(again["entry"][2]["response"]["status"], "200 OK", "{again}");
    assert_eq!(again["entry"][2]["response"]["location"], bp_loc);
    assert_eq!(again["entry"][3]["response"]["location"], pulse_loc);
}

/// A device, a patient, two good Observations (MDC blood pressure, an
/// oximeter's pulse) and four entries the gateway must refuse.
fn mixed_transaction() -> Value {
    let device = json!({
        "resourceType": "Device",
        "identifier": [{ "system": "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680", "value": "00-09-1F-FF-FE-80-00-2A" }],
    });
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{ "system": FNR_OID, "value": synthetic::fnr(7) }],
    });
    let bp = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [coding(MDC, "150020")] },
        "subject": { "reference": "urn:uuid:0c7a2a53-0000-4000-8000-000000000002" },
        "effectiveDateTime": just_now(),
        "device": { "reference": "urn:uuid:0c7a2a53-0000-4000-8000-000000000001" },
        "component": [
            { "code": { "coding": [coding(MDC, "150021")] }, "valueQuantity": { "value": 128, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]" } },
            { "code": { "coding": [coding(MDC, "150022")] }, "valueQuantity": { "value": 82, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]" } },
            { "code": { "coding": [coding(MDC, "150023")] }, "valueQuantity": { "value": 97, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]" } }
        ],
    });
    // Pulse rate from an oximeter, in the PHD unit {beat}/min.
    let pulse = quantity_obs(&[coding(MDC, "149530")], json!(64), "{beat}/min", 7, "ox-1");
    let bad_unit = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [coding(MDC, "188736")] },
        "subject": { "identifier": { "system": FNR_OID, "value": synthetic::fnr(7) } },
        "effectiveDateTime": just_now(),
        "device": { "identifier": { "value": "scale-1" } },
        "valueQuantity": { "value": 12, "unit": "stone" },
    });
    // MDC_LEN_BODY_ACTUAL (body height): a PHD code the hub has no kind for.
    let unknown_code = quantity_obs(&[coding(MDC, "188740")], json!(172), "cm", 7, "scale-1");
    let too_high = spo2(7, 101.0);
    let communication = json!({ "resourceType": "Communication", "status": "completed" });
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry("urn:uuid:0c7a2a53-0000-4000-8000-000000000001", device),
            entry("urn:uuid:0c7a2a53-0000-4000-8000-000000000002", patient),
            entry("urn:uuid:0c7a2a53-0000-4000-8000-000000000003", bp),
            entry("urn:uuid:0c7a2a53-0000-4000-8000-000000000004", pulse),
            entry("urn:uuid:0c7a2a53-0000-4000-8000-000000000005", bad_unit),
            entry("urn:uuid:0c7a2a53-0000-4000-8000-000000000006", unknown_code),
            entry("urn:uuid:0c7a2a53-0000-4000-8000-000000000007", too_high),
            entry("urn:uuid:0c7a2a53-0000-4000-8000-000000000008", communication),
        ],
    })
}

/// 200 for the device and patient, 201 for the two good Observations, 422
/// naming the field for the rest. The response's entries.
fn verdict_per_entry(resp: &Value) -> Vec<Value> {
    assert_eq!(resp["resourceType"], "Bundle");
    assert_eq!(resp["type"], "transaction-response");
    let entries = resp["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 8, "{resp}");
    let statuses: Vec<&str> = entries
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        statuses,
        [
            "200 OK",
            "200 OK",
            "201 Created",
            "201 Created",
            "422 Unprocessable Entity",
            "422 Unprocessable Entity",
            "422 Unprocessable Entity",
            "422 Unprocessable Entity"
        ],
        "{resp}"
    );
    let outcome = |i: usize| entries[i]["response"]["outcome"].clone();
    assert_eq!(
        expression(&outcome(4)),
        "Observation.valueQuantity.unit",
        "{resp}"
    );
    assert_eq!(expression(&outcome(5)), "Observation.code", "{resp}");
    assert_eq!(
        expression(&outcome(6)),
        "Observation.valueQuantity.value",
        "{resp}"
    );
    assert_eq!(
        expression(&outcome(7)),
        "Bundle.entry[7].resource",
        "{resp}"
    );

    entries
}

/// The answers are FHIR R4 by an independent implementation too.
fn answers_are_valid_fhir(resp: &Value, entries: &[Value]) {
    let mut answers = vec![resp.clone()];
    answers.extend(
        entries
            .iter()
            .filter_map(|e| e["response"].get("outcome").cloned()),
    );
    match fhir_validator::validate(&answers) {
        Ok(()) => {}
        Err(e) if fhir_validator::is_skip(&e) => {
            conformance_tests::harness::skip("FHIR validation of the gateway's answers", &e)
        }
        Err(e) => panic!("{e}"),
    }
}

/// Blood pressure: MDC components → the hub's LOINC panel, values kept,
/// device and patient taken from the referenced entries; the pulse in
/// UCUM. Their locations.
async fn bp_and_pulse_map_right(hub: &Hub, entries: &[Value]) -> (String, String) {
    let bp_loc = entries[2]["response"]["location"]
        .as_str()
        .unwrap_or_default();
    let stored_bp = stored(hub, bp_loc).await;
    assert!(has_code(&stored_bp, "85354-9"), "{stored_bp}");
    let comp = |loinc: &str| {
        stored_bp["component"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| has_code(c, loinc))
            .map(|c| c["valueQuantity"]["value"].clone())
    };
    assert_eq!(comp("8480-6"), Some(json!(128.0)), "{stored_bp}");
    assert_eq!(comp("8462-4"), Some(json!(82.0)), "{stored_bp}");
    assert_eq!(
        stored_bp["subject"]["identifier"]["value"],
        synthetic::fnr(7)
    );
    assert_eq!(
        stored_bp["device"]["identifier"]["value"],
        "00-09-1F-FF-FE-80-00-2A"
    );

    let pulse_loc = entries[3]["response"]["location"]
        .as_str()
        .unwrap_or_default();
    let stored_pulse = stored(hub, pulse_loc).await;
    assert!(has_code(&stored_pulse, "8867-4"), "{stored_pulse}");
    assert_eq!(stored_pulse["valueQuantity"]["code"], "/min");

    (bp_loc.to_string(), pulse_loc.to_string())
}

#[tokio::test]
async fn what_cannot_be_mapped_is_named_in_an_operation_outcome() {
    let (_d, hub, gw) = setup().await;
    let url = gw.url(&format!("/fhir/r4/{OSLO}/Observation"));
    let mut cases: Vec<(Value, &str)> = Vec::new();

    let mut unit = spo2(3, 96.0);
    unit["valueQuantity"] = json!({ "value": 96, "unit": "percent" });
    cases.push((unit, "Observation.valueQuantity.unit"));

    let mut coded_unit = spo2(3, 96.0);
    coded_unit["valueQuantity"]["code"] = json!("1");
    cases.push((coded_unit, "Observation.valueQuantity.code"));

    let mut no_time = spo2(3, 96.0);
    no_time["effectiveDateTime"] = json!("2026-12-01");
    cases.push((no_time, "Observation.effectiveDateTime"));

    let mut bad_subject = spo2(3, 96.0);
    bad_subject["subject"]["identifier"]["value"] = json!("12345678901");
    cases.push((bad_subject, "Observation.subject.identifier.value"));

    let mut other_system = spo2(3, 96.0);
    other_system["subject"]["identifier"]["system"] = json!("urn:oid:2.16.578.1.12.4.1.4.4");
    cases.push((other_system, "Observation.subject.identifier.system"));

    let mut preliminary = spo2(3, 96.0);
    preliminary["status"] = json!("preliminary");
    cases.push((preliminary, "Observation.status"));

    let mut no_device = spo2(3, 96.0);
    no_device.as_object_mut().map(|o| o.remove("device"));
    cases.push((no_device, "Observation.device"));

    let systolic_alone = quantity_obs(&[coding(MDC, "150021")], json!(120), "mm[Hg]", 3, "bp-1");
    cases.push((systolic_alone, "Observation.code"));

    let mut modifier = spo2(3, 96.0);
    modifier["modifierExtension"] =
        json!([{ "url": "http://example.org/x", "valueBoolean": true }]);
    cases.push((modifier, "Observation.modifierExtension"));

    for (obs, element) in cases {
        let (status, location, body) = ok(post(&url, &obs).await);
        assert_eq!(status, 422, "{element}: {body}");
        assert!(location.is_none());
        assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
        assert_eq!(expression(&body), element, "{body}");
        let text = body.to_string();
        assert!(
            !text.contains("12345678901") && !text.contains(&synthetic::fnr(3)),
            "{text}"
        );
    }
    let all = ok(search_all(&format!("{}/Observation?_count=50", hub.fhir_base(OSLO))).await);
    assert!(all.is_empty(), "nothing unmappable was stored: {all:?}");
}

#[tokio::test]
async fn platforms_without_a_certificate_or_an_agreement_are_refused() {
    let (_d, hub, gw) = setup().await;
    let obs = spo2(4, 98.0);

    // No client certificate: no TLS session, no HTTP answer at all.
    let r = post_as(None, &gw.url(&format!("/fhir/r4/{OSLO}/Observation")), &obs).await;
    assert!(r.is_err(), "answered without a client certificate: {r:?}");

    // A certificate from the CA, but not a configured platform.
    let (status, _, body) = ok(post_as(
        Some("vendor-stranger"),
        &gw.url(&format!("/fhir/r4/{OSLO}/Observation")),
        &obs,
    )
    .await);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["issue"][0]["code"], "forbidden");

    // A configured platform, a municipality not on its allow-list.
    let (status, _, body) =
        ok(post(&gw.url(&format!("/fhir/r4/{BERGEN}/Observation")), &obs).await);
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains(BERGEN), "{body}");
    let b = json!({ "resourceType": "Bundle", "type": "batch", "entry": [entry("urn:uuid:x", obs.clone())] });
    let (status, _, body) = ok(post(&gw.url(&format!("/fhir/r4/{BERGEN}")), &b).await);
    assert_eq!(status, 403, "{body}");

    let bergen = ok(search_all(&format!("{}/Observation?_count=50", hub.fhir_base(BERGEN))).await);
    assert!(bergen.is_empty(), "{bergen:?}");
    let oslo = ok(search_all(&format!("{}/Observation?_count=50", hub.fhir_base(OSLO))).await);
    assert!(oslo.is_empty(), "{oslo:?}");

    // The allowed way still works on the same gateway (a batch this time).
    let (status, _, body) = ok(post(&gw.url(&format!("/fhir/r4/{OSLO}")), &b).await);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "batch-response");
    assert_eq!(
        body["entry"][0]["response"]["status"], "201 Created",
        "{body}"
    );
}

#[tokio::test]
async fn while_the_hub_is_down_the_answer_is_503_and_the_retry_is_stored() {
    let (_d, mut hub, gw) = setup().await;
    let url = gw.url(&format!("/fhir/r4/{OSLO}/Observation"));
    let obs = spo2(5, 93.0);
    ok(hub.stop().await);

    let (status, location, body) = ok(post(&url, &obs).await);
    assert_eq!(status, 503, "{body}");
    assert!(location.is_none());
    assert_eq!(body["issue"][0]["code"], "transient", "{body}");
    let b = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [entry("urn:uuid:y", obs.clone())] });
    let (status, _, body) = ok(post(&gw.url(&format!("/fhir/r4/{OSLO}")), &b).await);
    assert_eq!(status, 503, "no entry was decided: {body}");
    assert_eq!(
        body["entry"][0]["response"]["status"],
        "503 Service Unavailable"
    );

    // The same POST once the hub is back: stored, by the same gateway.
    ok(hub.restart().await);
    let (status, location, body) = ok(post(&url, &obs).await);
    assert_eq!(status, 201, "{body}\n{}", gw.log());
    let stored = stored(&hub, &location.unwrap_or_default()).await;
    assert_eq!(stored["valueQuantity"]["value"], 93.0);
}

/// A platform client that trusts only `ca` and presents `demo-vendor`'s
/// certificate from the shared dev PKI.
fn client_trusting(ca: &std::path::Path) -> reqwest::Client {
    let shared = ok(harness::certs());
    let mut pem = ok(std::fs::read(shared.join("vendor-demo-vendor.pem")));
    pem.extend(ok(std::fs::read(shared.join("vendor-demo-vendor.key"))));
    ok(reqwest::Client::builder()
        .tls_certs_only([ok(reqwest::Certificate::from_pem(&ok(std::fs::read(ca))))])
        .identity(ok(reqwest::Identity::from_pem(&pem)))
        .timeout(std::time::Duration::from_secs(10))
        .build())
}

/// Whether a new connection trusting only `ca` gets an HTTP answer within
/// `secs` (the gateway then serves a certificate from that CA).
async fn served_by(gw: &Gateway, ca: &std::path::Path, secs: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let url = gw.url(&format!("/fhir/r4/{OSLO}/metadata"));
        if client_trusting(ca).get(&url).send().await.is_ok() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The gateway's HTTPS certificate is renewed without a restart, as the
/// hub's: a changed file is noticed, SIGHUP reloads one whose modification
/// time did not change (before, SIGHUP stopped the gateway), and an open
/// connection keeps working.
#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = ok(tempfile::tempdir());
    let hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let mine = ok(harness::own_certs());
    let gw = Gateway::start_with_tls(&hub, mine.path())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = gw.url(&format!("/fhir/r4/{OSLO}/Observation"));
    let old = client_trusting(&ok(harness::certs()).join("ca.pem"));
    let (status, _, _) = ok(post_with(&old, &url, &spo2(3, 96.0)).await);
    assert_eq!(status, 201, "{}", gw.log());

    let renew = |from: &std::path::Path, keep_mtime: bool| {
        for f in ["server.key", "server.pem"] {
            ok(harness::replace_file(
                &from.join(f),
                &mine.path().join(f),
                keep_mtime,
            ));
        }
    };
    // 1. Files replaced: the watcher notices within its 2 s tick.
    let second = ok(tempfile::tempdir());
    ok(harness::dev_certs(second.path(), &["--vendor", "x"]));
    renew(second.path(), false);
    assert!(
        served_by(&gw, &second.path().join("ca.pem"), 10).await,
        "the new certificate is not served; log:\n{}",
        gw.log()
    );

    // 2. Same modification times: only SIGHUP makes the gateway load it.
    let third = ok(tempfile::tempdir());
    ok(harness::dev_certs(third.path(), &["--vendor", "x"]));
    renew(third.path(), true);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let third_ca = third.path().join("ca.pem");
    assert!(!served_by(&gw, &third_ca, 0).await, "reloaded unasked");
    let pid = gw.pid().unwrap_or_else(|| panic!("gateway not running"));
    let st = ok(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status());
    assert!(st.success());
    assert!(
        served_by(&gw, &third_ca, 10).await,
        "SIGHUP did not reload; log:\n{}",
        gw.log()
    );
    assert!(
        gw.log()
            .lines()
            .any(|l| l.contains("TLS certificates reloaded") && l.contains("SIGHUP")),
        "{}",
        gw.log()
    );

    // The first connection was kept: a new one could not trust the
    // certificate served now.
    let (status, _, _) = ok(post_with(&old, &url, &spo2(4, 95.0)).await);
    assert_eq!(status, 201, "{}", gw.log());
}
