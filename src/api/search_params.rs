//! FHIR search parameters → a [`SearchQuery`] for the store, strictly.
//!
//! Every parameter the hub does not understand is refused with a 400 that
//! names it and lists what is supported: silently ignoring a filter on
//! patient data would hand the client more than it asked for. Values are
//! never echoed (any of them could be a national id); messages say what the
//! value must look like instead.
//!
//! The parsed form also remembers the query as understood, so the Bundle's
//! `self` and `next` links repeat exactly the filters that were applied.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::last_updated::{self, SeqRange};
use super::outcome::ApiError;
use super::query_string::{encode, split_escaped, unescape};
use crate::domain::{IdSystem, Orgnr, PersonId, ResourceType};
use crate::store::{SearchQuery, Token, patient_key};

/// The keyset cursor parameter of `next` links.
pub const CURSOR_PARAM: &str = "_cursor";
/// Page size when `_count` is absent.
pub const DEFAULT_COUNT: usize = 50;
/// Largest page; a larger `_count` is lowered to this silently.
pub const MAX_COUNT: usize = 500;

/// The parameters a search accepts, for error messages.
pub const SUPPORTED: &str = "subject:identifier (or its alias patient:identifier), code, category, _lastUpdated, _count, _sort, _cursor and _format";

/// The code system of the hub's `category` codes for a resource type.
pub fn category_system(rt: ResourceType) -> &'static str {
    match rt {
        ResourceType::Observation => "http://terminology.hl7.org/CodeSystem/observation-category",
        ResourceType::Communication => {
            "http://terminology.hl7.org/CodeSystem/communication-category"
        }
    }
}

/// A search as understood: the filters, paging and sort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParams {
    /// Hashed patient key (see [`patient_key`]); never the id itself.
    pub patient: Option<[u8; 16]>,
    /// ORed codes; empty = no code filter.
    pub codes: Vec<Token>,
    pub category: Option<String>,
    pub last_updated: SeqRange,
    pub count: usize,
    pub descending: bool,
    /// Keyset position from `_cursor`.
    pub cursor: Option<u64>,
    /// The filters contradict each other or name something the hub never
    /// stores (two different patients, a category system it does not use,
    /// an empty `_lastUpdated` range): the answer is an empty page.
    pub matches_nothing: bool,
    /// The query as understood, without `_cursor` and with the effective
    /// `_count`, for the Bundle's links.
    link_pairs: Vec<(String, String)>,
}

impl SearchParams {
    /// The store query for this search in one municipality.
    pub fn to_query(&self, municipality: Orgnr, resource_type: ResourceType) -> SearchQuery {
        SearchQuery {
            municipality,
            resource_type,
            patient: self.patient,
            codes: self.codes.clone(),
            category: self.category.clone(),
            min_seq: self.last_updated.min,
            max_seq: self.last_updated.max,
            after: self.cursor,
            count: self.count,
            descending: self.descending,
        }
    }

    /// The query string of a link to the page at `cursor` (no leading `?`).
    pub fn link_query(&self, cursor: Option<u64>) -> String {
        let mut pairs = self.link_pairs.clone();
        if let Some(seq) = cursor {
            pairs.push((CURSOR_PARAM.into(), encode_cursor(self.descending, seq)));
        }
        encode(&pairs)
    }
}

/// The opaque cursor: base64url of the sort direction and the sequence
/// number, so a cursor cannot be replayed against the other sort order.
pub fn encode_cursor(descending: bool, seq: u64) -> String {
    let mut b = [0u8; 9];
    b[0] = if descending { b'd' } else { b'a' };
    b[1..].copy_from_slice(&seq.to_be_bytes());
    URL_SAFE_NO_PAD.encode(b)
}

pub(crate) fn decode_cursor(value: &str, descending: bool) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::invalid(
            "_cursor: not a cursor this server made; follow the Bundle's next link as given, or search again without _cursor",
        )
    };
    let b = URL_SAFE_NO_PAD.decode(value).map_err(|_| bad())?;
    let (&dir, seq) = b.split_first().ok_or_else(bad)?;
    let seq: [u8; 8] = seq.try_into().map_err(|_| bad())?;
    let want = if descending { b'd' } else { b'a' };
    if dir != want {
        return Err(if dir == b'a' || dir == b'd' {
            ApiError::invalid(
                "_cursor: this cursor belongs to a search with the other _sort order; keep _sort as in the link, or search again without _cursor",
            )
        } else {
            bad()
        });
    }
    Ok(u64::from_be_bytes(seq))
}

/// Checks `_format`: only JSON is served. Unknown formats are 406.
pub fn check_format(value: &str) -> Result<(), ApiError> {
    match value {
        "json" | "application/json" | "application/fhir+json" | "application/json+fhir" => Ok(()),
        _ => Err(ApiError::not_acceptable()),
    }
}

/// Parameters of a read or `metadata` request: only `_format` (and
/// `mode=full` for `metadata`). Returns whether `_format` was given (it
/// overrides `Accept`).
pub fn parse_plain(pairs: &[(String, String)], metadata: bool) -> Result<bool, ApiError> {
    let mut format_given = false;
    for (name, value) in pairs {
        match name.as_str() {
            "_format" => {
                check_format(value)?;
                format_given = true;
            }
            "mode" if metadata => {
                if value != "full" {
                    return Err(ApiError::unsupported(
                        "mode: only mode=full is supported (the full CapabilityStatement)",
                    ));
                }
            }
            _ => {
                return Err(ApiError::unsupported(format!(
                    "{}: not supported here; {} accepts only _format{}",
                    describe_name(name),
                    if metadata { "metadata" } else { "a read" },
                    if metadata { " and mode=full" } else { "" }
                )));
            }
        }
    }
    Ok(format_given)
}

/// Every parameter name the FHIR API knows (search, read, `metadata`,
/// AuditEvent search). Only these are ever named in an error message.
const KNOWN_NAMES: &[&str] = &[
    "subject:identifier",
    "patient:identifier",
    "entity:identifier",
    "subject",
    "patient",
    "code",
    "category",
    "date",
    "_lastUpdated",
    "_count",
    "_sort",
    "_cursor",
    "_format",
    "mode",
    "consumer",
    "resource",
];

/// A parameter name as it may be shown in an error: its documented name
/// when the hub knows it, otherwise a fixed phrase. The caller's own string
/// is never copied into an answer (it may be a national id).
pub(crate) fn describe_name(name: &str) -> String {
    if KNOWN_NAMES.contains(&name) {
        format!("parameter {name}")
    } else {
        "unsupported search parameter".into()
    }
}

/// What parsing a search found, besides the parameters: whether `_format`
/// was given (it overrides `Accept`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSearch {
    pub params: SearchParams,
    pub format_given: bool,
}

/// Parses a search's query pairs for one resource type.
pub fn parse_search(
    rt: ResourceType,
    pairs: &[(String, String)],
) -> Result<ParsedSearch, ApiError> {
    let mut p = SearchParams {
        patient: None,
        codes: Vec::new(),
        category: None,
        last_updated: SeqRange::ALL,
        count: DEFAULT_COUNT,
        descending: false,
        cursor: None,
        matches_nothing: false,
        link_pairs: Vec::new(),
    };
    let mut format_given = false;
    let mut seen_code = false;
    let mut seen_count = false;
    let mut seen_sort = false;
    let mut cursor_raw: Option<&str> = None;

    for (name, value) in pairs {
        let mut link_value = value.clone();
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        if value.is_empty() && base != "_format" {
            return Err(ApiError::invalid(format!(
                "{}: has no value; give it a value or leave it out",
                describe_name(name)
            )));
        }
        match (base, modifier) {
            ("subject" | "patient", Some("identifier")) => {
                let key = parse_patient(name, value)?;
                match p.patient {
                    Some(k) if k != key => p.matches_nothing = true,
                    _ => p.patient = Some(key),
                }
            }
            ("subject" | "patient", _) => {
                return Err(ApiError::unsupported(format!(
                    "{base}: only {base}:identifier=system|value is supported (the hub stores patients by national identifier and has no Patient resources to reference)"
                )));
            }
            ("code", None) => {
                if seen_code {
                    return Err(ApiError::unsupported(
                        "code: give the code parameter once; separate alternative codes with a comma (code=a,b means a OR b)",
                    ));
                }
                seen_code = true;
                let codes = parse_codes(value)?;
                if codes.is_empty() {
                    p.matches_nothing = true;
                }
                p.codes = codes;
            }
            ("category", None) => match parse_category(rt, value)? {
                Some(code) => match &p.category {
                    Some(c) if *c != code => p.matches_nothing = true,
                    _ => p.category = Some(code),
                },
                None => p.matches_nothing = true,
            },
            ("_lastUpdated", None) => {
                let r = last_updated::parse(value)
                    .map_err(|e| ApiError::invalid(format!("_lastUpdated: {e}")))?;
                p.last_updated = p.last_updated.intersect(r);
            }
            ("_count", None) => {
                if seen_count {
                    return Err(ApiError::invalid("_count: give it once"));
                }
                seen_count = true;
                p.count = parse_count(value)?;
                link_value = p.count.to_string();
            }
            ("_sort", None) => {
                if seen_sort {
                    return Err(ApiError::invalid("_sort: give it once"));
                }
                seen_sort = true;
                p.descending = match value.as_str() {
                    "_lastUpdated" => false,
                    "-_lastUpdated" => true,
                    _ => {
                        return Err(ApiError::unsupported(
                            "_sort: only _lastUpdated (oldest first, the default) or -_lastUpdated (newest first) is supported",
                        ));
                    }
                };
            }
            ("_cursor", None) => {
                if cursor_raw.is_some() {
                    return Err(ApiError::invalid(
                        "_cursor: give it once; follow the Bundle's next link as given",
                    ));
                }
                cursor_raw = Some(value);
                continue;
            }
            ("_format", None) => {
                check_format(value)?;
                format_given = true;
            }
            (
                "code" | "category" | "_lastUpdated" | "_count" | "_sort" | "_cursor" | "_format",
                Some(_),
            ) => {
                return Err(ApiError::unsupported(format!(
                    "{base}: modifiers are not supported on {base}; supported: {SUPPORTED}"
                )));
            }
            _ => {
                return Err(ApiError::unsupported(format!(
                    "{}: not supported for {} search; supported: {SUPPORTED}",
                    describe_name(name),
                    rt.as_str()
                )));
            }
        }
        p.link_pairs.push((name.clone(), link_value));
    }
    if let Some(raw) = cursor_raw {
        p.cursor = Some(decode_cursor(raw, p.descending)?);
    }
    if p.last_updated.is_empty() {
        p.matches_nothing = true;
    }
    Ok(ParsedSearch {
        params: p,
        format_given,
    })
}

pub(crate) fn parse_patient(name: &str, value: &str) -> Result<[u8; 16], ApiError> {
    let supported = || {
        format!(
            "{}, {} or {}",
            IdSystem::Fnr.oid(),
            IdSystem::Dnr.oid(),
            IdSystem::Fhn.oid()
        )
    };
    if split_escaped(value, ',').len() > 1 {
        return Err(ApiError::unsupported(format!(
            "{name}: one patient per search; search once per patient"
        )));
    }
    let parts = split_escaped(value, '|');
    let (system, id) = match parts.as_slice() {
        [system, id] if !system.is_empty() => (unescape(system), unescape(id)),
        [_] | [_, _] => {
            return Err(ApiError::invalid(format!(
                "{name}: send system|value, where system is the identifier's OID ({}); a value without a system is not accepted",
                supported()
            )));
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "{name}: send system|value with exactly one '|'"
            )));
        }
    };
    let Some(id_system) = IdSystem::from_oid(&system) else {
        return Err(ApiError::unsupported(format!(
            "{name}: the identifier system must be one of {} (fødselsnummer, D-number, FH-number)",
            supported()
        )));
    };
    if id.is_empty() {
        return Err(ApiError::invalid(format!(
            "{name}: the value after '|' is empty; send system|value"
        )));
    }
    PersonId::parse(id_system, &id)
        .map_err(|reason| ApiError::invalid(format!("{name}: the value {reason}")))?;
    Ok(patient_key(id_system.oid(), &id))
}

fn check_code(what: &str, code: &str) -> Result<(), ApiError> {
    if code.is_empty() {
        return Err(ApiError::unsupported(format!(
            "{what}: a code is missing (an empty alternative, or system| without a code, which is not supported); send code or system|code"
        )));
    }
    if code.trim() != code || code.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{what}: a code must not start or end with spaces or hold control characters"
        )));
    }
    Ok(())
}

/// `code`: comma-separated `[system|]code` tokens, ORed. A token with an
/// empty system (`|code`) asks for a code without a system, which the hub
/// never stores: it is dropped (an all-dropped list matches nothing).
fn parse_codes(value: &str) -> Result<Vec<Token>, ApiError> {
    let mut out = Vec::new();
    for alt in split_escaped(value, ',') {
        let parts = split_escaped(&alt, '|');
        match parts.as_slice() {
            [code] => {
                let code = unescape(code);
                check_code("code", &code)?;
                out.push(Token { system: None, code });
            }
            [system, code] => {
                let code = unescape(code);
                check_code("code", &code)?;
                if system.is_empty() {
                    continue;
                }
                let system = unescape(system);
                if system.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(ApiError::invalid(
                        "code: a system is a URI and holds no spaces; send system|code",
                    ));
                }
                out.push(Token {
                    system: Some(system),
                    code,
                });
            }
            _ => {
                return Err(ApiError::invalid(
                    "code: each alternative is code or system|code, with at most one unescaped '|'",
                ));
            }
        }
    }
    Ok(out)
}

/// `category`: one code, optionally `system|code`. `Ok(None)` when the
/// system is not the one the hub uses for this resource type (matches nothing).
fn parse_category(rt: ResourceType, value: &str) -> Result<Option<String>, ApiError> {
    if split_escaped(value, ',').len() > 1 {
        return Err(ApiError::unsupported(
            "category: one category per search; alternatives separated by a comma are not supported",
        ));
    }
    let parts = split_escaped(value, '|');
    let (system, code) = match parts.as_slice() {
        [code] => (None, unescape(code)),
        [system, code] => (Some(unescape(system)), unescape(code)),
        _ => {
            return Err(ApiError::invalid(
                "category: send code or system|code, with at most one unescaped '|'",
            ));
        }
    };
    check_code("category", &code)?;
    match system {
        Some(s) if s != category_system(rt) => Ok(None),
        _ => Ok(Some(code)),
    }
}

pub(crate) fn parse_count(value: &str) -> Result<usize, ApiError> {
    if value.is_empty() || !value.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::invalid(format!(
            "_count: must be a whole number from 1 to {MAX_COUNT} (larger values are lowered to {MAX_COUNT})"
        )));
    }
    // All digits: a parse failure can only be an overflow, i.e. "very many".
    let n = value.parse::<u64>().unwrap_or(u64::MAX);
    if n == 0 {
        return Err(ApiError::invalid(format!(
            "_count: must be at least 1 (and at most {MAX_COUNT}); _count=0 (count only) is not supported"
        )));
    }
    Ok(n.min(MAX_COUNT as u64) as usize)
}

#[cfg(test)]
mod tests {
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
        let p =
            ok("category=http://terminology.hl7.org/CodeSystem/observation-category%7Cvital-signs");
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
}
