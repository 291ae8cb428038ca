//! The audit trail and the used-`jti` table in sled.
//!
//! These writes do not go through the event writer thread: they come from
//! readers (every FHIR read writes one audit record) and must not wait
//! behind a group of events. Each append is one atomic `sled::Batch`
//! (record + its municipality and patient index keys), then `flush` and
//! `fdatasync` of sled's data file, so an access is on disk before its data
//! is served and a used assertion id survives a crash. Concurrent appends
//! share the sync cost as far as the OS merges them.
//!
//! `seq` of an audit record is its time in µs since the epoch, strictly
//! increasing across the hub (`max(last + 1, now)` under a lock), so time
//! filters are key ranges and paging is keyset paging, as for resources.

use std::fs::File;
use std::path::Path;

use super::{OpenError, SledStore, be_u64, decode, encode, lock, now_micros, read};
use crate::store::StoreError;
use crate::store::audit::{AuditPage, AuditQuery, AuditRecord, StoredAudit};

/// Audit state shared by every clone of the store.
pub(super) struct AuditShared {
    /// A second handle on sled's data file, to fdatasync.
    sync_file: File,
    /// The last audit `seq` handed out.
    last: std::sync::Mutex<u64>,
}

impl AuditShared {
    pub(super) fn open(db: &sled::Db, data_path: &Path) -> Result<AuditShared, OpenError> {
        let sync_file = File::open(data_path).map_err(|source| OpenError::DataFile {
            path: data_path.to_path_buf(),
            source,
        })?;
        let last = match db.scan_prefix([b'A']).next_back() {
            None => 0,
            Some(Ok((k, _))) => be_u64(&k[1..]).unwrap_or(0),
            Some(Err(e)) => {
                return Err(OpenError::Corrupt {
                    path: data_path.to_path_buf(),
                    msg: e.to_string(),
                });
            }
        };
        Ok(AuditShared {
            sync_file,
            last: std::sync::Mutex::new(last),
        })
    }
}

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

fn with_seq(mut prefix: Vec<u8>, seq: u64) -> Vec<u8> {
    prefix.extend_from_slice(&seq.to_be_bytes());
    prefix
}

fn jkey(client: &str, jti: &str) -> Vec<u8> {
    let c = &client.as_bytes()[..client.len().min(255)];
    let mut k = Vec::with_capacity(2 + c.len() + jti.len());
    k.push(b'J');
    k.push(c.len() as u8);
    k.extend_from_slice(c);
    k.extend_from_slice(jti.as_bytes());
    k
}

/// The distinct patient keys of a record, for its index entries.
fn patient_keys(rec: &AuditRecord) -> Vec<[u8; 16]> {
    let mut keys: Vec<[u8; 16]> = rec.patients.iter().map(|p| p.key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl SledStore {
    /// flush + fdatasync: the audit/jti write is on disk after this.
    fn sync_small_write(&self) -> Result<(), StoreError> {
        self.shared.db.flush().map_err(read)?;
        self.shared
            .audit
            .sync_file
            .sync_data()
            .map_err(|e| StoreError::Read(format!("fdatasync failed: {e}")))
    }

    fn refuse_if_broken(&self) -> Result<(), StoreError> {
        if self
            .shared
            .broken
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(StoreError::Read(
                "the store refuses writes after a failed write; restart the hub".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn audit_append_impl(
        &self,
        records: Vec<AuditRecord>,
    ) -> Result<Vec<u64>, StoreError> {
        self.refuse_if_broken()?;
        let mut seqs = Vec::with_capacity(records.len());
        {
            // Seq assignment and the batch under one lock, so seqs reach
            // sled in order and a reader never sees a gap filled later.
            let mut last = lock(&self.shared.audit.last);
            let mut batch = sled::Batch::default();
            let mut seq = *last;
            for rec in &records {
                seq = (seq + 1).max(now_micros());
                let org = rec.municipality.as_u32();
                batch.insert(akey(seq).to_vec(), encode(rec)?);
                batch.insert(with_seq(org_prefix(org), seq), vec![]);
                for p in patient_keys(rec) {
                    batch.insert(with_seq(patient_prefix(org, &p), seq), vec![]);
                }
                seqs.push(seq);
            }
            self.shared.db.apply_batch(batch).map_err(read)?;
            *last = seq;
        }
        self.sync_small_write()?;
        Ok(seqs)
    }

    pub(super) fn audit_search_impl(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
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
        let range = self
            .shared
            .db
            .range(with_seq(prefix.clone(), lo)..=with_seq(prefix, hi));
        let mut more = false;
        for item in range {
            let (k, _) = item.map_err(read)?;
            if items.len() >= count {
                more = true;
                break;
            }
            let seq = be_u64(&k[k.len() - 8..])
                .ok_or_else(|| StoreError::Corrupt("short audit index key".into()))?;
            let raw = self
                .shared
                .db
                .get(akey(seq))
                .map_err(read)?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("audit index points at missing record {seq}"))
                })?;
            let record: AuditRecord = decode(&raw)?;
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

    pub(super) fn audit_prune_impl(&self, before: u64) -> Result<usize, StoreError> {
        let db = &self.shared.db;
        let mut pruned = 0;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for item in db.range(akey(0)..akey(before)) {
            let (k, v) = item.map_err(read)?;
            let Some(seq) = be_u64(&k[1..]) else {
                continue;
            };
            batch.remove(k.to_vec());
            if let Ok(rec) = decode::<AuditRecord>(&v) {
                let org = rec.municipality.as_u32();
                batch.remove(with_seq(org_prefix(org), seq));
                for p in patient_keys(&rec) {
                    batch.remove(with_seq(patient_prefix(org, &p), seq));
                }
            }
            pruned += 1;
            in_batch += 1;
            if in_batch >= 1000 {
                db.apply_batch(std::mem::take(&mut batch)).map_err(read)?;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            db.apply_batch(batch).map_err(read)?;
        }
        if pruned > 0 {
            // Not fdatasync'ed: after a crash pruning just runs again.
            db.flush().map_err(read)?;
        }
        Ok(pruned)
    }

    pub(super) fn jti_claim_impl(
        &self,
        client: &str,
        jti: &str,
        exp: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.refuse_if_broken()?;
        let db = &self.shared.db;
        let key = jkey(client, jti);
        let new = exp.to_be_bytes();
        loop {
            let current = db.get(&key).map_err(read)?;
            if let Some(c) = &current
                && be_u64(c).is_none_or(|old| old >= now)
            {
                return Ok(false);
            }
            match db
                .compare_and_swap(&key, current, Some(&new[..]))
                .map_err(read)?
            {
                Ok(()) => break,
                // Someone else wrote it between get and swap: look again.
                Err(_) => continue,
            }
        }
        self.sync_small_write()?;
        Ok(true)
    }

    pub(super) fn jti_prune_impl(&self, now: u64) -> Result<usize, StoreError> {
        let db = &self.shared.db;
        let mut n = 0;
        for item in db.scan_prefix([b'J']) {
            let (k, v) = item.map_err(read)?;
            if be_u64(&v).is_none_or(|exp| exp < now) {
                // Only if unchanged: a fresh claim of the same jti stays.
                let _ = db
                    .compare_and_swap(&k, Some(v), None as Option<&[u8]>)
                    .map_err(read)?;
                n += 1;
            }
        }
        if n > 0 {
            db.flush().map_err(read)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::SledOptions;
    use super::*;
    use crate::domain::Orgnr;
    use crate::store::Store;
    use crate::store::audit::{AuditAction, AuditAgent, AuditOutcome, AuditPatient};

    fn org(s: &str) -> Orgnr {
        Orgnr::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rec(o: &str, patient: Option<[u8; 16]>) -> AuditRecord {
        AuditRecord {
            municipality: org(o),
            agent: AuditAgent::Client("oslo-epj".into()),
            action: AuditAction::Read,
            query: None,
            resources: vec![],
            patients: patient
                .map(|key| AuditPatient {
                    system: "urn:oid:2.16.578.1.12.4.1.4.1".into(),
                    pseudonym: "ab".into(),
                    key,
                })
                .into_iter()
                .collect(),
            outcome: AuditOutcome::Success,
        }
    }

    fn open(dir: &Path) -> SledStore {
        let opts = SledOptions {
            min_free_bytes: 0,
            ..SledOptions::default()
        };
        SledStore::open(dir, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    fn q(o: &str, patient: Option<[u8; 16]>) -> AuditQuery {
        AuditQuery {
            municipality: org(o),
            patient,
            min_seq: 0,
            max_seq: u64::MAX,
            after: None,
            count: 2,
        }
    }

    #[tokio::test]
    async fn append_search_page_tenant_patient_prune_and_restart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = open(dir.path());
        let p1 = [1u8; 16];
        let seqs = s
            .audit_append(vec![
                rec("958935420", Some(p1)),
                rec("958935420", None),
                rec("964338531", Some(p1)),
                rec("958935420", Some(p1)),
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let page = s
            .audit_search(&q("958935420", None))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.items.len(), 2);
        let mut q2 = q("958935420", None);
        q2.after = page.next;
        let page2 = s.audit_search(&q2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page2.items.len(), 1);
        assert_eq!(page2.next, None);
        let mut by_patient = q("958935420", Some(p1));
        by_patient.count = 10;
        let got = s
            .audit_search(&by_patient)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.items.len(), 2);
        assert!(
            got.items
                .iter()
                .all(|i| i.record.municipality == org("958935420"))
        );
        s.close().await;
        let s = open(dir.path());
        let more = s
            .audit_append(vec![rec("958935420", None)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(more[0] > seqs[3], "seq keeps increasing over a restart");
        assert_eq!(s.audit_prune(seqs[2] + 1).ok(), Some(3));
        let mut all = q("958935420", None);
        all.count = 10;
        assert_eq!(s.audit_search(&all).map(|p| p.items.len()).ok(), Some(2));
        assert_eq!(
            s.audit_search(&q("964338531", Some(p1)))
                .map(|p| p.items.len())
                .ok(),
            Some(0)
        );
    }

    #[tokio::test]
    async fn jti_is_single_use_until_it_expires_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = open(dir.path());
        assert_eq!(s.jti_claim("c1", "j1", 200, 100).ok(), Some(true));
        assert_eq!(s.jti_claim("c1", "j1", 200, 150).ok(), Some(false));
        assert_eq!(s.jti_claim("c2", "j1", 200, 150).ok(), Some(true));
        s.close().await;
        let s = open(dir.path());
        assert_eq!(s.jti_claim("c1", "j1", 300, 150).ok(), Some(false));
        assert_eq!(s.jti_prune(201).ok(), Some(2));
        assert_eq!(s.jti_claim("c1", "j1", 300, 201).ok(), Some(true));
    }
}
