//! What one load run measured, and how it is printed (text, JSON).

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::Mode;

/// What one load run measured.
pub struct LoadReport {
    pub mode: Mode,
    pub clients: u32,
    pub window: u32,
    pub rate: Option<f64>,
    pub events: u64,
    pub elapsed: Duration,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub errors: u64,
    /// Ack latency in microseconds.
    pub latency_us: Histogram<u64>,
    pub timed_out: bool,
    pub first_error: Option<String>,
    /// With `record_acks`: the `resource` of every ACCEPTED receipt and the
    /// wall-clock time it arrived, microseconds since the Unix epoch.
    pub acks: Vec<(String, i64)>,
    /// With `mark_every`: (accepted so far, time since the start).
    pub marks: Vec<(u64, Duration)>,
}

impl std::fmt::Debug for LoadReport {
    /// Counts and percentiles; the histogram's buckets would be thousands of lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl LoadReport {
    /// With marks: events/s over the first `mark_every` receipts and over
    /// the last stretch of at least that many (from the last mark that
    /// leaves one), as (first, last, events in the last stretch).
    pub fn first_last(&self) -> Option<(f64, f64, u64)> {
        let &(m, t0) = self.marks.first()?;
        let &(n, t) = self
            .marks
            .iter()
            .rev()
            .find(|(n, _)| *n + m <= self.accepted && *n >= m)?;
        let last_secs = self.elapsed.saturating_sub(t).as_secs_f64().max(1e-9);
        Some((
            m as f64 / t0.as_secs_f64().max(1e-9),
            (self.accepted - n) as f64 / last_secs,
            self.accepted - n,
        ))
    }

    /// Durable (ACCEPTED) events per second over the whole run.
    pub fn accepted_per_sec(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile in milliseconds (0 when there are no samples).
    pub fn ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            0.0
        } else {
            self.latency_us.value_at_quantile(q) as f64 / 1000.0
        }
    }

    pub fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }

    pub fn print_text(&self) {
        let pacing = match self.rate {
            Some(r) => format!("paced at {r} events/s"),
            None => "unpaced".into(),
        };
        let window = match self.mode {
            Mode::Stream => format!(", window {}", self.window),
            Mode::Unary => String::new(),
        };
        println!(
            "{} load: {} clients{window}, {} events, {pacing}{}",
            self.mode.as_str(),
            self.clients,
            self.events,
            if self.timed_out { " (TIMED OUT)" } else { "" }
        );
        println!(
            "  elapsed {:.2} s → {:.0} accepted events/s",
            self.elapsed.as_secs_f64(),
            self.accepted_per_sec()
        );
        println!(
            "  receipts: ACCEPTED {}, DUPLICATE {}, REJECTED {}; errors {}",
            self.accepted, self.duplicate, self.rejected, self.errors
        );
        println!(
            "  ack latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
            self.ms(0.5),
            self.ms(0.99),
            self.ms(0.999),
            self.max_ms(),
            self.latency_us.len()
        );
        if let Some(e) = &self.first_error {
            println!("  first error: {e}");
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode.as_str(),
            "clients": self.clients,
            "window": self.window,
            "rate": self.rate,
            "events": self.events,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "accepted_per_s": self.accepted_per_sec(),
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": self.rejected,
            "errors": self.errors,
            "ack_ms": {
                "p50": self.ms(0.5), "p99": self.ms(0.99), "p99_9": self.ms(0.999),
                "max": self.max_ms(), "samples": self.latency_us.len()
            },
            "timed_out": self.timed_out,
            "first_error": self.first_error,
        })
    }
}
