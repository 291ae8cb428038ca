//! The hub's own types: what an event *is*, independent of gRPC and FHIR.
//!
//! `ingest` turns proto messages into these (checking identifiers and shape),
//! `normalize` turns these into FHIR JSON (checking values against the code
//! tables), and `store` persists the result. Nothing here knows tonic or FHIR.
//!
//! National ids are wrapped in [`PersonId`], whose `Debug` never prints the
//! number, so a stray `{:?}` in a log line cannot leak it.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why an event was refused: the field (as the vendor named it in the proto)
/// and what to change. Shown to the vendor as-is, so it must never contain a
/// national id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// A municipality's 9-digit organisation number, control digit checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Orgnr(u32);

impl Orgnr {
    pub const OID: &'static str = "urn:oid:2.16.578.1.12.4.1.4.101";

    /// Parses and checks an organisation number (weights 3 2 7 6 5 4 3 2).
    pub fn parse(s: &str) -> Result<Self, String> {
        let d = digits::<9>(s).ok_or_else(|| {
            "must be exactly 9 digits (the municipality's organisation number)".to_string()
        })?;
        if d[0] < 8 {
            // Every Norwegian organisation number starts with 8 or 9 (and
            // e.g. 000000000 would pass the control digit).
            return Err("is not an organisation number (they start with 8 or 9)".into());
        }
        let control = mod11(&d[..8], &[3, 2, 7, 6, 5, 4, 3, 2])
            .ok_or("is not a valid organisation number (no control digit is possible)")?;
        if control != d[8] {
            return Err("has a wrong control digit; check the organisation number".into());
        }
        Ok(Orgnr(
            d.iter().fold(0u32, |acc, &x| acc * 10 + u32::from(x)),
        ))
    }

    pub fn as_u32(self) -> u32 {
        self.0
    }

    /// Rebuilds an orgnr read back from the store (already checked on the way in).
    pub fn from_u32(v: u32) -> Self {
        Orgnr(v)
    }
}

impl fmt::Display for Orgnr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:09}", self.0)
    }
}

/// Which national register a person number belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdSystem {
    /// Fødselsnummer.
    Fnr,
    /// D-nummer.
    Dnr,
    /// FH-nummer (felles hjelpenummer).
    Fhn,
}

impl IdSystem {
    pub fn oid(self) -> &'static str {
        match self {
            IdSystem::Fnr => "urn:oid:2.16.578.1.12.4.1.4.1",
            IdSystem::Dnr => "urn:oid:2.16.578.1.12.4.1.4.2",
            IdSystem::Fhn => "urn:oid:2.16.578.1.12.4.1.4.3",
        }
    }

    pub fn from_oid(oid: &str) -> Option<Self> {
        [IdSystem::Fnr, IdSystem::Dnr, IdSystem::Fhn]
            .into_iter()
            .find(|s| s.oid() == oid)
    }
}

/// A person's national identifier. `Debug` and `Display` are redacted: use
/// [`PersonId::value`] only where the number must leave the hub (FHIR output).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PersonId {
    system: IdSystem,
    value: String,
}

impl PersonId {
    /// Checks an 11-digit person number and its two mod-11 control digits.
    ///
    /// Only the control digits are checked, not the calendar: D-numbers add 4
    /// to the first digit and synthetic test numbers shift the month. An
    /// FH-number's first digit is 8 or 9.
    pub fn parse(system: IdSystem, value: &str) -> Result<Self, String> {
        let d = digits::<11>(value).ok_or("must be exactly 11 digits")?;
        let k1 = mod11(&d[..9], &[3, 7, 6, 1, 8, 9, 4, 5, 2]);
        let k2 = mod11(&d[..10], &[5, 4, 3, 2, 7, 6, 5, 4, 3, 2]);
        if k1 != Some(d[9]) || k2 != Some(d[10]) {
            return Err("has wrong control digits; check the number".into());
        }
        let ok_first = match system {
            IdSystem::Fnr => d[0] <= 3,
            IdSystem::Dnr => (4..=7).contains(&d[0]),
            IdSystem::Fhn => d[0] >= 8,
        };
        if !ok_first {
            return Err(match system {
                IdSystem::Fnr => {
                    "is not a fødselsnummer (first digit must be 0-3; is it a D-number?)"
                }
                IdSystem::Dnr => "is not a D-number (first digit must be 4-7)",
                IdSystem::Fhn => "is not an FH-number (first digit must be 8 or 9)",
            }
            .into());
        }
        Ok(PersonId {
            system,
            value: value.to_string(),
        })
    }

    pub fn system(&self) -> IdSystem {
        self.system
    }

    /// The number itself. Never log it.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonId({:?}, ***********)", self.system)
    }
}

/// The vendor system that submitted an event. Comes from the connection
/// (until mTLS lands: from configuration), never from the event itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VendorId(pub String);

impl fmt::Display for VendorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub kind: String,
}

/// One event as the vendor meant it, shape and identifiers checked; values
/// are checked against the code tables by `normalize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub vendor: VendorId,
    pub event_id: String,
    pub municipality: Orgnr,
    pub patient: PersonId,
    pub device: Device,
    pub occurred_at: DateTime<Utc>,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    Measurement(Measurement),
    Alarm(Alarm),
    Note(Note),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MeasurementKind {
    BloodPressure,
    HeartRate,
    OxygenSaturation,
    BodyWeight,
    BodyTemperature,
    RespiratoryRate,
    BloodGlucose,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Measurement {
    /// Systolic and diastolic in mm[Hg].
    BloodPressure { systolic: f64, diastolic: f64 },
    /// Every other kind: a value with its UCUM unit as the vendor sent it.
    Quantity {
        kind: MeasurementKind,
        value: f64,
        unit: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    NotReported,
    Green,
    Yellow,
    Red,
}

impl Severity {
    /// Red and yellow alarms are time-critical and go ahead of any backlog.
    pub fn is_urgent(self) -> bool {
        matches!(self, Severity::Red | Severity::Yellow)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// VKP alert code as sent, e.g. "4.1"; checked against the table in `normalize`.
    pub code: String,
    pub severity: Severity,
    pub text: Option<String>,
    pub zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub text: String,
    /// event_id of the alarm (same vendor) this note answers: the closed loop.
    pub in_response_to: Option<String>,
}

/// The two kinds of FHIR resource the hub produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Observation,
    Communication,
}

impl ResourceType {
    /// Every type the hub stores.
    pub const ALL: [ResourceType; 2] = [ResourceType::Observation, ResourceType::Communication];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Observation => "Observation",
            ResourceType::Communication => "Communication",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Observation" => Some(ResourceType::Observation),
            "Communication" => Some(ResourceType::Communication),
            _ => None,
        }
    }

    /// One byte for store keys. Stable: never reuse or renumber.
    pub fn tag(self) -> u8 {
        match self {
            ResourceType::Observation => 1,
            ResourceType::Communication => 2,
        }
    }

    pub fn from_tag(t: u8) -> Option<Self> {
        match t {
            1 => Some(ResourceType::Observation),
            2 => Some(ResourceType::Communication),
            _ => None,
        }
    }
}

/// The deterministic resource id: UUID v5 of (vendor system id, event id),
/// so a resend, a restore or a second hub produces the same id.
pub fn resource_id(vendor: &VendorId, event_id: &str) -> uuid::Uuid {
    // Our own namespace, derived once from the hub's name in the URL namespace.
    let ns = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"urn:knutepunkt:event");
    let mut name = Vec::with_capacity(vendor.0.len() + 1 + event_id.len());
    name.extend_from_slice(vendor.0.as_bytes());
    name.push(0);
    name.extend_from_slice(event_id.as_bytes());
    uuid::Uuid::new_v5(&ns, &name)
}

fn digits<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut out = [0u8; N];
    for (o, c) in out.iter_mut().zip(b) {
        *o = c - b'0';
    }
    Some(out)
}

/// Mod-11 control digit; `None` when the remainder gives 10 (no valid number).
fn mod11(d: &[u8], weights: &[u32]) -> Option<u8> {
    let sum: u32 = d.iter().zip(weights).map(|(&x, &w)| u32::from(x) * w).sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        k => Some(k as u8),
    }
}

/// Synthetic test identifiers, for tests, the demo and the load generator.
/// They have valid control digits but months shifted by +80 (the Norwegian
/// synthetic-number convention), so they can never be a real person.
pub mod synthetic {
    use super::mod11;

    /// The `n`-th synthetic fødselsnummer (deterministic, valid control digits).
    pub fn fnr(n: u32) -> String {
        numbered(n, 1)
    }

    /// A synthetic D-number: first digit + 4.
    pub fn dnr(n: u32) -> String {
        numbered(n, 41)
    }

    /// The `n`-th synthetic 11-digit number whose day runs from `first_day`
    /// (1 for a fødselsnummer, 41 for a D-number): day, month 81-92
    /// (synthetic), year 00-99, individual 000-499, two control digits.
    fn numbered(mut n: u32, first_day: u32) -> String {
        loop {
            let day = first_day + (n % 28);
            let month = 81 + ((n / 28) % 12);
            let year = (n / 336) % 100;
            let ind = (n / 33_600) % 500;
            let base = format!("{day:02}{month:02}{year:02}{ind:03}");
            let d: Vec<u8> = base.bytes().map(|c| c - b'0').collect();
            if let Some(k1) = mod11(&d, &[3, 7, 6, 1, 8, 9, 4, 5, 2]) {
                let mut d2 = d.clone();
                d2.push(k1);
                if let Some(k2) = mod11(&d2, &[5, 4, 3, 2, 7, 6, 5, 4, 3, 2]) {
                    return format!("{base}{k1}{k2}");
                }
            }
            // This combination has no valid control digits: try the next one.
            n = n.wrapping_add(1_000_003);
        }
    }

    /// Builds a valid orgnr (starting with 9) from a stem (returns `None`
    /// when the stem has no valid control digit).
    pub fn orgnr(stem: u32) -> Option<String> {
        let s = format!("9{:07}", stem % 10_000_000);
        let d: Vec<u8> = s.bytes().map(|c| c - b'0').collect();
        let k = mod11(&d, &[3, 2, 7, 6, 5, 4, 3, 2])?;
        Some(format!("{s}{k}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orgnr_control_digit() {
        // Oslo kommune's public orgnr, a well-known valid number.
        assert!(Orgnr::parse("958935420").is_ok());
        assert!(Orgnr::parse("958935421").is_err());
        assert!(Orgnr::parse("95893542").is_err());
        assert!(Orgnr::parse("95893542a").is_err());
        assert!(
            Orgnr::parse("000000000").is_err(),
            "all-zero passes mod 11 but is no orgnr"
        );
        assert_eq!(
            Orgnr::parse("958935420").map(|o| o.to_string()),
            Ok("958935420".into())
        );
    }

    #[test]
    fn synthetic_numbers_are_valid() {
        for n in 0..2000 {
            let f = synthetic::fnr(n);
            assert!(PersonId::parse(IdSystem::Fnr, &f).is_ok(), "{f}");
            let d = synthetic::dnr(n);
            assert!(PersonId::parse(IdSystem::Dnr, &d).is_ok(), "{d}");
            assert!(
                PersonId::parse(IdSystem::Fnr, &d).is_err(),
                "{d} is not an fnr"
            );
        }
    }

    #[test]
    fn person_id_rejects_bad_control_digits() {
        let f = synthetic::fnr(7);
        let mut bad = f.clone().into_bytes();
        bad[10] = if bad[10] == b'9' { b'0' } else { bad[10] + 1 };
        let bad = String::from_utf8(bad).unwrap_or_default();
        assert!(PersonId::parse(IdSystem::Fnr, &bad).is_err());
        assert!(PersonId::parse(IdSystem::Fnr, "1234567890").is_err());
    }

    #[test]
    fn person_id_debug_is_redacted() {
        let f = synthetic::fnr(3);
        let p = PersonId::parse(IdSystem::Fnr, &f).unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{p:?}").contains(&f));
    }

    #[test]
    fn resource_id_is_deterministic() {
        let v = VendorId("acme".into());
        assert_eq!(resource_id(&v, "e1"), resource_id(&v, "e1"));
        assert_ne!(resource_id(&v, "e1"), resource_id(&v, "e2"));
        assert_ne!(
            resource_id(&v, "e1"),
            resource_id(&VendorId("other".into()), "e1")
        );
    }
}
