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
use tokio::task::JoinHandle;

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
    let follower = start_follower(plan, hub, &confirmed, &target).await?;
    let samples = load_chunks(plan, hub, epj, created0, &confirmed).await?;
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
        Some(f) => Some(finish_pull(f, &confirmed, plan.events).await?),
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

/// Starts the pull client following Oslo's pull destination (if the plan
/// pulls); it stops once `confirmed` reaches `target`.
async fn start_follower(
    plan: &SoakPlan,
    hub: &HubProcess,
    confirmed: &Arc<AtomicU64>,
    target: &Arc<AtomicU64>,
) -> Result<Option<JoinHandle<Result<PullStats>>>> {
    if !plan.pull {
        return Ok(None);
    }
    let c = PullClient::new(hub, plan.pull_count).await?;
    Ok(Some(tokio::spawn(pull::follow(
        c,
        confirmed.clone(),
        target.clone(),
        plan.timeout,
    ))))
}

/// Stores the soak's events chunk by chunk; one RSS sample after each.
async fn load_chunks(
    plan: &SoakPlan,
    hub: &HubProcess,
    epj: &EpjProcess,
    created0: u64,
    confirmed: &AtomicU64,
) -> Result<Vec<Sample>> {
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
    Ok(samples)
}

/// Waits for the pull client to confirm everything, with its progress once a
/// second.
async fn finish_pull(
    mut f: JoinHandle<Result<PullStats>>,
    confirmed: &AtomicU64,
    events: u64,
) -> Result<PullStats> {
    let mut last = confirmed.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            r = &mut f => break r.context("the pull client task failed")?,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let c = confirmed.load(Ordering::Relaxed);
                eprintln!("  soak pull: {c}/{} confirmed ({}/s)", events, c - last);
                last = c;
            }
        }
    }
}

/// The pull phase (stats, items expected) and the soak.
#[derive(Default)]
pub struct More {
    pub pull: Option<(PullStats, u64)>,
    pub soak: Option<SoakResult>,
}
