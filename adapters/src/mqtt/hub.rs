//! The gateway's connection to the hub: one `SubmitStream` over vendor
//! mutual TLS, opened on first use and again after it breaks, with receipts
//! matched to waiting submitters by event id.
//!
//! Why it exists: the stream answers every event with a receipt carrying a
//! stable `error_code` (the unary call folds several into one gRPC status),
//! so the gateway can tell "fix the message" (dead letter) from "try again
//! later" (leave it in the broker). Nothing is buffered here beyond the
//! events whose submitters are waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::payload::Submission;
use super::wire::{self, Answer, AnswerStatus};
use crate::conn::Conn;

/// How long a receipt may take before the stream is considered stuck.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// What became of one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durable in the hub (first time, or a duplicate of an earlier one).
    Stored { resource: String, duplicate: bool },
    /// The hub refused it; `code` is the hub's stable error code.
    Rejected { code: String, error: String },
    /// Not answered or answered "later" (hub down, disk full, rate limit).
    Retry { reason: String },
}

/// Error codes that mean "the same event may succeed later".
const RETRYABLE: &[&str] = &["rate_limited", "disk_full", "unavailable"];

type Waiters = Mutex<HashMap<String, Vec<oneshot::Sender<Answer>>>>;

struct Session {
    tx: mpsc::Sender<wire::WireEvent>,
    waiters: Arc<Waiters>,
    closed: Arc<AtomicBool>,
}

/// A client of the hub's ingest, shared by all message tasks.
pub struct HubClient {
    conn: Conn,
    target: String,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl HubClient {
    /// `target` is `host:port` of the hub's gRPC listener.
    pub fn new(conn: Conn, target: String) -> HubClient {
        HubClient {
            conn,
            target,
            session: tokio::sync::Mutex::new(None),
        }
    }

    /// Submits one event and waits for its receipt.
    pub async fn submit(&self, s: &Submission) -> Outcome {
        let session = match self.session().await {
            Ok(s) => s,
            Err(reason) => return Outcome::Retry { reason },
        };
        let (tx, rx) = oneshot::channel();
        lock(&session.waiters)
            .entry(s.event_id.clone())
            .or_default()
            .push(tx);
        if session.tx.send(wire::to_wire(s)).await.is_err() {
            session.closed.store(true, Ordering::Relaxed);
            return Outcome::Retry {
                reason: "the stream to the hub closed".into(),
            };
        }
        match tokio::time::timeout(RECEIPT_TIMEOUT, rx).await {
            Ok(Ok(a)) => classify(a),
            Ok(Err(_)) => Outcome::Retry {
                reason: "the stream to the hub ended before the receipt".into(),
            },
            Err(_) => {
                session.closed.store(true, Ordering::Relaxed);
                Outcome::Retry {
                    reason: format!("no receipt within {} s", RECEIPT_TIMEOUT.as_secs()),
                }
            }
        }
    }

    /// The open stream, or a new one.
    async fn session(&self) -> Result<Arc<Session>, String> {
        let mut current = self.session.lock().await;
        if let Some(s) = current.as_ref()
            && !s.closed.load(Ordering::Relaxed)
        {
            return Ok(s.clone());
        }
        *current = None;
        let channel = self
            .conn
            .connect_to(&self.target)
            .await
            .map_err(|e| e.to_string())?;
        let (tx, mut receipts) = wire::open_stream(channel, 1024).await.map_err(|s| {
            format!(
                "the hub refused the stream: {:?}: {}",
                s.code(),
                s.message()
            )
        })?;
        let waiters: Arc<Waiters> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let session = Arc::new(Session {
            tx,
            waiters: waiters.clone(),
            closed: closed.clone(),
        });
        tokio::spawn(async move {
            loop {
                match wire::next_answer(&mut receipts).await {
                    Ok(Some(a)) => {
                        let waiter = {
                            let mut w = lock(&waiters);
                            let waiter = w.get_mut(&a.event_id).and_then(|v| {
                                if v.is_empty() {
                                    None
                                } else {
                                    Some(v.remove(0))
                                }
                            });
                            if w.get(&a.event_id).is_some_and(Vec::is_empty) {
                                w.remove(&a.event_id);
                            }
                            waiter
                        };
                        if let Some(tx) = waiter {
                            let _ = tx.send(a);
                        }
                    }
                    Ok(None) => break,
                    Err(s) => {
                        tracing::warn!(code = ?s.code(), error = %s.message(), "stream to the hub failed");
                        break;
                    }
                }
            }
            closed.store(true, Ordering::Relaxed);
            // Dropping the senders tells every waiter to retry.
            lock(&waiters).clear();
        });
        *current = Some(session.clone());
        Ok(session)
    }
}

fn lock(w: &Waiters) -> std::sync::MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<Answer>>>> {
    // A panic while holding this lock cannot leave the map inconsistent
    // (single inserts/removes), so a poisoned lock is still usable.
    w.lock().unwrap_or_else(|p| p.into_inner())
}

fn classify(a: Answer) -> Outcome {
    match a.status {
        AnswerStatus::Accepted | AnswerStatus::Duplicate => Outcome::Stored {
            resource: a.resource,
            duplicate: a.status == AnswerStatus::Duplicate,
        },
        AnswerStatus::Rejected if RETRYABLE.contains(&a.error_code.as_str()) => Outcome::Retry {
            reason: format!("{}: {}", a.error_code, a.error),
        },
        AnswerStatus::Rejected => Outcome::Rejected {
            code: a.error_code,
            error: a.error,
        },
        AnswerStatus::Unknown => Outcome::Retry {
            reason: "the hub answered a receipt status this gateway does not know".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: AnswerStatus, code: &str) -> Answer {
        Answer {
            event_id: "e".into(),
            status,
            resource: "Observation/x".into(),
            error: "why".into(),
            error_code: code.into(),
        }
    }

    #[test]
    fn only_final_rejections_are_dead_lettered() {
        assert!(matches!(
            classify(answer(AnswerStatus::Duplicate, "")),
            Outcome::Stored {
                duplicate: true,
                ..
            }
        ));
        for c in RETRYABLE {
            assert!(matches!(
                classify(answer(AnswerStatus::Rejected, c)),
                Outcome::Retry { .. }
            ));
        }
        assert!(matches!(
            classify(answer(AnswerStatus::Rejected, "invalid_argument")),
            Outcome::Rejected { .. }
        ));
    }
}
