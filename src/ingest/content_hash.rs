//! The content hash that tells a resend (same `event_id`, same content:
//! DUPLICATE) from a conflict (same `event_id`, other content:
//! ALREADY_EXISTS).
//!
//! It is stored with the idempotency key, so it is a stored format: it must
//! not change when a Rust struct gains a field or a serializer changes its
//! output. It is therefore hand-written instead of derived (serde/postcard
//! of [`Event`] would change with the struct): a version byte, then every
//! field in a fixed order, strings length-prefixed, numbers little-endian,
//! `f64` by its bits, enums by fixed tags. SHA-256 of that encoding is the
//! hash.
//!
//! Encoding, version 1 (`u32`/`u64`/`i64` little-endian; `str` = `u32`
//! byte length + UTF-8 bytes; `opt` = tag 0, or tag 1 + value):
//!
//! ```text
//! u8 1 (version)
//! str vendor, str event_id, u32 municipality
//! u8 patient system (1 FNR, 2 DNR, 3 FHN), str patient value
//! str device id, str device kind
//! i64 occurred_at seconds, u32 occurred_at nanoseconds
//! payload:
//!   u8 1 measurement:
//!     u8 1 blood pressure, u64 systolic bits, u64 diastolic bits
//!     u8 2 quantity, u8 kind (see kind_tag), u64 value bits, str unit
//!   u8 2 alarm: str code, u8 severity (0 not reported, 1 green,
//!     2 yellow, 3 red), opt str text, opt str zone
//!   u8 3 note: str text, opt str in_response_to
//! ```
//!
//! A new field gets a new version (and older hashes keep their meaning
//! until the idempotency window has passed); never renumber a tag.

use sha2::{Digest, Sha256};

use crate::domain::{Event, IdSystem, Measurement, MeasurementKind, Payload, Severity};

/// The encoding's version, its first byte.
pub const VERSION: u8 = 1;

/// SHA-256 of the canonical encoding of `ev`.
pub fn content_hash(ev: &Event) -> [u8; 32] {
    Sha256::digest(encode(ev)).into()
}

/// The canonical encoding (version 1) described in the module docs.
pub fn encode(ev: &Event) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256));
    w.u8(VERSION);
    w.str(&ev.vendor.0);
    w.str(&ev.event_id);
    w.u32(ev.municipality.as_u32());
    w.u8(match ev.patient.system() {
        IdSystem::Fnr => 1,
        IdSystem::Dnr => 2,
        IdSystem::Fhn => 3,
    });
    w.str(ev.patient.value());
    w.str(&ev.device.id);
    w.str(&ev.device.kind);
    w.0.extend_from_slice(&ev.occurred_at.timestamp().to_le_bytes());
    w.u32(ev.occurred_at.timestamp_subsec_nanos());
    match &ev.payload {
        Payload::Measurement(m) => {
            w.u8(1);
            match m {
                Measurement::BloodPressure {
                    systolic,
                    diastolic,
                } => {
                    w.u8(1);
                    w.f64(*systolic);
                    w.f64(*diastolic);
                }
                Measurement::Quantity { kind, value, unit } => {
                    w.u8(2);
                    w.u8(kind_tag(*kind));
                    w.f64(*value);
                    w.str(unit);
                }
            }
        }
        Payload::Alarm(a) => {
            w.u8(2);
            w.str(&a.code);
            w.u8(match a.severity {
                Severity::NotReported => 0,
                Severity::Green => 1,
                Severity::Yellow => 2,
                Severity::Red => 3,
            });
            w.opt(a.text.as_deref());
            w.opt(a.zone.as_deref());
        }
        Payload::Note(n) => {
            w.u8(3);
            w.str(&n.text);
            w.opt(n.in_response_to.as_deref());
        }
    }
    w.0
}

/// Fixed tags of the measurement kinds. Never renumber.
fn kind_tag(k: MeasurementKind) -> u8 {
    match k {
        MeasurementKind::BloodPressure => 1,
        MeasurementKind::HeartRate => 2,
        MeasurementKind::OxygenSaturation => 3,
        MeasurementKind::BodyWeight => 4,
        MeasurementKind::BodyTemperature => 5,
        MeasurementKind::RespiratoryRate => 6,
        MeasurementKind::BloodGlucose => 7,
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        // Strings are at most a few KiB (the event is size-checked first).
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Alarm, Device, Note, Orgnr, PersonId, VendorId, synthetic};

    fn event(payload: Payload) -> Event {
        Event {
            vendor: VendorId("acme-alarm".into()),
            event_id: "ev-1".into(),
            municipality: Orgnr::parse("958935420").unwrap_or_else(|e| panic!("{e}")),
            patient: PersonId::parse(IdSystem::Fnr, &synthetic::fnr(1))
                .unwrap_or_else(|e| panic!("{e}")),
            device: Device {
                id: "dev-7".into(),
                kind: "wrist".into(),
            },
            occurred_at: chrono::DateTime::from_timestamp(1_700_000_000, 250_000_000)
                .unwrap_or_default(),
            payload,
        }
    }

    fn hex(h: [u8; 32]) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Pins the hash of one fixed event: if this fails, the stored format
    /// changed, and every resend of an event stored before the change would
    /// be refused as a conflict. Add a new version instead.
    #[test]
    fn the_hash_of_a_fixed_event_never_changes() {
        let ev = event(Payload::Alarm(Alarm {
            code: "4.1".into(),
            severity: Severity::Red,
            text: Some("fall".into()),
            zone: None,
        }));
        let bytes = encode(&ev);
        assert_eq!(bytes[0], 1, "version byte");
        assert_eq!(hex(content_hash(&ev)), PINNED_ALARM);
        let m = event(Payload::Measurement(Measurement::Quantity {
            kind: MeasurementKind::HeartRate,
            value: 72.5,
            unit: "/min".into(),
        }));
        assert_eq!(hex(content_hash(&m)), PINNED_MEASUREMENT);
    }

    // Computed once from the encoding in the module docs (independently of
    // this code); they must never change.
    const PINNED_ALARM: &str = "514867a087e9ac7a380e3a412560bcd1c33dfd26f885574016bc3dd371206e71";
    const PINNED_MEASUREMENT: &str =
        "d314e0747336b8e94cc5cc1f035998620b18091799e9be9946b1df3f9966ea14";

    #[test]
    fn every_field_counts_and_fields_do_not_run_into_each_other() {
        let base = event(Payload::Note(Note {
            text: "ab".into(),
            in_response_to: None,
        }));
        let mut other = base.clone();
        other.device.id = "dev-7a".into();
        other.device.kind = "rist".into(); // same concatenation, other split
        assert_ne!(content_hash(&base), content_hash(&other));
        let mut answered = base.clone();
        answered.payload = Payload::Note(Note {
            text: "ab".into(),
            in_response_to: Some(String::new()),
        });
        assert_ne!(content_hash(&base), content_hash(&answered));
        let mut later = base.clone();
        later.occurred_at += chrono::Duration::nanoseconds(1);
        assert_ne!(content_hash(&base), content_hash(&later));
        assert_eq!(content_hash(&base), content_hash(&base.clone()));
    }
}
