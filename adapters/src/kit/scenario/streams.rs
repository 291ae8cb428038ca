//! The SubmitStream checks: one receipt per event with a bad event rejected
//! in place, and a stream that breaks and is resumed on a new connection
//! without losing or doubling an event.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1 as pb;

use super::{Ctx, Outcome, fail, pass, record};
use crate::kit::report::Report;
use crate::kit::retry::receipt_is_transient;

/// Rounds of reconnect-and-resend before the kit gives up on a stream.
const MAX_ROUNDS: u32 = 12;

pub(super) async fn checks(ctx: &mut Ctx, report: &mut Report) {
    record(
        report,
        "stream.receipt_per_event",
        "SubmitStream answers each event once, by event_id; a bad event is REJECTED and the stream goes on",
        receipt_per_event(ctx),
    )
    .await;
    record(
        report,
        "stream.reconnect",
        "after a broken stream, reconnecting and resending what had no receipt loses nothing and stores nothing twice",
        reconnect(ctx),
    )
    .await;
}

/// Sends `events` on streams until each has a final receipt, opening a new
/// connection and stream whenever one breaks and resending only what has no
/// final receipt yet (a transient REJECTED, e.g. `unavailable`, is resent).
pub(crate) async fn until_done(
    ctx: &Ctx,
    events: &[pb::Event],
) -> Result<HashMap<String, pb::Receipt>, String> {
    let mut done: HashMap<String, pb::Receipt> = HashMap::new();
    let mut client = ctx.sender.client.clone();
    for round in 0..MAX_ROUNDS {
        let pending: Vec<pb::Event> = events
            .iter()
            .filter(|e| !done.contains_key(&e.event_id))
            .cloned()
            .collect();
        if pending.is_empty() {
            return Ok(done);
        }
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(50 << round.min(5))).await;
        }
        let broke = match client.submit_stream(tokio_stream::iter(pending)).await {
            Err(s) => Some(format!("{:?}: {}", s.code(), s.message())),
            Ok(resp) => {
                let mut receipts = resp.into_inner();
                let mut broke = None;
                while let Some(item) = receipts.next().await {
                    match item {
                        Ok(r) if receipt_is_transient(&r) => {}
                        Ok(r) => {
                            done.insert(r.event_id.clone(), r);
                        }
                        Err(s) => {
                            broke = Some(format!("{:?}: {}", s.code(), s.message()));
                            break;
                        }
                    }
                }
                broke
            }
        };
        if broke.is_some() {
            // A new connection, as a client must assume the old one is gone.
            ctx.reconnects.fetch_add(1, Ordering::Relaxed);
            if let Ok(ch) = ctx.target.connect().await {
                client = EventClient::new(ch);
            }
        }
    }
    let missing = events.len() - done.len();
    Err(format!(
        "{missing} of {} events had no final receipt after {MAX_ROUNDS} streams",
        events.len()
    ))
}

fn status_name(r: &pb::Receipt) -> &'static str {
    pb::ReceiptStatus::try_from(r.status)
        .map(|s| s.as_str_name())
        .unwrap_or("RECEIPT_STATUS_?")
}

async fn receipt_per_event(ctx: &mut Ctx) -> Outcome {
    let mut events: Vec<pb::Event> = (0..10)
        .map(|i| ctx.kit.heart_rate(&format!("s-{i}"), 60.0 + f64::from(i)))
        .collect();
    let mut bad = ctx.kit.heart_rate("s-bad", 70.0);
    if let Some(pb::event::Payload::Measurement(m)) = bad.payload.as_mut() {
        m.kind = pb::MeasurementKind::Unspecified as i32;
    }
    let bad_id = bad.event_id.clone();
    events.insert(5, bad);
    let got = match until_done(ctx, &events).await {
        Ok(g) => g,
        Err(e) => return fail(e, String::new()),
    };
    for ev in &events {
        let Some(r) = got.get(&ev.event_id) else {
            return fail(format!("no receipt for {}", ev.event_id), String::new());
        };
        let ok = if ev.event_id == bad_id {
            r.status == pb::ReceiptStatus::Rejected as i32
                && r.error_code == "invalid_argument"
                && r.error.contains("measurement.kind")
        } else {
            r.status == pb::ReceiptStatus::Accepted as i32
                || r.status == pb::ReceiptStatus::Duplicate as i32
        };
        if !ok {
            return fail(
                format!(
                    "{}: unexpected receipt {} {} {}",
                    ev.event_id,
                    status_name(r),
                    r.error_code,
                    r.error
                ),
                String::new(),
            );
        }
    }
    pass(format!(
        "{} receipts; the bad event: REJECTED invalid_argument",
        got.len()
    ))
}

async fn reconnect(ctx: &mut Ctx) -> Outcome {
    let events: Vec<pb::Event> = (0..8)
        .map(|i| ctx.kit.heart_rate(&format!("r-{i}"), 80.0 + f64::from(i)))
        .collect();
    let early = match break_early(ctx, &events).await {
        Ok(e) => e,
        Err(o) => return o,
    };
    ctx.reconnects.fetch_add(1, Ordering::Relaxed);
    // Then: resume on a new connection until every event has its receipt.
    let got = match until_done(ctx, &events).await {
        Ok(g) => g,
        Err(e) => return fail(e, format!("{} receipts before the break", early.len())),
    };
    if let Err(o) = same_after_break(&early, &got) {
        return o;
    }
    if let Err(o) = stored_once(ctx, &events, &got).await {
        return o;
    }
    pass(format!(
        "{} receipts before the break, all {} stored once after resuming",
        early.len(),
        events.len()
    ))
}

/// The first stream: every event sent, the stream dropped after 3 final
/// receipts; returns those receipts by event id.
async fn break_early(
    ctx: &Ctx,
    events: &[pb::Event],
) -> Result<HashMap<String, pb::Receipt>, Outcome> {
    let mut early: HashMap<String, pb::Receipt> = HashMap::new();
    let ch = match ctx.target.connect().await {
        Ok(c) => c,
        Err(e) => return Err(fail(format!("{e:#}"), String::new())),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(events.len());
    for ev in events {
        let _ = tx.send(ev.clone()).await;
    }
    let mut first = EventClient::new(ch);
    if let Ok(resp) = first
        .submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        let mut receipts = resp.into_inner();
        while early.len() < 3 {
            match tokio::time::timeout(Duration::from_secs(10), receipts.next()).await {
                Ok(Some(Ok(r))) if !receipt_is_transient(&r) => {
                    early.insert(r.event_id.clone(), r);
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
    }
    drop(tx);
    drop(first);
    Ok(early)
}

/// Every event answered before the break has the same resource after it.
fn same_after_break(
    early: &HashMap<String, pb::Receipt>,
    got: &HashMap<String, pb::Receipt>,
) -> Result<(), Outcome> {
    for (id, r0) in early {
        match got.get(id) {
            Some(r) if r.resource == r0.resource => {}
            other => {
                return Err(fail(
                    format!(
                        "{id} was stored as {} before the break but answered {:?} after it",
                        r0.resource,
                        other.map(|r| (status_name(r), &r.resource))
                    ),
                    String::new(),
                ));
            }
        }
    }
    Ok(())
}

/// Nothing twice: a unary resend of each is a DUPLICATE of the same resource.
async fn stored_once(
    ctx: &mut Ctx,
    events: &[pb::Event],
    got: &HashMap<String, pb::Receipt>,
) -> Result<(), Outcome> {
    for ev in events {
        let Some(r) = got.get(&ev.event_id) else {
            return Err(fail(
                format!("no receipt for {}", ev.event_id),
                String::new(),
            ));
        };
        let again = ctx.sender.send(ev.clone()).await;
        match again.receipt() {
            Some(a)
                if a.status == pb::ReceiptStatus::Duplicate as i32 && a.resource == r.resource => {}
            _ => {
                return Err(fail(
                    format!(
                        "{} was stored as {} on the stream, but a resend answered {}",
                        ev.event_id,
                        r.resource,
                        again.describe()
                    ),
                    String::new(),
                ));
            }
        }
    }
    Ok(())
}
