//! `vendor-sim`: a simulated vendor, a load generator and the benchmark.
//!
//! Why it exists: the hub's promises (durable acks, throughput close to the
//! disk's, a red alarm acknowledged within milliseconds at 1,000 events/s)
//! must be shown with numbers measured in one run on one disk, and vendors
//! need something to test their own expectations against. Events come from
//! `knutepunkt::sim` (synthetic residents only). This tool talks to
//! 127.0.0.1 only and every run is bounded in time and count.

mod addr;
mod baseline;
mod bench;
mod load;
mod send;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "vendor-sim",
    version,
    about = "Simulated vendor, load generator and benchmark for the Knutepunkt hub (loopback only)",
    after_help = "Examples:\n  vendor-sim send --grpc 127.0.0.1:50051 --rate 5 --duration 30\n  vendor-sim load --grpc 127.0.0.1:50051 --clients 64 --events 200000 --mode stream\n  vendor-sim baseline --dir /tmp/sled-baseline --events 200000\n  vendor-sim bench --stream-events 50000 --search --search-stored 100000"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send a realistic mix of alarms, readings and follow-up notes at a steady rate.
    #[command(
        after_help = "Prints one line per event (residents by pseudonym only) and a summary.\n\nExample:\n  vendor-sim send --grpc 127.0.0.1:50051 --rate 5 --duration 30 --seed 7"
    )]
    Send(send::SendArgs),
    /// Drive the hub with C concurrent clients and report events/s and ack latency.
    #[command(
        after_help = "Progress goes to stderr once a second; the report to stdout.\nLatency is from the moment an event was due to be sent (with --rate) or was sent\n(without) to its receipt, so a stalled hub shows up as latency, not as fewer samples.\n\nExamples:\n  vendor-sim load --grpc 127.0.0.1:50051 --clients 64 --events 200000 --mode stream\n  vendor-sim load --grpc 127.0.0.1:50051 --clients 8 --events 10000 --mode stream --rate 1000\n  vendor-sim load --grpc 127.0.0.1:50051 --clients 32 --events 20000 --mode unary"
    )]
    Load(load::LoadArgs),
    /// Bare sled inserts + flush + fdatasync in batches: the disk's durable-write baseline.
    #[command(
        after_help = "The hub's durable events/s is divided by this number: it is what the\nsame disk does with sled alone, with group commit and no gRPC, FHIR or indexes.\n\nExample:\n  vendor-sim baseline --dir /tmp/kp-baseline --events 200000 --batch 64"
    )]
    Baseline(baseline::BaselineArgs),
    /// Run baseline, stream load, unary load, a steady 1,000 ev/s and (optionally)
    /// FHIR search against a freshly started hub, and print a Markdown table.
    #[command(
        after_help = "Everything runs in one process run on one disk (a temporary directory under\n--work-dir), so the ratios compare like with like.\n\nExamples:\n  vendor-sim bench                                  # defaults: 64 clients, 200k events\n  vendor-sim bench --stream-events 20000 --unary-events 5000 --steady-secs 5\n  vendor-sim bench --search --search-stored 1000000 --searches 500"
    )]
    Bench(bench::BenchArgs),
}

/// How the load generator submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// SubmitStream: one stream per client, pipelined with a bounded window.
    Stream,
    /// Submit: one call at a time per client.
    Unary,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stream => "stream",
            Mode::Unary => "unary",
        }
    }
}

/// Parses seconds (fractions allowed) into a bounded duration.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s}"))?;
    if !(0.0..=86_400.0).contains(&v) {
        return Err("must be between 0 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(v))
}

/// Parses a positive rate (events per second), at most one million.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    if !(v > 0.0 && v <= 1_000_000.0) {
        return Err("must be above 0 and at most 1000000 events/s".into());
    }
    Ok(v)
}

/// A directory that must not exist yet or be empty (we never write into
/// someone's data).
pub fn fresh_dir(p: &std::path::Path) -> Result<PathBuf> {
    if p.exists() {
        let mut entries =
            std::fs::read_dir(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
        if entries.next().is_some() {
            anyhow::bail!(
                "{} exists and is not empty; give a new or empty directory",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(p).map_err(|e| anyhow::anyhow!("creating {}: {e}", p.display()))?;
    Ok(p.to_path_buf())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Send(a) => send::run(a).await,
        Command::Load(a) => load::run_cli(a).await,
        Command::Baseline(a) => baseline::run_cli(a).await,
        Command::Bench(a) => bench::run(a).await,
    }
}
