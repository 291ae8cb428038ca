//! The MQTT/SenML device gateway (binary `mqtt-gateway`): subscribes to a
//! broker, turns each device message into hub events, submits them over
//! gRPC with the vendor's certificate and acknowledges the message to the
//! broker only after the hub's receipt.
//!
//! Why it exists: bed and door sensors, dispensers and home-monitoring hubs
//! speak MQTT, not the hub's gRPC. Map of the module:
//! - [`topic`]: the topic scheme (municipality, vendor, device; never a person).
//! - [`senml`]: SenML readings → measurement kinds and UCUM (tables as data).
//! - [`payload`]: a message → events, deterministic event ids.
//! - [`registry`]: device → patient and municipality (TOML file).
//! - [`wire`]: the only place that knows the proto types.
//! - [`hub`]: the stream to the hub and what its answers mean.
//! - [`gateway`]: the MQTT loop, manual acks, dead letters, backoff.
//! - [`sim`]: simulated devices publishing SenML, alarms and notes.
//!
//! The topic scheme and payloads are documented in `adapters/mqtt-payloads.md`.

pub mod gateway;
pub mod hub;
pub mod payload;
pub mod registry;
pub mod senml;
pub mod sim;
pub mod topic;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::conn::Conn;
pub use gateway::run;
pub use registry::Registry;
pub use topic::Scheme;

/// Default topic prefix: `knutepunkt/v1/{orgnr}/{vendor}/{device}/{kind}`.
pub const DEFAULT_PREFIX: &str = "knutepunkt/v1";
/// Default dead-letter prefix.
pub const DEFAULT_DEAD_LETTER_PREFIX: &str = "knutepunkt/dead-letter/v1";
/// The largest message the gateway takes (the hub's default event limit).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("broker address {0:?}: expected HOST:PORT such as 127.0.0.1:1883")]
    BrokerAddress(String),
}

/// Everything the gateway needs; the binary builds it from flags.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `host:port` of the MQTT broker.
    pub broker: String,
    /// The fixed client id of the persistent session. One per gateway:
    /// two gateways with one id take the session from each other.
    pub client_id: String,
    /// MQTT user name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// CA certificate (PEM) for MQTT over TLS; plain TCP when `None`.
    pub broker_ca: Option<Vec<u8>>,
    pub scheme: Scheme,
    pub registry: Registry,
    /// `host:port` of the hub's gRPC listener.
    pub hub: String,
    pub conn: Conn,
    /// Messages being worked on at once (the broker's window is usually smaller).
    pub max_in_flight: usize,
    pub keep_alive: Duration,
    /// On a clean stop, remove the broker session (demos and tests only:
    /// messages not yet acknowledged are then lost).
    pub forget_session_on_exit: bool,
}

impl GatewayConfig {
    fn mqtt_options(&self) -> Result<rumqttc::MqttOptions, GatewayError> {
        let (host, port) = split_host_port(&self.broker)?;
        let mut o = rumqttc::MqttOptions::new(&self.client_id, host, port);
        o.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(self.keep_alive)
            .set_max_packet_size(MAX_MESSAGE_BYTES + 1024, 4 * MAX_MESSAGE_BYTES);
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u, p);
        }
        if let Some(ca) = &self.broker_ca {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Simple {
                    ca: ca.clone(),
                    alpn: None,
                    client_auth: None,
                },
            ));
        }
        Ok(o)
    }
}

/// `host:port` → parts (IPv6 in brackets).
pub fn split_host_port(s: &str) -> Result<(String, u16), GatewayError> {
    let bad = || GatewayError::BrokerAddress(s.to_string());
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// What the gateway did, for progress lines, tests and the benchmark.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages received from the broker (redeliveries count again).
    pub received: AtomicU64,
    /// Events the hub stored for the first time.
    pub accepted: AtomicU64,
    /// Events the hub had already stored.
    pub duplicate: AtomicU64,
    /// Messages published to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Messages acknowledged to the broker.
    pub acked: AtomicU64,
    /// Events waiting for the hub right now.
    pub waiting: AtomicU64,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
