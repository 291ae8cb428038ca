//! A fallback that joins after the alarm it is handed: what the random
//! model test cannot make, as its consumers all start with the log. The
//! fallback reads the log itself but the alarm is older than its start, so
//! the alarm reaches it only through its queue; once settled there, its
//! state must stay known (before and after a restart), and a second
//! escalation must not queue it again. Checked on every backend with
//! explicit expectations (the model starts every consumer at the log's
//! beginning, so it cannot serve as the reference here).

use std::path::Path;

use super::backends::{Backend, Embedded, Postgres};
use super::ops::{self, Kind, PutOp, SEC};
use super::postgres_available;
use crate::store::{Class, ConsumerSpec, DeliveryState, PutOutcome, Settle};

fn spec(name: &str, escalate_to: Option<&str>) -> ConsumerSpec {
    ConsumerSpec {
        name: name.into(),
        municipality: ops::org(0),
        escalation_only: false,
        escalate_to: escalate_to.map(str::to_string),
        red_deadline_us: 30 * SEC,
        yellow_deadline_us: 120 * SEC,
    }
}

/// a-epj and a-pull escalate to a-sen, a log consumer added later.
fn with_late_fallback() -> Vec<ConsumerSpec> {
    vec![
        spec("a-epj", Some("a-sen")),
        spec("a-pull", Some("a-sen")),
        spec("a-sen", None),
    ]
}

fn dead_letter() -> Settle {
    Settle::DeadLetter {
        attempts: 1,
        error: "422 refused".into(),
        response: None,
    }
}

async fn state<B: Backend>(b: &B, seq: u64) -> Option<DeliveryState> {
    b.store()
        .delivery_state("a-sen", seq)
        .await
        .unwrap_or_else(|e| panic!("delivery_state: {e}"))
}

async fn take_seqs<B: Backend>(b: &B, name: &str) -> Vec<u64> {
    let items = b.store().take(name, 10, 0, None).await;
    let items = items.unwrap_or_else(|e| panic!("take at {name}: {e}"));
    items.iter().map(|i| i.resource.seq).collect()
}

async fn settle<B: Backend>(b: &B, name: &str, seq: u64, outcome: Settle) -> usize {
    let report = b.store().settle(name, vec![(seq, outcome)]).await;
    let report = report.unwrap_or_else(|e| panic!("settle at {name}: {e}"));
    report.escalated.len()
}

/// Stores RED alarm `event` (municipality A, patient 0); its seq.
async fn put_alarm<B: Backend>(b: &B, event: usize) -> u64 {
    let rec = ops::record(&PutOp {
        vendor: 0,
        event,
        org: 0,
        patient: 0,
        kind: Kind::Alarm(Class::Red),
        variant: 0,
        oversize: false,
    });
    let (org, rt) = (rec.municipality, rec.resource.resource_type);
    let id = match b.store().put(rec).await {
        Ok(PutOutcome::Accepted(r)) => r.id,
        other => panic!("put: {other:?}"),
    };
    match b.store().get(org, rt, id).await {
        Ok(Some(s)) => s.seq,
        other => panic!("get: {other:?}"),
    }
}

fn delivered(s: &Option<DeliveryState>) -> bool {
    matches!(s, Some(DeliveryState::Delivered { .. }))
}

async fn check<B: Backend>(dir: &Path) {
    let window = 3600 * SEC;
    let b = B::open(dir, vec![spec("a-epj", None), spec("a-pull", None)], window).await;
    let seq = put_alarm(&b, 0).await;
    let other = put_alarm(&b, 1).await;
    let b = b.restart(dir, with_late_fallback(), window).await;
    let st = state(&b, seq).await;
    assert_eq!(st, None, "older than a-sen: not its event");

    // Delivered by the late fallback: known as such, before and after a
    // restart, and not queued there again by a second escalation.
    assert_eq!(settle(&b, "a-epj", seq, dead_letter()).await, 1);
    assert_eq!(state(&b, seq).await, Some(DeliveryState::Pending));
    assert_eq!(take_seqs(&b, "a-sen").await, vec![seq]);
    settle(&b, "a-sen", seq, Settle::Delivered).await;
    let st = state(&b, seq).await;
    assert!(delivered(&st), "{st:?}");

    // Dead-lettered there, replayed by an operator, then delivered.
    assert_eq!(settle(&b, "a-epj", other, dead_letter()).await, 1);
    assert_eq!(take_seqs(&b, "a-sen").await, vec![other]);
    settle(&b, "a-sen", other, dead_letter()).await;
    let st = state(&b, other).await;
    assert!(
        matches!(st, Some(DeliveryState::DeadLettered { .. })),
        "{st:?}"
    );
    let replayed = b.store().dead_letter_replay("a-sen", other).await;
    assert!(replayed.unwrap_or_else(|e| panic!("replay: {e}")));
    assert_eq!(state(&b, other).await, Some(DeliveryState::Pending));
    assert_eq!(take_seqs(&b, "a-sen").await, vec![other]);
    settle(&b, "a-sen", other, Settle::Delivered).await;

    let b = b.restart(dir, with_late_fallback(), window).await;
    for q in [seq, other] {
        let st = state(&b, q).await;
        assert!(delivered(&st), "{q} after a restart: {st:?}");
    }
    // a-pull gives up too: reported, but a-sen has had both alarms.
    for q in [seq, other] {
        assert_eq!(settle(&b, "a-pull", q, dead_letter()).await, 1);
    }
    assert_eq!(take_seqs(&b, "a-sen").await, Vec::<u64>::new());
    b.close().await;
}

fn run<B: Backend>() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let rt = super::runtime();
    rt.block_on(check::<B>(dir.path()));
}

#[test]
fn a_late_fallback_keeps_what_it_settled_in_the_embedded_store() {
    run::<Embedded>();
}

#[test]
fn a_late_fallback_keeps_what_it_settled_in_the_postgres_store() {
    if postgres_available("a_late_fallback_keeps_what_it_settled_in_the_postgres_store") {
        run::<Postgres>();
    }
}
