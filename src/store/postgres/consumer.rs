//! Destinations as consumers of the log, in tables every hub shares.
//!
//! A consumer's pending set is: the events of its municipality above
//! `max(start_seq, floor_seq)` without a `kp_settled` row, plus its
//! `kp_queue` rows. Every change to one consumer (take with lease, settle,
//! escalation, replay, discard) runs in a transaction that first locks the
//! consumer's `kp_consumers` row, so two hubs never lease the same item at
//! once and the floor never moves under a concurrent settle. Alarms are
//! read through the partial index on urgent rows, routine items in windows
//! of `CHUNK` through the index on (municipality, seq).

use std::collections::{BTreeMap, HashMap, HashSet};

use deadpool_postgres::{GenericClient, Pool, Transaction};
use tokio_postgres::types::ToSql;

use super::read::{RESOURCE_COLS, resource};
use super::{Shared, from_i64, read_err, sql_i64, write_err};
use crate::store::{Class, ConsumerSpec, ConsumerStats, OutboxItem, ResourceRef, StoreError};

mod settle;
pub(crate) use settle::settle;

/// Routine rows read per window.
const CHUNK: i64 = 512;

pub(crate) const DELIVERED: i16 = 1;
pub(crate) const DEAD: i16 = 2;

/// Registers every consumer not yet known (starting at the end of the log),
/// and drops the leases this hub id handed out before it stopped. Returns
/// the last seq.
pub(crate) async fn register(
    pool: &Pool,
    specs: &[ConsumerSpec],
    hub_id: &str,
) -> Result<u64, String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    let last: i64 = tx
        .query_one("SELECT last_seq FROM kp_sequencer WHERE id = 1", &[])
        .await
        .map_err(|e| super::describe(&e))?
        .get(0);
    for s in specs {
        tx.execute(
            "INSERT INTO kp_consumers (name, municipality, escalation_only, start_seq, floor_seq) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (name) DO NOTHING",
            &[
                &s.name,
                &(s.municipality.as_u32() as i32),
                &s.escalation_only,
                &last,
            ],
        )
        .await
        .map_err(|e| super::describe(&e))?;
    }
    tx.execute("DELETE FROM kp_leases WHERE hub_id = $1", &[&hub_id])
        .await
        .map_err(|e| super::describe(&e))?;
    tx.commit().await.map_err(|e| super::describe(&e))?;
    Ok(from_i64(last))
}

/// One consumer as a transaction sees it.
pub(crate) struct Cons<'a> {
    pub name: &'a str,
    pub spec: &'a ConsumerSpec,
    pub org: i32,
    pub start: i64,
    pub floor: i64,
}

impl Cons<'_> {
    /// Events at or below this are not pending from the log.
    pub(crate) fn base(&self) -> i64 {
        self.start.max(self.floor)
    }

    pub(crate) fn reads_log(&self) -> bool {
        !self.spec.escalation_only
    }
}

/// Reads the consumer's start and floor; `lock` takes its row lock.
pub(crate) async fn load<'a>(
    s: &'a Shared,
    c: &impl GenericClient,
    name: &'a str,
    lock: bool,
) -> Result<Cons<'a>, StoreError> {
    let spec = s.consumer(name)?;
    let sql = if lock {
        "SELECT start_seq, floor_seq FROM kp_consumers WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT start_seq, floor_seq FROM kp_consumers WHERE name = $1"
    };
    let row = c
        .query_opt(sql, &[&name])
        .await
        .map_err(read_err(s))?
        .ok_or_else(|| StoreError::Corrupt(format!("consumer {name:?} has no row")))?;
    Ok(Cons {
        name,
        spec,
        org: spec.municipality.as_u32() as i32,
        start: row.get(0),
        floor: row.get(1),
    })
}

/// What a transaction knows of one item.
#[derive(Debug, Clone)]
pub(crate) struct Info {
    pub class: Class,
    pub resource: Option<ResourceRef>,
    pub pending: bool,
}

fn patient(b: &[u8]) -> [u8; 16] {
    let mut p = [0u8; 16];
    if b.len() == 16 {
        p.copy_from_slice(b);
    }
    p
}

fn class(v: i16) -> Class {
    Class::from_tag(v as u8).unwrap_or(Class::Routine)
}

/// Pending state of `seqs` for `c` (events that no longer exist are absent).
pub(crate) async fn info(
    s: &Shared,
    tx: &impl GenericClient,
    c: &Cons<'_>,
    seqs: &[i64],
) -> Result<HashMap<i64, Info>, StoreError> {
    let rows = tx
        .query(
            "SELECT e.seq, e.class, e.rtype, e.id, \
               EXISTS (SELECT 1 FROM kp_queue q WHERE q.consumer = $1 AND q.seq = e.seq) \
               OR ($2 AND e.municipality = $3 AND e.seq > $4 AND NOT EXISTS \
                   (SELECT 1 FROM kp_settled st WHERE st.consumer = $1 AND st.seq = e.seq)) \
             FROM kp_events e WHERE e.seq = ANY($5)",
            &[&c.name, &c.reads_log(), &c.org, &c.base(), &seqs],
        )
        .await
        .map_err(read_err(s))?;
    let mut out = HashMap::new();
    for r in rows {
        let rtype: i16 = r.get(2);
        out.insert(
            r.get::<_, i64>(0),
            Info {
                class: class(r.get(1)),
                resource: crate::domain::ResourceType::from_tag(rtype as u8).map(|t| ResourceRef {
                    resource_type: t,
                    id: r.get(3),
                }),
                pending: r.get(4),
            },
        );
    }
    Ok(out)
}

/// A candidate for `take`.
struct Cand {
    seq: i64,
    class: Class,
    patient: [u8; 16],
    answers: Option<i64>,
    leased: bool,
}

fn cand(r: &tokio_postgres::Row) -> Cand {
    Cand {
        seq: r.get(0),
        class: class(r.get(1)),
        patient: patient(r.get(2)),
        answers: r.get(3),
        leased: r.get(4),
    }
}

const CAND_COLS: &str = "e.seq, e.class, e.patient, e.answers, EXISTS (SELECT 1 FROM kp_leases l \
     WHERE l.consumer = $1 AND l.seq = e.seq AND l.lease_until > $2)";

pub(crate) const NOT_SETTLED: &str =
    "NOT EXISTS (SELECT 1 FROM kp_settled st WHERE st.consumer = $1 AND st.seq = e.seq)";

pub(crate) async fn take(
    s: &Shared,
    name: &str,
    max: usize,
    now: u64,
    lease_until: Option<u64>,
) -> Result<Vec<OutboxItem>, StoreError> {
    let mut client = s.client().await?;
    let tx = client.transaction().await.map_err(write_err(s))?;
    let c = load(s, &tx, name, true).await?;
    if max == 0 {
        return Ok(Vec::new());
    }
    let now = sql_i64(now);
    // Queue rows and urgent log rows: few, read whole (leased ones too, for
    // the note-after-alarm rule).
    let mut sql = format!(
        "SELECT {CAND_COLS} FROM kp_queue q JOIN kp_events e ON e.seq = q.seq WHERE q.consumer = $1"
    );
    if c.reads_log() {
        sql.push_str(&format!(
            " UNION SELECT {CAND_COLS} FROM kp_events e WHERE e.municipality = $3 AND e.class < 2 \
              AND e.seq > $4 AND {NOT_SETTLED}"
        ));
    }
    let base = c.base();
    let params: Vec<&(dyn ToSql + Sync)> = if c.reads_log() {
        vec![&c.name, &now, &c.org, &base]
    } else {
        vec![&c.name, &now]
    };
    let rows = tx.query(sql.as_str(), &params).await.map_err(read_err(s))?;
    let few: BTreeMap<(Class, i64), Cand> = rows
        .iter()
        .map(cand)
        .map(|k| ((k.class, k.seq), k))
        .collect();
    let known: HashSet<i64> = few.values().map(|k| k.seq).collect();
    let mut pick = Picker {
        max,
        out: Vec::new(),
        taken: HashSet::new(),
        blocked: HashSet::new(),
        known,
        checked: HashMap::new(),
    };
    for k in few.values().filter(|k| k.class.is_urgent()) {
        pick.offer(s, &tx, &c, k).await?;
    }
    let queued: Vec<&Cand> = few.values().filter(|k| !k.class.is_urgent()).collect();
    routine(s, &tx, &c, now, &queued, &mut pick).await?;
    if let Some(until) = lease_until
        && !pick.out.is_empty()
    {
        tx.execute(
            "INSERT INTO kp_leases (consumer, seq, lease_until, hub_id) \
             SELECT $1, x, $3, $4 FROM unnest($2::bigint[]) AS x \
             ON CONFLICT (consumer, seq) DO UPDATE SET lease_until = EXCLUDED.lease_until, \
             hub_id = EXCLUDED.hub_id",
            &[&c.name, &pick.out, &sql_i64(until), &s.hub_id],
        )
        .await
        .map_err(write_err(s))?;
    }
    let items = outbox(s, &tx, &c, &pick.out).await?;
    tx.commit().await.map_err(write_err(s))?;
    Ok(items)
}

/// Routine candidates in seq order: the queue's merged with windows of the
/// log, until `max` are picked or the log is read to its end.
async fn routine(
    s: &Shared,
    tx: &Transaction<'_>,
    c: &Cons<'_>,
    now: i64,
    queued: &[&Cand],
    pick: &mut Picker,
) -> Result<(), StoreError> {
    let mut cursor = c.base();
    let mut qi = 0;
    loop {
        if pick.full() {
            return Ok(());
        }
        let window: Vec<Cand> = if c.reads_log() {
            let sql = format!(
                "SELECT {CAND_COLS} FROM kp_events e WHERE e.municipality = $3 AND e.class = 2 \
                 AND e.seq > $4 AND {NOT_SETTLED} ORDER BY e.seq LIMIT $5"
            );
            tx.query(sql.as_str(), &[&c.name, &now, &c.org, &cursor, &CHUNK])
                .await
                .map_err(read_err(s))?
                .iter()
                .map(cand)
                .collect()
        } else {
            Vec::new()
        };
        let end = window.len() < CHUNK as usize;
        let bound = if end {
            i64::MAX
        } else {
            window.last().map_or(i64::MAX, |k| k.seq)
        };
        let mut merged: BTreeMap<i64, &Cand> = window.iter().map(|k| (k.seq, k)).collect();
        while qi < queued.len() && queued[qi].seq <= bound {
            merged.entry(queued[qi].seq).or_insert(queued[qi]);
            qi += 1;
        }
        for k in merged.values() {
            if pick.full() {
                return Ok(());
            }
            pick.offer(s, tx, c, k).await?;
        }
        if end {
            return Ok(());
        }
        cursor = bound;
    }
}

/// The take rules applied to candidates in (class, seq) order.
struct Picker {
    max: usize,
    out: Vec<i64>,
    taken: HashSet<i64>,
    /// Patients whose routine items wait for an alarm (FIFO per patient).
    blocked: HashSet<[u8; 16]>,
    /// Seqs known pending for the consumer (queue and urgent log rows).
    known: HashSet<i64>,
    checked: HashMap<i64, bool>,
}

impl Picker {
    fn full(&self) -> bool {
        self.out.len() >= self.max
    }

    async fn offer(
        &mut self,
        s: &Shared,
        tx: &Transaction<'_>,
        c: &Cons<'_>,
        k: &Cand,
    ) -> Result<(), StoreError> {
        if self.full() || k.leased || self.taken.contains(&k.seq) {
            return Ok(());
        }
        if k.class == Class::Routine {
            if self.blocked.contains(&k.patient) {
                return Ok(());
            }
            if let Some(alarm) = k.answers
                && !self.taken.contains(&alarm)
                && self.pending(s, tx, c, alarm).await?
            {
                self.blocked.insert(k.patient);
                return Ok(());
            }
        }
        self.taken.insert(k.seq);
        self.out.push(k.seq);
        Ok(())
    }

    async fn pending(
        &mut self,
        s: &Shared,
        tx: &Transaction<'_>,
        c: &Cons<'_>,
        seq: i64,
    ) -> Result<bool, StoreError> {
        if self.known.contains(&seq) {
            return Ok(true);
        }
        if let Some(p) = self.checked.get(&seq) {
            return Ok(*p);
        }
        let p = info(s, tx, c, &[seq])
            .await?
            .get(&seq)
            .is_some_and(|i| i.pending);
        self.checked.insert(seq, p);
        Ok(p)
    }
}

/// The picked items with their resources, in the order picked.
async fn outbox(
    s: &Shared,
    tx: &Transaction<'_>,
    c: &Cons<'_>,
    seqs: &[i64],
) -> Result<Vec<OutboxItem>, StoreError> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let rows = tx
        .query(
            &format!(
                "SELECT e.class, e.patient, {RESOURCE_COLS} FROM kp_events e WHERE e.seq = ANY($1)"
            ),
            &[&seqs],
        )
        .await
        .map_err(read_err(s))?;
    let mut by_seq = HashMap::new();
    for r in &rows {
        let res = resource(r, 2)?;
        by_seq.insert(res.seq, (class(r.get(0)), patient(r.get(1)), res));
    }
    Ok(seqs
        .iter()
        .filter_map(|q| by_seq.remove(&from_i64(*q)))
        .map(|(class, patient, resource)| OutboxItem {
            destination: c.name.to_string(),
            class,
            patient,
            resource,
        })
        .collect())
}

pub(crate) async fn stats(s: &Shared, name: &str) -> Result<ConsumerStats, StoreError> {
    let spec = s.consumer(name)?;
    // One statement: one snapshot of floor, settled rows and queue.
    let client = s.client().await?;
    let row = client
        .query_opt(
            &format!(
                "WITH c AS (SELECT start_seq, floor_seq FROM kp_consumers WHERE name = $1), \
                 u AS (SELECT e.seq FROM kp_events e, c WHERE $2 AND e.municipality = $3 \
                   AND e.seq > greatest(c.start_seq, c.floor_seq) AND {NOT_SETTLED} \
                   UNION SELECT q.seq FROM kp_queue q WHERE q.consumer = $1) \
                 SELECT (SELECT count(*) FROM u), (SELECT min(seq) FROM u), c.floor_seq FROM c"
            ),
            &[
                &name,
                &!spec.escalation_only,
                &(spec.municipality.as_u32() as i32),
            ],
        )
        .await
        .map_err(read_err(s))?
        .ok_or_else(|| StoreError::Corrupt(format!("consumer {name:?} has no row")))?;
    Ok(ConsumerStats {
        pending: from_i64(row.get(0)),
        oldest: row.get::<_, Option<i64>>(1).map(from_i64),
        floor: from_i64(row.get(2)),
    })
}
