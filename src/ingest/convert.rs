//! Proto `Event` → domain [`Event`]: shape and identifiers checked, each
//! failure naming the proto field and what to send instead. Values are
//! checked later, against the code tables, by `normalize`.

use chrono::{DateTime, Duration, Utc};

use crate::domain::{
    Alarm, Device, Event, IdSystem, Invalid, Measurement, MeasurementKind, Note, Orgnr, Payload,
    PersonId, Severity, VendorId,
};
use crate::proto::v1 as pb;

/// Limits on the free-text fields, so one event stays a small record.
const MAX_ID: usize = 128;
const MAX_DEVICE_KIND: usize = 64;

/// Converts one proto event submitted by `vendor`. `now` is the hub's clock,
/// passed in so tests can pin it.
pub fn event(
    vendor: &VendorId,
    ev: pb::Event,
    now: DateTime<Utc>,
    max_future: Duration,
) -> Result<Event, Invalid> {
    let event_id = check_id("event_id", ev.event_id)?;
    let municipality =
        Orgnr::parse(&ev.municipality).map_err(|e| Invalid::new("municipality", e))?;
    let patient = patient(ev.patient)?;
    let device = device(ev.device)?;
    let occurred_at = occurred_at(ev.occurred_at, now, max_future)?;
    let payload = payload(ev.payload)?;
    Ok(Event {
        vendor: vendor.clone(),
        event_id,
        municipality,
        patient,
        device,
        occurred_at,
        payload,
    })
}

/// The patient: a known id system and a number valid in it.
fn patient(patient: Option<pb::PersonId>) -> Result<PersonId, Invalid> {
    let patient =
        patient.ok_or_else(|| Invalid::new("patient", "is required (system and value)"))?;
    let system = match pb::IdSystem::try_from(patient.system) {
        Ok(pb::IdSystem::Fnr) => IdSystem::Fnr,
        Ok(pb::IdSystem::Dnr) => IdSystem::Dnr,
        Ok(pb::IdSystem::Fhn) => IdSystem::Fhn,
        _ => {
            return Err(Invalid::new(
                "patient.system",
                "must be ID_SYSTEM_FNR, ID_SYSTEM_DNR or ID_SYSTEM_FHN",
            ));
        }
    };
    PersonId::parse(system, &patient.value).map_err(|e| Invalid::new("patient.value", e))
}

/// The device: an id, and a kind of at most `MAX_DEVICE_KIND` characters.
fn device(device: Option<pb::Device>) -> Result<Device, Invalid> {
    let device = device.ok_or_else(|| Invalid::new("device", "is required (id and kind)"))?;
    Ok(Device {
        id: check_id("device.id", device.id)?,
        kind: check_text("device.kind", device.kind, 0, MAX_DEVICE_KIND)?,
    })
}

/// The time on the device: a valid Timestamp, at most `max_future` ahead of
/// `now`.
fn occurred_at(
    ts: Option<prost_types::Timestamp>,
    now: DateTime<Utc>,
    max_future: Duration,
) -> Result<DateTime<Utc>, Invalid> {
    let ts =
        ts.ok_or_else(|| Invalid::new("occurred_at", "is required (the time on the device)"))?;
    // chrono takes nanos up to 2e9 (a leap second); a protobuf Timestamp
    // does not (0..=999,999,999), so check the range here, at the input.
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| {
            Invalid::new(
                "occurred_at",
                "nanos must be from 0 to 999,999,999 (a google.protobuf.Timestamp)",
            )
        })?;
    let occurred_at = DateTime::from_timestamp(ts.seconds, nanos)
        .ok_or_else(|| Invalid::new("occurred_at", "is not a valid timestamp"))?;
    if occurred_at > now + max_future {
        return Err(Invalid::new(
            "occurred_at",
            format!(
                "is {} s ahead of the hub's clock (at most {} s allowed); check the device clock",
                (occurred_at - now).num_seconds(),
                max_future.num_seconds()
            ),
        ));
    }
    Ok(occurred_at)
}

/// The payload: exactly one of measurement, alarm or note.
fn payload(payload: Option<pb::event::Payload>) -> Result<Payload, Invalid> {
    Ok(match payload {
        None => {
            return Err(Invalid::new(
                "payload",
                "is required: one of measurement, alarm or note",
            ));
        }
        Some(pb::event::Payload::Measurement(m)) => Payload::Measurement(measurement(m)?),
        Some(pb::event::Payload::Alarm(a)) => Payload::Alarm(alarm(a)?),
        Some(pb::event::Payload::Note(n)) => Payload::Note(Note {
            text: n.text,
            in_response_to: match n.in_response_to {
                s if s.is_empty() => None,
                s => Some(check_id("note.in_response_to", s)?),
            },
        }),
    })
}

fn measurement(m: pb::Measurement) -> Result<Measurement, Invalid> {
    use pb::measurement::Reading;
    let kind = match pb::MeasurementKind::try_from(m.kind) {
        Ok(pb::MeasurementKind::BloodPressure) => MeasurementKind::BloodPressure,
        Ok(pb::MeasurementKind::HeartRate) => MeasurementKind::HeartRate,
        Ok(pb::MeasurementKind::OxygenSaturation) => MeasurementKind::OxygenSaturation,
        Ok(pb::MeasurementKind::BodyWeight) => MeasurementKind::BodyWeight,
        Ok(pb::MeasurementKind::BodyTemperature) => MeasurementKind::BodyTemperature,
        Ok(pb::MeasurementKind::RespiratoryRate) => MeasurementKind::RespiratoryRate,
        Ok(pb::MeasurementKind::BloodGlucose) => MeasurementKind::BloodGlucose,
        _ => {
            return Err(Invalid::new(
                "measurement.kind",
                "is required: one of MEASUREMENT_KIND_BLOOD_PRESSURE, _HEART_RATE, _OXYGEN_SATURATION, _BODY_WEIGHT, _BODY_TEMPERATURE, _RESPIRATORY_RATE, _BLOOD_GLUCOSE",
            ));
        }
    };
    match (kind, m.reading) {
        (MeasurementKind::BloodPressure, Some(Reading::BloodPressure(bp))) => {
            Ok(Measurement::BloodPressure {
                systolic: bp.systolic,
                diastolic: bp.diastolic,
            })
        }
        (MeasurementKind::BloodPressure, _) => Err(Invalid::new(
            "measurement.blood_pressure",
            "is required for MEASUREMENT_KIND_BLOOD_PRESSURE (systolic and diastolic in mm[Hg])",
        )),
        (kind, Some(Reading::Quantity(q))) => Ok(Measurement::Quantity {
            kind,
            value: q.value,
            unit: q.unit,
        }),
        (_, _) => Err(Invalid::new(
            "measurement.quantity",
            "is required for every kind but MEASUREMENT_KIND_BLOOD_PRESSURE (value and UCUM unit)",
        )),
    }
}

fn alarm(a: pb::Alarm) -> Result<Alarm, Invalid> {
    let severity = match pb::Severity::try_from(a.severity) {
        // Proto3's zero value is VKP level 0, "not reported".
        Ok(pb::Severity::Unspecified) => Severity::NotReported,
        Ok(pb::Severity::Green) => Severity::Green,
        Ok(pb::Severity::Yellow) => Severity::Yellow,
        Ok(pb::Severity::Red) => Severity::Red,
        Err(_) => {
            return Err(Invalid::new(
                "alarm.severity",
                "must be SEVERITY_UNSPECIFIED (not reported), SEVERITY_GREEN, SEVERITY_YELLOW or SEVERITY_RED",
            ));
        }
    };
    if a.code.is_empty() {
        return Err(Invalid::new(
            "alarm.code",
            "is required: a code from the VKP alert list, e.g. \"4.1\" (fall)",
        ));
    }
    let opt = |s: String| (!s.is_empty()).then_some(s);
    Ok(Alarm {
        code: a.code,
        severity,
        text: opt(a.text),
        zone: opt(a.zone),
    })
}

/// Identifiers: 1-128 printable ASCII characters without spaces.
fn check_id(field: &'static str, s: String) -> Result<String, Invalid> {
    if s.is_empty() || s.len() > MAX_ID || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid::new(
            field,
            format!("must be 1-{MAX_ID} printable ASCII characters without spaces"),
        ));
    }
    Ok(s)
}

fn check_text(field: &'static str, s: String, min: usize, max: usize) -> Result<String, Invalid> {
    let n = s.chars().count();
    if n < min || n > max || s.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            format!("must be {min}-{max} characters without control characters"),
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::synthetic;

    fn base() -> pb::Event {
        pb::Event {
            event_id: "e-1".into(),
            municipality: "958935420".into(),
            patient: Some(pb::PersonId {
                system: pb::IdSystem::Fnr as i32,
                value: synthetic::fnr(1),
            }),
            device: Some(pb::Device {
                id: "dev-1".into(),
                kind: "bp-monitor".into(),
            }),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            payload: Some(pb::event::Payload::Measurement(pb::Measurement {
                kind: pb::MeasurementKind::BloodPressure as i32,
                reading: Some(pb::measurement::Reading::BloodPressure(pb::BloodPressure {
                    systolic: 130.0,
                    diastolic: 80.0,
                })),
            })),
        }
    }

    fn conv(ev: pb::Event) -> Result<Event, Invalid> {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        event(&VendorId("v".into()), ev, now, Duration::minutes(5))
    }

    fn field_of(ev: pb::Event) -> &'static str {
        conv(ev).map(|_| "ok").unwrap_or_else(|e| e.field)
    }

    #[test]
    fn accepts_a_good_event() {
        assert!(conv(base()).is_ok());
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut e = base();
        e.event_id = String::new();
        assert_eq!(field_of(e), "event_id");
        let mut e = base();
        e.event_id = "has space".into();
        assert_eq!(field_of(e), "event_id");
        let mut e = base();
        e.event_id = "x".repeat(129);
        assert_eq!(field_of(e), "event_id");
        let mut e = base();
        e.municipality = "958935421".into();
        assert_eq!(field_of(e), "municipality");
        let mut e = base();
        e.patient = None;
        assert_eq!(field_of(e), "patient");
        let mut e = base();
        e.patient = Some(pb::PersonId {
            system: 0,
            value: synthetic::fnr(1),
        });
        assert_eq!(field_of(e), "patient.system");
        let mut e = base();
        e.patient = Some(pb::PersonId {
            system: 1,
            value: "12345678901".into(),
        });
        assert_eq!(field_of(e), "patient.value");
        let mut e = base();
        e.device = None;
        assert_eq!(field_of(e), "device");
        let mut e = base();
        e.occurred_at = Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + 301,
            nanos: 0,
        });
        assert_eq!(field_of(e), "occurred_at");
        let mut e = base();
        e.occurred_at = Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + 299,
            nanos: 0,
        });
        assert_eq!(field_of(e), "ok");
        let mut e = base();
        e.payload = None;
        assert_eq!(field_of(e), "payload");
        let mut e = base();
        e.payload = Some(pb::event::Payload::Measurement(pb::Measurement {
            kind: pb::MeasurementKind::BloodPressure as i32,
            reading: Some(pb::measurement::Reading::Quantity(pb::Quantity {
                value: 1.0,
                unit: "mm[Hg]".into(),
            })),
        }));
        assert_eq!(field_of(e), "measurement.blood_pressure");
        let mut e = base();
        e.payload = Some(pb::event::Payload::Measurement(pb::Measurement {
            kind: 0,
            reading: None,
        }));
        assert_eq!(field_of(e), "measurement.kind");
        let mut e = base();
        e.payload = Some(pb::event::Payload::Alarm(pb::Alarm {
            code: String::new(),
            severity: 3,
            ..Default::default()
        }));
        assert_eq!(field_of(e), "alarm.code");
        let mut e = base();
        e.payload = Some(pb::event::Payload::Alarm(pb::Alarm {
            code: "4.1".into(),
            severity: 9,
            ..Default::default()
        }));
        assert_eq!(field_of(e), "alarm.severity");
    }

    #[test]
    fn occurred_at_nanos_out_of_range_names_occurred_at() {
        for nanos in [1_000_000_000, 1_999_999_999, i32::MAX, -1] {
            let mut e = base();
            e.occurred_at = Some(prost_types::Timestamp {
                seconds: 1_699_999_000,
                nanos,
            });
            let err = conv(e).err();
            assert_eq!(
                err.as_ref().map(|e| e.field),
                Some("occurred_at"),
                "{nanos}"
            );
        }
        let mut e = base();
        e.occurred_at = Some(prost_types::Timestamp {
            seconds: 1_699_999_000,
            nanos: 999_999_999,
        });
        assert!(conv(e).is_ok());
    }

    #[test]
    fn errors_never_contain_the_national_id() {
        let mut e = base();
        let bad = format!("{}0", &synthetic::fnr(1)[..10]);
        e.patient = Some(pb::PersonId {
            system: 1,
            value: bad.clone(),
        });
        let err = conv(e).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!err.contains(&bad[..6]), "{err}");
    }
}
