//! The hub's only contact with fhir-sdk.
//!
//! fhir-sdk's models are large and generic-heavy and take minutes to compile,
//! so they live behind this small crate: plain input structs in, compact FHIR
//! JSON out. No fhir-sdk type appears in the public API, so the rest of the
//! workspace never recompiles fhir-sdk code when it changes.
//!
//! The models used are fhir-sdk's R4B ones. R4B's JSON for Observation and
//! Communication is the same as R4 4.0.1's as long as no R4B-only element is
//! set, and this crate sets none; the hub serves `fhirVersion` 4.0.1.
//!
//! What this crate decides: only FHIR *shape* (which element a value goes
//! into). What the values mean (LOINC codes, VKP alert codes, priorities,
//! identifier systems) is decided by the caller, the hub's `normalize`
//! module, which also checks them. The output never contains `meta`: the
//! store adds `meta.lastUpdated` when it stores the resource, right after
//! the opening `{`.

use std::str::FromStr;

use fhir_sdk::r4b::codes as fcodes;
use fhir_sdk::r4b::resources as fres;
use fhir_sdk::r4b::types as ftypes;

/// Why a resource could not be built. Carries field names and fhir-sdk's
/// own messages, never the values, so it is safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("{field}: not a valid FHIR dateTime with time and offset (RFC 3339): {reason}")]
    DateTime { field: &'static str, reason: String },
    #[error("{field}: a FHIR decimal must be a finite number")]
    NotFinite { field: &'static str },
    #[error("{field}: a FHIR string must not be empty")]
    Empty { field: &'static str },
    #[error("building {what} failed: {reason}")]
    Builder { what: &'static str, reason: String },
    #[error("serializing {what} to JSON failed: {reason}")]
    Serialize { what: &'static str, reason: String },
}

/// A Coding: a code from a code system, with its display text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coding<'a> {
    pub system: &'a str,
    pub code: &'a str,
    pub display: Option<&'a str>,
}

/// A business identifier: `{system, value}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identifier<'a> {
    pub system: &'a str,
    pub value: &'a str,
}

/// A Reference. For a logical reference set `identifier` (and
/// `target_type`, e.g. "Organization"); for a literal one set `reference`
/// (e.g. "Communication/<id>").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reference<'a> {
    /// Literal reference, e.g. `Communication/<id>`.
    pub reference: Option<&'a str>,
    /// `Reference.type`: the resource type the reference points to.
    pub target_type: Option<&'a str>,
    pub identifier: Option<Identifier<'a>>,
    pub display: Option<&'a str>,
}

/// A Quantity with a coded unit, e.g. `{value: 72, unit: "/min", system:
/// UCUM, code: "/min"}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantity<'a> {
    pub value: f64,
    /// Human-readable unit.
    pub unit: &'a str,
    /// System of the coded unit, normally [`UCUM`].
    pub system: &'a str,
    /// Coded unit, e.g. `mm[Hg]`.
    pub code: &'a str,
}

/// UCUM's code system URI.
pub const UCUM: &str = "http://unitsofmeasure.org";

/// One Observation.component: a code and a quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct Component<'a> {
    pub code: Vec<Coding<'a>>,
    pub value: Quantity<'a>,
}

/// Observation.status values the hub produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservationStatus {
    Final,
}

/// An Observation. `code` is one CodeableConcept with these codings;
/// `category` likewise.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationInput<'a> {
    /// The logical id (`Resource.id`).
    pub id: &'a str,
    pub identifier: Vec<Identifier<'a>>,
    pub status: ObservationStatus,
    pub category: Vec<Coding<'a>>,
    pub code: Vec<Coding<'a>>,
    pub subject: Reference<'a>,
    /// `effectiveDateTime`, RFC 3339 with offset.
    pub effective: &'a str,
    pub device: Option<Reference<'a>>,
    /// `valueQuantity`; `None` for a panel whose values are in `component`.
    pub value: Option<Quantity<'a>>,
    pub component: Vec<Component<'a>>,
}

/// Communication.status values the hub produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommunicationStatus {
    Completed,
}

/// Communication.priority (FHIR value set `request-priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Routine,
    Urgent,
    Asap,
    Stat,
}

/// A Communication. `category` and each entry of `reason_code` become one
/// CodeableConcept each.
#[derive(Debug, Clone, PartialEq)]
pub struct CommunicationInput<'a> {
    /// The logical id (`Resource.id`).
    pub id: &'a str,
    pub identifier: Vec<Identifier<'a>>,
    pub in_response_to: Vec<Reference<'a>>,
    pub status: CommunicationStatus,
    pub category: Vec<Coding<'a>>,
    pub priority: Option<Priority>,
    pub subject: Reference<'a>,
    /// `sent`, RFC 3339 with offset.
    pub sent: &'a str,
    pub recipient: Vec<Reference<'a>>,
    pub sender: Option<Reference<'a>>,
    /// One CodeableConcept per inner list of codings.
    pub reason_code: Vec<Vec<Coding<'a>>>,
    /// `payload.contentString`, one payload per entry.
    pub payload: Vec<&'a str>,
}

/// Builds an Observation and returns it as compact JSON starting with
/// `{"resourceType":"Observation"`, without `meta`.
pub fn observation_json(o: &ObservationInput<'_>) -> Result<String, BuildError> {
    const WHAT: &str = "Observation";
    let components = o
        .component
        .iter()
        .map(|c| {
            fres::ObservationComponent::builder()
                .code(concept(&c.code, WHAT)?)
                .value(fres::ObservationComponentValue::Quantity(quantity(
                    &c.value,
                    "component.valueQuantity.value",
                    WHAT,
                )?))
                .build()
                .map(Some)
                .map_err(|e| builder_err(WHAT, e))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let status = match o.status {
        ObservationStatus::Final => fcodes::ObservationStatus::Final,
    };
    let mut b = fres::Observation::builder()
        .id(non_empty(o.id, "id")?.to_owned())
        .identifier(identifiers(&o.identifier, WHAT)?)
        .status(status)
        .category(if o.category.is_empty() {
            Vec::new()
        } else {
            vec![Some(concept(&o.category, WHAT)?)]
        })
        .code(concept(&o.code, WHAT)?)
        .subject(reference(&o.subject, WHAT)?)
        .effective(fres::ObservationEffective::DateTime(date_time(
            o.effective,
            "effectiveDateTime",
        )?))
        .component(components);
    if let Some(d) = &o.device {
        b = b.device(reference(d, WHAT)?);
    }
    if let Some(q) = &o.value {
        b = b.value(fres::ObservationValue::Quantity(quantity(
            q,
            "valueQuantity.value",
            WHAT,
        )?));
    }
    let obs = b.build().map_err(|e| builder_err(WHAT, e))?;
    to_json(&obs, WHAT)
}

/// Builds a Communication and returns it as compact JSON starting with
/// `{"resourceType":"Communication"`, without `meta`.
pub fn communication_json(c: &CommunicationInput<'_>) -> Result<String, BuildError> {
    const WHAT: &str = "Communication";
    let status = match c.status {
        CommunicationStatus::Completed => fcodes::EventStatus::Completed,
    };
    let reasons = c
        .reason_code
        .iter()
        .map(|codings| concept(codings, WHAT).map(Some))
        .collect::<Result<Vec<_>, _>>()?;
    let payload = c
        .payload
        .iter()
        .map(|text| {
            fres::CommunicationPayload::builder()
                .content(fres::CommunicationPayloadContent::String(
                    non_empty(text, "payload.contentString")?.to_owned(),
                ))
                .build()
                .map(Some)
                .map_err(|e| builder_err(WHAT, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let in_response_to = c
        .in_response_to
        .iter()
        .map(|r| reference(r, WHAT).map(Some))
        .collect::<Result<Vec<_>, _>>()?;
    let recipient = c
        .recipient
        .iter()
        .map(|r| reference(r, WHAT).map(Some))
        .collect::<Result<Vec<_>, _>>()?;

    let mut b = fres::Communication::builder()
        .id(non_empty(c.id, "id")?.to_owned())
        .identifier(identifiers(&c.identifier, WHAT)?)
        .in_response_to(in_response_to)
        .status(status)
        .category(if c.category.is_empty() {
            Vec::new()
        } else {
            vec![Some(concept(&c.category, WHAT)?)]
        })
        .subject(reference(&c.subject, WHAT)?)
        .sent(date_time(c.sent, "sent")?)
        .recipient(recipient)
        .reason_code(reasons)
        .payload(payload);
    if let Some(p) = c.priority {
        b = b.priority(match p {
            Priority::Routine => fcodes::RequestPriority::Routine,
            Priority::Urgent => fcodes::RequestPriority::Urgent,
            Priority::Asap => fcodes::RequestPriority::Asap,
            Priority::Stat => fcodes::RequestPriority::Stat,
        });
    }
    if let Some(s) = &c.sender {
        b = b.sender(reference(s, WHAT)?);
    }
    let comm = b.build().map_err(|e| builder_err(WHAT, e))?;
    to_json(&comm, WHAT)
}

fn builder_err(what: &'static str, e: impl std::fmt::Display) -> BuildError {
    BuildError::Builder {
        what,
        reason: e.to_string(),
    }
}

fn to_json<T: serde::Serialize>(v: &T, what: &'static str) -> Result<String, BuildError> {
    serde_json::to_string(v).map_err(|e| BuildError::Serialize {
        what,
        reason: e.to_string(),
    })
}

fn non_empty<'a>(s: &'a str, field: &'static str) -> Result<&'a str, BuildError> {
    if s.is_empty() {
        Err(BuildError::Empty { field })
    } else {
        Ok(s)
    }
}

fn date_time(s: &str, field: &'static str) -> Result<fhir_sdk::DateTime, BuildError> {
    // Only full instants: a bare date would be valid FHIR, but the hub always
    // knows the time and the offset.
    if !s.contains('T') {
        return Err(BuildError::DateTime {
            field,
            reason: "no time part".into(),
        });
    }
    fhir_sdk::DateTime::from_str(s).map_err(|e| BuildError::DateTime {
        field,
        reason: e.to_string(),
    })
}

fn coding(c: &Coding<'_>, what: &'static str) -> Result<ftypes::Coding, BuildError> {
    let mut b = ftypes::Coding::builder()
        .system(non_empty(c.system, "coding.system")?.to_owned())
        .code(non_empty(c.code, "coding.code")?.to_owned());
    if let Some(d) = c.display.filter(|d| !d.is_empty()) {
        b = b.display(d.to_owned());
    }
    b.build().map_err(|e| builder_err(what, e))
}

fn concept(
    codings: &[Coding<'_>],
    what: &'static str,
) -> Result<ftypes::CodeableConcept, BuildError> {
    let coding = codings
        .iter()
        .map(|c| coding(c, what).map(Some))
        .collect::<Result<Vec<_>, _>>()?;
    ftypes::CodeableConcept::builder()
        .coding(coding)
        .build()
        .map_err(|e| builder_err(what, e))
}

fn identifier(i: &Identifier<'_>, what: &'static str) -> Result<ftypes::Identifier, BuildError> {
    ftypes::Identifier::builder()
        .system(non_empty(i.system, "identifier.system")?.to_owned())
        .value(non_empty(i.value, "identifier.value")?.to_owned())
        .build()
        .map_err(|e| builder_err(what, e))
}

fn identifiers(
    ids: &[Identifier<'_>],
    what: &'static str,
) -> Result<Vec<Option<ftypes::Identifier>>, BuildError> {
    ids.iter().map(|i| identifier(i, what).map(Some)).collect()
}

fn reference(r: &Reference<'_>, what: &'static str) -> Result<ftypes::Reference, BuildError> {
    let mut b = ftypes::Reference::builder();
    if let Some(lit) = r.reference {
        b = b.reference(non_empty(lit, "reference.reference")?.to_owned());
    }
    if let Some(t) = r.target_type {
        b = b.r#type(non_empty(t, "reference.type")?.to_owned());
    }
    if let Some(i) = &r.identifier {
        b = b.identifier(identifier(i, what)?);
    }
    if let Some(d) = r.display.filter(|d| !d.is_empty()) {
        b = b.display(d.to_owned());
    }
    b.build().map_err(|e| builder_err(what, e))
}

fn quantity(
    q: &Quantity<'_>,
    field: &'static str,
    what: &'static str,
) -> Result<ftypes::Quantity, BuildError> {
    if !q.value.is_finite() {
        // serde_json would silently write `null` for NaN and infinities.
        return Err(BuildError::NotFinite { field });
    }
    // FHIR decimals have no negative zero.
    let value = if q.value == 0.0 { 0.0 } else { q.value };
    ftypes::Quantity::builder()
        .value(value)
        .unit(non_empty(q.unit, "quantity.unit")?.to_owned())
        .system(non_empty(q.system, "quantity.system")?.to_owned())
        .code(non_empty(q.code, "quantity.code")?.to_owned())
        .build()
        .map_err(|e| builder_err(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs() -> ObservationInput<'static> {
        ObservationInput {
            id: "0b6f2d8e-3c1a-5d7e-9f00-000000000001",
            identifier: vec![Identifier {
                system: "urn:knutepunkt:vendor:acme:event",
                value: "e1",
            }],
            status: ObservationStatus::Final,
            category: vec![Coding {
                system: "http://terminology.hl7.org/CodeSystem/observation-category",
                code: "vital-signs",
                display: Some("Vital Signs"),
            }],
            code: vec![Coding {
                system: "http://loinc.org",
                code: "8867-4",
                display: Some("Heart rate"),
            }],
            subject: Reference {
                target_type: Some("Patient"),
                identifier: Some(Identifier {
                    system: "urn:oid:2.16.578.1.12.4.1.4.1",
                    value: "01010100000",
                }),
                ..Reference::default()
            },
            effective: "2024-05-01T12:30:00Z",
            device: Some(Reference {
                target_type: Some("Device"),
                identifier: Some(Identifier {
                    system: "urn:knutepunkt:vendor:acme:device",
                    value: "d1",
                }),
                display: Some("pulse-oximeter"),
                ..Reference::default()
            }),
            value: Some(Quantity {
                value: 72.0,
                unit: "/min",
                system: UCUM,
                code: "/min",
            }),
            component: vec![],
        }
    }

    #[test]
    fn observation_shape() {
        let json = observation_json(&obs()).unwrap();
        assert!(
            json.starts_with(r#"{"resourceType":"Observation","id":"#),
            "{json}"
        );
        assert!(!json.contains("meta"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["status"], "final");
        assert_eq!(v["effectiveDateTime"], "2024-05-01T12:30:00Z");
        assert_eq!(v["valueQuantity"]["value"], 72.0);
        assert_eq!(v["valueQuantity"]["code"], "/min");
        assert_eq!(
            v["subject"]["identifier"]["system"],
            "urn:oid:2.16.578.1.12.4.1.4.1"
        );
        assert_eq!(v["subject"]["type"], "Patient");
        assert_eq!(v["device"]["display"], "pulse-oximeter");
        assert_eq!(v["code"]["coding"][0]["code"], "8867-4");
        assert!(v.get("component").is_none());
    }

    #[test]
    fn subsecond_time_is_kept() {
        let mut o = obs();
        o.effective = "2024-05-01T12:30:00.123456Z";
        let v: serde_json::Value = serde_json::from_str(&observation_json(&o).unwrap()).unwrap();
        assert_eq!(v["effectiveDateTime"], "2024-05-01T12:30:00.123456Z");
    }

    #[test]
    fn rejects_non_finite_and_bad_time() {
        let mut o = obs();
        o.value = Some(Quantity {
            value: f64::NAN,
            ..o.value.unwrap()
        });
        assert!(matches!(
            observation_json(&o),
            Err(BuildError::NotFinite { .. })
        ));
        let mut o = obs();
        o.effective = "2024-05-01";
        assert!(matches!(
            observation_json(&o),
            Err(BuildError::DateTime { .. })
        ));
        let mut o = obs();
        o.effective = "yesterday T noon";
        assert!(matches!(
            observation_json(&o),
            Err(BuildError::DateTime { .. })
        ));
    }

    #[test]
    fn communication_shape() {
        let c = CommunicationInput {
            id: "0b6f2d8e-3c1a-5d7e-9f00-000000000002",
            identifier: vec![],
            in_response_to: vec![Reference {
                reference: Some("Communication/0b6f2d8e-3c1a-5d7e-9f00-000000000003"),
                ..Reference::default()
            }],
            status: CommunicationStatus::Completed,
            category: vec![Coding {
                system: "http://terminology.hl7.org/CodeSystem/communication-category",
                code: "alert",
                display: None,
            }],
            priority: Some(Priority::Stat),
            subject: Reference::default(),
            sent: "2024-05-01T12:30:00+02:00",
            recipient: vec![Reference {
                target_type: Some("Organization"),
                ..Reference::default()
            }],
            sender: None,
            reason_code: vec![vec![Coding {
                system: "http://snomed.info/sct",
                code: "1912002",
                display: None,
            }]],
            payload: vec!["Fall"],
        };
        let json = communication_json(&c).unwrap();
        assert!(
            json.starts_with(r#"{"resourceType":"Communication","id":"#),
            "{json}"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["status"], "completed");
        assert_eq!(v["priority"], "stat");
        assert_eq!(v["sent"], "2024-05-01T12:30:00+02:00");
        assert_eq!(v["payload"][0]["contentString"], "Fall");
        assert_eq!(v["reasonCode"][0]["coding"][0]["code"], "1912002");
        assert_eq!(
            v["inResponseTo"][0]["reference"],
            "Communication/0b6f2d8e-3c1a-5d7e-9f00-000000000003"
        );
        assert!(v.get("sender").is_none());
    }
}
