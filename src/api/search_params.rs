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
    let mut s = Parser {
        rt,
        p: SearchParams {
            patient: None,
            codes: Vec::new(),
            category: None,
            last_updated: SeqRange::ALL,
            count: DEFAULT_COUNT,
            descending: false,
            cursor: None,
            matches_nothing: false,
            link_pairs: Vec::new(),
        },
        format_given: false,
        seen_code: false,
        seen_count: false,
        seen_sort: false,
        cursor_raw: None,
    };
    for (name, value) in pairs {
        if let Some(link_value) = s.pair(name, value)? {
            s.p.link_pairs.push((name.clone(), link_value));
        }
    }
    let mut p = s.p;
    if let Some(raw) = s.cursor_raw {
        p.cursor = Some(decode_cursor(raw, p.descending)?);
    }
    if p.last_updated.is_empty() {
        p.matches_nothing = true;
    }
    Ok(ParsedSearch {
        params: p,
        format_given: s.format_given,
    })
}

/// A search being parsed: what it found so far, and which parameters that
/// may appear only once were seen.
struct Parser<'a> {
    rt: ResourceType,
    p: SearchParams,
    format_given: bool,
    seen_code: bool,
    seen_count: bool,
    seen_sort: bool,
    cursor_raw: Option<&'a str>,
}

impl<'a> Parser<'a> {
    /// Applies one query pair; the value to repeat in the Bundle's links,
    /// or `None` for one that is not repeated (`_cursor`).
    fn pair(&mut self, name: &str, value: &'a str) -> Result<Option<String>, ApiError> {
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name, None),
        };
        if value.is_empty() && base != "_format" {
            return Err(ApiError::invalid(format!(
                "{}: has no value; give it a value or leave it out",
                describe_name(name)
            )));
        }
        match (base, modifier) {
            ("subject" | "patient", Some("identifier")) => self.patient(name, value)?,
            ("subject" | "patient", _) => {
                return Err(ApiError::unsupported(format!(
                    "{base}: only {base}:identifier=system|value is supported (the hub stores patients by national identifier and has no Patient resources to reference)"
                )));
            }
            ("code", None) => self.code(value)?,
            ("category", None) => self.category(value)?,
            ("_lastUpdated", None) => {
                let r = last_updated::parse(value)
                    .map_err(|e| ApiError::invalid(format!("_lastUpdated: {e}")))?;
                self.p.last_updated = self.p.last_updated.intersect(r);
            }
            ("_count", None) => return self.count(value).map(Some),
            ("_sort", None) => self.sort(value)?,
            ("_cursor", None) => {
                if self.cursor_raw.is_some() {
                    return Err(ApiError::invalid(
                        "_cursor: give it once; follow the Bundle's next link as given",
                    ));
                }
                self.cursor_raw = Some(value);
                return Ok(None);
            }
            ("_format", None) => {
                check_format(value)?;
                self.format_given = true;
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
                    self.rt.as_str()
                )));
            }
        }
        Ok(Some(value.to_string()))
    }

    /// A second, different patient matches nothing (both must hold).
    fn patient(&mut self, name: &str, value: &str) -> Result<(), ApiError> {
        let key = parse_patient(name, value)?;
        match self.p.patient {
            Some(k) if k != key => self.p.matches_nothing = true,
            _ => self.p.patient = Some(key),
        }
        Ok(())
    }

    fn code(&mut self, value: &str) -> Result<(), ApiError> {
        if self.seen_code {
            return Err(ApiError::unsupported(
                "code: give the code parameter once; separate alternative codes with a comma (code=a,b means a OR b)",
            ));
        }
        self.seen_code = true;
        let codes = parse_codes(value)?;
        if codes.is_empty() {
            self.p.matches_nothing = true;
        }
        self.p.codes = codes;
        Ok(())
    }

    /// A category this type never has, or a second different one, matches
    /// nothing.
    fn category(&mut self, value: &str) -> Result<(), ApiError> {
        match parse_category(self.rt, value)? {
            Some(code) => match &self.p.category {
                Some(c) if *c != code => self.p.matches_nothing = true,
                _ => self.p.category = Some(code),
            },
            None => self.p.matches_nothing = true,
        }
        Ok(())
    }

    /// The count as applied (capped), for the links.
    fn count(&mut self, value: &str) -> Result<String, ApiError> {
        if self.seen_count {
            return Err(ApiError::invalid("_count: give it once"));
        }
        self.seen_count = true;
        self.p.count = parse_count(value)?;
        Ok(self.p.count.to_string())
    }

    fn sort(&mut self, value: &str) -> Result<(), ApiError> {
        if self.seen_sort {
            return Err(ApiError::invalid("_sort: give it once"));
        }
        self.seen_sort = true;
        self.p.descending = match value {
            "_lastUpdated" => false,
            "-_lastUpdated" => true,
            _ => {
                return Err(ApiError::unsupported(
                    "_sort: only _lastUpdated (oldest first, the default) or -_lastUpdated (newest first) is supported",
                ));
            }
        };
        Ok(())
    }
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
mod tests;
