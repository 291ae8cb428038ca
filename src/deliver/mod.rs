//! Delivery: gets every stored event to each destination of its
//! municipality, at least once, alarms first.
//!
//! The queue lives in the store (an outbox entry per destination, written in
//! the same atomic write as the event), so nothing is lost across restarts
//! or `kill -9`. This module runs:
//! - a [`push`] worker per push destination (retry, backoff, breaker, dead letters);
//! - an escalation loop: RED/YELLOW alarms not delivered by their deadline
//!   are queued for the destination's `escalate_to` fallback, once;
//! - a gauge loop: queue depth and age of the oldest item per destination.
//!
//! Pull destinations need no worker: the EPJ takes from the queue through
//! `$pending`/`$confirm` in `api`.

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
    let escalations: Vec<(String, String)> = dests
        .iter()
        .filter_map(|(_, d)| d.escalate_to.clone().map(|f| (d.name.clone(), f)))
        .collect();
    if !escalations.is_empty() {
        let red = Duration::from_secs(cfg.delivery.deadline_red_secs);
        let yellow = Duration::from_secs(cfg.delivery.deadline_yellow_secs);
        handles.push(tokio::spawn(escalate_loop(
            escalations,
            red,
            yellow,
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

async fn escalate_loop(
    pairs: Vec<(String, String)>,
    red: Duration,
    yellow: Duration,
    store: Arc<dyn Store>,
    registry: Registry,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        for (dest, fallback) in &pairs {
            let (s, d, f) = (store.clone(), dest.clone(), fallback.clone());
            let now = time_to_seq(chrono::Utc::now());
            let (r, y) = (red.as_micros() as u64, yellow.as_micros() as u64);
            let res =
                tokio::task::spawn_blocking(move || s.escalate_overdue(&d, &f, now, r, y)).await;
            match res {
                Ok(Ok(escalated)) => {
                    for r in &escalated {
                        tracing::warn!(destination = %dest, fallback = %fallback, resource = %r, "alarm not delivered by its deadline: escalated to the fallback destination");
                    }
                    if !escalated.is_empty() {
                        metrics::counter!("knutepunkt_delivery_escalated_total", "destination" => dest.clone())
                            .increment(escalated.len() as u64);
                        registry.update(dest, |s| s.escalated += escalated.len() as u64);
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(destination = %dest, error = %e, "escalation check failed")
                }
                Err(e) => {
                    tracing::error!(destination = %dest, error = %e, "escalation task failed")
                }
            }
        }
    }
}

async fn gauge_loop(store: Arc<dyn Store>, registry: Registry, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        for s in registry.snapshot() {
            let Ok((pending, oldest)) = store.outbox_depth(&s.name) else {
                continue;
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
                st.oldest_pending = oldest
                    .map(|q| seq_to_time(q).to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
            });
        }
    }
}
