//! `GET /fhir/r4/{orgnr}/AuditEvent`: the municipality's own audit trail as
//! FHIR R4 `AuditEvent`s, so it can show a patient who saw their data.
//!
//! Search parameters: `patient:identifier=system|value` (alias
//! `entity:identifier`; matched through the store's patient key, the number
//! itself is never stored), `date` (with prefixes ge, gt, le, lt, eq; may be
//! repeated), `_count`, `_cursor` (keyset paging, oldest first) and
//! `_format`. Needs the scope `system/AuditEvent.rs`; another
//! municipality's trail answers 404 as if it did not exist.
//!
//! Reading the trail is not itself audited: it shows pseudonyms, resource
//! ids and client names, not patient data.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::last_updated::{self, SeqRange};
use super::outcome::{ApiError, fhir_response};
use super::search_params::{
    DEFAULT_COUNT, check_format, decode_cursor, encode_cursor, parse_count, parse_patient,
};
use super::{ApiState, check_accept, decode_query};
use crate::auth::{Caller, Scope};
use crate::store::audit::{AuditAction, AuditAgent, AuditOutcome, AuditQuery, StoredAudit};
use crate::store::seq_to_time;

const SUPPORTED: &str = "patient:identifier, date, _count, _cursor and _format";

/// Identifier system of the hub's patient pseudonyms.
pub const PSEUDONYM_SYSTEM: &str = "urn:knutepunkt:patient-pseudonym";

pub async fn search(
    State(st): State<Arc<ApiState>>,
    caller: Caller,
    Path(orgnr): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match search_inner(st, caller, orgnr, raw, headers, uri).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn search_inner(
    st: Arc<ApiState>,
    caller: Caller,
    orgnr: String,
    raw: Option<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let org = st.municipality(&orgnr)?;
    caller.authorize(org, Scope::AuditEvent, || {
        ApiError::not_found(
            "no FHIR base at this path: use /fhir/r4/{orgnr} with the 9-digit organisation number of a municipality this hub serves",
        )
    })?;
    let pairs = decode_query(raw.as_deref())?;
    let Parsed {
        mut q,
        range,
        link,
        matches_nothing,
        format_given,
    } = parse(org, &pairs)?;
    check_accept(format_given, &headers)?;
    q.min_seq = range.min;
    q.max_seq = range.max;
    let page = if matches_nothing || range.is_empty() {
        crate::store::audit::AuditPage {
            items: Vec::new(),
            next: None,
        }
    } else {
        super::from_store(st.store.audit_search(q.clone())).await?
    };
    if page.items.iter().any(|a| a.record.municipality != org) {
        tracing::error!("audit search returned another municipality's record; not served");
        return Err(ApiError::internal());
    }
    let base = st.base_url(org, &headers, &uri)?;
    let body = searchset(&base, &link, q.after, &page, &orgnr);
    Ok(fhir_response(StatusCode::OK, body.to_string()))
}

/// An AuditEvent search's parameters, checked.
struct Parsed {
    q: AuditQuery,
    range: SeqRange,
    /// The parameters to repeat in the `self` and `next` links.
    link: Vec<(String, String)>,
    /// Two different patients asked for: no record can match.
    matches_nothing: bool,
    format_given: bool,
}

fn parse(org: crate::domain::Orgnr, pairs: &[(String, String)]) -> Result<Parsed, ApiError> {
    let mut p = Parsed {
        q: AuditQuery {
            municipality: org,
            patient: None,
            min_seq: 0,
            max_seq: u64::MAX,
            after: None,
            count: DEFAULT_COUNT,
        },
        range: SeqRange::ALL,
        link: Vec::new(),
        matches_nothing: false,
        format_given: false,
    };
    for (name, value) in pairs {
        match name.as_str() {
            "patient:identifier" | "entity:identifier" => {
                let key = parse_patient(name, value)?;
                match p.q.patient {
                    Some(k) if k != key => p.matches_nothing = true,
                    _ => p.q.patient = Some(key),
                }
            }
            "date" => {
                let r = last_updated::parse(value)
                    .map_err(|e| ApiError::invalid(format!("date: {e}")))?;
                p.range = p.range.intersect(r);
            }
            "_count" => p.q.count = parse_count(value)?,
            "_cursor" => {
                p.q.after = Some(decode_cursor(value, false)?);
                continue;
            }
            "_format" => {
                check_format(value)?;
                p.format_given = true;
            }
            _ => {
                return Err(ApiError::unsupported(format!(
                    "{}: not supported for AuditEvent search; supported: {SUPPORTED}",
                    super::search_params::describe_name(name)
                )));
            }
        }
        p.link.push((name.clone(), value.clone()));
    }
    Ok(p)
}

/// The searchset Bundle of one page, with its `self` and `next` links.
fn searchset(
    base: &str,
    link: &[(String, String)],
    after: Option<u64>,
    page: &crate::store::audit::AuditPage,
    orgnr: &str,
) -> Value {
    let url = |cursor: Option<u64>| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.extend_pairs(link);
        if let Some(c) = cursor {
            s.append_pair("_cursor", &encode_cursor(false, c));
        }
        let qs = s.finish();
        if qs.is_empty() {
            format!("{base}/AuditEvent")
        } else {
            format!("{base}/AuditEvent?{qs}")
        }
    };
    let mut links = vec![json!({ "relation": "self", "url": url(after) })];
    if let Some(n) = page.next {
        links.push(json!({ "relation": "next", "url": url(Some(n)) }));
    }
    let entries: Vec<Value> = page
        .items
        .iter()
        .map(|a| {
            json!({
                "fullUrl": format!("{base}/AuditEvent/{}", a.seq),
                "resource": audit_event(a, orgnr),
                "search": { "mode": "match" },
            })
        })
        .collect();
    let mut body = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
    });
    if !entries.is_empty() {
        body["entry"] = Value::Array(entries);
    }
    body
}

/// One audit record as an R4 `AuditEvent`.
pub fn audit_event(a: &StoredAudit, orgnr: &str) -> Value {
    let r = &a.record;
    let (type_coding, subtype, action) = match r.action {
        AuditAction::Push => (
            json!({ "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110106", "display": "Export" }),
            json!({ "system": "http://hl7.org/fhir/restful-interaction", "code": "transaction", "display": "transaction" }),
            "E",
        ),
        other => {
            let (code, action) = match other {
                AuditAction::Read => ("read", "R"),
                AuditAction::Search => ("search-type", "E"),
                AuditAction::Confirm => ("operation", "U"),
                _ => ("operation", "E"),
            };
            (
                json!({ "system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation" }),
                json!({ "system": "http://hl7.org/fhir/restful-interaction", "code": code, "display": code }),
                action,
            )
        }
    };
    let (who_system, who) = match &r.agent {
        AuditAgent::Client(c) => ("urn:knutepunkt:client", c.as_str()),
        AuditAgent::Destination(d) => ("urn:knutepunkt:destination", d.as_str()),
        AuditAgent::Unauthenticated => ("urn:knutepunkt:client", "(insecure-dev, unauthenticated)"),
    };
    let mut entities = Vec::new();
    for res in r.resource_refs() {
        entities.push(json!({
            "what": { "reference": res.to_string() },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
        }));
    }
    for p in &r.patients {
        entities.push(json!({
            "what": { "identifier": { "system": PSEUDONYM_SYSTEM, "value": p.pseudonym } },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient" },
            "detail": [{ "type": "identifier-system", "valueString": p.system }],
        }));
    }
    if let Some(query) = &r.query {
        entities.push(json!({
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query" },
            "query": STANDARD.encode(query.as_bytes()),
        }));
    }
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "id": a.seq.to_string(),
        "type": type_coding,
        "subtype": [subtype],
        "action": action,
        "recorded": seq_to_time(a.seq).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "outcome": match r.outcome { AuditOutcome::Success => "0", AuditOutcome::MinorFailure => "4" },
        "agent": [{
            "who": { "identifier": { "system": who_system, "value": who } },
            "requestor": true,
        }],
        "source": {
            "site": orgnr,
            "observer": { "display": "knutepunkt" },
            "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server" }],
        },
    });
    if !entities.is_empty() {
        ev["entity"] = Value::Array(entities);
    }
    ev
}
