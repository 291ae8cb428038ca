//! The audit trail against the real binary: one record per read, search,
//! `$pending`, `$confirm` and push delivery (counted), readable by the
//! municipality as FHIR R4 `AuditEvent`s by patient identifier and time,
//! never by another municipality, and valid FHIR.

use conformance_tests::harness::ok;
use std::time::{Duration, Instant};

use conformance_tests::fhir_validator;
use conformance_tests::harness::events::{self, BERGEN, OSLO};
use conformance_tests::harness::{
    EpjAdapter, Hub, HubOptions, get_json, metric, search_all, submit_all, token, vakt_confirm,
};
use knutepunkt::domain::synthetic;
use knutepunkt::proto::v1 as pb;
use serde_json::Value;

const FNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.1";
const DNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.2";

/// Oslo pushes to the EPJ adapter and is pulled by `oslo-vakt`.
async fn hub_with(dir: &std::path::Path, epj: &EpjAdapter) -> Hub {
    let cfg = ok(conformance_tests::harness::oslo_pulled_by_vakt(Some((
        epj,
        "max_batch = 50\ntimeout_ms = 2000",
    ))));
    ok(Hub::start(
        &dir.join("data"),
        HubOptions {
            config_extra: cfg,
            ..HubOptions::default()
        },
    )
    .await)
}

/// `AuditEvent`s of `org` matching `query` (all pages), as `client`.
async fn audit_events(hub: &Hub, org: &str, query: &str) -> Vec<Value> {
    ok(search_all(&format!(
        "{}/AuditEvent?_count=100{query}",
        hub.fhir_base(org)
    ))
    .await)
}

fn subtype(ev: &Value) -> &str {
    ev["subtype"][0]["code"].as_str().unwrap_or("")
}

fn agent(ev: &Value) -> &str {
    ev["agent"][0]["who"]["identifier"]["value"]
        .as_str()
        .unwrap_or("")
}

fn references(ev: &Value) -> Vec<String> {
    ev["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["what"]["reference"].as_str().map(str::to_string))
        .collect()
}

fn pseudonyms(ev: &Value) -> Vec<String> {
    ev["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e["what"]["identifier"]["value"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// A read of a resource that does not exist (recorded as a failure).
const MISSING: &str = "Observation/00000000-0000-5000-8000-000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_leaves_one_audit_record() {
    let dir = ok(tempfile::tempdir());
    let epj = ok(EpjAdapter::start("ok").await);
    let hub = hub_with(dir.path(), &epj).await;
    let refs = submit_four(&hub).await;
    let (p1_obs, p1_alarm, p2_obs, bergen_obs) = (&refs[0], &refs[1], &refs[2], &refs[3]);
    let mut want: Vec<String> = vec![p1_obs.clone(), p1_alarm.clone(), p2_obs.clone()];
    want.sort();
    let pushes = push_records(&hub, &epj, &want).await;
    let n_push = pushes.len();
    let mid = read_search_and_pull(&hub, p1_obs, p2_obs).await;
    let all = count_records(&hub, n_push, &want).await;
    by_patient(&hub, &all, &pushes, [p1_obs, p1_alarm, p2_obs]).await;
    by_time_and_metrics(&hub, &mid, n_push).await;
    let bergen_trail = bergen_sees_only_its_own(&hub, bergen_obs, n_push).await;
    valid_fhir(all, bergen_trail);
}

/// Oslo: patient 1's reading and RED alarm, patient 2's reading (by
/// D-number); Bergen: one reading. Their references, in that order.
async fn submit_four(hub: &Hub) -> Vec<String> {
    let mut dnr_event = events::heart_rate("d-1", OSLO, 0);
    dnr_event.patient = Some(pb::PersonId {
        system: pb::IdSystem::Dnr as i32,
        value: synthetic::dnr(2),
    });
    let evs = vec![
        events::heart_rate("h-1", OSLO, 1),
        events::alarm("a-1", OSLO, 1, "4.1", pb::Severity::Red),
        dnr_event,
        events::heart_rate("b-1", BERGEN, 3),
    ];
    submit_all(hub, evs).await
}

/// Push: Oslo's three resources reach the adapter; the push records name
/// all three (in however many Bundles).
async fn push_records(hub: &Hub, epj: &EpjAdapter, want: &[String]) -> Vec<Value> {
    ok(epj.wait_created(3, Duration::from_secs(20)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let pushes = loop {
        let pushes: Vec<Value> = audit_events(hub, OSLO, "")
            .await
            .into_iter()
            .filter(|e| subtype(e) == "transaction")
            .collect();
        let n: usize = pushes.iter().map(|e| references(e).len()).sum();
        if n >= 3 || Instant::now() > deadline {
            break pushes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut pushed: Vec<String> = pushes.iter().flat_map(references).collect();
    pushed.sort();
    assert_eq!(pushed, want, "push records: {pushes:?}");
    for p in &pushes {
        assert_eq!(agent(p), "oslo-epj", "{p}");
        assert_eq!(p["action"], "E");
    }
    pushes
}

/// Three reads (one missing), two searches, `$pending` and `$confirm`;
/// returns a time between the reads and the rest.
async fn read_search_and_pull(hub: &Hub, p1_obs: &str, p2_obs: &str) -> String {
    // Reads: two found, one missing (recorded as a failure).
    let base = hub.fhir_base(OSLO);
    for r in [p1_obs, p2_obs] {
        let (status, _) = ok(get_json(&format!("{base}/{r}")).await);
        assert_eq!(status, 200);
    }
    let (status, _) = ok(get_json(&format!("{base}/{MISSING}")).await);
    assert_eq!(status, 404);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Searches: one by patient, one of everything.
    let (status, _) = ok(get_json(&format!(
        "{base}/Observation?subject:identifier={FNR_OID}|{}",
        synthetic::fnr(1)
    ))
    .await);
    assert_eq!(status, 200);
    let (status, _) = ok(get_json(&format!("{base}/Communication")).await);
    assert_eq!(status, 200);

    // Pull: $pending then $confirm, as the registered consumer.
    let (status, b) = ok(get_json(&format!("{base}/$pending?consumer=oslo-vakt&_count=10")).await);
    assert_eq!(status, 200, "{b}");
    let offered: Vec<String> = conformance_tests::harness::entry_refs(&b);
    assert_eq!(offered.len(), 3, "{b}");
    let body = conformance_tests::harness::journaled(&offered);
    let (status, text) = ok(vakt_confirm(&base, &body).await);
    assert_eq!(status, 200, "{text}");

    mid
}

/// Every Oslo record, counted by kind: pushes + 3 reads + 2 searches +
/// `$pending` + `$confirm`.
async fn count_records(hub: &Hub, n_push: usize, want: &[String]) -> Vec<Value> {
    let all = audit_events(hub, OSLO, "").await;
    let count = |code: &str| all.iter().filter(|e| subtype(e) == code).count();
    assert_eq!(count("transaction"), n_push, "{all:#?}");
    assert_eq!(count("read"), 3, "{all:#?}");
    assert_eq!(count("search-type"), 2, "{all:#?}");
    assert_eq!(count("operation"), 2, "{all:#?}");
    assert_eq!(all.len(), n_push + 7, "{all:#?}");
    let reads: Vec<&Value> = all.iter().filter(|e| subtype(e) == "read").collect();
    assert_eq!(reads.iter().filter(|e| e["outcome"] == "0").count(), 2);
    let failed: Vec<&&Value> = reads.iter().filter(|e| e["outcome"] == "4").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(references(failed[0]), vec![MISSING.to_string()]);
    for e in &reads {
        assert_eq!(agent(e), "oslo-epj");
        assert_eq!(e["source"]["site"], OSLO);
    }
    let ops: Vec<&Value> = all.iter().filter(|e| subtype(e) == "operation").collect();
    assert!(ops.iter().all(|e| agent(e) == "oslo-vakt"), "{ops:?}");
    let confirm = ops
        .iter()
        .find(|e| e["action"] == "U")
        .unwrap_or_else(|| panic!("no $confirm record: {ops:?}"));
    let mut confirmed = references(confirm);
    confirmed.sort();
    assert_eq!(confirmed, want);

    all
}

/// By patient identifier: patient 1 is in the read of its Observation,
/// never in the read of patient 2's; the D-number works the same way.
async fn by_patient(hub: &Hub, all: &[Value], pushes: &[Value], refs: [&String; 3]) {
    let [p1_obs, p1_alarm, p2_obs] = refs;
    let by_p1 = audit_events(
        hub,
        OSLO,
        &format!("&patient:identifier={FNR_OID}|{}", synthetic::fnr(1)),
    )
    .await;
    let by_p2 = audit_events(
        hub,
        OSLO,
        &format!("&patient:identifier={DNR_OID}|{}", synthetic::dnr(2)),
    )
    .await;
    let has_read_of = |evs: &[Value], r: &str| {
        evs.iter()
            .any(|e| subtype(e) == "read" && references(e).contains(&r.to_string()))
    };
    assert!(has_read_of(&by_p1, p1_obs) && !has_read_of(&by_p1, p2_obs));
    assert!(has_read_of(&by_p2, p2_obs) && !has_read_of(&by_p2, p1_obs));
    // Patient 1: 1 read, 2 searches (by patient, alarms), $pending, $confirm
    // and every push that carried one of its resources.
    let p1_pushes = pushes
        .iter()
        .filter(|e| references(e).iter().any(|r| r == p1_obs || r == p1_alarm))
        .count();
    assert_eq!(by_p1.len(), 1 + 2 + 2 + p1_pushes, "{by_p1:#?}");
    // One pseudonym per patient, and never the number itself.
    let p1_pseudonym = pseudonyms(
        by_p1
            .iter()
            .find(|e| subtype(e) == "read")
            .unwrap_or_else(|| panic!("no read")),
    );
    assert_eq!(p1_pseudonym.len(), 1);
    assert!(
        by_p1
            .iter()
            .all(|e| pseudonyms(e).contains(&p1_pseudonym[0]))
    );
    let text = serde_json::to_string(&all).unwrap_or_default();
    assert!(!text.contains(&synthetic::fnr(1)) && !text.contains(&synthetic::dnr(2)));
}

/// By time: after `mid` only the searches, `$pending` and `$confirm`; and
/// every record counted in /metrics.
async fn by_time_and_metrics(hub: &Hub, mid: &str, n_push: usize) {
    // By time: after `mid` only the searches, $pending and $confirm.
    let later = audit_events(hub, OSLO, &format!("&date=ge{mid}")).await;
    let mut codes: Vec<&str> = later.iter().map(subtype).collect();
    codes.sort();
    assert_eq!(
        codes,
        vec!["operation", "operation", "search-type", "search-type"],
        "{later:#?}"
    );
    let earlier = audit_events(hub, OSLO, &format!("&date=lt{mid}")).await;
    assert_eq!(earlier.len(), n_push + 3);

    // Counted in /metrics as well (Bergen has none yet).
    let m = ok(hub.metrics().await);
    assert_eq!(
        metric(&m, "knutepunkt_audit_records_total", &[]),
        (n_push + 7) as f64,
        "{m}"
    );
}

/// Bergen: its own trail holds only its own accesses; Oslo's is 404.
async fn bergen_sees_only_its_own(hub: &Hub, bergen_obs: &str, n_push: usize) -> Vec<Value> {
    let base = hub.fhir_base(OSLO);
    let (status, _) = ok(get_json(&format!("{}/{bergen_obs}", hub.fhir_base(BERGEN))).await);
    assert_eq!(status, 200);
    let bergen_trail = audit_events(hub, BERGEN, "").await;
    assert_eq!(bergen_trail.len(), 1, "{bergen_trail:#?}");
    assert_eq!(references(&bergen_trail[0]), vec![bergen_obs.to_string()]);
    assert_eq!(agent(&bergen_trail[0]), "bergen-epj");
    let bergen = ok(token(&format!("https://{}", hub.http), "bergen-epj").await);
    for q in [
        String::new(),
        format!("?patient:identifier={FNR_OID}|{}", synthetic::fnr(1)),
    ] {
        let r = ok(ok(conformance_tests::harness::http_client())
            .get(format!("{base}/AuditEvent{q}"))
            .bearer_auth(&bergen)
            .send()
            .await);
        assert_eq!(r.status(), 404, "Bergen read Oslo's audit trail");
        let body = r.text().await.unwrap_or_default();
        assert!(!body.contains("AuditEvent\""), "{body}");
    }
    // Oslo's trail still has exactly its own records.
    assert_eq!(audit_events(hub, OSLO, "").await.len(), n_push + 7);

    bergen_trail
}

/// Valid FHIR R4.
fn valid_fhir(all: Vec<Value>, bergen_trail: Vec<Value>) {
    let mut sample = all.clone();
    sample.extend(bergen_trail);
    match fhir_validator::validate(&sample) {
        Ok(()) => {}
        Err(e) if fhir_validator::is_skip(&e) => {
            conformance_tests::harness::skip("AuditEvent validation", &e)
        }
        Err(e) => panic!("AuditEvents are not valid FHIR R4: {e}"),
    }
}
