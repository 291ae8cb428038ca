//! Keyset paging: following `next` links while vendors keep writing never
//! skips or repeats a resource.

use conformance_tests::harness::ok;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use conformance_tests::harness::events::{self, OSLO};
use conformance_tests::harness::{Hub, HubOptions, ReceiptStatus, get_json};

fn next_link(b: &serde_json::Value) -> Option<String> {
    b["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")?["url"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_under_concurrent_writes_never_skips_or_repeats() {
    let dir = ok(tempfile::tempdir());
    let hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let mut c = ok(hub.client().await);
    let mut before = HashSet::new();
    for i in 0..300 {
        let r = ok(c
            .submit(events::heart_rate(&format!("pre-{i}"), OSLO, i % 9))
            .await)
        .into_inner();
        assert_eq!(r.status, ReceiptStatus::Accepted as i32);
        before.insert(r.resource.trim_start_matches("Observation/").to_string());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut c = ok(hub.client().await);
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 5_000 {
                let _ = c
                    .submit(events::heart_rate(&format!("live-{i}"), OSLO, i % 9))
                    .await;
                i += 1;
            }
        })
    };
    let mut seen = Vec::new();
    let mut url = Some(format!("{}/Observation?_count=17", hub.fhir_base(OSLO)));
    let mut last_updated = String::new();
    while let Some(u) = url.take() {
        let (status, b) = ok(get_json(&u).await);
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["type"], "searchset");
        for e in b["entry"].as_array().into_iter().flatten() {
            let lu = e["resource"]["meta"]["lastUpdated"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                lu > last_updated,
                "not in _lastUpdated order: {lu} after {last_updated}"
            );
            last_updated = lu;
            seen.push(e["resource"]["id"].as_str().unwrap_or_default().to_string());
        }
        url = next_link(&b);
        // Stop writing after a while so the walk reaches the end.
        if seen.len() > 600 {
            stop.store(true, Ordering::Relaxed);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a resource was repeated across pages"
    );
    assert!(
        before.is_subset(&unique),
        "a resource stored before the walk was skipped"
    );
    assert!(
        seen.len() > 300,
        "the walk saw none of the resources written during it"
    );
}

#[tokio::test]
async fn descending_sort_and_last_updated_filters() {
    let dir = ok(tempfile::tempdir());
    let hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let mut c = ok(hub.client().await);
    for i in 0..30 {
        ok(c.submit(events::heart_rate(&format!("e-{i}"), OSLO, 1))
            .await);
    }
    let (_, b) = ok(get_json(&format!(
        "{}/Observation?_count=500&_sort=-_lastUpdated",
        hub.fhir_base(OSLO)
    ))
    .await);
    let times: Vec<String> = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            e["resource"]["meta"]["lastUpdated"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(times.len(), 30);
    assert!(times.windows(2).all(|w| w[0] > w[1]), "not descending");
    let mid = &times[10];
    let (_, b) = ok(get_json(&format!(
        "{}/Observation?_count=500&_lastUpdated=gt{mid}",
        hub.fhir_base(OSLO)
    ))
    .await);
    assert_eq!(b["entry"].as_array().map(Vec::len), Some(10), "gt {mid}");
    let (_, b) = ok(get_json(&format!(
        "{}/Observation?_count=500&_lastUpdated=le{mid}",
        hub.fhir_base(OSLO)
    ))
    .await);
    assert_eq!(b["entry"].as_array().map(Vec::len), Some(20), "le {mid}");
    let (status, b) =
        ok(get_json(&format!("{}/Observation?color=blue", hub.fhir_base(OSLO))).await);
    assert_eq!(status, 400, "unsupported parameter must be refused: {b}");
    assert_eq!(b["resourceType"], "OperationOutcome");
}
