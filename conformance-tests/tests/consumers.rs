//! Destinations as consumers of the log, with the real hub binary and the
//! real `epj-adapter`: a refused item never stalls a destination (the
//! livelock of issue 8), a refused RED alarm is escalated at once and once,
//! an alarm overtakes a backlog of 100,000 routine items of the same patient
//! within a second, and after `kill -9` every consumer (push and pull)
//! continues from what it had settled, losing and skipping nothing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use conformance_tests::harness::events::{self, OSLO};
use conformance_tests::harness::{
    EpjAdapter, Hub, HubOptions, OsloVakt, ReceiptStatus, entry_refs, fast_retry, get_json, ok,
    submit_all, vakt_confirm,
};
use knutepunkt::proto::v1 as pb;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

/// LOINC code of the blood pressure panel: what the EPJ is told to refuse.
const BP_PANEL: &str = "85354-9";

/// How the hub under test is set up.
struct Setup<'a> {
    epj: &'a EpjAdapter,
    max_batch: usize,
    deadline_red_secs: u64,
    /// The pull destination "oslo-vakt" gets only escalations (true) or
    /// every Oslo event as a second consumer (false).
    vakt_escalation_only: bool,
}

async fn start(dir: &std::path::Path, s: Setup<'_>) -> Hub {
    let mut push = fast_retry(s.max_batch, 2000);
    if s.vakt_escalation_only {
        push.push_str("\nescalate_to = \"oslo-vakt\"");
    }
    let cfg = ok(OsloVakt {
        push: Some((s.epj, push)),
        vakt_lease_secs: 1,
        vakt_escalation_only: Some(s.vakt_escalation_only),
        delivery: Some(format!(
            "deadline_red_secs = {}\ndeadline_yellow_secs = 300",
            s.deadline_red_secs
        )),
    }
    .toml());
    // A fixed token signing key, so access tokens (cached by the harness)
    // stay valid across a restart.
    let key = ok(conformance_tests::harness::certs()).join("epj-oslo-vakt.key");
    let opts = HubOptions {
        config_extra: cfg,
        env: vec![(
            "KNUTEPUNKT_AUTH__SIGNING_KEY_FILE".into(),
            key.display().to_string(),
        )],
        ..HubOptions::default()
    };
    ok(Hub::start(&dir.join("data"), opts).await)
}

/// `Type/id` of every resource the EPJ created, in arrival order.
fn received_refs(epj: &EpjAdapter) -> Vec<String> {
    epj.received()
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["type"].as_str().unwrap_or(""),
                r["id"].as_str().unwrap_or("")
            )
        })
        .collect()
}

async fn epj_requests(epj: &EpjAdapter) -> u64 {
    ok(epj.stats().await)["requests_total"]
        .as_u64()
        .unwrap_or(0)
}

async fn dead_letters(hub: &Hub) -> Vec<Value> {
    let (_, v) = ok(get_json(&format!("http://{}/admin/dlq", hub.admin)).await);
    v.as_array().cloned().unwrap_or_default()
}

/// `$pending` of oslo-vakt (leases what it returns for 1 s).
async fn pull(hub: &Hub, count: usize) -> Vec<String> {
    let (status, b) = ok(get_json(&format!(
        "{}/$pending?consumer=oslo-vakt&_count={count}",
        hub.fhir_base(OSLO)
    ))
    .await);
    assert_eq!(status, 200, "{b}");
    entry_refs(&b)
}

/// `$confirm` of oslo-vakt: every reference journaled. The OperationOutcome.
async fn confirm(hub: &Hub, refs: &[String]) -> Value {
    let body = conformance_tests::harness::journaled(refs);
    let (status, text) = ok(vakt_confirm(&hub.fhir_base(OSLO), &body).await);
    assert_eq!(status, 200, "{text}");
    ok(serde_json::from_str(&text))
}

/// The livelock of issue 8: one patient with a routine backlog, a RED alarm,
/// a note answering it, and one item the EPJ refuses for good (422). The
/// refused item, and only it, becomes a dead letter; everything else is
/// delivered (alarm first, the patient's routine items in order, the note
/// after its alarm); the number of requests stays bounded and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_item_never_stalls_the_destination() {
    let dir = ok(tempfile::tempdir());
    let epj = ok(EpjAdapter::start("down").await);
    let setup = Setup {
        epj: &epj,
        max_batch: 50,
        deadline_red_secs: 60,
        vakt_escalation_only: true,
    };
    let hub = start(dir.path(), setup).await;
    let patient = 7;
    let mut evs: Vec<pb::Event> = (0..20)
        .map(|i| events::heart_rate(&format!("ll-{i}"), OSLO, patient))
        .collect();
    evs.push(events::blood_pressure("ll-bp", OSLO, patient, 120.0, 80.0));
    evs.extend((20..60).map(|i| events::heart_rate(&format!("ll-{i}"), OSLO, patient)));
    evs.push(events::alarm(
        "ll-red",
        OSLO,
        patient,
        "4.1",
        pb::Severity::Red,
    ));
    evs.push(events::note("ll-note", OSLO, patient, "ll-red"));
    let refs = submit_all(&hub, evs).await;
    let (bp, alarm, note) = (&refs[20], &refs[61], &refs[62]);
    let n = refs.len();

    let before = epj_requests(&epj).await;
    ok(epj
        .set_mode(json!({"mode": "reject422", "reject_codes": [BP_PANEL]}))
        .await);
    ok(epj.wait_created(n - 1, Duration::from_secs(60)).await);
    // Settled: no request more, however long we wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = epj_requests(&epj).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = epj_requests(&epj).await;
    assert_eq!(settled, later, "the hub keeps sending after all is settled");
    let requests = later - before;
    // One refused Bundle, its items one by one, the rest in one Bundle;
    // a few more if the breaker's probe landed in between.
    assert!(
        requests <= n as u64 + 5,
        "{requests} requests for {n} items"
    );

    let got = received_refs(&epj);
    let want: HashSet<&String> = refs.iter().filter(|r| *r != bp).collect();
    let have: HashSet<&String> = got.iter().collect();
    assert_eq!(have, want, "delivered set");
    assert_eq!(got.len(), n - 1, "duplicates were created");
    assert_eq!(got.first(), Some(alarm), "the RED alarm goes first");
    let pos: HashMap<&String, usize> = got.iter().enumerate().map(|(i, r)| (r, i)).collect();
    assert!(pos[note] > pos[alarm], "the note came before its alarm");
    let routine: Vec<usize> = refs[..61]
        .iter()
        .filter(|r| *r != bp)
        .map(|r| pos[r])
        .collect();
    assert!(
        routine.windows(2).all(|w| w[0] < w[1]),
        "the patient's routine items out of order: {routine:?}"
    );

    let dlq = dead_letters(&hub).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["resource"].as_str(), Some(bp.as_str()), "{dlq:?}");
    assert_eq!(dlq[0]["destination"], "oslo-epj");
    assert!(
        dlq[0]["error"].as_str().unwrap_or("").contains("422"),
        "{dlq:?}"
    );
}

/// A RED alarm the EPJ refuses with 422 is handed to the escalation-only
/// response centre at once (long before its 60 s deadline), exactly once;
/// a refused GREEN alarm is dead-lettered but not escalated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_red_alarm_is_escalated_at_once_and_once() {
    let dir = ok(tempfile::tempdir());
    let epj = ok(EpjAdapter::start_in(json!({"mode": "reject422", "reject_codes": ["4.1"]})).await);
    let setup = Setup {
        epj: &epj,
        max_batch: 50,
        deadline_red_secs: 60,
        vakt_escalation_only: true,
    };
    let hub = start(dir.path(), setup).await;
    let refs = submit_all(
        &hub,
        vec![events::alarm(
            "rr-green",
            OSLO,
            3,
            "4.1",
            pb::Severity::Green,
        )],
    )
    .await;
    let green = refs[0].clone();
    let accepted = Instant::now();
    let red = submit_all(
        &hub,
        vec![events::alarm("rr-red", OSLO, 3, "4.1", pb::Severity::Red)],
    )
    .await
    .remove(0);
    let pulled = loop {
        let p = pull(&hub, 50).await;
        if !p.is_empty() {
            break p;
        }
        assert!(
            accepted.elapsed() < Duration::from_secs(10),
            "the refused RED alarm did not reach the response centre; log:\n{}",
            hub.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = accepted.elapsed();
    assert_eq!(pulled, vec![red.clone()], "only the RED alarm is escalated");
    assert!(
        took < Duration::from_secs(10),
        "escalated after {took:?}, not at once"
    );
    confirm(&hub, &pulled).await;
    // Nothing more arrives: not the GREEN one, not the RED one again (its
    // deadline escalation must not repeat it either).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pull(&hub, 50).await, Vec::<String>::new());
    let dlq = dead_letters(&hub).await;
    let dead: HashSet<&str> = dlq.iter().filter_map(|d| d["resource"].as_str()).collect();
    assert_eq!(
        dead,
        HashSet::from([red.as_str(), green.as_str()]),
        "{dlq:?}"
    );
    let logs = hub.logs();
    assert_eq!(
        logs.matches("escalated to the fallback").count(),
        1,
        "escalated more or less than once:\n{logs}"
    );
    assert!(logs.contains("refused for good"), "{logs}");
    assert!(epj.received().is_empty());
}

/// Streams `evs` over `streams` SubmitStream calls; every one must be
/// accepted. Returns how many were.
async fn stream_all(hub: &Hub, evs: Vec<pb::Event>, streams: usize) -> usize {
    let per = evs.len().div_ceil(streams);
    let mut tasks = Vec::new();
    let mut evs = evs.into_iter();
    for _ in 0..streams {
        let chunk: Vec<pb::Event> = evs.by_ref().take(per).collect();
        let mut c = ok(hub.client().await);
        tasks.push(tokio::spawn(async move {
            let mut rx = ok(c.submit_stream(tokio_stream::iter(chunk)).await).into_inner();
            let mut n = 0usize;
            while let Some(r) = rx.next().await {
                let r = ok(r);
                assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += ok(t.await);
    }
    total
}

/// An alarm behind 100,000 routine items of the same patient reaches the
/// EPJ within 1 s of its ACCEPTED, while the backlog drains into a slow EPJ.
/// Times: the vendor's clock at the receipt and the EPJ's `received` stamp,
/// on the same machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_behind_a_large_backlog_of_its_patient_arrives_within_a_second() {
    let backlog: u32 = std::env::var("KNUTEPUNKT_ALARM_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = ok(tempfile::tempdir());
    let epj = ok(EpjAdapter::start("down").await);
    let setup = Setup {
        epj: &epj,
        max_batch: 100,
        deadline_red_secs: 60,
        vakt_escalation_only: true,
    };
    let hub = start(dir.path(), setup).await;
    let patient = 11;
    let loading = Instant::now();
    let evs: Vec<pb::Event> = (0..backlog)
        .map(|i| events::heart_rate(&format!("bl-{i}"), OSLO, patient))
        .collect();
    assert_eq!(stream_all(&hub, evs, 4).await, backlog as usize);
    eprintln!("{backlog} routine events stored in {:?}", loading.elapsed());

    // The EPJ comes back slow: the hub drains the backlog in Bundles, one
    // in flight at a time, each answered after 200 ms.
    ok(epj.set_mode(json!({"mode": "slow", "delay_ms": 200})).await);
    ok(epj.wait_created(1, Duration::from_secs(30)).await);

    let mut c = ok(hub.client().await);
    let r = ok(c
        .submit(events::alarm(
            "bl-red",
            OSLO,
            patient,
            "4.1",
            pb::Severity::Red,
        ))
        .await)
    .into_inner();
    let accepted_at = chrono::Utc::now();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
    let id = r.resource.split('/').nth(1).unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let arrived = loop {
        if let Some(line) = epj.received().into_iter().find(|l| l["id"] == id.as_str()) {
            break line;
        }
        assert!(Instant::now() < deadline, "the alarm never reached the EPJ");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let at = ok(chrono::DateTime::parse_from_rfc3339(
        arrived["received"].as_str().unwrap_or_default(),
    ));
    let took = at.with_timezone(&chrono::Utc) - accepted_at;
    let before = epj.received().len();
    eprintln!(
        "alarm behind {backlog}: at the EPJ {took} after ACCEPTED ({before} routine items delivered by then)"
    );
    assert!(
        took < chrono::Duration::seconds(1),
        "the alarm took {took} behind {backlog} routine items"
    );
    assert!(
        before < backlog as usize,
        "the backlog had drained already; the test proves nothing"
    );
}

/// kill -9 while a push destination is delivering and a pull destination
/// holds leased, unconfirmed items, with confirmations above its floor
/// (every other item). After the restart every consumer continues from what
/// it had settled: the push EPJ ends with every event (at least once; its
/// conditional create makes resends harmless), the pull consumer gets every
/// event it had not confirmed and none it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill9_rebuilds_every_consumer_from_its_floor() {
    let dir = ok(tempfile::tempdir());
    // Slow enough that the kill finds most items undelivered, also on the
    // PostgreSQL backend, whose submits take longer than the embedded store's.
    let epj = ok(EpjAdapter::start_in(json!({"mode": "slow", "delay_ms": 1000})).await);
    let setup = Setup {
        epj: &epj,
        max_batch: 20,
        deadline_red_secs: 60,
        vakt_escalation_only: false,
    };
    let mut hub = start(dir.path(), setup).await;
    let n = 300usize;
    let evs = restart_mix(n);
    let refs = submit_all(&hub, evs).await;
    let all: HashSet<String> = refs.iter().cloned().collect();

    // Pull: confirm every other one of the first 120, lease 60 more.
    let first = pull(&hub, 120).await;
    assert_eq!(first.len(), 120);
    let confirmed: Vec<String> = first.iter().step_by(2).cloned().collect();
    confirm(&hub, &confirmed).await;
    assert_eq!(pull(&hub, 60).await.len(), 60);

    ok(epj.wait_created(20, Duration::from_secs(30)).await);
    ok(hub.kill9());
    let at_kill = epj.received().len();
    assert!(
        at_kill < n,
        "everything was delivered before the kill; the test proves nothing"
    );

    ok(epj.set_mode(json!({"mode": "ok"})).await);
    ok(hub.restart().await);
    ok(epj.wait_created(n, Duration::from_secs(60)).await);
    let pushed = received_refs(&epj);
    let unique: HashSet<String> = pushed.iter().cloned().collect();
    assert_eq!(unique, all, "push: lost or unknown items");
    assert_eq!(pushed.len(), n, "push: the EPJ created duplicates");

    let after = pull_after_the_restart(&hub, n, &all, confirmed).await;
    a_settled_and_an_unknown_confirmation(&hub, &after).await;
}

/// `n` readings with a RED alarm at 100 and a YELLOW one last.
fn restart_mix(n: usize) -> Vec<pb::Event> {
    let mut evs: Vec<pb::Event> = (0..n - 2)
        .map(|i| events::heart_rate(&format!("rs-{i}"), OSLO, i as u32 % 7))
        .collect();
    evs.insert(
        100,
        events::alarm("rs-red", OSLO, 3, "4.1", pb::Severity::Red),
    );
    evs.push(events::alarm(
        "rs-yellow",
        OSLO,
        4,
        "4.2",
        pb::Severity::Yellow,
    ));
    evs
}

/// Pull after the restart: leases are forgotten, confirmations are not.
/// Everything not `confirmed` before is offered once; what was offered.
async fn pull_after_the_restart(
    hub: &Hub,
    n: usize,
    all: &HashSet<String>,
    confirmed: Vec<String>,
) -> Vec<String> {
    let mut after: Vec<String> = Vec::new();
    loop {
        let p = pull(hub, 500).await;
        if p.is_empty() {
            break;
        }
        confirm(hub, &p).await;
        after.extend(p);
        assert!(after.len() <= 2 * n, "pull never ends");
    }
    let after_set: HashSet<String> = after.iter().cloned().collect();
    assert_eq!(after_set.len(), after.len(), "pull: offered twice");
    let confirmed_set: HashSet<String> = confirmed.into_iter().collect();
    assert!(
        after_set.is_disjoint(&confirmed_set),
        "pull: confirmed items came back after the restart"
    );
    let union: HashSet<String> = after_set.union(&confirmed_set).cloned().collect();
    assert_eq!(
        &union, all,
        "pull: items lost or skipped across the restart"
    );

    after
}

/// One body with a settled item and an unknown one: the settled one is
/// found (and skipped by the store), the unknown one is reported.
async fn a_settled_and_an_unknown_confirmation(hub: &Hub, after: &[String]) {
    let settled = after.first().cloned().unwrap_or_default();
    let unknown = "Observation/00000000-0000-4000-8000-00000000beef".to_string();
    let outcome = confirm(hub, &[settled, unknown]).await;
    let said = outcome.to_string();
    assert!(said.contains("1 confirmation(s) recorded"), "{said}");
    assert!(said.contains("1 resource(s) are not known"), "{said}");
    assert!(
        pull(hub, 500).await.is_empty(),
        "a confirmation re-offered an item"
    );
}
