//! One MQTT message → the events the gateway submits: SenML readings,
//! alarms and notes in the gateway's JSON schema (`adapters/mqtt-payloads.md`),
//! plus the patient from the registry and a deterministic event id.
//!
//! Why it exists: this is the whole translation, with no I/O, so it can be
//! tested on its own and the gateway loop only moves bytes. The event id
//! is a hash of what identifies the message (municipality, device, and the
//! reading's name and device time, or the alarm's id), so the broker
//! redelivering a message gives the same id and the hub answers DUPLICATE.

use knutepunkt::domain::PersonId;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::registry::{Device, Registry};
use super::senml::{self, Kind};
use super::topic::{DeviceTopic, MessageKind};

/// The severity of an alarm (VKP severity level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[serde(rename = "not-reported")]
    NotReported,
    Green,
    Yellow,
    Red,
}

/// What one event carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Quantity {
        kind: Kind,
        value: f64,
        unit: String,
    },
    BloodPressure {
        systolic: f64,
        diastolic: f64,
    },
    Alarm {
        code: String,
        severity: Severity,
        text: String,
        zone: String,
    },
    Note {
        text: String,
        in_response_to: String,
    },
}

/// An event ready to submit, in the gateway's own terms (`wire.rs` turns it
/// into the proto message). `Debug` is safe to log: the patient is redacted.
#[derive(Debug, Clone)]
pub struct Submission {
    pub event_id: String,
    pub municipality: String,
    pub patient: PersonId,
    pub device_id: String,
    pub device_kind: String,
    /// Device time, seconds since the epoch.
    pub occurred_at: f64,
    pub payload: Payload,
}

/// Why a message cannot become events. `code` is stable and goes to the
/// dead-letter topic beside the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmappable {
    pub code: &'static str,
    pub error: String,
}

impl Unmappable {
    fn new(code: &'static str, error: impl Into<String>) -> Unmappable {
        Unmappable {
            code,
            error: error.into(),
        }
    }
}

/// An alarm message (topic kind `alarm`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmMsg {
    /// Device time, seconds since 1970 (fractions allowed).
    t: f64,
    /// VKP alert code, e.g. "4.1".
    code: String,
    severity: Severity,
    #[serde(default)]
    text: String,
    #[serde(default)]
    zone: String,
    /// The device's own id of this alarm, if it has one.
    #[serde(default)]
    id: Option<String>,
}

/// A note message (topic kind `note`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteMsg {
    t: f64,
    text: String,
    #[serde(default)]
    id: Option<String>,
    /// The alarm of the same device that this note answers.
    #[serde(default)]
    answers: Option<AlarmRef>,
}

/// Names an earlier alarm of the same device: by its `id`, or by its `t`
/// and `code` when it had no id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    t: Option<f64>,
    #[serde(default)]
    code: Option<String>,
}

/// `mqtt-` + 40 hex digits of SHA-256 over the identifying parts.
fn event_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let hex: String = d.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("mqtt-{hex}")
}

/// Shortest round-trip text of a time, so the same JSON number always
/// hashes the same.
fn time_key(t: f64) -> String {
    format!("{t}")
}

fn alarm_id(t: &DeviceTopic, id: Option<&str>, time: f64, code: &str) -> String {
    match id {
        Some(id) => event_id(&[&t.orgnr, &t.device, "alarm-id", id]),
        None => event_id(&[&t.orgnr, &t.device, "alarm", code, &time_key(time)]),
    }
}

fn check_time(t: f64) -> Result<f64, Unmappable> {
    if (268_435_456.0..1e11).contains(&t) {
        Ok(t)
    } else {
        Err(Unmappable::new(
            "bad_payload",
            "\"t\" must be the absolute device time in seconds since 1970",
        ))
    }
}

/// Turns one message into events, or says why it cannot.
pub fn map(
    topic: &DeviceTopic,
    payload: &[u8],
    registry: &Registry,
) -> Result<Vec<Submission>, Unmappable> {
    let dev = registered_device(topic, registry)?;
    let base = |event_id: String, occurred_at: f64, payload: Payload| Submission {
        event_id,
        municipality: topic.orgnr.clone(),
        patient: dev.patient.clone(),
        device_id: dev.id.clone(),
        device_kind: dev.kind.clone(),
        occurred_at,
        payload,
    };
    match topic.kind {
        MessageKind::Measurement => {
            let readings = senml::parse(payload).map_err(|e| Unmappable::new("bad_payload", e))?;
            readings_to_events(topic, readings, &base)
        }
        MessageKind::Alarm => alarm_to_event(topic, payload, &base),
        MessageKind::Note => note_to_event(topic, payload, &base),
    }
}

/// The topic's device from the registry, if it is registered for the
/// municipality the topic names.
fn registered_device<'r>(
    topic: &DeviceTopic,
    registry: &'r Registry,
) -> Result<&'r Device, Unmappable> {
    let dev = registry.get(&topic.device).ok_or_else(|| {
        Unmappable::new(
            "unknown_device",
            format!(
                "device {:?} is not in the gateway's device registry; register it with its patient and municipality",
                topic.device
            ),
        )
    })?;
    if dev.municipality.to_string() != topic.orgnr {
        return Err(Unmappable::new(
            "wrong_municipality",
            format!(
                "device {:?} is registered for municipality {}, the topic names {}",
                topic.device, dev.municipality, topic.orgnr
            ),
        ));
    }
    Ok(dev)
}

/// A JSON payload that does not fit its schema.
fn bad(e: serde_json::Error) -> Unmappable {
    Unmappable::new("bad_payload", e.to_string())
}

/// An alarm message → one alarm event.
fn alarm_to_event(
    topic: &DeviceTopic,
    payload: &[u8],
    base: &dyn Fn(String, f64, Payload) -> Submission,
) -> Result<Vec<Submission>, Unmappable> {
    let a: AlarmMsg = serde_json::from_slice(payload).map_err(bad)?;
    let t = check_time(a.t)?;
    let id = alarm_id(topic, a.id.as_deref(), t, &a.code);
    Ok(vec![base(
        id,
        t,
        Payload::Alarm {
            code: a.code,
            severity: a.severity,
            text: a.text,
            zone: a.zone,
        },
    )])
}

/// A note message → one note event, linked to the alarm it answers.
fn note_to_event(
    topic: &DeviceTopic,
    payload: &[u8],
    base: &dyn Fn(String, f64, Payload) -> Submission,
) -> Result<Vec<Submission>, Unmappable> {
    let n: NoteMsg = serde_json::from_slice(payload).map_err(bad)?;
    let t = check_time(n.t)?;
    let id = match &n.id {
        Some(id) => event_id(&[&topic.orgnr, &topic.device, "note-id", id]),
        None => event_id(&[&topic.orgnr, &topic.device, "note", &time_key(t)]),
    };
    let in_response_to = answered_alarm(topic, n.answers)?;
    Ok(vec![base(
        id,
        t,
        Payload::Note {
            text: n.text,
            in_response_to,
        },
    )])
}

/// The event id of the alarm a note answers (empty if it answers none).
fn answered_alarm(topic: &DeviceTopic, answers: Option<AlarmRef>) -> Result<String, Unmappable> {
    match answers {
        None => Ok(String::new()),
        Some(AlarmRef { id: Some(id), .. }) => Ok(alarm_id(topic, Some(&id), 0.0, "")),
        Some(AlarmRef {
            id: None,
            t: Some(at),
            code: Some(code),
        }) => Ok(alarm_id(topic, None, at, &code)),
        Some(_) => Err(Unmappable::new(
            "bad_payload",
            "\"answers\" must name the alarm by \"id\", or by \"t\" and \"code\"",
        )),
    }
}

/// Readings → events; a systolic and a diastolic at the same time become
/// one blood pressure.
fn readings_to_events(
    topic: &DeviceTopic,
    readings: Vec<senml::Reading>,
    base: &dyn Fn(String, f64, Payload) -> Submission,
) -> Result<Vec<Submission>, Unmappable> {
    let mut out = Vec::new();
    let mut halves: Vec<senml::Reading> = Vec::new();
    for r in readings {
        match r.kind {
            Kind::Systolic | Kind::Diastolic => halves.push(r),
            kind => {
                let id = event_id(&[&topic.orgnr, &topic.device, &r.name, &time_key(r.time)]);
                out.push(base(
                    id,
                    r.time,
                    Payload::Quantity {
                        kind,
                        value: r.value,
                        unit: r.unit,
                    },
                ));
            }
        }
    }
    while let Some(first) = halves.pop() {
        let want = if first.kind == Kind::Systolic {
            Kind::Diastolic
        } else {
            Kind::Systolic
        };
        let Some(i) = halves
            .iter()
            .position(|h| h.kind == want && h.time == first.time)
        else {
            return Err(Unmappable::new(
                "bad_payload",
                "a blood pressure needs a \"systolic\" and a \"diastolic\" record with the same time",
            ));
        };
        let other = halves.remove(i);
        let (sys, dia) = if first.kind == Kind::Systolic {
            (first, other)
        } else {
            (other, first)
        };
        if sys.unit != "mm[Hg]" || dia.unit != "mm[Hg]" {
            return Err(Unmappable::new(
                "bad_payload",
                "blood pressure must be in mmHg",
            ));
        }
        let id = event_id(&[
            &topic.orgnr,
            &topic.device,
            "blood-pressure",
            &time_key(sys.time),
        ]);
        out.push(base(
            id,
            sys.time,
            Payload::BloodPressure {
                systolic: sys.value,
                diastolic: dia.value,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use knutepunkt::domain::synthetic;

    fn setup() -> (DeviceTopic, Registry) {
        let reg = Registry::parse(&format!(
            "[[device]]\nid = \"d1\"\nmunicipality = \"958935420\"\npatient_system = \"fnr\"\npatient_id = \"{}\"\n",
            synthetic::fnr(1)
        ))
        .unwrap();
        let t = DeviceTopic {
            orgnr: "958935420".into(),
            vendor: "acme".into(),
            device: "d1".into(),
            kind: MessageKind::Measurement,
        };
        (t, reg)
    }

    #[test]
    fn ids_are_deterministic_and_notes_find_their_alarm() {
        let (mut t, reg) = setup();
        let p = br#"[{"bt":1764583200,"n":"systolic","u":"mmHg","v":140},{"n":"diastolic","u":"mmHg","v":85},{"n":"pulse","u":"beat/min","v":70}]"#;
        let a = map(&t, p, &reg).unwrap();
        let b = map(&t, p, &reg).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            a.iter().map(|s| &s.event_id).collect::<Vec<_>>(),
            b.iter().map(|s| &s.event_id).collect::<Vec<_>>()
        );
        assert!(
            matches!(a[1].payload, Payload::BloodPressure { systolic, .. } if systolic == 140.0)
        );

        t.kind = MessageKind::Alarm;
        let alarm = map(
            &t,
            br#"{"t":1764583300.5,"code":"4.1","severity":"red"}"#,
            &reg,
        )
        .unwrap();
        t.kind = MessageKind::Note;
        let note = map(
            &t,
            br#"{"t":1764583400,"text":"ok","answers":{"t":1764583300.5,"code":"4.1"}}"#,
            &reg,
        )
        .unwrap();
        assert!(
            matches!(&note[0].payload, Payload::Note { in_response_to, .. } if *in_response_to == alarm[0].event_id)
        );
    }

    #[test]
    fn refusals_have_codes() {
        let (mut t, reg) = setup();
        t.device = "d2".into();
        assert_eq!(map(&t, b"[]", &reg).unwrap_err().code, "unknown_device");
        t.device = "d1".into();
        t.orgnr = "964338531".into();
        assert_eq!(map(&t, b"[]", &reg).unwrap_err().code, "wrong_municipality");
        t.orgnr = "958935420".into();
        t.kind = MessageKind::Alarm;
        let e = map(
            &t,
            br#"{"t":1764583300,"code":"4.1","severity":"purple"}"#,
            &reg,
        )
        .unwrap_err();
        assert_eq!(e.code, "bad_payload");
        assert!(e.error.contains("purple"), "{}", e.error);
        t.kind = MessageKind::Measurement;
        let e = map(
            &t,
            br#"[{"bt":1764583200,"n":"systolic","u":"mmHg","v":140}]"#,
            &reg,
        )
        .unwrap_err();
        assert!(e.error.contains("diastolic"), "{}", e.error);
    }
}
