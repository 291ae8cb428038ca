//! `vendor-sim bench-mqtt`: the MQTT gateway's end-to-end rate (publish →
//! broker → gateway → hub receipt → MQTT ack) beside the broker's own
//! publish-and-deliver rate, measured in the same run on the same broker.
//!
//! Why it exists: the gateway adds a hub round trip and an ack per
//! message; the number that matters is how much of the broker's own rate
//! survives that. The hub runs as in production (TLS, vendor mutual TLS) on
//! a fresh temporary store; the gateway runs in this process (the library,
//! not a copy) so its ack counter can be read without a side channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use knutepunkt::domain::synthetic;
use knutepunkt::sim::OSLO;
use knutepunkt_adapters::conn::ConnArgs;
use knutepunkt_adapters::mqtt::sim::Publisher;
use knutepunkt_adapters::mqtt::{self, GatewayConfig, Registry, Scheme, Stats};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::hubenv;

#[derive(Args, Debug)]
pub struct MqttBenchArgs {
    /// The hub binary; default: `knutepunkt` next to this executable.
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Where the hub's temporary store goes; default: the system temp directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The MQTT broker (loopback), HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Messages per phase (one SenML reading each).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=5_000_000))]
    messages: u64,
    /// Simulated devices (one topic each; the gateway works on topics in parallel).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    devices: u32,
    /// Messages published but not yet delivered/acked, at most (Mosquitto
    /// drops QoS 1 messages past its per-client queue, 1000 by default).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    window: u64,
}

pub async fn run(a: MqttBenchArgs) -> Result<()> {
    let (host, _) = mqtt::split_host_port(&a.broker)?;
    if !host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
    {
        bail!("--broker must be a loopback address; this bench only talks to this machine");
    }
    let bin = hubenv::sibling_bin(a.hub_bin.clone(), "knutepunkt")?;
    let parent = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("knutepunkt-mqtt-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let certs = work.path().join("certs");
    hubenv::make_certs(&bin, &certs).await?;
    let run_id = format!(
        "kp-bench-{}-{}",
        std::process::id(),
        mqtt::sim::now_secs() as u64
    );

    // 1. The broker alone: publish → deliver to a QoS 1 subscriber.
    eprintln!("bench-mqtt: broker alone, {} messages", a.messages);
    let broker_rate = broker_only(&a, &run_id).await?;

    // 2. End to end through the gateway into a real hub.
    let hub = hubenv::HubProcess::start(&bin, work.path(), &certs, None).await?;
    eprintln!(
        "bench-mqtt: end to end through the gateway, {} messages",
        a.messages
    );
    let e2e = end_to_end(&a, &run_id, &hub).await;
    let log = hub.stop().await;
    let (e2e_rate, stats) = e2e?;
    log?;

    println!("| measure | messages/s |");
    println!("|---|---|");
    println!("| broker alone: publish → QoS 1 subscriber | {broker_rate:.0} |");
    println!("| end to end: publish → gateway → hub receipt → MQTT ack | {e2e_rate:.0} |");
    println!(
        "| ratio end to end / broker | {:.2} |",
        e2e_rate / broker_rate.max(f64::MIN_POSITIVE)
    );
    println!(
        "\n{} messages, {} devices, window {}; hub accepted {}, duplicate {}, dead letters {}",
        a.messages,
        a.devices,
        a.window,
        Stats::get(&stats.accepted),
        Stats::get(&stats.duplicate),
        Stats::get(&stats.dead_lettered)
    );
    Ok(())
}

/// One SenML heart rate, a distinct time per message.
fn reading(i: u64, t0: f64) -> Vec<u8> {
    format!(
        r#"[{{"bt":{},"n":"heart-rate","u":"beat/min","v":{}}}]"#,
        t0 + i as f64 / 1000.0,
        60 + i % 40
    )
    .into_bytes()
}

async fn broker_only(a: &MqttBenchArgs, run_id: &str) -> Result<f64> {
    let (host, port) = mqtt::split_host_port(&a.broker)?;
    let mut o = MqttOptions::new(format!("{run_id}-sub"), host, port);
    o.set_keep_alive(Duration::from_secs(30));
    let (sub, mut events) = AsyncClient::new(o, 64);
    let filter = format!("{run_id}/broker/#");
    sub.subscribe(&filter, QoS::AtLeastOnce).await?;
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (count, subscribed) = (received.clone(), Arc::new(tokio::sync::Notify::new()));
    let ready = subscribed.clone();
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => ready.notify_one(),
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), subscribed.notified())
        .await
        .context("the broker did not confirm the subscription within 5 s")?;
    let mut publisher = Publisher::connect(&a.broker, &format!("{run_id}-pub1")).await?;
    let got = || received.load(std::sync::atomic::Ordering::Relaxed);
    let rate = publish_all(
        a,
        &mut publisher,
        |i| format!("{run_id}/broker/d{}", i % a.devices as u64),
        got,
        String::new,
    )
    .await?;
    publisher.finish(Duration::from_secs(5)).await;
    let _ = sub.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    Ok(rate)
}

async fn end_to_end(
    a: &MqttBenchArgs,
    run_id: &str,
    hub: &hubenv::HubProcess,
) -> Result<(f64, Arc<Stats>)> {
    let mut reg = String::new();
    for d in 0..a.devices {
        reg.push_str(&format!(
            "[[device]]\nid = \"d{d}\"\nmunicipality = \"{OSLO}\"\npatient_system = \"fnr\"\npatient_id = \"{}\"\n",
            synthetic::fnr(50_000 + d)
        ));
    }
    let registry = Registry::parse(&reg).map_err(anyhow::Error::msg)?;
    let scheme = Scheme::new(
        &format!("{run_id}/knutepunkt/v1"),
        &format!("{run_id}/dead-letter"),
        hubenv::VENDOR,
    )
    .map_err(anyhow::Error::msg)?;
    let conn: ConnArgs = hub.conn();
    let cfg = GatewayConfig {
        broker: a.broker.clone(),
        client_id: format!("{run_id}-gw"),
        credentials: None,
        broker_ca: None,
        scheme: scheme.clone(),
        registry,
        hub: hub.grpc.to_string(),
        conn: conn.resolve()?,
        max_in_flight: 256,
        keep_alive: Duration::from_secs(30),
        forget_session_on_exit: true,
    };
    let stats = Arc::new(Stats::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gw = tokio::spawn(mqtt::run(cfg, stats.clone(), async move {
        let _ = stopped.await;
    }));
    // The gateway subscribes on connect; give it that moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut publisher = Publisher::connect(&a.broker, &format!("{run_id}-pub2")).await?;
    let acked = || Stats::get(&stats.acked);
    let result = publish_all(
        a,
        &mut publisher,
        |i| {
            scheme.device_topic(
                OSLO,
                &format!("d{}", i % a.devices as u64),
                mqtt::topic::MessageKind::Measurement,
            )
        },
        acked,
        || {
            format!(
                "; gateway: received {}, accepted {}, duplicate {}, dead letters {}, waiting for the hub {}, acked {}",
                Stats::get(&stats.received),
                Stats::get(&stats.accepted),
                Stats::get(&stats.duplicate),
                Stats::get(&stats.dead_lettered),
                Stats::get(&stats.waiting),
                Stats::get(&stats.acked)
            )
        },
    )
    .await;
    publisher.finish(Duration::from_secs(5)).await;
    let _ = stop.send(());
    gw.await.context("gateway task")??;
    Ok((result?, stats))
}

/// Publishes `a.messages` readings with at most `a.window` not yet
/// `done()`, and returns messages/s from the first publish to the last
/// `done()`. Progress on stderr once a second, also while it waits, with
/// `status()` (the gateway's counters) so a stall shows where it stands.
async fn publish_all(
    a: &MqttBenchArgs,
    publisher: &mut Publisher,
    topic: impl Fn(u64) -> String,
    done: impl Fn() -> u64,
    status: impl Fn() -> String,
) -> Result<f64> {
    let t0 = mqtt::sim::now_secs() - 3600.0;
    let start = Instant::now();
    let mut last_report = Instant::now();
    let deadline = start + Duration::from_secs(600);
    let acked_by_broker = std::sync::atomic::AtomicU64::new(0);
    let publisher_acked = || acked_by_broker.load(std::sync::atomic::Ordering::Relaxed);
    let mut report = |published: u64| {
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "  {published} published, {} acked by the broker, {} done{}",
                publisher_acked(),
                done(),
                status()
            );
            last_report = Instant::now();
        }
    };
    for i in 0..a.messages {
        while i.saturating_sub(done()) >= a.window {
            if Instant::now() > deadline {
                bail!(
                    "stalled: {} of {i} published messages done after 600 s{}",
                    done(),
                    status()
                );
            }
            acked_by_broker.store(publisher.acked(), std::sync::atomic::Ordering::Relaxed);
            report(i);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        publisher.publish(&topic(i), reading(i, t0)).await?;
        acked_by_broker.store(publisher.acked(), std::sync::atomic::Ordering::Relaxed);
        report(i + 1);
    }
    while done() < a.messages {
        if Instant::now() > deadline {
            bail!(
                "stalled: {} of {} messages done after 600 s{}",
                done(),
                a.messages,
                status()
            );
        }
        acked_by_broker.store(publisher.acked(), std::sync::atomic::Ordering::Relaxed);
        report(a.messages);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(a.messages as f64 / start.elapsed().as_secs_f64())
}
