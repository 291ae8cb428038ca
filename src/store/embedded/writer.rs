//! The single writer thread and its group commit.
//!
//! It takes every request waiting in its queue (up to `max_batch`): events,
//! audit records and used assertion ids. It checks each event against the
//! store *and* the group being built (idempotency, the alarm a note
//! answers), puts every key of the group into one fjall batch, commits it
//! and makes the journal durable with one `fdatasync`, and only then
//! answers anyone and moves the `visible` watermark. One sync per group,
//! for everything: that is what makes many small durable writes cheap.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot};

use super::keys::{self, IdEntry, Record, TypeEntry};
use super::{EmbeddedOptions, Shared, audit, now_micros};
use crate::store::audit::AuditRecord;
use crate::store::{NewRecord, PutError, PutOutcome, ResourceRef, StoreError};

pub(crate) enum Req {
    Put(
        Box<NewRecord>,
        oneshot::Sender<Result<PutOutcome, PutError>>,
    ),
    /// `sync: false`: a group holding nothing else is committed without a
    /// sync (see `audit_append_unsynced`).
    Audit {
        records: Vec<AuditRecord>,
        sync: bool,
        reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
    },
    Jti {
        client: String,
        jti: String,
        exp: u64,
        now: u64,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Removes expired jtis. Through the writer, so it never races a claim:
    /// pruning outside it could delete a jti claimed again between the
    /// prune's read and its commit, and open a replay window.
    JtiPrune {
        now: u64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
}

/// One answer per request, sent after the group is durable.
enum Answer {
    Put(Result<PutOutcome, PutError>),
    Audit(Result<Vec<u64>, StoreError>),
    Jti(Result<bool, StoreError>),
    JtiPrune(Result<usize, StoreError>),
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    last_seq: u64,
    last_audit: u64,
    max_batch: usize,
    window_us: u64,
}

/// What the group being built already holds, so two copies of one event in
/// the same group cannot both be written.
#[derive(Default)]
struct Group {
    ids: HashMap<[u8; 16], IdEntry>,
    jtis: HashMap<Vec<u8>, u64>,
    /// Events per municipality, for the consumers' `unscanned` counters.
    arrivals: HashMap<u32, u64>,
    writes: usize,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        last_seq: u64,
        last_audit: u64,
        opts: &EmbeddedOptions,
    ) -> Writer {
        Writer {
            shared,
            last_seq,
            last_audit,
            max_batch: opts.max_batch.max(1),
            window_us: opts.idempotency_window_us,
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Req>) {
        let mut group = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while group.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            let answers = self.commit_group(&group);
            for (req, answer) in group.drain(..).zip(answers) {
                // A caller that went away no longer needs the answer; what
                // it asked for is stored all the same.
                match (req, answer) {
                    (Req::Put(_, reply), Answer::Put(a)) => drop(reply.send(a)),
                    (Req::Audit { reply, .. }, Answer::Audit(a)) => drop(reply.send(a)),
                    (Req::Jti { reply, .. }, Answer::Jti(a)) => drop(reply.send(a)),
                    (Req::JtiPrune { reply, .. }, Answer::JtiPrune(a)) => drop(reply.send(a)),
                    _ => {}
                }
            }
        }
        tracing::debug!("store writer stopped");
    }

    /// Writes one group and returns one answer per request, in order.
    fn commit_group(&mut self, reqs: &[Req]) -> Vec<Answer> {
        let refusal = if self.shared.broken.load(Ordering::Acquire) {
            Some(PutError::Unavailable(
                "an earlier write failed; the hub must be restarted".into(),
            ))
        } else {
            self.check_space().err()
        };
        if let Some(e) = refusal {
            return reqs.iter().map(|r| refuse(r, &e)).collect();
        }
        let shared = self.shared.clone();
        let mut batch = shared.db.batch();
        let mut group = Group::default();
        let (first_seq, first_audit) = (self.last_seq, self.last_audit);
        let answers: Vec<Answer> = reqs
            .iter()
            .map(|r| self.stage(r, &mut batch, &mut group))
            .collect();
        if group.writes == 0 {
            return answers;
        }
        let started = Instant::now();
        // Events, synced audit records and assertion ids are answered only
        // once durable; a group of unsynced audit records alone is not
        // worth a sync (the next group's makes it durable).
        let sync = reqs
            .iter()
            .any(|r| !matches!(r, Req::Audit { sync: false, .. }));
        let durable = batch.commit().and_then(|()| {
            if sync {
                shared.db.persist(PersistMode::SyncData)
            } else {
                Ok(())
            }
        });
        if let Err(e) = durable {
            let err = self.failed(&e);
            self.last_seq = first_seq;
            self.last_audit = first_audit;
            return reqs
                .iter()
                .zip(answers)
                .map(|(r, a)| match a {
                    Answer::Put(Ok(PutOutcome::Accepted(_))) | Answer::Audit(Ok(_)) => {
                        refuse(r, &err)
                    }
                    Answer::Jti(Ok(true)) | Answer::JtiPrune(Ok(_)) => refuse(r, &err),
                    other => other,
                })
                .collect();
        }
        if sync {
            metrics::histogram!("knutepunkt_store_commit_seconds").record(started.elapsed());
            shared.commits.fetch_add(1, Ordering::AcqRel);
        }
        metrics::histogram!("knutepunkt_store_group_size").record(reqs.len() as f64);
        metrics::gauge!("knutepunkt_store_cache_bytes").set(shared.db.cache_size() as f64);
        for (org, n) in &group.arrivals {
            for c in shared.arrivals.get(org).into_iter().flatten() {
                c.fetch_add(*n, Ordering::AcqRel);
            }
        }
        // Only new events wake the delivery workers: a group of audit
        // records or assertion ids alone has nothing for them to take.
        if self.last_seq != first_seq {
            shared.visible.store(self.last_seq, Ordering::Release);
            shared.committed.send_replace(self.last_seq);
        }
        answers
    }

    /// Logs a failed commit or sync, marks the store broken (the engine's
    /// state after a failed write is unknown) and says what to tell callers.
    fn failed(&self, e: &fjall::Error) -> PutError {
        let io_full = matches!(e, fjall::Error::Io(io) if is_disk_full(io));
        self.shared.broken.store(true, Ordering::Release);
        if io_full {
            self.shared.disk_full.store(true, Ordering::Release);
            tracing::error!(error = %e, "store write failed: disk full; nothing in this group was acknowledged; free space and restart the hub");
            PutError::DiskFull {
                free_bytes: free_bytes(&self.shared.dir).unwrap_or(0),
                reserve_bytes: self.shared.min_free_bytes,
            }
        } else {
            tracing::error!(error = %e, "store write failed; refusing writes until the hub is restarted");
            PutError::Unavailable("the store could not write to disk".into())
        }
    }

    fn stage(
        &mut self,
        req: &Req,
        batch: &mut fjall::OwnedWriteBatch,
        group: &mut Group,
    ) -> Answer {
        match req {
            Req::Put(rec, _) => Answer::Put(self.stage_event(rec, batch, group)),
            Req::Audit { records, .. } => {
                let mut seqs = Vec::with_capacity(records.len());
                for rec in records {
                    self.last_audit = (self.last_audit + 1).max(now_micros());
                    if let Err(e) = audit::stage(&self.shared.ks, batch, self.last_audit, rec) {
                        return Answer::Audit(Err(e));
                    }
                    seqs.push(self.last_audit);
                }
                group.writes += 1;
                Answer::Audit(Ok(seqs))
            }
            Req::Jti {
                client,
                jti,
                exp,
                now,
                ..
            } => {
                let key = keys::jti_key(client, jti);
                let current = match group.jtis.get(&key) {
                    Some(e) => Some(*e),
                    None => match self.shared.ks.jti.get(&key) {
                        Ok(v) => v.map(|v| keys::be_u64(&v).unwrap_or(u64::MAX)),
                        Err(e) => return Answer::Jti(Err(super::read(e))),
                    },
                };
                if current.is_some_and(|old| old >= *now) {
                    return Answer::Jti(Ok(false));
                }
                batch.insert(&self.shared.ks.jti, key.clone(), exp.to_be_bytes());
                group.jtis.insert(key, *exp);
                group.writes += 1;
                Answer::Jti(Ok(true))
            }
            Req::JtiPrune { now, .. } => {
                // Not the ones this group claims: their new expiry is in the
                // batch, and a later remove of the same key would win.
                let claimed = &group.jtis;
                match audit::stage_jti_prune(&self.shared, batch, *now, |k| claimed.contains_key(k))
                {
                    Ok(n) => {
                        group.writes += usize::from(n > 0);
                        Answer::JtiPrune(Ok(n))
                    }
                    Err(e) => Answer::JtiPrune(Err(e)),
                }
            }
        }
    }

    /// Checks one event against the store and the group, and adds its keys
    /// to the batch when it is new.
    fn stage_event(
        &mut self,
        rec: &NewRecord,
        batch: &mut fjall::OwnedWriteBatch,
        group: &mut Group,
    ) -> Result<PutOutcome, PutError> {
        let now = now_micros();
        let n = &rec.resource;
        if let Some(prev) = self.lookup(&n.id, group)?
            && prev.seq.saturating_add(self.window_us) > now
        {
            return resent(&prev, rec);
        }
        let org = rec.municipality.as_u32();
        let answers = self.answered_alarm(rec, org, group)?;
        let seq = (self.last_seq + 1).max(now);
        let rt = n.resource_type.tag();
        let record = Record {
            org,
            rtype: rt,
            id: *n.id.as_bytes(),
            patient: rec.patient_key,
            class: rec.class as u8,
            answers,
            category: n.category,
            codes: n
                .codes
                .iter()
                .map(|(s, c)| (s.as_str(), c.as_str()))
                .collect(),
            json: &n.json,
        };
        let bytes = keys::encode(&record).map_err(|e| PutError::Unavailable(e.to_string()))?;
        let entry = IdEntry {
            seq,
            hash: rec.content_hash,
            org,
            rtype: rt,
            is_alarm: rec.is_alarm,
        };
        let ebytes = keys::encode(&entry).map_err(|e| PutError::Unavailable(e.to_string()))?;
        self.last_seq = seq;
        stage_keys(&self.shared.ks, batch, seq, &record, bytes, ebytes);
        *group.arrivals.entry(org).or_default() += 1;
        group.ids.insert(*n.id.as_bytes(), entry);
        group.writes += 1;
        Ok(PutOutcome::Accepted(ResourceRef {
            resource_type: n.resource_type,
            id: n.id,
        }))
    }

    /// The id's entry: in the group being built, else in the store.
    fn lookup(&self, id: &uuid::Uuid, group: &Group) -> Result<Option<IdEntry>, PutError> {
        if let Some(e) = group.ids.get(id.as_bytes()) {
            return Ok(Some(*e));
        }
        match self.shared.ks.ids.get(id.as_bytes()) {
            Ok(None) => Ok(None),
            Ok(Some(v)) => keys::decode(&v)
                .map(Some)
                .map_err(|e| PutError::Unavailable(e.to_string())),
            Err(e) => Err(PutError::Unavailable(format!("store read failed: {e}"))),
        }
    }

    /// The seq of the alarm a note answers (0 for none); the alarm must be
    /// stored, or earlier in this group, and of the same municipality.
    fn answered_alarm(&self, rec: &NewRecord, org: u32, group: &Group) -> Result<u64, PutError> {
        let Some(eid) = &rec.answers_alarm else {
            return Ok(0);
        };
        let alarm_id = crate::domain::resource_id(&rec.vendor, eid);
        match self.lookup(&alarm_id, group)? {
            Some(a) if a.is_alarm && a.org == org => Ok(a.seq),
            _ => Err(PutError::UnknownAlarm {
                event_id: eid.clone(),
            }),
        }
    }

    /// Refuses the group while free space is under the reserve, and logs
    /// each change between "full" and "has room" once.
    fn check_space(&self) -> Result<(), PutError> {
        let free = match free_bytes(&self.shared.dir) {
            Ok(f) => f,
            // Cannot tell: let the write decide.
            Err(_) => return Ok(()),
        };
        let full = free < self.shared.min_free_bytes;
        let was_full = self.shared.disk_full.swap(full, Ordering::AcqRel);
        if full && !was_full {
            tracing::error!(
                dir = %self.shared.dir.display(),
                free_bytes = free,
                reserve_bytes = self.shared.min_free_bytes,
                "disk full: refusing events until space is freed"
            );
            metrics::gauge!("knutepunkt_store_disk_full").set(1.0);
        } else if !full && was_full {
            tracing::warn!(free_bytes = free, "disk has room again: taking events");
            metrics::gauge!("knutepunkt_store_disk_full").set(0.0);
        }
        if full {
            return Err(PutError::DiskFull {
                free_bytes: free,
                reserve_bytes: self.shared.min_free_bytes,
            });
        }
        Ok(())
    }
}

/// Adds one event's keys to `batch`: its record, id entry and index keys.
/// The writer and `knutepunkt migrate` both write events through it.
pub(crate) fn stage_keys(
    ks: &super::Spaces,
    batch: &mut fjall::OwnedWriteBatch,
    seq: u64,
    record: &Record,
    record_bytes: Vec<u8>,
    id_entry_bytes: Vec<u8>,
) {
    let (org, rt) = (record.org, record.rtype);
    let class = crate::store::Class::from_tag(record.class).unwrap_or(crate::store::Class::Routine);
    batch.insert(&ks.log, keys::seq_key(seq), record_bytes);
    batch.insert(&ks.ids, record.id, id_entry_bytes);
    let t = TypeEntry {
        class,
        patient: record.patient,
        answers: record.answers,
    };
    batch.insert(
        &ks.idx,
        keys::with_seq(keys::index_prefix(b'T', org, rt, &[]), seq),
        t.to_bytes(),
    );
    batch.insert(
        &ks.idx,
        keys::with_seq(keys::index_prefix(b'P', org, rt, &record.patient), seq),
        [],
    );
    for c in keys::distinct_codes(&record.codes) {
        batch.insert(
            &ks.idx,
            keys::with_seq(keys::index_prefix(b'C', org, rt, &keys::short_hash(c)), seq),
            [],
        );
    }
    if class.is_urgent() {
        batch.insert(
            &ks.alarms,
            keys::alarm_key(org, seq),
            keys::class_patient(class, &record.patient),
        );
    }
}

/// The answer to an event whose id is stored within the idempotency
/// window: the same content is a duplicate, other content a conflict. Both
/// name what is stored (the original's type and id).
fn resent(prev: &IdEntry, rec: &NewRecord) -> Result<PutOutcome, PutError> {
    let stored = ResourceRef {
        resource_type: crate::domain::ResourceType::from_tag(prev.rtype)
            .unwrap_or(rec.resource.resource_type),
        id: rec.resource.id,
    };
    if prev.hash == rec.content_hash {
        Ok(PutOutcome::Duplicate(stored))
    } else {
        Err(PutError::Conflict(stored))
    }
}

fn refuse(req: &Req, e: &PutError) -> Answer {
    match req {
        Req::Put(..) => Answer::Put(Err(e.clone())),
        Req::Audit { .. } => Answer::Audit(Err(StoreError::Write(e.to_string()))),
        Req::Jti { .. } => Answer::Jti(Err(StoreError::Write(e.to_string()))),
        Req::JtiPrune { .. } => Answer::JtiPrune(Err(StoreError::Write(e.to_string()))),
    }
}

pub(crate) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

pub(super) fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}
