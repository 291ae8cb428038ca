//! The PostgreSQL store: several hubs on one database, the same contract as
//! the embedded store.
//!
//! - **The log** is the `kp_events` table, keyed by `seq`; idempotency is
//!   the primary key of `kp_ids` (vendor, event_id), so it holds across hubs.
//! - **Group commit** ([`writer`]): one writer task per hub takes every
//!   waiting put, audit append and jti claim, and writes them in one
//!   transaction. It takes `pg_advisory_xact_lock(SEQ_LOCK)` first and
//!   assigns `seq = max(last + 1, now)` from the one-row `kp_sequencer`
//!   table, so group transactions of all hubs commit one after another in
//!   seq order: a reader never sees seq N+1 while N could still commit. The
//!   ack goes out after COMMIT (with `synchronous_commit = on`).
//! - **Consumers** ([`consumer`], [`deadletter`]): a floor row per
//!   consumer, and rows only for the exceptions (settled above the floor,
//!   escalated, explicit queue, dead letters), plus shared pull leases.
//!   Every change to one consumer runs in a transaction that locks its row,
//!   so two hubs never hand out the same item inside its lease.
//! - **Audit and used jti** ([`audit`]) are shared tables: every hub
//!   answers every request the same way.
//! - **Wake-ups** ([`notify`]): each group commit sends `NOTIFY kp_commit`;
//!   every hub LISTENs, and polls the sequencer once a second as a fallback.
//!
//! Migrations are the SQL files in `migrations/postgres/`, applied at open
//! by refinery ([`schema`]).

mod audit;
mod consumer;
mod deadletter;
mod escalation;
mod notify;
mod read;
pub mod schema;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
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
use writer::Req;

/// How the hub reaches PostgreSQL, and tuning.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// libpq-style URL or key=value string, e.g.
    /// `postgres://knutepunkt@db.example/knutepunkt`.
    pub url: String,
    /// Connections in the pool (the writer, consumers and reads share it).
    pub pool_size: usize,
    /// Schema to use instead of the URL's `search_path` (tests: one each).
    pub schema: Option<String>,
    /// This hub's name in lease rows; a hub that starts again under the same
    /// name forgets the leases it handed out (as the embedded store does).
    pub hub_id: String,
    pub max_batch: usize,
    pub queue_depth: usize,
    pub idempotency_window_us: u64,
    /// CA (PEM) that signed PostgreSQL's server certificate. With it every
    /// connection requires TLS and verifies the server's certificate and
    /// host name; without it the hub connects in plain text.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            pool_size: 16,
            schema: None,
            hub_id: format!("hub-{}", uuid::Uuid::new_v4()),
            max_batch: 256,
            queue_depth: 8192,
            idempotency_window_us: 30 * 24 * 3600 * 1_000_000,
            ca_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    #[error("store.url is not a valid PostgreSQL connection string: {0}")]
    Url(String),
    #[error(
        "cannot reach PostgreSQL at {target}: {msg}; check store.url and that the database is up"
    )]
    Connect { target: String, msg: String },
    #[error("PostgreSQL schema migration failed: {0}")]
    Migrate(String),
    #[error("PostgreSQL store setup failed: {0}")]
    Setup(String),
    #[error("TLS to PostgreSQL: {0}")]
    Tls(String),
}

/// Bounds every wait on the database, so a dead server fails requests
/// (UNAVAILABLE, `/readyz` 503) instead of hanging them.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Shared {
    pub pool: Pool,
    pub hub_id: String,
    /// Every consumer this hub was configured with, by name.
    pub consumers: std::collections::BTreeMap<String, ConsumerSpec>,
    /// Changes when records became visible or items were queued.
    pub committed: tokio::sync::watch::Sender<u64>,
    /// False while the database cannot be reached.
    pub reachable: AtomicBool,
    pub last_error: std::sync::Mutex<String>,
}

impl Shared {
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            self.mark_unreachable(&e.to_string());
            StoreError::Read(format!("cannot reach PostgreSQL: {e}"))
        })
    }

    pub(crate) fn consumer(&self, name: &str) -> Result<&ConsumerSpec, StoreError> {
        self.consumers
            .get(name)
            .ok_or_else(|| StoreError::UnknownConsumer(name.to_string()))
    }

    pub(crate) fn mark_unreachable(&self, why: &str) {
        if self.reachable.swap(false, Ordering::AcqRel) {
            tracing::error!(error = %why, "PostgreSQL unreachable: refusing writes until it answers");
        }
        *super::embedded::lock(&self.last_error) = why.to_string();
    }

    /// Wakes this hub's delivery workers (other hubs learn by NOTIFY).
    pub(crate) fn wake(&self) {
        let v = *self.committed.borrow();
        self.committed.send_replace(v);
    }
}

/// The PostgreSQL-backed [`super::Store`].
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Req>,
    closed: tokio::sync::watch::Receiver<bool>,
    background: tokio_util::sync::CancellationToken,
}

/// How this hub reaches PostgreSQL: the connection settings and the TLS
/// connector (rustls, through tokio-postgres-rustls).
#[derive(Clone)]
pub struct PgConnect {
    pub cfg: tokio_postgres::Config,
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl PgConnect {
    /// Where it points, for messages (never the password).
    pub fn target(&self) -> String {
        target(&self.cfg)
    }
}

/// The connection settings of `opts`: URL, timeouts, `synchronous_commit`
/// forced on, the schema if one is given, and TLS: required (and the
/// server's certificate verified) when `ca_file` is set, off otherwise.
pub fn pg_config(opts: &PostgresOptions) -> Result<PgConnect, PgOpenError> {
    let mut cfg: tokio_postgres::Config = opts
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgOpenError::Url(e.to_string()))?;
    let mut options = cfg.get_options().unwrap_or_default().to_string();
    options.push_str(" -c synchronous_commit=on");
    if let Some(schema) = &opts.schema {
        options.push_str(&format!(" -c search_path={schema}"));
    }
    cfg.options(options.trim());
    cfg.connect_timeout(CONNECT_TIMEOUT);
    cfg.application_name("knutepunkt");
    let tls = match &opts.ca_file {
        Some(ca) => {
            // Never "prefer": a server that declines TLS is refused.
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            crate::tls::client_config(ca).map_err(|e| PgOpenError::Tls(e.to_string()))?
        }
        None => {
            if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
                return Err(PgOpenError::Tls(
                    "store.url asks for sslmode=require, but store.ca_file is not set: \
                     set it to the CA certificate (PEM) that signed PostgreSQL's certificate"
                        .into(),
                ));
            }
            cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            plain_text_warning(&cfg);
            // Never used for a handshake (TLS is off), but the connector
            // type is one for both cases.
            rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| PgOpenError::Tls(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    Ok(PgConnect {
        cfg,
        tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls),
    })
}

/// Plain text is for a database on this machine (loopback or a Unix
/// socket); anywhere else the operator hears about it once at start.
fn plain_text_warning(cfg: &tokio_postgres::Config) {
    let remote = cfg.get_hosts().iter().any(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            !matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1" | "[::1]")
        }
        tokio_postgres::config::Host::Unix(_) => false,
    });
    if remote {
        tracing::warn!(database = %target(cfg), "connecting to PostgreSQL without TLS; set store.ca_file to require TLS and verify the server");
    }
}

/// Where `cfg` points, for messages (never the password).
pub fn target(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().unwrap_or("(default database)");
    format!("{host}:{port}/{db}")
}

impl PostgresStore {
    /// Connects, applies pending migrations, registers the consumers (a new
    /// one starts at the current end of the log), forgets the leases this
    /// hub id handed out before, and starts the writer and the listener.
    pub async fn open(
        opts: PostgresOptions,
        specs: Vec<ConsumerSpec>,
    ) -> Result<PostgresStore, PgOpenError> {
        let pg = pg_config(&opts)?;
        schema::migrate(&pg).await?;
        let mgr = Manager::from_config(
            pg.cfg.clone(),
            pg.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| PgOpenError::Setup(e.to_string()))?;
        let last_seq = consumer::register(&pool, &specs, &opts.hub_id)
            .await
            .map_err(|e| PgOpenError::Setup(e.to_string()))?;
        let shared = Arc::new(Shared {
            pool,
            hub_id: opts.hub_id.clone(),
            consumers: specs.into_iter().map(|s| (s.name.clone(), s)).collect(),
            committed: tokio::sync::watch::channel(last_seq).0,
            reachable: AtomicBool::new(true),
            last_error: std::sync::Mutex::new(String::new()),
        });
        let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let w = writer::Writer::new(shared.clone(), &opts);
        tokio::spawn(async move {
            w.run(rx).await;
            let _ = closed_tx.send(true);
        });
        let background = tokio_util::sync::CancellationToken::new();
        notify::spawn(shared.clone(), pg.clone(), background.clone());
        tracing::info!(database = %pg.target(), tls = opts.ca_file.is_some(), hub_id = %opts.hub_id, last_seq, "store opened (PostgreSQL)");
        Ok(PostgresStore {
            shared,
            tx,
            closed,
            background,
        })
    }

    /// Waits until every queued write is answered and the writer stopped,
    /// then stops the listener and closes the pool.
    pub async fn close(self) {
        let PostgresStore {
            shared,
            tx,
            mut closed,
            background,
        } = self;
        drop(tx);
        let _ = closed.wait_for(|c| *c).await;
        background.cancel();
        shared.pool.close();
    }

    fn send<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Req + Send + 'static,
    ) -> StoreFuture<'_, T> {
        Box::pin(async move {
            let stopped = || StoreError::Write("the store's writer has stopped".into());
            let (reply, rx) = oneshot::channel();
            self.tx.send(make(reply)).await.map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?
        })
    }
}

/// A database error as a read failure; marks the database unreachable when
/// the connection itself failed.
pub(crate) fn read_err(s: &Shared) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| {
        if e.is_closed() || e.as_db_error().is_none() {
            s.mark_unreachable(&e.to_string());
        }
        StoreError::Read(describe(&e))
    }
}

pub(crate) fn write_err(s: &Shared) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| {
        if e.is_closed() || e.as_db_error().is_none() {
            s.mark_unreachable(&e.to_string());
        }
        StoreError::Write(describe(&e))
    }
}

/// The error's message without the row values PostgreSQL adds as detail.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        None => {
            // The cause (a refused certificate, a reset) is in the source chain.
            let mut msg = format!("PostgreSQL connection: {e}");
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            if msg.contains("TLS") || msg.contains("certificate") {
                msg.push_str(
                    " (store.ca_file must be the CA that signed the server's certificate, \
                     and the host in store.url must be named in that certificate)",
                );
            }
            msg
        }
    }
}

pub(crate) fn now_micros() -> u64 {
    super::time_to_seq(chrono::Utc::now())
}

/// `u64` seq as the `BIGINT` it is stored as (seqs are µs since 1970 and
/// stay far below `i64::MAX`).
pub(crate) fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl EventLog for PostgresStore {
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
        Box::pin(read::get(&self.shared, municipality, resource_type, id))
    }

    fn get_many(
        &self,
        municipality: Orgnr,
        refs: Vec<ResourceRef>,
    ) -> StoreFuture<'_, Vec<Option<StoredResource>>> {
        Box::pin(read::get_many(&self.shared, municipality, refs))
    }

    fn search(&self, q: SearchQuery) -> StoreFuture<'_, SearchPage> {
        Box::pin(async move { read::search(&self.shared, &q).await })
    }

    fn ready(&self) -> Result<(), String> {
        if self.shared.reachable.load(Ordering::Acquire) {
            Ok(())
        } else {
            let why = super::embedded::lock(&self.shared.last_error).clone();
            Err(format!("PostgreSQL is unreachable ({why})"))
        }
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    fn apply_retention(
        &self,
        policy: RetentionPolicy,
        now: u64,
    ) -> StoreFuture<'_, RetentionReport> {
        Box::pin(async move { read::apply_retention(&self.shared, &policy, now).await })
    }

    fn reclaim_space(&self, _progress: ReclaimProgress) -> StoreFuture<'_, SpaceReport> {
        Box::pin(async {
            Ok(SpaceReport {
                parts: Vec::new(),
                note: Some(
                    "PostgreSQL's autovacuum makes the space of removed rows reusable; to give it \
                     back to the operating system, run VACUUM FULL on the hub's tables in a \
                     maintenance window (it locks them while it runs)"
                        .into(),
                ),
            })
        })
    }
}

impl Consumers for PostgresStore {
    fn take(
        &self,
        consumer: &str,
        max: usize,
        now: u64,
        lease_until: Option<u64>,
    ) -> StoreFuture<'_, Vec<OutboxItem>> {
        let name = consumer.to_string();
        Box::pin(async move { consumer::take(&self.shared, &name, max, now, lease_until).await })
    }

    fn settle(
        &self,
        consumer: &str,
        outcomes: Vec<(u64, Settle)>,
    ) -> StoreFuture<'_, SettleReport> {
        let name = consumer.to_string();
        Box::pin(async move { consumer::settle(&self.shared, &name, outcomes).await })
    }

    fn stats(&self, consumer: &str) -> StoreFuture<'_, ConsumerStats> {
        let name = consumer.to_string();
        Box::pin(async move { consumer::stats(&self.shared, &name).await })
    }

    fn escalate_overdue(&self, now: u64) -> StoreFuture<'_, Vec<Escalation>> {
        Box::pin(escalation::escalate_overdue(&self.shared, now))
    }

    fn dead_letters(
        &self,
        filter: DeadLetterFilter,
        limit: usize,
    ) -> StoreFuture<'_, Vec<DeadLetter>> {
        Box::pin(async move { deadletter::dead_letters(&self.shared, &filter, limit).await })
    }

    fn dead_letter_replay(&self, consumer: &str, seq: u64) -> StoreFuture<'_, bool> {
        let name = consumer.to_string();
        Box::pin(async move { deadletter::replay(&self.shared, &name, seq).await })
    }

    fn dead_letter_discard(
        &self,
        consumer: &str,
        seq: u64,
        reason: String,
    ) -> StoreFuture<'_, bool> {
        let name = consumer.to_string();
        Box::pin(async move { deadletter::discard(&self.shared, &name, seq, &reason).await })
    }

    fn delivery_state(&self, consumer: &str, seq: u64) -> StoreFuture<'_, Option<DeliveryState>> {
        let name = consumer.to_string();
        Box::pin(async move { deadletter::delivery_state(&self.shared, &name, seq).await })
    }

    fn delivery_lease(&self, consumer: &str, ttl_us: u64) -> StoreFuture<'_, bool> {
        let name = consumer.to_string();
        Box::pin(async move { deadletter::delivery_lease(&self.shared, &name, ttl_us).await })
    }

    fn delivery_lease_release(&self, consumer: &str) -> StoreFuture<'_, ()> {
        let name = consumer.to_string();
        Box::pin(async move { deadletter::delivery_lease_release(&self.shared, &name).await })
    }
}

impl AuditLog for PostgresStore {
    fn audit_append(&self, records: Vec<AuditRecord>) -> StoreFuture<'_, Vec<u64>> {
        self.send(move |reply| Req::Audit(records, reply))
    }

    fn audit_search(&self, q: AuditQuery) -> StoreFuture<'_, AuditPage> {
        Box::pin(async move { audit::search(&self.shared, &q).await })
    }

    fn audit_prune(&self, before: u64) -> StoreFuture<'_, usize> {
        Box::pin(audit::prune(&self.shared, before))
    }
}

impl ReplayGuard for PostgresStore {
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
        Box::pin(audit::jti_prune(&self.shared, now))
    }
}

/// `url` with its password (if any) replaced by `***`, for printing.
pub fn redact_url(url: &str) -> String {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        // key=value form: blank a password=... pair.
        return url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let scheme = &url[..url.len() - rest.len()];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{scheme}{}:***{}", &rest[..colon], &rest[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
