//! The events the conformance scenario sends: one builder per payload kind,
//! synthetic national ids only, and event ids unique per run so a second
//! run against the same hub starts fresh.

use knutepunkt::domain::synthetic;
use knutepunkt::proto::v1 as pb;

/// Builds the events of one run.
#[derive(Debug, Clone)]
pub struct EventKit {
    /// Prefix of every event_id of this run, e.g. `kp-conf-1764580000123`.
    pub run: String,
    pub municipality: String,
    /// Which synthetic person (`synthetic::fnr(n)`) the events are about.
    pub person: u32,
}

/// Every measurement kind with a plausible reading, as a device sends it.
pub const MEASUREMENTS: &[(pb::MeasurementKind, &str, f64, &str)] = &[
    (
        pb::MeasurementKind::BloodPressure,
        "blood_pressure",
        0.0,
        "mm[Hg]",
    ),
    (pb::MeasurementKind::HeartRate, "heart_rate", 72.0, "/min"),
    (
        pb::MeasurementKind::OxygenSaturation,
        "oxygen_saturation",
        97.0,
        "%",
    ),
    (pb::MeasurementKind::BodyWeight, "body_weight", 71.5, "kg"),
    (
        pb::MeasurementKind::BodyTemperature,
        "body_temperature",
        36.8,
        "Cel",
    ),
    (
        pb::MeasurementKind::RespiratoryRate,
        "respiratory_rate",
        16.0,
        "/min",
    ),
    (
        pb::MeasurementKind::BloodGlucose,
        "blood_glucose",
        6.1,
        "mmol/L",
    ),
];

impl EventKit {
    pub fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.run)
    }

    fn base(&self, name: &str, payload: pb::event::Payload) -> pb::Event {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        pb::Event {
            event_id: self.id(name),
            municipality: self.municipality.clone(),
            patient: Some(pb::PersonId {
                system: pb::IdSystem::Fnr as i32,
                value: synthetic::fnr(self.person),
            }),
            device: Some(pb::Device {
                id: "conformance-device-1".into(),
                kind: "conformance-kit".into(),
            }),
            occurred_at: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: 0,
            }),
            payload: Some(payload),
        }
    }

    /// A measurement of `kind` (see [`MEASUREMENTS`]) with `value` in `unit`.
    pub fn measurement(
        &self,
        name: &str,
        kind: pb::MeasurementKind,
        value: f64,
        unit: &str,
    ) -> pb::Event {
        use pb::measurement::Reading;
        let reading = if kind == pb::MeasurementKind::BloodPressure {
            Reading::BloodPressure(pb::BloodPressure {
                systolic: 130.0,
                diastolic: 80.0,
            })
        } else {
            Reading::Quantity(pb::Quantity {
                value,
                unit: unit.into(),
            })
        };
        self.base(
            name,
            pb::event::Payload::Measurement(pb::Measurement {
                kind: kind as i32,
                reading: Some(reading),
            }),
        )
    }

    pub fn heart_rate(&self, name: &str, bpm: f64) -> pb::Event {
        self.measurement(name, pb::MeasurementKind::HeartRate, bpm, "/min")
    }

    pub fn alarm(&self, name: &str, code: &str, severity: pb::Severity) -> pb::Event {
        self.base(
            name,
            pb::event::Payload::Alarm(pb::Alarm {
                code: code.into(),
                severity: severity as i32,
                text: "conformance kit alarm".into(),
                zone: "bedroom".into(),
            }),
        )
    }

    /// A note; `answers` is the event_id of the alarm it answers, if any.
    pub fn note(&self, name: &str, answers: Option<&str>) -> pb::Event {
        self.base(
            name,
            pb::event::Payload::Note(pb::Note {
                text: "Visited the resident; all well.".into(),
                in_response_to: answers.unwrap_or_default().into(),
            }),
        )
    }
}
