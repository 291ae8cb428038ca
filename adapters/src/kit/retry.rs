//! The kit's client behaviour, written the way the README asks vendors to
//! write theirs: a final answer (a receipt, or a 4xx-like status) is final;
//! UNAVAILABLE, a timeout, a broken connection and a RESOURCE_EXHAUSTED that
//! says to retry are retried with backoff and the SAME event_id, so a resend
//! can never make a second record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1 as pb;
use tonic::{Code, Status};

/// Attempts per event before the kit gives up.
pub const MAX_ATTEMPTS: u32 = 10;
/// Per-attempt deadline.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before retrying after `status`, or `None` when the
/// status is final.
pub fn retry_after(status: &Status, attempt: u32) -> Option<Duration> {
    let backoff = Duration::from_millis(50u64 << attempt.min(5));
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Some(backoff)
        }
        Code::ResourceExhausted => {
            let hinted = status
                .metadata()
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis);
            match hinted {
                Some(d) => Some(d.max(backoff)),
                None if status.message().contains("retry later") => Some(backoff),
                // too large, too many streams: sending again will not help.
                None => None,
            }
        }
        _ => None,
    }
}

/// Whether a stream receipt's `error_code` asks for a resend.
pub fn receipt_is_transient(r: &pb::Receipt) -> bool {
    r.status == pb::ReceiptStatus::Rejected as i32
        && matches!(
            r.error_code.as_str(),
            "unavailable" | "disk_full" | "rate_limited"
        )
}

/// The final answer to one unary Submit.
#[derive(Debug, Clone)]
pub enum Answer {
    Receipt(pb::Receipt),
    Refused(Status),
}

impl Answer {
    /// e.g. `ACCEPTED Observation/…` or `INVALID_ARGUMENT: patient.value: …`.
    pub fn describe(&self) -> String {
        match self {
            Answer::Receipt(r) => format!(
                "{} {}{}",
                pb::ReceiptStatus::try_from(r.status)
                    .map(|s| s.as_str_name())
                    .unwrap_or("RECEIPT_STATUS_?"),
                r.resource,
                if r.error.is_empty() {
                    String::new()
                } else {
                    format!(" {}: {}", r.error_code, r.error)
                }
            ),
            Answer::Refused(s) => format!("{:?}: {}", s.code(), s.message()),
        }
    }

    pub fn receipt(&self) -> Option<&pb::Receipt> {
        match self {
            Answer::Receipt(r) => Some(r),
            Answer::Refused(_) => None,
        }
    }
}

/// A unary sender that retries what is retryable and counts the retries.
#[derive(Clone)]
pub struct Sender {
    pub client: EventClient,
    pub retries: Arc<AtomicU64>,
}

impl Sender {
    pub fn new(client: EventClient) -> Self {
        Sender {
            client,
            retries: Arc::new(AtomicU64::new(0)),
        }
    }

    /// One attempt with `timeout`.
    pub async fn once(&mut self, ev: pb::Event, timeout: Duration) -> Result<pb::Receipt, Status> {
        let mut req = tonic::Request::new(ev);
        req.set_timeout(timeout);
        self.client.submit(req).await.map(|r| r.into_inner())
    }

    /// Sends until the answer is final (or [`MAX_ATTEMPTS`] are used up;
    /// then the last transient status is the answer).
    pub async fn send(&mut self, ev: pb::Event) -> Answer {
        let mut attempt = 0;
        loop {
            match self.once(ev.clone(), CALL_TIMEOUT).await {
                Ok(r) => return Answer::Receipt(r),
                Err(s) => match retry_after(&s, attempt) {
                    Some(wait) if attempt + 1 < MAX_ATTEMPTS => {
                        attempt += 1;
                        self.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Answer::Refused(s),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_and_transient_statuses() {
        assert!(retry_after(&Status::unavailable("x"), 0).is_some());
        assert!(retry_after(&Status::deadline_exceeded("x"), 3).is_some());
        assert!(retry_after(&Status::invalid_argument("x"), 0).is_none());
        assert!(retry_after(&Status::already_exists("x"), 0).is_none());
        assert!(retry_after(&Status::permission_denied("x"), 0).is_none());
        assert!(retry_after(&Status::resource_exhausted("the event is 9 bytes"), 0).is_none());
        assert!(
            retry_after(
                &Status::resource_exhausted("disk is full; nothing was stored, retry later"),
                0
            )
            .is_some()
        );
        let mut st = Status::resource_exhausted("rate limit");
        st.metadata_mut()
            .insert("retry-after-ms", "250".parse().unwrap_or_else(|_| panic!()));
        assert_eq!(retry_after(&st, 0), Some(Duration::from_millis(250)));
    }
}
