//! The real push worker loop against fake destinations.

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

/// The real worker loop for `dest` over `store`, sending through
/// `transport`; cancel the token and await the handle to stop it.
fn start(
    store: &Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    dest: Destination,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let audit = crate::audit::Auditor::new(store.clone(), vec![7; 32]);
    let worker = tokio::spawn(run(
        dest,
        store.clone(),
        transport,
        Registry::default(),
        stop.clone(),
        audit,
    ));
    (stop, worker)
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
    let (stop, worker) = start(&store, down.clone(), toml_destination());
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
    let (stop, worker) = start(&store, epj.clone(), dest);
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

/// The identifiers (event ids) in a Bundle, in order.
fn bundle_ids(bundle: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(bundle).unwrap_or_default();
    v["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["identifier"][0]["value"].as_str())
        .map(str::to_string)
        .collect()
}

/// An EPJ that remembers every request; on its first request it first
/// lets the worker take the next Bundle, then a RED alarm is stored, and
/// then it answers `first` (later requests are delivered).
struct AlarmDuringFirst {
    store: Arc<dyn Store>,
    first: Verdict,
    requests: Mutex<Vec<Vec<String>>>,
}

impl Transport for AlarmDuringFirst {
    fn send(&self, bundle: String) -> futures::future::BoxFuture<'_, Verdict> {
        let n = {
            let mut r = self
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            r.push(bundle_ids(&bundle));
            r.len()
        };
        Box::pin(async move {
            if n > 1 {
                return Verdict::Delivered;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            put(&self.store, "alarm", 9, Class::Red).await;
            self.first.clone()
        })
    }
}

/// Drives the real worker (max_batch 4) over 12 routine items of one
/// patient until nothing is pending; returns the requests.
async fn drain_with(first: Verdict) -> Vec<Vec<String>> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let embedded = open(dir.path());
    let store: Arc<dyn Store> = Arc::new(embedded.clone());
    for i in 0..12 {
        put(&store, &format!("r{i:02}"), 3, Class::Routine).await;
    }
    let epj = Arc::new(AlarmDuringFirst {
        store: store.clone(),
        first,
        requests: Mutex::new(Vec::new()),
    });
    let mut dest = toml_destination();
    dest.max_batch = 4;
    dest.backoff_base_ms = 10;
    let (stop, worker) = start(&store, epj.clone(), dest);
    // Well inside the lease a released item would otherwise wait out (15 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pending = store.stats("epj").await.map(|s| s.pending).unwrap_or(99);
        let asked = epj
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        if (pending == 0 && asked > 1) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let _ = worker.await;
    let pending = store.stats("epj").await.map(|s| s.pending).ok();
    assert_eq!(pending, Some(0), "not drained in 5 s");
    let requests = epj
        .requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    // The store closes once every handle is gone, the EPJ's too.
    drop(epj);
    drop(store);
    embedded.close().await;
    requests
}

/// While a full Bundle is in flight the worker takes the next one; an
/// alarm stored meanwhile still goes in the very next request, not behind
/// the routine Bundle taken ahead.
#[tokio::test]
async fn an_alarm_is_not_overtaken_by_the_bundle_taken_ahead() {
    let requests = drain_with(Verdict::Delivered).await;
    assert!(requests.len() >= 2, "{requests:?}");
    assert_eq!(requests[0], ["r00", "r01", "r02", "r03"], "{requests:?}");
    assert_eq!(
        requests[1].first().map(String::as_str),
        Some("alarm"),
        "{requests:?}"
    );
    let routine: Vec<&String> = requests
        .iter()
        .flatten()
        .filter(|i| *i != "alarm")
        .collect();
    let mut sorted = routine.clone();
    sorted.sort();
    assert_eq!(routine, sorted, "routine items out of order: {requests:?}");
    assert_eq!(routine.len(), 12, "{requests:?}");
}

/// A failed request releases what it held and what was taken ahead: the
/// next requests start again from the first item, in order, at once.
#[tokio::test]
async fn a_retry_releases_the_bundle_taken_ahead() {
    let requests = drain_with(Verdict::Retry {
        reason: "destination answered 503".into(),
        after: None,
    })
    .await;
    assert_eq!(requests[0], ["r00", "r01", "r02", "r03"], "{requests:?}");
    assert_eq!(
        requests[1].first().map(String::as_str),
        Some("alarm"),
        "{requests:?}"
    );
    let after: Vec<&String> = requests[1..]
        .iter()
        .flatten()
        .filter(|i| *i != "alarm")
        .collect();
    let want: Vec<String> = (0..12).map(|i| format!("r{i:02}")).collect();
    assert_eq!(after, want.iter().collect::<Vec<_>>(), "{requests:?}");
}

/// The embedded store, except that its first empty take lets a RED alarm
/// commit before it answers: the commit lands after the take looked and
/// before the worker goes back to waiting for commits.
struct CommitDuringEmptyTake {
    inner: Arc<dyn Store>,
    armed: std::sync::atomic::AtomicBool,
    committed_at: Mutex<Option<std::time::Instant>>,
}

impl crate::store::Consumers for CommitDuringEmptyTake {
    fn take(
        &self,
        consumer: &str,
        max: usize,
        now: u64,
        lease_until: Option<u64>,
    ) -> crate::store::StoreFuture<'_, Vec<crate::store::OutboxItem>> {
        let consumer = consumer.to_string();
        Box::pin(async move {
            let items = self.inner.take(&consumer, max, now, lease_until).await?;
            if items.is_empty() && self.armed.swap(false, Ordering::SeqCst) {
                put(&self.inner, "late", 3, Class::Red).await;
                *self
                    .committed_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(std::time::Instant::now());
            }
            Ok(items)
        })
    }
    fn settle(
        &self,
        consumer: &str,
        outcomes: Vec<(u64, Settle)>,
    ) -> crate::store::StoreFuture<'_, crate::store::SettleReport> {
        self.inner.settle(consumer, outcomes)
    }
    fn stats(&self, consumer: &str) -> crate::store::StoreFuture<'_, crate::store::ConsumerStats> {
        self.inner.stats(consumer)
    }
    fn escalate_overdue(
        &self,
        now: u64,
    ) -> crate::store::StoreFuture<'_, Vec<crate::store::Escalation>> {
        self.inner.escalate_overdue(now)
    }
    fn dead_letters(
        &self,
        filter: DeadLetterFilter,
        limit: usize,
    ) -> crate::store::StoreFuture<'_, Vec<crate::store::DeadLetter>> {
        self.inner.dead_letters(filter, limit)
    }
    fn dead_letter_replay(&self, consumer: &str, seq: u64) -> crate::store::StoreFuture<'_, bool> {
        self.inner.dead_letter_replay(consumer, seq)
    }
    fn dead_letter_discard(
        &self,
        consumer: &str,
        seq: u64,
        reason: String,
    ) -> crate::store::StoreFuture<'_, bool> {
        self.inner.dead_letter_discard(consumer, seq, reason)
    }
    fn delivery_state(
        &self,
        consumer: &str,
        seq: u64,
    ) -> crate::store::StoreFuture<'_, Option<crate::store::DeliveryState>> {
        self.inner.delivery_state(consumer, seq)
    }
}

/// Everything else goes straight to the embedded store.
impl crate::store::EventLog for CommitDuringEmptyTake {
    fn put(
        &self,
        rec: NewRecord,
    ) -> futures::future::BoxFuture<'_, Result<crate::store::PutOutcome, crate::store::PutError>>
    {
        self.inner.put(rec)
    }
    fn get(
        &self,
        municipality: Orgnr,
        resource_type: ResourceType,
        id: uuid::Uuid,
    ) -> crate::store::StoreFuture<'_, Option<crate::store::StoredResource>> {
        self.inner.get(municipality, resource_type, id)
    }
    fn search(
        &self,
        q: crate::store::SearchQuery,
    ) -> crate::store::StoreFuture<'_, crate::store::SearchPage> {
        self.inner.search(q)
    }
    fn ready(&self) -> Result<(), String> {
        self.inner.ready()
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe()
    }
    fn apply_retention(
        &self,
        policy: crate::store::RetentionPolicy,
        now: u64,
    ) -> crate::store::StoreFuture<'_, crate::store::RetentionReport> {
        self.inner.apply_retention(policy, now)
    }
}

impl crate::store::AuditLog for CommitDuringEmptyTake {
    fn audit_append(
        &self,
        records: Vec<crate::store::audit::AuditRecord>,
    ) -> crate::store::StoreFuture<'_, Vec<u64>> {
        self.inner.audit_append(records)
    }
    fn audit_search(
        &self,
        q: crate::store::audit::AuditQuery,
    ) -> crate::store::StoreFuture<'_, crate::store::audit::AuditPage> {
        self.inner.audit_search(q)
    }
    fn audit_prune(&self, before: u64) -> crate::store::StoreFuture<'_, usize> {
        self.inner.audit_prune(before)
    }
}

impl crate::store::ReplayGuard for CommitDuringEmptyTake {
    fn jti_claim(
        &self,
        client: &str,
        jti: &str,
        exp: u64,
        now: u64,
    ) -> crate::store::StoreFuture<'_, bool> {
        self.inner.jti_claim(client, jti, exp, now)
    }
    fn jti_prune(&self, now: u64) -> crate::store::StoreFuture<'_, usize> {
        self.inner.jti_prune(now)
    }
}

/// A destination that takes every Bundle and notes when each came.
#[derive(Default)]
struct Takes(Mutex<Vec<(std::time::Instant, Vec<String>)>>);

impl Transport for Takes {
    fn send(&self, bundle: String) -> futures::future::BoxFuture<'_, Verdict> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((std::time::Instant::now(), bundle_ids(&bundle)));
        Box::pin(async { Verdict::Delivered })
    }
}

/// An alarm that commits while the worker's take finds nothing still wakes
/// the worker: it goes out at once, not after the 1 s fallback (or the
/// next commit, which may never come).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_during_an_empty_take_wakes_the_worker() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let embedded = open(dir.path());
    let racing = Arc::new(CommitDuringEmptyTake {
        inner: Arc::new(embedded.clone()),
        armed: std::sync::atomic::AtomicBool::new(true),
        committed_at: Mutex::new(None),
    });
    let store: Arc<dyn Store> = racing.clone();
    let epj = Arc::new(Takes::default());
    let (stop, worker) = start(&store, epj.clone(), toml_destination());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let sent = loop {
        let got = epj
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first()
            .cloned();
        if let Some(g) = got {
            break g;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the alarm never went out"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.cancel();
    let _ = worker.await;
    let committed = racing
        .committed_at
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .unwrap_or_else(|| panic!("no empty take ever let the alarm commit"));
    let waited = sent.0.saturating_duration_since(committed);
    assert_eq!(sent.1, ["late"]);
    assert!(
        waited < Duration::from_millis(500),
        "the alarm waited {waited:?} after its commit: the worker missed the wake"
    );
    drop((store, racing));
    embedded.close().await;
}
