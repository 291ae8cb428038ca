//! The scripted conformance scenario (`conformance run`): every payload
//! kind, duplicates, a resend after a timeout, the closed loop, each
//! rejection the contract names, and a stream that breaks and is resumed.
//!
//! Each rule is one [`Check`] with a stable id, so a report says exactly
//! which rule an integration (or a hub) does not keep. The stream checks
//! live in [`streams`].

mod streams;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1 as pb;
use tonic::Code;

use super::events::{EventKit, MEASUREMENTS};
use super::report::{Check, Report, Verdict};
use super::retry::{Answer, Sender};
use super::target::Target;

/// What one run needs besides the connection.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub kit: EventKit,
    /// A valid orgnr outside the vendor's agreement.
    pub other_municipality: String,
    /// The agreement's largest event, bytes (the hub's default is 65536).
    pub max_message_bytes: usize,
}

/// What the checks share.
pub(crate) struct Ctx {
    pub sender: Sender,
    pub kit: EventKit,
    pub target: Target,
    pub reconnects: Arc<AtomicU64>,
    pub other_municipality: String,
    pub max_message_bytes: usize,
}

type Outcome = (Verdict, String);

fn pass(detail: impl Into<String>) -> Outcome {
    (Verdict::Pass, detail.into())
}

fn fail(why: impl Into<String>, detail: impl Into<String>) -> Outcome {
    (Verdict::Fail(why.into()), detail.into())
}

/// Runs the whole scenario against `target`; the report says what passed.
pub async fn run(sc: &Scenario, target: &Target, target_name: &str) -> Report {
    let mut report = Report {
        target: target_name.to_string(),
        vendor_note: format!(
            "run {} for municipality {}",
            sc.kit.run, sc.kit.municipality
        ),
        ..Report::default()
    };
    let channel = match target.connect().await {
        Ok(c) => c,
        Err(e) => {
            report.checks.push(Check {
                rule: "connect",
                title: "the hub accepts a gRPC connection with your certificate",
                verdict: Verdict::Fail(format!("{e:#}")),
                detail: String::new(),
                took: Duration::ZERO,
            });
            return report;
        }
    };
    let mut ctx = Ctx {
        sender: Sender::new(EventClient::new(channel)),
        kit: sc.kit.clone(),
        target: target.clone(),
        reconnects: Arc::new(AtomicU64::new(0)),
        other_municipality: sc.other_municipality.clone(),
        max_message_bytes: sc.max_message_bytes,
    };
    payloads(&mut ctx, &mut report).await;
    idempotency(&mut ctx, &mut report).await;
    rejections(&mut ctx, &mut report).await;
    streams::checks(&mut ctx, &mut report).await;
    report.retries = ctx.sender.retries.load(Ordering::Relaxed);
    report.reconnects = ctx.reconnects.load(Ordering::Relaxed);
    report
}

/// Times one check and adds it to the report.
async fn record<F>(report: &mut Report, rule: &'static str, title: &'static str, f: F)
where
    F: std::future::Future<Output = Outcome>,
{
    let t0 = Instant::now();
    let (verdict, detail) = f.await;
    let line = match &verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail(_) => "FAIL",
        Verdict::Skip(_) => "SKIP",
    };
    eprintln!("{line}  {rule}");
    report.checks.push(Check {
        rule,
        title,
        verdict,
        detail,
        took: t0.elapsed(),
    });
}

/// An answer that means "stored": ACCEPTED, or DUPLICATE when an earlier
/// attempt that timed out on the way back was stored after all.
fn stored(answer: &Answer, resource_type: &str) -> Result<String, String> {
    match answer.receipt() {
        Some(r)
            if (r.status == pb::ReceiptStatus::Accepted as i32
                || r.status == pb::ReceiptStatus::Duplicate as i32)
                && r.resource.starts_with(&format!("{resource_type}/")) =>
        {
            Ok(r.resource.clone())
        }
        _ => Err(format!(
            "expected RECEIPT_STATUS_ACCEPTED with a {resource_type}, got {}",
            answer.describe()
        )),
    }
}

async fn expect_stored(ctx: &mut Ctx, ev: pb::Event, resource_type: &str) -> Outcome {
    let answer = ctx.sender.send(ev).await;
    match stored(&answer, resource_type) {
        Ok(_) => pass(answer.describe()),
        Err(why) => fail(why, answer.describe()),
    }
}

async fn payloads(ctx: &mut Ctx, report: &mut Report) {
    for (kind, name, value, unit) in MEASUREMENTS {
        let rule: &'static str = match *name {
            "blood_pressure" => "payload.measurement.blood_pressure",
            "heart_rate" => "payload.measurement.heart_rate",
            "oxygen_saturation" => "payload.measurement.oxygen_saturation",
            "body_weight" => "payload.measurement.body_weight",
            "body_temperature" => "payload.measurement.body_temperature",
            "respiratory_rate" => "payload.measurement.respiratory_rate",
            _ => "payload.measurement.blood_glucose",
        };
        let ev = ctx
            .kit
            .measurement(&format!("m-{name}"), *kind, *value, unit);
        record(
            report,
            rule,
            "a measurement of this kind in a UCUM unit is stored as an Observation",
            expect_stored(ctx, ev, "Observation"),
        )
        .await;
    }
    for (sev, rule) in [
        (
            pb::Severity::Unspecified,
            "payload.alarm.severity_unspecified",
        ),
        (pb::Severity::Green, "payload.alarm.severity_green"),
        (pb::Severity::Yellow, "payload.alarm.severity_yellow"),
        (pb::Severity::Red, "payload.alarm.severity_red"),
    ] {
        let ev = ctx
            .kit
            .alarm(&format!("a-{}", sev.as_str_name()), "4.2", sev);
        record(
            report,
            rule,
            "an alarm with a VKP code and this severity is stored as a Communication",
            expect_stored(ctx, ev, "Communication"),
        )
        .await;
    }
    let ev = ctx.kit.note("note-alone", None);
    record(
        report,
        "payload.note",
        "a note that answers no alarm is stored as a Communication",
        expect_stored(ctx, ev, "Communication"),
    )
    .await;
}

async fn idempotency(ctx: &mut Ctx, report: &mut Report) {
    record(
        report,
        "idempotency.duplicate",
        "the same event sent again is answered DUPLICATE with the original resource",
        duplicate(ctx),
    )
    .await;
    record(
        report,
        "idempotency.resend_after_timeout",
        "an event resent after a timeout is stored once",
        resend_after_timeout(ctx),
    )
    .await;
    record(
        report,
        "closed_loop.note_answers_alarm",
        "a note with in_response_to = an alarm's event_id is stored (alarm, then note)",
        closed_loop(ctx),
    )
    .await;
}

/// Sends `ev` until stored; then once more, which must be DUPLICATE of it.
async fn stored_then_duplicate(ctx: &mut Ctx, ev: pb::Event, rtype: &str) -> Outcome {
    let first = ctx.sender.send(ev.clone()).await;
    let resource = match stored(&first, rtype) {
        Ok(r) => r,
        Err(why) => return fail(why, first.describe()),
    };
    let again = ctx.sender.send(ev).await;
    match again.receipt() {
        Some(r) if r.status == pb::ReceiptStatus::Duplicate as i32 && r.resource == resource => {
            pass(format!("{resource}, then {}", again.describe()))
        }
        _ => fail(
            format!(
                "expected RECEIPT_STATUS_DUPLICATE with {resource}, got {}",
                again.describe()
            ),
            format!("first: {}", first.describe()),
        ),
    }
}

async fn duplicate(ctx: &mut Ctx) -> Outcome {
    let ev = ctx.kit.heart_rate("dup", 64.0);
    stored_then_duplicate(ctx, ev, "Observation").await
}

async fn resend_after_timeout(ctx: &mut Ctx) -> Outcome {
    let ev = ctx.kit.heart_rate("timeout", 66.0);
    // A deadline no hub can meet: the event may or may not be stored.
    let first = match ctx.sender.once(ev.clone(), Duration::from_millis(1)).await {
        Ok(r) => format!("first attempt answered in time: {}", r.resource),
        Err(s) => format!("first attempt: {:?}", s.code()),
    };
    let (verdict, detail) = stored_then_duplicate(ctx, ev, "Observation").await;
    (verdict, format!("{first}; {detail}"))
}

async fn closed_loop(ctx: &mut Ctx) -> Outcome {
    let alarm = ctx.kit.alarm("loop-alarm", "4.1", pb::Severity::Red);
    let alarm_id = alarm.event_id.clone();
    let a = ctx.sender.send(alarm).await;
    if let Err(why) = stored(&a, "Communication") {
        return fail(format!("the alarm: {why}"), a.describe());
    }
    let note = ctx.kit.note("loop-note", Some(&alarm_id));
    let n = ctx.sender.send(note).await;
    match stored(&n, "Communication") {
        Ok(_) => pass(format!("alarm {}, note {}", a.describe(), n.describe())),
        Err(why) => fail(format!("the note: {why}"), n.describe()),
    }
}

/// Expects a final refusal with one of `codes` whose message names `field`.
fn refused(answer: &Answer, codes: &[Code], field: &str) -> Outcome {
    match answer {
        Answer::Refused(s) if codes.contains(&s.code()) && s.message().contains(field) => {
            pass(answer.describe())
        }
        _ => fail(
            format!(
                "expected {codes:?} naming {field:?}, got {}",
                answer.describe()
            ),
            answer.describe(),
        ),
    }
}

/// An event the hub must refuse: the rule, its title, the status codes
/// allowed and the field the message must name.
struct Refusal {
    rule: &'static str,
    title: &'static str,
    event: pb::Event,
    codes: &'static [Code],
    field: &'static str,
}

async fn expect_refused(ctx: &mut Ctx, report: &mut Report, r: Refusal) {
    let a = ctx.sender.send(r.event).await;
    record(report, r.rule, r.title, async {
        refused(&a, r.codes, r.field)
    })
    .await;
}

async fn rejections(ctx: &mut Ctx, report: &mut Report) {
    for r in field_refusals(ctx) {
        expect_refused(ctx, report, r).await;
    }

    record(
        report,
        "rejection.conflict",
        "an event_id reused for other content is refused with ALREADY_EXISTS",
        conflict(ctx),
    )
    .await;

    for r in agreement_refusals(ctx) {
        expect_refused(ctx, report, r).await;
    }

    record(
        report,
        "rejection.missing_event",
        "a SubmitRequest without an event is refused with INVALID_ARGUMENT naming event",
        missing_event(ctx),
    )
    .await;
}

/// Events with a bad field: a patient number with a broken control digit,
/// an impossible value, an unknown alarm code.
fn field_refusals(ctx: &Ctx) -> [Refusal; 3] {
    let mut bad_fnr = ctx.kit.heart_rate("bad-fnr", 70.0);
    if let Some(p) = bad_fnr.patient.as_mut() {
        // Break the last control digit of a synthetic number.
        let last = p.value.pop().and_then(|c| c.to_digit(10)).unwrap_or(0);
        p.value.push(char::from(b'0' + ((last + 1) % 10) as u8));
    }
    [
        Refusal {
            rule: "rejection.invalid_argument",
            title: "a bad field is refused with INVALID_ARGUMENT naming the field (patient.value)",
            event: bad_fnr,
            codes: &[Code::InvalidArgument],
            field: "patient.value",
        },
        Refusal {
            rule: "rejection.impossible_value",
            title: "a physically impossible value (SpO2 120 %) is refused with INVALID_ARGUMENT",
            event: ctx.kit.measurement(
                "spo2-120",
                pb::MeasurementKind::OxygenSaturation,
                120.0,
                "%",
            ),
            codes: &[Code::InvalidArgument],
            field: "measurement.quantity",
        },
        Refusal {
            rule: "rejection.unknown_alarm_code",
            title: "an alarm code outside the VKP list is refused with INVALID_ARGUMENT naming alarm.code",
            event: ctx.kit.alarm("code-9.99", "9.99", pb::Severity::Red),
            codes: &[Code::InvalidArgument],
            field: "alarm.code",
        },
    ]
}

/// Events that are well formed but break the hub's state or the agreement:
/// a note answering no stored alarm, a foreign municipality, an event over
/// the size limit.
fn agreement_refusals(ctx: &Ctx) -> [Refusal; 3] {
    let mut foreign = ctx.kit.heart_rate("foreign", 70.0);
    foreign.municipality = ctx.other_municipality.clone();
    let mut too_large = ctx.kit.alarm("too-large", "4.1", pb::Severity::Green);
    if let Some(pb::event::Payload::Alarm(al)) = too_large.payload.as_mut() {
        al.text = "x".repeat(ctx.max_message_bytes + 1024);
    }
    [
        Refusal {
            rule: "rejection.unknown_alarm",
            title: "a note answering an alarm the hub has not stored is refused naming in_response_to",
            event: ctx
                .kit
                .note("orphan-note", Some(&ctx.kit.id("no-such-alarm"))),
            codes: &[Code::InvalidArgument],
            field: "in_response_to",
        },
        Refusal {
            rule: "rejection.not_permitted",
            title: "an event for a municipality outside your agreement is refused",
            event: foreign,
            codes: &[Code::PermissionDenied, Code::InvalidArgument],
            field: "municipality",
        },
        Refusal {
            rule: "rejection.too_large",
            title: "an event over the agreement's size is refused with RESOURCE_EXHAUSTED (not retried)",
            event: too_large,
            codes: &[Code::ResourceExhausted],
            field: "",
        },
    ]
}

async fn conflict(ctx: &mut Ctx) -> Outcome {
    let ev = ctx.kit.heart_rate("conflict", 71.0);
    let first = ctx.sender.send(ev.clone()).await;
    if let Err(why) = stored(&first, "Observation") {
        return fail(format!("the first event: {why}"), first.describe());
    }
    let other = ctx.kit.heart_rate("conflict", 99.0);
    let a = ctx.sender.send(other).await;
    refused(&a, &[Code::AlreadyExists], "event_id")
}

async fn missing_event(ctx: &mut Ctx) -> Outcome {
    let mut attempt = 0;
    let answer = loop {
        let mut req = tonic::Request::new(pb::SubmitRequest { event: None });
        req.set_timeout(super::retry::CALL_TIMEOUT);
        match ctx.sender.client.raw().submit(req).await {
            Ok(r) => {
                break match r.into_inner().receipt {
                    Some(rc) => Answer::Receipt(rc),
                    None => Answer::Refused(tonic::Status::ok("answered without a receipt")),
                };
            }
            Err(s) => match super::retry::retry_after(&s, attempt) {
                Some(wait) if attempt + 1 < super::retry::MAX_ATTEMPTS => {
                    attempt += 1;
                    ctx.sender.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                }
                _ => break Answer::Refused(s),
            },
        }
    };
    refused(&answer, &[Code::InvalidArgument], "event")
}
