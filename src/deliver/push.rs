//! One worker per push destination: takes the next items from its consumer
//! in the store (alarms first), POSTs them as a FHIR `transaction` Bundle of
//! conditional creates, and settles them by the answer.
//!
//! One request is in flight per destination at a time, so one patient's
//! resources arrive in the order the store gives them. A backlog drains in
//! Bundles of up to `max_batch` (never more) at no more than `max_rate`
//! events/s; with no backlog each event goes alone, at once.
//!
//! While a full Bundle is in flight (a backlog drains), the worker takes
//! and builds the next one, so the destination never waits for the hub.
//! Taken items are leased to the worker (`timeout_ms` + 5 s) so the next
//! take skips them. The Bundle taken ahead is sent only when the one in
//! flight was delivered, and only when no alarm has arrived since it was
//! taken that it would overtake; otherwise its items are released and
//! taken again (alarms first). Any other answer releases it too.
//!
//! A delivered Bundle's audit record and settle run in a task of their
//! own while the next Bundle is in flight; the worker waits for that task
//! before it starts the next one, when it stops, and when it loses its
//! delivery lease. A crash before the settle is durable only offers the
//! items again, which the destination's conditional create makes harmless.
//!
//! A transaction is all or nothing, so when the destination refuses a
//! Bundle for good (a final 4xx), its items go one at a time until each has
//! been delivered or refused: only the refused item becomes a dead letter.
//! That isolation counts down one settled item per request and ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use super::bundle::transaction_bundle;
pub use super::http::{HttpTransport, PushSetupError, client};
use super::retry::{Backoff, Breaker, BreakerState, Verdict};
use super::{DestinationStatus, Registry, record_escalation};
use crate::config::Destination;
use crate::store::{Class, OutboxItem, Settle, Store, seq_to_time, time_to_seq};

/// How a Bundle reaches a destination. The worker only needs the verdict;
/// the seam lets tests drive the real worker loop with a fake destination
/// on tokio's paused clock.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, bundle: String) -> futures::future::BoxFuture<'_, Verdict>;
}

/// Items taken for one request, with the Bundle that carries them.
struct Batch {
    items: Vec<OutboxItem>,
    body: String,
}

impl Batch {
    fn seqs(&self) -> Vec<u64> {
        self.items.iter().map(|i| i.resource.seq).collect()
    }

    /// The lowest class in the batch (RED ranks above YELLOW above routine).
    fn lowest(&self) -> Class {
        self.items
            .iter()
            .map(|i| i.class)
            .max()
            .unwrap_or(Class::Red)
    }
}

/// One destination's worker: the store, the destination, and the retry
/// state that lives as long as the worker.
struct Worker {
    dest: Destination,
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    registry: Registry,
    audit: crate::audit::Auditor,
    breaker: Breaker,
    backoff: Backoff,
    attempts: HashMap<u64, u32>,
    /// After a final rejection of a multi-item Bundle, the items go one at
    /// a time until the rejected one is found (a transaction is all or
    /// nothing).
    isolate: usize,
    up: bool,
    min_gap_per_item: Duration,
    next_send: Instant,
    /// How long taken items stay hidden from the next take (µs).
    lease_us: u64,
    /// Moves with every commit: whether an alarm may have arrived since a
    /// Bundle was taken ahead.
    commits: watch::Receiver<u64>,
    /// The audit record and settle of the last delivered Bundle.
    recording: Option<tokio::task::JoinHandle<()>>,
}

/// Runs the worker until `stop` is cancelled; the request in flight is
/// finished (or times out) first, so nothing is half-settled.
pub async fn run(
    dest: Destination,
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    registry: Registry,
    stop: CancellationToken,
    audit: crate::audit::Auditor,
) {
    let name = dest.name.clone();
    let url = dest.url.clone().unwrap_or_default();
    let mut w = Worker::new(dest, store, transport, registry, audit);
    let mut committed = w.store.subscribe();
    let mut lease = super::lease::DeliveryLease::new(&name);
    let mut ahead: Option<Batch> = None;
    tracing::info!(destination = %name, %url, "push delivery started");
    while !stop.is_cancelled() {
        if !lease.hold(&w.store, &stop).await {
            w.recorded().await;
            w.release(ahead.take()).await;
            continue;
        }
        let max = match w.admit(&mut ahead, &stop).await {
            Step::Go(max) => max,
            Step::Again => continue,
            Step::Stop => break,
        };
        let batch = match w
            .take_or_wait(ahead.take(), max, &mut committed, &stop)
            .await
        {
            Step::Go(batch) => batch,
            Step::Again => continue,
            Step::Stop => break,
        };
        ahead = w.round(batch, max, &stop).await;
    }
    w.recorded().await;
    w.release(ahead).await;
    lease.release(&w.store).await;
    tracing::info!(destination = %name, "push delivery stopped");
}

/// What the worker's loop does next.
enum Step<T> {
    /// Go on with this.
    Go(T),
    /// Start the loop over.
    Again,
    /// `stop` was cancelled.
    Stop,
}

impl Worker {
    fn new(
        dest: Destination,
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
        registry: Registry,
        audit: crate::audit::Auditor,
    ) -> Worker {
        let commits = store.subscribe();
        Worker {
            breaker: Breaker::new(
                dest.breaker_failures,
                Duration::from_secs(dest.breaker_open_secs),
            ),
            backoff: Backoff::new(
                Duration::from_millis(dest.backoff_base_ms),
                Duration::from_millis(dest.backoff_cap_ms),
            ),
            attempts: HashMap::new(),
            isolate: 0,
            up: true,
            min_gap_per_item: Duration::from_secs_f64(1.0 / f64::from(dest.max_rate.max(1))),
            next_send: Instant::now(),
            lease_us: (dest.timeout_ms + super::lease::LEASE_TTL.as_millis() as u64) * 1000,
            commits,
            recording: None,
            dest,
            store,
            transport,
            registry,
            audit,
        }
    }

    fn name(&self) -> &str {
        &self.dest.name
    }

    /// The circuit breaker's gate: how many items the next Bundle may hold,
    /// or, while the breaker is open, a wait (the Bundle taken ahead is
    /// released).
    async fn admit(&mut self, ahead: &mut Option<Batch>, stop: &CancellationToken) -> Step<usize> {
        let now = Instant::now();
        metrics::gauge!("knutepunkt_delivery_breaker_state", "destination" => self.name().to_string())
            .set(self.breaker.state(now).gauge());
        if let Err(until) = self.breaker.allow(now) {
            self.release(ahead.take()).await;
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = stop.cancelled() => return Step::Stop,
            }
            tracing::info!(destination = %self.name(), "circuit breaker half-open: sending one probe");
            return Step::Again;
        }
        let probing = self.breaker.state(now) == BreakerState::HalfOpen;
        Step::Go(if probing || self.isolate > 0 {
            1
        } else {
            self.dest.max_batch
        })
    }

    /// The Bundle to send next (see `next_batch`); with nothing to send, a
    /// wait for the next commit (at most 1 s), and after a failed read, 1 s.
    async fn take_or_wait(
        &mut self,
        ahead: Option<Batch>,
        max: usize,
        committed: &mut watch::Receiver<u64>,
        stop: &CancellationToken,
    ) -> Step<Batch> {
        // Marked seen before the take looks, so a commit that lands while
        // it looks still wakes the wait below. (Marked after an empty take,
        // it went unseen: its events waited for the next commit, or 1 s.)
        committed.borrow_and_update();
        match self.next_batch(ahead, max).await {
            Ok(Some(b)) => Step::Go(b),
            Ok(None) => {
                tokio::select! {
                    _ = committed.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return Step::Stop,
                }
                Step::Again
            }
            Err(e) => {
                tracing::error!(destination = %self.name(), error = %e, "cannot read the delivery queue; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return Step::Stop,
                }
                Step::Again
            }
        }
    }

    /// One round: sends `batch` when the rate allows, settles it by the
    /// answer, and updates the destination's status. Returns the Bundle
    /// taken ahead meanwhile, if it may go next (else it is released).
    async fn round(
        &mut self,
        mut batch: Batch,
        max: usize,
        stop: &CancellationToken,
    ) -> Option<Batch> {
        tokio::time::sleep_until(self.next_send).await;
        // A full Bundle means a backlog: take the next one while this one
        // is in flight.
        let overlap = batch.items.len() == max && max > 1;
        let (verdict, next) = self.send(&mut batch, overlap).await;
        let ahead = if self.settle_round(batch, verdict, stop).await {
            next
        } else {
            self.release(next).await;
            None
        };
        self.registry
            .update(self.name(), |s: &mut DestinationStatus| {
                s.up = self.up;
                s.breaker = format!("{:?}", self.breaker.state(Instant::now())).to_lowercase();
            });
        ahead
    }

    /// The Bundle to send now: the one taken ahead if it may still go
    /// first, else a fresh take. `None`: nothing to send.
    async fn next_batch(
        &mut self,
        ahead: Option<Batch>,
        max: usize,
    ) -> Result<Option<Batch>, crate::store::StoreError> {
        if let Some(b) = ahead {
            if b.items.len() <= max && self.still_first(&b).await {
                return Ok(Some(b));
            }
            self.release(Some(b)).await;
        }
        self.commits.borrow_and_update();
        self.take(max).await
    }

    /// Takes up to `max` items (leased to this worker) and builds their Bundle.
    async fn take(&self, max: usize) -> Result<Option<Batch>, crate::store::StoreError> {
        let wall = time_to_seq(chrono::Utc::now());
        let mut items = self
            .store
            .take(self.name(), max, wall, Some(wall + self.lease_us))
            .await?;
        if items.len() > max {
            // The store promises at most `max`; a Bundle must never hold
            // more, and isolation depends on it.
            tracing::error!(destination = %self.name(), got = items.len(), max, "store returned more items than asked for; sending only the first");
            let extra = items.split_off(max);
            self.release(Some(Batch {
                items: extra,
                body: String::new(),
            }))
            .await;
        }
        if items.is_empty() {
            return Ok(None);
        }
        let body = transaction_bundle(&items);
        Ok(Some(Batch { items, body }))
    }

    /// Whether a Bundle taken ahead may still go first: no commit since it
    /// was taken, or nothing waiting that ranks above its lowest class.
    async fn still_first(&mut self, b: &Batch) -> bool {
        if !self.commits.has_changed().unwrap_or(true) {
            return true;
        }
        if b.lowest() == Class::Red {
            return true;
        }
        let wall = time_to_seq(chrono::Utc::now());
        match self.store.take(self.name(), 1, wall, None).await {
            Ok(first) => first.first().is_none_or(|i| i.class >= b.lowest()),
            Err(_) => false,
        }
    }

    /// Gives taken items back to the store, to be taken again.
    async fn release(&self, batch: Option<Batch>) {
        let Some(b) = batch else { return };
        if b.items.is_empty() {
            return;
        }
        let outcomes = b.seqs().into_iter().map(|s| (s, Settle::Release)).collect();
        if let Err(e) = self.store.settle(self.name(), outcomes).await {
            // The lease runs out on its own; the items wait until then.
            tracing::warn!(destination = %self.name(), error = %e, "cannot release taken items; they are offered again when their lease ends");
        }
    }

    /// Sends `batch` (its body goes with the request; the items stay for
    /// settling); with `overlap`, takes the next Bundle meanwhile.
    async fn send(&mut self, batch: &mut Batch, overlap: bool) -> (Verdict, Option<Batch>) {
        // One span per item, in its event's trace; they end with this round.
        let spans: Vec<tracing::Span> = batch
            .items
            .iter()
            .map(|i| {
                crate::telemetry::item_span(
                    "deliver.push",
                    self.name(),
                    &i.resource.resource,
                    i.resource.seq,
                )
            })
            .collect();
        let body = std::mem::take(&mut batch.body);
        let (verdict, next) = if overlap {
            self.commits.borrow_and_update();
            let max = batch.items.len();
            let (verdict, next) = tokio::join!(self.transport.send(body), self.take(max));
            let next = next.unwrap_or_else(|e| {
                // The next round takes (and reports a failure) again.
                tracing::debug!(destination = %self.name(), error = %e, "taking the next Bundle ahead failed");
                None
            });
            (verdict, next)
        } else {
            (self.transport.send(body).await, None)
        };
        let outcome = match &verdict {
            Verdict::Delivered => "delivered",
            Verdict::Retry { .. } => "retry",
            Verdict::Reject { .. } if batch.items.len() > 1 => "bundle_rejected",
            Verdict::Reject { .. } => "dead_lettered",
        };
        for s in &spans {
            s.record("outcome", outcome);
        }
        self.next_send = Instant::now() + self.min_gap_per_item * batch.items.len() as u32;
        (verdict, next)
    }

    /// Acts on the destination's answer. `true`: delivered, so a Bundle
    /// taken ahead may follow.
    async fn settle_round(
        &mut self,
        batch: Batch,
        verdict: Verdict,
        stop: &CancellationToken,
    ) -> bool {
        let name = self.name().to_string();
        match verdict {
            Verdict::Delivered => {
                self.delivered(batch).await;
                true
            }
            Verdict::Retry { reason, after } => {
                for s in batch.seqs() {
                    *self.attempts.entry(s).or_default() += 1;
                }
                metrics::counter!("knutepunkt_delivery_retried_total", "destination" => name.clone()).increment(1);
                if self.up {
                    self.up = false;
                    tracing::warn!(destination = %name, %reason, pending = batch.items.len(), "destination is down; retrying with backoff");
                }
                if self.breaker.on_failure(Instant::now()) {
                    tracing::warn!(destination = %name, open_secs = self.dest.breaker_open_secs, "circuit breaker open");
                }
                self.release(Some(batch)).await;
                let wait = self.backoff.next_delay().max(after.unwrap_or_default());
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => {}
                }
                false
            }
            Verdict::Reject { reason, response } => {
                self.rejected(batch, reason, response).await;
                false
            }
        }
    }

    /// A delivered Bundle: the worker's own state now; the audit record
    /// and the settle in a task of their own, so they run while the next
    /// Bundle is in flight. At most one such task is outstanding: the one
    /// before is awaited first, so settles stay in delivery order.
    async fn delivered(&mut self, batch: Batch) {
        let name = self.name().to_string();
        metrics::counter!("knutepunkt_delivery_delivered_total", "destination" => name.clone())
            .increment(batch.items.len() as u64);
        for seq in batch.seqs() {
            self.attempts.remove(&seq);
        }
        self.isolate = self.isolate.saturating_sub(1);
        self.backoff.reset();
        if self.breaker.on_success(Instant::now()) != BreakerState::Closed {
            tracing::info!(destination = %name, "circuit breaker closed");
        }
        if !self.up {
            self.up = true;
            tracing::info!(destination = %name, "destination is up again; draining the queue");
        }
        self.recorded().await;
        let (store, registry, audit) = (
            self.store.clone(),
            self.registry.clone(),
            self.audit.clone(),
        );
        self.recording = Some(tokio::spawn(record_delivered(
            store,
            registry,
            audit,
            name,
            batch.items,
        )));
    }

    /// Waits until the last delivered Bundle is recorded (audited and
    /// settled).
    async fn recorded(&mut self) {
        if let Some(task) = self.recording.take()
            && let Err(e) = task.await
        {
            tracing::error!(destination = %self.name(), error = %e, "recording a delivered Bundle failed; its items will be sent again");
        }
    }

    async fn rejected(&mut self, batch: Batch, reason: String, response: Option<String>) {
        let name = self.name().to_string();
        // The destination is reachable and answering: not an outage.
        self.backoff.reset();
        self.breaker.on_success(Instant::now());
        if batch.items.len() > 1 {
            // Only reachable with isolate == 0 (isolation takes one item at
            // a time), so this cannot restart itself.
            tracing::info!(destination = %name, %reason, items = batch.items.len(), "Bundle rejected; sending its items one by one to find the rejected one");
            self.isolate = batch.items.len();
            self.release(Some(batch)).await;
            return;
        }
        self.isolate = self.isolate.saturating_sub(1);
        let Some(seq) = batch.items.first().map(|i| i.resource.seq) else {
            return;
        };
        let n = self.attempts.remove(&seq).unwrap_or(0) + 1;
        settle(
            &self.store,
            &name,
            &self.registry,
            vec![(
                seq,
                Settle::DeadLetter {
                    attempts: n,
                    error: reason,
                    response,
                },
            )],
        )
        .await;
    }
}

/// Writes the audit record of a delivered Bundle and settles its items,
/// in that order: an item settled as delivered always has its audit record
/// (a crash between the two only sends it again, with a second record).
async fn record_delivered(
    store: Arc<dyn Store>,
    registry: Registry,
    audit: crate::audit::Auditor,
    name: String,
    items: Vec<OutboxItem>,
) {
    audit.record_push(&name, &items).await;
    let seqs: Vec<u64> = items.iter().map(|i| i.resource.seq).collect();
    settle(
        &store,
        &name,
        &registry,
        seqs.iter().map(|s| (*s, Settle::Delivered)).collect(),
    )
    .await;
    let now_wall = chrono::Utc::now();
    // One handle per Bundle: the macro builds its labels on every call.
    let latency = metrics::histogram!("knutepunkt_delivery_latency_seconds", "destination" => name);
    for seq in seqs {
        latency.record((now_wall - seq_to_time(seq)).to_std().unwrap_or_default());
    }
}

/// Records how the items ended, and logs the alarms the store escalated
/// because they were dead-lettered.
async fn settle(
    store: &Arc<dyn Store>,
    name: &str,
    registry: &Registry,
    outcomes: Vec<(u64, Settle)>,
) {
    match store.settle(name, outcomes).await {
        Ok(report) => {
            for e in &report.escalated {
                record_escalation(e, Some(registry));
            }
        }
        // Not settled: the items stay pending and are offered again when
        // their lease ends, which the destination's conditional create
        // makes harmless.
        Err(e) => {
            tracing::error!(destination = name, error = %e, "cannot record delivery; items will be sent again")
        }
    }
}

#[cfg(test)]
#[path = "push_tests.rs"]
mod tests;
