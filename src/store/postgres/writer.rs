//! The writer task and its group commit on PostgreSQL.
//!
//! It takes every request waiting (up to `max_batch`): events, audit records
//! and used assertion ids, and writes them in one transaction:
//!
//! 1. `pg_advisory_xact_lock(SEQ_LOCK)`: held until COMMIT, so group
//!    transactions of every hub commit one at a time;
//! 2. read the sequencer row and the database clock, and the idempotency
//!    rows of the group's events (and of the alarms notes answer);
//! 3. decide each request (as the embedded writer does) and give each new
//!    event `seq = max(last + 1, now)`;
//! 4. one multi-row INSERT for the events, one upsert for their ids, one
//!    INSERT for audit records, one statement per jti, the sequencer
//!    update and `pg_notify`; COMMIT.
//!
//! Only after COMMIT returns is anyone answered. A failed transaction or
//! COMMIT refuses the group with UNAVAILABLE (nothing acknowledged); a lost
//! answer to COMMIT may hide a commit, which a resend then meets as a
//! DUPLICATE.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::{PostgresOptions, Shared, describe, from_i64, sql_i64};
use crate::store::audit::AuditRecord;
use crate::store::{NewRecord, PutError, PutOutcome, ResourceRef, StoreError};

/// The advisory lock every group transaction takes first.
pub(crate) const SEQ_LOCK: i64 = 7_403_251;

pub(crate) enum Req {
    Put(
        Box<NewRecord>,
        oneshot::Sender<Result<PutOutcome, PutError>>,
    ),
    Audit(
        Vec<AuditRecord>,
        oneshot::Sender<Result<Vec<u64>, StoreError>>,
    ),
    Jti {
        client: String,
        jti: String,
        exp: u64,
        now: u64,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
}

enum Answer {
    Put(Result<PutOutcome, PutError>),
    Audit(Result<Vec<u64>, StoreError>),
    Jti(Result<bool, StoreError>),
}

/// An idempotency row as the group sees it.
#[derive(Clone, Copy)]
struct IdRow {
    seq: u64,
    hash: [u8; 32],
    org: u32,
    rtype: u8,
    is_alarm: bool,
}

/// One event row to insert.
struct EventRow<'a> {
    seq: i64,
    rec: &'a NewRecord,
    answers: Option<i64>,
}

/// A group decided and ready to write: its rows, where the sequencer ends,
/// and each request's answer (sent only after COMMIT).
struct Staged<'a> {
    last_seq: u64,
    last_audit: u64,
    events: Vec<EventRow<'a>>,
    audits: Vec<(i64, &'a AuditRecord)>,
    answers: Vec<Answer>,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    max_batch: usize,
    window_us: u64,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, opts: &PostgresOptions) -> Writer {
        Writer {
            shared,
            max_batch: opts.max_batch.max(1),
            window_us: opts.idempotency_window_us,
        }
    }

    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Req>) {
        let mut group = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.recv().await {
            group.push(first);
            while group.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            let answers = match self.commit_group(&group).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, requests = group.len(), "store group transaction failed; nothing in it was acknowledged");
                    let err = PutError::Unavailable(e);
                    group.iter().map(|r| refuse(r, &err)).collect()
                }
            };
            for (req, answer) in group.drain(..).zip(answers) {
                match (req, answer) {
                    (Req::Put(_, reply), Answer::Put(a)) => drop(reply.send(a)),
                    (Req::Audit(_, reply), Answer::Audit(a)) => drop(reply.send(a)),
                    (Req::Jti { reply, .. }, Answer::Jti(a)) => drop(reply.send(a)),
                    _ => {}
                }
            }
        }
        tracing::debug!("store writer stopped");
    }

    /// Writes one group in one transaction; `Err` says why nothing of it
    /// may be acknowledged.
    async fn commit_group(&self, reqs: &[Req]) -> Result<Vec<Answer>, String> {
        let s = &self.shared;
        let fail = |e: tokio_postgres::Error| {
            if e.is_closed() || e.as_db_error().is_none() {
                s.mark_unreachable(&e.to_string());
            }
            format!("the database did not take the write ({})", describe(&e))
        };
        let started = Instant::now();
        let mut client = s.pool.get().await.map_err(|e| {
            s.mark_unreachable(&e.to_string());
            format!("cannot reach PostgreSQL ({e})")
        })?;
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SEQ_LOCK])
            .await
            .map_err(fail)?;
        let staged = self.stage_group(&tx, reqs).await.map_err(fail)?;
        write_group(&tx, &staged).await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        metrics::histogram!("knutepunkt_store_commit_seconds").record(started.elapsed());
        metrics::histogram!("knutepunkt_store_group_size").record(reqs.len() as f64);
        metrics::histogram!("knutepunkt_store_rows_per_transaction")
            .record((staged.events.len() + staged.audits.len()) as f64);
        tracing::trace!(
            events = staged.events.len(),
            audit = staged.audits.len(),
            "group transaction committed"
        );
        if !staged.events.is_empty() {
            s.committed.send_replace(staged.last_seq);
        }
        Ok(staged.answers)
    }

    /// Reads the sequencer and the group's idempotency rows, and decides
    /// each request in order (a jti is claimed right away, in `tx`).
    async fn stage_group<'a>(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        reqs: &'a [Req],
    ) -> Result<Staged<'a>, tokio_postgres::Error> {
        let row = tx
            .query_one(
                "SELECT last_seq, last_audit, \
                 (extract(epoch FROM clock_timestamp()) * 1000000)::bigint \
                 FROM kp_sequencer WHERE id = 1",
                &[],
            )
            .await?;
        let (mut last_seq, mut last_audit) = (from_i64(row.get(0)), from_i64(row.get(1)));
        let now = from_i64(row.get(2));
        let mut ids = self.load_ids(tx, reqs).await?;
        let mut events: Vec<EventRow> = Vec::new();
        let mut audits: Vec<(i64, &AuditRecord)> = Vec::new();
        let mut answers = Vec::with_capacity(reqs.len());
        for r in reqs {
            answers.push(match r {
                Req::Put(rec, _) => {
                    Answer::Put(self.stage_event(rec, now, &mut last_seq, &mut ids, &mut events))
                }
                Req::Audit(records, _) => {
                    let mut seqs = Vec::with_capacity(records.len());
                    for rec in records {
                        last_audit = (last_audit + 1).max(now);
                        audits.push((sql_i64(last_audit), rec));
                        seqs.push(last_audit);
                    }
                    Answer::Audit(Ok(seqs))
                }
                Req::Jti {
                    client,
                    jti,
                    exp,
                    now,
                    ..
                } => Answer::Jti(Ok(claim(tx, client, jti, *exp, *now).await?)),
            });
        }
        Ok(Staged {
            last_seq,
            last_audit,
            events,
            audits,
            answers,
        })
    }

    /// The idempotency rows of every event in the group and of every alarm
    /// a note answers, by (vendor, event_id).
    async fn load_ids(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        reqs: &[Req],
    ) -> Result<HashMap<(String, String), IdRow>, tokio_postgres::Error> {
        let (mut vendors, mut eids) = (Vec::new(), Vec::new());
        for r in reqs {
            if let Req::Put(rec, _) = r {
                vendors.push(rec.vendor.0.as_str());
                eids.push(rec.event_id.as_str());
                if let Some(a) = &rec.answers_alarm {
                    vendors.push(rec.vendor.0.as_str());
                    eids.push(a.as_str());
                }
            }
        }
        let mut out = HashMap::new();
        if vendors.is_empty() {
            return Ok(out);
        }
        let rows = tx
            .query(
                "SELECT i.vendor, i.event_id, i.seq, i.content_hash, i.municipality, i.rtype, i.is_alarm \
                 FROM kp_ids i JOIN unnest($1::text[], $2::text[]) AS k(v, e) \
                 ON i.vendor = k.v AND i.event_id = k.e",
                &[&vendors, &eids],
            )
            .await?;
        for row in rows {
            let hash: &[u8] = row.get(3);
            let mut h = [0u8; 32];
            if hash.len() == 32 {
                h.copy_from_slice(hash);
            }
            let id = IdRow {
                seq: from_i64(row.get(2)),
                hash: h,
                org: row.get::<_, i32>(4) as u32,
                rtype: row.get::<_, i16>(5) as u8,
                is_alarm: row.get(6),
            };
            out.insert((row.get(0), row.get(1)), id);
        }
        Ok(out)
    }

    /// Decides one event against what is stored and what the group holds.
    fn stage_event<'a>(
        &self,
        rec: &'a NewRecord,
        now: u64,
        last_seq: &mut u64,
        ids: &mut HashMap<(String, String), IdRow>,
        events: &mut Vec<EventRow<'a>>,
    ) -> Result<PutOutcome, PutError> {
        let n = &rec.resource;
        let key = (rec.vendor.0.clone(), rec.event_id.clone());
        if let Some(prev) = ids.get(&key)
            && prev.seq.saturating_add(self.window_us) > now
        {
            let stored = ResourceRef {
                resource_type: crate::domain::ResourceType::from_tag(prev.rtype)
                    .unwrap_or(n.resource_type),
                id: n.id,
            };
            return if prev.hash == rec.content_hash {
                Ok(PutOutcome::Duplicate(stored))
            } else {
                Err(PutError::Conflict(stored))
            };
        }
        let org = rec.municipality.as_u32();
        let answers = match &rec.answers_alarm {
            None => None,
            Some(eid) => match ids.get(&(rec.vendor.0.clone(), eid.clone())) {
                Some(a) if a.is_alarm && a.org == org => Some(sql_i64(a.seq)),
                _ => {
                    return Err(PutError::UnknownAlarm {
                        event_id: eid.clone(),
                    });
                }
            },
        };
        let seq = (*last_seq + 1).max(now);
        *last_seq = seq;
        ids.insert(
            key,
            IdRow {
                seq,
                hash: rec.content_hash,
                org,
                rtype: n.resource_type.tag(),
                is_alarm: rec.is_alarm,
            },
        );
        events.push(EventRow {
            seq: sql_i64(seq),
            rec,
            answers,
        });
        Ok(PutOutcome::Accepted(ResourceRef {
            resource_type: n.resource_type,
            id: n.id,
        }))
    }
}

/// `($1, $2, ...), ($n+1, ...)` for `rows` rows of `cols` parameters.
fn placeholders(rows: usize, cols: usize) -> String {
    let mut s = String::new();
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            s.push_str(&format!("${}", r * cols + c + 1));
        }
        s.push(')');
    }
    s
}

/// The columns of one event row, owned so they can be borrowed as params.
struct EventCols {
    org: i32,
    rtype: i16,
    class: i16,
    systems: Vec<String>,
    values: Vec<String>,
    hash: Vec<u8>,
    patient: Vec<u8>,
}

/// Writes a staged group in `tx`: its events and audit records, the
/// sequencer, and, when it stored events, the `kp_commit` notification.
async fn write_group(
    tx: &deadpool_postgres::Transaction<'_>,
    staged: &Staged<'_>,
) -> Result<(), tokio_postgres::Error> {
    insert_events(tx, &staged.events).await?;
    insert_audit(tx, &staged.audits).await?;
    tx.execute(
        "UPDATE kp_sequencer SET last_seq = $1, last_audit = $2 WHERE id = 1",
        &[&sql_i64(staged.last_seq), &sql_i64(staged.last_audit)],
    )
    .await?;
    if !staged.events.is_empty() {
        tx.execute(
            "SELECT pg_notify('kp_commit', $1)",
            &[&staged.last_seq.to_string()],
        )
        .await?;
    }
    Ok(())
}

async fn insert_events(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[EventRow<'_>],
) -> Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let cols: Vec<EventCols> = events
        .iter()
        .map(|e| EventCols {
            org: e.rec.municipality.as_u32() as i32,
            rtype: i16::from(e.rec.resource.resource_type.tag()),
            class: e.rec.class as i16,
            systems: e.rec.resource.codes.iter().map(|c| c.0.clone()).collect(),
            values: e.rec.resource.codes.iter().map(|c| c.1.clone()).collect(),
            hash: e.rec.content_hash.to_vec(),
            patient: e.rec.patient_key.to_vec(),
        })
        .collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(events.len() * 15);
    for (e, c) in events.iter().zip(&cols) {
        params.extend_from_slice(&[
            &e.seq,
            &c.org,
            &c.rtype,
            &e.rec.resource.id,
            &e.rec.vendor.0,
            &e.rec.event_id,
            &c.hash,
            &c.patient,
            &c.class,
            &e.rec.resource.category,
            &e.rec.is_alarm,
            &e.answers,
            &c.systems,
            &c.values,
            &e.rec.resource.json,
        ]);
    }
    let sql = format!(
        "INSERT INTO kp_events (seq, municipality, rtype, id, vendor, event_id, content_hash, \
         patient, class, category, is_alarm, answers, code_systems, code_values, json) VALUES {}",
        placeholders(events.len(), 15)
    );
    tx.execute(sql.as_str(), &params).await?;
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(events.len() * 7);
    for (e, c) in events.iter().zip(&cols) {
        params.extend_from_slice(&[
            &e.rec.vendor.0,
            &e.rec.event_id,
            &e.seq,
            &c.hash,
            &c.org,
            &c.rtype,
            &e.rec.is_alarm,
        ]);
    }
    // The key is taken again only after the idempotency window: then it
    // names the newer event.
    let sql = format!(
        "INSERT INTO kp_ids (vendor, event_id, seq, content_hash, municipality, rtype, is_alarm) \
         VALUES {} ON CONFLICT (vendor, event_id) DO UPDATE SET seq = EXCLUDED.seq, \
         content_hash = EXCLUDED.content_hash, municipality = EXCLUDED.municipality, \
         rtype = EXCLUDED.rtype, is_alarm = EXCLUDED.is_alarm",
        placeholders(events.len(), 7)
    );
    tx.execute(sql.as_str(), &params).await?;
    Ok(())
}

async fn insert_audit(
    tx: &deadpool_postgres::Transaction<'_>,
    audits: &[(i64, &AuditRecord)],
) -> Result<(), tokio_postgres::Error> {
    if audits.is_empty() {
        return Ok(());
    }
    let cols: Vec<(i32, Vec<Vec<u8>>, serde_json::Value)> = audits
        .iter()
        .map(|(_, r)| {
            let mut keys: Vec<Vec<u8>> = r.patients.iter().map(|p| p.key.to_vec()).collect();
            keys.sort_unstable();
            keys.dedup();
            let json = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
            (r.municipality.as_u32() as i32, keys, json)
        })
        .collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(audits.len() * 4);
    for ((seq, _), (org, keys, json)) in audits.iter().zip(&cols) {
        params.extend_from_slice(&[seq, org, keys, json]);
    }
    let sql = format!(
        "INSERT INTO kp_audit (seq, municipality, patients, record) VALUES {}",
        placeholders(audits.len(), 4)
    );
    tx.execute(sql.as_str(), &params).await?;
    Ok(())
}

/// Records a used assertion id unless it is used and not yet expired.
async fn claim(
    tx: &deadpool_postgres::Transaction<'_>,
    client: &str,
    jti: &str,
    exp: u64,
    now: u64,
) -> Result<bool, tokio_postgres::Error> {
    let rows = tx
        .query(
            "INSERT INTO kp_jti (client, jti, exp) VALUES ($1, $2, $3) \
             ON CONFLICT (client, jti) DO UPDATE SET exp = EXCLUDED.exp \
             WHERE kp_jti.exp < $4 RETURNING 1",
            &[&client, &jti, &sql_i64(exp), &sql_i64(now)],
        )
        .await?;
    Ok(!rows.is_empty())
}

fn refuse(req: &Req, e: &PutError) -> Answer {
    match req {
        Req::Put(..) => Answer::Put(Err(e.clone())),
        Req::Audit(..) => Answer::Audit(Err(StoreError::Write(e.to_string()))),
        Req::Jti { .. } => Answer::Jti(Err(StoreError::Write(e.to_string()))),
    }
}
