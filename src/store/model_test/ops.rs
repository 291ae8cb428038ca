//! The operations of the model-based test, their random generation, and the
//! records they write. Operations name things by small indexes (vendor,
//! event, patient, "the n-th item of the last take"), resolved when they
//! run, so proptest can shrink a failing sequence by dropping steps.

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use crate::domain::{Orgnr, ResourceType, VendorId, synthetic};
use crate::normalize::Normalized;
use crate::store::{Class, ConsumerSpec, NewRecord, RetentionPolicy, patient_key};

pub const SEC: u64 = 1_000_000;
pub const ORGS: [&str; 2] = ["958935420", "964338531"];
pub const VENDORS: [&str; 2] = ["acme", "bravo"];
/// Consumers by index; `a-sen` exists only after an [`Op::Join`].
pub const NAMES: [&str; 6] = ["a-epj", "a-pull", "a-vakt", "b-epj", "a-tilsyn", "a-sen"];
/// (system, code) of measurements; alarms carry `ALARM_CODE`.
pub const CODES: [(&str, &str); 3] = [
    ("http://loinc.org", "8867-4"),
    ("http://loinc.org", "59408-5"),
    ("urn:oid:2.16.578.1.12.4.1.1.7110", "NPU03011"),
];
pub const ALARM_CODE: (&str, &str) = ("urn:knutepunkt:alarm-type", "fall");
pub const PATIENT_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.1";

pub fn org(i: usize) -> Orgnr {
    Orgnr::parse(ORGS[i % 2]).unwrap_or_else(|e| panic!("{e}"))
}

/// Two municipalities. In A: two log consumers that escalate to `a-vakt`
/// (escalation only), and a third (`a-tilsyn`) that escalates to one of
/// them (a chain, and a fallback that reads the log itself); in B one
/// consumer without fallback.
pub fn consumers() -> Vec<ConsumerSpec> {
    let spec = |name: &str, o: usize, only: bool, to: Option<&str>| ConsumerSpec {
        name: name.into(),
        municipality: org(o),
        escalation_only: only,
        escalate_to: to.map(str::to_string),
        red_deadline_us: 30 * SEC,
        yellow_deadline_us: 120 * SEC,
    };
    vec![
        spec("a-epj", 0, false, Some("a-vakt")),
        spec("a-pull", 0, false, Some("a-vakt")),
        spec("a-vakt", 0, true, None),
        spec("b-epj", 1, false, None),
        spec("a-tilsyn", 0, false, Some("a-pull")),
    ]
}

/// The consumers after an [`Op::Join`]: `a-sen` (municipality A, reads the
/// log) is configured at a restart, and `a-tilsyn` escalates to it from
/// then on. So a fallback can be handed alarms older than itself, which it
/// does not read from its log (the case `late.rs` checks by hand).
pub fn consumers_after_join() -> Vec<ConsumerSpec> {
    let mut v = consumers();
    for c in &mut v {
        if c.name == "a-tilsyn" {
            c.escalate_to = Some("a-sen".into());
        }
    }
    v.push(ConsumerSpec {
        name: "a-sen".into(),
        municipality: org(0),
        escalation_only: false,
        escalate_to: None,
        red_deadline_us: 30 * SEC,
        yellow_deadline_us: 120 * SEC,
    });
    v
}

/// Small retention policies (µs), picked by index.
pub fn policy(i: usize) -> RetentionPolicy {
    let mut p = RetentionPolicy::default();
    match i % 4 {
        0 => p.default = [None, None, Some(30 * SEC)],
        1 => p.default = [Some(60 * SEC), Some(60 * SEC), Some(10 * SEC)],
        2 => {
            p.per_municipality.insert(org(0), [Some(SEC); 3]);
        }
        _ => p.default = [Some(0); 3],
    }
    p
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Alarm(Class),
    /// Index into [`CODES`].
    Measurement(usize),
    /// Answers the alarm with this event index (same vendor), if any.
    Note(Option<usize>),
}

#[derive(Debug, Clone)]
pub struct PutOp {
    pub vendor: usize,
    pub event: usize,
    pub org: usize,
    pub patient: usize,
    pub kind: Kind,
    /// Another variant under the same (vendor, event) is other content.
    pub variant: u8,
    pub oversize: bool,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered,
    DeadLetter { attempts: u32, error: usize },
    Release,
}

#[derive(Debug, Clone)]
pub enum Op {
    Put(PutOp),
    /// `lease`: seconds after `now`.
    Take {
        consumer: usize,
        max: usize,
        lease: Option<u64>,
    },
    /// Outcomes for the n-th items of the last take (or, when `stray` or
    /// nothing was taken, for the n-th stored event and `consumer`).
    Settle {
        picks: Vec<(usize, Outcome)>,
        stray: bool,
        consumer: usize,
    },
    Advance {
        secs: u64,
    },
    Escalate,
    Replay {
        pick: usize,
    },
    Discard {
        pick: usize,
        reason: usize,
    },
    Retention {
        policy: usize,
    },
    Restart,
    /// A restart with [`consumers_after_join`] (a plain restart once joined).
    Join,
    Search(SearchOp),
    DeadLetters {
        consumer: Option<usize>,
        code: Option<usize>,
        range: Option<(usize, usize)>,
        limit: usize,
    },
    AuditAppend {
        records: Vec<(usize, Option<usize>)>,
    },
    AuditSearch {
        org: usize,
        patient: Option<usize>,
        count: usize,
    },
    AuditPrune {
        pick: usize,
    },
    JtiClaim {
        client: usize,
        jti: usize,
        exp: u64,
        now: u64,
    },
    JtiPrune {
        now: u64,
    },
}

#[derive(Debug, Clone)]
pub struct SearchOp {
    pub org: usize,
    pub observation: bool,
    pub patient: Option<usize>,
    /// Indexes into [`CODES`] (3: the alarm code), ORed; `true`: with system.
    pub codes: Vec<(usize, bool)>,
    pub category: Option<usize>,
    /// Indexes into the stored seqs for `min_seq..=max_seq`.
    pub range: Option<(usize, usize)>,
    pub count: usize,
    pub descending: bool,
}

pub const CATEGORIES: [&str; 3] = ["vital-signs", "alert", "notification"];
pub const ERRORS: [&str; 2] = ["422 Unprocessable Entity", "400 Bad Request"];

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![Just(Class::Red), Just(Class::Yellow), Just(Class::Routine)]
}

/// Which operations a run draws, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Every operation.
    Broad,
    /// Mostly alarms, three times the events, small takes and many settles:
    /// a class's unsettled alarms pass the in-memory window (3 in tests)
    /// and the floor meets alarms that wait on disk, which the broad mix
    /// rarely makes.
    Alarms,
}

fn kind(mix: Mix) -> impl Strategy<Value = Kind> {
    let alarms = if mix == Mix::Alarms { 12 } else { 3 };
    prop_oneof![
        alarms => class().prop_map(Kind::Alarm),
        4 => (0..CODES.len()).prop_map(Kind::Measurement),
        3 => proptest::option::weighted(0.9, 0..8usize).prop_map(Kind::Note),
    ]
}

fn put(mix: Mix) -> impl Strategy<Value = PutOp> {
    let events: usize = if mix == Mix::Alarms { 24 } else { 8 };
    (
        0..2usize,
        0..events,
        0..2usize,
        0..3usize,
        kind(mix),
        0..2u8,
    )
        .prop_flat_map(|(vendor, event, org, patient, kind, variant)| {
            proptest::bool::weighted(0.03).prop_map(move |oversize| PutOp {
                vendor,
                event,
                org,
                patient,
                kind,
                variant,
                oversize,
            })
        })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        5 => Just(Outcome::Delivered),
        3 => (1..5u32, 0..2usize).prop_map(|(attempts, error)| Outcome::DeadLetter { attempts, error }),
        2 => Just(Outcome::Release),
    ]
}

fn search() -> impl Strategy<Value = SearchOp> {
    (
        0..2usize,
        any::<bool>(),
        proptest::option::of(0..3usize),
        proptest::collection::vec((0..4usize, any::<bool>()), 0..3),
        proptest::option::weighted(0.3, 0..3usize),
        proptest::option::weighted(0.3, (0..40usize, 0..40usize)),
        1..5usize,
        any::<bool>(),
    )
        .prop_map(
            |(org, observation, patient, codes, category, range, count, descending)| SearchOp {
                org,
                observation,
                patient,
                codes,
                category,
                range,
                count,
                descending,
            },
        )
}

/// The alarm mix: puts, small takes, settles, time, escalation, restarts.
fn alarm_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => put(Mix::Alarms).prop_map(Op::Put),
        16 => (0..NAMES.len(), 1..4usize, proptest::option::of(60..300u64))
            .prop_map(|(consumer, max, lease)| Op::Take { consumer, max, lease }),
        // Stray settles reach any stored event: a pull client confirming
        // what it found by search, alarms still on disk included.
        20 => (proptest::collection::vec((0..48usize, outcome()), 1..4), proptest::bool::weighted(0.4), 0..NAMES.len())
            .prop_map(|(picks, stray, consumer)| Op::Settle { picks, stray, consumer }),
        3 => (1..400u64).prop_map(|secs| Op::Advance { secs }),
        3 => Just(Op::Escalate),
        1 => (0..8usize).prop_map(|pick| Op::Replay { pick }),
        1 => (0..4usize).prop_map(|policy| Op::Retention { policy }),
        3 => Just(Op::Restart),
        1 => Just(Op::Join),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => put(Mix::Broad).prop_map(Op::Put),
        14 => (0..NAMES.len(), 0..7usize, proptest::option::of(60..300u64))
            .prop_map(|(consumer, max, lease)| Op::Take { consumer, max, lease }),
        14 => (proptest::collection::vec((0..8usize, outcome()), 1..4), proptest::bool::weighted(0.15), 0..NAMES.len())
            .prop_map(|(picks, stray, consumer)| Op::Settle { picks, stray, consumer }),
        5 => (1..400u64).prop_map(|secs| Op::Advance { secs }),
        4 => Just(Op::Escalate),
        3 => (0..8usize).prop_map(|pick| Op::Replay { pick }),
        2 => (0..8usize, 0..2usize).prop_map(|(pick, reason)| Op::Discard { pick, reason }),
        3 => (0..4usize).prop_map(|policy| Op::Retention { policy }),
        2 => Just(Op::Restart),
        1 => Just(Op::Join),
        5 => search().prop_map(Op::Search),
        2 => (
            proptest::option::of(0..NAMES.len()),
            proptest::option::weighted(0.3, 0..4usize),
            proptest::option::weighted(0.3, (0..40usize, 0..40usize)),
            1..5usize,
        )
            .prop_map(|(consumer, code, range, limit)| Op::DeadLetters { consumer, code, range, limit }),
        2 => proptest::collection::vec((0..2usize, proptest::option::of(0..3usize)), 1..4)
            .prop_map(|records| Op::AuditAppend { records }),
        2 => (0..2usize, proptest::option::of(0..3usize), 1..4usize)
            .prop_map(|(org, patient, count)| Op::AuditSearch { org, patient, count }),
        1 => (0..10usize).prop_map(|pick| Op::AuditPrune { pick }),
        2 => (0..2usize, 0..3usize, 0..20u64, 0..20u64)
            .prop_map(|(client, jti, exp, now)| Op::JtiClaim { client, jti, exp, now }),
        1 => (0..20u64).prop_map(|now| Op::JtiPrune { now }),
    ]
}

/// A run: up to `max_ops` operations.
pub fn ops(max_ops: usize, mix: Mix) -> BoxedStrategy<Vec<Op>> {
    match mix {
        Mix::Broad => proptest::collection::vec(op(), 1..=max_ops).boxed(),
        Mix::Alarms => proptest::collection::vec(alarm_op(), 1..=max_ops).boxed(),
    }
}

pub fn event_id(event: usize) -> String {
    format!("ev-{event}")
}

pub fn patient(i: usize) -> [u8; 16] {
    patient_key(PATIENT_OID, &synthetic::fnr(i as u32 + 1))
}

/// The record a [`PutOp`] writes.
pub fn record(p: &PutOp) -> NewRecord {
    let vendor = VendorId(VENDORS[p.vendor % 2].into());
    let event_id = event_id(p.event);
    let id = crate::domain::resource_id(&vendor, &event_id);
    let (resource_type, category, class, codes) = match p.kind {
        Kind::Alarm(c) => (ResourceType::Communication, "alert", c, vec![ALARM_CODE]),
        Kind::Measurement(i) => (
            ResourceType::Observation,
            "vital-signs",
            Class::Routine,
            vec![CODES[i % CODES.len()]],
        ),
        Kind::Note(_) => (
            ResourceType::Communication,
            "notification",
            Class::Routine,
            vec![],
        ),
    };
    let padding = if p.oversize {
        "x".repeat(70 * 1024)
    } else {
        String::new()
    };
    let json = format!(
        "{{\"resourceType\":\"{}\",\"id\":\"{id}\",\"status\":\"final\",\"note\":\"{:?} {} {}{padding}\"}}",
        resource_type.as_str(),
        p.kind,
        p.patient,
        p.variant,
    );
    let mut h = Sha256::new();
    h.update(
        format!(
            "{}|{}|{:?}|{}|{}",
            p.org, p.patient, p.kind, p.variant, p.oversize
        )
        .as_bytes(),
    );
    NewRecord {
        vendor,
        event_id,
        content_hash: h.finalize().into(),
        municipality: org(p.org),
        patient_key: patient(p.patient),
        resource: Normalized {
            resource_type,
            id,
            json,
            codes: codes
                .into_iter()
                .map(|(s, c)| (s.to_string(), c.to_string()))
                .collect(),
            category,
            urgent: class.is_urgent(),
        },
        answers_alarm: match p.kind {
            Kind::Note(a) => a.map(event_id_of),
            _ => None,
        },
        is_alarm: matches!(p.kind, Kind::Alarm(_)),
        class,
    }
}

fn event_id_of(i: usize) -> String {
    event_id(i)
}
