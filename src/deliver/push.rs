//! One worker per push destination: takes the next items from its consumer
//! in the store (alarms first), POSTs them as a FHIR `transaction` Bundle of
//! conditional creates, and settles them by the answer.
//!
//! One request is in flight per destination at a time, so one patient's
//! resources arrive in the order the store gives them. A backlog drains in
//! Bundles of up to `max_batch` (never more) at no more than `max_rate`
//! events/s; with no backlog each event goes alone, at once.
//!
//! A transaction is all or nothing, so when the destination refuses a
//! Bundle for good (a final 4xx), its items go one at a time until each has
//! been delivered or refused: only the refused item becomes a dead letter.
//! That isolation counts down one settled item per request and ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::retry::{Backoff, Breaker, BreakerState, Verdict, classify, parse_retry_after};
use super::{DestinationStatus, Registry, record_escalation};
use crate::config::Destination;
use crate::store::{OutboxItem, Settle, Store, seq_to_time, time_to_seq};

/// Largest answer body kept with a dead letter.
const MAX_KEPT_RESPONSE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PushSetupError {
    #[error("destination {name}: cannot read ca_file {path}: {source}")]
    CaFile {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("destination {name}: {what}: {source}")]
    Client {
        name: String,
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

/// The HTTP client for one destination: rustls, its own timeout, plus the
/// destination's extra CA when configured.
pub fn client(d: &Destination) -> Result<reqwest::Client, PushSetupError> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_millis(d.timeout_ms))
        .connect_timeout(Duration::from_millis(d.timeout_ms.min(5_000)))
        .user_agent(concat!("knutepunkt/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &d.ca_file {
        let pem = std::fs::read(path).map_err(|source| PushSetupError::CaFile {
            name: d.name.clone(),
            path: path.display().to_string(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            PushSetupError::Client {
                name: d.name.clone(),
                what: "ca_file holds no PEM certificate",
                source,
            }
        })?;
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|source| PushSetupError::Client {
        name: d.name.clone(),
        what: "cannot build the HTTP client",
        source,
    })
}

/// The transaction Bundle: one conditional create per item, in queue order.
pub fn transaction_bundle(items: &[OutboxItem]) -> String {
    let mut out = String::with_capacity(
        64 + items
            .iter()
            .map(|i| i.resource.json.len() + 200)
            .sum::<usize>(),
    );
    out.push_str(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let r = &item.resource.resource;
        let cond = if_none_exist(&item.resource.json);
        // The stored JSON is a complete resource; splice it in unparsed.
        out.push_str(&format!(
            r#"{{"fullUrl":"urn:uuid:{}","resource":{},"request":{{"method":"POST","url":"{}"{}}}}}"#,
            r.id,
            item.resource.json,
            r.resource_type.as_str(),
            cond.map(|c| format!(r#","ifNoneExist":{}"#, serde_json::Value::String(c)))
                .unwrap_or_default()
        ));
    }
    out.push_str("]}");
    out
}

/// `identifier=<system>|<value>`, percent-encoded, from the resource's first
/// identifier (the hub's event identifier).
fn if_none_exist(json: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Ids {
        #[serde(default)]
        identifier: Vec<Ident>,
    }
    #[derive(Deserialize)]
    struct Ident {
        system: Option<String>,
        value: Option<String>,
    }
    let ids: Ids = serde_json::from_str(json).ok()?;
    let id = ids.identifier.into_iter().next()?;
    let token = format!("{}|{}", id.system.unwrap_or_default(), id.value?);
    Some(
        form_urlencoded::Serializer::new(String::new())
            .append_pair("identifier", &token)
            .finish(),
    )
}

/// How a Bundle reaches a destination. The worker only needs the verdict;
/// the seam lets tests drive the real worker loop with a fake destination
/// on tokio's paused clock.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, bundle: String) -> futures::future::BoxFuture<'_, Verdict>;
}

/// HTTPS POST of the Bundle to the destination's FHIR base.
pub struct HttpTransport {
    pub http: reqwest::Client,
    pub url: String,
}

impl Transport for HttpTransport {
    fn send(&self, bundle: String) -> futures::future::BoxFuture<'_, Verdict> {
        Box::pin(send(&self.http, &self.url, bundle))
    }
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
    let mut breaker = Breaker::new(
        dest.breaker_failures,
        Duration::from_secs(dest.breaker_open_secs),
    );
    let mut backoff = Backoff::new(
        Duration::from_millis(dest.backoff_base_ms),
        Duration::from_millis(dest.backoff_cap_ms),
    );
    let mut attempts: HashMap<u64, u32> = HashMap::new();
    let mut committed = store.subscribe();
    // After a final rejection of a multi-item Bundle, the items go one at a
    // time until the rejected one is found (a transaction is all or nothing).
    let mut isolate = 0usize;
    let mut up = true;
    let min_gap_per_item = Duration::from_secs_f64(1.0 / f64::from(dest.max_rate.max(1)));
    let mut next_send = Instant::now();
    let labels = [("destination", name.clone())];
    tracing::info!(destination = %name, %url, "push delivery started");
    let mut lease = super::lease::DeliveryLease::new(&name);
    loop {
        if stop.is_cancelled() {
            break;
        }
        if !lease.hold(&store, &stop).await {
            continue;
        }
        let now = Instant::now();
        metrics::gauge!("knutepunkt_delivery_breaker_state", &labels)
            .set(breaker.state(now).gauge());
        if let Err(until) = breaker.allow(now) {
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = stop.cancelled() => break,
            }
            tracing::info!(destination = %name, "circuit breaker half-open: sending one probe");
            continue;
        }
        let probing = breaker.state(now) == BreakerState::HalfOpen;
        let max = if probing || isolate > 0 {
            1
        } else {
            dest.max_batch
        };
        let wall = time_to_seq(chrono::Utc::now());
        let mut items = match store.take(&name, max, wall, None).await {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(destination = %name, error = %e, "cannot read the delivery queue; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => break,
                }
                continue;
            }
        };
        if items.len() > max {
            // The store promises at most `max`; a Bundle must never hold
            // more, and isolation depends on it.
            tracing::error!(destination = %name, got = items.len(), max, "store returned more items than asked for; sending only the first");
            items.truncate(max);
        }
        if items.is_empty() {
            committed.borrow_and_update();
            tokio::select! {
                _ = committed.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => break,
            }
            continue;
        }
        tokio::time::sleep_until(next_send).await;
        let body = transaction_bundle(&items);
        // One span per item, in its event's trace; they end with this round.
        let spans: Vec<tracing::Span> = items
            .iter()
            .map(|i| {
                crate::telemetry::item_span(
                    "deliver.push",
                    &name,
                    &i.resource.resource,
                    i.resource.seq,
                )
            })
            .collect();
        let verdict = transport.send(body).await;
        let outcome = match &verdict {
            Verdict::Delivered => "delivered",
            Verdict::Retry { .. } => "retry",
            Verdict::Reject { .. } if items.len() > 1 => "bundle_rejected",
            Verdict::Reject { .. } => "dead_lettered",
        };
        for s in &spans {
            s.record("outcome", outcome);
        }
        next_send = Instant::now() + min_gap_per_item * items.len() as u32;
        let seqs: Vec<u64> = items.iter().map(|i| i.resource.seq).collect();
        match verdict {
            Verdict::Delivered => {
                audit.record_push(&name, &items).await;
                settle(
                    &store,
                    &name,
                    &registry,
                    seqs.iter().map(|s| (*s, Settle::Delivered)).collect(),
                )
                .await;
                let now_wall = chrono::Utc::now();
                for i in &items {
                    let lat = (now_wall - seq_to_time(i.resource.seq))
                        .to_std()
                        .unwrap_or_default();
                    metrics::histogram!("knutepunkt_delivery_latency_seconds", &labels).record(lat);
                    attempts.remove(&i.resource.seq);
                }
                metrics::counter!("knutepunkt_delivery_delivered_total", &labels)
                    .increment(items.len() as u64);
                isolate = isolate.saturating_sub(1);
                backoff.reset();
                if breaker.on_success(Instant::now()) != BreakerState::Closed {
                    tracing::info!(destination = %name, "circuit breaker closed");
                }
                if !up {
                    up = true;
                    tracing::info!(destination = %name, "destination is up again; draining the queue");
                }
            }
            Verdict::Retry { reason, after } => {
                for s in &seqs {
                    *attempts.entry(*s).or_default() += 1;
                }
                metrics::counter!("knutepunkt_delivery_retried_total", &labels).increment(1);
                if up {
                    up = false;
                    tracing::warn!(destination = %name, %reason, pending = items.len(), "destination is down; retrying with backoff");
                }
                if breaker.on_failure(Instant::now()) {
                    tracing::warn!(destination = %name, open_secs = dest.breaker_open_secs, "circuit breaker open");
                }
                let wait = backoff.next_delay().max(after.unwrap_or_default());
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => break,
                }
            }
            Verdict::Reject { reason, response } => {
                // The destination is reachable and answering: not an outage.
                backoff.reset();
                breaker.on_success(Instant::now());
                if items.len() > 1 {
                    // Only reachable with isolate == 0 (isolation takes one
                    // item at a time), so this cannot restart itself.
                    tracing::info!(destination = %name, %reason, items = items.len(), "Bundle rejected; sending its items one by one to find the rejected one");
                    isolate = items.len();
                    continue;
                }
                isolate = isolate.saturating_sub(1);
                let seq = seqs[0];
                let n = attempts.remove(&seq).unwrap_or(0) + 1;
                settle(
                    &store,
                    &name,
                    &registry,
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
        registry.update(&name, |s: &mut DestinationStatus| {
            s.up = up;
            s.breaker = format!("{:?}", breaker.state(Instant::now())).to_lowercase();
        });
    }
    lease.release(&store).await;
    tracing::info!(destination = %name, "push delivery stopped");
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
        // Not settled: the items stay pending and are offered again, which
        // the destination's conditional create makes harmless.
        Err(e) => {
            tracing::error!(destination = name, error = %e, "cannot record delivery; items will be sent again")
        }
    }
}

async fn send(http: &reqwest::Client, url: &str, body: String) -> Verdict {
    let resp = http
        .post(url)
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .body(body)
        .send()
        .await;
    match resp {
        Err(e) => Verdict::Retry {
            reason: if e.is_timeout() {
                "request timed out".into()
            } else if e.is_connect() {
                "cannot connect".into()
            } else {
                "connection failed".into()
            },
            after: None,
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after =
                parse_retry_after(r.headers().get("retry-after").and_then(|v| v.to_str().ok()));
            let body = if (200..300).contains(&status) {
                None
            } else {
                r.text().await.ok().map(|mut t| {
                    if t.len() > MAX_KEPT_RESPONSE {
                        let mut cut = MAX_KEPT_RESPONSE;
                        while !t.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        t.truncate(cut);
                    }
                    t
                })
            };
            classify(status, retry_after, body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationKind;
    use crate::domain::{Orgnr, ResourceType, VendorId};
    use crate::normalize::Normalized;
    use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
    use crate::store::{Class, ConsumerSpec, DeadLetterFilter, NewRecord};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn oslo() -> Orgnr {
        Orgnr::parse("958935420").unwrap_or_else(|e| panic!("{e}"))
    }

    /// A store in `dir` with one push consumer "epj" for Oslo.
    fn open(dir: &std::path::Path) -> EmbeddedStore {
        let opts = EmbeddedOptions {
            min_free_bytes: 0,
            ..EmbeddedOptions::default()
        };
        let epj = ConsumerSpec {
            name: "epj".into(),
            municipality: oslo(),
            escalation_only: false,
            escalate_to: None,
            red_deadline_us: 30_000_000,
            yellow_deadline_us: 300_000_000,
        };
        EmbeddedStore::open(dir, opts, vec![epj]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Stores one event of patient `patient`; `event_id` also ends up in the
    /// resource JSON so a fake destination can recognise it.
    async fn put(store: &Arc<dyn Store>, event_id: &str, patient: u8, class: Class) {
        let v = VendorId("v".into());
        let id = crate::domain::resource_id(&v, event_id);
        let (rt, category) = if class == Class::Routine {
            (ResourceType::Observation, "vital-signs")
        } else {
            (ResourceType::Communication, "alert")
        };
        let put = store
            .put(NewRecord {
                vendor: v,
                event_id: event_id.into(),
                content_hash: [1; 32],
                municipality: oslo(),
                patient_key: [patient; 16],
                resource: Normalized {
                    resource_type: rt,
                    id,
                    json: format!(
                        "{{\"resourceType\":\"{}\",\"id\":\"{id}\",\"identifier\":[{{\"system\":\"urn:test\",\"value\":\"{event_id}\"}}]}}",
                        rt.as_str()
                    ),
                    codes: vec![],
                    category,
                    urgent: class.is_urgent(),
                },
                answers_alarm: None,
                is_alarm: class != Class::Routine,
                class,
            })
            .await;
        assert!(put.is_ok(), "{put:?}");
    }

    /// A destination that is down: every request fails as a connection error.
    struct Down(AtomicU32);

    impl Transport for Down {
        fn send(&self, _: String) -> futures::future::BoxFuture<'_, Verdict> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                Verdict::Retry {
                    reason: "cannot connect".into(),
                    after: None,
                }
            })
        }
    }

    /// The real worker loop against an EPJ that is down for an hour, on
    /// tokio's paused clock: the breaker (5 failures, 30 s open, one probe)
    /// and the capped backoff hold it to a few hundred requests.
    #[tokio::test(start_paused = true)]
    async fn an_hour_long_outage_costs_a_few_hundred_requests() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let embedded = open(dir.path());
        let store: Arc<dyn Store> = Arc::new(embedded.clone());
        put(&store, "e1", 2, Class::Routine).await;
        let down = Arc::new(Down(AtomicU32::new(0)));
        let stop = CancellationToken::new();
        let audit = crate::audit::Auditor::new(store.clone(), vec![7; 32]);
        let worker = tokio::spawn(run(
            toml_destination(),
            store.clone(),
            down.clone(),
            Registry::default(),
            stop.clone(),
            audit,
        ));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        stop.cancel();
        let _ = worker.await;
        let n = down.0.load(Ordering::SeqCst);
        eprintln!("requests during the outage: {n}");
        assert!(
            n >= 60,
            "the worker gave up probing: {n} requests in an hour"
        );
        assert!(n <= 300, "{n} requests in a one-hour outage is a flood");
        // Nothing was lost: the item is still pending.
        let pending = store.stats("epj").await.map(|s| s.pending).ok();
        assert_eq!(pending, Some(1));
        drop(store);
        embedded.close().await;
    }

    /// An EPJ that refuses (final 4xx) every Bundle holding `refused`, and
    /// takes everything else; it remembers every request.
    struct Refuses {
        refused: String,
        requests: Mutex<Vec<Vec<String>>>,
    }

    impl Transport for Refuses {
        fn send(&self, bundle: String) -> futures::future::BoxFuture<'_, Verdict> {
            let v: serde_json::Value = serde_json::from_str(&bundle).unwrap_or_default();
            let ids: Vec<String> = v["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["resource"]["identifier"][0]["value"].as_str())
                .map(str::to_string)
                .collect();
            let refuse = ids.contains(&self.refused);
            self.requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(ids);
            Box::pin(async move {
                if refuse {
                    Verdict::Reject {
                        reason: "destination answered 422".into(),
                        response: None,
                    }
                } else {
                    Verdict::Delivered
                }
            })
        }
    }

    /// The livelock of issue 8 on the real loop: one patient with a routine
    /// backlog, an alarm, and one item the EPJ refuses. Every Bundle holds
    /// at most `max_batch`; everything else is delivered, only the refused
    /// item becomes a dead letter, and the requests stay few.
    #[tokio::test]
    async fn a_refused_item_is_isolated_and_the_rest_delivered() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let embedded = open(dir.path());
        let store: Arc<dyn Store> = Arc::new(embedded.clone());
        for i in 0..6 {
            put(&store, &format!("r{i}"), 3, Class::Routine).await;
        }
        put(&store, "bad", 3, Class::Routine).await;
        for i in 6..9 {
            put(&store, &format!("r{i}"), 3, Class::Routine).await;
        }
        put(&store, "alarm", 3, Class::Red).await;
        let epj = Arc::new(Refuses {
            refused: "bad".into(),
            requests: Mutex::new(Vec::new()),
        });
        let mut dest = toml_destination();
        dest.max_batch = 4;
        let stop = CancellationToken::new();
        let audit = crate::audit::Auditor::new(store.clone(), vec![7; 32]);
        let worker = tokio::spawn(run(
            dest,
            store.clone(),
            epj.clone(),
            Registry::default(),
            stop.clone(),
            audit,
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pending = store.stats("epj").await.map(|s| s.pending).unwrap_or(99);
            if pending == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Give a looping worker the chance to show itself.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        let _ = worker.await;
        let requests = epj
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert!(
            requests.iter().all(|r| r.len() <= 4),
            "a Bundle held more than max_batch: {requests:?}"
        );
        assert_eq!(
            requests.first().and_then(|r| r.first()).map(String::as_str),
            Some("alarm"),
            "the alarm goes first: {requests:?}"
        );
        assert!(
            requests.len() <= 12,
            "{} requests: {requests:?}",
            requests.len()
        );
        let stats = store.stats("epj").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stats.pending, 0, "{requests:?}");
        let dead = store
            .dead_letters(DeadLetterFilter::default(), 100)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dead.len(), 1, "{dead:?}");
        let bad = crate::domain::resource_id(&VendorId("v".into()), "bad");
        assert_eq!(dead[0].resource.id, bad);
        // Every other item went through in an accepted request.
        let mut delivered: Vec<&String> = requests
            .iter()
            .filter(|r| !r.contains(&"bad".to_string()))
            .flatten()
            .collect();
        delivered.sort();
        delivered.dedup();
        assert_eq!(delivered.len(), 10, "{requests:?}");
        drop(store);
        embedded.close().await;
    }

    /// A destination with the documented defaults (base 200 ms, cap 60 s,
    /// breaker 5 failures / 30 s).
    fn toml_destination() -> Destination {
        let mut d: Destination = serde_json::from_value(
            serde_json::json!({"name": "epj", "kind": "push", "url": "https://epj.test/fhir"}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        d.kind = DestinationKind::Push;
        d
    }
}
