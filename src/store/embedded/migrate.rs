//! `knutepunkt migrate`: moves a store of the sled era (one sled tree, see
//! git history for `src/store/sled.rs`) into this layout, offline.
//!
//! What moves: every event (same `seq`, so `_lastUpdated`, cursors and
//! resource ids stay), its idempotency key, the audit trail, used assertion
//! ids, dead letters (and discarded ones), escalation marks, and each
//! destination's queue: the old outbox entries become the consumer's floor
//! and the items settled above it. Leases are not moved (they only delay a
//! re-offer). The old formats are read here and nowhere else; this module
//! is why sled is still a dependency.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::keys::{self, DlqRecord, IdEntry, Record};
use super::{OpenError, Spaces, check_layout, now_micros, open_spaces, writer};
use crate::store::audit::AuditRecord;
use crate::store::{Class, ConsumerSpec, StoreError, time_to_seq};

/// What was moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MigrateReport {
    pub events: u64,
    pub audit_records: u64,
    pub used_jtis: u64,
    pub dead_letters: u64,
    pub consumers: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot read the old store at {path}: {msg}")]
    Old { path: String, msg: String },
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot write the new store: {0}")]
    Store(#[from] StoreError),
    #[error("the new store at {0} is not empty; migrate into a fresh directory")]
    NotEmpty(String),
}

/// The old `R` value.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct OldRecord<'a> {
    org: u32,
    rtype: u8,
    id: [u8; 16],
    patient: [u8; 16],
    #[serde(borrow)]
    category: &'a str,
    #[serde(borrow)]
    codes: Vec<(&'a str, &'a str)>,
    #[serde(borrow)]
    json: &'a str,
}

/// The old `D` value.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct OldIdem {
    hash: [u8; 32],
    #[allow(dead_code)]
    org: u32,
    #[allow(dead_code)]
    rtype: u8,
    id: [u8; 16],
    is_alarm: bool,
}

/// The old `Q` value.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct OldDlq {
    class: u8,
    attempts: u32,
    error: String,
    response: Option<String>,
    at: String,
    #[allow(dead_code)]
    patient: [u8; 16],
}

/// The old `S` value (only `Discarded` is moved: the rest folds into floors).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[allow(dead_code)]
enum OldState {
    Pending,
    Leased { until: String },
    Delivered { at: String },
    DeadLettered { at: String, error: String },
    Discarded { at: String, reason: String },
}

/// What the JSON of an old record says that the new record keeps as fields.
#[derive(Deserialize)]
struct Facts {
    priority: Option<String>,
    #[serde(default, rename = "inResponseTo")]
    in_response_to: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    reference: Option<String>,
}

fn micros(rfc3339: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|d| time_to_seq(d.with_timezone(&chrono::Utc)))
        .unwrap_or_else(|_| now_micros())
}

/// `table` + length-prefixed name + seq, as the old keys were laid out.
fn old_name_seq(key: &[u8]) -> Option<(String, u64)> {
    let n = *key.get(1)? as usize;
    let name = std::str::from_utf8(key.get(2..2 + n)?).ok()?.to_string();
    Some((name, keys::be_u64(key.get(2 + n..)?)?))
}

/// Moves the sled store at `old` into a new store at `new`. `progress` is
/// called with the number of events moved so far.
pub fn from_sled(
    old: &Path,
    new: &Path,
    specs: &[ConsumerSpec],
    progress: &mut dyn FnMut(u64),
) -> Result<MigrateReport, MigrateError> {
    let oerr = |e: sled::Error| MigrateError::Old {
        path: old.display().to_string(),
        msg: e.to_string(),
    };
    let sdb = sled::Config::new().path(old).open().map_err(oerr)?;
    let (db, ks) = open_spaces(new, 64 * 1024 * 1024)?;
    if ks.log.first_key_value().is_some() {
        return Err(MigrateError::NotEmpty(new.display().to_string()));
    }
    check_layout(new, &db, &ks)?;
    let mut report = MigrateReport::default();
    let moved = move_events(&sdb, &db, &ks, &mut report, progress, oerr)?;

    let mut batch = db.batch();
    move_audit_and_jti(&sdb, &ks, &mut batch, &mut report, oerr)?;
    move_consumers(&sdb, &ks, &mut batch, specs, &moved, &mut report, oerr)?;
    batch.commit().map_err(super::write)?;
    db.persist(fjall::PersistMode::SyncAll)
        .map_err(super::write)?;
    Ok(report)
}

/// The events moved: each municipality's seqs, and the last seq.
struct Moved {
    by_org: HashMap<u32, Vec<u64>>,
    last_seq: u64,
}

/// Moves every event with its idempotency entry, in batches of 2,000.
fn move_events(
    sdb: &sled::Db,
    db: &fjall::Database,
    ks: &Spaces,
    report: &mut MigrateReport,
    progress: &mut dyn FnMut(u64),
    oerr: impl Fn(sled::Error) -> MigrateError + Copy,
) -> Result<Moved, MigrateError> {
    // Idempotency entries by resource id (the new key of both).
    let mut idem: HashMap<[u8; 16], ([u8; 32], bool)> = HashMap::new();
    for kv in sdb.scan_prefix([b'D']) {
        let (_, v) = kv.map_err(oerr)?;
        let e: OldIdem = postcard::from_bytes(&v).map_err(|_| corrupt("idempotency entry"))?;
        idem.insert(e.id, (e.hash, e.is_alarm));
    }
    let mut batch = db.batch();
    let mut moved = Moved {
        by_org: HashMap::new(),
        last_seq: 0,
    };
    for kv in sdb.scan_prefix([b'R']) {
        let (k, v) = kv.map_err(oerr)?;
        let seq = keys::be_u64(&k[1..]).ok_or_else(|| corrupt("record key"))?;
        let old: OldRecord = postcard::from_bytes(&v).map_err(|_| corrupt("record"))?;
        let (record, entry) = new_record(sdb, seq, old, &idem, oerr)?;
        writer::stage_keys(
            ks,
            &mut batch,
            seq,
            &record,
            keys::encode(&record)?,
            keys::encode(&entry)?,
        );
        moved.by_org.entry(record.org).or_default().push(seq);
        moved.last_seq = seq;
        report.events += 1;
        if report.events.is_multiple_of(2_000) {
            batch.commit().map_err(super::write)?;
            batch = db.batch();
            progress(report.events);
        }
    }
    batch.commit().map_err(super::write)?;
    progress(report.events);
    Ok(moved)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("old store: {what}"))
}

/// An old record as a new record and idempotency entry: the class and the
/// answered alarm come out of its JSON.
fn new_record<'a>(
    sdb: &sled::Db,
    seq: u64,
    old: OldRecord<'a>,
    idem: &HashMap<[u8; 16], ([u8; 32], bool)>,
    oerr: impl Fn(sled::Error) -> MigrateError,
) -> Result<(Record<'a>, IdEntry), MigrateError> {
    let facts: Facts = serde_json::from_str(old.json).map_err(|_| corrupt("record JSON"))?;
    let class = match (old.category, facts.priority.as_deref()) {
        ("alert", Some("stat")) => Class::Red,
        ("alert", Some("asap")) => Class::Yellow,
        _ => Class::Routine,
    };
    let answers = match facts
        .in_response_to
        .first()
        .and_then(|r| r.reference.as_deref())
        .and_then(|r| r.strip_prefix("Communication/"))
        .and_then(|u| uuid::Uuid::parse_str(u).ok())
    {
        // The answered alarm's seq, by its resource id.
        Some(alarm) => {
            let mut k = vec![b'I'];
            k.extend_from_slice(alarm.as_bytes());
            sdb.get(k)
                .map_err(oerr)?
                .and_then(|v| keys::be_u64(&v))
                .unwrap_or(0)
        }
        None => 0,
    };
    let (hash, is_alarm) = idem.get(&old.id).copied().unwrap_or(([0; 32], false));
    let entry = IdEntry {
        seq,
        hash,
        org: old.org,
        rtype: old.rtype,
        is_alarm,
    };
    let record = Record {
        org: old.org,
        rtype: old.rtype,
        id: old.id,
        patient: old.patient,
        class: class as u8,
        answers,
        category: old.category,
        codes: old.codes,
        json: old.json,
    };
    Ok((record, entry))
}

fn move_audit_and_jti(
    sdb: &sled::Db,
    ks: &Spaces,
    batch: &mut fjall::OwnedWriteBatch,
    report: &mut MigrateReport,
    oerr: impl Fn(sled::Error) -> MigrateError,
) -> Result<(), MigrateError> {
    for kv in sdb.scan_prefix([b'A']) {
        let (k, v) = kv.map_err(&oerr)?;
        let rec: AuditRecord = postcard::from_bytes(&v)
            .map_err(|_| StoreError::Corrupt("old store: audit record".into()))?;
        batch.insert(&ks.audit, k.to_vec(), keys::encode(&rec)?);
        report.audit_records += 1;
    }
    // Index keys and used jtis keep their bytes (the jti keyspace drops the
    // old table byte).
    for table in [b'B', b'b'] {
        for kv in sdb.scan_prefix([table]) {
            let (k, _) = kv.map_err(&oerr)?;
            batch.insert(&ks.audit, k.to_vec(), []);
        }
    }
    for kv in sdb.scan_prefix([b'J']) {
        let (k, v) = kv.map_err(&oerr)?;
        batch.insert(&ks.jti, k[1..].to_vec(), v.to_vec());
        report.used_jtis += 1;
    }
    Ok(())
}

fn move_consumers(
    sdb: &sled::Db,
    ks: &Spaces,
    batch: &mut fjall::OwnedWriteBatch,
    specs: &[ConsumerSpec],
    moved: &Moved,
    report: &mut MigrateReport,
    oerr: impl Fn(sled::Error) -> MigrateError + Copy,
) -> Result<(), MigrateError> {
    for spec in specs {
        let name = spec.name.as_str();
        let queue = old_queue(sdb, name, oerr)?;
        if spec.escalation_only {
            // No log cursor: its queue is explicit.
            for (seq, (class, patient)) in &queue {
                batch.insert(
                    &ks.cons,
                    keys::name_seq(Some(b'Q'), name, *seq),
                    keys::class_patient(*class, patient),
                );
            }
            batch.insert(
                &ks.cons,
                keys::name_prefix(Some(b'F'), name),
                keys::floor_value(moved.last_seq, moved.last_seq),
            );
        } else {
            write_floor(ks, batch, spec, &queue, moved);
        }
        for kv in sdb.scan_prefix(keys::name_prefix(Some(b'E'), name)) {
            let (k, _) = kv.map_err(oerr)?;
            if let Some((_, seq)) = old_name_seq(&k) {
                batch.insert(&ks.cons, keys::name_seq(Some(b'E'), name, seq), []);
            }
        }
        move_dead_letters(sdb, ks, batch, name, report, oerr)?;
        report.consumers += 1;
    }
    Ok(())
}

/// A destination's old outbox entries (`O` name class seq → patient):
/// seq → (class, patient).
fn old_queue(
    sdb: &sled::Db,
    name: &str,
    oerr: impl Fn(sled::Error) -> MigrateError,
) -> Result<BTreeMap<u64, (Class, [u8; 16])>, MigrateError> {
    let mut queue = BTreeMap::new();
    for kv in sdb.scan_prefix(keys::name_prefix(Some(b'O'), name)) {
        let (k, v) = kv.map_err(&oerr)?;
        let Ok(seq) = keys::tail_seq(&k) else {
            continue;
        };
        let class = k
            .len()
            .checked_sub(9)
            .and_then(|i| Class::from_tag(k[i]))
            .unwrap_or(Class::Routine);
        let patient: [u8; 16] = v.as_ref().try_into().unwrap_or([0; 16]);
        queue.insert(seq, (class, patient));
    }
    Ok(queue)
}

/// A log-reading destination: its floor sits just below its oldest queued
/// item, and every event of its municipality above the floor that it no
/// longer had queued is settled as delivered.
fn write_floor(
    ks: &Spaces,
    batch: &mut fjall::OwnedWriteBatch,
    spec: &ConsumerSpec,
    queue: &BTreeMap<u64, (Class, [u8; 16])>,
    moved: &Moved,
) {
    let name = spec.name.as_str();
    let now = now_micros();
    let floor = queue
        .keys()
        .next()
        .map_or(moved.last_seq, |first| first.saturating_sub(1));
    for seq in moved
        .by_org
        .get(&spec.municipality.as_u32())
        .into_iter()
        .flatten()
        .filter(|s| **s > floor && !queue.contains_key(s))
    {
        batch.insert(
            &ks.cons,
            keys::name_seq(Some(b'S'), name, *seq),
            keys::settled_value(keys::SETTLED_DELIVERED, now),
        );
    }
    batch.insert(
        &ks.cons,
        keys::name_prefix(Some(b'F'), name),
        keys::floor_value(0, floor),
    );
}

/// A destination's dead letters (`Q`) and discarded items (`S` Discarded).
fn move_dead_letters(
    sdb: &sled::Db,
    ks: &Spaces,
    batch: &mut fjall::OwnedWriteBatch,
    name: &str,
    report: &mut MigrateReport,
    oerr: impl Fn(sled::Error) -> MigrateError,
) -> Result<(), MigrateError> {
    for kv in sdb.scan_prefix(keys::name_prefix(Some(b'Q'), name)) {
        let (k, v) = kv.map_err(&oerr)?;
        let (Some((_, seq)), Ok(d)) = (old_name_seq(&k), postcard::from_bytes::<OldDlq>(&v)) else {
            continue;
        };
        let rec = DlqRecord {
            class: d.class,
            attempts: d.attempts,
            error: d.error,
            response: d.response,
            at: micros(&d.at),
            discarded: None,
        };
        batch.insert(
            &ks.dlq,
            keys::name_seq(None, name, seq),
            keys::encode(&rec)?,
        );
        report.dead_letters += 1;
    }
    for kv in sdb.scan_prefix(keys::name_prefix(Some(b'S'), name)) {
        let (k, v) = kv.map_err(&oerr)?;
        let (Some((_, seq)), Ok(OldState::Discarded { at, reason })) =
            (old_name_seq(&k), postcard::from_bytes::<OldState>(&v))
        else {
            continue;
        };
        let rec = DlqRecord {
            class: Class::Routine as u8,
            attempts: 0,
            error: String::new(),
            response: None,
            at: micros(&at),
            discarded: Some((micros(&at), reason)),
        };
        batch.insert(
            &ks.dlq,
            keys::name_seq(None, name, seq),
            keys::encode(&rec)?,
        );
    }
    Ok(())
}

#[cfg(test)]
#[path = "migrate_tests.rs"]
mod tests;
