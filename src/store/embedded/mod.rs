//! The embedded store: fjall (an LSM tree with atomic batches across
//! keyspaces), laid out as a log with consumer cursors.
//!
//! - **The log.** One record per accepted event under its `seq`, written
//!   with the few index keys searches need ([`keys`] lists them) in one
//!   atomic batch by the single writer thread ([`writer`]).
//! - **Group commit.** The writer takes every request waiting (events, audit
//!   records, used assertion ids), commits them as one batch and makes the
//!   journal durable with one `fdatasync` before anyone is answered. Readers
//!   see nothing above the `visible` watermark, which moves only after that
//!   sync.
//! - **Consumers.** Each destination is a cursor over its municipality's
//!   log: a durable ack floor and, in memory, what is unsettled above it
//!   ([`consumer`]). Settling writes one small batch; alarms are found
//!   through the `alarms` keyspace, never by scanning the routine backlog.
//!
//! Why fjall and not sled: with this layout on this machine fjall wrote
//! durable events faster and held memory flat where sled 0.34 grew without
//! bound (BENCHMARKS.md has the side-by-side that decided it).

mod audit;
pub mod backup;
mod compact;
mod consumer;
mod deadletter;
mod escalation;
pub mod keys;
pub mod migrate;
mod pending;
mod read;
mod retention;
mod spaces;
mod stats;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::audit::{AuditPage, AuditQuery, AuditRecord};
use super::{
    AuditLog, ConsumerSpec, ConsumerStats, Consumers, DeadLetter, DeadLetterFilter, DeliveryState,
    Escalation, EventLog, NewRecord, OutboxItem, PutError, PutOutcome, ReclaimProgress,
    ReplayGuard, ResourceRef, RetentionPolicy, RetentionReport, SearchPage, SearchQuery, Settle,
    SettleReport, SpaceReport, StoreError, StoreFuture, StoredResource,
};
use crate::domain::{Orgnr, ResourceType};
use consumer::Cons;
pub(crate) use spaces::{Spaces, open_spaces};
use writer::{Req, Writer};

/// Largest resource JSON the store takes.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Tuning for [`EmbeddedStore`]; every field has a safe default.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Most requests in one group commit.
    pub max_batch: usize,
    /// Bytes of free disk kept in reserve: below it, writes are refused with
    /// [`PutError::DiskFull`] before the engine ever sees an out-of-space error.
    pub min_free_bytes: u64,
    /// Block cache, bytes.
    pub cache_bytes: u64,
    /// Requests waiting for the writer before `put` pushes back.
    pub queue_depth: usize,
    /// How long a vendor's `event_id` is remembered, µs: a resend inside it
    /// is a duplicate, after it a new event.
    pub idempotency_window_us: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            max_batch: 256,
            min_free_bytes: 256 * 1024 * 1024,
            cache_bytes: 64 * 1024 * 1024,
            queue_depth: 8192,
            idempotency_window_us: 30 * 24 * 3600 * 1_000_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the store at {path}: {source}")]
    Engine {
        path: PathBuf,
        #[source]
        source: fjall::Error,
    },
    #[error("cannot create the store directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store at {path} is unreadable: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error(
        "{path} holds a store in the old (sled) format; move it over with `knutepunkt migrate --data-dir <data dir>` (the hub must be stopped), then start again"
    )]
    OldFormat { path: PathBuf },
    #[error(
        "{path} was written with store layout {found}, this build knows {known}; run the knutepunkt version that wrote it"
    )]
    Layout { path: PathBuf, found: u8, known: u8 },
    #[error("cannot start the store's writer thread: {0}")]
    Thread(std::io::Error),
}

pub(crate) struct Shared {
    pub db: Database,
    pub ks: Spaces,
    pub dir: PathBuf,
    /// Highest seq whose group is durable; readers see nothing above it.
    pub visible: AtomicU64,
    /// Set when a write or sync failed: the engine's state is then unknown
    /// and the hub refuses writes until it is restarted.
    pub broken: AtomicBool,
    pub disk_full: AtomicBool,
    pub min_free_bytes: u64,
    /// Last seq made visible; delivery workers wait on it.
    pub committed: tokio::sync::watch::Sender<u64>,
    /// Every consumer, by name. Fixed at open; one lock each.
    pub consumers: BTreeMap<String, Arc<Mutex<Cons>>>,
    /// Per municipality: the `unscanned` counters of its log consumers
    /// (events not yet read into memory), which the writer bumps at each
    /// commit.
    pub arrivals: HashMap<u32, Vec<Arc<AtomicU64>>>,
    /// Group commits made durable since open.
    pub commits: AtomicU64,
}

/// The fjall-backed [`super::Store`].
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Req>,
    /// Turns true once the writer thread has stopped.
    closed: tokio::sync::watch::Receiver<bool>,
}

fn engine(dir: &Path) -> impl Fn(fjall::Error) -> OpenError + '_ {
    move |source| OpenError::Engine {
        path: dir.to_path_buf(),
        source,
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, rebuilds every consumer from
    /// its floor and starts the writer thread, which ends when the last
    /// handle is dropped.
    pub fn open(
        dir: &Path,
        opts: EmbeddedOptions,
        specs: Vec<ConsumerSpec>,
    ) -> Result<EmbeddedStore, OpenError> {
        if dir.join("conf").is_file() && dir.join("db").is_file() {
            return Err(OpenError::OldFormat {
                path: dir.to_path_buf(),
            });
        }
        let opening = std::time::Instant::now();
        let (db, ks) = open_spaces(dir, opts.cache_bytes)?;
        check_layout(dir, &db, &ks)?;
        let corrupt = |msg: String| OpenError::Corrupt {
            path: dir.to_path_buf(),
            msg,
        };
        let last_seq = match ks.log.last_key_value() {
            None => 0,
            Some(g) => {
                let k = g.key().map_err(engine(dir))?;
                keys::be_u64(&k).ok_or_else(|| corrupt("bad log key".into()))?
            }
        };
        let last_audit = audit::last_seq(&ks.audit).map_err(|e| corrupt(e.to_string()))?;
        let mut consumers = BTreeMap::new();
        let mut arrivals: HashMap<u32, Vec<Arc<AtomicU64>>> = HashMap::new();
        for spec in specs {
            let c = Cons::load(&db, &ks, spec, last_seq).map_err(|e| corrupt(e.to_string()))?;
            if !c.spec.escalation_only {
                arrivals
                    .entry(c.spec.municipality.as_u32())
                    .or_default()
                    .push(c.unscanned.clone());
            }
            consumers.insert(c.spec.name.clone(), Arc::new(Mutex::new(c)));
        }
        let shared = Arc::new(Shared {
            db,
            ks,
            dir: dir.to_path_buf(),
            visible: AtomicU64::new(last_seq),
            broken: AtomicBool::new(false),
            disk_full: AtomicBool::new(false),
            min_free_bytes: opts.min_free_bytes,
            committed: tokio::sync::watch::channel(last_seq).0,
            consumers,
            arrivals,
            commits: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let writer = Writer::new(shared.clone(), last_seq, last_audit, &opts);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer.run(rx);
                let _ = closed_tx.send(true);
            })
            .map_err(OpenError::Thread)?;
        // How long the start took: after a crash, mostly the journal's
        // replay (bounded by spaces::JOURNAL_BOUND).
        tracing::info!(
            dir = %dir.display(),
            last_seq,
            open_ms = opening.elapsed().as_millis() as u64,
            "store opened"
        );
        Ok(EmbeddedStore { shared, tx, closed })
    }

    /// Waits until every queued write is answered and the writer has
    /// stopped, then persists the journal. Call it on the last handle.
    pub async fn close(self) {
        let EmbeddedStore {
            shared,
            tx,
            mut closed,
        } = self;
        drop(tx);
        let _ = closed.wait_for(|c| *c).await;
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = shared.db.persist(fjall::PersistMode::SyncAll) {
                tracing::warn!(error = %e, "store: final sync failed (delivery state may be offered again)");
            }
        })
        .await;
    }

    /// Group commits (one fdatasync each) made durable since open.
    pub fn group_commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Acquire)
    }

    /// Disk space the store uses, bytes (for benchmarks and the admin view).
    pub fn disk_space(&self) -> u64 {
        self.shared.db.disk_space().unwrap_or(0)
    }

    /// Runs `f` on the blocking pool: every store call that touches disk.
    fn blocking<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&shared))
                .await
                .map_err(|e| StoreError::Read(format!("store task failed: {e}")))?
        })
    }

    fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Req + Send + 'static,
    ) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
    {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(make(reply))
                .await
                .map_err(|_| StoreError::Write("the store's writer has stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Write("the store's writer has stopped".into()))?
        })
    }
}

/// The engine exactly as [`EmbeddedStore::open`] opens it (default block
/// cache, every keyspace with its memtable size), with the `log`, `ids` and
/// `idx` keyspaces, for `vendor-sim baseline`: the bare-engine yardstick must
/// use the hub's settings, not a copy of them that drifts.
#[doc(hidden)]
pub fn open_engine_for_baseline(dir: &Path) -> Result<(Database, [Keyspace; 3]), OpenError> {
    let (db, ks) = open_spaces(dir, EmbeddedOptions::default().cache_bytes)?;
    Ok((db, [ks.log, ks.ids, ks.idx]))
}

/// Refuses a directory of another layout version; stamps a new one.
pub(crate) fn check_layout(dir: &Path, db: &Database, ks: &Spaces) -> Result<(), OpenError> {
    match ks.meta.get("format").map_err(engine(dir))? {
        Some(v) if v.first() == Some(&keys::LAYOUT_VERSION) => Ok(()),
        Some(v) => Err(OpenError::Layout {
            path: dir.to_path_buf(),
            found: v.first().copied().unwrap_or(0),
            known: keys::LAYOUT_VERSION,
        }),
        None => {
            ks.meta
                .insert("format", [keys::LAYOUT_VERSION])
                .map_err(engine(dir))?;
            db.persist(fjall::PersistMode::SyncAll)
                .map_err(engine(dir))?;
            // Into a table at once: a memtable holding this one key would
            // keep every journal file sealed after it (spaces::JOURNAL_BOUND).
            ks.meta.rotate_memtable_and_wait().map_err(engine(dir))
        }
    }
}

impl Shared {
    pub(crate) fn consumer(&self, name: &str) -> Result<&Arc<Mutex<Cons>>, StoreError> {
        self.consumers
            .get(name)
            .ok_or_else(|| StoreError::UnknownConsumer(name.to_string()))
    }

    pub(crate) fn visible(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    /// Commits a delivery-side batch: written to the journal, not synced.
    /// A crash can lose it, which only offers an item again; every
    /// destination de-duplicates (conditional create, confirm by id). The
    /// next group commit's sync makes it durable along with the events.
    pub(crate) fn commit(&self, batch: fjall::OwnedWriteBatch) -> Result<(), StoreError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(StoreError::Write(
                "the store refuses writes after a failed write; restart the hub".into(),
            ));
        }
        // Consumer, dead-letter, escalation, audit and retention writes
        // change memory (pending sets, floors) before they commit. A failed
        // commit leaves memory ahead of the disk, so the store is broken
        // from here on, as after a failed group commit: writes are refused,
        // readiness fails, and a restart rebuilds every consumer from disk
        // (an item settled only in memory is offered again; none is lost).
        batch.commit().map_err(|e| {
            if matches!(&e, fjall::Error::Io(io) if writer::is_disk_full(io)) {
                self.disk_full.store(true, Ordering::Release);
            }
            self.broken.store(true, Ordering::Release);
            tracing::error!(error = %e, "store write failed; refusing writes until the hub is restarted");
            write(e)
        })
    }
}

pub(crate) fn read(e: fjall::Error) -> StoreError {
    StoreError::Read(e.to_string())
}

pub(crate) fn write(e: fjall::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain data behind; go on.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn now_micros() -> u64 {
    super::time_to_seq(chrono::Utc::now())
}

impl EventLog for EmbeddedStore {
    fn put(&self, rec: NewRecord) -> BoxFuture<'_, Result<PutOutcome, PutError>> {
        Box::pin(async move {
            rec.check_size()?;
            let stopped = || PutError::Unavailable("the store's writer has stopped".into());
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Req::Put(Box::new(rec), reply))
                .await
                .map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?
        })
    }

    fn get(
        &self,
        municipality: Orgnr,
        resource_type: ResourceType,
        id: uuid::Uuid,
    ) -> StoreFuture<'_, Option<StoredResource>> {
        self.blocking(move |s| read::get(s, municipality, resource_type, id))
    }

    fn get_many(
        &self,
        municipality: Orgnr,
        refs: Vec<ResourceRef>,
    ) -> StoreFuture<'_, Vec<Option<StoredResource>>> {
        self.blocking(move |s| {
            refs.into_iter()
                .map(|r| read::get(s, municipality, r.resource_type, r.id))
                .collect()
        })
    }

    fn search(&self, q: SearchQuery) -> StoreFuture<'_, SearchPage> {
        self.blocking(move |s| read::search(s, &q))
    }

    fn ready(&self) -> Result<(), String> {
        if self.shared.broken.load(Ordering::Acquire) {
            return Err("a store write failed; restart the hub (see the error log)".into());
        }
        if self.shared.disk_full.load(Ordering::Acquire) {
            return Err(format!(
                "the disk under {} has less than {} bytes free",
                self.shared.dir.display(),
                self.shared.min_free_bytes
            ));
        }
        Ok(())
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    fn apply_retention(
        &self,
        policy: RetentionPolicy,
        now: u64,
    ) -> StoreFuture<'_, RetentionReport> {
        self.blocking(move |s| retention::apply(s, &policy, now))
    }

    fn reclaim_space(&self, progress: ReclaimProgress) -> StoreFuture<'_, SpaceReport> {
        // A hub that stops waits for the keyspace in hand, not for the rest.
        let closed = self.closed.clone();
        self.blocking(move |s| compact::reclaim(s, &progress, &|| *closed.borrow()))
    }
}

impl Consumers for EmbeddedStore {
    fn take(
        &self,
        consumer: &str,
        max: usize,
        now: u64,
        lease_until: Option<u64>,
    ) -> StoreFuture<'_, Vec<OutboxItem>> {
        let name = consumer.to_string();
        self.blocking(move |s| consumer::take(s, &name, max, now, lease_until))
    }

    fn settle(
        &self,
        consumer: &str,
        outcomes: Vec<(u64, Settle)>,
    ) -> StoreFuture<'_, SettleReport> {
        let name = consumer.to_string();
        self.blocking(move |s| consumer::settle(s, &name, outcomes))
    }

    fn stats(&self, consumer: &str) -> StoreFuture<'_, ConsumerStats> {
        let name = consumer.to_string();
        self.blocking(move |s| stats::stats(s, &name))
    }

    fn escalate_overdue(&self, now: u64) -> StoreFuture<'_, Vec<Escalation>> {
        self.blocking(move |s| escalation::escalate_overdue(s, now))
    }

    fn dead_letters(
        &self,
        filter: DeadLetterFilter,
        limit: usize,
    ) -> StoreFuture<'_, Vec<DeadLetter>> {
        self.blocking(move |s| deadletter::dead_letters(s, &filter, limit))
    }

    fn dead_letter_replay(&self, consumer: &str, seq: u64) -> StoreFuture<'_, bool> {
        let name = consumer.to_string();
        self.blocking(move |s| deadletter::replay(s, &name, seq))
    }

    fn dead_letter_discard(
        &self,
        consumer: &str,
        seq: u64,
        reason: String,
    ) -> StoreFuture<'_, bool> {
        let name = consumer.to_string();
        self.blocking(move |s| deadletter::discard(s, &name, seq, &reason))
    }

    fn delivery_state(&self, consumer: &str, seq: u64) -> StoreFuture<'_, Option<DeliveryState>> {
        let name = consumer.to_string();
        self.blocking(move |s| deadletter::delivery_state(s, &name, seq))
    }
}

impl AuditLog for EmbeddedStore {
    fn audit_append(&self, records: Vec<AuditRecord>) -> StoreFuture<'_, Vec<u64>> {
        self.send(move |reply| Req::Audit {
            records,
            sync: true,
            reply,
        })
    }

    /// Through the writer like every audit record (it numbers them), but a
    /// group of such records alone is committed to the journal without a
    /// sync; the next synced group (or any later sync) makes it durable.
    /// The journal is one ordered file, so a settle written after the
    /// record is never durable without it.
    fn audit_append_unsynced(&self, records: Vec<AuditRecord>) -> StoreFuture<'_, Vec<u64>> {
        self.send(move |reply| Req::Audit {
            records,
            sync: false,
            reply,
        })
    }

    fn audit_search(&self, q: AuditQuery) -> StoreFuture<'_, AuditPage> {
        self.blocking(move |s| audit::search(s, &q))
    }

    fn audit_prune(&self, before: u64) -> StoreFuture<'_, usize> {
        self.blocking(move |s| audit::prune(s, before))
    }
}

impl ReplayGuard for EmbeddedStore {
    fn jti_claim(&self, client: &str, jti: &str, exp: u64, now: u64) -> StoreFuture<'_, bool> {
        let (client, jti) = (client.to_string(), jti.to_string());
        self.send(move |reply| Req::Jti {
            client,
            jti,
            exp,
            now,
            reply,
        })
    }

    fn jti_prune(&self, now: u64) -> StoreFuture<'_, usize> {
        self.send(move |reply| Req::JtiPrune { now, reply })
    }
}

#[cfg(test)]
mod compact_tests;
#[cfg(test)]
mod tests;
