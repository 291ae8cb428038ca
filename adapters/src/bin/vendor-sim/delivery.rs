//! `vendor-sim bench-delivery`: issue 4's numbers, in one run, against the
//! real hub (TLS, vendor mutual TLS) pushing to the real `epj-adapter` over
//! HTTPS.
//!
//! Why it exists: "delivered" is what an EPJ sees, not what the hub thinks.
//! So every time here is read from the adapter's own `received.log` (the
//! moment a resource file exists) against the vendor's ack time, on the same
//! machine and clock. Phases:
//! 1. end-to-end: a steady rate, ack → resource at the adapter, p50/p99;
//! 2. alarm: a backlog built with the adapter `down`, a RED alarm (4.1)
//!    submitted while down and another once the adapter is back and the
//!    backlog is draining; time until each is in `received.log`;
//! 3. drain: a larger backlog built while `down`, then the time to empty it;
//! 4. pull: the bench's own EPJ client drains Oslo's pull destination
//!    (everything for Oslo so far) with `$pending?_count=500` + `$confirm`;
//! 5. soak (`--soak-events`): more events, push and pull delivering at the
//!    same time, the hub's RSS after every chunk;
//! 6. intake baseline: the adapter alone, taking pre-built Bundles of the
//!    same size over one connection: the ceiling a drain can reach.
//!
//! Progress goes to stderr once a second; the Markdown table to stdout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::Args;
use hdrhistogram::Histogram;
use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1 as pb;
use knutepunkt::sim::{Mix, OSLO, Population};
use knutepunkt_adapters::epj::layout::Layout;

use crate::Mode;
use crate::hubenv::{self, EpjProcess, HubProcess, PushDest};
use crate::load::{self, LoadArgs, LoadReport, unix_micros};
use crate::soak;

mod intake;
mod received;

pub(crate) use intake::Intake;
use intake::intake_baseline;
pub(crate) use received::wait_created;
use received::{ReceivedLog, wait_for};

#[derive(Args, Debug)]
pub struct DeliveryArgs {
    /// The hub binary; default: `knutepunkt` next to this executable.
    #[arg(long)]
    pub(crate) hub_bin: Option<PathBuf>,
    /// The EPJ adapter binary; default: `epj-adapter` next to this executable.
    #[arg(long)]
    pub(crate) epj_bin: Option<PathBuf>,
    /// Where the temporary directories go; default: the system temp directory.
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// How the EPJ adapter writes what it receives: `files` (one file per
    /// resource, as many EPJ imports take them) or `ndjson` (one file per
    /// Bundle; its intake is then far above the hub's drain rate).
    #[arg(long, value_enum, default_value_t = Layout::Files)]
    pub(crate) epj_layout: Layout,
    /// End-to-end phase: events per second (Oslo, the municipality with the
    /// push destination).
    #[arg(long, default_value = "1000", value_parser = crate::parse_rate)]
    pub(crate) e2e_rate: f64,
    /// End-to-end phase: seconds.
    #[arg(long, default_value = "20", value_parser = crate::parse_secs)]
    pub(crate) e2e_secs: Duration,
    /// End-to-end phase: streams sharing the rate.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) e2e_clients: u32,
    /// Alarm phase: measurements queued ahead of the RED alarm (0 skips the phase).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(0..=50_000_000))]
    pub(crate) alarm_backlog: u64,
    /// Drain phase: backlog size (0 skips the phase).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(0..=50_000_000))]
    pub(crate) drain_backlog: u64,
    /// Backlog fills: concurrent streams.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) fill_clients: u32,
    /// The destination's max_batch (entries per Bundle while draining).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) max_batch: u64,
    /// The destination's max_rate (events/s while draining).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_rate: u32,
    /// Intake baseline: resources re-sent to a fresh adapter as pre-built
    /// Bundles of max_batch (0 skips it).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub(crate) intake_events: u64,
    /// No pull destination (push only): no pull and no pull in the soak.
    #[arg(long)]
    pub(crate) no_pull: bool,
    /// Pull phase: `_count` of each `$pending`.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub(crate) pull_count: u32,
    /// Soak: events for Oslo after the other phases, pushed and pulled at
    /// the same time (0 skips it).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=50_000_000))]
    pub(crate) soak_events: u64,
    /// Soak: events per chunk; the hub's RSS is sampled after each.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub(crate) soak_chunk: u64,
    /// Give up a phase after this many seconds.
    #[arg(long, default_value = "1800", value_parser = crate::parse_secs)]
    pub(crate) phase_timeout: Duration,
    /// Keep the temporary directory (hub data and log, adapter files).
    #[arg(long)]
    pub(crate) keep: bool,
}

fn histogram() -> Histogram<u64> {
    // Constant, valid bounds (1 µs .. 1 h): cannot fail at run time.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

/// One RED night-supervision alarm (VKP 4.1) for an Oslo resident.
fn red_alarm(population: &Population, event_id: &str) -> Result<pb::Event> {
    let resident = population.residents().first().context("empty population")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock before 1970")?;
    Ok(pb::Event {
        event_id: event_id.into(),
        municipality: OSLO.into(),
        patient: Some(resident.person_id()),
        device: Some(pb::Device {
            id: "bench-bed-sensor".into(),
            kind: "bed-sensor".into(),
        }),
        occurred_at: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: 0,
        }),
        payload: Some(pb::event::Payload::Alarm(pb::Alarm {
            code: "4.1".into(),
            severity: pb::Severity::Red as i32,
            text: "Beboer ute av seng".into(),
            zone: "soverom".into(),
        })),
    })
}

/// Submits one event (unary); returns (resource, ack µs since epoch).
async fn submit(hub: &HubProcess, ev: pb::Event) -> Result<(String, i64)> {
    let ch = hub.conn().resolve()?.connect(hub.grpc).await?;
    let mut client = EventClient::new(ch);
    let mut req = tonic::Request::new(ev);
    req.set_timeout(Duration::from_secs(30));
    let r = client
        .submit(req)
        .await
        .map_err(|s| anyhow::anyhow!("Submit: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let at = unix_micros();
    if r.status != pb::ReceiptStatus::Accepted as i32 {
        bail!("the alarm was not accepted: {} {}", r.error_code, r.error);
    }
    Ok((r.resource, at))
}

/// A backlog fill: `n` events for Oslo, adapter down.
async fn fill(
    hub: &HubProcess,
    a: &DeliveryArgs,
    n: u64,
    prefix: &str,
    mix: Mix,
) -> Result<LoadReport> {
    let mut f = LoadArgs::new(hub.grpc, hub.conn(), Mode::Stream, a.fill_clients, n);
    f.prefix = Some(prefix.into());
    f.seed = 11;
    f.oslo_only = true;
    f.mix = mix;
    f.max_time = a.phase_timeout;
    let r = load::run(&f, true).await?;
    if r.accepted != n {
        bail!(
            "backlog fill: {} of {n} accepted ({} rejected, {} errors; first: {})",
            r.accepted,
            r.rejected,
            r.errors,
            r.first_error.clone().unwrap_or_default()
        );
    }
    Ok(r)
}

pub(crate) struct E2e {
    pub(crate) load: LoadReport,
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) before_ack: u64,
    pub(crate) missing: u64,
}

pub(crate) struct AlarmResult {
    pub(crate) backlog: u64,
    pub(crate) fill: LoadReport,
    /// Submitted while down: up-switch → at the adapter, ms.
    pub(crate) while_down_ms: f64,
    /// Submitted while draining: ack → at the adapter, ms.
    pub(crate) draining_ms: f64,
    /// Backlog left when the draining alarm was acked.
    pub(crate) left_at_submit: u64,
    /// Resources that arrived between the up-switch and the draining alarm.
    pub(crate) ahead: u64,
    pub(crate) drain_secs: f64,
}

pub(crate) struct DrainResult {
    pub(crate) backlog: u64,
    pub(crate) fill: LoadReport,
    pub(crate) from_switch_secs: f64,
    pub(crate) from_first_secs: f64,
}

pub async fn run(a: DeliveryArgs) -> Result<()> {
    let env = start(&a).await?;
    let run = hub_phases(&a, env.hub, &env.epj, env.work.path()).await?;
    let intake = if a.intake_events > 0 {
        Some(intake_baseline(&a, &env.epj_bin, &env.epj, env.work.path()).await?)
    } else {
        None
    };
    eprintln!("bench-delivery: {}", env.epj.stop().await?);

    println!(
        "{}",
        crate::deliveryreport::markdown(
            &a,
            &run.e2e,
            run.alarm.as_ref(),
            run.drain.as_ref(),
            intake.as_ref(),
            run.hub_mem,
            run.epj_mem,
            env.started_at
        )
    );
    println!(
        "{}",
        crate::deliveryreport::more_markdown(
            &run.more,
            &run.e2e,
            run.drain.as_ref(),
            intake.as_ref(),
            [env.load_start, run.load_end]
        )
    );
    if a.keep {
        let kept = env.work.keep();
        eprintln!("bench-delivery: kept {}", kept.display());
    }
    Ok(())
}

/// The processes a run measures and the directory they work in.
struct BenchEnv {
    epj_bin: PathBuf,
    epj: EpjProcess,
    hub: HubProcess,
    started_at: chrono::DateTime<Utc>,
    load_start: String,
    // Last: fields drop in order, and the directory goes after the processes
    // that write to it.
    work: tempfile::TempDir,
}

/// Creates the work directory and certificates, then starts the EPJ adapter
/// and the hub pushing to it.
async fn start(a: &DeliveryArgs) -> Result<BenchEnv> {
    let hub_bin = hubenv::sibling_bin(a.hub_bin.clone(), "knutepunkt")?;
    let epj_bin = hubenv::sibling_bin(a.epj_bin.clone(), "epj-adapter")?;
    let parent = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("knutepunkt-bench-delivery-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let started_at = Utc::now();
    let load_start = hubenv::loadavg_line("load average at the start");
    eprintln!(
        "bench-delivery: work directory {}; {load_start}",
        work.path().display()
    );
    let certs = work.path().join("certs");
    hubenv::make_certs(&hub_bin, &certs).await?;
    let epj_dir = work.path().join("epj");
    let epj = EpjProcess::start(&epj_bin, &epj_dir, "ok", a.epj_layout).await?;
    let dest = PushDest {
        url: epj.fhir_url(),
        ca_file: epj.cert.clone(),
        max_batch: a.max_batch as usize,
        max_rate: a.max_rate,
        pull: !a.no_pull,
    };
    let hub = HubProcess::start(&hub_bin, work.path(), &certs, Some(&dest)).await?;
    eprintln!(
        "bench-delivery: hub pid {} (gRPC {}, HTTPS {}), EPJ adapter at {}",
        hub.pid,
        hub.grpc,
        hub.http,
        epj.fhir_url()
    );
    Ok(BenchEnv {
        epj_bin,
        epj,
        hub,
        started_at,
        load_start,
        work,
    })
}

/// What the phases with the hub measured, and the memory and load average
/// read before it stopped.
struct HubRun {
    e2e: E2e,
    alarm: Option<AlarmResult>,
    drain: Option<DrainResult>,
    more: soak::More,
    hub_mem: Option<(u64, u64)>,
    epj_mem: Option<(u64, u64)>,
    load_end: String,
}

/// Runs every phase that needs the hub, then stops it (also after a failed
/// phase, before that error is returned).
async fn hub_phases(
    a: &DeliveryArgs,
    hub: HubProcess,
    epj: &EpjProcess,
    work: &Path,
) -> Result<HubRun> {
    let result = phases(a, &hub, epj).await;
    let more = match &result {
        Ok((e2e, alarm, drain)) => {
            let oslo = e2e.load.accepted
                + alarm.as_ref().map_or(0, |x| x.backlog + 2)
                + drain.as_ref().map_or(0, |x| x.backlog);
            more_phases(a, &hub, epj, work, oslo).await
        }
        Err(_) => Ok(soak::More::default()),
    };
    let hub_mem = hub.memory_kib();
    let epj_mem = epj.memory_kib();
    let load_end = hubenv::loadavg_line("at the end of the hub phases");
    let hub_stopped = hub.stop().await;
    let (e2e, alarm, drain) = result?;
    let more = more?;
    eprintln!("bench-delivery: {}", hub_stopped?);
    Ok(HubRun {
        e2e,
        alarm,
        drain,
        more,
        hub_mem,
        epj_mem,
        load_end,
    })
}

async fn phases(
    a: &DeliveryArgs,
    hub: &HubProcess,
    epj: &EpjProcess,
) -> Result<(E2e, Option<AlarmResult>, Option<DrainResult>)> {
    // 1. End to end at a steady rate.
    let e2e = e2e_phase(a, hub, epj).await?;

    // 2. A RED alarm behind a backlog.
    let alarm = if a.alarm_backlog > 0 {
        Some(alarm_phase(a, hub, epj).await?)
    } else {
        None
    };

    // 3. Drain a large backlog.
    let drain = if a.drain_backlog > 0 {
        Some(drain_phase(a, hub, epj).await?)
    } else {
        None
    };
    Ok((e2e, alarm, drain))
}

/// Phase 1: Oslo's events at a steady rate; ack → resource at the adapter.
async fn e2e_phase(a: &DeliveryArgs, hub: &HubProcess, epj: &EpjProcess) -> Result<E2e> {
    let n = (a.e2e_rate * a.e2e_secs.as_secs_f64()).round().max(1.0) as u64;
    eprintln!(
        "bench-delivery: end-to-end, {} events/s for {:.0} s over {} streams",
        a.e2e_rate,
        a.e2e_secs.as_secs_f64(),
        a.e2e_clients
    );
    let mut log = ReceivedLog::at_end(&epj.out);
    let created0 = epj.stats().await?.created;
    let mut l = LoadArgs::new(hub.grpc, hub.conn(), Mode::Stream, a.e2e_clients, n);
    l.rate = Some(a.e2e_rate);
    l.prefix = Some("e2e".into());
    l.seed = 5;
    l.oslo_only = true;
    l.record_acks = true;
    l.max_time = a
        .phase_timeout
        .min(a.e2e_secs * 3 + Duration::from_secs(30));
    let load = load::run(&l, true).await?;
    // A shortfall is a finding to report (as "missing"), not a reason to stop.
    if let Err(e) = wait_created(
        epj,
        "end-to-end",
        created0,
        created0 + load.accepted,
        Duration::from_secs(120),
    )
    .await
    {
        eprintln!("bench-delivery: end-to-end: {e:#}");
    }
    let received: HashMap<String, i64> = log.read_new()?.into_iter().collect();
    Ok(e2e_latencies(load, &received))
}

/// Matches each ack to its resource's arrival at the adapter: the latency
/// histogram, arrivals stamped before their ack, and resources never seen.
fn e2e_latencies(load: LoadReport, received: &HashMap<String, i64>) -> E2e {
    let mut latency_us = histogram();
    let (mut before_ack, mut missing) = (0u64, 0u64);
    for (res, acked) in &load.acks {
        match received.get(res) {
            Some(at) => {
                let d = at - acked;
                if d < 0 {
                    before_ack += 1;
                }
                latency_us.saturating_record(d.max(1) as u64);
            }
            None => missing += 1,
        }
    }
    E2e {
        load,
        latency_us,
        before_ack,
        missing,
    }
}

/// Phase 3: a large backlog built with the adapter down, then the time to
/// empty it once it is back.
async fn drain_phase(a: &DeliveryArgs, hub: &HubProcess, epj: &EpjProcess) -> Result<DrainResult> {
    eprintln!(
        "bench-delivery: drain, building a backlog of {} with the adapter down",
        a.drain_backlog
    );
    epj.set_mode("down").await?;
    let created0 = epj.stats().await?.created;
    let fill = fill(hub, a, a.drain_backlog, "drain", Mix::BALANCED).await?;
    // Let the hub see the outage settle (breaker open) before the switch.
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("bench-delivery: drain, adapter up");
    epj.set_mode("ok").await?;
    let up = Instant::now();
    let (first, done) = wait_created(
        epj,
        "drain",
        created0,
        created0 + a.drain_backlog,
        a.phase_timeout,
    )
    .await?;
    Ok(DrainResult {
        backlog: a.drain_backlog,
        fill,
        from_switch_secs: (done - up).as_secs_f64(),
        from_first_secs: (done - first.unwrap_or(up)).as_secs_f64(),
    })
}

/// Pull (everything for Oslo so far, `oslo` events) and the soak.
async fn more_phases(
    a: &DeliveryArgs,
    hub: &HubProcess,
    epj: &EpjProcess,
    work: &Path,
    oslo: u64,
) -> Result<soak::More> {
    let pull = if a.no_pull {
        None
    } else {
        eprintln!(
            "bench-delivery: pull, draining Oslo's pull destination ({oslo} events expected) with $pending?_count={} + $confirm",
            a.pull_count
        );
        Some((
            crate::pull::drain(hub, a.pull_count, a.phase_timeout).await?,
            oslo,
        ))
    };
    let soak = if a.soak_events > 0 {
        let plan = soak::SoakPlan {
            events: a.soak_events,
            chunk: a.soak_chunk,
            clients: a.fill_clients,
            pull: !a.no_pull,
            pull_count: a.pull_count,
            timeout: a.phase_timeout,
        };
        Some(soak::run(&plan, hub, epj, work).await?)
    } else {
        None
    };
    Ok(soak::More { pull, soak })
}

async fn alarm_phase(a: &DeliveryArgs, hub: &HubProcess, epj: &EpjProcess) -> Result<AlarmResult> {
    eprintln!(
        "bench-delivery: alarm, building a backlog of {} measurements with the adapter down",
        a.alarm_backlog
    );
    epj.set_mode("down").await?;
    let created0 = epj.stats().await?.created;
    let mut log = ReceivedLog::at_end(&epj.out);
    let fill = fill(
        hub,
        a,
        a.alarm_backlog,
        "alarm-backlog",
        Mix::HOME_MONITORING,
    )
    .await?;
    let population = Population::new(11, &[OSLO], 500);
    let (res_down, _) = submit(hub, red_alarm(&population, "bench-red-while-down")?).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("bench-delivery: alarm, adapter up");
    epj.set_mode("ok").await?;
    let up_at = unix_micros();
    let up = Instant::now();
    // The second alarm goes in once the backlog is visibly draining.
    let mut created = created0;
    while created <= created0 + 1 {
        if up.elapsed() > Duration::from_secs(60) {
            bail!("the backlog did not start draining within 60 s of the adapter coming back");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        created = epj.stats().await?.created;
    }
    let (res_draining, acked) =
        submit(hub, red_alarm(&population, "bench-red-while-draining")?).await?;
    let left_at_submit = (a.alarm_backlog + 1).saturating_sub(created - created0);
    let found = wait_for(
        &mut log,
        &[res_down.as_str(), res_draining.as_str()],
        Duration::from_secs(300),
    )
    .await?;
    let (down_at, _) = found.get(&res_down).copied().unwrap_or_default();
    let (drain_at, ahead) = found.get(&res_draining).copied().unwrap_or_default();
    let (_, done) = wait_created(
        epj,
        "alarm backlog",
        created0,
        created0 + a.alarm_backlog + 2,
        a.phase_timeout,
    )
    .await?;
    Ok(AlarmResult {
        backlog: a.alarm_backlog,
        fill,
        while_down_ms: ms(down_at - up_at),
        draining_ms: ms(drain_at - acked),
        left_at_submit,
        ahead,
        drain_secs: (done - up).as_secs_f64(),
    })
}
