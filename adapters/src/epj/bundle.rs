//! The FHIR edge of the adapter: checks an incoming `transaction` Bundle by
//! hand (so every problem is named with its place and what to change) and
//! builds the `transaction-response` Bundle and OperationOutcomes it answers
//! with.
//!
//! Messages never echo identifier or subject values: they may carry a
//! national id, and answers end up in the sender's logs.

use serde_json::{Value, json};

/// Resource types the adapter imports.
pub const ACCEPTED_TYPES: &[&str] = &["Observation", "Communication"];

/// One checked request entry: a conditional create of one resource.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `Observation` or `Communication`.
    pub resource_type: String,
    /// The resource's logical id (a valid FHIR id, so safe as a file name).
    pub id: String,
    /// The identifier named by `request.ifNoneExist`, as `system|value`.
    pub match_identifier: String,
    /// Every identifier the resource carries, as `system|value`.
    pub identifiers: Vec<String>,
    /// The subject's identifier value or reference; for pseudonyms only.
    pub subject: Option<String>,
    /// `Communication.priority`, when given.
    pub priority: Option<String>,
    /// Communication `reasonCode` codes, or Observation `code` and
    /// `component.code` codes; what `reject_codes` matches against.
    pub codes: Vec<String>,
    /// The resource as received.
    pub resource: Value,
}

/// One problem found in a request, in OperationOutcome terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// FHIR issue type code (`invalid`, `required`, `not-supported`, …).
    pub code: &'static str,
    /// What is wrong and what to change.
    pub diagnostics: String,
    /// FHIRPath of the element at fault.
    pub expression: String,
}

impl Issue {
    fn new(
        code: &'static str,
        expression: impl Into<String>,
        diagnostics: impl Into<String>,
    ) -> Self {
        Issue {
            code,
            diagnostics: diagnostics.into(),
            expression: expression.into(),
        }
    }
}

/// Parses and checks a request body; every problem found is returned.
pub fn parse_transaction(body: &[u8]) -> Result<Vec<Entry>, Vec<Issue>> {
    let root: Value = serde_json::from_slice(body).map_err(|e| {
        vec![Issue::new(
            "structure",
            "Bundle",
            format!("the body is not JSON ({e}); send a FHIR Bundle as application/fhir+json"),
        )]
    })?;
    let Some(obj) = root.as_object() else {
        return Err(vec![Issue::new(
            "structure",
            "Bundle",
            "the body is not a JSON object; send a FHIR Bundle",
        )]);
    };
    let mut issues = Vec::new();
    match obj.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {}
        Some(other) => issues.push(Issue::new(
            "invalid",
            "resourceType",
            format!("resourceType is {other:?}; send a Bundle of type transaction"),
        )),
        None => issues.push(Issue::new(
            "required",
            "resourceType",
            "resourceType is missing; set it to \"Bundle\"",
        )),
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("transaction") => {}
        Some(other) => issues.push(Issue::new(
            "not-supported",
            "Bundle.type",
            format!("Bundle.type is {other:?}; this endpoint takes only \"transaction\""),
        )),
        None => issues.push(Issue::new(
            "required",
            "Bundle.type",
            "Bundle.type is missing; set it to \"transaction\"",
        )),
    }
    let empty = Vec::new();
    let entries = match obj.get("entry") {
        None => &empty,
        Some(Value::Array(a)) => a,
        Some(_) => {
            issues.push(Issue::new(
                "structure",
                "Bundle.entry",
                "Bundle.entry must be an array of entries",
            ));
            &empty
        }
    };
    if !issues.is_empty() {
        return Err(issues);
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        match parse_entry(i, e) {
            Ok(entry) => out.push(entry),
            Err(mut more) => issues.append(&mut more),
        }
    }
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(issues)
    }
}

fn parse_entry(i: usize, e: &Value) -> Result<Entry, Vec<Issue>> {
    let at = format!("Bundle.entry[{i}]");
    let mut issues = Vec::new();
    let req = e.get("request");
    let url = check_request(&at, req, &mut issues);
    let Some(resource) = e.get("resource").filter(|r| r.is_object()) else {
        issues.push(Issue::new(
            "required",
            format!("{at}.resource"),
            "resource is missing or not an object",
        ));
        return Err(issues);
    };
    let (rtype, id) = check_type_and_id(&at, resource, url, &mut issues);
    let identifiers = identifiers_of(&at, resource, &mut issues);
    let match_identifier = match_identifier(&at, req, &identifiers, &mut issues);
    if !issues.is_empty() {
        return Err(issues);
    }
    let priority = resource
        .get("priority")
        .and_then(Value::as_str)
        .map(String::from);
    Ok(Entry {
        resource_type: rtype.to_string(),
        id: id.to_string(),
        match_identifier: match_identifier.unwrap_or_default(),
        identifiers,
        subject: subject_of(resource),
        priority,
        codes: codes_of(rtype, resource),
        resource: resource.clone(),
    })
}

/// Checks `request` (method POST, a url); returns the url.
fn check_request<'a>(at: &str, req: Option<&'a Value>, issues: &mut Vec<Issue>) -> Option<&'a str> {
    let Some(req) = req else {
        issues.push(Issue::new(
            "required",
            format!("{at}.request"),
            "request is missing; give method POST, url <ResourceType> and ifNoneExist identifier=<system>|<value>",
        ));
        return None;
    };
    match req.get("method").and_then(Value::as_str) {
        Some("POST") => {}
        Some(m) => issues.push(Issue::new(
            "not-supported",
            format!("{at}.request.method"),
            format!(
                "method {m:?} is not supported; this adapter takes only POST (conditional create)"
            ),
        )),
        None => issues.push(Issue::new(
            "required",
            format!("{at}.request.method"),
            "request.method is missing; set it to POST",
        )),
    }
    let url = req.get("url").and_then(Value::as_str);
    if url.is_none() {
        issues.push(Issue::new(
            "required",
            format!("{at}.request.url"),
            "request.url is missing; set it to the resource type, e.g. \"Observation\"",
        ));
    }
    url
}

/// Checks the resource type (one imported here, named by the url) and the
/// id (the adapter names files by it); returns both.
fn check_type_and_id<'a>(
    at: &str,
    resource: &'a Value,
    url: Option<&str>,
    issues: &mut Vec<Issue>,
) -> (&'a str, &'a str) {
    let rtype = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !ACCEPTED_TYPES.contains(&rtype) {
        issues.push(Issue::new(
            "not-supported",
            format!("{at}.resource.resourceType"),
            format!(
                "resourceType {rtype:?} is not imported here; send one of {}",
                ACCEPTED_TYPES.join(", ")
            ),
        ));
    }
    if let Some(url) = url
        && url != rtype
    {
        issues.push(Issue::new(
            "invalid",
            format!("{at}.request.url"),
            format!(
                "request.url {url:?} does not name the resource type {rtype:?}; set it to {rtype:?}"
            ),
        ));
    }
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !is_fhir_id(id) {
        issues.push(Issue::new(
            "invalid",
            format!("{at}.resource.id"),
            "resource.id is missing or not a FHIR id (1-64 of A-Z a-z 0-9 - .); the adapter names files by it",
        ));
    }
    (rtype, id)
}

/// The resource's identifiers as `system|value`; at least one, each whole.
fn identifiers_of(at: &str, resource: &Value, issues: &mut Vec<Issue>) -> Vec<String> {
    let mut identifiers = Vec::new();
    match resource.get("identifier").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            for (k, ident) in list.iter().enumerate() {
                let system = ident.get("system").and_then(Value::as_str);
                let value = ident.get("value").and_then(Value::as_str);
                match (system, value) {
                    (Some(s), Some(v)) if !s.is_empty() && !v.is_empty() => {
                        identifiers.push(format!("{s}|{v}"))
                    }
                    _ => issues.push(Issue::new(
                        "required",
                        format!("{at}.resource.identifier[{k}]"),
                        "every identifier needs a non-empty system and value",
                    )),
                }
            }
        }
        _ => issues.push(Issue::new(
            "required",
            format!("{at}.resource.identifier"),
            "resource.identifier is missing; conditional create needs at least one identifier",
        )),
    }
    identifiers
}

/// The identifier `request.ifNoneExist` matches on: required with a
/// request, and one the resource carries.
fn match_identifier(
    at: &str,
    req: Option<&Value>,
    identifiers: &[String],
    issues: &mut Vec<Issue>,
) -> Option<String> {
    let req = req?;
    let Some(q) = req.get("ifNoneExist").and_then(Value::as_str) else {
        issues.push(Issue::new(
            "required",
            format!("{at}.request.ifNoneExist"),
            "request.ifNoneExist is missing; this adapter only does conditional create: set identifier=<system>|<value>",
        ));
        return None;
    };
    match parse_if_none_exist(q) {
        Ok(m) => {
            if !identifiers.is_empty() && !identifiers.contains(&m) {
                issues.push(Issue::new(
                    "invalid",
                    format!("{at}.request.ifNoneExist"),
                    "ifNoneExist names an identifier the resource does not carry; use the system|value of one of resource.identifier",
                ));
            }
            Some(m)
        }
        Err(msg) => {
            issues.push(Issue::new(
                "invalid",
                format!("{at}.request.ifNoneExist"),
                msg,
            ));
            None
        }
    }
}

/// The subject as `system|value` of its identifier, else its reference.
fn subject_of(resource: &Value) -> Option<String> {
    resource.get("subject").and_then(|s| {
        s.get("identifier")
            .and_then(|i| {
                let sys = i.get("system").and_then(Value::as_str).unwrap_or_default();
                i.get("value")
                    .and_then(Value::as_str)
                    .map(|v| format!("{sys}|{v}"))
            })
            .or_else(|| s.get("reference").and_then(Value::as_str).map(String::from))
    })
}

/// Codes a `reject_codes` filter matches: Communication `reasonCode`,
/// Observation `code` and `component.code`.
pub fn codes_of(rtype: &str, resource: &Value) -> Vec<String> {
    fn push_codings(cc: Option<&Value>, out: &mut Vec<String>) {
        if let Some(codings) = cc.and_then(|c| c.get("coding")).and_then(Value::as_array) {
            out.extend(
                codings
                    .iter()
                    .filter_map(|c| c.get("code").and_then(Value::as_str))
                    .map(String::from),
            );
        }
    }
    let mut out = Vec::new();
    match rtype {
        "Communication" => {
            if let Some(list) = resource.get("reasonCode").and_then(Value::as_array) {
                for cc in list {
                    push_codings(Some(cc), &mut out);
                }
            }
        }
        "Observation" => {
            push_codings(resource.get("code"), &mut out);
            if let Some(list) = resource.get("component").and_then(Value::as_array) {
                for comp in list {
                    push_codings(comp.get("code"), &mut out);
                }
            }
        }
        _ => {}
    }
    out
}

/// FHIR id: 1–64 characters of `A-Z a-z 0-9 - .`.
pub fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && s != "."
        && s != ".."
}

/// Parses `identifier=<system>|<value>` (percent-encoding allowed, an
/// optional leading `?` or `<Type>?`) into `system|value`.
pub fn parse_if_none_exist(q: &str) -> Result<String, String> {
    let q = q.split_once('?').map(|(_, rest)| rest).unwrap_or(q);
    let mut found = None;
    for part in q.split('&') {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        if name == "identifier" {
            if found.is_some() {
                return Err("ifNoneExist names identifier twice; give exactly one identifier=<system>|<value>".into());
            }
            found = Some(value);
        } else {
            return Err(format!(
                "ifNoneExist uses the search parameter {name:?}, which this adapter does not support; use only identifier=<system>|<value>"
            ));
        }
    }
    let Some(raw) = found else {
        return Err("ifNoneExist is empty; set identifier=<system>|<value>".into());
    };
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "ifNoneExist is not valid UTF-8 after percent-decoding".to_string())?;
    match decoded.split_once('|') {
        Some((s, v)) if !s.is_empty() && !v.is_empty() => Ok(format!("{s}|{v}")),
        _ => Err("ifNoneExist must name both system and value: identifier=<system>|<value>".into()),
    }
}

/// An OperationOutcome with one `error` issue per item.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issue: Vec<Value> = issues
        .iter()
        .map(|i| {
            json!({
                "severity": "error",
                "code": i.code,
                "diagnostics": i.diagnostics,
                "expression": [i.expression],
            })
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "issue": issue })
}

/// One entry of a `transaction-response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOutcome {
    /// True when the resource was written now; false when an existing
    /// resource matched `ifNoneExist`.
    pub created: bool,
    /// `<Type>/<id>` of the resource that now holds the identifier.
    pub resource_type: String,
    /// Logical id of that resource.
    pub id: String,
}

impl EntryOutcome {
    /// `<Type>/<id>/_history/1`.
    pub fn location(&self) -> String {
        format!("{}/{}/_history/1", self.resource_type, self.id)
    }
}

/// The `transaction-response` Bundle, one entry per request entry in order.
pub fn transaction_response(outcomes: &[EntryOutcome], last_modified: &str) -> Value {
    let entry: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "response": {
                    "status": if o.created { "201 Created" } else { "200 OK" },
                    "location": o.location(),
                    "etag": "W/\"1\"",
                    "lastModified": last_modified,
                }
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "transaction-response",
        "entry": entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS: &str = "urn:uuid:knutepunkt-event";

    fn obs(id: &str, ident: &str) -> Value {
        json!({
            "resourceType": "Observation",
            "id": id,
            "identifier": [{"system": SYS, "value": ident}],
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": "x"}},
        })
    }

    fn bundle(entries: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .unwrap_or_default()
    }

    fn entry(resource: Value, ine: &str) -> Value {
        let t = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        json!({"resource": resource, "request": {"method": "POST", "url": t, "ifNoneExist": ine}})
    }

    #[test]
    fn accepts_a_good_bundle() {
        let body = bundle(vec![entry(
            obs("a1", "e1"),
            &format!("identifier={SYS}|e1"),
        )]);
        let entries = parse_transaction(&body).unwrap_or_default();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "a1");
        assert_eq!(entries[0].match_identifier, format!("{SYS}|e1"));
        assert_eq!(entries[0].codes, vec!["8867-4".to_string()]);
    }

    #[test]
    fn names_every_problem() {
        let mut bad = obs("../etc", "e1");
        bad["resourceType"] = json!("Patient");
        let body = bundle(vec![
            entry(obs("a1", "e1"), "identifier=other|e1"),
            entry(bad, "identifier=x|y"),
        ]);
        let issues = parse_transaction(&body).err().unwrap_or_default();
        let exprs: Vec<&str> = issues.iter().map(|i| i.expression.as_str()).collect();
        assert!(
            exprs.contains(&"Bundle.entry[0].request.ifNoneExist"),
            "{exprs:?}"
        );
        assert!(
            exprs.contains(&"Bundle.entry[1].resource.resourceType"),
            "{exprs:?}"
        );
        assert!(exprs.contains(&"Bundle.entry[1].resource.id"), "{exprs:?}");
    }

    #[test]
    fn rejects_wrong_bundle_type_and_non_json() {
        assert!(parse_transaction(b"not json").is_err());
        let b = serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "batch"}))
            .unwrap_or_default();
        let issues = parse_transaction(&b).err().unwrap_or_default();
        assert_eq!(issues[0].code, "not-supported");
    }

    #[test]
    fn if_none_exist_forms() {
        assert_eq!(parse_if_none_exist("identifier=a|b"), Ok("a|b".into()));
        assert_eq!(
            parse_if_none_exist("Observation?identifier=urn%3Aoid%3A1.2%7C42"),
            Ok("urn:oid:1.2|42".into())
        );
        assert!(parse_if_none_exist("identifier=42").is_err());
        assert!(parse_if_none_exist("code=1").is_err());
        assert!(parse_if_none_exist("").is_err());
    }

    #[test]
    fn messages_never_echo_identifier_values() {
        let secret = "01818800155";
        let body = bundle(vec![entry(obs("a1", secret), "identifier=other|nope")]);
        let issues = parse_transaction(&body).err().unwrap_or_default();
        assert!(!issues.is_empty());
        for i in issues {
            assert!(!i.diagnostics.contains(secret));
        }
    }

    #[test]
    fn fhir_ids() {
        assert!(is_fhir_id("3f2a-9.x"));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("a/b"));
        assert!(!is_fhir_id(".."));
        assert!(!is_fhir_id(&"a".repeat(65)));
    }
}
