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
mod benchreport;
mod cgbench;
mod cpu;
mod delivery;
mod deliveryreport;
mod hubenv;
mod load;
mod mqttbench;
mod nats;
mod pgload;
mod pgreport;
mod pgsql;
mod pull;
mod retention;
mod send;
mod soak;
mod token;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "vendor-sim",
    version,
    about = "Simulated vendor, load generator and benchmark for the Knutepunkt hub (loopback only)",
    after_help = "Examples:\n  vendor-sim send --grpc 127.0.0.1:50051 --certs dev-certs --vendor demo-vendor --rate 5 --duration 30\n  vendor-sim load --grpc 127.0.0.1:50051 --certs dev-certs --clients 64 --events 200000 --mode stream\n  vendor-sim load --grpc 127.0.0.1:50051 --plain --events 10000   # hub started with --insecure-dev\n  vendor-sim baseline --dir /tmp/kp-baseline --events 200000\n  vendor-sim bench --events 1000000 --nats-events 20000\n  vendor-sim bench --stream-events 50000 --search --search-stored 100000\n  vendor-sim bench-delivery --drain-backlog 200000\n  vendor-sim bench-mqtt --messages 20000\n  vendor-sim bench-callgrind --events 20000\n  vendor-sim bench-postgres --events 50000"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send a realistic mix of alarms, readings and follow-up notes at a steady rate.
    #[command(
        after_help = "Prints one line per event (residents by pseudonym only) and a summary.\nMutual TLS with --certs DIR --vendor ID (a `knutepunkt dev-certs` directory) or\n--ca/--cert/--key; --plain for a hub started with --insecure-dev.\n\nExamples:\n  vendor-sim send --grpc 127.0.0.1:50051 --certs dev-certs --vendor demo-vendor --rate 5 --duration 30 --seed 7\n  vendor-sim send --grpc 127.0.0.1:50051 --ca ca.pem --cert acme.pem --key acme.key --rate 1\n  vendor-sim send --grpc 127.0.0.1:50051 --plain --rate 5 --duration 10"
    )]
    Send(send::SendArgs),
    /// Drive the hub with C concurrent clients and report events/s and ack latency.
    #[command(
        after_help = "Progress goes to stderr once a second; the report to stdout.\nLatency is from the moment an event was due to be sent (with --rate) or was sent\n(without) to its receipt, so a stalled hub shows up as latency, not as fewer samples.\nMutual TLS with --certs DIR --vendor ID or --ca/--cert/--key; --plain for an\n--insecure-dev hub.\n\nExamples:\n  vendor-sim load --grpc 127.0.0.1:50051 --certs dev-certs --vendor demo-vendor --clients 64 --events 200000 --mode stream\n  vendor-sim load --grpc 127.0.0.1:50051 --certs dev-certs --clients 8 --events 10000 --mode stream --rate 1000\n  vendor-sim load --grpc 127.0.0.1:50051 --plain --clients 32 --events 20000 --mode unary"
    )]
    Load(load::LoadArgs),
    /// Bare sled 0.34 and fjall 3 with the hub's write pattern: the disk's
    /// durable-write baselines.
    #[command(
        after_help = "Per event one record of 1536 incompressible bytes under a big-endian sequence\nnumber, a random 16-byte id entry and three search keys (the hub's key layout);\n--batch events per commit, one durable sync per commit (fjall: one atomic batch\nacross keyspaces, commit, persist(SyncData); sled: inserts, flush, fdatasync).\nfjall is opened as the hub opens it. `vendor-sim bench` runs both first and divides\nthe hub's durable events/s by each. Progress on stderr every 5 s.\n\nExamples:\n  vendor-sim baseline --dir /tmp/kp-baseline --events 200000\n  vendor-sim baseline --dir /tmp/kp-baseline --events 1000000 --engine fjall --batch 128\n  vendor-sim baseline --dir /tmp/kp-baseline --events 20000 --engine sled --keep"
    )]
    Baseline(baseline::BaselineArgs),
    /// Run the baselines (sled, fjall, NATS JetStream), stream load, unary load,
    /// a steady 1,000 ev/s and (optionally) FHIR search against a freshly started
    /// hub, and print a Markdown table with issue 8's targets.
    #[command(
        after_help = "Everything runs in one process run on one disk (a temporary directory under\n--work-dir), so the ratios compare like with like. The hub runs as in production:\nTLS from a fresh `knutepunkt dev-certs` set, vendor mutual TLS, and FHIR searches\nwith an EPJ bearer token (private_key_jwt). The NATS JetStream baseline starts its\nown nats-server (2.10 or later: `sync_interval: always`; the bench looks in\n~/.cache/knutepunkt/nats-venv/bin, PATH and /usr/sbin, or --nats-server PATH) on a\nfree loopback port with its store in the work directory; without one it says so\nand goes on. Last, unless --no-retention, the retention step on the stopped hub's\nstore: flush + major compaction (the yardstick), a retention pass removing the\nolder half of the events, the hub's own compaction (`knutepunkt compact`); `du`\nafter each.\nProgress on stderr once a second (baselines and retention every 5 s).\n\nExamples:\n  vendor-sim bench                                  # defaults: 64 clients, 200k events\n  vendor-sim bench --events 200000 --no-nats --no-retention\n  vendor-sim bench --events 1000000 --nats-events 20000\n  vendor-sim bench --stream-events 20000 --mark-every 5000 --unary-events 2000 --steady-secs 3 --nats-events 2000\n  vendor-sim bench --search --search-stored 1000000 --searches 500 --no-nats"
    )]
    Bench(bench::BenchArgs),
    /// Delivery to an EPJ: end-to-end latency at a steady rate, a RED alarm
    /// behind a backlog, the drain rate after an outage, pull and a memory soak.
    #[command(
        name = "bench-delivery",
        after_help = "Starts the real hub (TLS, vendor mutual TLS) with, for Oslo, a push destination\nto the real epj-adapter (HTTPS, self-signed, trusted as the destination's ca_file)\nand a pull destination (unless --no-pull), all on free loopback ports in a\ntemporary directory under --work-dir that is removed at the end. Times come from\nthe adapter's received.log against the vendor's ack time (same machine, same\nclock); acked events that never reach the adapter are counted as missing.\nOutages use POST /_admin/mode {\"mode\":\"down\"}. Phases: end-to-end at a steady\nrate, a RED alarm behind a backlog, a drain after an outage, the pull drain (the\nbench's own EPJ client: $pending?_count=500 + $confirm, OAuth2 bearer token), the\nsoak (--soak-events: push and pull at once, hub RSS after every --soak-chunk),\nthe adapter's intake baseline. Progress on stderr once a second; Markdown on\nstdout. Disk: about 10 KB per backlog event (hub store + one adapter file).\n\nExamples:\n  vendor-sim bench-delivery                                   # 1M drain: ~15 min, ~11 GB\n  vendor-sim bench-delivery --drain-backlog 300000 --soak-events 1500000\n  vendor-sim bench-delivery --e2e-secs 20 --alarm-backlog 0 --drain-backlog 0 --intake-events 0 --no-pull\n  vendor-sim bench-delivery --e2e-secs 3 --alarm-backlog 3000 --drain-backlog 5000 --intake-events 3000 --soak-events 6000 --soak-chunk 3000"
    )]
    BenchDelivery(delivery::DeliveryArgs),
    /// The MQTT gateway end to end (publish → gateway → hub receipt → MQTT ack)
    /// beside the broker's own publish-and-deliver rate, in one run.
    #[command(
        name = "bench-mqtt",
        after_help = "Needs an MQTT broker on loopback (Mosquitto on 127.0.0.1:1883). Phase 1 publishes\nSenML readings with QoS 1 to a QoS 1 subscriber (the broker alone); phase 2\npublishes the same through the MQTT gateway (in this process) into a real hub\n(TLS, vendor mutual TLS, fresh store in --work-dir) and counts a message done\nwhen the gateway acknowledged it after the hub's receipt. Topics and client ids\nare unique per run; the gateway's persistent session is removed at the end.\nProgress on stderr once a second; a Markdown table on stdout.\n\nExamples:\n  vendor-sim bench-mqtt\n  vendor-sim bench-mqtt --messages 50000 --devices 200 --window 500"
    )]
    BenchMqtt(mqttbench::MqttBenchArgs),
    /// 1, 2, 3 hubs on one PostgreSQL (`[store] backend = "postgres"`) beside
    /// the embedded store and pgbench on the same server, in one run.
    #[command(
        name = "bench-postgres",
        after_help = "Needs PostgreSQL (default: postgres://postgres@127.0.0.1:5432/test; the user must be\nallowed to create schemas) and, for the server's own rate, pgbench. First the load\nagainst one hub on the embedded store. Then per setting: a fresh schema\nkp_bench_<run>_<N>, N real hubs on it (TLS, vendor mutual TLS, store.url with\nsearch_path=<schema>, hub_id bench-hub-1..N), the same SubmitStream load with the\nclients taking the hubs in turn, each hub's /metrics (rows per group transaction),\nCPU seconds of the hubs, of PostgreSQL and of the load generator, the schema's size\nand row count, then DROP SCHEMA. Last, pgbench in a scratch schema: one row per\ntransaction and the hubs' mean rows per transaction, rows as big as the hubs' event\nrows, as many clients as each hub count. Progress on stderr once a second; Markdown\non stdout.\n\nExamples:\n  vendor-sim bench-postgres                       # 3 x 50k events + embedded + pgbench: a few minutes\n  vendor-sim bench-postgres --events 200000 --hubs 1,3 --pgbench-secs 10\n  vendor-sim bench-postgres --pg-url postgres://kp@db.internal/bench --no-embedded --no-pgbench"
    )]
    BenchPostgres(pgload::PgBenchArgs),
    /// CPU instructions per accepted event, per stage of ingest and delivery
    /// (TLS, protobuf/gRPC, validation, FHIR JSON, hashing, store, delivery,
    /// allocator, other), counted by valgrind's callgrind.
    #[command(
        name = "bench-callgrind",
        after_help = "Needs valgrind (apt-get install valgrind) and a release build with symbols (the\nworkspace's release profile has debug = \"line-tables-only\"). Two runs of the real hub\n(TLS, vendor mutual TLS, fresh store in a temporary directory under --work-dir)\nunder `valgrind --tool=callgrind --separate-threads=no`: a baseline that starts,\nidles --idle-secs and stops, and a load run of --events SubmitStream events for Oslo,\neach pushed to the real epj-adapter (HTTPS, not under valgrind) before the hub is\nstopped. Instructions of the load run minus the baseline, divided by the events\naccepted, split into stages by function name: a function's own instructions go to\nits stage, those of a function without one (memcpy, Vec, futures) to its callers'\nstages in proportion to the calls. The hub runs 10-20x slower under callgrind:\n20,000 events take one to two minutes. Instruction counts hardly change with the\nmachine's load, unlike times. Progress on stderr; Markdown on stdout.\n\nExamples:\n  vendor-sim bench-callgrind                          # 20,000 events: about 2 minutes\n  vendor-sim bench-callgrind --events 5000 --no-delivery --keep\n  vendor-sim bench-callgrind --analyze /tmp/kp/load/callgrind.out --analyze-baseline /tmp/kp/idle/callgrind.out --events 20000"
    )]
    BenchCallgrind(cgbench::CallgrindArgs),
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
    // Library logs (the in-process MQTT gateway's, say) only when asked for
    // with RUST_LOG; stdout stays the report.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.command {
        Command::Send(a) => send::run(a).await,
        Command::Load(a) => load::run_cli(a).await,
        Command::Baseline(a) => baseline::run_cli(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::BenchDelivery(a) => delivery::run(a).await,
        Command::BenchMqtt(a) => mqttbench::run(a).await,
        Command::BenchPostgres(a) => pgload::run(a).await,
        Command::BenchCallgrind(a) => cgbench::run(a).await,
    }
}
