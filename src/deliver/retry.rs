//! Whether to retry, and when: the pure policy of delivery, kept apart from
//! the HTTP plumbing so it can be tested with paused time.
//!
//! - [`classify`] decides *whether* a destination's answer is final.
//! - [`Backoff`] decides *how long* to wait: exponential, capped, full jitter.
//! - [`Breaker`] stops hammering a dead destination: after N consecutive
//!   failures it opens, and only a single probe goes out per open period.
//!
//! Written by hand because each is a few lines whose exact behaviour the
//! tests pin down (backon's jitter is not full jitter, and no maintained
//! crate has a breaker that fits a single-worker loop this small).

use std::time::Duration;

use tokio::time::Instant;

/// What to do with the items of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Transient: keep the items queued and try again.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Final: the destination will never take these items as they are.
    Reject {
        reason: String,
        response: Option<String>,
    },
}

/// FHIR messaging practice and vector's default HTTP rule: 2xx delivered;
/// 408, 429 and 5xx (but 501) retried; every other answer final.
pub fn classify(status: u16, retry_after: Option<Duration>, body: Option<String>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 => Verdict::Retry {
            reason: format!("destination answered {status}"),
            after: retry_after,
        },
        501 => Verdict::Reject {
            reason: "destination answered 501 Not Implemented".into(),
            response: body,
        },
        500..=599 => Verdict::Retry {
            reason: format!("destination answered {status}"),
            after: retry_after,
        },
        _ => Verdict::Reject {
            reason: format!("destination answered {status}"),
            response: body,
        },
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from EPJ systems
/// and is ignored; the backoff then applies).
pub fn parse_retry_after(v: Option<&str>) -> Option<Duration> {
    v?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Exponential backoff with full jitter: attempt n waits a uniformly random
/// time in `[0, min(cap, base · 2ⁿ)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    pub fn next_delay(&mut self) -> Duration {
        let c = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        c.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// A circuit breaker for one destination, driven by one worker.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            open_until: None,
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(t) if now < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// `Err(t)`: no request before `t`. Half-open lets one probe through.
    pub fn allow(&self, now: Instant) -> Result<(), Instant> {
        match self.open_until {
            Some(t) if now < t => Err(t),
            _ => Ok(()),
        }
    }

    /// Returns the state before the success (so the caller can log "closed").
    pub fn on_success(&mut self, now: Instant) -> BreakerState {
        let before = self.state(now);
        self.failures = 0;
        self.open_until = None;
        before
    }

    /// Returns true when this failure opened (or re-opened) the breaker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let half_open = self.state(now) == BreakerState::HalfOpen;
        if half_open || self.failures >= self.threshold {
            self.open_until = Some(now + self.open_for);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_http_rule() {
        assert_eq!(classify(200, None, None), Verdict::Delivered);
        assert_eq!(classify(201, None, None), Verdict::Delivered);
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(s, None, None), Verdict::Retry { .. }),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 409, 412, 422, 501] {
            assert!(
                matches!(classify(s, None, None), Verdict::Reject { .. }),
                "{s}"
            );
        }
        let v = classify(429, parse_retry_after(Some("7")), None);
        assert_eq!(
            v,
            Verdict::Retry {
                reason: "destination answered 429".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c, "{d:?} > {c:?}");
            ceilings.push(c.as_millis());
        }
        assert_eq!(&ceilings[..4], &[100, 200, 400, 800]);
        assert_eq!(*ceilings.last().unwrap_or(&0), 5000);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    // The cost of an outage in requests is tested on the real worker loop:
    // push.rs, `an_hour_long_outage_costs_a_few_hundred_requests`.

    #[tokio::test(start_paused = true)]
    async fn a_successful_probe_closes_the_breaker() {
        let mut breaker = Breaker::new(5, Duration::from_secs(30));
        for _ in 0..5 {
            breaker.on_failure(Instant::now());
        }
        assert_eq!(breaker.state(Instant::now()), BreakerState::Open);
        assert!(breaker.allow(Instant::now()).is_err());
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(breaker.state(Instant::now()), BreakerState::HalfOpen);
        assert!(breaker.allow(Instant::now()).is_ok());
        assert_eq!(breaker.on_success(Instant::now()), BreakerState::HalfOpen);
        assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_at_once() {
        let mut b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert!(!b.on_failure(Instant::now()));
        }
        assert!(b.on_failure(Instant::now()));
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::HalfOpen);
        assert!(b.on_failure(Instant::now()), "a failed probe must reopen");
        assert!(b.allow(Instant::now()).is_err());
    }
}
