//! Reads (a resource by id, searches) and retention.
//!
//! Nothing is visible before its group transaction committed, and group
//! transactions commit in seq order (see `writer`), so a keyset page on
//! `seq` never skips or repeats a resource while new ones arrive.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{Shared, from_i64, read_err, sql_i64, write_err};
use crate::domain::{Orgnr, ResourceType};
use crate::store::{
    DataClass, ResourceRef, RetentionPolicy, RetentionReport, SearchPage, SearchQuery, StoreError,
    StoredResource, with_meta,
};

/// Columns [`resource`] reads, in order.
pub(crate) const RESOURCE_COLS: &str = "e.seq, e.municipality, e.rtype, e.id, e.json";

/// A resource from a row of [`RESOURCE_COLS`] (starting at column `at`).
pub(crate) fn resource(row: &Row, at: usize) -> Result<StoredResource, StoreError> {
    let seq = from_i64(row.get(at));
    let rtype: i16 = row.get(at + 2);
    let resource_type = ResourceType::from_tag(rtype as u8)
        .ok_or_else(|| StoreError::Corrupt(format!("event {seq}: resource type {rtype}")))?;
    let json: &str = row.get(at + 4);
    Ok(StoredResource {
        seq,
        municipality: Orgnr::from_u32(row.get::<_, i32>(at + 1) as u32),
        resource: ResourceRef {
            resource_type,
            id: row.get(at + 3),
        },
        json: with_meta(json, seq),
    })
}

pub(crate) async fn get(
    s: &Shared,
    org: Orgnr,
    rt: ResourceType,
    id: uuid::Uuid,
) -> Result<Option<StoredResource>, StoreError> {
    let client = s.client().await?;
    let row = client
        .query_opt(
            &format!(
                "SELECT {RESOURCE_COLS} FROM kp_events e \
                 WHERE e.id = $1 AND e.municipality = $2 AND e.rtype = $3 \
                 ORDER BY e.seq DESC LIMIT 1"
            ),
            &[&id, &(org.as_u32() as i32), &i16::from(rt.tag())],
        )
        .await
        .map_err(read_err(s))?;
    row.map(|r| resource(&r, 0)).transpose()
}

/// One query for many ids; per asked (type, id) the newest event, as [`get`].
pub(crate) async fn get_many(
    s: &Shared,
    org: Orgnr,
    refs: Vec<ResourceRef>,
) -> Result<Vec<Option<StoredResource>>, StoreError> {
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<uuid::Uuid> = refs.iter().map(|r| r.id).collect();
    let client = s.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {RESOURCE_COLS} FROM kp_events e \
                 WHERE e.id = ANY($1) AND e.municipality = $2 ORDER BY e.seq"
            ),
            &[&ids, &(org.as_u32() as i32)],
        )
        .await
        .map_err(read_err(s))?;
    // Ascending seq: a later row for the same (type, id) replaces an earlier one.
    let mut newest = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let r = resource(row, 0)?;
        newest.insert(r.resource, r);
    }
    Ok(refs.iter().map(|r| newest.get(r).cloned()).collect())
}

pub(crate) async fn search(s: &Shared, q: &SearchQuery) -> Result<SearchPage, StoreError> {
    let count = q.count.max(1);
    let (mut lo, mut hi) = (q.min_seq, q.max_seq);
    match (q.after, q.descending) {
        (Some(a), false) => lo = lo.max(a.saturating_add(1)),
        (Some(a), true) => hi = hi.min(a.saturating_sub(1)),
        (None, _) => {}
    }
    if lo > hi {
        return Ok(SearchPage {
            items: Vec::new(),
            next: None,
        });
    }
    let org = q.municipality.as_u32() as i32;
    let rt = i16::from(q.resource_type.tag());
    let (lo, hi) = (sql_i64(lo), sql_i64(hi));
    let limit = (count + 1) as i64;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&org, &rt, &lo, &hi, &limit];
    let mut filters = String::new();
    let patient = q.patient.map(|p| p.to_vec());
    if let Some(p) = &patient {
        params.push(p);
        filters.push_str(&format!(" AND e.patient = ${}", params.len()));
    }
    if let Some(c) = &q.category {
        params.push(c);
        filters.push_str(&format!(" AND e.category = ${}", params.len()));
    }
    let systems: Vec<Option<&str>> = q.codes.iter().map(|t| t.system.as_deref()).collect();
    let codes: Vec<&str> = q.codes.iter().map(|t| t.code.as_str()).collect();
    if !codes.is_empty() {
        params.push(&codes);
        let c = params.len();
        params.push(&systems);
        // `&&` lets the GIN index find candidates; the unnest pairs each
        // code with its own system (a token with no system matches any).
        filters.push_str(&format!(
            " AND e.code_values && ${c}::text[] AND EXISTS (\
               SELECT 1 FROM unnest(e.code_systems, e.code_values) AS x(s, v), \
               unnest(${c}::text[], ${}::text[]) AS t(v, s) \
               WHERE x.v = t.v AND (t.s IS NULL OR t.s = x.s))",
            c + 1
        ));
    }
    let order = if q.descending { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT {RESOURCE_COLS} FROM kp_events e \
         WHERE e.municipality = $1 AND e.rtype = $2 AND e.seq BETWEEN $3 AND $4{filters} \
         ORDER BY e.seq {order} LIMIT $5"
    );
    let client = s.client().await?;
    let rows = client
        .query(sql.as_str(), &params)
        .await
        .map_err(read_err(s))?;
    let mut items = rows
        .iter()
        .map(|r| resource(r, 0))
        .collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() > count {
        items.truncate(count);
        items.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(SearchPage { items, next })
}

fn data_class(rtype: i16, category: &str) -> DataClass {
    if rtype == i16::from(ResourceType::Observation.tag()) {
        DataClass::Measurement
    } else if category == "alert" {
        DataClass::Alarm
    } else {
        DataClass::Note
    }
}

/// Events past retention, oldest first, in chunks; those no consumer of
/// this hub's configuration needs are removed with every row naming them.
pub(crate) async fn apply_retention(
    s: &Shared,
    policy: &RetentionPolicy,
    now: u64,
) -> Result<RetentionReport, StoreError> {
    const CHUNK: i64 = 1000;
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
    let Some(limit) = now.checked_sub(shortest) else {
        return Ok(report);
    };
    let names: Vec<&str> = s.consumers.keys().map(String::as_str).collect();
    let mut after = -1i64;
    loop {
        let mut client = s.client().await?;
        let rows = client
            .query(
                "SELECT seq, municipality, rtype, category FROM kp_events \
                 WHERE seq > $1 AND seq < $2 ORDER BY seq LIMIT $3",
                &[&after, &sql_i64(limit), &CHUNK],
            )
            .await
            .map_err(read_err(s))?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.get(0);
        let past: Vec<i64> = rows
            .iter()
            .filter(|r| {
                let seq = from_i64(r.get(0));
                let org = Orgnr::from_u32(r.get::<_, i32>(1) as u32);
                policy
                    .keep_us(org, data_class(r.get(2), r.get(3)))
                    .is_some_and(|keep| now.saturating_sub(seq) > keep)
            })
            .map(|r| r.get(0))
            .collect();
        if past.is_empty() {
            continue;
        }
        let tx = client.transaction().await.map_err(write_err(s))?;
        let held: i64 = tx
            .query_one(HELD, &[&past, &names])
            .await
            .map_err(read_err(s))?
            .get(0);
        let removed = tx
            .query(REMOVE, &[&past, &names])
            .await
            .map_err(write_err(s))?;
        tx.commit().await.map_err(write_err(s))?;
        report.held += from_i64(held);
        report.removed += removed.len() as u64;
        if rows.len() < CHUNK as usize {
            break;
        }
    }
    Ok(report)
}

/// Whether a consumer (by name, among `$2`) still needs event `e.seq`:
/// pending from its log or queue, or a dead letter not discarded.
macro_rules! needed {
    () => {
        "(EXISTS (SELECT 1 FROM kp_queue q WHERE q.seq = e.seq AND q.consumer = ANY($2)) \
  OR EXISTS (SELECT 1 FROM kp_dead_letters d WHERE d.seq = e.seq AND d.discarded_at IS NULL \
             AND d.consumer = ANY($2)) \
  OR EXISTS (SELECT 1 FROM kp_consumers c WHERE c.name = ANY($2) AND NOT c.escalation_only \
             AND c.municipality = e.municipality AND e.seq > c.start_seq AND e.seq > c.floor_seq \
             AND NOT EXISTS (SELECT 1 FROM kp_settled st WHERE st.consumer = c.name AND st.seq = e.seq)))"
    };
}

const HELD: &str = concat!(
    "SELECT count(*) FROM kp_events e WHERE e.seq = ANY($1) AND ",
    needed!()
);

const REMOVE: &str = concat!(
    "WITH gone AS (DELETE FROM kp_events e WHERE e.seq = ANY($1) AND NOT ",
    needed!(),
    " RETURNING e.seq), \
     i AS (DELETE FROM kp_ids WHERE seq IN (SELECT seq FROM gone)), \
     st AS (DELETE FROM kp_settled WHERE seq IN (SELECT seq FROM gone)), \
     es AS (DELETE FROM kp_escalated WHERE seq IN (SELECT seq FROM gone)), \
     q AS (DELETE FROM kp_queue WHERE seq IN (SELECT seq FROM gone)), \
     l AS (DELETE FROM kp_leases WHERE seq IN (SELECT seq FROM gone)), \
     d AS (DELETE FROM kp_dead_letters WHERE seq IN (SELECT seq FROM gone)) \
     SELECT seq FROM gone"
);
