//! Validated event → FHIR R4 JSON. A pure function: no I/O, no clock, no
//! store. Every code table (LOINC, UCUM units, VKP alert codes, severity →
//! priority) lives in [`codes`] as data; the FHIR JSON itself is built by the
//! `knutepunkt-fhir` crate, the hub's only contact with fhir-sdk.
//!
//! `ingest` has already checked identifiers and the event's shape; this
//! module checks *values* (units, physically possible ranges, alert codes,
//! text lengths) and refuses the impossible with an [`Invalid`] that names
//! the proto field and says what is allowed. Error messages never echo a
//! national id, nor free text that might hold one.
//!
//! Mapping in short (domain.md has the tables):
//! - measurement → Observation (vital-signs, LOINC, UCUM quantity; blood
//!   pressure as a panel with two components);
//! - alarm → Communication (alert, priority from severity, VKP reason code);
//! - note → Communication (notification, `inResponseTo` the alarm it
//!   answers, which closes the loop).
//!
//! The resource id is [`resource_id`]`(vendor, event_id)`; the same pair is
//! also an `identifier` (see [`event_identifier_system`]) so a FHIR client
//! can do a conditional create or search by the vendor's own id.

pub mod codes;
pub mod member;

use chrono::{Datelike, SecondsFormat};
use knutepunkt_fhir as fhir;

use crate::domain::{
    Alarm, Event, Invalid, Measurement, MeasurementKind, Note, Orgnr, ResourceType, VendorId,
    resource_id,
};
use codes::{Code, Limits, UnitSpec};

/// One normalized event, ready for the store.
#[derive(Debug, Clone)]
pub struct Normalized {
    pub resource_type: ResourceType,
    pub id: uuid::Uuid,
    /// The resource as JSON, without `meta`: the store adds
    /// `meta.lastUpdated` (the time it was stored) when the resource is read.
    pub json: String,
    /// Codings the FHIR `code` search parameter matches: Observation.code
    /// codings, and for Communication the reasonCode codings.
    pub codes: Vec<(String, String)>,
    /// The FHIR category code: "vital-signs", "alert" or "notification".
    pub category: &'static str,
    /// RED or YELLOW alarm: delivered ahead of any backlog.
    pub urgent: bool,
}

/// Longest vendor text on an alarm, in characters.
pub const MAX_ALARM_TEXT: usize = 1000;
/// Longest zone/room name on an alarm, in characters.
pub const MAX_ZONE: usize = 200;
/// Longest note, in characters.
pub const MAX_NOTE_TEXT: usize = 4000;

/// `Identifier.system` for a vendor's event ids, e.g.
/// `urn:knutepunkt:vendor:acme:event`. Characters outside `A-Z a-z 0-9 - . _ ~`
/// in the vendor id are percent-encoded so the system stays a valid URI.
pub fn event_identifier_system(vendor: &VendorId) -> String {
    format!("urn:knutepunkt:vendor:{}:event", uri_part(&vendor.0))
}

/// `Identifier.system` for a vendor's device ids, e.g.
/// `urn:knutepunkt:vendor:acme:device`.
pub fn device_identifier_system(vendor: &VendorId) -> String {
    format!("urn:knutepunkt:vendor:{}:device", uri_part(&vendor.0))
}

/// Maps one event to its FHIR resource, or says which value is impossible.
pub fn normalize(ev: &Event) -> Result<Normalized, Invalid> {
    check_event(ev)?;
    let id = resource_id(&ev.vendor, &ev.event_id);
    let texts = Texts::of(ev, id);
    resource(&texts.common(ev), ev, id)
}

/// The checks every event passes whatever its payload: a time FHIR can
/// hold, and a device id without control characters.
fn check_event(ev: &Event) -> Result<(), Invalid> {
    let year = ev.occurred_at.year();
    if !(1..=9999).contains(&year) {
        return Err(Invalid::new(
            "occurred_at",
            "must be between year 0001 and 9999 (a FHIR dateTime)",
        ));
    }
    if ev.device.id.is_empty() {
        return Err(Invalid::new("device.id", "must not be empty"));
    }
    no_control_chars("device.id", &ev.device.id)?;
    no_control_chars("device.kind", &ev.device.kind)?;
    Ok(())
}

/// The strings of one event that its [`Common`] borrows.
struct Texts {
    id: String,
    event_system: String,
    device_system: String,
    orgnr: String,
    /// occurred_at, RFC 3339 in UTC.
    time: String,
}

impl Texts {
    fn of(ev: &Event, id: uuid::Uuid) -> Texts {
        Texts {
            id: id.to_string(),
            event_system: event_identifier_system(&ev.vendor),
            device_system: device_identifier_system(&ev.vendor),
            orgnr: ev.municipality.to_string(),
            time: ev.occurred_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        }
    }

    /// What every resource of `ev` shares: id, identifier, subject, device,
    /// municipality and time.
    fn common<'a>(&'a self, ev: &'a Event) -> Common<'a> {
        Common {
            id: &self.id,
            identifier: fhir::Identifier {
                system: &self.event_system,
                value: &ev.event_id,
            },
            subject: fhir::Reference {
                target_type: Some("Patient"),
                identifier: Some(fhir::Identifier {
                    system: ev.patient.system().oid(),
                    value: ev.patient.value(),
                }),
                ..fhir::Reference::default()
            },
            device: fhir::Reference {
                target_type: Some("Device"),
                identifier: Some(fhir::Identifier {
                    system: &self.device_system,
                    value: &ev.device.id,
                }),
                display: Some(ev.device.kind.as_str()).filter(|k| !k.trim().is_empty()),
                ..fhir::Reference::default()
            },
            municipality: fhir::Reference {
                target_type: Some("Organization"),
                identifier: Some(fhir::Identifier {
                    system: Orgnr::OID,
                    value: &self.orgnr,
                }),
                ..fhir::Reference::default()
            },
            time: &self.time,
        }
    }
}

/// The resource for the event's payload, with what the store indexes.
fn resource(common: &Common<'_>, ev: &Event, id: uuid::Uuid) -> Result<Normalized, Invalid> {
    let (resource_type, json, codes, category, urgent) = match &ev.payload {
        crate::domain::Payload::Measurement(m) => {
            let (json, codes) = measurement(common, m)?;
            (
                ResourceType::Observation,
                json,
                codes,
                codes::VITAL_SIGNS.code,
                false,
            )
        }
        crate::domain::Payload::Alarm(a) => {
            let (json, codes) = alarm(common, a)?;
            let urgent = a.severity.is_urgent();
            (
                ResourceType::Communication,
                json,
                codes,
                codes::ALERT.code,
                urgent,
            )
        }
        crate::domain::Payload::Note(n) => {
            let json = note(common, &ev.vendor, n)?;
            (
                ResourceType::Communication,
                json,
                Vec::new(),
                codes::NOTIFICATION.code,
                false,
            )
        }
    };
    Ok(Normalized {
        resource_type,
        id,
        json,
        codes,
        category,
        urgent,
    })
}

/// What every resource of one event shares.
struct Common<'a> {
    id: &'a str,
    identifier: fhir::Identifier<'a>,
    subject: fhir::Reference<'a>,
    device: fhir::Reference<'a>,
    municipality: fhir::Reference<'a>,
    /// occurred_at, RFC 3339 in UTC.
    time: &'a str,
}

type Codes = Vec<(String, String)>;

/// What a measurement puts in its Observation: the codes, and a value or,
/// for a panel, its components.
struct ObservationValue {
    code: &'static [Code],
    value: Option<fhir::Quantity<'static>>,
    component: Vec<fhir::Component<'static>>,
}

fn measurement(c: &Common<'_>, m: &Measurement) -> Result<(String, Codes), Invalid> {
    let v = match m {
        Measurement::Quantity { kind, value, unit } => quantity_value(*kind, *value, unit)?,
        Measurement::BloodPressure {
            systolic,
            diastolic,
        } => blood_pressure(*systolic, *diastolic)?,
    };
    let obs = fhir::ObservationInput {
        id: c.id,
        identifier: vec![c.identifier],
        status: fhir::ObservationStatus::Final,
        category: vec![coding(&codes::VITAL_SIGNS)],
        code: v.code.iter().map(coding).collect(),
        subject: c.subject,
        effective: c.time,
        device: Some(c.device),
        value: v.value,
        component: v.component,
    };
    let json = fhir::observation_json(&obs).map_err(internal)?;
    Ok((json, pairs(v.code)))
}

/// A measurement of one quantity: a kind sent this way, a unit accepted
/// for it, and a value within its limits.
fn quantity_value(
    kind: MeasurementKind,
    value: f64,
    unit: &str,
) -> Result<ObservationValue, Invalid> {
    let Some(spec) = codes::quantity_kind(kind) else {
        return Err(Invalid::new(
            "measurement.quantity",
            "MEASUREMENT_KIND_BLOOD_PRESSURE is sent as blood_pressure {systolic, diastolic}, not as a quantity",
        ));
    };
    const FIELD: &str = "measurement.quantity.value";
    finite(FIELD, value)?;
    let Some(u) = spec.unit(unit) else {
        return Err(Invalid::new(
            "measurement.quantity.unit",
            format!(
                "the unit sent is not accepted for {}; accepted UCUM units (case-sensitive): {}",
                spec.name,
                spec.accepted_units()
            ),
        ));
    };
    in_limits(
        FIELD,
        spec.name,
        value,
        u,
        &spec.limits,
        spec.canonical_unit(),
    )?;
    Ok(ObservationValue {
        code: u.codes,
        value: Some(quantity(value, u)),
        component: Vec::new(),
    })
}

/// A blood pressure: both values within their limits, systolic above
/// diastolic; a panel with two components.
fn blood_pressure(systolic: f64, diastolic: f64) -> Result<ObservationValue, Invalid> {
    let bp = &codes::BLOOD_PRESSURE;
    const SYS: &str = "measurement.blood_pressure.systolic";
    const DIA: &str = "measurement.blood_pressure.diastolic";
    finite(SYS, systolic)?;
    finite(DIA, diastolic)?;
    let u = &bp.unit;
    in_limits(
        SYS,
        "systolic blood pressure",
        systolic,
        u,
        &bp.systolic_limits,
        u.ucum,
    )?;
    in_limits(
        DIA,
        "diastolic blood pressure",
        diastolic,
        u,
        &bp.diastolic_limits,
        u.ucum,
    )?;
    if systolic <= diastolic {
        return Err(Invalid::new(
            SYS,
            "must be higher than diastolic (were they swapped?)",
        ));
    }
    let component = vec![
        fhir::Component {
            code: vec![coding(&bp.systolic)],
            value: quantity(systolic, u),
        },
        fhir::Component {
            code: vec![coding(&bp.diastolic)],
            value: quantity(diastolic, u),
        },
    ];
    Ok(ObservationValue {
        code: std::slice::from_ref(&bp.panel),
        value: None,
        component,
    })
}

fn alarm(c: &Common<'_>, a: &Alarm) -> Result<(String, Codes), Invalid> {
    let Some(alert) = codes::alert_code(&a.code) else {
        let valid: Vec<&str> = codes::ALERT_CODES.iter().map(|a| a.code).collect();
        return Err(Invalid::new(
            "alarm.code",
            format!(
                "the code sent is not in the VKP alert code list ({}) this hub accepts; valid codes: {} (the list is in the hub's docs, domain.md)",
                codes::VKP_ALERT,
                valid.join(", ")
            ),
        ));
    };
    let text = optional_text("alarm.text", a.text.as_deref(), MAX_ALARM_TEXT)?;
    let zone = optional_text("alarm.zone", a.zone.as_deref(), MAX_ZONE)?;

    // Communication has no element for the zone or room, so it goes into the
    // payload text, after the code's display and the vendor's text.
    let mut payload = alert.display.to_string();
    if let Some(t) = text {
        payload.push('\n');
        payload.push_str(t);
    }
    if let Some(z) = zone {
        payload.push_str("\nSone: ");
        payload.push_str(z);
    }

    let vkp = Code {
        system: codes::VKP_ALERT,
        code: alert.code,
        display: alert.display,
    };
    let reason: Vec<Code> = std::iter::once(vkp).chain(alert.snomed).collect();
    let comm = fhir::CommunicationInput {
        id: c.id,
        identifier: vec![c.identifier],
        in_response_to: Vec::new(),
        status: fhir::CommunicationStatus::Completed,
        category: vec![coding(&codes::ALERT)],
        priority: Some(codes::priority(a.severity)),
        subject: c.subject,
        sent: c.time,
        recipient: vec![c.municipality],
        sender: Some(c.device),
        reason_code: vec![reason.iter().map(coding).collect()],
        payload: vec![&payload],
    };
    let json = fhir::communication_json(&comm).map_err(internal)?;
    Ok((json, pairs(&reason)))
}

fn note(c: &Common<'_>, vendor: &VendorId, n: &Note) -> Result<String, Invalid> {
    const FIELD: &str = "note.text";
    let text = n.text.trim();
    if text.is_empty() {
        return Err(Invalid::new(
            FIELD,
            format!("must hold 1 to {MAX_NOTE_TEXT} characters of text"),
        ));
    }
    max_chars(FIELD, text, MAX_NOTE_TEXT)?;
    no_control_chars(FIELD, text)?;

    let answered = n
        .in_response_to
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(|e| format!("Communication/{}", resource_id(vendor, e)));
    let comm = fhir::CommunicationInput {
        id: c.id,
        identifier: vec![c.identifier],
        in_response_to: answered
            .as_deref()
            .map(|r| fhir::Reference {
                reference: Some(r),
                target_type: Some("Communication"),
                ..fhir::Reference::default()
            })
            .into_iter()
            .collect(),
        status: fhir::CommunicationStatus::Completed,
        category: vec![coding(&codes::NOTIFICATION)],
        priority: None,
        subject: c.subject,
        sent: c.time,
        recipient: vec![c.municipality],
        sender: Some(c.device),
        reason_code: Vec::new(),
        payload: vec![text],
    };
    fhir::communication_json(&comm).map_err(internal)
}

fn coding(c: &Code) -> fhir::Coding<'static> {
    fhir::Coding {
        system: c.system,
        code: c.code,
        display: Some(c.display).filter(|d| !d.is_empty()),
    }
}

fn pairs(codes: &[Code]) -> Codes {
    codes
        .iter()
        .map(|c| (c.system.to_string(), c.code.to_string()))
        .collect()
}

fn quantity(value: f64, u: &UnitSpec) -> fhir::Quantity<'static> {
    fhir::Quantity {
        value,
        unit: u.display,
        system: codes::UCUM,
        code: u.ucum,
    }
}

/// A build failure after all checks passed is a bug in this module, but it
/// still refuses the event rather than storing something broken.
fn internal(e: fhir::BuildError) -> Invalid {
    Invalid::new("event", format!("could not be expressed as FHIR: {e}"))
}

fn finite(field: &'static str, v: f64) -> Result<(), Invalid> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!("must be a finite number (got {v})"),
        ))
    }
}

/// Checks a value against limits given in the canonical unit; the reason
/// gives the allowed range in the unit the vendor used.
fn in_limits(
    field: &'static str,
    what: &str,
    v: f64,
    u: &UnitSpec,
    limits: &Limits,
    canonical: &str,
) -> Result<(), Invalid> {
    if limits.contains(u.to_canonical(v)) {
        return Ok(());
    }
    let range = |lo: f64, hi: f64, unit: &str| {
        if limits.min_exclusive {
            format!("more than {} and at most {} {unit}", num(lo), num(hi))
        } else {
            format!("between {} and {} {unit}", num(lo), num(hi))
        }
    };
    let mut allowed = range(
        u.from_canonical(limits.min),
        u.from_canonical(limits.max),
        u.ucum,
    );
    if u.ucum != canonical {
        allowed.push_str(&format!(" ({})", range(limits.min, limits.max, canonical)));
    }
    Err(Invalid::new(
        field,
        format!("the value sent is not a possible {what}: must be {allowed}"),
    ))
}

/// A number for a message: at most 3 decimals, no trailing zeros.
fn num(v: f64) -> String {
    let r = (v * 1000.0).round() / 1000.0;
    if r == 0.0 { "0".into() } else { format!("{r}") }
}

/// Trims optional free text; blank counts as absent.
fn optional_text<'a>(
    field: &'static str,
    s: Option<&'a str>,
    max: usize,
) -> Result<Option<&'a str>, Invalid> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    max_chars(field, s, max)?;
    no_control_chars(field, s)?;
    Ok(Some(s))
}

fn max_chars(field: &'static str, s: &str, max: usize) -> Result<(), Invalid> {
    let n = s.chars().count();
    if n > max {
        return Err(Invalid::new(
            field,
            format!("is {n} characters long; at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// FHIR strings may hold tab, CR and LF but no other control characters.
fn no_control_chars(field: &'static str, s: &str) -> Result<(), Invalid> {
    match s
        .chars()
        .position(|ch| ch.is_control() && !matches!(ch, '\t' | '\n' | '\r'))
    {
        None => Ok(()),
        Some(pos) => Err(Invalid::new(
            field,
            format!(
                "contains a control character at position {pos}; only tab, CR and LF are allowed"
            ),
        )),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn uri_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
