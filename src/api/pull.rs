//! Pull delivery for EPJ systems that fetch rather than receive:
//!
//! - `GET  …/$pending?_count=N[&consumer=NAME]` — a `collection` Bundle of
//!   what this consumer has not confirmed yet: RED, then YELLOW alarms, then
//!   the rest, oldest first (one patient's resources keep their order). Each
//!   item is leased to the consumer for the destination's `lease_secs`; an
//!   item not confirmed by then is offered again.
//! - `POST …/$confirm` — a `Parameters` resource with one `confirmation`
//!   part per resource: `resource` (valueReference `Type/id` or valueString),
//!   `outcome` (valueCode `journaled` or `failed`) and, for `failed`, a
//!   `reason` (valueString). Journaled items leave the queue; failed ones
//!   become dead letters an operator can see and replay.
//! - `GET  …/$status?resource=Type/id[&consumer=NAME]` — where a resource
//!   stands with each destination of the municipality (`Parameters`).
//!
//! All three need the scope `system/pending.rs`. `$pending` and `$confirm`
//! act as the consumer the client is registered as (`consumer` in its
//! `[[auth.clients]]` entry); a `consumer` parameter must then name that
//! one. In insecure-dev mode `consumer` names a pull destination of the
//! municipality and may be left out when it has exactly one. `$pending`,
//! `$confirm` and `$status` each write an audit record.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::outcome::{ApiError, fhir_response};
use super::{ApiState, audit_record, decode_query};
use crate::admin::rfc3339;
use crate::auth::{Caller, Scope};
use crate::domain::{Orgnr, ResourceType};
use crate::store::audit::{AuditAction, AuditRecord};
use crate::store::{DeliveryState, ResourceRef, Settle, time_to_seq};

/// A pull destination as the API needs it.
#[derive(Debug, Clone)]
pub struct PullConsumer {
    pub name: String,
    pub lease_secs: u64,
}

const MAX_PENDING: usize = 500;

const REFERENCE_FORM: &str = "resource must be Observation/<id> or Communication/<id>";

/// `Observation/<uuid>` or `Communication/<uuid>`.
fn parse_reference(r: &str) -> Option<(ResourceType, uuid::Uuid)> {
    let (t, i) = r.split_once('/')?;
    Some((ResourceType::parse(t)?, uuid::Uuid::parse_str(i).ok()?))
}

/// One `confirmation` of a `$confirm` body.
#[derive(Debug, Clone)]
pub struct Confirmation {
    pub resource_type: ResourceType,
    pub id: uuid::Uuid,
    pub settle: Settle,
}

/// Parses a `$confirm` body (a FHIR `Parameters` resource), without touching
/// the store: what each confirmation names and how it settles. Pure, so it
/// can be fuzzed; errors name the parameter's index, never a value sent.
pub fn parse_confirm(body: &[u8]) -> Result<Vec<Confirmation>, ApiError> {
    let params: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::invalid("the body must be a FHIR Parameters resource in JSON"))?;
    if params["resourceType"] != "Parameters" {
        return Err(ApiError::invalid(
            "the body must be a FHIR Parameters resource",
        ));
    }
    let mut out = Vec::new();
    for (n, p) in params["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if p["name"] != "confirmation" {
            return Err(ApiError::invalid(format!(
                "parameter[{n}]: only parameters named \"confirmation\" are understood"
            )));
        }
        let part = |name: &str| {
            p["part"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["name"] == name)
                .cloned()
        };
        let reference = part("resource")
            .and_then(|x| {
                x["valueReference"]["reference"]
                    .as_str()
                    .or(x["valueString"].as_str())
                    .map(str::to_string)
            })
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "parameter[{n}]: part \"resource\" (valueReference Type/id) is required"
                ))
            })?;
        let outcome = part("outcome")
            .and_then(|x| x["valueCode"].as_str().map(str::to_string))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "parameter[{n}]: part \"outcome\" (valueCode journaled|failed) is required"
                ))
            })?;
        let (rtype, id) = parse_reference(&reference)
            .ok_or_else(|| ApiError::invalid(format!("parameter[{n}]: {REFERENCE_FORM}")))?;
        let settle = match outcome.as_str() {
            "journaled" => Settle::Delivered,
            "failed" => {
                let reason = part("reason")
                    .and_then(|x| x["valueString"].as_str().map(str::to_string))
                    .filter(|r| !r.trim().is_empty())
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "parameter[{n}]: outcome failed needs a part \"reason\" (valueString)"
                        ))
                    })?;
                Settle::DeadLetter {
                    attempts: 1,
                    error: format!("EPJ reported failure: {reason}"),
                    response: None,
                }
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "parameter[{n}]: outcome must be journaled or failed"
                )));
            }
        };
        out.push(Confirmation {
            resource_type: rtype,
            id,
            settle,
        });
    }
    Ok(out)
}

fn not_served() -> ApiError {
    ApiError::not_found(
        "no FHIR base at this path: use /fhir/r4/{orgnr} with the 9-digit organisation number of a municipality this hub serves",
    )
}

fn consumer<'a>(
    st: &'a ApiState,
    org: Orgnr,
    asked: Option<&str>,
) -> Result<&'a PullConsumer, ApiError> {
    let list = st.pull.get(&org).map(Vec::as_slice).unwrap_or_default();
    match (asked, list) {
        (_, []) => Err(ApiError::not_found(
            "this municipality has no pull destination; the hub operator configures one (kind = \"pull\")",
        )),
        (None, [one]) => Ok(one),
        (None, _) => Err(ApiError::invalid(
            "this municipality has several pull destinations: name yours with consumer=NAME",
        )),
        (Some(name), list) => list.iter().find(|c| c.name == name).ok_or_else(|| {
            ApiError::not_found("consumer: no pull destination of this municipality has that name")
        }),
    }
}

pub async fn pending(
    State(st): State<Arc<ApiState>>,
    caller: Caller,
    Path(orgnr): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let org = st.municipality(&orgnr)?;
    caller.authorize(org, Scope::Pending, not_served)?;
    let mut count = 50usize;
    let mut asked = None;
    for (k, v) in decode_query(raw.as_deref())? {
        match k.as_str() {
            "_count" => {
                count = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ApiError::invalid("_count must be a whole number from 1"))?
                    .min(MAX_PENDING)
            }
            "consumer" => asked = Some(v),
            _ => {
                return Err(ApiError::invalid("$pending takes only _count and consumer"));
            }
        }
    }
    let asked = caller.pull_consumer(asked.as_deref())?;
    let c = consumer(&st, org, asked.as_deref())?.clone();
    let now = time_to_seq(chrono::Utc::now());
    let until = now + c.lease_secs * 1_000_000;
    let mut items = super::from_store(st.store.take(&c.name, count, now, Some(until))).await?;
    // At most `_count`, as asked. The rest of a longer answer stays leased
    // and is offered again when the lease ends.
    items.truncate(count);
    if items.iter().any(|i| i.resource.municipality != org) {
        tracing::error!("$pending: store returned another municipality's item; refusing");
        return Err(ApiError::internal());
    }
    let mut rec = audit_record(&caller, org, AuditAction::Pending);
    rec.query = Some(format!("$pending?consumer={}&_count={count}", c.name));
    for i in &items {
        rec.add_resource(i.resource.resource);
    }
    rec.patients = st.audit.patients_of_items(&items);
    st.audit(rec).await?;
    let body = super::bundle::collection(items.into_iter().map(|i| i.resource).collect()).map_err(
        |e| {
            tracing::error!(error = %e, "$pending: corrupt record in the store");
            ApiError::internal()
        },
    )?;
    Ok(fhir_response(StatusCode::OK, body))
}

pub async fn confirm(
    State(st): State<Arc<ApiState>>,
    caller: Caller,
    Path(orgnr): Path<String>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let org = st.municipality(&orgnr)?;
    caller.authorize(org, Scope::Pending, not_served)?;
    let asked = confirm_query(raw.as_deref())?;
    let asked = caller.pull_consumer(asked.as_deref())?;
    let c = consumer(&st, org, asked.as_deref())?.clone();
    let mut rec = audit_record(&caller, org, AuditAction::Confirm);
    rec.query = Some(format!("$confirm?consumer={}", c.name));
    let confirmations = parse_confirm(&body)?;
    let Matched {
        outcomes,
        spans,
        unknown,
    } = matched(&st, org, &c.name, &mut rec, confirmations).await?;
    let confirmed = outcomes.len();
    st.audit(rec).await?;
    let report = super::from_store(st.store.settle(&c.name, outcomes)).await?;
    drop(spans);
    for e in &report.escalated {
        crate::deliver::record_escalation(e, None);
    }
    let body = confirm_answer(confirmed, unknown, &c.name);
    Ok(fhir_response(StatusCode::OK, body.to_string()))
}

/// The `$confirm` query: only `consumer` (optional).
fn confirm_query(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut asked = None;
    for (k, v) in decode_query(raw)? {
        match k.as_str() {
            "consumer" => asked = Some(v),
            _ => {
                return Err(ApiError::invalid(
                    "$confirm takes only consumer in the query; the rest goes in the Parameters body",
                ));
            }
        }
    }
    Ok(asked)
}

/// The confirmations of resources stored in the municipality, as settle
/// outcomes.
struct Matched {
    outcomes: Vec<(u64, Settle)>,
    /// One per outcome, in its event's trace; they end after the settle.
    spans: Vec<tracing::Span>,
    /// Confirmations of resources not known in the municipality.
    unknown: usize,
}

/// Looks up the confirmed resources of municipality `org` for `consumer`
/// and adds each one found (and its patient) to the audit record `rec`.
async fn matched(
    st: &ApiState,
    org: Orgnr,
    consumer: &str,
    rec: &mut AuditRecord,
    confirmations: Vec<Confirmation>,
) -> Result<Matched, ApiError> {
    let refs = confirmations
        .iter()
        .map(|c| ResourceRef {
            resource_type: c.resource_type,
            id: c.id,
        })
        .collect();
    // One store call for the whole body, not one per confirmation.
    let found = st.store.get_many(org, refs).await.map_err(|e| {
        tracing::error!(error = %e, "$confirm: store error");
        ApiError::internal()
    })?;
    let mut m = Matched {
        outcomes: Vec::new(),
        spans: Vec::new(),
        unknown: 0,
    };
    for (Confirmation { settle, .. }, found) in confirmations.into_iter().zip(found) {
        let Some(found) = found else {
            m.unknown += 1;
            continue;
        };
        rec.add_resource(found.resource);
        st.audit.add_patient(&mut rec.patients, None, &found.json);
        let span =
            crate::telemetry::item_span("deliver.confirm", consumer, &found.resource, found.seq);
        span.record(
            "outcome",
            match &settle {
                Settle::Delivered => "delivered",
                Settle::DeadLetter { .. } => "dead_lettered",
                Settle::Release => "released",
            },
        );
        m.spans.push(span);
        m.outcomes.push((found.seq, settle));
    }
    Ok(m)
}

/// The `$confirm` answer: an OperationOutcome that counts the confirmations
/// recorded and warns of those of unknown resources.
fn confirm_answer(confirmed: usize, unknown: usize, consumer: &str) -> Value {
    let mut issues = vec![json!({
        "severity": "information",
        "code": "informational",
        "diagnostics": format!("{confirmed} confirmation(s) recorded for consumer {consumer}"),
    })];
    if unknown > 0 {
        issues.push(json!({
            "severity": "warning",
            "code": "not-found",
            "diagnostics": format!("{unknown} resource(s) are not known in this municipality and were ignored"),
        }));
    }
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

pub async fn status(
    State(st): State<Arc<ApiState>>,
    caller: Caller,
    Path(orgnr): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let org = st.municipality(&orgnr)?;
    caller.authorize(org, Scope::Pending, not_served)?;
    let mut reference = None;
    let mut asked = None;
    for (k, v) in decode_query(raw.as_deref())? {
        match k.as_str() {
            "resource" => reference = Some(v),
            "consumer" => asked = Some(v),
            _ => {
                return Err(ApiError::invalid(
                    "$status takes resource=Type/id and optionally consumer",
                ));
            }
        }
    }
    let reference = reference.ok_or_else(|| {
        ApiError::invalid("resource=Observation/<id> or Communication/<id> is required")
    })?;
    let (rtype, id) =
        parse_reference(&reference).ok_or_else(|| ApiError::invalid(REFERENCE_FORM))?;
    let Some(seq) = super::from_store(st.store.get(org, rtype, id))
        .await?
        .map(|r| r.seq)
    else {
        return Err(ApiError::not_found("no such resource in this municipality"));
    };
    let mut rec = audit_record(&caller, org, AuditAction::Status);
    rec.add_resource(ResourceRef {
        resource_type: rtype,
        id,
    });
    st.audit(rec).await?;
    let dests: Vec<&String> = st
        .destinations
        .get(&org)
        .into_iter()
        .flatten()
        .filter(|d| asked.as_deref().is_none_or(|a| a == d.as_str()))
        .collect();
    let mut params = Vec::new();
    for d in dests {
        let state = super::from_store(st.store.delivery_state(d, seq)).await?;
        let (code, detail) = match state {
            None => ("not-queued", None),
            Some(DeliveryState::Pending) => ("pending", None),
            Some(DeliveryState::Leased { until }) => ("leased", Some(rfc3339(until))),
            // The time is known only while the item sits above its
            // consumer's ack floor.
            Some(DeliveryState::Delivered { at }) => ("delivered", at.map(rfc3339)),
            Some(DeliveryState::DeadLettered { at, error }) => {
                ("dead-lettered", Some(format!("{}: {error}", rfc3339(at))))
            }
            Some(DeliveryState::Discarded { at, reason }) => {
                ("discarded", Some(format!("{}: {reason}", rfc3339(at))))
            }
        };
        let mut parts = vec![
            json!({ "name": "destination", "valueString": d }),
            json!({ "name": "state", "valueCode": code }),
        ];
        if let Some(detail) = detail {
            parts.push(json!({ "name": "detail", "valueString": detail }));
        }
        params.push(json!({ "name": "delivery", "part": parts }));
    }
    let mut body = json!({ "resourceType": "Parameters" });
    if !params.is_empty() {
        body["parameter"] = Value::Array(params);
    }
    Ok(fhir_response(StatusCode::OK, body.to_string()).into_response())
}
