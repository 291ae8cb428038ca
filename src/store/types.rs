//! The values the store's traits take and give (records, queue items,
//! settle outcomes, dead letters, retention and space reports, searches,
//! errors); the traits and their contracts are in `store/mod.rs`.

use std::fmt;

use chrono::{DateTime, Utc};

use super::{embedded, seq_to_time};
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
