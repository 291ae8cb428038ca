//! The audit trail and the used-`jti` table.
//!
//! Both are written by the writer thread in the same group commit as events
//! (one fdatasync for everything), so an access is on disk before its data
//! is served and a used assertion id survives a crash. `seq` of an audit
//! record is its time in µs since the epoch, strictly increasing, so time
//! filters are key ranges and paging is keyset paging, as for resources.

use super::keys::{self, be_u64, with_seq};
use super::{Shared, read};
use crate::store::StoreError;
use crate::store::audit::{AuditPage, AuditQuery, AuditRecord, StoredAudit};

fn akey(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'A';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn org_prefix(org: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(b'B');
    k.extend_from_slice(&org.to_be_bytes());
    k
}

fn patient_prefix(org: u32, patient: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(29);
    k.push(b'b');
    k.extend_from_slice(&org.to_be_bytes());
    k.extend_from_slice(patient);
    k
}

/// The distinct patient keys of a record, for its index entries.
fn patient_keys(rec: &AuditRecord) -> Vec<[u8; 16]> {
    let mut keys: Vec<[u8; 16]> = rec.patients.iter().map(|p| p.key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The last audit `seq` handed out (0 for none).
pub(crate) fn last_seq(audit: &fjall::Keyspace) -> Result<u64, StoreError> {
    match audit.prefix([b'A']).next_back() {
        None => Ok(0),
        Some(g) => Ok(be_u64(&g.key().map_err(read)?[1..]).unwrap_or(0)),
    }
}

/// Adds one record and its index keys to the writer's batch.
pub(crate) fn stage(
    ks: &super::Spaces,
    batch: &mut fjall::OwnedWriteBatch,
    seq: u64,
    rec: &AuditRecord,
) -> Result<(), StoreError> {
    let org = rec.municipality.as_u32();
    batch.insert(&ks.audit, akey(seq), keys::encode(rec)?);
    batch.insert(&ks.audit, with_seq(org_prefix(org), seq), []);
    for p in patient_keys(rec) {
        batch.insert(&ks.audit, with_seq(patient_prefix(org, &p), seq), []);
    }
    Ok(())
}

pub(crate) fn search(s: &Shared, q: &AuditQuery) -> Result<AuditPage, StoreError> {
    let org = q.municipality.as_u32();
    let prefix = match &q.patient {
        Some(p) => patient_prefix(org, p),
        None => org_prefix(org),
    };
    let mut lo = q.min_seq;
    if let Some(a) = q.after {
        lo = lo.max(a.saturating_add(1));
    }
    let hi = q.max_seq;
    let count = q.count.max(1);
    let mut items = Vec::new();
    if lo > hi {
        return Ok(AuditPage { items, next: None });
    }
    let mut more = false;
    for g in
        s.ks.audit
            .range(with_seq(prefix.clone(), lo)..=with_seq(prefix, hi))
    {
        let k = g.key().map_err(read)?;
        if items.len() >= count {
            more = true;
            break;
        }
        let seq = keys::tail_seq(&k)?;
        let raw = s.ks.audit.get(akey(seq)).map_err(read)?.ok_or_else(|| {
            StoreError::Corrupt(format!("audit index points at missing record {seq}"))
        })?;
        let record: AuditRecord = keys::decode(&raw)?;
        if record.municipality.as_u32() != org {
            return Err(StoreError::Corrupt(format!(
                "audit record {seq} is indexed under another municipality"
            )));
        }
        items.push(StoredAudit { seq, record });
    }
    let next = if more {
        items.last().map(|s| s.seq)
    } else {
        None
    };
    Ok(AuditPage { items, next })
}

pub(crate) fn prune(s: &Shared, before: u64) -> Result<usize, StoreError> {
    let mut pruned = 0;
    let mut batch = s.db.batch();
    for g in s.ks.audit.range(akey(0)..akey(before)) {
        let (k, v) = g.into_inner().map_err(read)?;
        let Some(seq) = be_u64(&k[1..]) else {
            continue;
        };
        batch.remove(&s.ks.audit, k);
        if let Ok(rec) = keys::decode::<AuditRecord>(&v) {
            let org = rec.municipality.as_u32();
            batch.remove(&s.ks.audit, with_seq(org_prefix(org), seq));
            for p in patient_keys(&rec) {
                batch.remove(&s.ks.audit, with_seq(patient_prefix(org, &p), seq));
            }
        }
        pruned += 1;
        if batch.len() >= 4000 {
            s.commit(std::mem::replace(&mut batch, s.db.batch()))?;
        }
    }
    s.commit(batch)?;
    Ok(pruned)
}

/// Adds the removal of every jti expired at `now` (except those `skip`
/// names) to the writer's `batch`; how many.
pub(crate) fn stage_jti_prune(
    s: &Shared,
    batch: &mut fjall::OwnedWriteBatch,
    now: u64,
    skip: impl Fn(&[u8]) -> bool,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for g in s.ks.jti.iter() {
        let (k, v) = g.into_inner().map_err(read)?;
        if be_u64(&v).is_none_or(|exp| exp < now) && !skip(&k) {
            batch.remove(&s.ks.jti, k);
            n += 1;
        }
    }
    Ok(n)
}
