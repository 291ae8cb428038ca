//! PostgreSQL for `vendor-sim bench-postgres`: a throw-away schema per
//! setting, what the hubs left in it (rows, bytes), pgbench's own insert
//! rate on the same server, and the hubs' group-commit metrics.
//!
//! Why it exists: an events/s figure of hubs on PostgreSQL means little
//! without what that server does alone (pgbench, minutes apart) and without
//! how many rows each commit carried.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;
use tokio_postgres::NoTls;

/// One connection for setting up and measuring (never the hubs' own).
pub struct Pg {
    pub cfg: tokio_postgres::Config,
    pub url: String,
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

/// What the server is and how it syncs.
pub struct ServerInfo {
    pub version: String,
    pub fsync: String,
    pub synchronous_commit: String,
    pub wal_sync_method: String,
}

/// Tables of one schema after a setting.
pub struct SchemaSize {
    /// `count(*)` of `kp_events`.
    pub events: u64,
    /// Sum of `pg_total_relation_size` (heap, TOAST, indexes) of every table.
    pub total_bytes: u64,
    /// The largest tables, (name, bytes).
    pub tables: Vec<(String, u64)>,
    /// Mean `pg_column_size` of a `kp_events` row, and of its `json`.
    pub avg_row: f64,
    pub avg_json: f64,
}

impl SchemaSize {
    pub fn bytes_per_event(&self) -> f64 {
        self.total_bytes as f64 / self.events.max(1) as f64
    }
}

impl Pg {
    pub async fn connect(url: &str) -> Result<Pg> {
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .with_context(|| format!("--pg-url {url:?} is not a PostgreSQL connection string"))?;
        cfg.connect_timeout(Duration::from_secs(5));
        cfg.application_name("vendor-sim bench-postgres");
        let (client, conn) = cfg.connect(NoTls).await.with_context(|| {
            format!("cannot reach PostgreSQL at {url}; start it or pass --pg-url")
        })?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Pg {
            cfg,
            url: url.to_string(),
            client,
            task,
        })
    }

    pub async fn server_info(&self) -> Result<ServerInfo> {
        let show = |what: &'static str| async move {
            self.client
                .query_one(&format!("SHOW {what}"), &[])
                .await
                .map(|r| r.get::<_, String>(0))
                .with_context(|| format!("SHOW {what}"))
        };
        Ok(ServerInfo {
            version: show("server_version").await?,
            fsync: show("fsync").await?,
            synchronous_commit: show("synchronous_commit").await?,
            wal_sync_method: show("wal_sync_method").await?,
        })
    }

    pub async fn create_schema(&self, name: &str) -> Result<()> {
        self.client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .with_context(|| {
                format!("CREATE SCHEMA {name} (may this user create schemas in the database?)")
            })
    }

    pub async fn drop_schema(&self, name: &str) -> Result<()> {
        self.client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
            .await
            .with_context(|| format!("DROP SCHEMA {name}"))
    }

    /// The store URL that puts a hub on `schema` (`search_path` in `options`).
    pub fn store_url(&self, schema: &str) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{schema}", self.url)
    }

    /// Rows and bytes the hubs left in `schema`.
    pub async fn schema_size(&self, schema: &str) -> Result<SchemaSize> {
        let rows = self
            .client
            .query(
                "SELECT c.relname::text, pg_total_relation_size(c.oid)::bigint \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 2 DESC",
                &[&schema],
            )
            .await
            .context("reading table sizes")?;
        let tables: Vec<(String, u64)> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64))
            .collect();
        let r = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(avg(pg_column_size(e.*)), 0)::float8, \
                     coalesce(avg(pg_column_size(e.json)), 0)::float8 FROM {schema}.kp_events e"
                ),
                &[],
            )
            .await
            .context("counting kp_events")?;
        Ok(SchemaSize {
            events: r.get::<_, i64>(0).max(0) as u64,
            total_bytes: tables.iter().map(|(_, b)| b).sum(),
            tables,
            avg_row: r.get(1),
            avg_json: r.get(2),
        })
    }

    /// A scratch table in `schema` for pgbench: a bigserial key and a text
    /// payload (no secondary index: the server's ceiling, not the hub's layout).
    pub async fn scratch_table(&self, schema: &str) -> Result<String> {
        let t = format!("{schema}.pgb_rows");
        self.client
            .batch_execute(&format!(
                "CREATE TABLE {t} (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL)"
            ))
            .await
            .with_context(|| format!("creating {t}"))?;
        Ok(t)
    }

    pub fn close(self) {
        drop(self.client);
        self.task.abort();
    }
}

/// One pgbench run.
pub struct PgbenchRun {
    pub clients: u32,
    pub rows_per_tx: u32,
    pub secs: u64,
    pub transactions: u64,
    pub tps: f64,
    pub latency_ms: f64,
}

impl PgbenchRun {
    pub fn rows_per_sec(&self) -> f64 {
        self.tps * f64::from(self.rows_per_tx)
    }
}

/// What one pgbench run does.
#[derive(Clone, Copy)]
pub struct Job<'a> {
    pub bin: &'a Path,
    pub table: &'a str,
    pub clients: u32,
    pub rows: u32,
    pub payload: usize,
    pub secs: u64,
}

/// Runs pgbench against `pg`'s server: `clients` connections (`-j` the same),
/// each transaction one INSERT of `rows` rows of `payload` random bytes
/// (hex of md5, so nothing compresses) into `table`, for `secs` seconds,
/// `synchronous_commit=on` as the hub has it. Progress (`-P 1`) on stderr.
pub async fn pgbench(pg: &Pg, work: &Path, job: &Job<'_>) -> Result<PgbenchRun> {
    let Job {
        bin,
        table,
        clients,
        rows,
        payload,
        secs,
    } = *job;
    let chunks = payload.div_ceil(32).max(1);
    // The correlated `g` makes PostgreSQL build a fresh payload per row.
    let script = format!(
        "INSERT INTO {table} (payload) SELECT (SELECT string_agg(md5(random()::text || g::text || k::text), '') \
         FROM generate_series(1, {chunks}) k) FROM generate_series(1, {rows}) g;\n"
    );
    let file = work.join(format!("pgbench-{clients}c-{rows}r.sql"));
    std::fs::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
    let cfg = &pg.cfg;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let mut cmd = Command::new(bin);
    let (port, clients_s) = (port.to_string(), clients.to_string());
    cmd.args(["-n", "-h", host.as_str(), "-p", port.as_str()])
        .arg("-f")
        .arg(&file)
        .args(["-c", clients_s.as_str(), "-j", clients_s.as_str()])
        .arg("-T")
        .arg(secs.to_string())
        .args(["-P", "1"])
        .env("PGOPTIONS", "-c synchronous_commit=on")
        .env("PGAPPNAME", "vendor-sim bench-postgres")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(user) = cfg.get_user() {
        cmd.args(["-U", user]);
    }
    cmd.arg(cfg.get_dbname().unwrap_or("postgres"));
    // spawn + wait_with_output, not output(): that would capture stderr too,
    // and the progress lines belong on ours.
    let out = cmd
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?
        .wait_with_output()
        .await
        .with_context(|| format!("waiting for {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed ({}): {text}", out.status);
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let tps = field("tps = ").with_context(|| format!("no tps in pgbench's output: {text}"))?;
    Ok(PgbenchRun {
        clients,
        rows_per_tx: rows,
        secs,
        transactions: field("number of transactions actually processed: ").unwrap_or(0.0) as u64,
        tps,
        latency_ms: field("latency average = ").unwrap_or(0.0),
    })
}

/// A Prometheus summary's totals, summed over hubs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub sum: f64,
    pub count: f64,
    /// The largest p50 and p99 of the hubs (the exporter's rolling window).
    pub p50: f64,
    pub p99: f64,
}

impl Summary {
    pub fn mean(&self) -> f64 {
        self.sum / self.count.max(1.0)
    }

    pub fn add(&mut self, o: Summary) {
        self.sum += o.sum;
        self.count += o.count;
        self.p50 = self.p50.max(o.p50);
        self.p99 = self.p99.max(o.p99);
    }
}

/// The summary `name` in Prometheus text (`name{quantile=..}`, `name_sum`,
/// `name_count`); zeros where a line is missing.
pub fn summary(text: &str, name: &str) -> Summary {
    let mut s = Summary::default();
    for line in text.lines().filter(|l| l.starts_with(name)) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        match &key[name.len()..] {
            "_sum" => s.sum = v,
            "_count" => s.count = v,
            r#"{quantile="0.5"}"# => s.p50 = v,
            r#"{quantile="0.99"}"# => s.p99 = v,
            _ => {}
        }
    }
    s
}

/// The hub's Prometheus text from its admin listener.
pub async fn scrape(admin: std::net::SocketAddr, token: &str) -> Result<String> {
    let r = reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .context("GET /metrics")?;
    if !r.status().is_success() {
        bail!("GET /metrics on {admin}: HTTP {}", r.status());
    }
    r.text().await.context("reading /metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_summary() {
        let text = "# TYPE knutepunkt_store_rows_per_transaction summary\n\
            knutepunkt_store_rows_per_transaction{quantile=\"0.5\"} 12\n\
            knutepunkt_store_rows_per_transaction{quantile=\"0.99\"} 256\n\
            knutepunkt_store_rows_per_transaction_sum 3000\n\
            knutepunkt_store_rows_per_transaction_count 100\n\
            knutepunkt_store_rows_per_transaction_other 7\n";
        let s = summary(text, "knutepunkt_store_rows_per_transaction");
        assert_eq!((s.sum, s.count, s.p50, s.p99), (3000.0, 100.0, 12.0, 256.0));
        assert_eq!(s.mean(), 30.0);
        assert_eq!(summary(text, "missing").count, 0.0);
    }
}
