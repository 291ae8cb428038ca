//! The gateway's only contact with the hub's gRPC contract: domain event →
//! proto, one `Submit` per event over the platform's vendor mTLS channel,
//! and the answer → a [`Verdict`]. Kept small and alone so a change of the
//! proto's names is an edit of this file only.

use std::path::Path;
use std::time::Duration;

use knutepunkt::domain::{Event, IdSystem, Measurement, MeasurementKind, Payload};
use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long one submission may take before it counts as unavailable.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The hub's answer to one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Stored now; the hub's resource reference, e.g. `Observation/<uuid>`.
    Accepted(String),
    /// Stored before with the same content; the original resource.
    Duplicate(String),
    /// Refused for good (a 4xx): do not resend unchanged.
    Rejected {
        /// HTTP status for the platform.
        http: u16,
        /// Stable code, e.g. `invalid_argument`, `conflict`, `not_permitted`.
        code: &'static str,
        /// The hub's field name (`measurement.quantity.unit`), when it gave one.
        field: Option<String>,
        /// The hub's message (it never carries a national id).
        message: String,
    },
    /// Not decided (hub down, overloaded, timed out): resending is safe.
    Unavailable(String),
}

/// Why no channel to the hub could be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot read {path}: {source}; check the hub settings of platform {platform}")]
    Read {
        platform: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("hub address {addr:?} is not usable: {detail}; give host:port")]
    Address { addr: String, detail: String },
}

/// A lazily connecting mTLS channel to the hub as one vendor system; it
/// reconnects by itself after the hub was down.
pub fn channel(
    platform: &str,
    hub_addr: &str,
    server_name: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Channel, ChannelError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| ChannelError::Read {
            platform: platform.to_string(),
            path: p.to_path_buf(),
            source,
        })
    };
    let tls = ClientTlsConfig::new()
        .domain_name(server_name)
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .identity(Identity::from_pem(read(cert)?, read(key)?));
    let bad = |detail: String| ChannelError::Address {
        addr: hub_addr.to_string(),
        detail,
    };
    let ep = Endpoint::from_shared(format!("https://{hub_addr}"))
        .map_err(|e| bad(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(SUBMIT_TIMEOUT)
        .tls_config(tls)
        .map_err(|e| bad(e.to_string()))?;
    Ok(ep.connect_lazy())
}

/// Submits one event and waits for the hub's verdict.
pub async fn submit(channel: Channel, ev: &Event) -> Verdict {
    let Some(event) = to_proto(ev) else {
        return Verdict::Rejected {
            http: 422,
            code: "not_supported",
            field: None,
            message: "only measurements are forwarded".into(),
        };
    };
    let mut client = EventClient::new(channel);
    match client.submit(event).await {
        Ok(r) => {
            let r = r.into_inner();
            match pb::ReceiptStatus::try_from(r.status) {
                Ok(pb::ReceiptStatus::Accepted) => Verdict::Accepted(r.resource),
                Ok(pb::ReceiptStatus::Duplicate) => Verdict::Duplicate(r.resource),
                _ => Verdict::Unavailable(format!(
                    "the hub answered with receipt status {}; retry later",
                    r.status
                )),
            }
        }
        Err(st) => from_status(&st),
    }
}

fn from_status(st: &tonic::Status) -> Verdict {
    use tonic::Code;
    let message = st.message().to_string();
    let field = message
        .split_once(": ")
        .map(|(f, _)| f)
        .filter(|f| {
            !f.is_empty()
                && f.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
        })
        .map(str::to_string);
    let rejected = |http, code| Verdict::Rejected {
        http,
        code,
        field: field.clone(),
        message: message.clone(),
    };
    match st.code() {
        Code::InvalidArgument => rejected(422, "invalid_argument"),
        Code::PermissionDenied => rejected(403, "not_permitted"),
        Code::AlreadyExists => rejected(409, "conflict"),
        Code::ResourceExhausted => Verdict::Unavailable(format!(
            "the hub is at a limit ({message}); retry later, a repeated POST is harmless"
        )),
        Code::Unauthenticated => rejected(502, "gateway_identity"),
        _ => Verdict::Unavailable(format!(
            "the hub did not answer ({}: {message}); retry later, a repeated POST is harmless",
            st.code()
        )),
    }
}

/// The proto form of a measurement event (the reverse of the hub's
/// ingest); `None` for alarms and notes, which the gateway never maps.
pub fn to_proto(ev: &Event) -> Option<pb::Event> {
    let system = match ev.patient.system() {
        IdSystem::Fnr => pb::IdSystem::Fnr,
        IdSystem::Dnr => pb::IdSystem::Dnr,
        IdSystem::Fhn => pb::IdSystem::Fhn,
    };
    let payload = match &ev.payload {
        Payload::Measurement(Measurement::BloodPressure {
            systolic,
            diastolic,
        }) => pb::event::Payload::Measurement(pb::Measurement {
            kind: pb::MeasurementKind::BloodPressure as i32,
            reading: Some(pb::measurement::Reading::BloodPressure(pb::BloodPressure {
                systolic: *systolic,
                diastolic: *diastolic,
            })),
        }),
        Payload::Measurement(Measurement::Quantity { kind, value, unit }) => {
            pb::event::Payload::Measurement(pb::Measurement {
                kind: kind_to_proto(*kind) as i32,
                reading: Some(pb::measurement::Reading::Quantity(pb::Quantity {
                    value: *value,
                    unit: unit.clone(),
                })),
            })
        }
        Payload::Alarm(_) | Payload::Note(_) => return None,
    };
    Some(pb::Event {
        event_id: ev.event_id.clone(),
        municipality: ev.municipality.to_string(),
        patient: Some(pb::PersonId {
            system: system as i32,
            value: ev.patient.value().to_string(),
        }),
        device: Some(pb::Device {
            id: ev.device.id.clone(),
            kind: ev.device.kind.clone(),
        }),
        occurred_at: Some(prost_types::Timestamp {
            seconds: ev.occurred_at.timestamp(),
            nanos: i32::try_from(ev.occurred_at.timestamp_subsec_nanos()).unwrap_or(0),
        }),
        payload: Some(payload),
    })
}

fn kind_to_proto(k: MeasurementKind) -> pb::MeasurementKind {
    match k {
        MeasurementKind::BloodPressure => pb::MeasurementKind::BloodPressure,
        MeasurementKind::HeartRate => pb::MeasurementKind::HeartRate,
        MeasurementKind::OxygenSaturation => pb::MeasurementKind::OxygenSaturation,
        MeasurementKind::BodyWeight => pb::MeasurementKind::BodyWeight,
        MeasurementKind::BodyTemperature => pb::MeasurementKind::BodyTemperature,
        MeasurementKind::RespiratoryRate => pb::MeasurementKind::RespiratoryRate,
        MeasurementKind::BloodGlucose => pb::MeasurementKind::BloodGlucose,
    }
}
