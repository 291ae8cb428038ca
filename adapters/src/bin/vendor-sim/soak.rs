//! The delivery bench's memory soak: N more events for Oslo, delivered to
//! the push destination and pulled by the bench's pull client at the same
//! time, with the hub's RSS after every chunk and once both destinations
//! have everything.
//!
//! Why it exists: issue 8 asks for flat memory with one push and one pull
//! consumer: RSS after many events ≤ 1.2 × RSS at 1M. The sled-era store
//! grew to gigabytes under exactly this load, so it is measured, not argued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use knutepunkt::sim::Mix;

use crate::Mode;
use crate::hubenv::{self, EpjProcess, HubProcess};
use crate::load::{self, LoadArgs};
use crate::pull::{self, PullClient, PullStats};

/// One RSS sample: events of the soak stored so far, VmRSS KiB, and the
/// ingest rate of the chunk that led to it.
pub struct Sample {
    pub stored: u64,
    pub rss_kib: u64,
    pub rate: f64,
}

pub struct SoakResult {
    pub events: u64,
    pub samples: Vec<Sample>,
    /// Last ack → the adapter had every soak event, seconds.
    pub push_lag_secs: f64,
    pub pull: Option<PullStats>,
    pub end_mem: Option<(u64, u64)>,
    pub disk_bytes: u64,
}

impl SoakResult {
    /// RSS at the first sample at or past `n` events.
    pub fn rss_at(&self, n: u64) -> Option<u64> {
        self.samples
            .iter()
            .find(|s| s.stored >= n)
            .map(|s| s.rss_kib)
    }
}

pub struct SoakPlan {
    pub events: u64,
    pub chunk: u64,
    pub clients: u32,
    pub pull: bool,
    pub pull_count: u32,
    pub timeout: Duration,
}

pub async fn run(
    plan: &SoakPlan,
    hub: &HubProcess,
    epj: &EpjProcess,
    work: &std::path::Path,
) -> Result<SoakResult> {
    eprintln!(
        "bench-delivery: soak, {} events for Oslo in chunks of {}, push{} delivering at the same time",
        plan.events,
        plan.chunk,
        if plan.pull { " and pull" } else { "" }
    );
    let created0 = epj.stats().await?.created;
    let confirmed = Arc::new(AtomicU64::new(0));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let follower = if plan.pull {
        let c = PullClient::new(hub, plan.pull_count).await?;
        Some(tokio::spawn(pull::follow(
            c,
            confirmed.clone(),
            target.clone(),
            plan.timeout,
        )))
    } else {
        None
    };
    let mut samples = Vec::new();
    let mut stored = 0u64;
    let mut k = 0u64;
    while stored < plan.events {
        let n = plan.chunk.min(plan.events - stored);
        let mut l = LoadArgs::new(hub.grpc, hub.conn(), Mode::Stream, plan.clients, n);
        l.prefix = Some(format!("soak-{k}"));
        l.seed = 20 + k;
        l.oslo_only = true;
        l.mix = Mix::BALANCED;
        l.max_time = plan.timeout;
        let r = load::run(&l, false).await?;
        if r.accepted != n {
            bail!(
                "soak chunk {k}: {} of {n} accepted (first error: {})",
                r.accepted,
                r.first_error.unwrap_or_default()
            );
        }
        stored += n;
        k += 1;
        let rss = hub.memory_kib().map_or(0, |m| m.0);
        let adapter = epj.stats().await?.created - created0;
        eprintln!(
            "  soak: {stored}/{} stored ({:.0}/s), hub RSS {:.0} MiB; push {adapter}, pull {} delivered",
            plan.events,
            r.accepted_per_sec(),
            rss as f64 / 1024.0,
            confirmed.load(Ordering::Relaxed)
        );
        samples.push(Sample {
            stored,
            rss_kib: rss,
            rate: r.accepted_per_sec(),
        });
    }
    let last_ack = Instant::now();
    target.store(plan.events, Ordering::Relaxed);
    crate::delivery::wait_created(
        epj,
        "soak push",
        created0,
        created0 + plan.events,
        plan.timeout,
    )
    .await?;
    let push_lag_secs = last_ack.elapsed().as_secs_f64();
    let pull = match follower {
        Some(mut f) => {
            let mut last = confirmed.load(Ordering::Relaxed);
            loop {
                tokio::select! {
                    r = &mut f => break Some(r.context("the pull client task failed")??),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let c = confirmed.load(Ordering::Relaxed);
                        eprintln!("  soak pull: {c}/{} confirmed ({}/s)", plan.events, c - last);
                        last = c;
                    }
                }
            }
        }
        None => None,
    };
    Ok(SoakResult {
        events: plan.events,
        samples,
        push_lag_secs,
        pull,
        end_mem: hub.memory_kib(),
        disk_bytes: hubenv::du_bytes(&work.join("hub")),
    })
}

/// The pull phase (stats, items expected) and the soak.
#[derive(Default)]
pub struct More {
    pub pull: Option<(PullStats, u64)>,
    pub soak: Option<SoakResult>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The delivery bench's second table (pull, soak) and issue 8's delivery
/// targets, met or missed.
pub fn markdown(
    m: &More,
    e2e: &crate::delivery::E2e,
    drain: Option<&crate::delivery::DrainResult>,
    intake: Option<&crate::delivery::Intake>,
    loads: [String; 2],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "- {}", loads.join("; "));
    if m.pull.is_some() || m.soak.is_some() {
        let _ = writeln!(s, "\n| measurement | setting | result |");
        let _ = writeln!(s, "|---|---|---|");
    }
    if let Some((p, expected)) = &m.pull {
        let _ = writeln!(
            s,
            "| pull: `$pending?_count=500` + `$confirm` (journaled), one request at a time, OAuth2 bearer token | Oslo's pull queue ({expected} events for Oslo so far) | {:.0} items/s ({} items in {:.1} s; {} requests; {:.1} s in $pending, {:.1} s in $confirm){} |",
            p.per_sec(),
            p.items,
            p.secs,
            p.requests,
            p.pending_secs,
            p.confirm_secs,
            if p.items == *expected {
                String::new()
            } else {
                format!("; **{} items, {expected} expected**", p.items)
            }
        );
    }
    if let Some(k) = &m.soak {
        let samples: Vec<String> = k
            .samples
            .iter()
            .map(|x| {
                format!(
                    "{}k: {:.0} MiB ({:.0}/s)",
                    x.stored / 1000,
                    mib(x.rss_kib),
                    x.rate
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| soak: hub RSS after each chunk (soak events stored: RSS (ingest rate of the chunk)) | {} events for Oslo, push{} delivering at the same time | {} |",
            k.events,
            if k.pull.is_some() { " and pull" } else { "" },
            samples.join("; ")
        );
        let end = k.end_mem.map_or(0, |x| x.0);
        let _ = writeln!(
            s,
            "| soak: end, both destinations have everything | push caught up {:.1} s after the last ack{} | hub VmRSS {:.0} MiB, VmHWM {:.0} MiB; store {:.0} MiB on disk |",
            k.push_lag_secs,
            k.pull
                .as_ref()
                .map(|p| format!(
                    "; the pull client confirmed {} items at {:.0}/s over the soak",
                    p.items,
                    p.per_sec()
                ))
                .unwrap_or_default(),
            mib(end),
            mib(k.end_mem.map_or(0, |x| x.1)),
            k.disk_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    targets(&mut s, m, e2e, drain, intake);
    s
}

fn targets(
    s: &mut String,
    m: &More,
    e2e: &crate::delivery::E2e,
    drain: Option<&crate::delivery::DrainResult>,
    intake: Option<&crate::delivery::Intake>,
) {
    use std::fmt::Write as _;
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    let _ = writeln!(s, "\n| target (issue 8) | result | met? |");
    let _ = writeln!(s, "|---|---|---|");
    let p99 = e2e.load.ms(0.99);
    let _ = writeln!(
        s,
        "| ack p99 ≤ 5 ms at a steady 1,000 events/s while a push destination delivers | {p99:.2} ms ({:.0} events/s achieved); {} of {} acked events missing at the adapter | {} |",
        e2e.load.accepted_per_sec(),
        e2e.missing,
        e2e.load.accepted,
        yes(p99 <= 5.0)
    );
    if let Some(d) = drain {
        let rate = d.backlog as f64 / d.from_first_secs.max(1e-9);
        let of_intake = intake.map(|i| rate / (i.events as f64 / i.secs.max(1e-9)));
        let _ = writeln!(
            s,
            "| drain ≥ 15,000 events/s and ≥ 0.8 of the adapter's intake | {rate:.0} events/s ({:.2} of 15,000){} | {} |",
            rate / 15_000.0,
            of_intake
                .map(|x| format!("; {x:.2} of intake"))
                .unwrap_or_default(),
            yes(rate >= 15_000.0 && of_intake.is_none_or(|x| x >= 0.8))
        );
    }
    if let Some((p, _)) = &m.pull {
        let _ = writeln!(
            s,
            "| pull ≥ 10,000 items/s (`$pending?_count=500` + `$confirm`) | {:.0} items/s over {} items ({:.2} of the target) | {} |",
            p.per_sec(),
            p.items,
            p.per_sec() / 10_000.0,
            yes(p.per_sec() >= 10_000.0)
        );
    }
    if let Some(k) = &m.soak {
        let end = k.end_mem.map_or(0, |x| x.0);
        let at_1m = k.rss_at(1_000_000);
        let _ = writeln!(
            s,
            "| RSS after 10M stored and delivered (push + pull) ≤ 1.2 × RSS at 1M, and ≤ 300 MB | {} | {} |",
            match at_1m {
                Some(r) => format!(
                    "{:.0} MiB at the end ({} soak events) vs {:.0} MiB at 1M: {:.2}×",
                    mib(end),
                    k.events,
                    mib(r),
                    end as f64 / r.max(1) as f64
                ),
                None => format!(
                    "{:.0} MiB at the end of {} soak events (fewer than 1M: no 1M sample)",
                    mib(end),
                    k.events
                ),
            },
            match at_1m {
                Some(r) if k.events >= 10_000_000 => {
                    yes(end * 10 <= r * 12 && end * 1024 <= 300_000_000).to_string()
                }
                _ => format!(
                    "{} (not 10M)",
                    yes(at_1m.is_none_or(|r| end * 10 <= r * 12) && end * 1024 <= 300_000_000)
                ),
            }
        );
    }
}
