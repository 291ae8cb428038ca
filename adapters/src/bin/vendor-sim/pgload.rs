//! `vendor-sim bench-postgres`: events/s of 1, 2, 3 hubs sharing one
//! PostgreSQL, beside the embedded store and pgbench, in one run.
//!
//! Why it exists: issue 9 scales the hub out by running several stateless
//! hubs on one database. Whether that buys anything is a question of numbers
//! from one run: the same SubmitStream load against the embedded store,
//! against N real hubs (`[store] backend = "postgres"`, one schema, each
//! hub its own `hub_id`), and what the server itself does with pgbench;
//! with the rows each group transaction carried and the bytes an event
//! takes in PostgreSQL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::Args;
use sha2::{Digest, Sha256};

use crate::hubenv::{self, HubProcess};
use crate::load::{self, LoadArgs, LoadReport};
use crate::pgsql::{self, Pg, PgbenchRun, SchemaSize, ServerInfo, Summary};
use crate::{Mode, cpu};

#[derive(Args, Debug)]
pub struct PgBenchArgs {
    /// The hub binary; default: `knutepunkt` next to this executable.
    #[arg(long)]
    pub hub_bin: Option<PathBuf>,
    /// The database the hubs share; the bench makes (and drops) its own
    /// schemas in it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub pg_url: String,
    /// Hub counts to measure, one setting each (a fresh schema per setting).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3", value_parser = clap::value_parser!(u32).range(1..=8))]
    pub hubs: Vec<u32>,
    /// Events per setting (and for the embedded store).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub events: u64,
    /// Concurrent SubmitStream clients in total, spread over the hubs in turn.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
    /// Events in flight per stream.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: u32,
    /// Skip the embedded store.
    #[arg(long)]
    pub no_embedded: bool,
    /// The pgbench binary (its own insert rate on the same server).
    #[arg(long, default_value = "/usr/bin/pgbench")]
    pub pgbench: PathBuf,
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub pgbench_secs: u64,
    /// Skip pgbench.
    #[arg(long)]
    pub no_pgbench: bool,
    /// Where the hubs' directories go (certs, configs, logs, the embedded
    /// store); default: the system temp directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Give up a load after this many seconds.
    #[arg(long, default_value = "900", value_parser = crate::parse_secs)]
    pub phase_timeout: Duration,
    /// Keep the temporary directory (hub logs) for inspection; the schemas
    /// are dropped all the same.
    #[arg(long)]
    pub keep: bool,
}

/// One setting's load and what it left behind.
pub struct Setting {
    /// 0: the embedded store.
    pub hubs: u32,
    pub load: LoadReport,
    /// Rows per group transaction (postgres) or events per sync (embedded:
    /// `knutepunkt_store_group_size`), summed over the hubs.
    pub rows_per_tx: Summary,
    pub commit_seconds: Summary,
    /// PostgreSQL only.
    pub size: Option<SchemaSize>,
    /// Embedded only: `du` of the data directory.
    pub disk_bytes: u64,
    /// CPU seconds used during the load.
    pub cpu: CpuUse,
}

/// CPU seconds used during one load, by whom.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuUse {
    pub hubs: f64,
    /// Every process named `postgres` on this machine (the server's
    /// backends and background writers; other users' sessions too).
    pub postgres: f64,
    /// This process: the load generator.
    pub loadgen: f64,
}

impl CpuUse {
    fn now(hubs: &[HubProcess]) -> CpuUse {
        CpuUse {
            hubs: hubs.iter().map(|h| cpu::of_pid(h.pid)).sum(),
            postgres: cpu::of_name("postgres"),
            loadgen: cpu::of_self(),
        }
    }

    fn since(self, before: CpuUse) -> CpuUse {
        CpuUse {
            hubs: self.hubs - before.hubs,
            postgres: (self.postgres - before.postgres).max(0.0),
            loadgen: self.loadgen - before.loadgen,
        }
    }
}

/// Everything one run measured.
pub struct PgReport<'a> {
    pub a: &'a PgBenchArgs,
    pub bin: &'a Path,
    pub server: ServerInfo,
    pub settings: Vec<Setting>,
    /// pgbench runs, or why none ran.
    pub pgbench: Result<Vec<PgbenchRun>, String>,
    /// The payload pgbench inserted per row, bytes.
    pub payload: usize,
    pub loads: [String; 2],
    pub started_at: chrono::DateTime<Utc>,
}

/// What every phase of one run shares.
struct Ctx<'a> {
    a: &'a PgBenchArgs,
    bin: &'a Path,
    work: &'a Path,
    certs: &'a Path,
    token: &'a AdminToken,
    pg: &'a Pg,
}

/// The admin credential every hub of the run accepts (`/metrics`).
struct AdminToken {
    token: String,
    sha256: String,
}

impl AdminToken {
    fn new() -> AdminToken {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let sha256 = Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        AdminToken { token, sha256 }
    }
}

pub async fn run(a: PgBenchArgs) -> Result<()> {
    let bin = hubenv::sibling_bin(a.hub_bin.clone(), "knutepunkt")?;
    let parent = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("knutepunkt-pgbench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let started_at = Utc::now();
    let load_start = hubenv::loadavg_line("load average at the start");
    eprintln!(
        "bench-postgres: work directory {}; {load_start}",
        work.path().display()
    );
    let pg = Pg::connect(&a.pg_url).await?;
    let server = pg.server_info().await?;
    let certs = work.path().join("certs");
    hubenv::make_certs(&bin, &certs).await?;
    let token = AdminToken::new();
    let run_id: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(10)
        .collect();

    let cx = Ctx {
        a: &a,
        bin: &bin,
        work: work.path(),
        certs: &certs,
        token: &token,
        pg: &pg,
    };
    let mut settings = Vec::new();
    if !a.no_embedded {
        settings.push(embedded(&cx).await?);
    }
    for &n in &a.hubs {
        let schema = format!("kp_bench_{run_id}_{n}");
        pg.create_schema(&schema).await?;
        let r = postgres(&cx, &schema, n).await;
        let dropped = pg.drop_schema(&schema).await;
        settings.push(r?);
        dropped?;
    }
    let (pgbench, payload) = server_rate(&cx, &run_id, &settings).await?;
    pg.close();
    let report = PgReport {
        a: &a,
        bin: &bin,
        server,
        settings,
        pgbench,
        payload,
        loads: [load_start, hubenv::loadavg_line("at the end")],
        started_at,
    };
    println!("{}", crate::pgreport::markdown(&report));
    if a.keep {
        let kept = work.keep();
        eprintln!("bench-postgres: kept {}", kept.display());
    }
    Ok(())
}

/// pgbench in a scratch schema of its own, with rows as big as the hubs'
/// event rows (the mean of the last setting) and their rows per
/// transaction: the runs (or why none ran) and the payload size.
async fn server_rate(
    cx: &Ctx<'_>,
    run_id: &str,
    settings: &[Setting],
) -> Result<(Result<Vec<PgbenchRun>, String>, usize)> {
    let (a, pg) = (cx.a, cx.pg);
    let payload = settings
        .iter()
        .rev()
        .find_map(|s| s.size.as_ref().map(|z| z.avg_row.round() as usize))
        .unwrap_or(1500)
        .max(64);
    let rows = settings
        .iter()
        .rev()
        .find(|s| s.hubs > 0)
        .map(|s| s.rows_per_tx.mean().round().max(1.0) as u32)
        .unwrap_or(64);
    if a.no_pgbench {
        return Ok((Err("skipped (--no-pgbench)".to_string()), payload));
    }
    if !a.pgbench.is_file() {
        let why = format!("skipped: {} not found", a.pgbench.display());
        return Ok((Err(why), payload));
    }
    let schema = format!("kp_bench_{run_id}_pgbench");
    pg.create_schema(&schema).await?;
    let r = pgbench_runs(a, pg, cx.work, &schema, payload, rows).await;
    let dropped = pg.drop_schema(&schema).await;
    let r = r.map_err(|e| format!("failed: {e:#}").replace('|', "/"));
    dropped?;
    Ok((r, payload))
}

/// The stream load of every setting, against `hubs` (clients take them in turn).
async fn stream_load(
    a: &PgBenchArgs,
    hubs: &[HubProcess],
    tag: &str,
    seed: u64,
) -> Result<(LoadReport, CpuUse)> {
    let Some(first) = hubs.first() else {
        bail!("no hub to load");
    };
    let mut args = LoadArgs::new(first.grpc, first.conn(), Mode::Stream, a.clients, a.events);
    args.more_hubs = hubs.iter().skip(1).map(|h| h.grpc).collect();
    args.window = a.window;
    args.prefix = Some(format!("pgbench-{tag}"));
    args.seed = seed;
    args.max_time = a.phase_timeout;
    eprintln!(
        "bench-postgres: {tag}: {} clients × window {} over {} hub(s), {} events",
        a.clients,
        a.window,
        hubs.len(),
        a.events
    );
    let before = CpuUse::now(hubs);
    let report = load::run(&args, true).await?;
    Ok((report, CpuUse::now(hubs).since(before)))
}

/// The same load against one hub on the embedded store.
async fn embedded(cx: &Ctx<'_>) -> Result<Setting> {
    let (a, token) = (cx.a, cx.token);
    let dir = cx.work.join("embedded");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let env = [(
        "KNUTEPUNKT_ADMIN__TOKEN_SHA256".to_string(),
        token.sha256.clone(),
    )];
    let hub = HubProcess::start_with_env(cx.bin, &dir, cx.certs, None, &env).await?;
    let result = stream_load(a, std::slice::from_ref(&hub), "embedded", 100).await;
    let metrics = pgsql::scrape(hub.admin, &token.token).await;
    eprintln!("bench-postgres: {}", hub.stop().await?);
    let (load, cpu) = result?;
    let metrics = metrics?;
    Ok(Setting {
        hubs: 0,
        load,
        rows_per_tx: pgsql::summary(&metrics, "knutepunkt_store_group_size"),
        commit_seconds: pgsql::summary(&metrics, "knutepunkt_store_commit_seconds"),
        size: None,
        disk_bytes: hubenv::du_bytes(&dir.join("hub")),
        cpu,
    })
}

/// `n` hubs on `schema`, the load spread over them, then their metrics and
/// what they left in the schema.
async fn postgres(cx: &Ctx<'_>, schema: &str, n: u32) -> Result<Setting> {
    let token = cx.token;
    let mut hubs = Vec::new();
    let started = start_hubs(cx, schema, n, &mut hubs).await;
    let result = match started {
        Ok(()) => stream_load(cx.a, &hubs, &format!("{n}-hubs"), u64::from(n)).await,
        Err(e) => Err(e),
    };
    let (mut rows, mut commit) = (Summary::default(), Summary::default());
    let mut scraped = Ok(());
    for h in &hubs {
        match pgsql::scrape(h.admin, &token.token).await {
            Ok(m) => {
                rows.add(pgsql::summary(&m, "knutepunkt_store_rows_per_transaction"));
                commit.add(pgsql::summary(&m, "knutepunkt_store_commit_seconds"));
            }
            Err(e) => scraped = Err(e),
        }
    }
    for h in hubs {
        eprintln!("bench-postgres: {}", h.stop().await?);
    }
    let (load, cpu) = result?;
    scraped?;
    let size = cx.pg.schema_size(schema).await?;
    eprintln!(
        "bench-postgres: {n} hub(s): {:.0} events/s; {} events in {schema}, {:.0} bytes each",
        load.accepted_per_sec(),
        size.events,
        size.bytes_per_event()
    );
    Ok(Setting {
        hubs: n,
        load,
        rows_per_tx: rows,
        commit_seconds: commit,
        size: Some(size),
        disk_bytes: 0,
        cpu,
    })
}

/// Starts hub 1..=n on `schema`, each with its own `hub_id` and directory.
/// Pushed into `out` as they come up, so the caller stops them all even
/// when a later one fails.
async fn start_hubs(cx: &Ctx<'_>, schema: &str, n: u32, out: &mut Vec<HubProcess>) -> Result<()> {
    for i in 1..=n {
        let dir = cx.work.join(format!("pg{n}-hub{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let env: Vec<(String, String)> = [
            ("KNUTEPUNKT_STORE__BACKEND", "postgres".to_string()),
            ("KNUTEPUNKT_STORE__URL", cx.pg.store_url(schema)),
            ("KNUTEPUNKT_STORE__HUB_ID", format!("bench-hub-{i}")),
            ("KNUTEPUNKT_ADMIN__TOKEN_SHA256", cx.token.sha256.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let hub = HubProcess::start_with_env(cx.bin, &dir, cx.certs, None, &env).await?;
        eprintln!(
            "bench-postgres: hub {i}/{n} pid {} on gRPC {} (schema {schema})",
            hub.pid, hub.grpc
        );
        out.push(hub);
    }
    Ok(())
}

/// pgbench with one row per transaction (the commit ceiling) and with the
/// hubs' mean rows per transaction, at 1 client and at the largest hub count.
async fn pgbench_runs(
    a: &PgBenchArgs,
    pg: &Pg,
    work: &Path,
    schema: &str,
    payload: usize,
    rows: u32,
) -> Result<Vec<PgbenchRun>> {
    let table = pg.scratch_table(schema).await?;
    let mut clients = a.hubs.clone();
    clients.sort_unstable();
    clients.dedup();
    let mut row_counts = vec![1];
    if rows > 1 {
        row_counts.push(rows);
    }
    let mut out = Vec::new();
    for &r in &row_counts {
        for &c in &clients {
            eprintln!(
                "bench-postgres: pgbench, {c} client(s), {r} row(s) of {payload} bytes per transaction, {} s",
                a.pgbench_secs
            );
            let job = pgsql::Job {
                bin: &a.pgbench,
                table: &table,
                clients: c,
                rows: r,
                payload,
                secs: a.pgbench_secs,
            };
            out.push(pgsql::pgbench(pg, work, &job).await?);
        }
    }
    Ok(out)
}
