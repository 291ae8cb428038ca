//! Durable storage behind four traits, one per concern: the event log and
//! its searches ([`EventLog`]), destinations as consumers of that log
//! ([`Consumers`]), the audit trail ([`AuditLog`]) and the assertion replay
//! guard ([`ReplayGuard`]). [`Store`] is all four; handlers hold an
//! `Arc<dyn Store>` and never block: every method that touches disk is a
//! future, and blocking work stays inside the implementation.
//!
//! The embedded backend is [`embedded::EmbeddedStore`] (fjall): a log in
//! commit order with the few index keys searches need, each destination a
//! cursor over its municipality's log (ack floor + pending set in memory),
//! and one group commit (one fdatasync) shared by events, audit records and
//! used assertion ids. [`memory::MemoryStore`] is the reference model the
//! model-based test holds every backend against.
//!
//! Ordering and time: every stored resource gets a sequence number that is
//! also its `meta.lastUpdated` in microseconds since the Unix epoch, strictly
//! increasing. Search pages are keyset-paged on it, so a page never skips or
//! repeats a resource while new ones arrive, and `_lastUpdated` filters are
//! key ranges.

pub mod audit;
pub mod embedded;
pub mod memory;
#[cfg(test)]
mod model_test;
pub mod open;
pub mod postgres;

use std::fmt;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::domain::{Orgnr, ResourceType, VendorId};
use crate::normalize::Normalized;

/// A resource's type and id, shown as `Observation/<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceRef {
    pub resource_type: ResourceType,
    pub id: uuid::Uuid,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_type.as_str(), self.id)
    }
}

/// One event, checked and normalized, ready to be written.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub vendor: VendorId,
    pub event_id: String,
    /// Hash of the event's content: the same `event_id` with another hash is
    /// a conflict, with the same hash a duplicate.
    pub content_hash: [u8; 32],
    pub municipality: Orgnr,
    /// Search key of the patient, see [`patient_key`].
    pub patient_key: [u8; 16],
    pub resource: Normalized,
    /// For a note that answers an alarm: the alarm's `event_id` (same vendor).
    /// The write is refused when no such alarm is stored.
    pub answers_alarm: Option<String>,
    /// Whether this event is itself an alarm (notes may answer it).
    pub is_alarm: bool,
    /// How urgently it must be delivered.
    pub class: Class,
}

impl NewRecord {
    /// The one size rule every backend applies before writing: a resource
    /// larger than [`embedded::MAX_RECORD_BYTES`] is refused.
    pub fn check_size(&self) -> Result<(), PutError> {
        let len = self.resource.json.len();
        if len > embedded::MAX_RECORD_BYTES {
            return Err(PutError::Unavailable(format!(
                "the resource is {len} bytes, more than the {} the store takes; shorten the texts",
                embedded::MAX_RECORD_BYTES
            )));
        }
        Ok(())
    }
}

/// Delivery class. RED and YELLOW alarms go ahead of every routine item and
/// have deadlines. The numbers are part of the store's key layout: never
/// change them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Class {
    Red = 0,
    Yellow = 1,
    Routine = 2,
}

impl Class {
    pub fn from_tag(t: u8) -> Option<Class> {
        match t {
            0 => Some(Class::Red),
            1 => Some(Class::Yellow),
            2 => Some(Class::Routine),
            _ => None,
        }
    }

    pub fn is_urgent(self) -> bool {
        self != Class::Routine
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Red => "red",
            Class::Yellow => "yellow",
            Class::Routine => "routine",
        }
    }
}

/// One item handed to a consumer: a resource waiting for one destination.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub destination: String,
    pub class: Class,
    pub patient: [u8; 16],
    /// The resource, `meta` included; its `seq` keys the item.
    pub resource: StoredResource,
}

/// How a delivery attempt ended for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// The destination has it.
    Delivered,
    /// Final failure: a dead letter, with what the destination said. An
    /// urgent item that becomes a dead letter is escalated at once when its
    /// destination has a fallback.
    DeadLetter {
        attempts: u32,
        error: String,
        response: Option<String>,
    },
    /// Not settled: offer it again now (pull: release the lease).
    Release,
}

/// A delivery that ended in failure and waits for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub destination: String,
    pub seq: u64,
    pub resource: ResourceRef,
    pub class: Class,
    pub attempts: u32,
    pub error: String,
    /// The destination's answer (e.g. its OperationOutcome), if any.
    pub response: Option<String>,
    /// When it was dead-lettered.
    pub at: DateTime<Utc>,
    /// Codes of the resource (for replay by code).
    pub codes: Vec<String>,
}

/// Which dead letters an operator means. `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub destination: Option<String>,
    /// Received at or after.
    pub from: Option<DateTime<Utc>>,
    /// Received before.
    pub to: Option<DateTime<Utc>>,
    pub code: Option<String>,
}

/// Where one resource stands with one destination (`$status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    /// Taken: by a pull client, or in flight to a push destination.
    /// Offered again after `until` unless settled before.
    Leased {
        until: DateTime<Utc>,
    },
    /// Delivered. The time is known while the item is settled above its
    /// consumer's ack floor; once the floor passes it only the fact remains.
    Delivered {
        at: Option<DateTime<Utc>>,
    },
    DeadLettered {
        at: DateTime<Utc>,
        error: String,
    },
    Discarded {
        at: DateTime<Utc>,
        reason: String,
    },
}

/// One destination as the store sees it: a consumer of its municipality's
/// log, or (escalation-only) of the alarms escalated to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub name: String,
    pub municipality: Orgnr,
    /// Reads nothing from the log; gets only what is escalated to it.
    pub escalation_only: bool,
    /// Where its overdue or dead-lettered RED/YELLOW alarms go.
    pub escalate_to: Option<String>,
    /// RED and YELLOW deadlines, microseconds after the event was stored.
    pub red_deadline_us: u64,
    pub yellow_deadline_us: u64,
}

/// Queue figures of one consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Items not yet settled.
    pub pending: u64,
    /// `seq` of the oldest of them.
    pub oldest: Option<u64>,
    /// The durable ack floor: everything at or below it is settled.
    pub floor: u64,
}

/// An alarm handed to a fallback destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    pub from: String,
    pub to: String,
    pub seq: u64,
    pub resource: ResourceRef,
    pub class: Class,
    /// `true`: its destination refused it for good; `false`: overdue.
    pub dead_lettered: bool,
}

/// What settling changed besides the items themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettleReport {
    /// Items that were still unsettled and are now settled.
    pub settled: usize,
    /// Dead-lettered alarms handed to the fallback in the same write.
    pub escalated: Vec<Escalation>,
}

/// The kinds of data retention is configured for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataClass {
    Alarm = 0,
    Note = 1,
    Measurement = 2,
}

/// How long events are kept, per municipality and data class. An event past
/// its retention leaves the log and every index, unless a consumer has not
/// settled it (then it stays and is counted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Microseconds; `None`: kept forever.
    pub default: [Option<u64>; 3],
    pub per_municipality: std::collections::HashMap<Orgnr, [Option<u64>; 3]>,
}

impl RetentionPolicy {
    pub fn keep_us(&self, org: Orgnr, class: DataClass) -> Option<u64> {
        let i = class as usize;
        self.per_municipality
            .get(&org)
            .map_or(self.default[i], |p| p[i])
    }
}

/// What [`EventLog::reclaim_space`] gave back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpaceReport {
    /// Each part of the store it compacted (a keyspace; the journal last),
    /// in the order it went.
    pub parts: Vec<SpacePart>,
    /// Set where the backend has nothing to do (it returns space itself),
    /// saying what an operator can do instead.
    pub note: Option<String>,
}

/// One part of [`SpaceReport`]: bytes on disk before and after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpacePart {
    pub name: String,
    pub before: u64,
    pub after: u64,
    /// Why this part was left as it was (too little free disk to rewrite it).
    pub skipped: Option<String>,
}

/// Told of each part as [`EventLog::reclaim_space`] starts it: its name,
/// its place (1-based) and how many parts there are.
pub type ReclaimProgress = std::sync::Arc<dyn Fn(&str, usize, usize) + Send + Sync>;

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Events removed from the log and every index.
    pub removed: u64,
    /// Events past retention kept because a consumer has not settled them.
    pub held: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored and on disk.
    Accepted(ResourceRef),
    /// Seen before with the same content; nothing was written.
    Duplicate(ResourceRef),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    #[error(
        "event_id was already used by this vendor for an event with other content (stored as {0}); use a new event_id for a new event"
    )]
    Conflict(ResourceRef),
    #[error(
        "note.in_response_to: no alarm with that event_id from this vendor for this municipality; send the alarm first"
    )]
    UnknownAlarm { event_id: String },
    #[error(
        "the hub's disk is full ({free_bytes} bytes free, {reserve_bytes} kept in reserve); nothing was stored, retry later"
    )]
    DiskFull { free_bytes: u64, reserve_bytes: u64 },
    #[error("the hub cannot store events right now ({0}); nothing was stored, retry later")]
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("store read failed: {0}")]
    Read(String),
    #[error("store write failed: {0}")]
    Write(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("no destination named {0:?} is configured")]
    UnknownConsumer(String),
}

/// A resource as read back, with `meta.lastUpdated` filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResource {
    pub seq: u64,
    pub municipality: Orgnr,
    pub resource: ResourceRef,
    /// The full resource JSON, `meta` included.
    pub json: String,
}

impl StoredResource {
    pub fn last_updated(&self) -> DateTime<Utc> {
        seq_to_time(self.seq)
    }
}

/// A token filter: `code=[system|]code`. `system: None` matches any system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub system: Option<String>,
    pub code: String,
}

/// A search within one municipality and resource type. All filters are
/// ANDed; several `codes` are ORed (FHIR's comma).
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub municipality: Orgnr,
    pub resource_type: ResourceType,
    pub patient: Option<[u8; 16]>,
    pub codes: Vec<Token>,
    pub category: Option<String>,
    /// Inclusive sequence range (from `_lastUpdated`); `0..=u64::MAX` for all.
    pub min_seq: u64,
    pub max_seq: u64,
    /// Keyset cursor: continue strictly after (ascending) or before
    /// (descending) this sequence number.
    pub after: Option<u64>,
    pub count: usize,
    pub descending: bool,
}

#[derive(Debug, Clone)]
pub struct SearchPage {
    pub items: Vec<StoredResource>,
    /// Cursor for the next page when there may be more.
    pub next: Option<u64>,
}

/// Everything a future answers with in this module.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// The event log and its searches.
///
/// Ordering contract: every accepted event gets a sequence number (`seq`)
/// that is its `meta.lastUpdated` in microseconds, strictly increasing in
/// commit order across the whole store. A reader never sees `seq` N+1 while
/// N could still commit or be lost: nothing is visible before it is durable,
/// and nothing becomes visible below what is already visible. Keyset paging
/// on `seq` therefore never skips or repeats a resource.
pub trait EventLog: Send + Sync {
    /// Writes one event atomically (record, indexes, idempotency key) and
    /// resolves once it is durable. A resend with the same vendor and
    /// `event_id` inside the idempotency window is `Duplicate` (same content)
    /// or `Conflict` (other content); after the window it is a new event.
    fn put(&self, rec: NewRecord) -> BoxFuture<'_, Result<PutOutcome, PutError>>;

    /// Reads one resource of one municipality. Another municipality's
    /// resource is `None`, exactly as a missing one.
    fn get(
        &self,
        municipality: Orgnr,
        resource_type: ResourceType,
        id: uuid::Uuid,
    ) -> StoreFuture<'_, Option<StoredResource>>;

    /// Reads several resources of one municipality in one call: answer `i`
    /// is what [`EventLog::get`] gives for `refs[i]`. A backend overrides
    /// this when one round trip is cheaper than many (`$confirm` asks for
    /// up to 1,000 at a time).
    fn get_many(
        &self,
        municipality: Orgnr,
        refs: Vec<ResourceRef>,
    ) -> StoreFuture<'_, Vec<Option<StoredResource>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(refs.len());
            for r in refs {
                out.push(self.get(municipality, r.resource_type, r.id).await?);
            }
            Ok(out)
        })
    }

    fn search(&self, q: SearchQuery) -> StoreFuture<'_, SearchPage>;

    /// Readiness: `Err` says why the store cannot take writes now.
    fn ready(&self) -> Result<(), String>;

    /// Changes whenever a group commit made new records visible; delivery
    /// workers wait on it instead of polling.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Removes events past their retention that every consumer has settled.
    fn apply_retention(
        &self,
        policy: RetentionPolicy,
        now: u64,
    ) -> StoreFuture<'_, RetentionReport>;

    /// Gives the disk space of removed records back now, where the backend
    /// does not do that on its own. Long work (minutes on a big store);
    /// reads and writes go on meanwhile. The default does nothing and says
    /// so in [`SpaceReport::note`].
    fn reclaim_space(&self, _progress: ReclaimProgress) -> StoreFuture<'_, SpaceReport> {
        Box::pin(async {
            Ok(SpaceReport {
                parts: Vec::new(),
                note: Some("this store gives the space of removed records back on its own".into()),
            })
        })
    }
}

/// Destinations as consumers of the log (the JetStream model): a durable
/// ack floor, the unsettled items above it, and small durable tables for
/// the exceptions (settled above the floor, dead letters, escalations).
///
/// Ordering contract for [`Consumers::take`]: RED, then YELLOW alarms, then
/// routine items; an alarm never waits behind routine data. Within one
/// (destination, patient, class) items come oldest first. A note that
/// answers an alarm is never handed out before that alarm is settled or
/// earlier in the same batch. Never more than `max` items.
pub trait Consumers: Send + Sync {
    /// The next items for `consumer`, skipping items leased until after
    /// `now` (µs). With `lease_until`, the items are leased until then
    /// (pull); without, they count as in flight until settled or released.
    fn take(
        &self,
        consumer: &str,
        max: usize,
        now: u64,
        lease_until: Option<u64>,
    ) -> StoreFuture<'_, Vec<OutboxItem>>;

    /// Records how deliveries ended: `seq` → outcome, in one small write.
    /// Items no longer unsettled are skipped.
    fn settle(&self, consumer: &str, outcomes: Vec<(u64, Settle)>)
    -> StoreFuture<'_, SettleReport>;

    fn stats(&self, consumer: &str) -> StoreFuture<'_, ConsumerStats>;

    /// Hands every RED/YELLOW item older than its deadline to the
    /// consumer's fallback, once each. Every escalation (here and at a dead
    /// letter) is reported, but the fallback is queued the item only if it
    /// has not had it: not pending there, not settled there in any way (a
    /// dead letter at the fallback waits for an operator's replay), and not
    /// an event it reads from its own log.
    fn escalate_overdue(&self, now: u64) -> StoreFuture<'_, Vec<Escalation>>;

    fn dead_letters(
        &self,
        filter: DeadLetterFilter,
        limit: usize,
    ) -> StoreFuture<'_, Vec<DeadLetter>>;

    /// Offers a dead letter to its destination again. `false`: no such dead letter.
    fn dead_letter_replay(&self, consumer: &str, seq: u64) -> StoreFuture<'_, bool>;

    /// Drops a dead letter for good, keeping the reason in its status.
    fn dead_letter_discard(
        &self,
        consumer: &str,
        seq: u64,
        reason: String,
    ) -> StoreFuture<'_, bool>;

    /// Where one resource stands with one destination; `None` if it was
    /// never meant for it.
    fn delivery_state(&self, consumer: &str, seq: u64) -> StoreFuture<'_, Option<DeliveryState>>;

    /// Takes or renews, for `ttl_us`, the right to deliver to push
    /// destination `consumer`; `false`: another hub holds it. A store one
    /// hub owns always grants it; a shared store grants it to one hub at a
    /// time (see `deliver::lease`).
    fn delivery_lease(&self, consumer: &str, ttl_us: u64) -> StoreFuture<'_, bool> {
        let _ = (consumer, ttl_us);
        Box::pin(std::future::ready(Ok(true)))
    }

    /// Gives the delivery lease up (at shutdown) so another hub takes over.
    fn delivery_lease_release(&self, consumer: &str) -> StoreFuture<'_, ()> {
        let _ = consumer;
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The append-only audit trail.
pub trait AuditLog: Send + Sync {
    /// Appends audit records and resolves once they are durable (they share
    /// the group commit of events), with the `seq` each got.
    fn audit_append(&self, records: Vec<audit::AuditRecord>) -> StoreFuture<'_, Vec<u64>>;

    /// Appends records of something that has already happened and cannot
    /// be undone (a push delivery), without a sync of their own: they
    /// resolve once written in commit order and become durable with the
    /// next sync, before anything written after them (a settle). So a crash
    /// that loses the record also loses the settle, and the item is
    /// delivered and recorded again. The default waits for durability.
    fn audit_append_unsynced(&self, records: Vec<audit::AuditRecord>) -> StoreFuture<'_, Vec<u64>> {
        self.audit_append(records)
    }

    /// One municipality's audit trail, oldest first.
    fn audit_search(&self, q: audit::AuditQuery) -> StoreFuture<'_, audit::AuditPage>;

    /// Deletes audit records with `seq < before` (retention); returns how many.
    fn audit_prune(&self, before: u64) -> StoreFuture<'_, usize>;
}

/// Used assertion ids (`jti`), so a client assertion works once.
pub trait ReplayGuard: Send + Sync {
    /// Records that `client` used `jti`, valid until `exp` (Unix seconds),
    /// durable before it resolves. `false`: already used and not yet
    /// expired (a replay).
    fn jti_claim(&self, client: &str, jti: &str, exp: u64, now: u64) -> StoreFuture<'_, bool>;

    /// Forgets assertion ids that expired before `now` (Unix seconds).
    fn jti_prune(&self, now: u64) -> StoreFuture<'_, usize>;
}

/// Storage for the hub: every concern behind one handle.
pub trait Store: EventLog + Consumers + AuditLog + ReplayGuard + 'static {}

impl<T: EventLog + Consumers + AuditLog + ReplayGuard + 'static> Store for T {}

/// The patient's search key: a hash of identifier system and value, so index
/// keys do not hold the national id in the clear.
pub fn patient_key(system_oid: &str, value: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(system_oid.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// `meta.lastUpdated` of a sequence number (microseconds since the epoch).
pub fn seq_to_time(seq: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(seq as i64).unwrap_or_default()
}

/// The smallest sequence number at or after `t`.
pub fn time_to_seq(t: DateTime<Utc>) -> u64 {
    t.timestamp_micros().max(0) as u64
}

/// The stored JSON with `meta.lastUpdated` spliced in after the opening brace
/// (normalize leaves `meta` out; the time stored is only known here).
pub(crate) fn with_meta(json: &str, seq: u64) -> String {
    let ts = seq_to_time(seq).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let body = json.strip_prefix('{').unwrap_or(json);
    let sep = if body.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    format!("{{\"meta\":{{\"lastUpdated\":\"{ts}\"}}{sep}{body}")
}
