//! SenML (RFC 8428, JSON) readings → the hub's measurement kinds and UCUM
//! units.
//!
//! Why it exists: SenML is what many sensor platforms already emit, so a
//! device integrator should not need a hub-specific format for readings.
//! Hand-written rather than a crate: the SenML crates on crates.io are
//! unmaintained or no_std-oriented, and the part we need (base-field
//! resolution of RFC 8428 §4.6 over a JSON array) is small and is tested
//! here. The name and unit tables are data ([`NAMES`], [`UNITS`]) and can
//! grow without code changes.

use serde::Deserialize;

/// The hub's measurement kinds, as the gateway knows them (mapped to the
/// wire enum in `wire.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    HeartRate,
    OxygenSaturation,
    BodyWeight,
    BodyTemperature,
    RespiratoryRate,
    BloodGlucose,
    /// Half of a blood pressure: two records at the same time make one.
    Systolic,
    Diastolic,
}

/// SenML measurement names → kind. The name is the last `:`-separated
/// segment of the resolved name (`bn` + `n`), so both `"n":"heart-rate"`
/// and `"bn":"urn:dev:mac:0024befffe804ff1:","n":"heart-rate"` work.
pub const NAMES: &[(&str, Kind)] = &[
    ("heart-rate", Kind::HeartRate),
    ("pulse", Kind::HeartRate),
    ("spo2", Kind::OxygenSaturation),
    ("oxygen-saturation", Kind::OxygenSaturation),
    ("body-weight", Kind::BodyWeight),
    ("weight", Kind::BodyWeight),
    ("body-temperature", Kind::BodyTemperature),
    ("temperature", Kind::BodyTemperature),
    ("respiratory-rate", Kind::RespiratoryRate),
    ("blood-glucose", Kind::BloodGlucose),
    ("glucose", Kind::BloodGlucose),
    ("systolic", Kind::Systolic),
    ("diastolic", Kind::Diastolic),
];

/// SenML units (RFC 8428 §12.1 registry, and `mmHg`, `mmol/l`, `mg/dl`
/// which sensor platforms use but the registry lacks) → UCUM. The hub then
/// checks that the unit fits the kind.
pub const UNITS: &[(&str, &str)] = &[
    ("beat/min", "/min"),
    ("1/min", "/min"),
    ("/min", "/min"),
    ("%", "%"),
    ("kg", "kg"),
    ("g", "g"),
    ("lb", "[lb_av]"),
    ("Cel", "Cel"),
    ("mmHg", "mm[Hg]"),
    ("mm[Hg]", "mm[Hg]"),
    ("mmol/l", "mmol/L"),
    ("mmol/L", "mmol/L"),
    ("mg/dl", "mg/dL"),
    ("mg/dL", "mg/dL"),
];

/// Times below 2^28 s are relative to "now" in SenML (RFC 8428 §4.5.3).
const RELATIVE_LIMIT: f64 = 268_435_456.0;

/// One SenML record as sent (base fields optional). Unknown fields are
/// ignored, except "must understand" ones ending in `_` (RFC 8428 §4.4).
#[derive(Debug, Deserialize, Default)]
struct Record {
    bn: Option<String>,
    bs: Option<f64>,
    bt: Option<f64>,
    bu: Option<String>,
    bv: Option<f64>,
    bver: Option<u32>,
    n: Option<String>,
    u: Option<String>,
    v: Option<f64>,
    vs: Option<String>,
    vb: Option<bool>,
    vd: Option<String>,
    s: Option<f64>,
    t: Option<f64>,
    ut: Option<f64>,
    #[serde(flatten)]
    extra: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A resolved, mapped reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The full resolved name (`bn` + `n`): part of the event id.
    pub name: String,
    pub kind: Kind,
    /// Seconds since the epoch (absolute).
    pub time: f64,
    pub value: f64,
    /// UCUM.
    pub unit: String,
}

/// Parses a SenML JSON pack and maps every record, or says which record is
/// wrong and how.
pub fn parse(payload: &[u8]) -> Result<Vec<Reading>, String> {
    let pack: Vec<Record> = serde_json::from_slice(payload)
        .map_err(|e| format!("not a SenML JSON pack (RFC 8428: a JSON array of records): {e}"))?;
    if pack.is_empty() {
        return Err("the SenML pack has no records".into());
    }
    let mut base = Base::default();
    let mut out = Vec::with_capacity(pack.len());
    for (i, mut r) in pack.into_iter().enumerate() {
        let at = format!("record {}", i + 1);
        supported(&r, &at)?;
        base.take_from(&mut r);
        out.push(reading(r, &base, &at)?);
    }
    Ok(out)
}

/// The base fields in force (RFC 8428 §4.6): a record's base fields apply
/// to it and to every record after it until another record sets them.
#[derive(Default)]
struct Base {
    bn: String,
    bt: f64,
    bu: Option<String>,
    bv: f64,
}

impl Base {
    /// Takes the record's base fields, those it sets.
    fn take_from(&mut self, r: &mut Record) {
        if let Some(x) = r.bn.take() {
            self.bn = x;
        }
        if let Some(x) = r.bt {
            self.bt = x;
        }
        if let Some(x) = r.bu.take() {
            self.bu = Some(x);
        }
        if let Some(x) = r.bv {
            self.bv = x;
        }
    }
}

/// Refuses what this gateway does not handle: a newer SenML version,
/// "must understand" fields, and values that are not numbers.
fn supported(r: &Record, at: &str) -> Result<(), String> {
    if let Some(v) = r.bver
        && v > 10
    {
        return Err(format!("{at}: SenML version {v} is not supported (10 is)"));
    }
    if let Some(k) = r.extra.keys().find(|k| k.ends_with('_')) {
        return Err(format!(
            "{at}: field {k:?} must be understood (it ends in '_') and this gateway does not"
        ));
    }
    if r.vs.is_some() || r.vb.is_some() || r.vd.is_some() || r.s.is_some() || r.bs.is_some() {
        return Err(format!(
            "{at}: only numeric values (\"v\") are mapped; string, boolean, data and sum values are not"
        ));
    }
    Ok(())
}

/// Maps one record, with the base fields in force, to a reading: its
/// measurement kind, absolute time, value and UCUM unit.
fn reading(r: Record, base: &Base, at: &str) -> Result<Reading, String> {
    let _ = r.ut;
    let name = format!("{}{}", base.bn, r.n.unwrap_or_default());
    if name.is_empty() {
        return Err(format!("{at}: has no name (\"n\" or \"bn\")"));
    }
    let short = name.rsplit(':').next().unwrap_or(&name);
    let kind = NAMES
        .iter()
        .find(|(n, _)| *n == short)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            format!(
                "{at}: name {short:?} is not a known measurement; use one of {}",
                NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )
        })?;
    let Some(v) = r.v else {
        return Err(format!("{at} ({short}): has no value (\"v\")"));
    };
    let value = base.bv + v;
    if !value.is_finite() {
        return Err(format!("{at} ({short}): value is not a finite number"));
    }
    let time = base.bt + r.t.unwrap_or(0.0);
    if !(RELATIVE_LIMIT..1e11).contains(&time) {
        return Err(format!(
            "{at} ({short}): give the absolute time of the reading in \"t\" or \"bt\" \
             (seconds since 1970); relative or missing times cannot be deduplicated"
        ));
    }
    let senml_unit =
        r.u.or_else(|| base.bu.clone())
            .ok_or_else(|| format!("{at} ({short}): has no unit (\"u\" or \"bu\")"))?;
    let unit = UNITS
        .iter()
        .find(|(s, _)| *s == senml_unit)
        .map(|(_, u)| u.to_string())
        .ok_or_else(|| {
            format!(
                "{at} ({short}): unit {senml_unit:?} is not mapped; use one of {}",
                UNITS.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
            )
        })?;
    Ok(Reading {
        name,
        kind,
        time,
        value,
        unit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_base_fields() {
        let p = br#"[
            {"bn":"urn:dev:mac:0024befffe804ff1:","bt":1.7645832e9,"bu":"beat/min","n":"heart-rate","v":72},
            {"n":"spo2","u":"%","v":97,"t":1},
            {"n":"systolic","u":"mmHg","v":142},
            {"n":"diastolic","u":"mmHg","v":88}
        ]"#;
        let r = parse(p).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].name, "urn:dev:mac:0024befffe804ff1:heart-rate");
        assert_eq!((r[0].kind, r[0].unit.as_str()), (Kind::HeartRate, "/min"));
        assert_eq!(r[1].time, 1.7645832e9 + 1.0);
        assert_eq!(r[2].unit, "mm[Hg]");
        assert_eq!(r[3].kind, Kind::Diastolic);
    }

    #[test]
    fn says_what_is_wrong() {
        let e = |p: &[u8]| parse(p).unwrap_err();
        assert!(e(b"{}").contains("JSON array"));
        assert!(e(b"[]").contains("no records"));
        assert!(e(br#"[{"n":"heart-rate","u":"beat/min","v":70}]"#).contains("absolute time"));
        assert!(e(br#"[{"n":"mood","u":"%","v":1,"t":1.7e9}]"#).contains("\"mood\""));
        assert!(e(br#"[{"n":"spo2","u":"ppm","v":1,"t":1.7e9}]"#).contains("\"ppm\""));
        assert!(e(br#"[{"n":"spo2","vs":"x","t":1.7e9}]"#).contains("numeric"));
        assert!(e(br#"[{"n":"spo2","u":"%","t":1.7e9}]"#).contains("no value"));
        assert!(e(br#"[{"n":"spo2","u":"%","v":1,"t":1.7e9,"x_":1}]"#).contains("\"x_\""));
        assert!(parse(br#"[{"n":"spo2","u":"%","v":1,"t":1.7e9,"note":1}]"#).is_ok());
    }
}
