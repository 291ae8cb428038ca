//! The gateway's only contact with the generated proto types: a
//! [`Submission`] becomes the wire event, a wire receipt becomes an
//! [`Answer`], and the stream is opened here.
//!
//! Why it exists: the vendor contract's message and enum names may change
//! (buf's naming rules), and the gateway should need one small edit then,
//! in one file.

use knutepunkt::domain::IdSystem;
use knutepunkt::proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::payload::{Payload, Severity, Submission};
use super::senml::Kind;

/// The message the gateway sends on the stream.
pub type WireEvent = pb::Event;

/// What the hub answered for one event, in the gateway's own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub event_id: String,
    pub status: AnswerStatus,
    /// `Observation/<id>` or `Communication/<id>` when stored.
    pub resource: String,
    pub error: String,
    pub error_code: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerStatus {
    Accepted,
    Duplicate,
    Rejected,
    /// A status this gateway does not know (a newer hub).
    Unknown,
}

/// Opens `SubmitStream` on `channel`; events sent into the returned sender
/// go out on the stream, receipts come back on the returned stream.
pub async fn open_stream(
    channel: Channel,
    capacity: usize,
) -> Result<
    (
        mpsc::Sender<WireEvent>,
        knutepunkt::proto::client::ReceiptStream,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(capacity);
    let mut client = knutepunkt::proto::client::EventClient::new(channel);
    let receipts = client
        .submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, receipts))
}

/// Reads the next receipt of a stream (`None` when the hub closed it).
pub async fn next_answer(
    receipts: &mut knutepunkt::proto::client::ReceiptStream,
) -> Result<Option<Answer>, tonic::Status> {
    use tokio_stream::StreamExt;
    Ok(receipts.next().await.transpose()?.map(|r| Answer {
        status: match pb::ReceiptStatus::try_from(r.status) {
            Ok(pb::ReceiptStatus::Accepted) => AnswerStatus::Accepted,
            Ok(pb::ReceiptStatus::Duplicate) => AnswerStatus::Duplicate,
            Ok(pb::ReceiptStatus::Rejected) => AnswerStatus::Rejected,
            _ => AnswerStatus::Unknown,
        },
        event_id: r.event_id,
        resource: r.resource,
        error: r.error,
        error_code: r.error_code,
    }))
}

/// The wire event for a submission.
pub fn to_wire(s: &Submission) -> WireEvent {
    let secs = s.occurred_at.floor();
    let nanos = ((s.occurred_at - secs) * 1e9)
        .round()
        .clamp(0.0, 999_999_999.0) as i32;
    let system = match s.patient.system() {
        IdSystem::Fnr => pb::IdSystem::Fnr,
        IdSystem::Dnr => pb::IdSystem::Dnr,
        IdSystem::Fhn => pb::IdSystem::Fhn,
    };
    let payload = match &s.payload {
        Payload::Quantity { kind, value, unit } => {
            pb::event::Payload::Measurement(pb::Measurement {
                kind: measurement_kind(*kind) as i32,
                reading: Some(pb::measurement::Reading::Quantity(pb::Quantity {
                    value: *value,
                    unit: unit.clone(),
                })),
            })
        }
        Payload::BloodPressure {
            systolic,
            diastolic,
        } => pb::event::Payload::Measurement(pb::Measurement {
            kind: pb::MeasurementKind::BloodPressure as i32,
            reading: Some(pb::measurement::Reading::BloodPressure(pb::BloodPressure {
                systolic: *systolic,
                diastolic: *diastolic,
            })),
        }),
        Payload::Alarm {
            code,
            severity,
            text,
            zone,
        } => pb::event::Payload::Alarm(pb::Alarm {
            code: code.clone(),
            severity: match severity {
                Severity::NotReported => pb::Severity::Unspecified,
                Severity::Green => pb::Severity::Green,
                Severity::Yellow => pb::Severity::Yellow,
                Severity::Red => pb::Severity::Red,
            } as i32,
            text: text.clone(),
            zone: zone.clone(),
        }),
        Payload::Note {
            text,
            in_response_to,
        } => pb::event::Payload::Note(pb::Note {
            text: text.clone(),
            in_response_to: in_response_to.clone(),
        }),
    };
    pb::Event {
        event_id: s.event_id.clone(),
        municipality: s.municipality.clone(),
        patient: Some(pb::PersonId {
            system: system as i32,
            value: s.patient.value().to_string(),
        }),
        device: Some(pb::Device {
            id: s.device_id.clone(),
            kind: s.device_kind.clone(),
        }),
        occurred_at: Some(prost_types::Timestamp {
            seconds: secs as i64,
            nanos,
        }),
        payload: Some(payload),
    }
}

fn measurement_kind(k: Kind) -> pb::MeasurementKind {
    match k {
        Kind::HeartRate => pb::MeasurementKind::HeartRate,
        Kind::OxygenSaturation => pb::MeasurementKind::OxygenSaturation,
        Kind::BodyWeight => pb::MeasurementKind::BodyWeight,
        Kind::BodyTemperature => pb::MeasurementKind::BodyTemperature,
        Kind::RespiratoryRate => pb::MeasurementKind::RespiratoryRate,
        Kind::BloodGlucose => pb::MeasurementKind::BloodGlucose,
        // Halves are joined before they get here; a lone half is refused.
        Kind::Systolic | Kind::Diastolic => pb::MeasurementKind::BloodPressure,
    }
}
