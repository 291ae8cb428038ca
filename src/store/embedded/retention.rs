//! Retention: events past their municipality's and data class's retention
//! leave the log and every index. An event a consumer has not settled (or
//! whose dead letter waits for an operator) is never dropped: it is kept and
//! counted as held.
//!
//! The log is in time order, so a pass reads from its start and stops at the
//! first event younger than the shortest retention configured.

use super::deadletter::dead_letter;
use super::keys::{self, IdEntry, Record};
use super::{Shared, lock, read};
use crate::domain::Orgnr;
use crate::store::{Class, DataClass, RetentionPolicy, RetentionReport, StoreError};

/// Removals per committed batch.
const CHUNK: usize = 512;

pub(crate) fn data_class(rtype: u8, category: &str) -> DataClass {
    if rtype == crate::domain::ResourceType::Observation.tag() {
        DataClass::Measurement
    } else if category == "alert" {
        DataClass::Alarm
    } else {
        DataClass::Note
    }
}

pub(crate) fn apply(
    s: &Shared,
    policy: &RetentionPolicy,
    now: u64,
) -> Result<RetentionReport, StoreError> {
    let shortest = policy
        .default
        .iter()
        .chain(policy.per_municipality.values().flatten())
        .flatten()
        .min()
        .copied();
    let mut report = RetentionReport::default();
    let Some(shortest) = shortest else {
        return Ok(report);
    };
    let visible = s.visible();
    let mut batch = s.db.batch();
    let mut in_batch = 0;
    for g in s.ks.log.iter() {
        let (k, raw) = g.into_inner().map_err(read)?;
        let seq = keys::tail_seq(&k)?;
        if seq > visible || now.saturating_sub(seq) <= shortest {
            break;
        }
        let rec: Record = keys::decode(&raw)?;
        let keep = policy.keep_us(
            Orgnr::from_u32(rec.org),
            data_class(rec.rtype, rec.category),
        );
        if keep.is_none_or(|keep| now.saturating_sub(seq) <= keep) {
            continue;
        }
        if needed(s, rec.org, seq)? {
            report.held += 1;
            continue;
        }
        remove(s, &mut batch, seq, &rec)?;
        report.removed += 1;
        in_batch += 1;
        if in_batch >= CHUNK {
            s.commit(std::mem::replace(&mut batch, s.db.batch()))?;
            in_batch = 0;
        }
    }
    s.commit(batch)?;
    Ok(report)
}

/// Adds the removal of one event and every key that names it to `batch`.
fn remove(
    s: &Shared,
    batch: &mut fjall::OwnedWriteBatch,
    seq: u64,
    rec: &Record,
) -> Result<(), StoreError> {
    let (org, rt) = (rec.org, rec.rtype);
    batch.remove(&s.ks.log, keys::seq_key(seq));
    // The id may since name a newer event (a resend after the idempotency
    // window): remove it only when it still points here.
    if let Some(v) = s.ks.ids.get(rec.id).map_err(read)? {
        let e: IdEntry = keys::decode(&v)?;
        if e.seq == seq {
            batch.remove(&s.ks.ids, rec.id);
        }
    }
    batch.remove(
        &s.ks.idx,
        keys::with_seq(keys::index_prefix(b'T', org, rt, &[]), seq),
    );
    batch.remove(
        &s.ks.idx,
        keys::with_seq(keys::index_prefix(b'P', org, rt, &rec.patient), seq),
    );
    for c in keys::distinct_codes(&rec.codes) {
        batch.remove(
            &s.ks.idx,
            keys::with_seq(keys::index_prefix(b'C', org, rt, &keys::short_hash(c)), seq),
        );
    }
    if Class::from_tag(rec.class).is_some_and(Class::is_urgent) {
        batch.remove(&s.ks.alarms, keys::alarm_key(org, seq));
    }
    forget(s, batch, seq);
    Ok(())
}

/// Whether any consumer still needs `seq` (retention keeps it then).
fn needed(s: &Shared, org: u32, seq: u64) -> Result<bool, StoreError> {
    for (name, cref) in &s.consumers {
        let c = lock(cref);
        if c.explicit.contains_key(&seq) {
            return Ok(true);
        }
        if c.org == org
            && !c.spec.escalation_only
            && seq > c.start
            && seq > c.floor
            && c.settled_at(s, name, seq)?.is_none()
        {
            return Ok(true);
        }
        if let Some(rec) = dead_letter(s, name, seq)?
            && rec.discarded.is_none()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Forgets every consumer's remnants of a removed event (settled marks,
/// escalation marks, discarded dead letters) in `batch`.
fn forget(s: &Shared, batch: &mut fjall::OwnedWriteBatch, seq: u64) {
    for (name, cref) in &s.consumers {
        let mut c = lock(cref);
        c.above.remove(&seq);
        c.escalated.remove(&seq);
        batch.remove(&s.ks.cons, keys::name_seq(Some(b'S'), name, seq));
        batch.remove(&s.ks.cons, keys::name_seq(Some(b'E'), name, seq));
        batch.remove(&s.ks.dlq, keys::name_seq(None, name, seq));
    }
}
