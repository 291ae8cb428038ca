//! `mqtt-gateway`: MQTT/SenML devices → the hub, at least once end to end.
//!
//! Why it exists: bed and door sensors, dispensers and home-monitoring hubs
//! publish to an MQTT broker; this program subscribes, maps each message to
//! hub events (`knutepunkt_adapters::mqtt`) and acknowledges a message to the
//! broker only after the hub has stored it or it went to the dead-letter
//! topic.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use knutepunkt_adapters::conn::{ConnArgs, HUB_NAME};
use knutepunkt_adapters::mqtt::{self, GatewayConfig, Registry, Scheme, Stats};

#[derive(Parser)]
#[command(
    name = "mqtt-gateway",
    version,
    about = "MQTT/SenML device gateway for the Knutepunkt hub: broker → hub, acked after the hub's receipt",
    after_help = "Examples:\n  mqtt-gateway run --broker 127.0.0.1:1883 --registry devices.toml --grpc 127.0.0.1:50051 --certs dev-certs --vendor acme\n  mqtt-gateway simulate --broker 127.0.0.1:1883 --registry devices.toml --vendor acme --rate 2 --duration 30\n  mqtt-gateway check-registry devices.toml\n  mosquitto_pub -q 1 -t knutepunkt/v1/958935420/acme/bp-17/measurement \\\n    -m '[{\"bt\":1764583200,\"bu\":\"mmHg\",\"n\":\"systolic\",\"v\":142},{\"n\":\"diastolic\",\"v\":88}]'"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Subscribe to the broker and submit every device message to the hub.
    #[command(after_help = RUN_HELP)]
    Run(Box<RunArgs>),
    /// Publish simulated SenML readings, alarms and notes for the devices of a registry.
    #[command(
        after_help = "Publishes with QoS 1 to the topics of each registered device (round robin);\nno patient id leaves the registry. Prints one line per message.\n\nExamples:\n  mqtt-gateway simulate --broker 127.0.0.1:1883 --registry devices.toml --vendor acme --rate 2 --duration 30\n  mqtt-gateway simulate --registry devices.toml --vendor acme --topic-prefix test/knutepunkt/v1 --rate 50 --duration 5"
    )]
    Simulate(SimArgs),
    /// Check a device registry file and print what it holds (never a patient id).
    #[command(after_help = "Example:\n  mqtt-gateway check-registry devices.toml")]
    CheckRegistry {
        /// The registry file (TOML, [[device]] entries).
        file: PathBuf,
    },
}

const RUN_HELP: &str = "At least once, end to end: QoS 1, a persistent session (clean session off,\nthe fixed --client-id) and manual acks. A message is acknowledged to the broker\nonly after the hub answered ACCEPTED or DUPLICATE for every event in it, or after\nit was published to the dead-letter topic with the hub's error. While the hub is\ndown, messages stay unacknowledged in the broker session. event ids are derived\nfrom the message (device, SenML time and name), so a redelivery is a DUPLICATE.\nThe MQTT password is read from KNUTEPUNKT_MQTT_PASSWORD, never from a flag.\n\nTopics: {prefix}/{orgnr}/{vendor}/{device}/{measurement|alarm|note}\n  (prefix knutepunkt/v1 by default). Measurements are SenML JSON (RFC 8428);\n  alarms and notes a small JSON schema; see adapters/mqtt-payloads.md.\n  Dead letters: {dead-letter prefix}/{orgnr}/{vendor}/{device}/{kind}.\n\nExamples:\n  mqtt-gateway run --broker 127.0.0.1:1883 --registry devices.toml --grpc 127.0.0.1:50051 --certs dev-certs --vendor acme\n  mqtt-gateway run --broker mqtt.kommune.no:8883 --broker-ca broker-ca.pem --mqtt-username acme-gw \\\n    --registry /etc/knutepunkt/devices.toml --grpc hub.kommune.no:50051 --hub-name hub.kommune.no \\\n    --ca ca.pem --cert acme.pem --key acme.key --vendor acme --client-id acme-gw-1";

#[derive(Args)]
struct BrokerArgs {
    /// The MQTT broker, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883", env = "KNUTEPUNKT_MQTT_BROKER")]
    broker: String,
    /// Topic prefix the devices publish under.
    #[arg(long, default_value = mqtt::DEFAULT_PREFIX)]
    topic_prefix: String,
    /// Where messages that cannot be submitted are published.
    #[arg(long, default_value = mqtt::DEFAULT_DEAD_LETTER_PREFIX)]
    dead_letter_prefix: String,
    /// Device registry (TOML): device → patient and municipality.
    #[arg(long, value_name = "FILE")]
    registry: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The persistent session's client id (default knutepunkt-gw-<vendor>).
    /// Keep it fixed across restarts; give each gateway its own.
    #[arg(long)]
    client_id: Option<String>,
    /// MQTT user name; the password comes from KNUTEPUNKT_MQTT_PASSWORD.
    #[arg(long)]
    mqtt_username: Option<String>,
    #[arg(
        long,
        env = "KNUTEPUNKT_MQTT_PASSWORD",
        hide = true,
        hide_env_values = true
    )]
    mqtt_password: Option<String>,
    /// CA certificate (PEM) of the broker: MQTT over TLS.
    #[arg(long, value_name = "FILE")]
    broker_ca: Option<PathBuf>,
    /// The hub's gRPC address, HOST:PORT.
    #[arg(long, env = "KNUTEPUNKT_HUB_GRPC")]
    grpc: String,
    /// The name the hub's certificate must carry.
    #[arg(long, default_value = HUB_NAME)]
    hub_name: String,
    #[command(flatten)]
    conn: ConnArgs,
    /// Messages worked on at once; the broker's in-flight window is usually smaller.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    max_in_flight: u16,
    /// On a clean stop, remove the broker session (demos and tests only:
    /// unacknowledged messages are then lost).
    #[arg(long)]
    forget_session_on_exit: bool,
    /// Log filter (RUST_LOG overrides), e.g. info or debug.
    #[arg(long, default_value = "info")]
    log: String,
}

#[derive(Args)]
struct SimArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The vendor level of the topics.
    #[arg(long)]
    vendor: String,
    /// Messages per second (all devices together).
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// How long to publish, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => run(*a).await,
        Command::Simulate(a) => simulate(a).await,
        Command::CheckRegistry { file } => {
            let r = Registry::load(&file)?;
            let mut per_org = std::collections::BTreeMap::<String, usize>::new();
            for d in r.devices() {
                *per_org.entry(d.municipality.to_string()).or_default() += 1;
            }
            println!("{}: {} device(s)", file.display(), r.len());
            for (org, n) in per_org {
                println!("  municipality {org}: {n}");
            }
            Ok(())
        }
    }
}

async fn run(a: RunArgs) -> Result<()> {
    knutepunkt_adapters::logging::init(&a.log)?;
    let vendor = a.conn.vendor.clone();
    let scheme = Scheme::new(
        &a.broker.topic_prefix,
        &a.broker.dead_letter_prefix,
        &vendor,
    )
    .map_err(anyhow::Error::msg)?;
    let registry = Registry::load(&a.broker.registry)?;
    let broker_ca = match &a.broker_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let credentials = match (a.mqtt_username, a.mqtt_password) {
        (Some(u), Some(p)) => Some((u, p)),
        (Some(_), None) => {
            anyhow::bail!("--mqtt-username needs KNUTEPUNKT_MQTT_PASSWORD in the environment")
        }
        (None, _) => None,
    };
    let conn = a.conn.resolve()?.with_server_name(&a.hub_name);
    let cfg = GatewayConfig {
        broker: a.broker.broker.clone(),
        client_id: a
            .client_id
            .unwrap_or_else(|| format!("knutepunkt-gw-{vendor}")),
        credentials,
        broker_ca,
        scheme: scheme.clone(),
        registry,
        hub: a.grpc.clone(),
        conn: conn.clone(),
        max_in_flight: a.max_in_flight as usize,
        keep_alive: Duration::from_secs(30),
        forget_session_on_exit: a.forget_session_on_exit,
    };
    tracing::info!(
        broker = %cfg.broker,
        client_id = %cfg.client_id,
        subscription = %scheme.filter(),
        devices = cfg.registry.len(),
        hub = %cfg.hub,
        hub_connection = conn.describe(),
        "mqtt-gateway starting"
    );
    let stats = Arc::new(Stats::default());
    let progress = tokio::spawn(progress(stats.clone()));
    let result = mqtt::run(cfg, stats, shutdown_signal()).await;
    progress.abort();
    result?;
    Ok(())
}

/// A status line every 10 s while something changes.
async fn progress(stats: Arc<Stats>) {
    let mut last = (u64::MAX, 0);
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now = (Stats::get(&stats.received), Stats::get(&stats.waiting));
        if now != last {
            tracing::info!(
                received = now.0,
                accepted = Stats::get(&stats.accepted),
                duplicate = Stats::get(&stats.duplicate),
                dead_lettered = Stats::get(&stats.dead_lettered),
                acked = Stats::get(&stats.acked),
                waiting_for_hub = now.1,
                "progress"
            );
            last = now;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("stopping");
}

async fn simulate(a: SimArgs) -> Result<()> {
    let scheme = Scheme::new(
        &a.broker.topic_prefix,
        &a.broker.dead_letter_prefix,
        &a.vendor,
    )
    .map_err(anyhow::Error::msg)?;
    let registry = Registry::load(&a.broker.registry)?;
    let devices: Vec<(String, String)> = registry
        .devices()
        .iter()
        .map(|d| (d.municipality.to_string(), d.id.clone()))
        .collect();
    let client_id = format!("knutepunkt-sim-{}-{}", a.vendor, std::process::id());
    let mut publisher = mqtt::sim::Publisher::connect(&a.broker.broker, &client_id).await?;
    println!(
        "publishing to {} for {} device(s), {} msg/s for {} s",
        a.broker.broker,
        devices.len(),
        a.rate,
        a.duration
    );
    let n = mqtt::sim::run(
        &mut publisher,
        &scheme,
        &devices,
        a.rate,
        Duration::from_secs(a.duration),
        |topic, line| println!("{topic}  {line}"),
    )
    .await?;
    let acked = publisher.finish(Duration::from_secs(10)).await;
    println!("published {n}, broker acknowledged {acked}");
    if acked < n {
        anyhow::bail!("the broker acknowledged {acked} of {n} messages");
    }
    Ok(())
}
