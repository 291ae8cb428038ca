//! `vendor-sim bench`: every number the hub is judged by, in one run.
//!
//! Why it exists: a throughput figure is only meaningful next to what the
//! same disk does without the hub, measured minutes apart on the same
//! machine. This command starts the real `knutepunkt` binary on a fresh
//! temporary data directory and free loopback ports, measures the sled +
//! fdatasync baseline in a sibling directory, then stream load, unary load,
//! a steady 1,000 events/s for ack latency, optionally FHIR search latency
//! with many events stored, and the hub's memory, and prints one Markdown
//! table with ratios. Progress goes to stderr; the table to stdout.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{SecondsFormat, Utc};
use clap::Args;
use hdrhistogram::Histogram;
use knutepunkt::sim::{BERGEN, OSLO, SplitMix64};

use crate::Mode;
use crate::baseline::{self, BaselineReport};
use crate::hubenv::{self, EPJ_BERGEN, EPJ_OSLO, HubProcess};
use crate::load::{self, LoadArgs, LoadReport};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The hub binary; default: `knutepunkt` next to this executable.
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Where the temporary directories go (the disk under test); default: the
    /// system temp directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Stream load: concurrent clients.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    clients: u32,
    /// Stream load: events in total (also the baseline's insert count).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    stream_events: u64,
    /// Stream load: events in flight per stream.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    window: u32,
    /// Unary load: concurrent clients.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    unary_clients: u32,
    /// Unary load: events in total.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    unary_events: u64,
    /// Steady phase: events per second.
    #[arg(long, default_value = "1000", value_parser = crate::parse_rate)]
    steady_rate: f64,
    /// Steady phase: seconds.
    #[arg(long, default_value = "10", value_parser = crate::parse_secs)]
    steady_secs: Duration,
    /// Steady phase: clients (streams) sharing the rate.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    steady_clients: u32,
    /// Baseline: inserts per flush + fdatasync.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch: u64,
    /// Also time FHIR searches with --search-stored events in the hub.
    #[arg(long)]
    search: bool,
    /// With --search: top the hub up to this many stored events first.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    search_stored: u64,
    /// With --search: number of timed searches.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    searches: u64,
    /// Give up a phase after this many seconds.
    #[arg(long, default_value = "1800", value_parser = crate::parse_secs)]
    phase_timeout: Duration,
    /// Keep the temporary directories (hub data, hub log) for inspection.
    #[arg(long)]
    keep: bool,
}

/// FHIR search timings.
struct SearchReport {
    stored: u64,
    searches: u64,
    ok: u64,
    failed: u64,
    first_failure: Option<String>,
    latency_us: Histogram<u64>,
    entries: u64,
}

async fn time_searches(
    hub: &HubProcess,
    n: u64,
    since: chrono::DateTime<Utc>,
    stored: u64,
) -> Result<SearchReport> {
    let web = &hub.web;
    // Tokens are fetched before timing (an EPJ reuses its token for minutes);
    // one per municipality, each client sees only its own.
    let origin = hub.origin();
    let mut oslo_token = crate::token::request(web, &hub.certs, &origin, EPJ_OSLO).await?;
    let mut bergen_token = crate::token::request(web, &hub.certs, &origin, EPJ_BERGEN).await?;
    let mut token_at = Instant::now();
    #[allow(clippy::expect_used)]
    let mut latency_us =
        Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid");
    let mut rng = SplitMix64::new(77);
    let span_us = (Utc::now() - since).num_microseconds().unwrap_or(0).max(1) as u64;
    let (mut ok, mut failed, mut entries) = (0u64, 0u64, 0u64);
    let mut first_failure = None;
    let mut last_progress = Instant::now();
    for i in 0..n {
        // Access tokens live at most 5 minutes: renew well before, untimed.
        if token_at.elapsed() > Duration::from_secs(120) {
            oslo_token = crate::token::request(web, &hub.certs, &origin, EPJ_OSLO).await?;
            bergen_token = crate::token::request(web, &hub.certs, &origin, EPJ_BERGEN).await?;
            token_at = Instant::now();
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            eprintln!("  searches: {i}/{n} done, {failed} failed");
            last_progress = Instant::now();
        }
        let (org, token) = if i % 2 == 0 {
            (OSLO, &oslo_token)
        } else {
            (BERGEN, &bergen_token)
        };
        let rtype = if (i / 2) % 2 == 0 {
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
        match result {
            Ok((status, body)) if status.is_success() => {
                ok += 1;
                latency_us.saturating_record(us.max(1));
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    entries += v["entry"].as_array().map_or(0, |a| a.len() as u64);
                }
            }
            Ok((status, _)) => {
                failed += 1;
                first_failure.get_or_insert_with(|| format!("HTTP {status} for {rtype}"));
            }
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Ok(SearchReport {
        stored,
        searches: n,
        ok,
        failed,
        first_failure,
        latency_us,
        entries,
    })
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
    let base_dir = work.path().join("baseline");
    let certs = work.path().join("certs");
    let started_at = Utc::now();
    eprintln!("bench: work directory {}", work.path().display());
    hubenv::make_certs(&bin, &certs).await?;

    // 1. Baseline, before the hub runs, on the same disk.
    eprintln!(
        "bench: baseline, {} sled inserts with flush + fdatasync every {}",
        a.stream_events, a.batch
    );
    std::fs::create_dir_all(&base_dir)
        .with_context(|| format!("creating {}", base_dir.display()))?;
    let (bd, be, bb) = (base_dir.clone(), a.stream_events, a.batch);
    let base = tokio::task::spawn_blocking(move || baseline::run(&bd, be, bb, 1536))
        .await
        .context("baseline task failed")??;
    std::fs::remove_dir_all(&base_dir)
        .with_context(|| format!("removing {}", base_dir.display()))?;

    // 2. The hub.
    let hub = HubProcess::start(&bin, work.path(), &certs, None).await?;
    eprintln!(
        "bench: hub pid {} on gRPC {} / HTTPS {} (TLS, vendor mutual TLS, EPJ bearer tokens)",
        hub.pid, hub.grpc, hub.http
    );
    let result = phases(&a, &hub, started_at).await;
    let mem = hub.memory_kib();
    let stopped = hub.stop().await;
    let (stream, unary, steady, mem_after_load, search) = result?;
    let stopped = stopped?;
    eprintln!("bench: {stopped}");

    let table = markdown(
        &a,
        &bin,
        work.path(),
        &base,
        &stream,
        &unary,
        &steady,
        mem_after_load,
        search.as_ref(),
        mem,
        started_at,
    );
    println!("{table}");
    if a.keep {
        let kept = work.keep();
        eprintln!("bench: kept {}", kept.display());
    }
    Ok(())
}

type Phases = (
    LoadReport,
    LoadReport,
    LoadReport,
    Option<(u64, u64)>,
    Option<SearchReport>,
);

async fn phases(
    a: &BenchArgs,
    hub: &HubProcess,
    started_at: chrono::DateTime<Utc>,
) -> Result<Phases> {
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
    eprintln!(
        "bench: stream load, {} clients × window {}, {} events",
        a.clients, a.window, a.stream_events
    );
    let stream = load::run(&stream_args, true).await?;

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
    let unary = load::run(&unary_args, true).await?;

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
    let steady = load::run(&steady_args, true).await?;
    let mem_after_load = hub.memory_kib();

    let search = if a.search {
        let stored = stream.accepted + unary.accepted + steady.accepted;
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
        Some(time_searches(hub, a.searches, started_at, a.search_stored.max(stored)).await?)
    } else {
        None
    };
    Ok((stream, unary, steady, mem_after_load, search))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ack(r: &LoadReport) -> String {
    format!(
        "ack p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms",
        r.ms(0.5),
        r.ms(0.99),
        r.ms(0.999)
    )
}

fn problems(r: &LoadReport) -> String {
    let mut s = String::new();
    if r.rejected + r.errors + r.duplicate > 0 || r.timed_out {
        let _ = write!(
            s,
            " — {} rejected, {} duplicate, {} errors{}",
            r.rejected,
            r.duplicate,
            r.errors,
            if r.timed_out { ", TIMED OUT" } else { "" }
        );
        if let Some(e) = &r.first_error {
            let _ = write!(s, " (first: {})", e.replace('|', "/"));
        }
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    a: &BenchArgs,
    bin: &Path,
    work: &Path,
    base: &BaselineReport,
    stream: &LoadReport,
    unary: &LoadReport,
    steady: &LoadReport,
    mem_after_load: Option<(u64, u64)>,
    search: Option<&SearchReport>,
    mem_end: Option<(u64, u64)>,
    started_at: chrono::DateTime<Utc>,
) -> String {
    let b = base.writes_per_sec();
    let ratio = |x: f64| {
        if b > 0.0 {
            format!("{:.2}", x / b)
        } else {
            "n/a".into()
        }
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Knutepunkt bench, {}\n",
        started_at.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(s, "- command: `vendor-sim {}`", args.join(" "));
    let _ = writeln!(
        s,
        "- hub: `{}`; {cpus} CPUs; baseline and hub data under `{}` (same disk)",
        bin.display(),
        work.display()
    );
    let _ = writeln!(
        s,
        "- ratio = hub ACCEPTED events/s ÷ baseline durable writes/s, both measured in this run\n"
    );
    let _ = writeln!(s, "| measurement | setting | result | ratio |");
    let _ = writeln!(s, "|---|---|---|---|");
    let _ = writeln!(
        s,
        "| baseline: sled insert + flush + fdatasync | {} inserts × {} B, sync every {} | {:.0} writes/s (sync p50 {:.3} ms, p99 {:.3} ms) | 1.00 |",
        base.events,
        base.value_size,
        base.batch,
        b,
        base.sync_us.value_at_quantile(0.5) as f64 / 1000.0,
        base.sync_us.value_at_quantile(0.99) as f64 / 1000.0
    );
    let _ = writeln!(
        s,
        "| hub SubmitStream | {} clients × window {}, {} events | {:.0} events/s; {}{} | {} |",
        stream.clients,
        stream.window,
        stream.events,
        stream.accepted_per_sec(),
        ack(stream),
        problems(stream),
        ratio(stream.accepted_per_sec())
    );
    let _ = writeln!(
        s,
        "| hub Submit (unary) | {} clients, {} events | {:.0} events/s; {}{} | {} |",
        unary.clients,
        unary.events,
        unary.accepted_per_sec(),
        ack(unary),
        problems(unary),
        ratio(unary.accepted_per_sec())
    );
    let _ = writeln!(
        s,
        "| hub steady rate | {} events/s for {:.0} s, {} streams | {:.0} events/s achieved; {}{} | — |",
        a.steady_rate,
        a.steady_secs.as_secs_f64(),
        steady.clients,
        steady.accepted_per_sec(),
        ack(steady),
        problems(steady)
    );
    if let Some(sr) = search {
        let result = if sr.ok == 0 {
            format!(
                "no successful search ({})",
                sr.first_failure.clone().unwrap_or_default()
            )
        } else {
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} ok, {} failed, {:.1} entries/page",
                sr.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                sr.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                sr.latency_us.max() as f64 / 1000.0,
                sr.ok,
                sr.failed,
                sr.entries as f64 / sr.ok as f64
            )
        };
        let _ = writeln!(
            s,
            "| FHIR search (first page, _count=50) | {} searches, ~{} events stored | {} | — |",
            sr.searches, sr.stored, result
        );
    }
    let mem = |m: Option<(u64, u64)>| match m {
        Some((rss, hwm)) => format!("VmRSS {:.0} MiB, VmHWM {:.0} MiB", mib(rss), mib(hwm)),
        None => "n/a".into(),
    };
    let _ = writeln!(
        s,
        "| hub memory | after the loads | {} | — |",
        mem(mem_after_load)
    );
    if search.is_some() {
        let _ = writeln!(
            s,
            "| hub memory | after the search test | {} | — |",
            mem(mem_end)
        );
    }
    s
}
