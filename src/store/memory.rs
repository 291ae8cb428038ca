//! The reference model: every store trait, in memory, written for
//! obviousness rather than speed. The model-based test holds each real
//! backend against it, so every rule of the store's semantics is written
//! here once, as plainly as it is stated (ordered maps under one mutex, full
//! scans instead of indexes). Not durable; [`MemoryStore::restart`] drops
//! what a real backend keeps only in memory (leases). It has no test-only
//! dependencies, so it can also back a non-durable mock hub.
//!
//! Time comes from the clock given to [`MemoryStore::new`] (microseconds
//! since the epoch), so a test decides which `seq` each write gets.

mod consumers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;

use super::audit::{AuditPage, AuditQuery, AuditRecord, StoredAudit};
use super::{
    AuditLog, ConsumerSpec, DataClass, EventLog, NewRecord, PutError, PutOutcome, ReplayGuard,
    ResourceRef, RetentionPolicy, RetentionReport, SearchPage, SearchQuery, StoreError,
    StoreFuture, StoredResource, Token, with_meta,
};
use crate::domain::{Orgnr, ResourceType};

/// The clock a [`MemoryStore`] reads: microseconds since the epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The in-memory [`super::Store`]. Cheap to share behind an `Arc`.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Clock,
    idempotency_window_us: u64,
    committed: tokio::sync::watch::Sender<u64>,
}

/// One stored event.
struct Event {
    rec: NewRecord,
    /// `seq` of the alarm a note answers, resolved when it was stored.
    answers: Option<u64>,
}

impl Event {
    fn municipality(&self) -> Orgnr {
        self.rec.municipality
    }

    fn resource(&self) -> ResourceRef {
        ResourceRef {
            resource_type: self.rec.resource.resource_type,
            id: self.rec.resource.id,
        }
    }

    fn data_class(&self) -> DataClass {
        match self.rec.resource.resource_type {
            ResourceType::Observation => DataClass::Measurement,
            ResourceType::Communication if self.rec.resource.category == "alert" => {
                DataClass::Alarm
            }
            ResourceType::Communication => DataClass::Note,
        }
    }

    fn stored(&self, seq: u64) -> StoredResource {
        StoredResource {
            seq,
            municipality: self.municipality(),
            resource: self.resource(),
            json: with_meta(&self.rec.resource.json, seq),
        }
    }
}

/// How one consumer settled one item.
#[derive(Debug, Clone)]
enum Final {
    Delivered { at: u64 },
    DeadLettered { at: u64, error: String },
    Discarded { at: u64, reason: String },
}

/// A dead letter as kept (the rest comes from the event).
#[derive(Debug, Clone)]
struct Dead {
    attempts: u32,
    error: String,
    response: Option<String>,
    at: u64,
}

/// One consumer: its spec and its state over the log.
struct ConsumerState {
    spec: ConsumerSpec,
    /// It reads only events stored after this `seq`.
    start: u64,
    /// Items handed to it explicitly (escalated alarms, replayed dead letters).
    queue: BTreeSet<u64>,
    /// seq → lease end (µs). Forgotten on restart.
    leases: BTreeMap<u64, u64>,
    /// Items it settled (or whose dead letter was discarded).
    settled: BTreeMap<u64, Final>,
}

impl ConsumerState {
    /// A consumer that reads the events stored after `start`.
    fn new(spec: ConsumerSpec, start: u64) -> Self {
        ConsumerState {
            spec,
            start,
            queue: BTreeSet::new(),
            leases: BTreeMap::new(),
            settled: BTreeMap::new(),
        }
    }
}

#[derive(Default)]
struct Inner {
    last_seq: u64,
    events: BTreeMap<u64, Event>,
    /// (vendor, event_id) → seq of the event stored under that key last.
    idem: BTreeMap<(String, String), u64>,
    consumers: BTreeMap<String, ConsumerState>,
    /// (destination, seq) → dead letter.
    dead: BTreeMap<(String, u64), Dead>,
    /// (consumer, seq) handed to the consumer's fallback already.
    escalated: BTreeSet<(String, u64)>,
    audit_last: u64,
    audit: BTreeMap<u64, AuditRecord>,
    /// (client, jti) → exp (Unix seconds).
    jti: BTreeMap<(String, String), u64>,
}

impl Inner {
    /// Whether `seq` is an event `c` reads from its municipality's log.
    fn in_scope(&self, c: &ConsumerState, seq: u64) -> bool {
        !c.spec.escalation_only
            && seq > c.start
            && self
                .events
                .get(&seq)
                .is_some_and(|e| e.municipality() == c.spec.municipality)
    }

    fn is_pending(&self, c: &ConsumerState, seq: u64) -> bool {
        c.queue.contains(&seq) || (self.in_scope(c, seq) && !c.settled.contains_key(&seq))
    }

    /// Every item pending for `c`, ascending.
    fn pending(&self, c: &ConsumerState) -> Vec<u64> {
        let mut out: BTreeSet<u64> = c.queue.clone();
        out.extend(
            self.events
                .keys()
                .copied()
                .filter(|&s| self.in_scope(c, s) && !c.settled.contains_key(&s)),
        );
        out.into_iter().collect()
    }

    fn pending_for(&self, name: &str, seq: u64) -> bool {
        self.consumers
            .get(name)
            .is_some_and(|c| self.is_pending(c, seq))
    }

    /// Kept past retention: some consumer has it pending, or a dead letter
    /// (not discarded) waits for an operator.
    fn held(&self, seq: u64) -> bool {
        self.consumers.values().any(|c| self.is_pending(c, seq))
            || self.dead.keys().any(|(_, s)| *s == seq)
    }

    fn remove_event(&mut self, seq: u64) {
        let Some(ev) = self.events.remove(&seq) else {
            return;
        };
        let key = (ev.rec.vendor.0.clone(), ev.rec.event_id.clone());
        if self.idem.get(&key) == Some(&seq) {
            self.idem.remove(&key);
        }
        for c in self.consumers.values_mut() {
            c.queue.remove(&seq);
            c.leases.remove(&seq);
            c.settled.remove(&seq);
        }
        self.escalated.retain(|(_, s)| *s != seq);
        self.dead.retain(|(_, s), _| *s != seq);
    }
}

impl MemoryStore {
    /// A store with these consumers, all starting at the (empty) log's end.
    pub fn new(consumers: Vec<ConsumerSpec>, idempotency_window_us: u64, clock: Clock) -> Self {
        let consumers = consumers
            .into_iter()
            .map(|spec| (spec.name.clone(), ConsumerState::new(spec, 0)))
            .collect();
        MemoryStore {
            inner: Mutex::new(Inner {
                consumers,
                ..Inner::default()
            }),
            clock,
            idempotency_window_us,
            committed: tokio::sync::watch::channel(0).0,
        }
    }

    /// What a restart of a real backend loses: every lease.
    pub fn restart(&self) {
        let mut inner = self.lock();
        for c in inner.consumers.values_mut() {
            c.leases.clear();
        }
    }

    /// A restart with these consumers: every lease is lost, a consumer's
    /// spec may change (its fallback, say), and a new consumer starts at
    /// the log's end, as the real backends start one.
    pub fn restart_with(&self, consumers: Vec<ConsumerSpec>) {
        self.restart();
        let mut inner = self.lock();
        let start = inner.last_seq;
        for spec in consumers {
            match inner.consumers.get_mut(&spec.name) {
                Some(c) => c.spec = spec,
                None => {
                    let name = spec.name.clone();
                    inner
                        .consumers
                        .insert(name, ConsumerState::new(spec, start));
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind, still
        // consistent enough for a model; carry on rather than cascade.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn put_sync(&self, rec: NewRecord) -> Result<PutOutcome, PutError> {
        rec.check_size()?;
        let now = self.now();
        let mut inner = self.lock();
        let key = (rec.vendor.0.clone(), rec.event_id.clone());
        if let Some(&seq) = inner.idem.get(&key)
            && let Some(old) = inner.events.get(&seq)
            && seq.saturating_add(self.idempotency_window_us) > now
        {
            return if old.rec.content_hash == rec.content_hash {
                Ok(PutOutcome::Duplicate(old.resource()))
            } else {
                Err(PutError::Conflict(old.resource()))
            };
        }
        let answers = match &rec.answers_alarm {
            None => None,
            Some(eid) => {
                let alarm = inner
                    .idem
                    .get(&(rec.vendor.0.clone(), eid.clone()))
                    .copied()
                    .filter(|s| {
                        inner
                            .events
                            .get(s)
                            .is_some_and(|a| a.rec.is_alarm && a.municipality() == rec.municipality)
                    });
                match alarm {
                    Some(a) => Some(a),
                    None => {
                        return Err(PutError::UnknownAlarm {
                            event_id: eid.clone(),
                        });
                    }
                }
            }
        };
        let seq = (inner.last_seq + 1).max(now);
        inner.last_seq = seq;
        let resource = ResourceRef {
            resource_type: rec.resource.resource_type,
            id: rec.resource.id,
        };
        inner.idem.insert(key, seq);
        inner.events.insert(seq, Event { rec, answers });
        drop(inner);
        self.committed.send_replace(seq);
        Ok(PutOutcome::Accepted(resource))
    }

    fn get_sync(&self, org: Orgnr, rt: ResourceType, id: uuid::Uuid) -> Option<StoredResource> {
        let inner = self.lock();
        inner
            .events
            .iter()
            .rev()
            .find(|(_, e)| {
                e.rec.resource.id == id
                    && e.rec.resource.resource_type == rt
                    && e.municipality() == org
            })
            .map(|(&seq, e)| e.stored(seq))
    }

    fn search_sync(&self, q: &SearchQuery) -> SearchPage {
        let inner = self.lock();
        let count = q.count.max(1);
        let matching = inner.events.iter().filter(|&(&seq, e)| {
            seq >= q.min_seq
                && seq <= q.max_seq
                && match (q.after, q.descending) {
                    (None, _) => true,
                    (Some(a), false) => seq > a,
                    (Some(a), true) => seq < a,
                }
                && matches(e, q)
        });
        let mut items: Vec<StoredResource> = if q.descending {
            matching
                .rev()
                .take(count + 1)
                .map(|(&s, e)| e.stored(s))
                .collect()
        } else {
            matching
                .take(count + 1)
                .map(|(&s, e)| e.stored(s))
                .collect()
        };
        let next = if items.len() > count {
            items.truncate(count);
            items.last().map(|r| r.seq)
        } else {
            None
        };
        SearchPage { items, next }
    }

    fn retention_sync(&self, policy: &RetentionPolicy, now: u64) -> RetentionReport {
        let mut inner = self.lock();
        let mut report = RetentionReport::default();
        let past: Vec<u64> = inner
            .events
            .iter()
            .filter(|&(&seq, e)| {
                policy
                    .keep_us(e.municipality(), e.data_class())
                    .is_some_and(|keep| now.saturating_sub(seq) > keep)
            })
            .map(|(&s, _)| s)
            .collect();
        for seq in past {
            if inner.held(seq) {
                report.held += 1;
            } else {
                inner.remove_event(seq);
                report.removed += 1;
            }
        }
        report
    }

    fn audit_append_sync(&self, records: Vec<AuditRecord>) -> Vec<u64> {
        let now = self.now();
        let mut inner = self.lock();
        let mut seqs = Vec::with_capacity(records.len());
        for rec in records {
            let seq = (inner.audit_last + 1).max(now);
            inner.audit_last = seq;
            inner.audit.insert(seq, rec);
            seqs.push(seq);
        }
        seqs
    }

    fn audit_search_sync(&self, q: &AuditQuery) -> AuditPage {
        let inner = self.lock();
        let count = q.count.max(1);
        let mut items: Vec<StoredAudit> = inner
            .audit
            .iter()
            .filter(|&(&seq, r)| {
                seq >= q.min_seq
                    && seq <= q.max_seq
                    && q.after.is_none_or(|a| seq > a)
                    && r.municipality == q.municipality
                    && q.patient
                        .is_none_or(|p| r.patients.iter().any(|x| x.key == p))
            })
            .take(count + 1)
            .map(|(&seq, r)| StoredAudit {
                seq,
                record: r.clone(),
            })
            .collect();
        let next = if items.len() > count {
            items.truncate(count);
            items.last().map(|s| s.seq)
        } else {
            None
        };
        AuditPage { items, next }
    }
}

/// The search filters other than the seq range and cursor.
fn matches(e: &Event, q: &SearchQuery) -> bool {
    e.municipality() == q.municipality
        && e.rec.resource.resource_type == q.resource_type
        && q.patient.is_none_or(|p| e.rec.patient_key == p)
        && q.category
            .as_deref()
            .is_none_or(|c| e.rec.resource.category == c)
        && (q.codes.is_empty()
            || q.codes
                .iter()
                .any(|t| token_matches(t, &e.rec.resource.codes)))
}

fn token_matches(t: &Token, codes: &[(String, String)]) -> bool {
    codes
        .iter()
        .any(|(s, c)| *c == t.code && t.system.as_deref().is_none_or(|ts| ts == s))
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl EventLog for MemoryStore {
    fn put(&self, rec: NewRecord) -> BoxFuture<'_, Result<PutOutcome, PutError>> {
        ready(self.put_sync(rec))
    }

    fn get(
        &self,
        municipality: Orgnr,
        resource_type: ResourceType,
        id: uuid::Uuid,
    ) -> StoreFuture<'_, Option<StoredResource>> {
        ready(Ok(self.get_sync(municipality, resource_type, id)))
    }

    fn search(&self, q: SearchQuery) -> StoreFuture<'_, SearchPage> {
        ready(Ok(self.search_sync(&q)))
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    fn apply_retention(
        &self,
        policy: RetentionPolicy,
        now: u64,
    ) -> StoreFuture<'_, RetentionReport> {
        ready(Ok(self.retention_sync(&policy, now)))
    }
}

impl AuditLog for MemoryStore {
    fn audit_append(&self, records: Vec<AuditRecord>) -> StoreFuture<'_, Vec<u64>> {
        ready(Ok(self.audit_append_sync(records)))
    }

    fn audit_search(&self, q: AuditQuery) -> StoreFuture<'_, AuditPage> {
        ready(Ok(self.audit_search_sync(&q)))
    }

    fn audit_prune(&self, before: u64) -> StoreFuture<'_, usize> {
        let mut inner = self.lock();
        let n = inner.audit.range(..before).count();
        inner.audit.retain(|&seq, _| seq >= before);
        ready(Ok(n))
    }
}

impl ReplayGuard for MemoryStore {
    fn jti_claim(&self, client: &str, jti: &str, exp: u64, now: u64) -> StoreFuture<'_, bool> {
        let mut inner = self.lock();
        let key = (client.to_string(), jti.to_string());
        let fresh = inner.jti.get(&key).is_none_or(|&old| old < now);
        if fresh {
            inner.jti.insert(key, exp);
        }
        ready(Ok(fresh))
    }

    fn jti_prune(&self, now: u64) -> StoreFuture<'_, usize> {
        let mut inner = self.lock();
        let before = inner.jti.len();
        inner.jti.retain(|_, &mut exp| exp >= now);
        ready(Ok(before - inner.jti.len()))
    }
}

/// `StoreError` for a consumer name no spec gave.
fn unknown(name: &str) -> StoreError {
    StoreError::UnknownConsumer(name.to_string())
}

#[cfg(test)]
mod tests;
