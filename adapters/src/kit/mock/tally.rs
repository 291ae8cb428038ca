//! What `knutepunkt-mock` saw: one printed line per event (with the fix for
//! a refusal) and the summary printed at the end.
//!
//! Lines never contain a national id: the hub's error messages name fields,
//! not values, and the mock prints only event ids and resources.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Mutex;

use knutepunkt::ingest::Rejection;
use knutepunkt::proto::v1 as pb;

use super::View;

#[derive(Default)]
struct State {
    events: u64,
    unary: u64,
    accepted: u64,
    duplicate: u64,
    /// error_code (+ field for invalid_argument) → count.
    rejected: BTreeMap<String, u64>,
    /// event_ids answered UNAVAILABLE on purpose, not yet sent again.
    failed_waiting: BTreeSet<String>,
    failed_on_purpose: u64,
    resent_after_failure: u64,
    streams_ended: u64,
    streams_dropped: u64,
}

/// Counts and prints. Shared by all calls.
#[derive(Default)]
pub struct Tally {
    state: Mutex<State>,
}

impl Tally {
    /// Prints the line for event number `n` and counts it.
    pub(super) fn record(&self, n: u64, how: &str, event_id: &str, v: &View<'_>) {
        let shown = if event_id.is_empty() {
            "(no event_id)"
        } else {
            event_id
        };
        let line = match v {
            View::Stored(r) => format!(
                "#{n:<4} {how:<9} {shown}  {} {}",
                pb::ReceiptStatus::try_from(r.status)
                    .map(|s| s.as_str_name())
                    .unwrap_or("?"),
                r.resource
            ),
            View::Rejected(rej) => format!(
                "#{n:<4} {how:<9} {shown}  REJECTED {}: {}\n      fix: {}",
                rej.code(),
                rej,
                rej.advice()
            ),
            View::Unavailable => format!(
                "#{n:<4} {how:<9} {shown}  UNAVAILABLE on purpose (--fail-rate): your client should retry with the same event_id"
            ),
        };
        println!("{line}");
        let Ok(mut s) = self.state.lock() else { return };
        s.events += 1;
        if how == "unary" {
            s.unary += 1;
        }
        if s.failed_waiting.remove(event_id) {
            s.resent_after_failure += 1;
        }
        match v {
            View::Stored(r) if r.status == pb::ReceiptStatus::Duplicate as i32 => s.duplicate += 1,
            View::Stored(_) => s.accepted += 1,
            View::Rejected(rej) => *s.rejected.entry(rule_of(rej)).or_default() += 1,
            View::Unavailable => {
                s.failed_on_purpose += 1;
                if !event_id.is_empty() {
                    s.failed_waiting.insert(event_id.to_string());
                }
            }
        }
    }

    pub(super) fn dropped_stream(&self, stream: u64, after: u64) {
        println!("stream {stream}: dropped on purpose after {after} events (--drop-stream-after)");
        if let Ok(mut s) = self.state.lock() {
            s.streams_dropped += 1;
        }
    }

    pub(super) fn stream_ended(&self, stream: u64, events: u64) {
        println!("stream {stream}: ended by the client after {events} events");
        if let Ok(mut s) = self.state.lock() {
            s.streams_ended += 1;
        }
    }

    /// How many events were rejected under `rule` (e.g. `invalid_argument
    /// patient.value`, `conflict`).
    pub fn rejected(&self, rule: &str) -> u64 {
        self.state
            .lock()
            .map(|s| s.rejected.get(rule).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The summary printed when the mock stops.
    pub fn summary(&self) -> String {
        let Ok(s) = self.state.lock() else {
            return "summary unavailable".into();
        };
        let mut out = String::new();
        let _ = writeln!(out, "knutepunkt-mock summary");
        let _ = writeln!(
            out,
            "  events: {} ({} unary, {} on streams); streams: {} ended by the client, {} dropped on purpose",
            s.events,
            s.unary,
            s.events - s.unary,
            s.streams_ended,
            s.streams_dropped
        );
        let rejected: u64 = s.rejected.values().sum();
        let _ = writeln!(
            out,
            "  ACCEPTED {}, DUPLICATE {}, REJECTED {}, UNAVAILABLE on purpose {}",
            s.accepted, s.duplicate, rejected, s.failed_on_purpose
        );
        for (rule, n) in &s.rejected {
            let _ = writeln!(out, "    rejected {n:>4} × {rule}");
        }
        if s.failed_on_purpose > 0 {
            let _ = writeln!(
                out,
                "  retries: {} of {} events answered UNAVAILABLE were sent again",
                s.resent_after_failure, s.failed_on_purpose
            );
            if !s.failed_waiting.is_empty() {
                let ids: Vec<&str> = s
                    .failed_waiting
                    .iter()
                    .take(5)
                    .map(String::as_str)
                    .collect();
                let _ = writeln!(
                    out,
                    "  NOT RESENT after UNAVAILABLE: {} (e.g. {}): your client must retry them with the same event_id",
                    s.failed_waiting.len(),
                    ids.join(", ")
                );
            }
        }
        let verdict = if rejected == 0 && s.failed_waiting.is_empty() {
            "every event was stored or answered as a duplicate"
        } else if s.failed_waiting.is_empty() {
            "some events were refused: see the fixes above"
        } else {
            "some events were refused or never resent: see above"
        };
        let _ = writeln!(out, "  {verdict}");
        out
    }
}

/// `invalid_argument patient.value`, or just the code for other refusals.
fn rule_of(rej: &Rejection) -> String {
    match rej {
        Rejection::Invalid(inv) => format!("{} {}", rej.code(), inv.field),
        _ => rej.code().to_string(),
    }
}
