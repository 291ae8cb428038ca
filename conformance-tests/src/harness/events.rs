//! Builders for valid events; tests change one field to break a rule.
use super::pb;
use knutepunkt::domain::synthetic;

pub const OSLO: &str = "958935420";
pub const BERGEN: &str = "964338531";

pub fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: 0,
    }
}

/// The device time every builder uses: the first call's `now()`, fixed
/// for the test process. A resend built a second later must be the same
/// event, or the hub rightly calls it a conflict (CI failed once on that).
pub fn device_time() -> prost_types::Timestamp {
    static AT: std::sync::OnceLock<prost_types::Timestamp> = std::sync::OnceLock::new();
    *AT.get_or_init(now)
}

fn base(event_id: &str, org: &str, resident: u32, payload: pb::event::Payload) -> pb::Event {
    pb::Event {
        event_id: event_id.into(),
        municipality: org.into(),
        patient: Some(pb::PersonId {
            system: pb::IdSystem::Fnr as i32,
            value: synthetic::fnr(resident),
        }),
        device: Some(pb::Device {
            id: format!("dev-{resident}"),
            kind: "sensor".into(),
        }),
        occurred_at: Some(device_time()),
        payload: Some(payload),
    }
}

pub fn quantity(
    event_id: &str,
    org: &str,
    resident: u32,
    kind: pb::MeasurementKind,
    value: f64,
    unit: &str,
) -> pb::Event {
    base(
        event_id,
        org,
        resident,
        pb::event::Payload::Measurement(pb::Measurement {
            kind: kind as i32,
            reading: Some(pb::measurement::Reading::Quantity(pb::Quantity {
                value,
                unit: unit.into(),
            })),
        }),
    )
}

pub fn heart_rate(event_id: &str, org: &str, resident: u32) -> pb::Event {
    quantity(
        event_id,
        org,
        resident,
        pb::MeasurementKind::HeartRate,
        72.0,
        "/min",
    )
}

pub fn blood_pressure(event_id: &str, org: &str, resident: u32, sys: f64, dia: f64) -> pb::Event {
    base(
        event_id,
        org,
        resident,
        pb::event::Payload::Measurement(pb::Measurement {
            kind: pb::MeasurementKind::BloodPressure as i32,
            reading: Some(pb::measurement::Reading::BloodPressure(pb::BloodPressure {
                systolic: sys,
                diastolic: dia,
            })),
        }),
    )
}

pub fn alarm(
    event_id: &str,
    org: &str,
    resident: u32,
    code: &str,
    severity: pb::Severity,
) -> pb::Event {
    base(
        event_id,
        org,
        resident,
        pb::event::Payload::Alarm(pb::Alarm {
            code: code.into(),
            severity: severity as i32,
            text: "Beboer registrert utenfor seng".into(),
            zone: "soverom".into(),
        }),
    )
}

pub fn note(event_id: &str, org: &str, resident: u32, in_response_to: &str) -> pb::Event {
    base(
        event_id,
        org,
        resident,
        pb::event::Payload::Note(pb::Note {
            text: "Tilsyn utført, beboer hjulpet tilbake i seng".into(),
            in_response_to: in_response_to.into(),
        }),
    )
}
