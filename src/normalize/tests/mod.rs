//! Unit and property tests of the mapping: every kind, every rejection rule.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::domain::{Device, IdSystem, MeasurementKind, Payload, PersonId, Severity, synthetic};

fn event(payload: Payload) -> Event {
    Event {
        vendor: VendorId("acme-care".into()),
        event_id: "evt-1".into(),
        municipality: Orgnr::parse("958935420").unwrap_or_else(|e| panic!("{e}")),
        patient: PersonId::parse(IdSystem::Fnr, &synthetic::fnr(1))
            .unwrap_or_else(|e| panic!("{e}")),
        device: Device {
            id: "dev-42".into(),
            kind: "bp-monitor".into(),
        },
        occurred_at: Utc
            .with_ymd_and_hms(2024, 5, 1, 21, 30, 5)
            .single()
            .unwrap_or_else(|| panic!("time"))
            + chrono::Duration::milliseconds(250),
        payload,
    }
}

fn qty(kind: MeasurementKind, value: f64, unit: &str) -> Payload {
    Payload::Measurement(Measurement::Quantity {
        kind,
        value,
        unit: unit.into(),
    })
}

fn bp(systolic: f64, diastolic: f64) -> Payload {
    Payload::Measurement(Measurement::BloodPressure {
        systolic,
        diastolic,
    })
}

fn alarm_p(code: &str, severity: Severity, text: Option<&str>, zone: Option<&str>) -> Payload {
    Payload::Alarm(Alarm {
        code: code.into(),
        severity,
        text: text.map(Into::into),
        zone: zone.map(Into::into),
    })
}

fn note_p(text: &str, in_response_to: Option<&str>) -> Payload {
    Payload::Note(Note {
        text: text.into(),
        in_response_to: in_response_to.map(Into::into),
    })
}

fn ok(p: Payload) -> (Normalized, Value) {
    let n = normalize(&event(p)).unwrap_or_else(|e| panic!("unexpected rejection: {e}"));
    let v: Value = serde_json::from_str(&n.json).unwrap_or_else(|e| panic!("{e}: {}", n.json));
    (n, v)
}

fn err(p: Payload) -> Invalid {
    match normalize(&event(p)) {
        Ok(n) => panic!("expected a rejection, got {}", n.json),
        Err(e) => e,
    }
}

fn codings(v: &Value) -> Vec<(String, String)> {
    v["coding"]
        .as_array()
        .unwrap_or_else(|| panic!("no coding in {v}"))
        .iter()
        .map(|c| {
            (
                c["system"].as_str().unwrap_or_default().to_string(),
                c["code"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn loinc(code: &str) -> (String, String) {
    (codes::LOINC.to_string(), code.to_string())
}

#[test]
fn common_elements() {
    let (n, v) = ok(qty(MeasurementKind::HeartRate, 72.0, "/min"));
    let ev = event(qty(MeasurementKind::HeartRate, 72.0, "/min"));
    assert_eq!(n.id, resource_id(&ev.vendor, &ev.event_id));
    assert!(
        n.json
            .starts_with(r#"{"resourceType":"Observation","id":""#),
        "{}",
        n.json
    );
    assert!(!n.json.contains("\"meta\""));
    assert!(!n.json.contains('\n'), "compact JSON");
    assert_eq!(v["id"], n.id.to_string());
    assert_eq!(
        v["identifier"],
        serde_json::json!([{"system": "urn:knutepunkt:vendor:acme-care:event", "value": "evt-1"}])
    );
    assert_eq!(
        v["subject"]["identifier"]["system"],
        "urn:oid:2.16.578.1.12.4.1.4.1"
    );
    assert_eq!(v["subject"]["identifier"]["value"], synthetic::fnr(1));
    assert!(v["subject"].get("reference").is_none());
    assert_eq!(
        v["device"]["identifier"]["system"],
        "urn:knutepunkt:vendor:acme-care:device"
    );
    assert_eq!(v["device"]["identifier"]["value"], "dev-42");
    assert_eq!(v["device"]["display"], "bp-monitor");
    assert_eq!(v["effectiveDateTime"], "2024-05-01T21:30:05.25Z");
    assert!(v.get("performer").is_none());
    assert_eq!(n.category, "vital-signs");
    assert!(!n.urgent);
}

#[test]
fn device_without_kind_has_no_display() {
    let mut ev = event(qty(MeasurementKind::HeartRate, 72.0, "/min"));
    ev.device.kind = String::new();
    let n = normalize(&ev).unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_str(&n.json).unwrap_or_default();
    assert!(v["device"].get("display").is_none(), "{}", n.json);
}

#[test]
fn every_quantity_kind_and_unit_maps() {
    // (kind, value, unit, expected LOINC codes)
    let cases: &[(MeasurementKind, f64, &str, &[&str])] = &[
        (MeasurementKind::HeartRate, 72.0, "/min", &["8867-4"]),
        (
            MeasurementKind::OxygenSaturation,
            97.0,
            "%",
            &["59408-5", "2708-6"],
        ),
        (MeasurementKind::BodyWeight, 71.5, "kg", &["29463-7"]),
        (MeasurementKind::BodyWeight, 71500.0, "g", &["29463-7"]),
        (MeasurementKind::BodyWeight, 157.6, "[lb_av]", &["29463-7"]),
        (MeasurementKind::BodyTemperature, 37.2, "Cel", &["8310-5"]),
        (
            MeasurementKind::BodyTemperature,
            98.9,
            "[degF]",
            &["8310-5"],
        ),
        (MeasurementKind::RespiratoryRate, 16.0, "/min", &["9279-1"]),
        (MeasurementKind::BloodGlucose, 6.1, "mmol/L", &["15074-8"]),
        (MeasurementKind::BloodGlucose, 110.0, "mg/dL", &["2339-0"]),
    ];
    for &(kind, value, unit, loincs) in cases {
        let (n, v) = ok(qty(kind, value, unit));
        let want: Vec<_> = loincs.iter().map(|c| loinc(c)).collect();
        assert_eq!(codings(&v["code"]), want, "{kind:?} {unit}");
        assert_eq!(n.codes, want, "{kind:?} {unit}");
        assert_eq!(v["status"], "final");
        assert_eq!(
            codings(&v["category"][0]),
            vec![(
                codes::OBSERVATION_CATEGORY.to_string(),
                "vital-signs".to_string()
            )]
        );
        let q = &v["valueQuantity"];
        assert_eq!(q["value"].as_f64(), Some(value), "{kind:?}");
        assert_eq!(q["system"], "http://unitsofmeasure.org");
        assert_eq!(q["code"], unit);
        assert!(q["unit"].as_str().is_some_and(|u| !u.is_empty()));
        assert!(v.get("component").is_none());
    }
    // The table and this test agree on which units exist.
    let n_units: usize = codes::QUANTITY_KINDS.iter().map(|k| k.units.len()).sum();
    assert_eq!(n_units, cases.len());
}

#[test]
fn blood_pressure_is_a_panel() {
    let (n, v) = ok(bp(128.0, 82.0));
    assert_eq!(codings(&v["code"]), vec![loinc("85354-9")]);
    assert_eq!(n.codes, vec![loinc("85354-9")]);
    assert!(v.get("valueQuantity").is_none());
    let comps = v["component"].as_array().cloned().unwrap_or_default();
    assert_eq!(comps.len(), 2);
    assert_eq!(codings(&comps[0]["code"]), vec![loinc("8480-6")]);
    assert_eq!(codings(&comps[1]["code"]), vec![loinc("8462-4")]);
    assert_eq!(comps[0]["valueQuantity"]["value"].as_f64(), Some(128.0));
    assert_eq!(comps[1]["valueQuantity"]["value"].as_f64(), Some(82.0));
    for c in &comps {
        assert_eq!(c["valueQuantity"]["code"], "mm[Hg]");
        assert_eq!(c["valueQuantity"]["system"], "http://unitsofmeasure.org");
    }
}

#[test]
fn quantity_rejections() {
    use MeasurementKind::*;
    let value_field = "measurement.quantity.value";
    let cases: &[(MeasurementKind, f64, &str, &str)] = &[
        (HeartRate, f64::NAN, "/min", "finite"),
        (HeartRate, f64::INFINITY, "/min", "finite"),
        (BodyWeight, f64::NEG_INFINITY, "kg", "finite"),
        (OxygenSaturation, 100.5, "%", "between 0 and 100 %"),
        (OxygenSaturation, -1.0, "%", "between 0 and 100 %"),
        (BodyWeight, 0.0, "kg", "more than 0 and at most 700 kg"),
        (BodyWeight, -3.0, "kg", "more than 0"),
        (BodyWeight, 700.01, "kg", "at most 700 kg"),
        (BodyWeight, 700_001.0, "g", "at most 700000 g"),
        (BodyWeight, 1544.0, "[lb_av]", "at most 1543.236 [lb_av]"),
        (BodyTemperature, 24.9, "Cel", "between 25 and 45 Cel"),
        (BodyTemperature, 45.1, "Cel", "between 25 and 45 Cel"),
        (
            BodyTemperature,
            113.5,
            "[degF]",
            "between 77 and 113 [degF] (between 25 and 45 Cel)",
        ),
        (BodyTemperature, 76.0, "[degF]", "between 77 and 113 [degF]"),
        (HeartRate, 0.0, "/min", "between 1 and 350 /min"),
        (HeartRate, 351.0, "/min", "between 1 and 350"),
        (RespiratoryRate, 0.5, "/min", "between 1 and 150 /min"),
        (RespiratoryRate, 151.0, "/min", "between 1 and 150"),
        (
            BloodGlucose,
            0.0,
            "mmol/L",
            "more than 0 and at most 100 mmol/L",
        ),
        (BloodGlucose, 100.1, "mmol/L", "at most 100 mmol/L"),
        (BloodGlucose, 1801.7, "mg/dL", "at most 1801.6 mg/dL"),
        (BloodGlucose, -5.0, "mg/dL", "more than 0"),
    ];
    for &(kind, value, unit, needle) in cases {
        let e = err(qty(kind, value, unit));
        assert_eq!(e.field, value_field, "{kind:?} {value} {unit}");
        assert!(
            e.reason.contains(needle),
            "{kind:?} {value} {unit}: {}",
            e.reason
        );
    }
}

#[test]
fn boundaries_are_accepted() {
    use MeasurementKind::*;
    let cases: &[(MeasurementKind, f64, &str)] = &[
        (OxygenSaturation, 0.0, "%"),
        (OxygenSaturation, 100.0, "%"),
        (BodyWeight, 700.0, "kg"),
        (BodyWeight, 700_000.0, "g"),
        (BodyWeight, 0.001, "kg"),
        (BodyTemperature, 25.0, "Cel"),
        (BodyTemperature, 45.0, "Cel"),
        (BodyTemperature, 77.0, "[degF]"),
        (BodyTemperature, 113.0, "[degF]"),
        (HeartRate, 1.0, "/min"),
        (HeartRate, 350.0, "/min"),
        (RespiratoryRate, 1.0, "/min"),
        (RespiratoryRate, 150.0, "/min"),
        (BloodGlucose, 100.0, "mmol/L"),
        (BloodGlucose, 1801.6, "mg/dL"),
    ];
    for &(kind, value, unit) in cases {
        let (_, v) = ok(qty(kind, value, unit));
        assert_eq!(
            v["valueQuantity"]["value"].as_f64(),
            Some(value),
            "{kind:?} {unit}"
        );
    }
}

#[test]
fn negative_zero_is_written_as_zero() {
    let (n, _) = ok(qty(MeasurementKind::OxygenSaturation, -0.0, "%"));
    assert!(n.json.contains(r#""value":0.0"#), "{}", n.json);
}

#[test]
fn unit_not_accepted_lists_accepted_units() {
    let cases: &[(MeasurementKind, &str, &str)] = &[
        (MeasurementKind::BodyWeight, "lb", r#""kg", "g", "[lb_av]""#),
        (
            MeasurementKind::BodyTemperature,
            "cel",
            r#""Cel", "[degF]""#,
        ),
        (MeasurementKind::HeartRate, "bpm", r#""/min""#),
        (
            MeasurementKind::BloodGlucose,
            "mmol/l",
            r#""mmol/L", "mg/dL""#,
        ),
        (MeasurementKind::OxygenSaturation, "", r#""%""#),
    ];
    for &(kind, unit, accepted) in cases {
        let e = err(qty(kind, 50.0, unit));
        assert_eq!(e.field, "measurement.quantity.unit");
        assert!(e.reason.contains(accepted), "{}", e.reason);
    }
}

#[test]
fn unit_that_looks_like_a_person_number_is_not_echoed() {
    let f = synthetic::fnr(9);
    let e = err(qty(MeasurementKind::HeartRate, 50.0, &f));
    assert!(!e.reason.contains(&f), "{}", e.reason);
    assert!(!e.to_string().contains(&f));
}

#[test]
fn blood_pressure_as_quantity_is_rejected() {
    let e = err(qty(MeasurementKind::BloodPressure, 120.0, "mm[Hg]"));
    assert_eq!(e.field, "measurement.quantity");
}

#[test]
fn blood_pressure_rejections() {
    let sys = "measurement.blood_pressure.systolic";
    let dia = "measurement.blood_pressure.diastolic";
    let cases: &[(f64, f64, &str, &str)] = &[
        (f64::NAN, 80.0, sys, "finite"),
        (120.0, f64::NAN, dia, "finite"),
        (19.0, 10.0, sys, "between 20 and 350 mm[Hg]"),
        (351.0, 80.0, sys, "between 20 and 350 mm[Hg]"),
        (120.0, 9.0, dia, "between 10 and 300 mm[Hg]"),
        (320.0, 301.0, dia, "between 10 and 300 mm[Hg]"),
        (80.0, 120.0, sys, "higher than diastolic"),
        (90.0, 90.0, sys, "higher than diastolic"),
    ];
    for &(s, d, field, needle) in cases {
        let e = err(bp(s, d));
        assert_eq!(e.field, field, "{s}/{d}");
        assert!(e.reason.contains(needle), "{s}/{d}: {}", e.reason);
    }
    ok(bp(20.5, 10.0));
    ok(bp(350.0, 300.0));
}

#[test]
fn dnr_subject_uses_dnr_oid() {
    let mut ev = event(note_p("hei", None));
    ev.patient =
        PersonId::parse(IdSystem::Dnr, &synthetic::dnr(3)).unwrap_or_else(|e| panic!("{e}"));
    let n = normalize(&ev).unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_str(&n.json).unwrap_or_default();
    assert_eq!(
        v["subject"]["identifier"]["system"],
        "urn:oid:2.16.578.1.12.4.1.4.2"
    );
}

#[test]
fn odd_vendor_ids_make_valid_uris() {
    assert_eq!(
        event_identifier_system(&VendorId("acme care/æ".into())),
        "urn:knutepunkt:vendor:acme%20care%2F%C3%A6:event"
    );
    assert_eq!(
        device_identifier_system(&VendorId("a.b_c-d~e".into())),
        "urn:knutepunkt:vendor:a.b_c-d~e:device"
    );
}

#[test]
fn no_error_mentions_the_patient() {
    let f = synthetic::fnr(1);
    for p in [
        qty(MeasurementKind::HeartRate, f64::NAN, "/min"),
        qty(MeasurementKind::HeartRate, 50.0, "x"),
        bp(50.0, 90.0),
        alarm_p("9.9", Severity::Red, None, None),
        note_p("", None),
    ] {
        let e = err(p);
        assert!(!e.to_string().contains(&f));
    }
}

#[test]
fn empty_device_id_is_rejected() {
    let mut ev = event(note_p("hei", None));
    ev.device.id = String::new();
    assert_eq!(normalize(&ev).err().map(|e| e.field), Some("device.id"));
}

fn any_quantity() -> impl Strategy<Value = (MeasurementKind, f64, &'static str)> {
    // Pick a kind and unit from the table, and a value inside its limits.
    (
        0..codes::QUANTITY_KINDS.len(),
        any::<prop::sample::Index>(),
        0.0..=1.0f64,
    )
        .prop_map(|(k, ui, t)| {
            let spec = &codes::QUANTITY_KINDS[k];
            let u = ui.get(spec.units);
            let lo = spec.limits.min;
            let hi = spec.limits.max;
            // Stay strictly inside so the conversion back cannot cross a bound.
            let c = lo + (hi - lo) * (0.001 + 0.998 * t);
            (spec.kind, u.from_canonical(c), u.ucum)
        })
}

proptest! {
    #[test]
    fn any_valid_quantity_gives_parseable_json_with_the_right_id(
        (kind, value, unit) in any_quantity(),
        event_id in "[!-~]{1,128}",
    ) {
        let mut ev = event(qty(kind, value, unit));
        ev.event_id = event_id.clone();
        let n = normalize(&ev).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let v: Value = serde_json::from_str(&n.json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(n.id, resource_id(&ev.vendor, &event_id));
        let id = n.id.to_string();
        prop_assert_eq!(v["id"].as_str(), Some(id.as_str()));
        prop_assert_eq!(v["identifier"][0]["value"].as_str(), Some(event_id.as_str()));
        // serde_json's default float parser is not exact: read the raw text.
        let raw = n.json.split(r#""valueQuantity":{"value":"#).nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|num| num.parse::<f64>().ok());
        prop_assert_eq!(raw, Some(value), "json: {}", n.json);
        prop_assert!(n.json.starts_with(r#"{"resourceType":"Observation""#), "json: {}", n.json);
        prop_assert!(!n.json.contains("\"meta\""));
    }

    #[test]
    fn any_nan_is_rejected(kind_i in 0..codes::QUANTITY_KINDS.len(), bits in any::<u64>(), which in 0..3u8) {
        // Every NaN bit pattern, both infinities.
        let bad = match which {
            0 => f64::from_bits(bits | 0x7ff0_0000_0000_0001),
            1 => f64::INFINITY,
            _ => f64::NEG_INFINITY,
        };
        prop_assume!(!bad.is_finite());
        let spec = &codes::QUANTITY_KINDS[kind_i];
        let e = normalize(&event(qty(spec.kind, bad, spec.canonical_unit())));
        prop_assert_eq!(e.err().map(|e| e.field), Some("measurement.quantity.value"));
        let e = normalize(&event(bp(bad, 80.0)));
        prop_assert_eq!(e.err().map(|e| e.field), Some("measurement.blood_pressure.systolic"));
    }

    #[test]
    fn any_blood_pressure_is_accepted_iff_possible(s in -10.0..400.0f64, d in -10.0..400.0f64) {
        let possible = (20.0..=350.0).contains(&s) && (10.0..=300.0).contains(&d) && s > d;
        let r = normalize(&event(bp(s, d)));
        prop_assert_eq!(r.is_ok(), possible, "{}/{}: {:?}", s, d, r.err());
    }

    #[test]
    fn any_note_text_is_carried_trimmed(text in "\\PC{1,300}", reply in proptest::option::of("[a-z0-9-]{1,20}")) {
        let r = normalize(&event(note_p(&text, reply.as_deref())));
        if text.trim().is_empty() {
            prop_assert!(r.is_err());
        } else {
            let n = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let v: Value = serde_json::from_str(&n.json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(v["payload"][0]["contentString"].as_str(), Some(text.trim()));
            prop_assert_eq!(v.get("inResponseTo").is_some(), reply.is_some());
        }
    }
}

#[test]
fn first_member_reads_identifier_and_subject_of_every_kind() {
    // Free text that spells both members, to be read past.
    let tricky =
        r#"x","identifier":[{"system":"a","value":"b"}],"subject":{"identifier":{"value":"c"}}"#;
    let payloads = [
        qty(MeasurementKind::BodyWeight, 70.0, "kg"),
        bp(120.0, 80.0),
        alarm_p("4.1", Severity::Red, Some(tricky), Some(tricky)),
        note_p(tricky, Some("evt-0")),
    ];
    for p in payloads {
        let (n, v) = ok(p);
        let ids: Option<Value> = member::first_member(&n.json, "identifier", '[');
        assert_eq!(ids.as_ref(), Some(&v["identifier"]), "{}", n.json);
        let subject: Option<Value> = member::first_member(&n.json, "subject", '{');
        assert_eq!(subject.as_ref(), Some(&v["subject"]), "{}", n.json);
    }
}

mod communication;
