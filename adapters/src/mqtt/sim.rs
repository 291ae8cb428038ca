//! Simulated devices: SenML readings, alarms and notes published to the
//! broker the way a sensor platform would, for `mqtt-gateway simulate`, the
//! demo and the benchmark.
//!
//! Why it exists: a device integrator (and the demo) should see the whole
//! path from a topic to a FHIR resource without hardware. Values cycle
//! deterministically through plausible readings; no randomness is needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use super::topic::{MessageKind, Scheme};
use super::{GatewayError, split_host_port};

/// A QoS 1 publisher that knows how many of its messages the broker has
/// acknowledged.
pub struct Publisher {
    client: AsyncClient,
    published: u64,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Connects with a clean session as `client_id`.
    pub async fn connect(broker: &str, client_id: &str) -> Result<Publisher, GatewayError> {
        let (host, port) = split_host_port(broker)?;
        let mut o = MqttOptions::new(client_id, host, port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(super::MAX_MESSAGE_BYTES * 4, super::MAX_MESSAGE_BYTES * 4)
            .set_inflight(1000);
        let (client, mut events) = AsyncClient::new(o, 1024);
        // Wait for the ConnAck so a missing broker is an error, not a hang.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(GatewayError::Mqtt(format!("connecting to {broker}: {e}")));
                }
                Err(_) => {
                    return Err(GatewayError::Mqtt(format!(
                        "no answer from the broker at {broker} within 5 s"
                    )));
                }
            }
        }
        let acked = Arc::new(AtomicU64::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "publisher connection ended");
                        break;
                    }
                }
            }
        });
        Ok(Publisher {
            client,
            published: 0,
            acked,
            task,
        })
    }

    /// Publishes with QoS 1 (returns when queued, not when acknowledged).
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), GatewayError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| GatewayError::Mqtt(e.to_string()))?;
        self.published += 1;
        Ok(())
    }

    pub fn published(&self) -> u64 {
        self.published
    }

    /// Messages the broker has acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until the broker acknowledged everything published (or
    /// `timeout`), then disconnects. Returns how many were acknowledged.
    pub async fn finish(self, timeout: Duration) -> u64 {
        let until = Instant::now() + timeout;
        while self.acked() < self.published && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = self.acked();
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
        n
    }
}

/// Seconds since the epoch, with milliseconds.
pub fn now_secs() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

/// The `i`-th simulated message for a device: mostly readings, and in every
/// seven an alarm (the third) and a note answering it (the fourth). `run` makes alarm ids unique
/// per simulator run. (topic kind, payload, a line for people).
pub fn message(i: u64, t: f64, run: u64) -> (MessageKind, serde_json::Value, String) {
    let w = (i % 5) as f64;
    match i % 7 {
        0 => (
            MessageKind::Measurement,
            json!([
                {"bt": t, "bu": "mmHg", "n": "systolic", "v": 128.0 + 4.0 * w},
                {"n": "diastolic", "v": 78.0 + 2.0 * w},
                {"n": "pulse", "u": "beat/min", "v": 64.0 + w}
            ]),
            format!(
                "SenML blood pressure {}/{} mmHg, pulse {}",
                128.0 + 4.0 * w,
                78.0 + 2.0 * w,
                64.0 + w
            ),
        ),
        1 | 6 => (
            MessageKind::Measurement,
            json!([{"bt": t, "n": "spo2", "u": "%", "v": 95.0 + (w % 4.0)}]),
            format!("SenML spo2 {} %", 95.0 + (w % 4.0)),
        ),
        4 => (
            MessageKind::Measurement,
            json!([{"bt": t, "n": "body-temperature", "u": "Cel", "v": 36.5 + w / 10.0}]),
            format!("SenML body-temperature {:.1} Cel", 36.5 + w / 10.0),
        ),
        5 => (
            MessageKind::Measurement,
            json!([{"bt": t, "n": "body-weight", "u": "kg", "v": 71.0 + w / 2.0}]),
            format!("SenML body-weight {} kg", 71.0 + w / 2.0),
        ),
        2 => (
            MessageKind::Alarm,
            json!({"t": t, "id": format!("alarm-{run}-{i}"), "code": "4.2", "severity": "yellow",
                   "text": "Beboer har forlatt sengen", "zone": "soverom"}),
            "alarm 4.2 left the bed (yellow)".to_string(),
        ),
        _ => (
            // 3: answers the alarm just before it.
            MessageKind::Note,
            json!({"t": t, "text": "Tilsyn utført, beboer tilbake i seng",
                   "answers": {"id": format!("alarm-{run}-{}", i - 1)}}),
            "note answering the alarm before it".to_string(),
        ),
    }
}

/// Publishes simulated messages for `devices` (orgnr, device id) at `rate`
/// per second for `duration`; calls `each` with (topic, line) per message.
pub async fn run(
    publisher: &mut Publisher,
    scheme: &Scheme,
    devices: &[(String, String)],
    rate: f64,
    duration: Duration,
    mut each: impl FnMut(&str, &str),
) -> Result<u64, GatewayError> {
    if devices.is_empty() {
        return Err(GatewayError::Mqtt("no devices to simulate".into()));
    }
    let rate = if rate.is_finite() && rate > 0.0 {
        rate.min(10_000.0)
    } else {
        1.0
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let until = Instant::now() + duration;
    let mut per_device = vec![0u64; devices.len()];
    let run = now_secs() as u64;
    let mut n = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        let d = (n as usize) % devices.len();
        let (org, dev) = &devices[d];
        let (kind, body, line) = message(per_device[d], now_secs(), run);
        per_device[d] += 1;
        let topic = scheme.device_topic(org, dev, kind);
        publisher
            .publish(&topic, body.to_string().into_bytes())
            .await?;
        each(&topic, &line);
        n += 1;
    }
    Ok(n)
}
