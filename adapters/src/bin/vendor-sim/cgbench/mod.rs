//! `vendor-sim bench-callgrind`: CPU instructions per accepted event, per
//! stage of ingest and delivery, counted by valgrind's callgrind.
//!
//! Why it exists: on a machine whose cores are shared, CPU seconds and
//! events/s move with the neighbours' load; the number of instructions the
//! hub executes per event does not. Two runs of the real hub under
//! `valgrind --tool=callgrind` (all threads summed): one that starts, idles
//! and stops (the baseline), one that takes a fixed SubmitStream load and
//! pushes every event to the real `epj-adapter`. The difference, divided by
//! the events accepted, is split into stages (TLS, protobuf/gRPC,
//! validation, FHIR JSON, hashing, store, delivery, allocator, other).
//!
//! How instructions are charged to stages: every function gets a stage
//! from its name ([`stages::classify`]: the crate or module it belongs to, e.g.
//! `rustls::*` → TLS, `knutepunkt::normalize::*` → FHIR JSON), or none
//! (std, core, alloc, futures, memcpy, ...). A function's own instructions
//! go to its stage; a function without a stage runs on behalf of its
//! callers, so its own instructions are split over its callers' stages in
//! proportion to the instructions spent in the calls from each. That is the
//! innermost named stage on the call stack, exact for leaf functions
//! (memcpy) and a proportional estimate for shared callers deeper down.
//! Each instruction is counted once, so the stages add up to the total.

mod profile;
mod report;
mod share;
mod stages;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use knutepunkt_adapters::epj::layout::Layout;
use tokio::process::Command;

use crate::Mode;
use crate::hubenv::{self, EpjProcess, HubProcess, PushDest};
use crate::load::{self, LoadArgs};
use profile::{Profile, parse};
use report::{group, report};

#[derive(Args, Debug)]
pub struct CallgrindArgs {
    /// The hub binary; default: `knutepunkt` next to this executable.
    #[arg(long)]
    pub hub_bin: Option<PathBuf>,
    /// The EPJ adapter binary; default: `epj-adapter` next to this executable.
    #[arg(long)]
    pub epj_bin: Option<PathBuf>,
    /// The valgrind binary.
    #[arg(long, default_value = "valgrind")]
    pub valgrind: PathBuf,
    /// Where the temporary directory goes; default: the system temp directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Events submitted in the load run (all for Oslo, the municipality with
    /// the push destination). With --analyze: the events the profile's run
    /// accepted.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=2_000_000))]
    pub events: u64,
    /// SubmitStream clients (one TLS connection each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
    /// Events in flight per stream.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: u32,
    /// Baseline run: seconds the hub idles between ready and SIGTERM.
    #[arg(long, default_value = "5", value_parser = crate::parse_secs)]
    pub idle_secs: Duration,
    /// No baseline run: the load run's whole count (start-up included) is
    /// divided by the events.
    #[arg(long)]
    pub no_baseline: bool,
    /// No push destination and no EPJ adapter: ingest only.
    #[arg(long)]
    pub no_delivery: bool,
    /// Rows in the table of the largest functions.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(0..=500))]
    pub top: u32,
    /// Do not run anything: split an existing callgrind output file (of a
    /// run that accepted --events events) into stages.
    #[arg(long)]
    pub analyze: Option<PathBuf>,
    /// With --analyze: the baseline run's callgrind output file.
    #[arg(long, requires = "analyze")]
    pub analyze_baseline: Option<PathBuf>,
    /// Give up the load or the delivery after this many seconds.
    #[arg(long, default_value = "3600", value_parser = crate::parse_secs)]
    pub phase_timeout: Duration,
    /// Keep the temporary directory (callgrind output files, hub logs).
    #[arg(long)]
    pub keep: bool,
}

struct RunResult {
    profile: Profile,
    accepted: u64,
    delivered: u64,
    load_secs: f64,
    wall_secs: f64,
}

fn valgrind_wrapper(valgrind: &Path, out: &Path) -> Vec<OsString> {
    let mut file = OsString::from("--callgrind-out-file=");
    file.push(out);
    vec![
        valgrind.as_os_str().to_owned(),
        "--tool=callgrind".into(),
        file,
        "--separate-threads=no".into(),
        "--compress-strings=no".into(),
        "--compress-pos=no".into(),
    ]
}

struct Env<'a> {
    a: &'a CallgrindArgs,
    hub_bin: &'a Path,
    work: &'a Path,
    certs: &'a Path,
    epj: Option<&'a EpjProcess>,
}

/// One hub under callgrind: `events` events (and their delivery), or with
/// 0 an idle hub; then SIGTERM and the profile.
async fn run_hub(e: &Env<'_>, kind: &str, events: u64) -> Result<RunResult> {
    let dir = e.work.join(kind);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("callgrind.out");
    let dest = e.epj.map(|epj| PushDest {
        url: epj.fhir_url(),
        ca_file: epj.cert.clone(),
        max_batch: 1000,
        max_rate: 1_000_000,
        pull: false,
    });
    let t0 = Instant::now();
    eprintln!("bench-callgrind: {kind} run: starting the hub under callgrind");
    let wrapper = valgrind_wrapper(&e.a.valgrind, &out);
    let hub = HubProcess::start_wrapped(e.hub_bin, &dir, e.certs, dest.as_ref(), &wrapper).await?;
    eprintln!(
        "bench-callgrind: {kind} run: hub ready after {:.0} s (pid {})",
        t0.elapsed().as_secs_f64(),
        hub.pid
    );
    let result = drive(e, &hub, kind, events).await;
    eprintln!("bench-callgrind: {kind} run: stopping the hub (callgrind writes its profile)");
    let stopped = hub.stop_within(Duration::from_secs(900)).await;
    let (accepted, delivered, load_secs) = result?;
    eprintln!("bench-callgrind: {}", stopped?);
    let wall_secs = t0.elapsed().as_secs_f64();
    let path = out.clone();
    let profile = tokio::task::spawn_blocking(move || parse(&path))
        .await
        .context("parsing task failed")??;
    eprintln!(
        "bench-callgrind: {kind} run: {} instructions in {:.0} s",
        group(profile.total),
        wall_secs
    );
    Ok(RunResult {
        profile,
        accepted,
        delivered,
        load_secs,
        wall_secs,
    })
}

/// The load and the wait for its delivery, or the idle wait.
async fn drive(e: &Env<'_>, hub: &HubProcess, kind: &str, events: u64) -> Result<(u64, u64, f64)> {
    if events == 0 {
        tokio::time::sleep(e.a.idle_secs).await;
        return Ok((0, 0, 0.0));
    }
    let created0 = match e.epj {
        Some(epj) => epj.stats().await?.created,
        None => 0,
    };
    let mut l = LoadArgs::new(hub.grpc, hub.conn(), Mode::Stream, e.a.clients, events);
    l.window = e.a.window;
    l.prefix = Some(format!("cg-{kind}"));
    l.seed = 21;
    l.oslo_only = true;
    l.max_time = e.a.phase_timeout;
    eprintln!(
        "bench-callgrind: {kind} run: {events} events, {} SubmitStream clients × window {}",
        e.a.clients, e.a.window
    );
    let t = Instant::now();
    let r = load::run(&l, true).await?;
    let load_secs = t.elapsed().as_secs_f64();
    if r.accepted == 0 {
        bail!(
            "no event accepted ({} rejected, {} errors; first: {})",
            r.rejected,
            r.errors,
            r.first_error.unwrap_or_default()
        );
    }
    let delivered = match e.epj {
        Some(epj) => {
            crate::delivery::wait_created(
                epj,
                "delivery",
                created0,
                created0 + r.accepted,
                e.a.phase_timeout,
            )
            .await?;
            epj.stats().await?.created - created0
        }
        None => 0,
    };
    Ok((r.accepted, delivered, load_secs))
}

async fn valgrind_version(valgrind: &Path) -> Result<String> {
    let out = Command::new(valgrind)
        .arg("--version")
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} --version (install valgrind: apt-get install valgrind)",
                valgrind.display()
            )
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `--analyze`: the report of existing callgrind output files.
fn analyze(a: &CallgrindArgs, file: &Path) -> Result<()> {
    let loaded = parse(file)?;
    let base = match &a.analyze_baseline {
        Some(b) => Some(parse(b)?),
        None => None,
    };
    let head = vec![format!(
        "- profile {}{}; {} events accepted (--events)",
        file.display(),
        a.analyze_baseline
            .as_ref()
            .map(|b| format!(", baseline {}", b.display()))
            .unwrap_or_default(),
        a.events
    )];
    println!(
        "{}",
        report(&loaded, base.as_ref(), a.events, a.top as usize, &head)
    );
    Ok(())
}

pub async fn run(a: CallgrindArgs) -> Result<()> {
    if let Some(file) = &a.analyze {
        return analyze(&a, file);
    }
    let version = valgrind_version(&a.valgrind).await?;
    let hub_bin = hubenv::sibling_bin(a.hub_bin.clone(), "knutepunkt")?;
    let parent = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("knutepunkt-bench-callgrind-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let load_start = hubenv::loadavg_line("load average at the start");
    eprintln!(
        "bench-callgrind: work directory {}; {version}; {load_start}",
        work.path().display()
    );
    let certs = work.path().join("certs");
    hubenv::make_certs(&hub_bin, &certs).await?;
    let epj = if a.no_delivery {
        None
    } else {
        let epj_bin = hubenv::sibling_bin(a.epj_bin.clone(), "epj-adapter")?;
        Some(EpjProcess::start(&epj_bin, &work.path().join("epj"), "ok", Layout::Files).await?)
    };
    let env = Env {
        a: &a,
        hub_bin: &hub_bin,
        work: work.path(),
        certs: &certs,
        epj: epj.as_ref(),
    };
    let runs = async {
        let base = if a.no_baseline {
            None
        } else {
            Some(run_hub(&env, "idle", 0).await?)
        };
        let loaded = run_hub(&env, "load", a.events).await?;
        Ok::<_, anyhow::Error>((base, loaded))
    }
    .await;
    if let Some(epj) = epj {
        eprintln!("bench-callgrind: {}", epj.stop().await?);
    }
    let (base, loaded) = runs?;
    let load_end = hubenv::loadavg_line("at the end");
    let mut head = head_lines(&a, &hub_bin, &version, &loaded, base.as_ref());
    head.push(format!("- {load_start}; {load_end}"));
    println!(
        "{}",
        report(
            &loaded.profile,
            base.as_ref().map(|b| &b.profile),
            loaded.accepted,
            a.top as usize,
            &head
        )
    );
    if a.keep {
        let kept = work.keep();
        eprintln!("bench-callgrind: kept {}", kept.display());
    }
    Ok(())
}

/// The report's lines about the runs (the load averages go last).
fn head_lines(
    a: &CallgrindArgs,
    hub_bin: &Path,
    version: &str,
    loaded: &RunResult,
    base: Option<&RunResult>,
) -> Vec<String> {
    let mut head = vec![
        format!(
            "- hub: `{}` under `{version} --tool=callgrind --separate-threads=no` (every thread of the hub counted; instructions in the kernel, i.e. system calls and fsync, are not)",
            hub_bin.display()
        ),
        format!(
            "- load run: {} events for Oslo over SubmitStream ({} clients × window {}, mutual TLS), {} accepted in {:.0} s; {}; {:.0} s under callgrind in all",
            a.events,
            a.clients,
            a.window,
            loaded.accepted,
            loaded.load_secs,
            if a.no_delivery {
                "no push destination".to_string()
            } else {
                format!(
                    "push destination to the epj-adapter (HTTPS, max_batch 1000): {} delivered",
                    loaded.delivered
                )
            },
            loaded.wall_secs
        ),
    ];
    match base {
        Some(b) => head.push(format!(
            "- baseline run: the same hub started, ready, idle {:.0} s, stopped ({:.0} s under callgrind): {} instructions, subtracted stage by stage",
            a.idle_secs.as_secs_f64(),
            b.wall_secs,
            group(b.profile.total)
        )),
        None => head.push("- no baseline run: start-up and shutdown are in the figures".into()),
    }
    head
}
