//! `vendor-sim load`: concurrent clients against the hub's gRPC ingest,
//! reporting durable events/s and ack latency percentiles.
//!
//! Why it exists: the hub acks an event only once it is on disk, and many
//! writers share one fdatasync (group commit). Whether that holds up is a
//! question of numbers: events/s with many pipelined streams, events/s with
//! plain unary calls, and the ack latency at a steady rate. Each client has
//! its own HTTP/2 connection and its own deterministic generator, so events
//! spread over many synthetic residents in two municipalities.
//!
//! Latency is measured from the moment an event was *due* (with `--rate`) or
//! handed to the stream (without) until its receipt: a hub that stalls shows
//! up as latency, not as missing samples (no coordinated omission).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use knutepunkt::proto::v1::{Receipt, ReceiptStatus};
use knutepunkt::sim::{BERGEN, GenConfig, Generator, Mix, OSLO, Population};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{Mode, addr};
use knutepunkt_adapters::conn::ConnArgs;

mod client;
mod report;

use client::{stream_client, unary_client};
pub use report::LoadReport;

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// The hub's gRPC address (loopback only).
    #[arg(long, value_parser = addr::parse_grpc, default_value = "127.0.0.1:50051")]
    pub grpc: SocketAddr,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
    /// Events in total, split evenly over the clients.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub events: u64,
    /// stream: SubmitStream, pipelined; unary: one Submit at a time per client.
    #[arg(long, value_enum, default_value_t = Mode::Stream)]
    pub mode: Mode,
    /// Pace to this many events/s in total (spread over the clients).
    /// Without it every client sends as fast as the window allows.
    #[arg(long, value_parser = crate::parse_rate)]
    pub rate: Option<f64>,
    /// Events in flight per stream (sent, receipt not yet back).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: u32,
    /// Synthetic residents per municipality (Oslo and Bergen).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub residents: u32,
    /// Seed for residents and events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Event id prefix; defaults to one unique per run so reruns are not duplicates.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Give up (and report what finished) after this many seconds.
    #[arg(long, default_value = "900", value_parser = crate::parse_secs)]
    pub max_time: Duration,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Bench only: send for Oslo alone (the municipality with a destination).
    #[arg(skip)]
    pub oslo_only: bool,
    /// Bench only: what the clients send.
    #[arg(skip = Mix::BALANCED)]
    pub mix: Mix,
    /// Bench only: keep (resource, ack time) of every ACCEPTED receipt.
    #[arg(skip)]
    pub record_acks: bool,
    /// Bench only: note the time at every this many ACCEPTED receipts (the
    /// rate of the first and the last stretch of a long run).
    #[arg(skip)]
    pub mark_every: Option<u64>,
    /// Bench only: more hubs (on one shared store); client `i` connects to
    /// the `i mod n`-th of `grpc` followed by these.
    #[arg(skip)]
    pub more_hubs: Vec<SocketAddr>,
}

impl LoadArgs {
    /// Settings for a load run started by the bench.
    pub fn new(grpc: SocketAddr, conn: ConnArgs, mode: Mode, clients: u32, events: u64) -> Self {
        LoadArgs {
            grpc,
            clients,
            events,
            mode,
            rate: None,
            window: 64,
            residents: 500,
            seed: 1,
            prefix: None,
            max_time: Duration::from_secs(900),
            json: false,
            conn,
            oslo_only: false,
            mix: Mix::BALANCED,
            record_acks: false,
            mark_every: None,
            more_hubs: Vec::new(),
        }
    }
}

pub async fn run_cli(a: LoadArgs) -> Result<()> {
    let report = run(&a, true).await?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        report.print_text();
    }
    Ok(())
}

/// Counters every client adds to; read by the progress line.
/// Wall-clock now in microseconds since the Unix epoch (0 if the clock is
/// before 1970).
pub fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Shared {
    accepted: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// `Some` when acks are recorded.
    acks: Option<Mutex<Vec<(String, i64)>>>,
    mark_every: u64,
    marks: Mutex<Vec<(u64, Instant)>>,
}

impl Shared {
    fn receipt(&self, r: &Receipt) {
        let c = match ReceiptStatus::try_from(r.status) {
            Ok(ReceiptStatus::Accepted) => {
                if let Some(acks) = &self.acks
                    && let Ok(mut v) = acks.lock()
                {
                    v.push((r.resource.clone(), unix_micros()));
                }
                let n = self.accepted.fetch_add(1, Ordering::Relaxed) + 1;
                if self.mark_every > 0
                    && n.is_multiple_of(self.mark_every)
                    && let Ok(mut m) = self.marks.lock()
                {
                    m.push((n, Instant::now()));
                }
                return;
            }
            Ok(ReceiptStatus::Duplicate) => &self.duplicate,
            Ok(ReceiptStatus::Rejected) => {
                self.note_error(|| format!("REJECTED {}: {}", r.error_code, r.error));
                &self.rejected
            }
            _ => &self.errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn status(&self, s: &tonic::Status) {
        self.note_error(|| format!("{:?}: {}", s.code(), s.message()));
        // Unary Submit answers bad input with a status instead of a receipt.
        let c = match s.code() {
            tonic::Code::InvalidArgument | tonic::Code::AlreadyExists => &self.rejected,
            _ => &self.errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn errors(&self, n: u64, why: impl FnOnce() -> String) {
        if n > 0 {
            self.errors.fetch_add(n, Ordering::Relaxed);
            self.note_error(why);
        }
    }

    fn note_error(&self, why: impl FnOnce() -> String) {
        if let Ok(mut g) = self.first_error.lock()
            && g.is_none()
        {
            *g = Some(why());
        }
    }

    fn done(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
            + self.duplicate.load(Ordering::Relaxed)
            + self.rejected.load(Ordering::Relaxed)
            + self.errors.load(Ordering::Relaxed)
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits. Constant, valid bounds: this
    // cannot fail at run time (not an input or I/O path).
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

/// Runs one load and returns its report. `progress` prints a line a second
/// on stderr.
pub async fn run(a: &LoadArgs, progress: bool) -> Result<LoadReport> {
    let orgs: &[&str] = if a.oslo_only {
        &[OSLO]
    } else {
        &[OSLO, BERGEN]
    };
    let population = Arc::new(Population::new(a.seed, orgs, a.residents));
    let prefix = a
        .prefix
        .clone()
        .unwrap_or_else(|| crate::send::run_prefix(&format!("load-{}", a.mode.as_str())));
    let clients = a.clients.max(1);

    // Connect first, so connection setup is not part of the measurement.
    let channels = connect(a, clients).await?;

    let shared = Arc::new(Shared {
        acks: a.record_acks.then(|| Mutex::new(Vec::new())),
        mark_every: a.mark_every.unwrap_or(0),
        ..Shared::default()
    });
    // Per-client pacing interval: the total rate spread over the clients.
    let pace = a
        .rate
        .map(|r| Duration::from_secs_f64(f64::from(clients) / r));
    let start = Instant::now() + Duration::from_millis(20);
    let mut set = JoinSet::new();
    for (i, channel) in channels.into_iter().enumerate() {
        let i = i as u64;
        let n = a.events / u64::from(clients) + u64::from(i < a.events % u64::from(clients));
        if n == 0 {
            continue;
        }
        let generator = client_generator(a, &population, &prefix, i)?;
        let shared = shared.clone();
        let window = a.window as usize;
        match a.mode {
            Mode::Stream => set.spawn(stream_client(
                channel, generator, n, pace, window, start, shared,
            )),
            Mode::Unary => set.spawn(unary_client(channel, generator, n, pace, start, shared)),
        };
    }

    let ticker = progress.then(|| tokio::spawn(print_progress(shared.clone(), a.events)));
    let (latency, timed_out) = join_clients(set, start + a.max_time, &shared).await;
    let elapsed = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    Ok(load_report(
        a,
        clients,
        &shared,
        start,
        elapsed,
        (latency, timed_out),
    ))
}

/// Client `i`'s event generator: its own seed and event-id prefix.
fn client_generator(
    a: &LoadArgs,
    population: &Arc<Population>,
    prefix: &str,
    i: u64,
) -> Result<Generator> {
    let mut cfg = GenConfig::new(
        a.seed.wrapping_mul(1_000_003).wrapping_add(i),
        format!("{prefix}-c{i:04}"),
        a.mix,
    );
    // A note answers an alarm only once that alarm has surely left the window.
    cfg.min_note_lag = u64::from(a.window) + 1;
    Generator::new(population.clone(), cfg).map_err(|e| anyhow::anyhow!(e))
}

/// The finished load's report from the clients' shared counters and their
/// merged latencies (`joined`: histogram, timed out).
fn load_report(
    a: &LoadArgs,
    clients: u32,
    shared: &Shared,
    start: Instant,
    elapsed: Duration,
    joined: (Histogram<u64>, bool),
) -> LoadReport {
    let (latency, timed_out) = joined;
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let first_error = shared.first_error.lock().ok().and_then(|g| g.clone());
    let acks = shared
        .acks
        .as_ref()
        .and_then(|m| m.lock().ok().map(|mut v| std::mem::take(&mut *v)))
        .unwrap_or_default();
    LoadReport {
        mode: a.mode,
        clients,
        window: a.window,
        rate: a.rate,
        events: a.events,
        elapsed,
        accepted: g(&shared.accepted),
        duplicate: g(&shared.duplicate),
        rejected: g(&shared.rejected),
        errors: g(&shared.errors),
        latency_us: latency,
        timed_out,
        first_error,
        acks,
        marks: marks(shared, start),
    }
}

/// One connection per client; with several hubs the clients take them in
/// turn.
async fn connect(a: &LoadArgs, clients: u32) -> Result<Vec<Channel>> {
    let conn = a.conn.resolve()?;
    let hubs: Vec<SocketAddr> = std::iter::once(a.grpc)
        .chain(a.more_hubs.iter().copied())
        .collect();
    let mut channels = Vec::with_capacity(clients as usize);
    for i in 0..clients {
        let hub = hubs[i as usize % hubs.len()];
        let ch = conn
            .connect(hub)
            .await
            .with_context(|| format!("client {i} to {hub}"))?;
        channels.push(ch);
    }
    Ok(channels)
}

/// A progress line a second until aborted.
async fn print_progress(shared: Arc<Shared>, total: u64) {
    let mut last = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    // Bounded by the caller's abort; the cap is a second safety net.
    for s in 1..=86_400u64 {
        tick.tick().await;
        let done = shared.done();
        eprintln!(
            "[{s:>4} s] {done:>9}/{total} receipts ({:>7}/s), {} errors",
            done - last,
            shared.errors.load(Ordering::Relaxed)
        );
        last = done;
    }
}

/// Waits for every client until `deadline` (then aborts the rest): their
/// latency histograms merged, and whether the run timed out.
async fn join_clients(
    mut set: JoinSet<Histogram<u64>>,
    deadline: Instant,
    shared: &Shared,
) -> (Histogram<u64>, bool) {
    let mut latency = histogram();
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(h))) => {
                let _ = latency.add(h);
            }
            Ok(Some(Err(e))) => shared.errors(1, || format!("client task failed: {e}")),
            Ok(None) => return (latency, false),
            Err(_) => {
                set.abort_all();
                return (latency, true);
            }
        }
    }
}

fn marks(shared: &Shared, start: Instant) -> Vec<(u64, Duration)> {
    let mut m: Vec<(u64, Duration)> = shared
        .marks
        .lock()
        .map(|v| {
            v.iter()
                .map(|(n, t)| (*n, t.saturating_duration_since(start)))
                .collect()
        })
        .unwrap_or_default();
    m.sort_unstable();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use knutepunkt::config::Config;
    use knutepunkt::server::Hub;

    /// Starts a hub in-process, runs `f` against its gRPC address, stops it.
    async fn with_hub<F, Fut>(f: F)
    where
        F: FnOnce(SocketAddr) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        // The hub refuses a data dir open to others; tempdir() makes 0755.
        let data = dir.path().join("data");
        let hub = Hub::start(Config::for_dev(data))
            .await
            .unwrap_or_else(|e| panic!("hub: {e}"));
        let grpc = hub.grpc_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(hub.run_until(async move {
            let _ = rx.await;
        }));
        f(grpc).await;
        let _ = tx.send(());
        let _ = server.await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_and_unary_loads_are_all_accepted() {
        with_hub(|grpc| async move {
            let plain = ConnArgs {
                plain: true,
                ..ConnArgs::default()
            };
            let mut a = LoadArgs::new(grpc, plain.clone(), Mode::Stream, 4, 2_000);
            a.window = 16;
            a.residents = 20;
            a.max_time = Duration::from_secs(60);
            let r = run(&a, false).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.accepted, 2_000, "{r:?}");
            assert_eq!(r.errors + r.rejected + r.duplicate, 0, "{r:?}");
            assert_eq!(r.latency_us.len(), 2_000);

            let mut u = LoadArgs::new(grpc, plain, Mode::Unary, 3, 200);
            u.prefix = Some("unary".into());
            u.rate = Some(400.0);
            let r = run(&u, false).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.accepted, 200, "{r:?}");
            assert!(r.elapsed >= Duration::from_millis(450), "paced: {r:?}");

            // The same ids with new timestamps are conflicts (ALREADY_EXISTS),
            // never stored twice: that is why every run defaults to a new prefix.
            let r = run(&u, false).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((r.accepted, r.rejected), (0, 200), "{r:?}");
        })
        .await;
    }
}
