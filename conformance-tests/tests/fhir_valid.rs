//! Everything `normalize` can produce is valid FHIR R4 (4.0.1) according to
//! an independent implementation (fhir.resources, Python), in the form the
//! store serves it: with `meta.lastUpdated` spliced in after the opening `{`.
//!
//! The corpus covers every measurement kind with every accepted unit (at both
//! limits and in between), blood pressure, every alarm code at every severity
//! with and without vendor text and zone, and notes with and without
//! `in_response_to`.

use chrono::{SecondsFormat, TimeZone, Utc};
use conformance_tests::fhir_validator;
use knutepunkt::domain::{
    Alarm, Device, Event, IdSystem, Measurement, Note, Orgnr, Payload, PersonId, Severity,
    VendorId, synthetic,
};
use knutepunkt::normalize::{MAX_ALARM_TEXT, MAX_NOTE_TEXT, MAX_ZONE, codes, normalize};
use serde_json::Value;

/// Builds events with distinct ids, patients and times.
struct Corpus {
    events: Vec<Event>,
}

impl Corpus {
    fn push(&mut self, payload: Payload) {
        let n = self.events.len() as u32;
        let patient = if n % 5 == 4 {
            PersonId::parse(IdSystem::Dnr, &synthetic::dnr(n))
        } else {
            PersonId::parse(IdSystem::Fnr, &synthetic::fnr(n))
        }
        .unwrap_or_else(|e| panic!("synthetic id: {e}"));
        let base = Utc
            .with_ymd_and_hms(2025, 1, 15, 22, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("time"));
        self.events.push(Event {
            vendor: VendorId("acme-care".into()),
            event_id: format!("evt-{n}"),
            municipality: Orgnr::parse("958935420").unwrap_or_else(|e| panic!("{e}")),
            patient,
            device: Device {
                id: format!("dev-{}", n % 7),
                // Every third device has no kind: then no display.
                kind: if n.is_multiple_of(3) {
                    String::new()
                } else {
                    "sensor".into()
                },
            },
            // Whole seconds, milliseconds and microseconds all occur.
            occurred_at: base + chrono::Duration::microseconds(i64::from(n) * 1_000_117),
            payload,
        });
    }
}

fn corpus() -> Corpus {
    let mut c = Corpus { events: Vec::new() };

    for kind in codes::QUANTITY_KINDS {
        for unit in kind.units {
            let lo = unit.from_canonical(kind.limits.min);
            let hi = unit.from_canonical(kind.limits.max);
            let mut values = vec![(lo + hi) / 2.0, hi, lo + (hi - lo) / 3.0];
            if !kind.limits.min_exclusive {
                values.push(lo);
            }
            for value in values {
                c.push(Payload::Measurement(Measurement::Quantity {
                    kind: kind.kind,
                    value,
                    unit: unit.ucum.into(),
                }));
            }
        }
    }
    for (systolic, diastolic) in [(120.0, 80.0), (350.0, 300.0), (20.5, 10.0), (141.5, 92.25)] {
        c.push(Payload::Measurement(Measurement::BloodPressure {
            systolic,
            diastolic,
        }));
    }

    let long_text = "Bruker funnet på gulvet, hjelp tilkalt. ".repeat(30);
    let long_text: String = long_text.chars().take(MAX_ALARM_TEXT).collect();
    let long_zone: String = "soverom ".repeat(40).chars().take(MAX_ZONE).collect();
    let texts = [
        None,
        Some("Trykket på alarmknappen\nto ganger"),
        Some(long_text.as_str()),
    ];
    let zones = [None, Some("bedroom"), Some(long_zone.as_str())];
    for alert in codes::ALERT_CODES {
        for severity in [
            Severity::NotReported,
            Severity::Green,
            Severity::Yellow,
            Severity::Red,
        ] {
            for (i, text) in texts.iter().enumerate() {
                for (j, zone) in zones.iter().enumerate() {
                    // All combinations for one severity, the diagonal for the rest.
                    if severity != Severity::Red && i != j {
                        continue;
                    }
                    c.push(Payload::Alarm(Alarm {
                        code: alert.code.into(),
                        severity,
                        text: text.map(Into::into),
                        zone: zone.map(Into::into),
                    }));
                }
            }
        }
    }

    let long_note: String = "Tilsyn utført, bruker sover. "
        .repeat(200)
        .chars()
        .take(MAX_NOTE_TEXT)
        .collect();
    for (text, reply) in [
        ("Ringte bruker, alt i orden.", None),
        ("Tilsyn utført.", Some("evt-100")),
        ("x", Some("evt-0")),
        (long_note.as_str(), Some("alarm with spaces & ümlaut")),
        ("Linje 1\nLinje 2\tmed tab", None),
    ] {
        c.push(Payload::Note(Note {
            text: text.into(),
            in_response_to: reply.map(Into::into),
        }));
    }
    c
}

/// What the store does before serving a resource: `meta.lastUpdated` right
/// after the opening `{`.
fn with_meta(json: &str, seq: i64) -> String {
    assert!(json.starts_with("{\"resourceType\":\""), "{json}");
    let instant = Utc
        .timestamp_micros(1_736_978_400_000_000 + seq * 1_234)
        .single()
        .unwrap_or_else(|| panic!("instant"))
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    format!(
        "{{\"meta\":{{\"lastUpdated\":\"{instant}\"}},{}",
        &json[1..]
    )
}

fn normalized_corpus() -> Vec<Value> {
    let corpus = corpus();
    corpus
        .events
        .iter()
        .enumerate()
        .map(|(i, ev)| {
            let n = normalize(ev).unwrap_or_else(|e| panic!("event {} refused: {e}", ev.event_id));
            let json = with_meta(&n.json, i as i64);
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
        })
        .collect()
}

fn check(result: Result<(), String>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) if fhir_validator::is_skip(&e) => {
            conformance_tests::harness::skip("FHIR validation", &e);
            false
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn everything_normalize_produces_is_valid_fhir_r4() {
    let resources = normalized_corpus();
    // Every kind of output is in the corpus.
    let kinds: std::collections::HashSet<&str> = resources
        .iter()
        .filter_map(|r| r["resourceType"].as_str())
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(resources.len() > 150, "{}", resources.len());
    if check(fhir_validator::validate(&resources)) {
        eprintln!("{} resources valid", resources.len());
    }
}

#[test]
fn the_validator_is_not_vacuous() {
    // Make sure a valid resource passes (or python is missing), so the
    // rejections below are about the defects, not the setup.
    let good = normalized_corpus().swap_remove(0);
    if !check(fhir_validator::validate(std::slice::from_ref(&good))) {
        return;
    }
    let mut unknown = good.clone();
    unknown["colour"] = Value::from("blue");
    let mut missing = good.clone();
    if let Some(o) = missing.as_object_mut() {
        o.remove("status");
    }
    let mut bad_time = good.clone();
    bad_time["effectiveDateTime"] = Value::from("15.01.2025 22:00");
    for (what, bad) in [
        ("unknown element", unknown),
        ("missing status", missing),
        ("bad dateTime", bad_time),
    ] {
        let r = fhir_validator::validate(&[good.clone(), bad]);
        match r {
            Ok(()) => panic!("validator accepted a resource with a {what}"),
            Err(e) => assert!(
                e.contains("FAIL [1]") && !e.contains("FAIL [0]"),
                "{what}: {e}"
            ),
        }
    }
}
