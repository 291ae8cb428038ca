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
mod types;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::domain::{Orgnr, ResourceType};

pub use types::*;

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
