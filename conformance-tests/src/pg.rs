//! PostgreSQL for the black-box tests: a schema per test (or per group of
//! hubs sharing one store), dropped when the last handle goes.
//!
//! `KNUTEPUNKT_TEST_BACKEND=postgres` runs every [`crate::harness::Hub`] on
//! the PostgreSQL backend, each hub in a schema of its own. The database is
//! `KNUTEPUNKT_TEST_PG_URL` (default: this machine's, database `test`).
//! Without one, a test that needs it says it skipped; under `CI=true` it
//! fails instead.

use std::sync::Arc;

use anyhow::{Context, Result, bail};

/// The test database's URL.
pub fn url() -> String {
    std::env::var("KNUTEPUNKT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Whether the harness runs hubs on PostgreSQL (`KNUTEPUNKT_TEST_BACKEND`).
pub fn backend_is_postgres() -> bool {
    std::env::var("KNUTEPUNKT_TEST_BACKEND").as_deref() == Ok("postgres")
}

async fn admin(url: &str, sql: &str) -> Result<()> {
    let mut cfg: tokio_postgres::Config = url.parse().context("KNUTEPUNKT_TEST_PG_URL")?;
    cfg.connect_timeout(std::time::Duration::from_secs(3));
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {url}"))?;
    let task = tokio::spawn(conn);
    let r = client.batch_execute(sql).await;
    drop(client);
    let _ = task.await;
    r.with_context(|| format!("PostgreSQL: {sql}"))
}

/// One schema; dropped (with everything in it) when the last clone goes.
#[derive(Debug)]
pub struct Schema {
    pub name: String,
    /// The database it lives in ([`url`], or a test's own server).
    db_url: String,
}

impl Schema {
    /// The store URL for hubs on this schema.
    pub fn store_url(&self) -> String {
        let base = &self.db_url;
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-csearch_path%3D{}", self.name)
    }

    /// The environment that puts a hub on this schema under `hub_id`.
    pub fn env(&self, hub_id: &str) -> Vec<(String, String)> {
        vec![
            ("KNUTEPUNKT_STORE__BACKEND".into(), "postgres".into()),
            ("KNUTEPUNKT_STORE__URL".into(), self.store_url()),
            ("KNUTEPUNKT_STORE__HUB_ID".into(), hub_id.into()),
        ]
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let url = self.db_url.clone();
        // Drop may run inside a runtime: do it on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt
                && let Err(e) = rt.block_on(admin(&url, &sql))
            {
                eprintln!("could not drop a test schema: {e:#}");
            }
        })
        .join();
    }
}

/// A fresh schema `kp_ct_<random>`. `Ok(None)`: no PostgreSQL here (the
/// caller skips, and this said so); under `CI=true` that is an error.
pub async fn schema(test: &str) -> Result<Option<Arc<Schema>>> {
    let name = format!("kp_ct_{:016x}", fastrand_u64());
    let db_url = url();
    match admin(&db_url, &format!("CREATE SCHEMA {name}")).await {
        Ok(()) => Ok(Some(Arc::new(Schema { name, db_url }))),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            bail!("{test}: PostgreSQL is required under CI=true: {e:#}")
        }
        Err(e) => {
            eprintln!("SKIPPED {test}: no PostgreSQL ({e:#})");
            Ok(None)
        }
    }
}

/// A fresh schema in the database at `db_url` (a test's own server, see
/// [`crate::pgserver`]); there it must work, so no skipping.
pub async fn schema_in(db_url: &str) -> Result<Arc<Schema>> {
    let name = format!("kp_ct_{:016x}", fastrand_u64());
    admin(db_url, &format!("CREATE SCHEMA {name}")).await?;
    Ok(Arc::new(Schema {
        name,
        db_url: db_url.to_string(),
    }))
}

/// A random number from the standard library's hasher seed (no extra crate).
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// For tests of the embedded store's own files (backup of `data_dir`, a
/// full disk, a power cut): under `KNUTEPUNKT_TEST_BACKEND=postgres` they
/// have nothing to test, so they say so and the caller returns. This is not
/// a skip: the default (embedded) pass of the same suite runs them.
pub fn embedded_store_only(test: &str) -> bool {
    if backend_is_postgres() {
        eprintln!("NOT ON POSTGRES {test}: it tests the embedded store's own files");
        return true;
    }
    false
}

/// `n` hubs sharing `schema` as `hub-0`, `hub-1`, …, each with its own data
/// directory and `config_extra` (e.g. destinations) in its config.
pub async fn hubs_on(
    schema: &Arc<Schema>,
    n: usize,
    config_extra: &str,
) -> Result<(Vec<crate::harness::Hub>, Vec<tempfile::TempDir>)> {
    let (mut hubs, mut dirs) = (Vec::new(), Vec::new());
    for i in 0..n {
        let dir = tempfile::tempdir()?;
        let opts = crate::harness::HubOptions {
            pg: Some(schema.clone()),
            hub_id: Some(format!("hub-{i}")),
            config_extra: config_extra.to_string(),
            ..crate::harness::HubOptions::default()
        };
        hubs.push(crate::harness::Hub::start(dir.path(), opts).await?);
        dirs.push(dir);
    }
    Ok((hubs, dirs))
}
