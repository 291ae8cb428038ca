//! `vendor-sim send`: one simulated vendor at a steady rate.
//!
//! Why it exists: to watch a hub (or an EPJ behind it) receive a believable
//! stream of alarms, readings and closed-loop notes by hand, e.g. while
//! developing the EPJ side. One line per event, residents by pseudonym only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1::{Receipt, ReceiptStatus};
use knutepunkt::sim::{BERGEN, GenConfig, Generator, Mix, OSLO, Population};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::addr;

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The hub's gRPC address (loopback only).
    #[arg(long, value_parser = addr::parse_grpc, default_value = "127.0.0.1:50051")]
    grpc: std::net::SocketAddr,
    /// Events per second.
    #[arg(long, default_value = "5", value_parser = crate::parse_rate)]
    rate: f64,
    /// How long to send, in seconds (at most a day).
    #[arg(long, default_value = "30", value_parser = crate::parse_secs)]
    duration: Duration,
    /// What this vendor sends.
    #[arg(long, value_enum, default_value_t = MixArg::Balanced)]
    mix: MixArg,
    /// Synthetic residents per municipality (Oslo and Bergen).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    residents: u32,
    /// Seed: the same seed sends the same residents and the same story.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Event id prefix; defaults to one unique per run so reruns are not duplicates.
    #[arg(long)]
    prefix: Option<String>,
    /// At most this many Submit calls in flight, so a slow hub cannot make us
    /// pile up unbounded work.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_in_flight: u32,
    /// Print only the summary.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    conn: knutepunkt_adapters::conn::ConnArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MixArg {
    /// Readings, alarms and notes from one busy vendor.
    Balanced,
    /// Night supervision, safety alarms, dispensers and follow-up notes.
    AlarmCentre,
    /// Home-monitoring readings only.
    HomeMonitoring,
}

impl MixArg {
    fn mix(self) -> Mix {
        match self {
            MixArg::Balanced => Mix::BALANCED,
            MixArg::AlarmCentre => Mix::ALARM_CENTRE,
            MixArg::HomeMonitoring => Mix::HOME_MONITORING,
        }
    }
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    accepted: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

/// A run-unique default prefix: seconds since the epoch.
pub fn run_prefix(what: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{what}-{secs}")
}

pub async fn run(a: SendArgs) -> Result<()> {
    let population = Arc::new(Population::new(a.seed, &[OSLO, BERGEN], a.residents));
    let prefix = a.prefix.clone().unwrap_or_else(|| run_prefix("sim"));
    let mut generator = Generator::new(
        population.clone(),
        GenConfig::new(a.seed, prefix, a.mix.mix()),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let conn = a.conn.resolve()?;
    let client = EventClient::new(conn.connect(a.grpc).await?);
    eprintln!(
        "sending {} events/s for {:.0} s to {} over {} ({} residents in Oslo and Bergen)",
        a.rate,
        a.duration.as_secs_f64(),
        a.grpc,
        conn.describe(),
        population.len()
    );

    let counts = Arc::new(Counts::default());
    let gate = Arc::new(Semaphore::new(a.max_in_flight as usize));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + a.duration;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        let at = tick.tick().await;
        if at >= deadline {
            break;
        }
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .context("in-flight limit closed")?;
        let ev = generator.next_event();
        let line = population.describe(&ev);
        counts.sent.fetch_add(1, Ordering::Relaxed);
        let mut client = client.clone();
        let counts = counts.clone();
        let quiet = a.quiet;
        tasks.spawn(async move {
            let t0 = Instant::now();
            let mut req = tonic::Request::new(ev);
            req.set_timeout(Duration::from_secs(30));
            let outcome = match client.submit(req).await {
                Ok(r) => classify(&counts, &r.into_inner()),
                Err(s) => classify_status(&counts, &s),
            };
            if !quiet {
                println!(
                    "{line}  [{outcome}, {:.1} ms]",
                    t0.elapsed().as_secs_f64() * 1000.0
                );
            }
            drop(permit);
        });
        // Reap finished calls so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    // Bounded: every call has a 30 s timeout.
    while tasks.join_next().await.is_some() {}
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "sent {} in {:.1} s: {} accepted, {} duplicate, {} rejected, {} errors",
        g(&counts.sent),
        started.elapsed().as_secs_f64(),
        g(&counts.accepted),
        g(&counts.duplicate),
        g(&counts.rejected),
        g(&counts.errors)
    );
    Ok(())
}

fn classify(c: &Counts, r: &Receipt) -> String {
    match ReceiptStatus::try_from(r.status) {
        Ok(ReceiptStatus::Accepted) => {
            c.accepted.fetch_add(1, Ordering::Relaxed);
            "ACCEPTED".into()
        }
        Ok(ReceiptStatus::Duplicate) => {
            c.duplicate.fetch_add(1, Ordering::Relaxed);
            "DUPLICATE".into()
        }
        Ok(ReceiptStatus::Rejected) => {
            c.rejected.fetch_add(1, Ordering::Relaxed);
            format!("REJECTED {}: {}", r.error_code, r.error)
        }
        _ => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            format!("unknown receipt status {}", r.status)
        }
    }
}

fn classify_status(c: &Counts, s: &tonic::Status) -> String {
    // Unary Submit answers bad input with a status instead of a receipt.
    if matches!(
        s.code(),
        tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
    ) {
        c.rejected.fetch_add(1, Ordering::Relaxed);
        format!("REJECTED {:?}: {}", s.code(), s.message())
    } else {
        c.errors.fetch_add(1, Ordering::Relaxed);
        format!("ERROR {:?}: {}", s.code(), s.message())
    }
}
