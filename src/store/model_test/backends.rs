//! The backends the model test drives: the embedded store, PostgreSQL (a
//! schema per case) and the model itself on the wall clock.

use std::path::Path;
use std::sync::Arc;

use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::store::memory::MemoryStore;
use crate::store::postgres::{PostgresOptions, PostgresStore};
use crate::store::{ConsumerSpec, Store};

/// A store implementation under test.
pub(super) trait Backend: Sized {
    /// Opens (or reopens) the store kept in `dir`.
    async fn open(dir: &Path, consumers: Vec<ConsumerSpec>, window_us: u64) -> Self;
    fn store(&self) -> &dyn Store;
    /// Stops the store as the hub does at shutdown and opens it again.
    async fn restart(self, dir: &Path, consumers: Vec<ConsumerSpec>, window_us: u64) -> Self;
    /// Stops the store for good (before its directory is removed).
    async fn close(self);
}

pub(super) struct Embedded(EmbeddedStore);

impl Backend for Embedded {
    async fn open(dir: &Path, consumers: Vec<ConsumerSpec>, window_us: u64) -> Self {
        let opts = EmbeddedOptions {
            min_free_bytes: 0,
            cache_bytes: 4 * 1024 * 1024,
            idempotency_window_us: window_us,
            ..EmbeddedOptions::default()
        };
        Embedded(EmbeddedStore::open(dir, opts, consumers).unwrap_or_else(|e| panic!("{e}")))
    }

    fn store(&self) -> &dyn Store {
        &self.0
    }

    async fn restart(self, dir: &Path, consumers: Vec<ConsumerSpec>, window_us: u64) -> Self {
        self.0.close().await;
        Self::open(dir, consumers, window_us).await
    }

    async fn close(self) {
        self.0.close().await;
    }
}

/// The model itself on the wall clock: checks the test's own plumbing
/// (seq read-back, normalization) and runs without any backend.
pub(super) struct WallClockModel(MemoryStore);

pub(super) fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Backend for WallClockModel {
    async fn open(_dir: &Path, consumers: Vec<ConsumerSpec>, window_us: u64) -> Self {
        WallClockModel(MemoryStore::new(
            consumers,
            window_us,
            Arc::new(wall_micros),
        ))
    }

    fn store(&self) -> &dyn Store {
        &self.0
    }

    async fn restart(self, _dir: &Path, consumers: Vec<ConsumerSpec>, _window: u64) -> Self {
        self.0.restart_with(consumers);
        self
    }

    async fn close(self) {}
}

/// The PostgreSQL store, each case in a schema of its own
/// (`kp_test_<random>`, dropped at close), so cases and test binaries run
/// side by side on one database.
pub(super) struct Postgres {
    store: PostgresStore,
    schema: String,
}

/// The database the PostgreSQL tests use (`KNUTEPUNKT_TEST_PG_URL`,
/// default: this machine's, database `test`).
pub(crate) fn test_pg_url() -> String {
    std::env::var("KNUTEPUNKT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// What PostgreSQL said: "db error" alone does not say what it refused.
fn pg_error(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {} ({})", db.message(), db.code().code()),
        None => format!("{e}"),
    }
}

/// Runs `sql` on the test database; `Err` when it cannot be reached.
pub(crate) async fn pg_admin(sql: &str) -> Result<(), String> {
    let cfg: tokio_postgres::Config = test_pg_url().parse().map_err(|e| format!("{e}"))?;
    let mut cfg = cfg;
    cfg.connect_timeout(std::time::Duration::from_secs(3));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(pg_error)?;
    let task = tokio::spawn(conn);
    let r = client.batch_execute(sql).await.map_err(pg_error);
    drop(client);
    let _ = task.await;
    r
}

impl Postgres {
    async fn open_schema(schema: String, consumers: Vec<ConsumerSpec>, window_us: u64) -> Self {
        let opts = PostgresOptions {
            url: test_pg_url(),
            pool_size: 4,
            schema: Some(schema.clone()),
            hub_id: "model-test".into(),
            idempotency_window_us: window_us,
            ..PostgresOptions::default()
        };
        let store = PostgresStore::open(opts, consumers)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Postgres { store, schema }
    }
}

impl Backend for Postgres {
    async fn open(_dir: &Path, consumers: Vec<ConsumerSpec>, window_us: u64) -> Self {
        let schema = format!("kp_test_{}", uuid::Uuid::new_v4().simple());
        pg_admin(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap_or_else(|e| panic!("create schema: {e}"));
        Self::open_schema(schema, consumers, window_us).await
    }

    fn store(&self) -> &dyn Store {
        &self.store
    }

    async fn restart(self, _dir: &Path, consumers: Vec<ConsumerSpec>, window_us: u64) -> Self {
        self.store.close().await;
        Self::open_schema(self.schema, consumers, window_us).await
    }

    async fn close(self) {
        self.store.close().await;
        if let Err(e) = pg_admin(&format!("DROP SCHEMA {} CASCADE", self.schema)).await {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
    }
}

/// Whether the test database answers. Without it a PostgreSQL test skips
/// (and says so), except under `CI=true`, where it fails.
pub(crate) fn postgres_available(test: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    match rt.block_on(pg_admin("SELECT 1")) {
        Ok(()) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "{test}: PostgreSQL at {} is required under CI=true: {e}",
                test_pg_url()
            )
        }
        Err(e) => {
            eprintln!("SKIPPED {test}: no PostgreSQL at {} ({e})", test_pg_url());
            false
        }
    }
}
