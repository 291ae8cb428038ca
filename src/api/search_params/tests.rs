use super::*;
use crate::api::outcome::IssueType;
use crate::api::query_string::decode;
use crate::domain::synthetic;
use crate::store::time_to_seq;
use axum::http::StatusCode;

const FNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.1";
const OBS: ResourceType = ResourceType::Observation;

fn parse(rt: ResourceType, q: &str) -> Result<SearchParams, ApiError> {
    let pairs = decode(q).map_err(ApiError::invalid)?;
    parse_search(rt, &pairs).map(|p| p.params)
}

fn ok(q: &str) -> SearchParams {
    parse(OBS, q).unwrap_or_else(|e| panic!("{q}: {e}"))
}

fn err(q: &str) -> ApiError {
    match parse(OBS, q) {
        Ok(p) => panic!("{q} should fail, got {p:?}"),
        Err(e) => e,
    }
}

fn subject(n: u32) -> String {
    format!("subject:identifier={FNR_OID}%7C{}", synthetic::fnr(n))
}

#[test]
fn defaults() {
    let p = ok("");
    assert_eq!(p.count, DEFAULT_COUNT);
    assert!(!p.descending);
    assert_eq!(p.last_updated, SeqRange::ALL);
    assert_eq!(
        (p.patient, p.cursor, p.matches_nothing),
        (None, None, false)
    );
    assert!(p.codes.is_empty() && p.category.is_none());
    assert_eq!(p.link_query(None), "");
}

#[test]
fn subject_identifier() {
    let fnr = synthetic::fnr(1);
    let p = ok(&subject(1));
    assert_eq!(p.patient, Some(patient_key(FNR_OID, &fnr)));
    // The alias gives the same key; the same patient twice is fine.
    let q = format!("patient:identifier={FNR_OID}|{fnr}&{}", subject(1));
    assert_eq!(ok(&q).patient, p.patient);
    assert!(!ok(&q).matches_nothing);
    // Two different patients ANDed match nothing.
    assert!(ok(&format!("{}&{}", subject(1), subject(2))).matches_nothing);
    // D-number system.
    let d = synthetic::dnr(4);
    let p = ok(&format!(
        "subject:identifier=urn:oid:2.16.578.1.12.4.1.4.2|{d}"
    ));
    assert_eq!(
        p.patient,
        Some(patient_key("urn:oid:2.16.578.1.12.4.1.4.2", &d))
    );
}

#[test]
fn subject_errors_never_echo_the_number() {
    let fnr = synthetic::fnr(5);
    let mut bad = fnr.clone().into_bytes();
    bad[10] = if bad[10] == b'9' { b'0' } else { bad[10] + 1 };
    let bad = String::from_utf8(bad).unwrap_or_default();
    let cases = [
        format!("subject:identifier={fnr}"),
        format!("subject:identifier=%7C{fnr}"),
        format!("subject:identifier=urn:oid:2.16.578.1.12.4.1.4.4|{fnr}"),
        format!("subject:identifier={fnr}|{fnr}"),
        format!("subject:identifier={FNR_OID}|{bad}"),
        format!("subject:identifier={FNR_OID}|{fnr},{FNR_OID}|{fnr}"),
        format!("subject:identifier={FNR_OID}|{fnr}|x"),
        format!("patient:identifier={fnr}"),
        format!("subject={fnr}"),
        format!("subject:Patient={fnr}"),
        format!("patient={fnr}"),
        format!("{fnr}=1"),
        format!("code:{fnr}=1"),
    ];
    for q in cases {
        let e = err(&q);
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{q}");
        assert!(!e.message.contains(&fnr), "{q}: {}", e.message);
        assert!(!e.message.contains(&bad), "{q}: {}", e.message);
    }
    let e = err(&format!("subject:identifier={fnr}"));
    assert!(e.message.contains("system|value"), "{}", e.message);
    let e = err(&format!("subject:identifier={FNR_OID}|{bad}"));
    assert!(e.message.contains("control digits"), "{}", e.message);
    let e = err(&format!(
        "subject:identifier=urn:oid:2.16.578.1.12.4.1.4.4|{fnr}"
    ));
    assert!(e.message.contains(FNR_OID), "{}", e.message);
}

#[test]
fn codes() {
    let p = ok("code=http://loinc.org%7C8867-4,59408-5,%7Cnosystem");
    assert_eq!(
        p.codes,
        vec![
            Token {
                system: Some("http://loinc.org".into()),
                code: "8867-4".into()
            },
            Token {
                system: None,
                code: "59408-5".into()
            },
        ]
    );
    assert!(!p.matches_nothing);
    assert!(ok("code=%7Cx").matches_nothing);
    let p = ok("code=s%7Ca\\,b");
    assert_eq!(p.codes[0].code, "a,b");
    assert_eq!(err("code=a&code=b").issue, IssueType::NotSupported);
    assert_eq!(
        err("code=http://loinc.org%7C").issue,
        IssueType::NotSupported
    );
    assert_eq!(err("code=a,,b").issue, IssueType::NotSupported);
    assert_eq!(err("code=a%7Cb%7Cc").status, StatusCode::BAD_REQUEST);
    assert_eq!(err("code=%20a").status, StatusCode::BAD_REQUEST);
    assert_eq!(err("code:text=x").issue, IssueType::NotSupported);
    assert_eq!(err("code:not=x").issue, IssueType::NotSupported);
    assert_eq!(err("code=").status, StatusCode::BAD_REQUEST);
}

#[test]
fn category() {
    assert_eq!(
        ok("category=vital-signs").category.as_deref(),
        Some("vital-signs")
    );
    let p = ok("category=http://terminology.hl7.org/CodeSystem/observation-category%7Cvital-signs");
    assert_eq!(p.category.as_deref(), Some("vital-signs"));
    assert!(!p.matches_nothing);
    assert!(ok("category=http://example.org%7Cvital-signs").matches_nothing);
    assert!(ok("category=%7Cvital-signs").matches_nothing);
    assert!(ok("category=a&category=b").matches_nothing);
    assert!(!ok("category=a&category=a").matches_nothing);
    let c = parse(
        ResourceType::Communication,
        "category=http://terminology.hl7.org/CodeSystem/communication-category%7Calert",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.category.as_deref(), Some("alert"));
    assert!(!c.matches_nothing);
    assert_eq!(
        err("category=alert,notification").issue,
        IssueType::NotSupported
    );
    assert_eq!(err("category=s%7C").issue, IssueType::NotSupported);
    assert_eq!(err("category:not=alert").issue, IssueType::NotSupported);
}

#[test]
fn last_updated_prefixes_are_anded() {
    let p = ok("_lastUpdated=ge2024-03-01&_lastUpdated=lt2024-03-02T00:00:00%2B01:00");
    let lo = time_to_seq(
        chrono::DateTime::parse_from_rfc3339("2024-03-01T00:00:00Z")
            .unwrap_or_else(|e| panic!("{e}"))
            .into(),
    );
    let hi = time_to_seq(
        chrono::DateTime::parse_from_rfc3339("2024-03-01T23:00:00Z")
            .unwrap_or_else(|e| panic!("{e}"))
            .into(),
    ) - 1;
    assert_eq!(p.last_updated, SeqRange { min: lo, max: hi });
    // A literal '+' stays a plus (RFC 3986, not an HTML form).
    let q = ok("_lastUpdated=lt2024-03-02T00:00:00+01:00");
    assert_eq!(q.last_updated.max, hi);
    assert!(ok("_lastUpdated=gt2025&_lastUpdated=lt2024").matches_nothing);
    let e = err("_lastUpdated=ne2024");
    assert!(e.message.starts_with("_lastUpdated: "), "{}", e.message);
    assert_eq!(
        err("_lastUpdated=2024-03-01T10:00").status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        err("_lastUpdated:missing=true").issue,
        IssueType::NotSupported
    );
}

#[test]
fn count() {
    assert_eq!(ok("_count=1").count, 1);
    assert_eq!(ok("_count=500").count, 500);
    assert_eq!(ok("_count=501").count, 500);
    assert_eq!(ok("_count=007").count, 7);
    assert_eq!(ok("_count=99999999999999999999999").count, 500);
    assert_eq!(ok("_count=9999").link_query(None), "_count=500");
    for bad in ["0", "-1", "abc", "1.5", "+5", " 5", "5 ", "1e3", ""] {
        let e = err(&format!(
            "_count={}",
            bad.replace('+', "%2B").replace(' ', "%20")
        ));
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(e.message.contains("_count"), "{bad}");
    }
    assert_eq!(err("_count=5&_count=6").status, StatusCode::BAD_REQUEST);
}

#[test]
fn sort() {
    assert!(!ok("_sort=_lastUpdated").descending);
    assert!(ok("_sort=-_lastUpdated").descending);
    for bad in ["date", "_id", "-date", "_lastUpdated,_id", "lastUpdated"] {
        assert_eq!(
            err(&format!("_sort={bad}")).issue,
            IssueType::NotSupported,
            "{bad}"
        );
    }
    assert_eq!(
        err("_sort=_lastUpdated&_sort=_lastUpdated").status,
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn cursor_round_trip_and_direction() {
    let asc = encode_cursor(false, 1_700_000_000_000_001);
    let p = ok(&format!("_cursor={asc}"));
    assert_eq!(p.cursor, Some(1_700_000_000_000_001));
    let desc = encode_cursor(true, 42);
    let p = ok(&format!("_cursor={desc}&_sort=-_lastUpdated"));
    assert_eq!((p.cursor, p.descending), (Some(42), true));
    let e = err(&format!("_cursor={desc}"));
    assert!(e.message.contains("other _sort order"), "{}", e.message);
    for bad in ["xyz", "AAAA", "!!", &URL_SAFE_NO_PAD.encode([b'x'; 9])] {
        let e = err(&format!("_cursor={bad}"));
        assert!(e.message.contains("next link"), "{bad}: {}", e.message);
    }
    assert_eq!(
        err(&format!("_cursor={asc}&_cursor={asc}")).status,
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn links_repeat_the_query_without_the_cursor() {
    let c = encode_cursor(false, 7);
    let p = ok(&format!(
        "code=a&_count=2&{}&_cursor={c}&_lastUpdated=gt2024",
        subject(3)
    ));
    let fnr = synthetic::fnr(3);
    let expected_base = format!(
        "code=a&_count=2&subject:identifier=urn:oid:2.16.578.1.12.4.1.4.1%7C{fnr}&_lastUpdated=gt2024"
    );
    assert_eq!(p.link_query(None), expected_base);
    assert_eq!(
        p.link_query(Some(9)),
        format!("{expected_base}&_cursor={}", encode_cursor(false, 9))
    );
}

#[test]
fn unsupported_parameters_are_400() {
    for q in [
        "_id=x",
        "status=final",
        "date=2024",
        "_include=Observation:subject",
        "_summary=count",
        "_elements=id",
        "_total=accurate",
        "_has:Observation:patient:code=x",
        "value-quantity=5",
        "_sort:x=1",
    ] {
        let e = err(q);
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{q}");
        assert!(e.message.contains("supported"), "{q}: {}", e.message);
    }
    assert!(
        err("status=final")
            .message
            .starts_with("unsupported search parameter:")
    );
    assert!(
        err("x1=a")
            .message
            .starts_with("unsupported search parameter:")
    );
    assert!(err("code=").message.starts_with("parameter code:"));
}

#[test]
fn format() {
    for f in ["json", "application/json", "application/fhir%2Bjson"] {
        let pairs = decode(&format!("_format={f}")).unwrap_or_default();
        let s = parse_search(OBS, &pairs).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(s.format_given);
    }
    assert_eq!(err("_format=xml").status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(err("_format=").status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(
        parse_plain(&decode("_format=json").unwrap_or_default(), false),
        Ok(true)
    );
    assert_eq!(parse_plain(&[], false), Ok(false));
    assert!(parse_plain(&decode("mode=full").unwrap_or_default(), true).is_ok());
    assert!(parse_plain(&decode("mode=full").unwrap_or_default(), false).is_err());
    assert!(parse_plain(&decode("mode=terminology").unwrap_or_default(), true).is_err());
    assert!(parse_plain(&decode("_summary=true").unwrap_or_default(), false).is_err());
}
