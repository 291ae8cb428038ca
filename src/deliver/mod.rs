//! Delivery: gets every stored event to each destination of its
//! municipality, at least once, alarms first.
//!
//! Each destination is a consumer of its municipality's log in the store
//! (a durable ack floor and the unsettled items above it, see
//! [`crate::store::Consumers`]), so nothing is lost across restarts or
//! `kill -9`. This module runs:
//! - a [`push`] worker per push destination (retry, backoff, breaker, dead letters);
//! - an escalation loop: RED/YELLOW alarms not delivered by their deadline
//!   are handed to the destination's `escalate_to` fallback, once (a
//!   dead-lettered alarm is handed over at once, by the store, when it is
//!   settled);
//! - a gauge loop: unsettled items and age of the oldest per destination.
//!
//! Pull destinations need no worker: the EPJ takes from its consumer
//! through `$pending`/`$confirm` in `api`.

mod bundle;
mod http;
pub mod lease;
pub mod push;
pub mod retry;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DestinationKind};
use crate::store::{Store, seq_to_time, time_to_seq};

/// What the admin API shows per destination.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestinationStatus {
    pub name: String,
    pub municipality: String,
    pub kind: String,
    pub pending: u64,
    /// RFC 3339 time the oldest queued item was received.
    pub oldest_pending: Option<String>,
    pub up: bool,
    pub breaker: String,
    pub escalated: u64,
}

/// Live status of every destination, shared by the workers and the admin API.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeMap<String, DestinationStatus>>>);

impl Registry {
    pub fn update(&self, name: &str, f: impl FnOnce(&mut DestinationStatus)) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = m.get_mut(name) {
            f(s);
        }
    }

    pub fn snapshot(&self) -> Vec<DestinationStatus> {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.values().cloned().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.contains_key(name)
    }
}

/// Starts every delivery task. They stop when `stop` is cancelled; await the
/// handles to know they are done.
pub fn spawn(
    cfg: &Config,
    store: Arc<dyn Store>,
    registry: Registry,
    stop: CancellationToken,
    audit: crate::audit::Auditor,
) -> Result<Vec<JoinHandle<()>>, push::PushSetupError> {
    let mut handles = Vec::new();
    let dests = cfg.destinations();
    {
        let mut m = registry
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (org, d) in &dests {
            m.insert(
                d.name.clone(),
                DestinationStatus {
                    name: d.name.clone(),
                    municipality: org.to_string(),
                    kind: match d.kind {
                        DestinationKind::Push => "push".into(),
                        DestinationKind::Pull => "pull".into(),
                    },
                    up: true,
                    breaker: "closed".into(),
                    ..DestinationStatus::default()
                },
            );
        }
    }
    for (_, d) in &dests {
        if d.kind == DestinationKind::Push {
            let transport = Arc::new(push::HttpTransport {
                http: push::client(d)?,
                url: d.url.clone().unwrap_or_default(),
            });
            handles.push(tokio::spawn(push::run(
                d.clone(),
                store.clone(),
                transport,
                registry.clone(),
                stop.clone(),
                audit.clone(),
            )));
        }
    }
    if dests.iter().any(|(_, d)| d.escalate_to.is_some()) {
        handles.push(tokio::spawn(escalate_loop(
            store.clone(),
            registry.clone(),
            stop.clone(),
        )));
    }
    if !dests.is_empty() {
        handles.push(tokio::spawn(gauge_loop(store, registry, stop)));
    }
    Ok(handles)
}

/// Logs one escalation and counts it for its source destination (in the
/// admin view too, when `registry` is given).
pub fn record_escalation(e: &crate::store::Escalation, registry: Option<&Registry>) {
    if e.dead_lettered {
        tracing::warn!(destination = %e.from, fallback = %e.to, resource = %e.resource, class = e.class.as_str(), "alarm refused for good by its destination: escalated to the fallback destination");
    } else {
        tracing::warn!(destination = %e.from, fallback = %e.to, resource = %e.resource, class = e.class.as_str(), "alarm not delivered by its deadline: escalated to the fallback destination");
    }
    metrics::counter!("knutepunkt_delivery_escalated_total", "destination" => e.from.clone())
        .increment(1);
    if let Some(r) = registry {
        r.update(&e.from, |s| s.escalated += 1);
    }
}

/// Every 500 ms: hands overdue alarms of every consumer to its fallback.
async fn escalate_loop(store: Arc<dyn Store>, registry: Registry, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match store
            .escalate_overdue(time_to_seq(chrono::Utc::now()))
            .await
        {
            Ok(escalated) => {
                for e in &escalated {
                    record_escalation(e, Some(&registry));
                }
            }
            Err(e) => tracing::error!(error = %e, "escalation check failed"),
        }
    }
}

/// The pause before the next round of queue figures: a second, or ten
/// times what the last round took. On PostgreSQL a destination's count reads
/// everything unsettled, so under a backlog of millions the figures come
/// less often rather than the count taking a connection all the time.
fn gauge_pause(took: Duration) -> Duration {
    Duration::from_secs(1).max(took.saturating_mul(10))
}

async fn gauge_loop(store: Arc<dyn Store>, registry: Registry, stop: CancellationToken) {
    let mut pause = Duration::ZERO;
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return,
        }
        let started = std::time::Instant::now();
        gauge_round(store.as_ref(), &registry).await;
        pause = gauge_pause(started.elapsed());
    }
}

async fn gauge_round(store: &dyn Store, registry: &Registry) {
    for s in registry.snapshot() {
        let (pending, oldest) = match store.stats(&s.name).await {
            Ok(st) => (st.pending, st.oldest),
            Err(e) => {
                tracing::debug!(destination = %s.name, error = %e, "no queue figures");
                continue;
            }
        };
        let labels = [("destination", s.name.clone())];
        metrics::gauge!("knutepunkt_delivery_pending", &labels).set(pending as f64);
        let age = oldest
            .map(|seq| {
                (chrono::Utc::now() - seq_to_time(seq))
                    .num_milliseconds()
                    .max(0) as f64
                    / 1000.0
            })
            .unwrap_or(0.0);
        metrics::gauge!("knutepunkt_delivery_oldest_pending_seconds", &labels).set(age);
        registry.update(&s.name, |st| {
            st.pending = pending;
            st.oldest_pending =
                oldest.map(|q| seq_to_time(q).to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        });
    }
}

#[cfg(test)]
mod gauge_tests {
    use super::*;

    #[test]
    fn a_slow_round_of_queue_figures_spaces_out_the_next() {
        assert_eq!(
            gauge_pause(Duration::from_millis(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            gauge_pause(Duration::from_millis(700)),
            Duration::from_secs(7)
        );
    }
}
