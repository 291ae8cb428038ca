//! Every payload kind end to end (gRPC → store → FHIR REST), every
//! rejection rule, and idempotency across restarts, against the real binary.

use conformance_tests::harness::events::{self, BERGEN, OSLO};
use conformance_tests::harness::ok;
use conformance_tests::harness::{Hub, HubOptions, ReceiptStatus, get_json, search_all};
use knutepunkt::domain::synthetic;
use knutepunkt::proto::v1 as pb;
use tokio_stream::StreamExt;

const FNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.1";

async fn hub() -> (tempfile::TempDir, Hub) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let hub = Hub::start(dir.path(), HubOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    (dir, hub)
}

#[tokio::test]
async fn every_payload_kind_reaches_fhir_search() {
    let (_d, hub) = hub().await;
    let mut c = ok(hub.client().await);
    use pb::MeasurementKind as K;
    let resident = 11;
    let sent = vec![
        events::heart_rate("hr-1", OSLO, resident),
        events::blood_pressure("bp-1", OSLO, resident, 142.0, 88.0),
        events::quantity("spo2-1", OSLO, resident, K::OxygenSaturation, 96.0, "%"),
        events::quantity("w-1", OSLO, resident, K::BodyWeight, 71.5, "kg"),
        events::quantity("t-1", OSLO, resident, K::BodyTemperature, 37.2, "Cel"),
        events::quantity("rr-1", OSLO, resident, K::RespiratoryRate, 16.0, "/min"),
        events::quantity("g-1", OSLO, resident, K::BloodGlucose, 6.1, "mmol/L"),
        events::alarm("a-1", OSLO, resident, "4.1", pb::Severity::Red),
        events::note("n-1", OSLO, resident, "a-1"),
    ];
    let mut refs = Vec::new();
    for ev in sent {
        let r = ok(c.submit(ev).await).into_inner();
        assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
        refs.push(r.resource);
    }
    // Every resource readable by id through its municipality's base …
    for r in &refs {
        let (status, body) = ok(get_json(&format!("{}/{r}", hub.fhir_base(OSLO))).await);
        assert_eq!(status, 200, "{r}: {body}");
        assert_eq!(
            format!(
                "{}/{}",
                body["resourceType"].as_str().unwrap_or(""),
                body["id"].as_str().unwrap_or("")
            ),
            *r
        );
        assert!(body["meta"]["lastUpdated"].is_string(), "{body}");
        // … and never through another's.
        let (status, _) = ok(get_json(&format!("{}/{r}", hub.fhir_base(BERGEN))).await);
        assert_eq!(status, 404, "{r} leaked to another municipality");
    }
    let fnr = synthetic::fnr(resident);
    let obs = ok(search_all(&format!(
        "{}/Observation?subject:identifier={FNR_OID}|{fnr}",
        hub.fhir_base(OSLO)
    ))
    .await);
    assert_eq!(obs.len(), 7);
    let hr = ok(search_all(&format!(
        "{}/Observation?code=http://loinc.org|8867-4",
        hub.fhir_base(OSLO)
    ))
    .await);
    assert_eq!(hr.len(), 1);
    assert_eq!(hr[0]["valueQuantity"]["value"], 72.0);
    let bp = &obs[1];
    assert_eq!(bp["code"]["coding"][0]["code"], "85354-9", "{bp}");
    assert_eq!(bp["component"].as_array().map(Vec::len), Some(2), "{bp}");
    let alerts = ok(search_all(&format!(
        "{}/Communication?category=alert",
        hub.fhir_base(OSLO)
    ))
    .await);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["priority"], "stat");
    let notes = ok(search_all(&format!(
        "{}/Communication?category=notification",
        hub.fhir_base(OSLO)
    ))
    .await);
    assert_eq!(notes.len(), 1);
    assert_eq!(
        notes[0]["inResponseTo"][0]["reference"].as_str(),
        Some(refs[7].as_str()),
        "the note must answer the alarm's Communication: {}",
        notes[0]
    );
    let other = ok(search_all(&format!("{}/Observation", hub.fhir_base(BERGEN))).await);
    assert!(other.is_empty(), "Bergen sees Oslo's data");
}

/// (what is wrong, the event, a word the error must contain)
fn bad_events() -> Vec<(&'static str, pb::Event, &'static str)> {
    use pb::MeasurementKind as K;
    let mut v = Vec::new();
    let mut e = events::heart_rate("", OSLO, 1);
    v.push(("empty event_id", e.clone(), "event_id"));
    e.event_id = "x".repeat(129);
    v.push(("long event_id", e, "event_id"));
    let mut e = events::heart_rate("r-org", OSLO, 1);
    e.municipality = "958935421".into();
    v.push(("orgnr control digit", e, "municipality"));
    let mut e = events::heart_rate("r-fnr", OSLO, 1);
    let mut bad = synthetic::fnr(1).into_bytes();
    bad[10] = if bad[10] == b'0' { b'1' } else { b'0' };
    e.patient = Some(pb::PersonId {
        system: pb::IdSystem::Fnr as i32,
        value: String::from_utf8(bad).unwrap_or_default(),
    });
    v.push(("fnr control digits", e, "patient.value"));
    let mut e = events::heart_rate("r-dnr", OSLO, 1);
    e.patient = Some(pb::PersonId {
        system: pb::IdSystem::Dnr as i32,
        value: synthetic::fnr(1),
    });
    v.push(("fnr sent as D-number", e, "patient.value"));
    let mut e = events::heart_rate("r-nosys", OSLO, 1);
    e.patient = Some(pb::PersonId {
        system: 0,
        value: synthetic::fnr(1),
    });
    v.push(("no id system", e, "patient.system"));
    let mut e = events::heart_rate("r-nodev", OSLO, 1);
    e.device = None;
    v.push(("no device", e, "device"));
    let mut e = events::heart_rate("r-future", OSLO, 1);
    e.occurred_at = Some(prost_types::Timestamp {
        seconds: events::now().seconds + 600,
        nanos: 0,
    });
    v.push(("device time 10 min ahead", e, "occurred_at"));
    let mut e = events::heart_rate("r-nanos", OSLO, 1);
    e.occurred_at = Some(prost_types::Timestamp {
        seconds: events::now().seconds - 60,
        nanos: 1_000_000_000,
    });
    v.push(("occurred_at nanos of 1e9", e, "occurred_at"));
    let mut e = events::heart_rate("r-notime", OSLO, 1);
    e.occurred_at = None;
    v.push(("no device time", e, "occurred_at"));
    let mut e = events::heart_rate("r-nopayload", OSLO, 1);
    e.payload = None;
    v.push(("no payload", e, "payload"));
    v.push((
        "SpO2 over 100 %",
        events::quantity("r-spo2", OSLO, 1, K::OxygenSaturation, 101.0, "%"),
        "measurement",
    ));
    v.push((
        "negative weight",
        events::quantity("r-w", OSLO, 1, K::BodyWeight, -3.0, "kg"),
        "measurement",
    ));
    v.push((
        "NaN heart rate",
        events::quantity("r-nan", OSLO, 1, K::HeartRate, f64::NAN, "/min"),
        "measurement",
    ));
    v.push((
        "wrong unit",
        events::quantity("r-unit", OSLO, 1, K::BodyWeight, 70.0, "mm[Hg]"),
        "unit",
    ));
    v.push((
        "systolic below diastolic",
        events::blood_pressure("r-bp", OSLO, 1, 70.0, 90.0),
        "measurement.blood_pressure",
    ));
    let mut e = events::blood_pressure("r-bpq", OSLO, 1, 120.0, 80.0);
    e.payload = Some(pb::event::Payload::Measurement(pb::Measurement {
        kind: K::BloodPressure as i32,
        reading: Some(pb::measurement::Reading::Quantity(pb::Quantity {
            value: 120.0,
            unit: "mm[Hg]".into(),
        })),
    }));
    v.push((
        "blood pressure as a quantity",
        e,
        "measurement.blood_pressure",
    ));
    v.push((
        "unknown alarm code",
        events::alarm("r-code", OSLO, 1, "9.99", pb::Severity::Red),
        "alarm.code",
    ));
    v.push((
        "note answers no alarm",
        events::note("r-note", OSLO, 1, "never-sent"),
        "in_response_to",
    ));
    v
}

#[tokio::test]
async fn every_rejection_rule_names_its_field() {
    let (_d, hub) = hub().await;
    let mut c = ok(hub.client().await);
    for (what, ev, field) in bad_events() {
        let fnr_digits: Option<String> = ev.patient.as_ref().map(|p| p.value.clone());
        match c.submit(ev).await {
            Ok(r) => panic!("{what}: accepted: {:?}", r.into_inner()),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::InvalidArgument, "{what}: {s:?}");
                assert!(
                    s.message().contains(field),
                    "{what}: {:?} does not name {field}",
                    s.message()
                );
                if let Some(f) = fnr_digits {
                    assert!(
                        !s.message().contains(&f),
                        "{what}: the error leaks the national id"
                    );
                }
            }
        }
    }
    // Nothing of it was stored.
    let all = ok(search_all(&format!("{}/Observation", hub.fhir_base(OSLO))).await);
    assert!(all.is_empty(), "{all:?}");
}

#[tokio::test]
async fn a_stream_rejects_bad_events_and_goes_on() {
    let (_d, hub) = hub().await;
    let mut c = ok(hub.client().await);
    let mut sent = Vec::new();
    for (i, (_, mut ev, _)) in bad_events().into_iter().enumerate() {
        if ev.event_id.is_empty() || ev.event_id.len() > 128 {
            continue; // receipts are matched by event_id; those two are tested unary
        }
        ev.event_id = format!("bad-{i}");
        sent.push((ev.event_id.clone(), false, ev));
        let good = events::heart_rate(&format!("good-{i}"), OSLO, 2);
        sent.push((good.event_id.clone(), true, good));
    }
    let expect: std::collections::HashMap<String, bool> = sent
        .iter()
        .map(|(id, good, _)| (id.clone(), *good))
        .collect();
    let outbound = tokio_stream::iter(sent.into_iter().map(|(_, _, e)| e));
    let mut receipts = ok(c.submit_stream(outbound).await).into_inner();
    let mut seen = std::collections::HashMap::new();
    while let Some(r) = receipts.next().await {
        let r = ok(r);
        seen.insert(r.event_id.clone(), r);
    }
    assert_eq!(seen.len(), expect.len(), "one receipt per event");
    for (id, good) in expect {
        let r = &seen[&id];
        if good {
            assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
        } else {
            assert_eq!(r.status, ReceiptStatus::Rejected as i32, "{r:?}");
            assert!(!r.error.is_empty() && !r.error_code.is_empty(), "{r:?}");
        }
    }
}

#[tokio::test]
async fn idempotency_survives_restart_and_kill() {
    let (_d, mut hub) = hub().await;
    let mut c = ok(hub.client().await);
    let ev = events::alarm("same-1", OSLO, 5, "4.2", pb::Severity::Yellow);
    let first = ok(c.submit(ev.clone()).await).into_inner();
    assert_eq!(first.status, ReceiptStatus::Accepted as i32);
    ok(hub.restart().await);
    let mut c = ok(hub.client().await);
    let again = ok(c.submit(ev.clone()).await).into_inner();
    assert_eq!(again.status, ReceiptStatus::Duplicate as i32);
    assert_eq!(again.resource, first.resource);
    ok(hub.kill9());
    ok(hub.restart().await);
    let mut c = ok(hub.client().await);
    let mut changed = ev.clone();
    if let Some(pb::event::Payload::Alarm(a)) = changed.payload.as_mut() {
        a.severity = pb::Severity::Red as i32;
    }
    let err = c.submit(changed).await.err().map(|s| s.code());
    assert_eq!(err, Some(tonic::Code::AlreadyExists));
    let again = ok(c.submit(ev).await).into_inner();
    assert_eq!(again.status, ReceiptStatus::Duplicate as i32);
    // Only one resource exists.
    let all = ok(search_all(&format!("{}/Communication", hub.fhir_base(OSLO))).await);
    assert_eq!(all.len(), 1);
    // A clean stop exits 0.
    let status = ok(hub.stop().await);
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let (_d, hub) = hub().await;
    let ch = ok(hub.channel_with(Some("vendor-demo-vendor")).await);
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = ok(health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "knutepunkt.v1.VendorIngestService".into(),
        })
        .await)
    .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let (status, _) = ok(get_json(&hub.url("/readyz")).await);
    assert_eq!(status, 200);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let ch = ok(hub.channel_with(Some("vendor-demo-vendor")).await);
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ok(refl.server_reflection_info(tokio_stream::iter([req])).await).into_inner();
    let first = ok(answers.next().await.transpose()).and_then(|r| r.message_response);
    let Some(MessageResponse::ListServicesResponse(list)) = first else {
        panic!("no service list from reflection: {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names
            .iter()
            .any(|n| n == "knutepunkt.v1.VendorIngestService"),
        "{names:?}"
    );
}

/// What the running hub serves — resources, search Bundles, the
/// CapabilityStatement and OperationOutcomes — passes an independent FHIR R4
/// validator (fhir.resources 6.1.0 = FHIR 4.0.1).
#[tokio::test]
async fn everything_served_validates_as_fhir_r4() {
    use conformance_tests::fhir_validator::{is_skip, validate};
    use pb::MeasurementKind as K;
    let (_d, hub) = hub().await;
    let mut c = ok(hub.client().await);
    let sev = [
        pb::Severity::Unspecified,
        pb::Severity::Green,
        pb::Severity::Yellow,
        pb::Severity::Red,
    ];
    let mut evs = vec![
        events::heart_rate("v-hr", OSLO, 3),
        events::blood_pressure("v-bp", OSLO, 3, 150.0, 95.0),
        events::quantity("v-spo2", OSLO, 3, K::OxygenSaturation, 93.0, "%"),
        events::quantity("v-w", OSLO, 3, K::BodyWeight, 160.0, "[lb_av]"),
        events::quantity("v-t", OSLO, 3, K::BodyTemperature, 99.1, "[degF]"),
        events::quantity("v-rr", OSLO, 3, K::RespiratoryRate, 18.0, "/min"),
        events::quantity("v-g", OSLO, 3, K::BloodGlucose, 110.0, "mg/dL"),
    ];
    for (i, code) in ["4.1", "4.2", "4.13", "3.3", "2.2"].iter().enumerate() {
        evs.push(events::alarm(&format!("v-a{i}"), OSLO, 3, code, sev[i % 4]));
    }
    evs.push(events::note("v-n", OSLO, 3, "v-a0"));
    for ev in evs {
        let r = ok(c.submit(ev).await).into_inner();
        assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
    }
    let base = hub.fhir_base(OSLO);
    let mut served = Vec::new();
    for url in [
        format!("{base}/Observation?_count=3"),
        format!("{base}/Communication"),
        format!("{base}/metadata"),
        format!("{base}/Observation?bogus=1"),
        format!("{base}/Observation/00000000-0000-0000-0000-000000000000"),
    ] {
        let (_, body) = ok(get_json(&url).await);
        served.push(body);
    }
    served.extend(ok(search_all(&format!("{base}/Observation?_count=2")).await));
    assert!(served.len() >= 5 + 7, "{}", served.len());
    match validate(&served) {
        Ok(()) => {}
        Err(e) if is_skip(&e) => {
            conformance_tests::harness::skip("everything_served_validates_as_fhir_r4", &e)
        }
        Err(e) => panic!("the hub serves invalid FHIR R4:\n{e}"),
    }
}
