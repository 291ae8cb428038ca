//! One FHIR R4 Observation (personal-health-device style) → the hub's
//! domain [`Event`], checked by walking the JSON ourselves: fhir-sdk's
//! deserializer drops invalid values silently, and the platform must be
//! told which element is wrong.
//!
//! What is read: `status` (final), `code.coding` (MDC or LOINC, see
//! [`codes`](super::codes)), `subject` (an identifier with a national OID,
//! directly or through a Patient entry in the Bundle), `effectiveDateTime`
//! or `effectiveInstant`, `device` (an identifier, or a reference to a
//! Device entry), `valueQuantity` or, for blood pressure, `component` with
//! UCUM units, and `identifier` (the idempotency key). Other elements are
//! ignored; a `modifierExtension` is refused because it could change the
//! meaning.
//!
//! After mapping, the hub's own `normalize` runs on the event, so a value
//! the hub would refuse (SpO2 above 100 %, systolic below diastolic) is
//! named by its FHIR element before anything is sent.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use knutepunkt::domain::{
    Device, Event, IdSystem, Measurement, MeasurementKind, Orgnr, Payload, PersonId, VendorId,
};
use knutepunkt::normalize::codes as hub;

use super::codes::{self, Meaning, UCUM_SYSTEM};
use super::issue::Issue;

/// Longest device id the hub takes (its `device.id` rule).
const MAX_DEVICE_ID: usize = 128;
/// Longest code or unit echoed back in a message.
const MAX_ECHO: usize = 40;

/// What one Observation is mapped in.
pub struct Context<'a> {
    /// The hub vendor id the platform submits as.
    pub vendor: &'a VendorId,
    /// From the request path.
    pub municipality: Orgnr,
    /// Finds the resource a reference points to in the same Bundle.
    pub resolve: &'a (dyn Fn(&str) -> Option<&'a Value> + Sync),
}

/// An Observation mapped to an event, with where its parts came from.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub event: Event,
    pub paths: Paths,
}

/// The FHIR elements the event's fields came from, to name the element
/// when the hub refuses a field.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    value: String,
    unit: String,
    systolic: String,
    diastolic: String,
    time: String,
    subject: String,
    device: String,
}

impl Paths {
    /// The element behind one of the hub's field names (`measurement.
    /// quantity.unit`, `occurred_at`, …).
    pub fn element(&self, field: &str) -> String {
        let p = match field {
            f if f.starts_with("measurement.quantity.unit") => &self.unit,
            f if f.starts_with("measurement.quantity") => &self.value,
            f if f.starts_with("measurement.blood_pressure.systolic") => &self.systolic,
            f if f.starts_with("measurement.blood_pressure.diastolic") => &self.diastolic,
            "occurred_at" => &self.time,
            f if f.starts_with("patient") => &self.subject,
            f if f.starts_with("device") => &self.device,
            "event_id" => return "Observation.identifier".into(),
            _ => return "Observation".into(),
        };
        if p.is_empty() {
            "Observation".into()
        } else {
            p.clone()
        }
    }
}

/// Maps and checks one Observation.
pub fn map(obs: &Value, cx: &Context<'_>) -> Result<Mapped, Issue> {
    let o = obs
        .as_object()
        .ok_or_else(|| Issue::structure("Observation", "must be a JSON object"))?;
    match o.get("resourceType").and_then(Value::as_str) {
        Some("Observation") => {}
        Some(other) => {
            return Err(Issue::not_supported(
                format!("{}.resourceType", echo(other)),
                "only Observations are forwarded to the hub",
            ));
        }
        None => {
            return Err(Issue::structure(
                "Observation.resourceType",
                "is required and must be \"Observation\"",
            ));
        }
    }
    if o.contains_key("modifierExtension") {
        return Err(Issue::not_supported(
            "Observation.modifierExtension",
            "is not understood by the gateway and could change the meaning; send the Observation without it",
        ));
    }
    status(o)?;
    let meaning = code(o)?;
    let mut paths = Paths::default();
    let occurred_at = effective(o, &mut paths)?;
    let patient = subject(o, cx, &mut paths)?;
    let device_id = device(o, cx, &mut paths)?;
    let (kind, measurement) = match meaning {
        Meaning::Quantity(kind) => (kind, quantity_value(o, kind, &mut paths)?),
        _ => (
            MeasurementKind::BloodPressure,
            blood_pressure(o, &mut paths)?,
        ),
    };
    let key = identifier(o)?;
    let mut event = Event {
        vendor: cx.vendor.clone(),
        event_id: String::new(),
        municipality: cx.municipality,
        patient,
        device: Device {
            id: device_id,
            kind: codes::device_kind(Some(kind)).to_string(),
        },
        occurred_at,
        payload: Payload::Measurement(measurement),
    };
    event.event_id = event_id(key.as_deref(), &event);
    // The hub's own value rules, by the same code, before anything is sent.
    if let Err(inv) = knutepunkt::normalize::normalize(&event) {
        return Err(Issue::value(paths.element(inv.field), inv.reason));
    }
    Ok(Mapped { event, paths })
}

fn status(o: &Map<String, Value>) -> Result<(), Issue> {
    match o.get("status") {
        None => Err(Issue::required(
            "Observation.status",
            "is required; send \"final\"",
        )),
        Some(Value::String(s)) if s == "final" => Ok(()),
        Some(Value::String(s)) => Err(Issue::value(
            "Observation.status",
            format!("is {:?}; only final measurements are forwarded", echo(s)),
        )),
        Some(_) => Err(Issue::structure("Observation.status", "must be a string")),
    }
}

/// The meaning of `code.coding`: one measurement kind or the BP panel.
fn code(o: &Map<String, Value>) -> Result<Meaning, Issue> {
    let codings = match o.get("code").and_then(|c| c.get("coding")) {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(_) => {
            return Err(Issue::structure(
                "Observation.code.coding",
                "must be a non-empty array of codings",
            ));
        }
        None => {
            return Err(Issue::required(
                "Observation.code.coding",
                format!(
                    "is required; known codes: {}",
                    codes::known_observation_codes()
                ),
            ));
        }
    };
    let mut found: Option<(usize, Meaning)> = None;
    for (j, c) in codings.iter().enumerate() {
        let (Some(system), Some(code)) = (
            c.get("system").and_then(Value::as_str),
            c.get("code").and_then(Value::as_str),
        ) else {
            continue;
        };
        let Some(m) = codes::meaning(system, code) else {
            continue;
        };
        match found {
            Some((i, prev)) if prev != m => {
                return Err(Issue::value(
                    format!("Observation.code.coding[{j}]"),
                    format!(
                        "means something else than Observation.code.coding[{i}]; send codings of one measurement"
                    ),
                ));
            }
            Some(_) => {}
            None => found = Some((j, m)),
        }
    }
    match found {
        None => Err(Issue::code_invalid(
            "Observation.code",
            format!(
                "has no coding the hub can map; known codes: {}",
                codes::known_observation_codes()
            ),
        )),
        Some((_, Meaning::Systolic | Meaning::Diastolic | Meaning::MeanPressure)) => {
            Err(Issue::not_supported(
                "Observation.code",
                "is one part of a blood pressure; send the panel (MDC 150020 or LOINC 85354-9) with systolic (150021 / 8480-6) and diastolic (150022 / 8462-4) components",
            ))
        }
        Some((_, m)) => Ok(m),
    }
}

fn effective(o: &Map<String, Value>, paths: &mut Paths) -> Result<DateTime<Utc>, Issue> {
    for key in ["effectiveDateTime", "effectiveInstant"] {
        let Some(v) = o.get(key) else { continue };
        let path = format!("Observation.{key}");
        let t = v
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .ok_or_else(|| {
                Issue::value(
                    &path,
                    "must be a date and time with seconds and a time zone, e.g. 2026-12-01T08:30:00+01:00 (the time on the device)",
                )
            })?;
        paths.time = path;
        return Ok(t.with_timezone(&Utc));
    }
    if o.contains_key("effectivePeriod") || o.contains_key("effectiveTiming") {
        return Err(Issue::not_supported(
            "Observation.effective[x]",
            "send the time of the measurement as effectiveDateTime",
        ));
    }
    Err(Issue::required(
        "Observation.effectiveDateTime",
        "is required: the time on the device",
    ))
}

fn subject(o: &Map<String, Value>, cx: &Context<'_>, paths: &mut Paths) -> Result<PersonId, Issue> {
    let s = o.get("subject").and_then(Value::as_object).ok_or_else(|| {
        Issue::required(
            "Observation.subject",
            "is required: the patient by identifier (fødselsnummer, D-nummer or FH-nummer OID)",
        )
    })?;
    if let Some(id) = s.get("identifier") {
        paths.subject = "Observation.subject.identifier.value".into();
        return person(id, "Observation.subject.identifier");
    }
    let reference = s.get("reference").and_then(Value::as_str).ok_or_else(|| {
        Issue::required(
            "Observation.subject.identifier",
            "is required: the patient by identifier (system urn:oid:2.16.578.1.12.4.1.4.1, .2 or .3)",
        )
    })?;
    paths.subject = "Observation.subject.reference".into();
    let patient = (cx.resolve)(reference)
        .filter(|p| p.get("resourceType").and_then(Value::as_str) == Some("Patient"))
        .ok_or_else(|| {
            Issue::value(
                "Observation.subject.reference",
                "points to no Patient entry in this Bundle; give subject.identifier instead",
            )
        })?;
    let ids = patient
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for id in ids {
        let known = id
            .get("system")
            .and_then(Value::as_str)
            .and_then(IdSystem::from_oid)
            .is_some();
        if known {
            return person(id, "Observation.subject.reference");
        }
    }
    Err(Issue::value(
        "Observation.subject.reference",
        "the Patient it points to has no identifier with a national id system (urn:oid:2.16.578.1.12.4.1.4.1, .2 or .3)",
    ))
}

/// A national id from an Identifier. The value is never echoed.
fn person(id: &Value, path: &str) -> Result<PersonId, Issue> {
    let system = id
        .get("system")
        .and_then(Value::as_str)
        .and_then(IdSystem::from_oid)
        .ok_or_else(|| {
            Issue::code_invalid(
                format!("{path}.system"),
                "must be urn:oid:2.16.578.1.12.4.1.4.1 (fødselsnummer), .2 (D-nummer) or .3 (FH-nummer)",
            )
        })?;
    let value = id.get("value").and_then(Value::as_str).ok_or_else(|| {
        Issue::required(format!("{path}.value"), "is required: the 11-digit number")
    })?;
    PersonId::parse(system, value).map_err(|e| Issue::value(format!("{path}.value"), e))
}

fn device(o: &Map<String, Value>, cx: &Context<'_>, paths: &mut Paths) -> Result<String, Issue> {
    let d = o.get("device").and_then(Value::as_object).ok_or_else(|| {
        Issue::required(
            "Observation.device",
            "is required: device.identifier.value, or device.reference to a Device entry in the Bundle",
        )
    })?;
    let (id, path) = if let Some(v) = d.get("identifier").and_then(|i| i.get("value")) {
        (v.as_str(), "Observation.device.identifier.value")
    } else if let Some(r) = d.get("reference").and_then(Value::as_str) {
        let from_entry = (cx.resolve)(r)
            .filter(|x| x.get("resourceType").and_then(Value::as_str) == Some("Device"))
            .and_then(|x| {
                let by_identifier = x
                    .get("identifier")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find_map(|i| i.get("value").and_then(Value::as_str));
                by_identifier.or_else(|| x.get("id").and_then(Value::as_str))
            });
        (
            from_entry.or_else(|| r.strip_prefix("Device/")),
            "Observation.device.reference",
        )
    } else {
        (None, "Observation.device")
    };
    paths.device = path.into();
    let id = id.ok_or_else(|| {
        Issue::value(
            path,
            "names no device: give device.identifier.value, or device.reference to a Device entry (with an identifier) in the Bundle",
        )
    })?;
    if id.is_empty() || id.len() > MAX_DEVICE_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Issue::value(
            path,
            format!(
                "the device id must be 1-{MAX_DEVICE_ID} printable ASCII characters without spaces (a serial number or EUI-64)"
            ),
        ));
    }
    Ok(id.to_string())
}

/// A UCUM quantity at `path`: (value, unit as the hub spells it, the
/// element the unit came from).
fn quantity(q: Option<&Value>, path: &str) -> Result<(f64, String, String), Issue> {
    let q = q.and_then(Value::as_object).ok_or_else(|| {
        Issue::required(
            path,
            "is required: value with a UCUM unit (system http://unitsofmeasure.org, code)",
        )
    })?;
    let value = match q.get("value") {
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| Issue::value(format!("{path}.value"), "is not a finite number"))?,
        Some(_) => {
            return Err(Issue::structure(
                format!("{path}.value"),
                "must be a JSON number",
            ));
        }
        None => return Err(Issue::required(format!("{path}.value"), "is required")),
    };
    let system = q.get("system").and_then(Value::as_str);
    if let Some(s) = system
        && s != UCUM_SYSTEM
    {
        return Err(Issue::code_invalid(
            format!("{path}.system"),
            format!(
                "is {:?}; only UCUM units ({UCUM_SYSTEM}) are mapped",
                echo(s)
            ),
        ));
    }
    let (unit, upath) = match (q.get("code").and_then(Value::as_str), system) {
        (Some(_), None) => {
            return Err(Issue::required(
                format!("{path}.system"),
                format!("is required when code is given: {UCUM_SYSTEM}"),
            ));
        }
        (Some(c), Some(_)) => (c, format!("{path}.code")),
        (None, _) => match q.get("unit").and_then(Value::as_str) {
            Some(u) => (u, format!("{path}.unit")),
            None => {
                return Err(Issue::required(
                    format!("{path}.code"),
                    format!("is required: the UCUM unit, with system {UCUM_SYSTEM}"),
                ));
            }
        },
    };
    Ok((value, codes::plain_ucum(unit), upath))
}

fn quantity_value(
    o: &Map<String, Value>,
    kind: MeasurementKind,
    paths: &mut Paths,
) -> Result<Measurement, Issue> {
    if !o.contains_key("valueQuantity")
        && let Some(k) = o.keys().find(|k| k.starts_with("value"))
    {
        return Err(Issue::not_supported(
            format!("Observation.{k}"),
            "send the measurement as valueQuantity",
        ));
    }
    let (value, unit, upath) = quantity(o.get("valueQuantity"), "Observation.valueQuantity")?;
    let spec = hub::quantity_kind(kind).ok_or_else(|| {
        Issue::not_supported("Observation.code", "this measurement has no quantity form")
    })?;
    if spec.unit(&unit).is_none() {
        return Err(Issue::code_invalid(
            &upath,
            format!(
                "{:?} is not a unit the hub accepts for {}; accepted UCUM units (case-sensitive): {}",
                echo(&unit),
                spec.name,
                spec.accepted_units()
            ),
        ));
    }
    paths.value = "Observation.valueQuantity.value".into();
    paths.unit = upath;
    Ok(Measurement::Quantity { kind, value, unit })
}

fn blood_pressure(o: &Map<String, Value>, paths: &mut Paths) -> Result<Measurement, Issue> {
    if o.contains_key("valueQuantity") {
        return Err(Issue::not_supported(
            "Observation.valueQuantity",
            "a blood-pressure panel carries its values in component: systolic (150021 / 8480-6) and diastolic (150022 / 8462-4)",
        ));
    }
    let comps = o
        .get("component")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Issue::required(
                "Observation.component",
                "is required for blood pressure: systolic (150021 / 8480-6) and diastolic (150022 / 8462-4)",
            )
        })?;
    let mmhg = hub::BLOOD_PRESSURE.unit.ucum;
    let (mut sys, mut dia) = (None, None);
    for (i, c) in comps.iter().enumerate() {
        let meaning = c
            .get("code")
            .and_then(|x| x.get("coding"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|cd| {
                codes::meaning(
                    cd.get("system").and_then(Value::as_str)?,
                    cd.get("code").and_then(Value::as_str)?,
                )
            });
        let slot = match meaning {
            Some(Meaning::Systolic) => &mut sys,
            Some(Meaning::Diastolic) => &mut dia,
            Some(Meaning::MeanPressure) => continue,
            _ => {
                return Err(Issue::code_invalid(
                    format!("Observation.component[{i}].code"),
                    "is not a blood-pressure component the hub takes: systolic (150021 / 8480-6), diastolic (150022 / 8462-4) or mean (150023 / 8478-0, not stored)",
                ));
            }
        };
        if slot.is_some() {
            return Err(Issue::value(
                format!("Observation.component[{i}].code"),
                "appears twice; send one systolic and one diastolic component",
            ));
        }
        let path = format!("Observation.component[{i}].valueQuantity");
        let (v, unit, upath) = quantity(c.get("valueQuantity"), &path)?;
        if unit != mmhg {
            return Err(Issue::code_invalid(
                upath,
                format!(
                    "{:?} is not accepted for blood pressure; send \"{mmhg}\"",
                    echo(&unit)
                ),
            ));
        }
        *slot = Some((v, format!("{path}.value")));
    }
    let (Some((systolic, sp)), Some((diastolic, dp))) = (sys, dia) else {
        return Err(Issue::required(
            "Observation.component",
            "needs both a systolic (150021 / 8480-6) and a diastolic (150022 / 8462-4) component",
        ));
    };
    paths.systolic = sp;
    paths.diastolic = dp;
    Ok(Measurement::BloodPressure {
        systolic,
        diastolic,
    })
}

/// `system|value` of the first identifier with a value, if any.
fn identifier(o: &Map<String, Value>) -> Result<Option<String>, Issue> {
    let Some(ids) = o.get("identifier") else {
        return Ok(None);
    };
    let ids = ids
        .as_array()
        .ok_or_else(|| Issue::structure("Observation.identifier", "must be an array"))?;
    Ok(ids.iter().find_map(|i| {
        let value = i.get("value").and_then(Value::as_str)?;
        let system = i.get("system").and_then(Value::as_str).unwrap_or("");
        Some(format!("{system}|{value}"))
    }))
}

/// The event id: from the Observation's identifier when it has one, else
/// from what was measured, where and when (never from the patient, so the
/// id carries nothing derived from a national id). Same resource, same id:
/// a repeated POST is a duplicate at the hub.
pub fn event_id(identifier: Option<&str>, ev: &Event) -> String {
    let mut h = Sha256::new();
    match identifier {
        Some(k) => {
            h.update(b"identifier\0");
            h.update(k.as_bytes());
        }
        None => {
            h.update(b"content\0");
            let canonical =
                serde_json::to_vec(&(ev.municipality, &ev.device.id, ev.occurred_at, &ev.payload))
                    .unwrap_or_default();
            h.update(&canonical);
        }
    }
    let d = h.finalize();
    let hex: String = d.iter().take(20).map(|b| format!("{b:02x}")).collect();
    let prefix = if identifier.is_some() {
        "fhir-i-"
    } else {
        "fhir-c-"
    };
    format!("{prefix}{hex}")
}

/// A code or unit as sent, cut short for a message.
fn echo(s: &str) -> String {
    s.chars()
        .take(MAX_ECHO)
        .filter(|c| !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests;
