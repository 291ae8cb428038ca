//! Several hubs on one PostgreSQL: one log in commit order across hubs,
//! idempotency across hubs, and no acknowledged event lost when a hub is
//! killed. Each test makes (and drops) its own schema; without PostgreSQL
//! they say they skipped, under `CI=true` they fail.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use conformance_tests::harness::events::{self, OSLO};
use conformance_tests::harness::{Hub, ReceiptStatus, get_json, ok};
use conformance_tests::pg;

fn next_link(b: &serde_json::Value) -> Option<String> {
    b["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")?["url"]
        .as_str()
        .map(str::to_string)
}

/// A client tailing the log: pages with `_lastUpdated=gt<last seen>` and
/// `next` until the end, and returns the ids in the order seen.
async fn tail(base: &str, after: &mut String, seen: &mut Vec<String>) {
    let mut url = Some(if after.is_empty() {
        format!("{base}/Observation?_count=37")
    } else {
        format!("{base}/Observation?_count=37&_lastUpdated=gt{after}")
    });
    while let Some(u) = url.take() {
        let (status, b) = ok(get_json(&u).await);
        assert_eq!(status, 200, "{u}: {b}");
        for e in b["entry"].as_array().into_iter().flatten() {
            let lu = e["resource"]["meta"]["lastUpdated"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(lu > *after, "not in commit order: {lu} after {after}");
            *after = lu;
            seen.push(e["resource"]["id"].as_str().unwrap_or_default().to_string());
        }
        url = next_link(&b);
    }
}

/// Submits `n` heart rates through `hub` under `prefix`; the ids of those
/// answered ACCEPTED.
async fn writer(hub: &Hub, prefix: String, n: usize, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut c = ok(hub.client().await);
    let mut accepted = Vec::new();
    for i in 0..n {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(r) = c
            .submit(events::heart_rate(
                &format!("{prefix}-{i}"),
                OSLO,
                (i % 7) as u32,
            ))
            .await
        else {
            continue;
        };
        let r = r.into_inner();
        if r.status == ReceiptStatus::Accepted as i32 {
            accepted.push(r.resource.trim_start_matches("Observation/").to_string());
        }
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hubs_write_one_log_that_a_pager_sees_exactly_once() {
    let Some(schema) = ok(pg::schema("three_hubs_write_one_log").await) else {
        return;
    };
    let (hubs, _dirs) = ok(pg::hubs_on(&schema, 3, "").await);
    let hubs = Arc::new(hubs);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let (hubs, stop) = (hubs.clone(), stop.clone());
            tokio::spawn(async move { writer(&hubs[i], format!("h{i}"), 400, stop).await })
        })
        .collect();
    // A pager on the third hub while all three write.
    let base = hubs[2].fhir_base(OSLO);
    let (mut after, mut seen) = (String::new(), Vec::new());
    while !writers.iter().all(|w| w.is_finished()) {
        tail(&base, &mut after, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut accepted = HashSet::new();
    for w in writers {
        accepted.extend(ok(w.await));
    }
    tail(&base, &mut after, &mut seen).await;
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "the pager saw a resource twice");
    let seen: HashSet<String> = seen.into_iter().collect();
    assert_eq!(accepted.len(), 1200, "every write was accepted once");
    let missing: Vec<_> = accepted.difference(&seen).take(5).collect();
    assert!(missing.is_empty(), "the pager never saw {missing:?}");

    // Idempotency across hubs: one event sent through two hubs at once.
    let mut answers = HashMap::new();
    for round in 0..20 {
        let id = format!("race-{round}");
        let (mut a, mut b) = (ok(hubs[0].client().await), ok(hubs[1].client().await));
        let (ra, rb) = tokio::join!(
            a.submit(events::heart_rate(&id, OSLO, 1)),
            b.submit(events::heart_rate(&id, OSLO, 1)),
        );
        let mut pair = [ok(ra).into_inner().status, ok(rb).into_inner().status];
        pair.sort_unstable();
        *answers.entry(pair).or_insert(0) += 1;
    }
    let want = {
        let mut p = [
            ReceiptStatus::Accepted as i32,
            ReceiptStatus::Duplicate as i32,
        ];
        p.sort_unstable();
        p
    };
    assert_eq!(answers.get(&want), Some(&20), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_one_hub_under_load_loses_no_acknowledged_event() {
    let Some(schema) = ok(pg::schema("kill_9_of_one_hub").await) else {
        return;
    };
    let (hubs, _dirs) = ok(pg::hubs_on(&schema, 3, "").await);
    let mut hubs: Vec<Option<Hub>> = hubs.into_iter().map(Some).collect();
    let victim = Arc::new(tokio::sync::Mutex::new(hubs[1].take()));
    let survivors: Arc<Vec<Hub>> = Arc::new(
        [hubs[0].take(), hubs[2].take()]
            .into_iter()
            .flatten()
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..2 {
        let (hubs, stop) = (survivors.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            writer(&hubs[i], format!("s{i}"), 600, stop).await
        }));
    }
    let on_victim = {
        let (victim, stop) = (victim.clone(), stop.clone());
        tokio::spawn(submit_until_killed(victim, stop))
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    if let Some(hub) = victim.lock().await.as_mut() {
        ok(hub.kill9());
    }
    let mut accepted: Vec<String> = ok(on_victim.await);
    assert!(
        !accepted.is_empty(),
        "the killed hub took no events before it died"
    );
    for w in writers {
        accepted.extend(ok(w.await));
    }
    stop.store(true, Ordering::Relaxed);
    // Every acknowledged event, through either survivor.
    let mut seen = Vec::new();
    let mut after = String::new();
    tail(&survivors[0].fhir_base(OSLO), &mut after, &mut seen).await;
    let seen: HashSet<String> = seen.into_iter().collect();
    let lost: Vec<_> = accepted
        .iter()
        .filter(|id| !seen.contains(*id))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost: {lost:?} (of {})",
        accepted.len()
    );
}

/// Submits to the hub in `victim` until it is gone (or `stop`): the ids it
/// acknowledged.
async fn submit_until_killed(
    victim: Arc<tokio::sync::Mutex<Option<Hub>>>,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let guard = victim.lock().await;
    let Some(hub) = guard.as_ref() else {
        return Vec::new();
    };
    let mut c = ok(hub.client().await);
    drop(guard);
    let mut accepted = Vec::new();
    for i in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match c
            .submit(events::heart_rate(&format!("v-{i}"), OSLO, 2))
            .await
        {
            Ok(r) if r.get_ref().status == ReceiptStatus::Accepted as i32 => {
                accepted.push(
                    r.into_inner()
                        .resource
                        .trim_start_matches("Observation/")
                        .to_string(),
                );
            }
            Ok(_) => {}
            Err(_) => break, // the hub is gone
        }
    }
    accepted
}
