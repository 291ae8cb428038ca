//! Durable storage behind one trait.
//!
//! The default backend is [`sled::SledStore`]: one atomic batch per group of
//! events holds each event's resource, its search indexes, its idempotency
//! key and its outbox entry; the batch is fdatasync'ed before any caller is
//! answered (group commit). Another backend (e.g. on a distributed database)
//! slots in by implementing [`Store`].
//!
//! Ordering and time: every stored resource gets a sequence number that is
//! also its `meta.lastUpdated` in microseconds since the Unix epoch, strictly
//! increasing. Search pages are keyset-paged on it, so a page never skips or
//! repeats a resource while new ones arrive, and `_lastUpdated` filters are
//! key ranges.

pub mod audit;
pub mod sled;

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
    /// The destinations it is queued for (their configured names), in the
    /// same atomic write that stores it.
    pub destinations: Vec<String>,
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

/// One queued delivery: a resource waiting for one destination.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub destination: String,
    pub class: Class,
    pub patient: [u8; 16],
    /// The resource, `meta` included; its `seq` keys the item.
    pub resource: StoredResource,
}

/// How a delivery attempt ended for one item.
#[derive(Debug, Clone)]
pub enum Settle {
    /// The destination has it: remove it from the queue.
    Delivered,
    /// Final failure: move it to the dead letters, with what the destination said.
    DeadLetter {
        attempts: u32,
        error: String,
        response: Option<String>,
    },
    /// Leave it queued (pull: release the lease so it is offered again now).
    Release,
}

/// A delivery that ended in failure and waits for an operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub destination: String,
    pub seq: u64,
    pub resource: String,
    pub class: Class,
    pub attempts: u32,
    pub error: String,
    /// The destination's answer (e.g. its OperationOutcome), if any.
    pub response: Option<String>,
    /// When it was dead-lettered, RFC 3339.
    pub at: String,
    /// Codes of the resource (for replay by code).
    pub codes: Vec<String>,
    #[serde(skip)]
    pub patient: [u8; 16],
}

/// Which dead letters an operator means. Empty fields match everything.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFilter {
    pub destination: Option<String>,
    /// Received at or after (RFC 3339).
    pub from: Option<String>,
    /// Received before (RFC 3339).
    pub to: Option<String>,
    pub code: Option<String>,
}

/// Where one resource stands with one destination (`$status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeliveryState {
    Pending,
    /// Handed to a pull consumer; offered again after `until` (RFC 3339).
    Leased {
        until: String,
    },
    Delivered {
        at: String,
    },
    DeadLettered {
        at: String,
        error: String,
    },
    Discarded {
        at: String,
        reason: String,
    },
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
        "note.in_response_to: no alarm with event_id {event_id:?} from this vendor for this municipality; send the alarm first"
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
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// A resource as read back, with `meta.lastUpdated` filled in.
#[derive(Debug, Clone)]
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

/// Storage for the hub. `put` resolves only once the record is durable.
pub trait Store: Send + Sync + 'static {
    /// Writes one event atomically (resource, indexes, idempotency key,
    /// outbox entry) and returns once it is on disk.
    fn put(&self, rec: NewRecord) -> BoxFuture<'_, Result<PutOutcome, PutError>>;

    /// Reads one resource of one municipality. Another municipality's
    /// resource is `None`, exactly as a missing one.
    fn get(
        &self,
        municipality: Orgnr,
        resource_type: ResourceType,
        id: uuid::Uuid,
    ) -> Result<Option<StoredResource>, StoreError>;

    fn search(&self, q: &SearchQuery) -> Result<SearchPage, StoreError>;

    /// Readiness: `Err` says why the store cannot take writes now.
    fn ready(&self) -> Result<(), String>;

    /// The next items for `destination`, RED then YELLOW then routine, each
    /// class oldest first, at most `max`, skipping items leased until after
    /// `now`. When an urgent item is taken, the same patient's older routine
    /// items are taken with it and put before it, so one patient's resources
    /// still arrive in the order they were received. With `lease_until`, the
    /// items are leased to the caller until then (pull).
    fn outbox_take(
        &self,
        destination: &str,
        max: usize,
        now: u64,
        lease_until: Option<u64>,
    ) -> Result<Vec<OutboxItem>, StoreError>;

    /// Records how deliveries ended: `seq` → outcome. Items no longer
    /// queued (settled before) are skipped.
    fn outbox_settle(
        &self,
        destination: &str,
        outcomes: &[(u64, Settle)],
    ) -> Result<(), StoreError>;

    /// Items waiting for `destination` and the `seq` of the oldest one.
    fn outbox_depth(&self, destination: &str) -> Result<(u64, Option<u64>), StoreError>;

    /// Queues every RED/YELLOW item of `destination` older than its deadline
    /// (microseconds) for `fallback`, once each, and returns them.
    fn escalate_overdue(
        &self,
        destination: &str,
        fallback: &str,
        now: u64,
        red_deadline: u64,
        yellow_deadline: u64,
    ) -> Result<Vec<ResourceRef>, StoreError>;

    fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// Puts a dead letter back in its destination's queue. `false`: no such dead letter.
    fn dead_letter_replay(&self, destination: &str, seq: u64) -> Result<bool, StoreError>;

    /// Drops a dead letter for good, keeping the reason in its status.
    fn dead_letter_discard(
        &self,
        destination: &str,
        seq: u64,
        reason: &str,
    ) -> Result<bool, StoreError>;

    /// Where one resource stands with one destination; `None` if it was
    /// never queued there.
    fn delivery_state(
        &self,
        destination: &str,
        seq: u64,
    ) -> Result<Option<DeliveryState>, StoreError>;

    /// The `seq` of a resource of one municipality, if visible.
    fn seq_of(
        &self,
        municipality: Orgnr,
        resource_type: ResourceType,
        id: uuid::Uuid,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self.get(municipality, resource_type, id)?.map(|r| r.seq))
    }

    /// Changes whenever a group commit made new records visible; delivery
    /// workers wait on it instead of polling.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Appends audit records and returns once they are on disk, with the
    /// `seq` each got. An `Err` means nothing may be served.
    fn audit_append(&self, records: Vec<audit::AuditRecord>) -> Result<Vec<u64>, StoreError>;

    /// One municipality's audit trail, oldest first.
    fn audit_search(&self, q: &audit::AuditQuery) -> Result<audit::AuditPage, StoreError>;

    /// Deletes audit records with `seq < before` (retention); returns how many.
    fn audit_prune(&self, before: u64) -> Result<usize, StoreError>;

    /// Records that `client` used assertion id `jti`, valid until `exp`
    /// (Unix seconds), on disk before it returns. `false`: already used and
    /// not yet expired (a replay).
    fn jti_claim(&self, client: &str, jti: &str, exp: u64, now: u64) -> Result<bool, StoreError>;

    /// Forgets assertion ids that expired before `now` (Unix seconds).
    fn jti_prune(&self, now: u64) -> Result<usize, StoreError>;
}

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
