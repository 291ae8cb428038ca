//! Alarms and notes: codes, severities, texts and their limits.

use super::*;

#[test]
fn every_alarm_code_and_severity_maps() {
    let sev = [
        (Severity::NotReported, "routine", false),
        (Severity::Green, "routine", false),
        (Severity::Yellow, "asap", true),
        (Severity::Red, "stat", true),
    ];
    for a in codes::ALERT_CODES {
        for &(s, priority, urgent) in &sev {
            let (n, v) = ok(alarm_p(a.code, s, None, None));
            assert_eq!(n.resource_type, ResourceType::Communication);
            assert!(
                n.json
                    .starts_with(r#"{"resourceType":"Communication","id":""#)
            );
            assert_eq!(n.category, "alert");
            assert_eq!(n.urgent, urgent);
            assert_eq!(v["status"], "completed");
            assert_eq!(v["priority"], priority);
            assert_eq!(
                codings(&v["category"][0]),
                vec![(
                    codes::COMMUNICATION_CATEGORY.to_string(),
                    "alert".to_string()
                )]
            );
            let reasons = v["reasonCode"].as_array().cloned().unwrap_or_default();
            assert_eq!(reasons.len(), 1, "one CodeableConcept");
            let mut want = vec![(codes::VKP_ALERT.to_string(), a.code.to_string())];
            if let Some(sct) = a.snomed {
                want.push((codes::SNOMED_CT.to_string(), sct.code.to_string()));
            }
            assert_eq!(codings(&reasons[0]), want);
            assert_eq!(reasons[0]["coding"][0]["display"], a.display);
            assert_eq!(n.codes, want);
            assert_eq!(v["payload"][0]["contentString"], a.display);
            assert_eq!(v["sent"], "2024-05-01T21:30:05.25Z");
            assert_eq!(v["sender"]["identifier"]["value"], "dev-42");
            assert_eq!(
                v["recipient"],
                serde_json::json!([{
                    "type": "Organization",
                    "identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.101", "value": "958935420"}
                }])
            );
            assert_eq!(v["subject"]["identifier"]["value"], synthetic::fnr(1));
            assert!(v.get("inResponseTo").is_none());
        }
    }
}

#[test]
fn fall_has_snomed() {
    let (n, _) = ok(alarm_p("4.1", Severity::Red, None, None));
    assert!(
        n.codes
            .contains(&(codes::SNOMED_CT.to_string(), "1912002".to_string()))
    );
}

#[test]
fn alarm_payload_text_and_zone() {
    let (_, v) = ok(alarm_p(
        "4.2",
        Severity::Yellow,
        Some("Bruker ute av seng"),
        Some("bedroom"),
    ));
    assert_eq!(
        v["payload"][0]["contentString"],
        "Left the bed\nBruker ute av seng\nSone: bedroom"
    );
    let (_, v) = ok(alarm_p("4.2", Severity::Yellow, None, Some("bedroom")));
    assert_eq!(
        v["payload"][0]["contentString"],
        "Left the bed\nSone: bedroom"
    );
    let (_, v) = ok(alarm_p(
        "4.2",
        Severity::Yellow,
        Some("  hei  "),
        Some("  "),
    ));
    assert_eq!(v["payload"][0]["contentString"], "Left the bed\nhei");
}

#[test]
fn unknown_alarm_code_is_rejected() {
    for code in ["4.99", "", "4.1 ", "fall", "5"] {
        let e = err(alarm_p(code, Severity::Red, None, None));
        assert_eq!(e.field, "alarm.code");
        assert!(e.reason.contains("4.13"), "lists valid codes: {}", e.reason);
        assert!(e.reason.contains(codes::VKP_ALERT));
    }
    let e = err(alarm_p("4.99", Severity::Red, None, None));
    assert!(
        !e.reason.contains("4.99"),
        "copies no value sent: {}",
        e.reason
    );
    let f = synthetic::fnr(4);
    let e = err(alarm_p(&f, Severity::Red, None, None));
    assert!(!e.reason.contains(&f));
}

#[test]
fn alarm_text_limits() {
    let long = "x".repeat(MAX_ALARM_TEXT + 1);
    let e = err(alarm_p("4.1", Severity::Red, Some(&long), None));
    assert_eq!(e.field, "alarm.text");
    assert!(e.reason.contains("1000"), "{}", e.reason);
    ok(alarm_p(
        "4.1",
        Severity::Red,
        Some(&"æ".repeat(MAX_ALARM_TEXT)),
        None,
    ));
    let long = "x".repeat(MAX_ZONE + 1);
    let e = err(alarm_p("4.1", Severity::Red, None, Some(&long)));
    assert_eq!(e.field, "alarm.zone");
    assert!(e.reason.contains("200"), "{}", e.reason);
    ok(alarm_p(
        "4.1",
        Severity::Red,
        None,
        Some(&"ø".repeat(MAX_ZONE)),
    ));
    let e = err(alarm_p("4.1", Severity::Red, Some("a\u{7}b"), None));
    assert_eq!(e.field, "alarm.text");
    ok(alarm_p(
        "4.1",
        Severity::Red,
        Some("line 1\nline 2\ttab"),
        None,
    ));
}

#[test]
fn note_maps() {
    let (n, v) = ok(note_p("Ringte bruker, alt i orden.", None));
    assert_eq!(n.resource_type, ResourceType::Communication);
    assert_eq!(n.category, "notification");
    assert!(n.codes.is_empty());
    assert!(!n.urgent);
    assert_eq!(v["status"], "completed");
    assert_eq!(
        codings(&v["category"][0]),
        vec![(
            codes::COMMUNICATION_CATEGORY.to_string(),
            "notification".to_string()
        )]
    );
    assert_eq!(
        v["payload"][0]["contentString"],
        "Ringte bruker, alt i orden."
    );
    assert!(v.get("inResponseTo").is_none());
    assert!(v.get("reasonCode").is_none());
    assert_eq!(v["recipient"][0]["identifier"]["value"], "958935420");
    assert_eq!(v["sender"]["identifier"]["value"], "dev-42");
    assert_eq!(v["sent"], "2024-05-01T21:30:05.25Z");

    let (_, v) = ok(note_p("Tilsyn utført.", Some("alarm-7")));
    let alarm_id = resource_id(&VendorId("acme-care".into()), "alarm-7");
    assert_eq!(
        v["inResponseTo"][0]["reference"],
        format!("Communication/{alarm_id}")
    );
}

#[test]
fn note_text_limits() {
    for text in ["", "   ", "\n"] {
        let e = err(note_p(text, None));
        assert_eq!(e.field, "note.text");
    }
    let e = err(note_p(&"y".repeat(MAX_NOTE_TEXT + 1), None));
    assert_eq!(e.field, "note.text");
    assert!(e.reason.contains("4000"));
    ok(note_p(&"å".repeat(MAX_NOTE_TEXT), None));
    ok(note_p("x", None));
    let e = err(note_p("nul\u{0}byte", None));
    assert_eq!(e.field, "note.text");
}
