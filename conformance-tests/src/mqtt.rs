//! Drives the real `mqtt-gateway` binary against the real Mosquitto on
//! 127.0.0.1:1883 and a real hub: starts and `kill -9`s the gateway, and
//! gives tests an independent MQTT client (rumqttc, not the gateway's code)
//! to publish device messages and read dead letters.
//!
//! Each [`Gateway`] gets its own topic prefix and client id, so parallel
//! tests never see each other's messages, and it removes its persistent
//! broker session when dropped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::harness::{Hub, binary, certs};

/// The broker every machine of this project runs.
pub const BROKER: &str = "127.0.0.1:1883";

/// `true` when the broker answers. Without it a test prints that it
/// skipped itself, except under `CI=true`, where a missing broker fails.
pub fn broker_available(test: &str) -> bool {
    let up = TcpStream::connect_timeout(
        &BROKER.parse().unwrap_or_else(|e| panic!("{e}")),
        Duration::from_secs(1),
    )
    .is_ok();
    if !up {
        crate::harness::skip(
            test,
            &format!("no MQTT broker at {BROKER} (start mosquitto to run it)"),
        );
    }
    up
}

/// A unique name for this test run: topic prefixes and client ids.
pub fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("kp-test-{test}-{}-{nanos}", std::process::id())
}

/// A running `mqtt-gateway run`, submitting as `demo-vendor`.
pub struct Gateway {
    child: Option<Child>,
    pub prefix: String,
    pub dead_letter_prefix: String,
    pub client_id: String,
    registry: PathBuf,
    grpc: String,
    log: PathBuf,
    /// More `mqtt-gateway run` flags, on every (re)start.
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Writes `registry` (TOML), starts the gateway against `hub` and waits
    /// until its subscription is confirmed (before that, a first-time
    /// gateway has no session that could keep messages).
    pub async fn start(test: &str, hub: &Hub, registry: &str) -> Result<Gateway> {
        Gateway::start_with(test, hub, registry, &[]).await
    }

    /// [`Gateway::start`] with more `mqtt-gateway run` flags.
    pub async fn start_with(
        test: &str,
        hub: &Hub,
        registry: &str,
        extra: &[&str],
    ) -> Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let name = unique(test);
        let path = dir.path().join("devices.toml");
        std::fs::write(&path, registry)?;
        let mut g = Gateway {
            child: None,
            prefix: format!("{name}/knutepunkt/v1"),
            dead_letter_prefix: format!("{name}/dead-letter"),
            client_id: format!("{name}-gw"),
            registry: path,
            grpc: hub.grpc.to_string(),
            log: dir.path().join("gateway.log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        g.spawn()?;
        g.wait_log("subscribed", 1, Duration::from_secs(30)).await?;
        Ok(g)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary("mqtt-gateway")?)
            .arg("run")
            .args(["--broker", BROKER, "--grpc", &self.grpc])
            .arg("--registry")
            .arg(&self.registry)
            .arg("--certs")
            .arg(certs()?)
            .args(["--vendor", "demo-vendor"])
            .args(["--topic-prefix", &self.prefix])
            .args(["--dead-letter-prefix", &self.dead_letter_prefix])
            .args(["--client-id", &self.client_id])
            .args(&self.extra)
            .env("RUST_LOG", "info,knutepunkt_adapters=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start mqtt-gateway")?;
        self.child = Some(child);
        Ok(())
    }

    /// The topic a device publishes `kind` on (vendor `demo-vendor`).
    pub fn topic(&self, orgnr: &str, device: &str, kind: &str) -> String {
        format!("{}/{orgnr}/demo-vendor/{device}/{kind}", self.prefix)
    }

    /// Unwraps a test step's result; on error panics with the gateway's log.
    pub fn ok<T>(&self, r: Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("{e:#}\n--- mqtt-gateway log ---\n{}", self.logs()))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `n` lines containing `needle`; an exit of
    /// the process is an error with its log.
    pub async fn wait_log(&mut self, needle: &str, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().matches(needle).count() >= n {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("mqtt-gateway exited ({status}); log:\n{}", self.logs());
            }
            if Instant::now() > deadline {
                bail!(
                    "no {n}× {needle:?} in the gateway log after {timeout:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: nothing acknowledged, nothing cleaned up.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Starts the gateway again with the same client id (same session).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Remove the persistent session this test left in the broker.
        let id = self.client_id.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(c) = Client::connect(&id, true).await {
                        c.disconnect().await;
                    }
                });
            }
        })
        .join();
    }
}

/// A registry line for `device` of a synthetic resident in `orgnr`.
pub fn device(id: &str, kind: &str, orgnr: &str, fnr: &str) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\nkind = \"{kind}\"\nmunicipality = \"{orgnr}\"\npatient_system = \"fnr\"\npatient_id = \"{fnr}\"\n\n"
    )
}

/// An independent MQTT client for a test: publishes with QoS 1 and hands
/// over what arrives on its subscriptions.
pub struct Client {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    acks: mpsc::UnboundedReceiver<()>,
}

impl Client {
    /// Connects as `id`; `clean` = clean session.
    pub async fn connect(id: &str, clean: bool) -> Result<Client> {
        let (host, port) = BROKER.split_once(':').context("broker address")?;
        let mut o = MqttOptions::new(id, host, port.parse::<u16>()?);
        o.set_clean_session(clean)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(o, 256);
        let (tx, incoming) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::SubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(Err(e.to_string()));
                        }
                        break;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(5), ready).await {
            Ok(Ok(Ok(()))) => Ok(Client {
                client,
                incoming,
                acks,
            }),
            Ok(Ok(Err(e))) => bail!("connecting to {BROKER}: {e}"),
            _ => bail!("no CONNACK from {BROKER} within 5 s"),
        }
    }

    async fn wait_ack(&mut self) -> Result<()> {
        match tokio::time::timeout(Duration::from_secs(5), self.acks.recv()).await {
            Ok(Some(())) => Ok(()),
            _ => bail!("the broker did not acknowledge within 5 s"),
        }
    }

    /// Subscribes with QoS 1 and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) -> Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        self.wait_ack().await
    }

    /// Publishes with QoS 1 and waits for the broker's PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await?;
        self.wait_ack().await
    }

    /// The next message from a subscription, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<(String, serde_json::Value)> {
        match tokio::time::timeout(timeout, self.incoming.recv()).await {
            Ok(Some((t, p))) => Ok((
                t,
                serde_json::from_slice(&p).context("a dead letter that is not JSON")?,
            )),
            _ => bail!("no message within {timeout:?}"),
        }
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a FHIR search at `url` returns at least `n` resources.
pub async fn wait_resources(
    url: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<serde_json::Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = crate::harness::search_all(url).await?;
        if got.len() >= n {
            return Ok(got);
        }
        if Instant::now() > deadline {
            bail!("{} of {n} resources at {url} after {timeout:?}", got.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
