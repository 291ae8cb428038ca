//! Reads: a resource by id, and searches over the index keys.
//!
//! Every read ignores what is above the `visible` watermark, so nothing an
//! EPJ reads can vanish in a crash.

use super::keys::{self, IdEntry, Record};
use super::{Shared, read};
use crate::domain::{Orgnr, ResourceType};
use crate::store::{
    ResourceRef, SearchPage, SearchQuery, StoreError, StoredResource, Token, with_meta,
};

/// The raw record under `seq`, if any.
pub(crate) fn raw_record(s: &Shared, seq: u64) -> Result<Option<fjall::Slice>, StoreError> {
    s.ks.log.get(keys::seq_key(seq)).map_err(read)
}

pub(crate) fn materialize(seq: u64, raw: &[u8]) -> Result<StoredResource, StoreError> {
    let rec: Record = keys::decode(raw)?;
    let resource_type = ResourceType::from_tag(rec.rtype)
        .ok_or_else(|| StoreError::Corrupt(format!("record {seq}: type {}", rec.rtype)))?;
    Ok(StoredResource {
        seq,
        municipality: Orgnr::from_u32(rec.org),
        resource: ResourceRef {
            resource_type,
            id: uuid::Uuid::from_bytes(rec.id),
        },
        json: with_meta(rec.json, seq),
    })
}

/// The resource under `seq`, which an index or queue says exists.
pub(crate) fn resource_at(s: &Shared, seq: u64) -> Result<StoredResource, StoreError> {
    let raw = raw_record(s, seq)?
        .ok_or_else(|| StoreError::Corrupt(format!("index points at missing record {seq}")))?;
    materialize(seq, &raw)
}

pub(crate) fn get(
    s: &Shared,
    municipality: Orgnr,
    resource_type: ResourceType,
    id: uuid::Uuid,
) -> Result<Option<StoredResource>, StoreError> {
    let Some(v) = s.ks.ids.get(id.as_bytes()).map_err(read)? else {
        return Ok(None);
    };
    let entry: IdEntry = keys::decode(&v)?;
    if entry.seq > s.visible()
        || entry.org != municipality.as_u32()
        || entry.rtype != resource_type.tag()
    {
        return Ok(None);
    }
    match raw_record(s, entry.seq)? {
        Some(raw) => materialize(entry.seq, &raw).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn search(s: &Shared, q: &SearchQuery) -> Result<SearchPage, StoreError> {
    let visible = s.visible();
    let (mut lo, mut hi) = (q.min_seq, q.max_seq.min(visible));
    match (q.after, q.descending) {
        (Some(a), false) => lo = lo.max(a.saturating_add(1)),
        (Some(a), true) => hi = hi.min(a.saturating_sub(1)),
        (None, _) => {}
    }
    let count = q.count.max(1);
    let (org, rt) = (q.municipality.as_u32(), q.resource_type.tag());
    // The most selective index first; the rest is filtered per record. The
    // category has no index of its own: a resource type has one or two
    // categories, so a type scan filtered by category reads little more.
    let prefixes: Vec<Vec<u8>> = if let Some(p) = &q.patient {
        vec![keys::index_prefix(b'P', org, rt, p)]
    } else if !q.codes.is_empty() {
        let mut codes: Vec<&str> = q.codes.iter().map(|t| t.code.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        codes
            .into_iter()
            .map(|c| keys::index_prefix(b'C', org, rt, &keys::short_hash(c)))
            .collect()
    } else {
        vec![keys::index_prefix(b'T', org, rt, &[])]
    };
    let mut items = Vec::new();
    for p in &prefixes {
        items.extend(scan_index(s, p, lo, hi, q.descending, count + 1, q)?);
    }
    if prefixes.len() > 1 {
        // FHIR's comma (OR) over several code indexes: merge by seq.
        items.sort_by_key(|r| r.seq);
        items.dedup_by_key(|r| r.seq);
        if q.descending {
            items.reverse();
        }
    }
    let next = if items.len() > count {
        items.truncate(count);
        items.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(SearchPage { items, next })
}

/// Scans one index prefix in seq order within `lo..=hi` and returns up to
/// `limit` matching records.
fn scan_index(
    s: &Shared,
    prefix: &[u8],
    lo: u64,
    hi: u64,
    descending: bool,
    limit: usize,
    q: &SearchQuery,
) -> Result<Vec<StoredResource>, StoreError> {
    let mut out = Vec::new();
    if lo > hi {
        return Ok(out);
    }
    let start = keys::with_seq(prefix.to_vec(), lo);
    let end = keys::with_seq(prefix.to_vec(), hi);
    let range = s.ks.idx.range(start..=end);
    let iter: Box<dyn Iterator<Item = fjall::Guard>> = if descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    for g in iter {
        let k = g.key().map_err(read)?;
        let seq = keys::tail_seq(&k)?;
        let Some(raw) = raw_record(s, seq)? else {
            // Removed by retention between the index read and this one.
            continue;
        };
        let rec: Record = keys::decode(&raw)?;
        if !matches(&rec, q) {
            continue;
        }
        out.push(materialize(seq, &raw)?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The filters an index scan did not already apply.
fn matches(rec: &Record, q: &SearchQuery) -> bool {
    if rec.org != q.municipality.as_u32() || rec.rtype != q.resource_type.tag() {
        return false;
    }
    if let Some(p) = &q.patient
        && &rec.patient != p
    {
        return false;
    }
    if let Some(c) = &q.category
        && rec.category != c
    {
        return false;
    }
    if !q.codes.is_empty() && !q.codes.iter().any(|t| token_matches(t, &rec.codes)) {
        return false;
    }
    true
}

fn token_matches(t: &Token, codes: &[(&str, &str)]) -> bool {
    codes
        .iter()
        .any(|(s, c)| *c == t.code && t.system.as_deref().is_none_or(|ts| ts == *s))
}
