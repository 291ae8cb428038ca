//! A request (one Observation or a `transaction`/`batch` Bundle of them)
//! → the hub's verdicts → the FHIR answer.
//!
//! Each entry is mapped, checked and submitted on its own and gets its own
//! verdict, as in a FHIR `batch`: the hub stores events one by one and has
//! no all-or-nothing across events, so a good entry is never held back by a
//! bad one. A `transaction` is answered with a `transaction-response`, a
//! `batch` with a `batch-response`; both carry one entry per request entry,
//! in order.
//!
//! Device and Patient entries are read for the Observations' `device` and
//! `subject` references (the hub keeps both as identifiers on each
//! Observation) and are answered `200 OK` with an informational outcome.

use std::collections::HashMap;

use futures::StreamExt;
use serde_json::{Value, json};
use tonic::transport::Channel;

use knutepunkt::domain::{Orgnr, VendorId};

use super::hub::{self, Verdict};
use super::issue::{self, Issue};
use super::observation::{self, Context, Mapped, Paths};

/// Submissions to the hub in flight for one request.
const CONCURRENCY: usize = 32;

/// Who posts, for whom, and how to reach the hub as them.
#[derive(Clone)]
pub struct Submitter {
    pub vendor: VendorId,
    pub municipality: Orgnr,
    pub channel: Channel,
}

/// The answer to one entry (or to a lone Observation).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The hub decided; `paths` names the elements behind its field names.
    Hub(Verdict, Paths),
    /// The gateway refused it before the hub saw it.
    Refused(Issue),
    /// A Device or Patient entry, read for references.
    Supporting(&'static str),
}

impl Outcome {
    /// HTTP status of this outcome.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Hub(Verdict::Accepted(_), _) => 201,
            Outcome::Hub(Verdict::Duplicate(_), _) | Outcome::Supporting(_) => 200,
            Outcome::Hub(Verdict::Rejected { http, .. }, _) => *http,
            Outcome::Hub(Verdict::Unavailable(_), _) => 503,
            Outcome::Refused(i) => i.status,
        }
    }

    /// The hub's resource reference, for 201/200 answers.
    pub fn location(&self) -> Option<&str> {
        match self {
            Outcome::Hub(Verdict::Accepted(r) | Verdict::Duplicate(r), _) => Some(r),
            _ => None,
        }
    }

    /// The OperationOutcome for this outcome.
    pub fn operation_outcome(&self) -> Value {
        match self {
            Outcome::Hub(Verdict::Accepted(r), _) => {
                issue::information(&format!("stored in the hub as {r}"))
            }
            Outcome::Hub(Verdict::Duplicate(r), _) => issue::information(&format!(
                "already stored in the hub as {r}; nothing changed"
            )),
            Outcome::Hub(
                Verdict::Rejected {
                    http,
                    code,
                    field,
                    message,
                },
                paths,
            ) => {
                let fhir_code = match *code {
                    "conflict" => "conflict",
                    "not_permitted" => "forbidden",
                    "gateway_identity" => "security",
                    _ => "invalid",
                };
                let expr = field
                    .as_deref()
                    .map(|f| paths.element(f))
                    .unwrap_or_default();
                Issue::other(
                    *http,
                    fhir_code,
                    expr,
                    format!("the hub refused it ({code}): {message}"),
                )
                .outcome()
            }
            Outcome::Hub(Verdict::Unavailable(m), _) => {
                Issue::other(503, "transient", "", m.clone()).outcome()
            }
            Outcome::Refused(i) => i.outcome(),
            Outcome::Supporting(t) => issue::information(&format!(
                "{t} read for the Observations that reference it; the hub keeps it as an identifier on each Observation"
            )),
        }
    }

    /// `Bundle.entry.response` for this outcome.
    pub fn entry_response(&self) -> Value {
        let mut r = json!({ "status": issue::status_line(self.status()) });
        if let Some(l) = self.location() {
            r["location"] = json!(l);
        }
        if !matches!(
            self,
            Outcome::Hub(Verdict::Accepted(_) | Verdict::Duplicate(_), _)
        ) {
            r["outcome"] = self.operation_outcome();
        }
        json!({ "response": r })
    }
}

/// One Observation posted on its own.
pub async fn single(obs: &Value, to: &Submitter) -> Outcome {
    let none = |_: &str| None;
    let cx = Context {
        vendor: &to.vendor,
        municipality: to.municipality,
        resolve: &none,
    };
    match observation::map(obs, &cx) {
        Ok(m) => {
            let v = hub::submit(to.channel.clone(), &m.event).await;
            Outcome::Hub(v, m.paths)
        }
        Err(i) => Outcome::Refused(i),
    }
}

/// The type of the answer Bundle for a request Bundle.
fn response_type(bundle: &Value) -> Result<&'static str, Issue> {
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => Ok("transaction-response"),
        Some("batch") => Ok("batch-response"),
        _ => Err(Issue::structure(
            "Bundle.type",
            "must be \"transaction\" or \"batch\"",
        )),
    }
}

/// A Bundle: each entry's outcome, and the answer Bundle's type.
pub async fn bundle(
    b: &Value,
    to: &Submitter,
    max_entries: usize,
) -> Result<(&'static str, Vec<Outcome>), Issue> {
    let (kind, entries) = checked_entries(b, max_entries)?;
    let index = reference_index(entries);
    let resolve = |r: &str| index.get(r).copied();
    let cx = Context {
        vendor: &to.vendor,
        municipality: to.municipality,
        resolve: &resolve,
    };
    let (mut outcomes, to_submit) = classify_entries(entries, &cx);
    submit_in_rounds(to_submit, to, &mut outcomes).await;
    let outcomes = outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Outcome::Refused(Issue::other(
                    500,
                    "exception",
                    "",
                    "entry was not processed",
                ))
            })
        })
        .collect();
    Ok((kind, outcomes))
}

/// Checks the Bundle's shell: that it is a Bundle, its type (→ the answer
/// Bundle's type), and that its entries are an array of at most
/// `max_entries`.
fn checked_entries(b: &Value, max_entries: usize) -> Result<(&'static str, &[Value]), Issue> {
    if b.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(Issue::structure(
            "Bundle.resourceType",
            "must be \"Bundle\" here; post a lone Observation to .../Observation",
        ));
    }
    let kind = response_type(b)?;
    let entries: &[Value] = match b.get("entry") {
        None => &[],
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Issue::structure("Bundle.entry", "must be an array")),
    };
    if entries.len() > max_entries {
        return Err(Issue::other(
            413,
            "too-costly",
            "Bundle.entry",
            format!(
                "has {} entries; this gateway takes at most {max_entries} per Bundle: split it",
                entries.len()
            ),
        ));
    }
    Ok((kind, entries))
}

/// Maps every entry: the outcomes known without the hub (supporting
/// Patient/Device entries, refusals) by entry index, and the mapped
/// Observations still to submit.
fn classify_entries(
    entries: &[Value],
    cx: &Context<'_>,
) -> (Vec<Option<Outcome>>, Vec<(usize, Mapped)>) {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; entries.len()];
    let mut to_submit: Vec<(usize, Mapped)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match classify(i, e, cx) {
            Ok(Some(m)) => to_submit.push((i, m)),
            Ok(None) => {
                let t = if e["resource"]["resourceType"] == "Patient" {
                    "Patient"
                } else {
                    "Device"
                };
                outcomes[i] = Some(Outcome::Supporting(t));
            }
            Err(issue) => outcomes[i] = Some(Outcome::Refused(issue)),
        }
    }
    (outcomes, to_submit)
}

/// Submits the mapped entries to the hub, `CONCURRENCY` at a time, and
/// puts each verdict at its entry's index in `outcomes`.
async fn submit_in_rounds(
    to_submit: Vec<(usize, Mapped)>,
    to: &Submitter,
    outcomes: &mut [Option<Outcome>],
) {
    // The same event twice in one Bundle: the first goes ahead, the repeats
    // after it, so they get the hub's answer to a repeat (duplicate or
    // conflict) rather than racing it.
    let mut seen = std::collections::HashSet::new();
    let (first, repeats): (Vec<_>, Vec<_>) = to_submit
        .into_iter()
        .partition(|(_, m)| seen.insert(m.event.event_id.clone()));
    for round in [first, repeats] {
        let done: Vec<(usize, Outcome)> = futures::stream::iter(round)
            .map(|(i, m)| {
                let channel = to.channel.clone();
                async move {
                    let v = hub::submit(channel, &m.event).await;
                    (i, Outcome::Hub(v, m.paths))
                }
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for (i, o) in done {
            outcomes[i] = Some(o);
        }
    }
}

/// `fullUrl` and `Type/id` of every entry → its resource.
fn reference_index(entries: &[Value]) -> HashMap<String, &Value> {
    let mut index = HashMap::new();
    for e in entries {
        let Some(res) = e.get("resource") else {
            continue;
        };
        if let Some(u) = e.get("fullUrl").and_then(Value::as_str) {
            index.insert(u.to_string(), res);
        }
        if let (Some(t), Some(id)) = (
            res.get("resourceType").and_then(Value::as_str),
            res.get("id").and_then(Value::as_str),
        ) {
            index.insert(format!("{t}/{id}"), res);
        }
    }
    index
}

/// An entry: `Some` mapped Observation, `None` a supporting resource, or
/// why it is refused.
fn classify(i: usize, e: &Value, cx: &Context<'_>) -> Result<Option<Mapped>, Issue> {
    let at = |p: &str| format!("Bundle.entry[{i}].{p}");
    let res = e
        .get("resource")
        .filter(|r| r.is_object())
        .ok_or_else(|| Issue::structure(at("resource"), "is required: the Observation"))?;
    match res.get("resourceType").and_then(Value::as_str) {
        Some("Observation") => {}
        Some("Device" | "Patient") => return Ok(None),
        Some(t) => {
            return Err(Issue::not_supported(
                at("resource"),
                format!(
                    "is a {}; the gateway forwards Observations (and reads Device and Patient entries they reference)",
                    t.chars().take(40).collect::<String>()
                ),
            ));
        }
        None => {
            return Err(Issue::structure(at("resource.resourceType"), "is required"));
        }
    }
    match e
        .get("request")
        .and_then(|r| r.get("method"))
        .and_then(Value::as_str)
    {
        Some("POST") => {}
        Some(_) => {
            return Err(Issue::not_supported(
                at("request.method"),
                "must be POST: Observations are created, never updated or deleted through the gateway",
            ));
        }
        None => {
            return Err(Issue::structure(
                at("request.method"),
                "is required in a transaction or batch: POST",
            ));
        }
    }
    observation::map(res, cx).map(Some)
}

/// The answer Bundle.
pub fn response_bundle(kind: &str, outcomes: &[Outcome]) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": kind,
        "entry": outcomes.iter().map(Outcome::entry_response).collect::<Vec<_>>(),
    })
}
