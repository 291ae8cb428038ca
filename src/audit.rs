//! The audit trail: every read, search, `$pending`, `$confirm` and push
//! delivery of patient data is written down (pasientjournalloven § 22,
//! Normen). A read is recorded, durably, before the data leaves the hub: if
//! the record cannot be written, the data is not served. A push delivery is
//! recorded when the EPJ has taken the Bundle, before the items are settled
//! (`Auditor::record_push`), so a settled item always has its record.
//!
//! [`Auditor`] builds records (who, municipality, action, sanitized query or
//! resource ids, patients, outcome) and appends them through the
//! [`Store`]. Patients are named by identifier system, a keyed pseudonym
//! (HMAC-SHA256 under the hub's pseudonym key, so the log cannot be reversed
//! by hashing every possible national id) and the store's patient search key
//! (so the municipality can find one patient's accesses by identifier).
//!
//! The municipality reads its trail as FHIR `AuditEvent`s
//! (`api::audit_event`). Records older than `audit.retention_days` are
//! pruned on a timer ([`spawn_pruner`]), together with expired assertion ids.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::normalize::member::first_member;
use crate::store::audit::{AuditPatient, AuditRecord};
use crate::store::{Store, StoreError, patient_key};

/// Builds and writes audit records.
#[derive(Clone)]
pub struct Auditor {
    store: Arc<dyn Store>,
    key: Arc<[u8]>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditSetupError {
    #[error("audit pseudonym key {path}: {what}")]
    Key { path: PathBuf, what: String },
}

/// Where a resource names its patient.
#[derive(Deserialize)]
struct Subject {
    subject: Option<SubjectRef>,
}
#[derive(Deserialize)]
struct SubjectRef {
    identifier: Option<Ident>,
}
#[derive(Deserialize)]
struct Ident {
    system: Option<String>,
    value: Option<String>,
}

impl Auditor {
    pub fn new(store: Arc<dyn Store>, key: Vec<u8>) -> Auditor {
        Auditor {
            store,
            key: key.into(),
        }
    }

    /// Loads the pseudonym key from `audit.pseudonym_key_file`, or from
    /// `<data_dir>/audit-pseudonym.key`, creating that one (0600) on first start.
    pub fn from_config(cfg: &Config, store: Arc<dyn Store>) -> Result<Auditor, AuditSetupError> {
        let (path, create) = match &cfg.audit.pseudonym_key_file {
            Some(p) => (p.clone(), false),
            None => (cfg.data_dir.join("audit-pseudonym.key"), true),
        };
        let key = load_key(&path, create)?;
        Ok(Auditor::new(store, key))
    }

    /// HMAC-SHA256 of system and value, hex.
    pub fn pseudonym(&self, system: &str, value: &str) -> String {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(system.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        crate::auth::keys::hex(&mac.finalize().into_bytes())
    }

    pub fn patient(&self, system: &str, value: &str) -> AuditPatient {
        AuditPatient {
            system: system.to_string(),
            pseudonym: self.pseudonym(system, value),
            key: patient_key(system, value),
        }
    }

    /// The patient a stored resource is about (its `subject.identifier`).
    pub fn patient_of(&self, json: &str) -> Option<AuditPatient> {
        // Only the `subject` object, not the whole resource (see
        // `first_member`); the whole one if that fails.
        let subject = match first_member::<SubjectRef>(json, "subject", '{') {
            Some(s) => s,
            None => serde_json::from_str::<Subject>(json).ok()?.subject?,
        };
        let id = subject.identifier?;
        Some(self.patient(&id.system?, &id.value?))
    }

    /// The distinct patients of several resources.
    pub fn patients_of<'a>(&self, jsons: impl IntoIterator<Item = &'a str>) -> Vec<AuditPatient> {
        let mut out: Vec<AuditPatient> = Vec::new();
        for j in jsons {
            self.add_patient(&mut out, None, j);
        }
        out
    }

    /// The distinct patients of queued items. An item carries its patient's
    /// key, so a patient already listed costs no JSON parse and no HMAC
    /// (a Bundle of 1,000 items often has a handful of patients).
    pub fn patients_of_items(&self, items: &[crate::store::OutboxItem]) -> Vec<AuditPatient> {
        let mut out: Vec<AuditPatient> = Vec::new();
        for i in items {
            self.add_patient(&mut out, Some(i.patient), &i.resource.json);
        }
        out
    }

    /// Adds the patient of `json` to `patients` unless it is there already;
    /// `key`, when the caller knows it, skips the parse for a listed patient.
    pub fn add_patient(&self, patients: &mut Vec<AuditPatient>, key: Option<[u8; 16]>, json: &str) {
        if key.is_some_and(|k| patients.iter().any(|q| q.key == k)) {
            return;
        }
        if let Some(p) = self.patient_of(json)
            && !patients.iter().any(|q| q.key == p.key)
        {
            patients.push(p);
        }
    }

    /// A query string with every patient identifier value replaced by its
    /// pseudonym: `patient:identifier=<system>|<pseudonym>`.
    pub fn sanitize_query(&self, pairs: &[(String, String)]) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            let base = k.split(':').next().unwrap_or_default();
            if matches!(base, "patient" | "subject" | "identifier") {
                let shown = match v.split_once('|') {
                    Some((sys, val)) => format!("{sys}|pseudonym:{}", self.pseudonym(sys, val)),
                    None => "(redacted)".to_string(),
                };
                s.append_pair(k, &shown);
            } else {
                s.append_pair(k, v);
            }
        }
        s.finish()
    }

    /// Writes records and waits until they are on disk.
    pub async fn write(&self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        let res = self.append(records, true).await;
        if let Err(e) = &res {
            tracing::error!(error = %e, "cannot write the audit record; the access is refused");
        }
        res
    }

    /// Appends records (`synced`: waits until they are on disk) and counts
    /// them, or the failure.
    async fn append(&self, records: Vec<AuditRecord>, synced: bool) -> Result<(), StoreError> {
        let n = records.len();
        let res = if synced {
            self.store.audit_append(records).await
        } else {
            self.store.audit_append_unsynced(records).await
        };
        match &res {
            Ok(_) => metrics::counter!("knutepunkt_audit_records_total").increment(n as u64),
            Err(_) => metrics::counter!("knutepunkt_audit_write_failures_total").increment(1),
        }
        res.map(|_| ())
    }
}

impl Auditor {
    /// One record per delivered Bundle (per municipality in it), with the
    /// destination as who. The Bundle has already left: a failure here is
    /// logged and counted, it cannot undo the delivery.
    pub async fn record_push(&self, destination: &str, items: &[crate::store::OutboxItem]) {
        let mut records: Vec<AuditRecord> = Vec::new();
        for i in items {
            let org = i.resource.municipality;
            let idx = match records.iter().position(|r| r.municipality == org) {
                Some(n) => n,
                None => {
                    records.push(AuditRecord {
                        municipality: org,
                        agent: crate::store::audit::AuditAgent::Destination(destination.into()),
                        action: crate::store::audit::AuditAction::Push,
                        query: None,
                        resources: Vec::new(),
                        patients: Vec::new(),
                        outcome: crate::store::audit::AuditOutcome::Success,
                    });
                    records.len() - 1
                }
            };
            let rec = &mut records[idx];
            rec.add_resource(i.resource.resource);
            self.add_patient(&mut rec.patients, Some(i.patient), &i.resource.json);
        }
        // Unsynced: the Bundle has left, so waiting for a sync of its own
        // protects nothing, and at 1,000 events/s with one event per Bundle
        // it doubled the writer's syncs (BENCHMARKS.md, eighth session).
        // The caller settles after this, and the store makes the settle
        // durable only with the record (`AuditLog::audit_append_unsynced`).
        if let Err(e) = self.append(records, false).await {
            tracing::error!(destination, error = %e, "a delivered Bundle has no audit record");
        }
    }
}

fn load_key(path: &Path, create: bool) -> Result<Vec<u8>, AuditSetupError> {
    let bad = |what: String| AuditSetupError::Key {
        path: path.to_path_buf(),
        what,
    };
    match std::fs::read(path) {
        Ok(k) if k.len() >= 32 => Ok(k),
        Ok(_) => Err(bad("must hold at least 32 bytes".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let mut key = vec![0u8; 32];
            aws_lc_rs::rand::fill(&mut key).map_err(|_| bad("cannot make a random key".into()))?;
            write_private(path, &key).map_err(|e| bad(format!("cannot create it: {e}")))?;
            tracing::info!(path = %path.display(), "created the audit pseudonym key; back it up with the data directory");
            Ok(key)
        }
        Err(e) => Err(bad(format!("cannot read it: {e}"))),
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Prunes audit records older than the retention and expired assertion
/// ids, once at start and then every `audit.prune_interval_secs`.
pub fn spawn_pruner(
    cfg: &Config,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs(cfg.audit.prune_interval_secs.max(1));
    let keep = chrono::Duration::days(i64::from(cfg.audit.retention_days));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let before = crate::store::time_to_seq(chrono::Utc::now() - keep);
            let now = crate::auth::now_secs();
            let res = async {
                Ok::<_, StoreError>((
                    store.audit_prune(before).await?,
                    store.jti_prune(now).await?,
                ))
            }
            .await;
            match res {
                Ok((audit, jti)) => {
                    if audit > 0 {
                        tracing::info!(
                            records = audit,
                            "pruned audit records past their retention"
                        );
                    }
                    tracing::debug!(jti, "pruned expired assertion ids");
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit pruning failed; trying again later")
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Orgnr, ResourceType, synthetic};
    use crate::store::memory::MemoryStore;
    use crate::store::{Class, OutboxItem, ResourceRef, StoredResource};

    const SYSTEM: &str = "urn:oid:2.16.578.1.12.4.1.4.1";

    fn item(n: u128, value: &str) -> OutboxItem {
        OutboxItem {
            destination: "epj".into(),
            class: Class::Routine,
            patient: crate::store::patient_key(SYSTEM, value),
            resource: StoredResource {
                seq: n as u64,
                municipality: Orgnr::from_u32(958935420),
                resource: ResourceRef {
                    resource_type: ResourceType::Observation,
                    id: uuid::Uuid::from_u128(n),
                },
                json: format!(
                    r#"{{"resourceType":"Observation","subject":{{"identifier":{{"system":"{SYSTEM}","value":"{value}"}}}}}}"#
                ),
            },
        }
    }

    #[test]
    fn items_list_each_patient_once_with_a_keyed_pseudonym() {
        let store: Arc<dyn Store> =
            Arc::new(MemoryStore::new(Vec::new(), u64::MAX, Arc::new(|| 1)));
        let a = Auditor::new(store, vec![7; 32]);
        let (p1, p2) = (synthetic::fnr(1), synthetic::fnr(2));
        let items = [item(1, &p1), item(2, &p1), item(3, &p2)];
        let patients = a.patients_of_items(&items);
        assert_eq!(patients.len(), 2);
        assert_eq!(patients[0].key, items[0].patient);
        assert_eq!(patients[1].key, items[2].patient);
        assert_eq!(patients[0].pseudonym, a.pseudonym(SYSTEM, &p1));
        assert_eq!(patients[0].pseudonym.len(), 64);
        assert!(patients[0].pseudonym.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            a.patients_of(items.iter().map(|i| i.resource.json.as_str())),
            patients
        );
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(
            crate::auth::keys::hex(&[0x00, 0x0f, 0xa5, 0xff]),
            "000fa5ff"
        );
    }
}
