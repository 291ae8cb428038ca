//! What of an answer the model-based test compares: everything, except
//! what depends on the backend's own clock (when an item was delivered,
//! dead-lettered or discarded), the backend-specific ack floor, and the
//! wording of errors. Resource JSON is compared as JSON, not as bytes.

use crate::domain::Orgnr;
use crate::store::audit::{AuditPage, StoredAudit};
use crate::store::{
    Class, ConsumerStats, DeadLetter, DeliveryState, OutboxItem, PutError, PutOutcome, ResourceRef,
    SearchPage, StoreError, StoredResource,
};

/// A resource as compared: seq, municipality, ref, parsed JSON.
pub type Res = (u64, Orgnr, ResourceRef, serde_json::Value);

pub fn res(r: &StoredResource) -> Res {
    let json = serde_json::from_str(&r.json)
        .unwrap_or_else(|e| serde_json::Value::String(format!("not JSON ({e}): {}", r.json)));
    (r.seq, r.municipality, r.resource, json)
}

/// A store error by its kind only.
pub fn err(e: &StoreError) -> &'static str {
    match e {
        StoreError::Read(_) => "Read",
        StoreError::Write(_) => "Write",
        StoreError::Corrupt(_) => "Corrupt",
        StoreError::UnknownConsumer(_) => "UnknownConsumer",
    }
}

pub fn result<T, U>(r: Result<T, StoreError>, f: impl FnOnce(T) -> U) -> Result<U, &'static str> {
    r.map(f).map_err(|e| err(&e))
}

pub fn put(r: Result<PutOutcome, PutError>) -> Result<PutOutcome, PutError> {
    r.map_err(|e| match e {
        PutError::Unavailable(_) => PutError::Unavailable(String::new()),
        PutError::DiskFull { .. } => PutError::DiskFull {
            free_bytes: 0,
            reserve_bytes: 0,
        },
        other => other,
    })
}

pub fn items(v: Vec<OutboxItem>) -> Vec<(String, Class, [u8; 16], Res)> {
    v.iter()
        .map(|i| (i.destination.clone(), i.class, i.patient, res(&i.resource)))
        .collect()
}

pub fn page(p: SearchPage) -> (Vec<Res>, Option<u64>) {
    (p.items.iter().map(res).collect(), p.next)
}

pub fn audit_page(p: AuditPage) -> (Vec<StoredAudit>, Option<u64>) {
    (p.items, p.next)
}

pub fn stats(s: ConsumerStats) -> ConsumerStats {
    ConsumerStats { floor: 0, ..s }
}

fn epoch() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::UNIX_EPOCH
}

pub fn state(s: Option<DeliveryState>) -> Option<DeliveryState> {
    s.map(|s| match s {
        DeliveryState::Delivered { .. } => DeliveryState::Delivered { at: None },
        DeliveryState::DeadLettered { error, .. } => {
            DeliveryState::DeadLettered { at: epoch(), error }
        }
        DeliveryState::Discarded { reason, .. } => DeliveryState::Discarded {
            at: epoch(),
            reason,
        },
        other => other,
    })
}

pub fn dead_letters(v: Vec<DeadLetter>) -> Vec<DeadLetter> {
    v.into_iter()
        .map(|d| DeadLetter { at: epoch(), ..d })
        .collect()
}
