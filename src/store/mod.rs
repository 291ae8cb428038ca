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
