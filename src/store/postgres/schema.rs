//! The schema: versioned SQL files in `migrations/postgres/`, embedded in
//! the binary and applied at open by refinery. Hubs starting together take
//! a session advisory lock around it, so only one migrates.

use super::{PgConnect, PgOpenError};

refinery::embed_migrations!("migrations/postgres");

/// Session advisory lock held while migrating (any constant shared by all hubs).
const MIGRATE_LOCK: i64 = 7_403_250;

async fn connect(
    pg: &PgConnect,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), PgOpenError> {
    let (client, conn) =
        pg.cfg
            .connect(pg.tls.clone())
            .await
            .map_err(|e| PgOpenError::Connect {
                target: pg.target(),
                msg: super::describe(&e),
            })?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL set-up connection ended");
        }
    });
    Ok((client, task))
}

/// Applies every migration not yet applied.
pub async fn migrate(pg: &PgConnect) -> Result<(), PgOpenError> {
    let (mut client, task) = connect(pg).await?;
    let m = |e: tokio_postgres::Error| PgOpenError::Migrate(super::describe(&e));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(m)?;
    let report = migrations::runner()
        .set_abort_divergent(true)
        .run_async(&mut client)
        .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await;
    drop(client);
    task.abort();
    let report = report.map_err(|e| PgOpenError::Migrate(e.to_string()))?;
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = %m.name(), "PostgreSQL migration applied");
    }
    Ok(())
}

/// The newest schema version this build knows.
pub fn known_version() -> u32 {
    migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version() as u32)
        .max()
        .unwrap_or(0)
}

/// What `knutepunkt check-config` reports about the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    pub target: String,
    pub server_version: String,
    /// `None`: no schema yet (the hub creates it at start).
    pub applied: Option<u32>,
    pub known: u32,
}

/// Connects and reads the applied schema version, changing nothing.
pub async fn status(pg: &PgConnect) -> Result<SchemaStatus, PgOpenError> {
    let (client, task) = connect(pg).await?;
    let q = |e: tokio_postgres::Error| PgOpenError::Setup(super::describe(&e));
    let server_version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(q)?
        .get(0);
    let has_table: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    let applied = if has_table {
        let v: Option<i32> = client
            .query_one("SELECT max(version) FROM refinery_schema_history", &[])
            .await
            .map_err(q)?
            .get(0);
        v.map(|v| v as u32)
    } else {
        None
    };
    drop(client);
    task.abort();
    Ok(SchemaStatus {
        target: pg.target(),
        server_version,
        applied,
        known: known_version(),
    })
}
