//! A real PostgreSQL server crashes and restarts under load from two hubs.
//! Unlike `postgres_outage` (a cut TCP proxy), the test runs a private
//! cluster of its own ([`PgServer`]) and stops it with `pg_ctl stop -m
//! immediate` (no flush, crash recovery at the next start) while clients
//! submit, then restarts it once more with `pg_ctl restart -m fast`.
//!
//! - no event is acknowledged (ACCEPTED or DUPLICATE) that is not in the
//!   store afterwards, and nothing is stored that was not sent;
//! - while the server is down, submits fail with UNAVAILABLE within a bound
//!   and `/readyz` is 503 on both hubs;
//! - afterwards the same hub processes are ready and take writes again by
//!   themselves;
//! - every submit that failed, resent (through the other hub), ends
//!   ACCEPTED or DUPLICATE, never ALREADY_EXISTS.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use conformance_tests::harness::events::{self, OSLO};
use conformance_tests::harness::{Hub, ReceiptStatus, ok, search_all};
use conformance_tests::pg;
use conformance_tests::pgserver::PgServer;
use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1 as pb;

const TEST: &str = "postgres_restart";
/// Longer than any submit may take, database down or not.
const SUBMIT_BOUND: Duration = Duration::from_secs(12);
/// How long the hubs get to become ready and take writes after the server
/// is back.
const HEAL_BOUND: Duration = Duration::from_secs(30);
const CLIENTS_PER_HUB: usize = 2;

/// One submit as a load client saw it.
struct Sent {
    event: pb::Event,
    hub: usize,
    started: Instant,
    ended: Instant,
    result: Outcome,
}

enum Outcome {
    /// ACCEPTED or DUPLICATE, with the resource's id.
    Acked(String),
    /// Any other receipt status.
    Refused(i32),
    Failed(tonic::Code, String),
    Hung,
}

async fn submit(c: &mut EventClient, ev: pb::Event) -> Outcome {
    match tokio::time::timeout(SUBMIT_BOUND, c.submit(ev)).await {
        Err(_) => Outcome::Hung,
        Ok(Err(s)) => Outcome::Failed(s.code(), s.message().to_string()),
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if r.status == ReceiptStatus::Accepted as i32
                || r.status == ReceiptStatus::Duplicate as i32
            {
                Outcome::Acked(r.resource.trim_start_matches("Observation/").to_string())
            } else {
                Outcome::Refused(r.status)
            }
        }
    }
}

/// A client submitting fresh events through `hubs[h]` until `stop`.
async fn load(hubs: Arc<Vec<Hub>>, h: usize, c: usize, stop: Arc<AtomicBool>) -> Vec<Sent> {
    let mut client = ok(hubs[h].client().await);
    let mut sent = Vec::new();
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let event = events::heart_rate(&format!("h{h}c{c}-{i}"), OSLO, i % 5);
        let started = Instant::now();
        let result = submit(&mut client, event.clone()).await;
        let failed = !matches!(result, Outcome::Acked(_));
        sent.push(Sent {
            event,
            hub: h,
            started,
            ended: Instant::now(),
            result,
        });
        i += 1;
        // Keep the volume (and the check at the end) moderate; back off a
        // little while the database is away.
        let pause = if failed { 100 } else { 10 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    sent
}

/// Submits through `hub` until ACCEPTED, within [`HEAL_BOUND`] of `since`.
async fn wait_accepting(hub: &Hub, id: &str, since: Instant) -> String {
    loop {
        if let Ok(mut c) = hub.client().await
            && let Outcome::Acked(r) = submit(&mut c, events::heart_rate(id, OSLO, 1)).await
        {
            return r;
        }
        assert!(
            since.elapsed() < HEAL_BOUND,
            "the hub took no write within {HEAL_BOUND:?} of the database's return; log:\n{}",
            hub.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a blocking server command off the runtime.
async fn on_server(server: &Arc<PgServer>, f: fn(&PgServer) -> anyhow::Result<()>) {
    let pg = server.clone();
    ok(ok(tokio::task::spawn_blocking(move || f(&pg)).await));
}

/// What the test itself sent beside the load: event id -> resource id of
/// the acknowledged ones, and the refused ones (event, hub) to resend.
#[derive(Default)]
struct Probes {
    acked: HashMap<String, String>,
    failed: Vec<(pb::Event, usize)>,
}

/// The window in which the server was down for certain.
struct Outage {
    down: Instant,
    up: Instant,
}

/// `pg_ctl stop -m immediate`; then both hubs must say 503 and refuse a
/// submit with UNAVAILABLE in bounded time; after 3 s `pg_ctl start`, and
/// both hubs must be ready and take a write within [`HEAL_BOUND`].
async fn crash_and_recover(server: &Arc<PgServer>, hubs: &[Hub], probes: &mut Probes) -> Outage {
    on_server(server, PgServer::crash).await;
    let down = Instant::now();
    for hub in hubs {
        hub.wait_readyz(503, Duration::from_secs(10)).await;
    }
    for (h, hub) in hubs.iter().enumerate() {
        let ev = events::heart_rate(&format!("probe-down-{h}"), OSLO, 2);
        let mut c = ok(hub.client().await);
        match submit(&mut c, ev.clone()).await {
            Outcome::Failed(tonic::Code::Unavailable, _) => probes.failed.push((ev, h)),
            Outcome::Failed(code, msg) => {
                panic!("submit while down: {code:?} ({msg}), not UNAVAILABLE")
            }
            Outcome::Hung => {
                panic!("a submit hung for {SUBMIT_BOUND:?} while the database was down")
            }
            Outcome::Acked(r) => panic!("hub {h} acknowledged {r} while the database was down"),
            Outcome::Refused(s) => {
                panic!("hub {h} answered status {s} while the database was down")
            }
        }
    }
    // Let the load clients run into the outage too.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down.elapsed())).await;
    let up = Instant::now();
    on_server(server, PgServer::start_again).await;
    heal(hubs, "up", probes).await;
    Outage { down, up }
}

/// Both hubs ready and taking a write within [`HEAL_BOUND`] from now.
async fn heal(hubs: &[Hub], tag: &str, probes: &mut Probes) {
    let since = Instant::now();
    for (h, hub) in hubs.iter().enumerate() {
        let took = hub.wait_readyz(200, HEAL_BOUND).await;
        let id = format!("probe-{tag}-{h}");
        let r = wait_accepting(hub, &id, since).await;
        probes.acked.insert(id, r);
        eprintln!("{TEST}: hub {h} ready {took:?} after the server was back ({tag})");
    }
}

/// Sorts what the load clients saw: the acknowledged ones into `acked`,
/// the failed ones (all of them UNAVAILABLE) to resend. Returns how many
/// failed entirely inside the outage.
fn classify(sent: &[Sent], o: &Outage, probes: &mut Probes) -> usize {
    let mut during_outage = 0;
    for s in sent {
        let id = &s.event.event_id;
        let inside = s.started > o.down && s.ended < o.up;
        match &s.result {
            Outcome::Acked(r) => {
                assert!(!inside, "{id} acknowledged while the database was down");
                probes.acked.insert(id.clone(), r.clone());
            }
            Outcome::Failed(tonic::Code::Unavailable, _) => {
                during_outage += usize::from(inside);
                probes.failed.push((s.event.clone(), s.hub));
            }
            Outcome::Failed(code, msg) => {
                panic!("{id}: {code:?} ({msg}); a database outage must be UNAVAILABLE")
            }
            Outcome::Hung => panic!("{id}: no answer within {SUBMIT_BOUND:?}"),
            Outcome::Refused(st) => panic!("{id}: receipt status {st}"),
        }
    }
    during_outage
}

/// Resends every failed submit through the other hub: ACCEPTED or
/// DUPLICATE (committed, answer lost), never ALREADY_EXISTS. Returns the
/// number of DUPLICATEs.
async fn resend(hubs: &[Hub], probes: &mut Probes) -> usize {
    let mut clients = Vec::new();
    for hub in hubs {
        clients.push(ok(hub.client().await));
    }
    let mut duplicates = 0;
    for (ev, h) in std::mem::take(&mut probes.failed) {
        let c = &mut clients[(h + 1) % hubs.len()];
        let r = ok(c
            .submit(ev.clone())
            .await
            .map_err(|s| format!("resend {}: {s}", ev.event_id)));
        let r = r.into_inner();
        duplicates += usize::from(r.status == ReceiptStatus::Duplicate as i32);
        assert!(
            r.status == ReceiptStatus::Accepted as i32
                || r.status == ReceiptStatus::Duplicate as i32,
            "resend of {} answered status {} (ALREADY_EXISTS would mean the hub stored something else under it)",
            ev.event_id,
            r.status
        );
        let res = r.resource.trim_start_matches("Observation/").to_string();
        probes.acked.insert(ev.event_id, res);
    }
    duplicates
}

/// Every acknowledged event is stored, and nothing else is. Returns the
/// number stored.
async fn check_stored(hub: &Hub, acked: &HashMap<String, String>, server: &PgServer) -> usize {
    let url = format!("{}/Observation?_count=500", hub.fhir_base(OSLO));
    let stored: HashSet<String> = ok(search_all(&url).await)
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(_, r)| !stored.contains(*r))
        .map(|(e, _)| e.clone())
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events are not in the store after the restarts: {:?}\nserver log:\n{}",
        lost.len(),
        &lost[..lost.len().min(20)],
        server.log()
    );
    let want: HashSet<&String> = acked.values().collect();
    let extra: Vec<_> = stored.iter().filter(|r| !want.contains(r)).collect();
    assert!(extra.is_empty(), "stored but never acknowledged: {extra:?}");
    stored.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgresql_crash_and_restart_under_load_loses_no_ack_and_the_hubs_heal() {
    let t_test = Instant::now();
    let phase = |what: &str| eprintln!("{TEST}: {what} at {:?}", t_test.elapsed());
    let server = match ok(tokio::task::spawn_blocking(PgServer::start).await) {
        Ok(Ok(s)) => Arc::new(s),
        Ok(Err(why)) => return conformance_tests::harness::skip(TEST, &why.0),
        Err(e) => panic!("{TEST}: the private PostgreSQL did not start: {e:#}"),
    };
    phase("server up");
    let schema = ok(pg::schema_in(&server.url()).await);
    let (hubs, _dirs) = ok(pg::hubs_on(&schema, 2, "").await);
    let pids: Vec<_> = hubs.iter().map(Hub::pid).collect();
    phase("hubs up");
    let hubs = Arc::new(hubs);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..hubs.len() * CLIENTS_PER_HUB)
        .map(|k| {
            let (hubs, stop) = (hubs.clone(), stop.clone());
            let n = hubs.len();
            tokio::spawn(load(hubs, k % n, k / n, stop))
        })
        .collect();
    let mut probes = Probes::default();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. A crash: every server process gone at once, mid-transaction.
    phase("crash");
    let outage = crash_and_recover(&server, &hubs, &mut probes).await;
    // 2. A fast restart (sessions terminated, checkpoint, start) under load.
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase("fast restart");
    on_server(&server, PgServer::restart_fast).await;
    let restarted = Instant::now();
    heal(&hubs, "up2", &mut probes).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    phase("load stopped");
    let mut sent = Vec::new();
    for (k, c) in clients.into_iter().enumerate() {
        let mine = ok(c.await);
        assert!(
            mine.iter()
                .any(|s| s.started > restarted && matches!(s.result, Outcome::Acked(_))),
            "load client {k} got no ACCEPTED after the fast restart"
        );
        sent.extend(mine);
    }
    // The same processes did all of it.
    assert_eq!(pids, hubs.iter().map(Hub::pid).collect::<Vec<_>>());

    let during_outage = classify(&sent, &outage, &mut probes);
    assert!(
        during_outage > 0,
        "no load submit fell into the outage: the test proved nothing"
    );
    let failed = probes.failed.len();
    // 3. Resend every failed submit; 4. all acknowledged, nothing else.
    let duplicates = resend(&hubs, &mut probes).await;
    phase("resent");
    let stored = check_stored(&hubs[1], &probes.acked, &server).await;
    eprintln!(
        "{TEST}: {} load submits, {failed} failed and resent ({duplicates} of them DUPLICATE: committed, answer lost), {stored} stored, {:?} in all",
        sent.len(),
        t_test.elapsed()
    );
}
