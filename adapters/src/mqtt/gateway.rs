//! The gateway loop: MQTT in, hub receipts out, the MQTT acknowledgement
//! last.
//!
//! Why it exists: this is where "at least once, end to end" is kept.
//! - The session is persistent (clean session off, fixed client id) and
//!   QoS 1, and acks are manual: a message is acknowledged to the broker
//!   only after the hub said ACCEPTED or DUPLICATE for every event in it,
//!   or after it was published to the dead-letter topic. A gateway that
//!   dies before that gets the message again from the broker.
//! - While the hub is down a message's task waits and retries with
//!   backoff; the message stays unacknowledged in the broker session. The
//!   broker sends only its in-flight window of unacknowledged messages
//!   (Mosquitto: `max_inflight_messages`, 20 by default); everything else
//!   waits in the broker, not here. `max_in_flight` caps the messages
//!   being submitted at once; the loop that polls the broker connection
//!   never waits for it, because that loop is what sends the acks.
//! - Messages of one topic (one device and kind) are submitted in the
//!   order they arrived; different devices go in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use serde_json::json;
use tokio::sync::{Semaphore, oneshot, watch};

use super::hub::{HubClient, Outcome};
use super::payload;
use super::{GatewayConfig, GatewayError, Stats};

/// How long a note may wait for the alarm it answers (the alarm comes on
/// another topic, and MQTT orders only within a topic).
const UNKNOWN_ALARM_PATIENCE: Duration = Duration::from_secs(30);
/// How long a stop waits for messages in flight to be acknowledged.
const STOP_GRACE: Duration = Duration::from_secs(5);

struct Ctx {
    cfg: GatewayConfig,
    hub: HubClient,
    mqtt: AsyncClient,
    stats: Arc<Stats>,
    stopping: watch::Receiver<bool>,
}

fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs until `shutdown` resolves; then acknowledges what finishes within a
/// few seconds and disconnects, leaving the rest to the broker session.
pub async fn run(
    cfg: GatewayConfig,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), GatewayError> {
    let (mqtt, mut events) = AsyncClient::new(cfg.mqtt_options()?, 2 * cfg.max_in_flight + 64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let filter = cfg.scheme.filter();
    let hub = HubClient::new(cfg.conn.clone(), cfg.hub.clone());
    let ctx = Arc::new(Ctx {
        cfg,
        hub,
        mqtt,
        stats,
        stopping: stop_rx,
    });
    let permits = Arc::new(Semaphore::new(ctx.cfg.max_in_flight));
    let mut chains: HashMap<String, oneshot::Receiver<()>> = HashMap::new();
    let mut reconnect = backoff(Duration::from_millis(100), Duration::from_secs(5));
    let mut connected = false;
    tokio::pin!(shutdown);
    loop {
        let ev = tokio::select! {
            _ = &mut shutdown => break,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                reconnect = backoff(Duration::from_millis(100), Duration::from_secs(5));
                // Subscribing again on a resumed session is harmless and
                // covers a broker that lost the session.
                ctx.mqtt
                    .subscribe(filter.clone(), QoS::AtLeastOnce)
                    .await
                    .map_err(|e| GatewayError::Mqtt(e.to_string()))?;
                tracing::info!(
                    session_present = ack.session_present,
                    filter = %filter,
                    "connected to the MQTT broker"
                );
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                tracing::info!(filter = %filter, "subscribed");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                ctx.stats.received.fetch_add(1, Ordering::Relaxed);
                dispatch(&ctx, &permits, &mut chains, p);
            }
            Ok(_) => {}
            Err(e) => {
                let wait = reconnect.next().unwrap_or(Duration::from_secs(5));
                if connected {
                    tracing::warn!(error = %e, "lost the MQTT broker; reconnecting");
                } else {
                    tracing::debug!(error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT broker not reachable");
                }
                connected = false;
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    // Stop: tasks stop retrying; those that finish still get their ack out.
    let _ = stop_tx.send(true);
    stop(&ctx, &mut events, &permits).await;
    Ok(())
}

/// Hands one message to a task of its own, after the previous message of
/// the same topic (a device's order is kept) and once one of
/// `max_in_flight` permits is free.
fn dispatch(
    ctx: &Arc<Ctx>,
    permits: &Arc<Semaphore>,
    chains: &mut HashMap<String, oneshot::Receiver<()>>,
    p: Publish,
) {
    // Never wait here: the event loop is what sends the acks that the
    // tasks queue (rumqttc sends requests only while it is polled).
    // Waiting for a permit here, while every permit was held by a task
    // waiting for its ack to be queued, stopped the gateway for good once
    // the ack queue filled.
    let permits = permits.clone();
    let (done, next) = oneshot::channel();
    if chains.len() > 4 * ctx.cfg.max_in_flight {
        chains.retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
    }
    let prev = chains.insert(p.topic.clone(), next);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Some(prev) = prev {
            let _ = prev.await;
        }
        // Closed only if the gateway is gone; then nothing to do.
        let Ok(permit) = permits.acquire_owned().await else {
            return;
        };
        handle(&ctx, p).await;
        drop(done);
        drop(permit);
    });
}

/// After the loop: lets the tasks in flight finish (their acks still go
/// out) for up to `STOP_GRACE`, disconnects, and forgets the broker
/// session if configured to.
async fn stop(ctx: &Ctx, events: &mut rumqttc::EventLoop, permits: &Semaphore) {
    let until = Instant::now() + STOP_GRACE;
    while permits.available_permits() < ctx.cfg.max_in_flight && Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(50), events.poll()).await {
            Ok(Err(_)) => break,
            _ => continue,
        }
    }
    let _ = ctx.mqtt.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    if ctx.cfg.forget_session_on_exit {
        forget_session(&ctx.cfg).await;
        tracing::info!("stopped; broker session removed (--forget-session-on-exit)");
    } else {
        tracing::info!("stopped; unacknowledged messages stay in the broker session");
    }
}

/// Connects once with a clean session under the gateway's client id, which
/// makes the broker drop the persistent session.
async fn forget_session(cfg: &GatewayConfig) {
    let Ok(mut o) = cfg.mqtt_options() else {
        return;
    };
    o.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(o, 8);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.disconnect().await;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
}

/// What to do with a message once the hub had its say.
enum Verdict {
    /// Every event is stored: ack.
    Stored,
    /// Publish this to the dead-letter topic, then ack.
    DeadLetter(String, serde_json::Value),
    /// Stopping while the hub was still unavailable: no ack.
    Stopped,
}

async fn handle(ctx: &Ctx, p: Publish) {
    let verdict = decide(ctx, &p).await;
    let ack = match verdict {
        Verdict::Stored => true,
        Verdict::DeadLetter(topic, body) => {
            tracing::info!(topic = %p.topic, code = %body["error_code"], "dead-lettered");
            // Published before the ack, on the same connection, so the broker
            // has the dead letter before it forgets the message.
            match ctx
                .mqtt
                .publish(topic, QoS::AtLeastOnce, false, body.to_string())
                .await
            {
                Ok(()) => {
                    ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not publish the dead letter; the message stays unacknowledged");
                    false
                }
            }
        }
        Verdict::Stopped => false,
    };
    if ack {
        match ctx.mqtt.ack(&p).await {
            Ok(()) => {
                ctx.stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "could not acknowledge a message"),
        }
    }
}

async fn decide(ctx: &Ctx, p: &Publish) -> Verdict {
    let scheme = &ctx.cfg.scheme;
    let dead = |topic: String, code: &str, error: &str, rejected: serde_json::Value| {
        Verdict::DeadLetter(
            topic,
            json!({
                "error_code": code,
                "error": error,
                "topic": p.topic,
                "rejected": rejected,
                "payload": String::from_utf8_lossy(&p.payload),
            }),
        )
    };
    let topic = match scheme.parse(&p.topic) {
        Ok(t) => t,
        Err(e) => return dead(scheme.dead_letter_unparsed(), "bad_topic", &e, json!([])),
    };
    let dl_topic = scheme.dead_letter_topic(&topic);
    let subs = match payload::map(&topic, &p.payload, &ctx.cfg.registry) {
        Ok(s) => s,
        Err(u) => return dead(dl_topic, u.code, &u.error, json!([])),
    };
    let mut rejected = Vec::new();
    for s in &subs {
        match submit_until_answered(ctx, s).await {
            Some(Outcome::Stored { duplicate, .. }) => {
                let c = if duplicate {
                    &ctx.stats.duplicate
                } else {
                    &ctx.stats.accepted
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
            Some(Outcome::Rejected { code, error }) => {
                rejected.push(json!({"event_id": s.event_id, "error_code": code, "error": error}));
            }
            Some(Outcome::Retry { .. }) | None => return Verdict::Stopped,
        }
    }
    if rejected.is_empty() {
        Verdict::Stored
    } else {
        let first = rejected[0].clone();
        let code = first["error_code"]
            .as_str()
            .unwrap_or("rejected")
            .to_string();
        let error = first["error"].as_str().unwrap_or_default().to_string();
        dead(dl_topic, &code, &error, json!(rejected))
    }
}

/// Submits until the hub gives a final answer; `None` when the gateway
/// stops first.
async fn submit_until_answered(ctx: &Ctx, s: &payload::Submission) -> Option<Outcome> {
    let started = Instant::now();
    let mut waits = backoff(Duration::from_millis(200), Duration::from_secs(10));
    let mut told = false;
    let mut stopping = ctx.stopping.clone();
    loop {
        if *stopping.borrow() {
            return None;
        }
        let outcome = ctx.hub.submit(s).await;
        let reason = match outcome {
            Outcome::Rejected {
                ref code,
                ref error,
            } if code == "unknown_alarm" && started.elapsed() < UNKNOWN_ALARM_PATIENCE => {
                format!("{code}: {error}")
            }
            Outcome::Retry { reason } => reason,
            final_answer => {
                if told {
                    ctx.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                    tracing::info!(event_id = %s.event_id, "the hub answered again");
                }
                return Some(final_answer);
            }
        };
        if !told {
            told = true;
            ctx.stats.waiting.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                event_id = %s.event_id,
                reason = %reason,
                "waiting for the hub; the message stays unacknowledged in the broker session"
            );
        }
        let wait = waits.next().unwrap_or(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.changed() => {}
        }
        if *stopping.borrow() {
            ctx.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
    }
}
