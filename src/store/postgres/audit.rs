//! The audit trail and the used-`jti` table, shared by every hub. Both are
//! written by the writer in the group transaction (see `writer`); here are
//! the reads and the pruning.

use super::{Shared, from_i64, read_err, sql_i64, write_err};
use crate::store::StoreError;
use crate::store::audit::{AuditPage, AuditQuery, AuditRecord, StoredAudit};

pub(crate) async fn search(s: &Shared, q: &AuditQuery) -> Result<AuditPage, StoreError> {
    let mut lo = q.min_seq;
    if let Some(a) = q.after {
        lo = lo.max(a.saturating_add(1));
    }
    let count = q.count.max(1);
    if lo > q.max_seq {
        return Ok(AuditPage {
            items: Vec::new(),
            next: None,
        });
    }
    let org = q.municipality.as_u32() as i32;
    let patient = q.patient.map(|p| p.to_vec());
    let limit = (count + 1) as i64;
    let client = s.client().await?;
    let rows = client
        .query(
            "SELECT seq, record FROM kp_audit WHERE municipality = $1 AND seq BETWEEN $2 AND $3 \
             AND ($4::bytea IS NULL OR patients @> ARRAY[$4::bytea]) ORDER BY seq LIMIT $5",
            &[&org, &sql_i64(lo), &sql_i64(q.max_seq), &patient, &limit],
        )
        .await
        .map_err(read_err(s))?;
    let mut items = Vec::with_capacity(rows.len());
    for r in &rows {
        let seq = from_i64(r.get(0));
        let record: AuditRecord = serde_json::from_value(r.get(1))
            .map_err(|e| StoreError::Corrupt(format!("audit record {seq}: {e}")))?;
        items.push(StoredAudit { seq, record });
    }
    let next = if items.len() > count {
        items.truncate(count);
        items.last().map(|a| a.seq)
    } else {
        None
    };
    Ok(AuditPage { items, next })
}

pub(crate) async fn prune(s: &Shared, before: u64) -> Result<usize, StoreError> {
    let client = s.client().await?;
    let n = client
        .execute("DELETE FROM kp_audit WHERE seq < $1", &[&sql_i64(before)])
        .await
        .map_err(write_err(s))?;
    Ok(n as usize)
}

pub(crate) async fn jti_prune(s: &Shared, now: u64) -> Result<usize, StoreError> {
    let client = s.client().await?;
    let n = client
        .execute("DELETE FROM kp_jti WHERE exp < $1", &[&sql_i64(now)])
        .await
        .map_err(write_err(s))?;
    Ok(n as usize)
}
