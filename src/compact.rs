//! Giving disk space back on request: `POST /admin/compact` starts
//! [`crate::store::EventLog::reclaim_space`] in the background (one at a
//! time), `GET /admin/compact` says how far it is and, once done, how many
//! bytes each part of the store went from and to. `knutepunkt compact` is
//! the command-line client.
//!
//! Why on request and not after every retention pass: the compaction
//! rewrites every live record once, and while it runs the store's other
//! compactions of that keyspace wait; an operator picks the hour.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::store::{ReclaimProgress, SpaceReport, Store};

/// Where the one compaction a hub runs at a time stands.
#[derive(Default)]
pub struct Compaction {
    state: Mutex<State>,
}

#[derive(Default)]
enum State {
    #[default]
    Idle,
    Running {
        started: DateTime<Utc>,
        part: String,
        at: usize,
        of: usize,
    },
    Done {
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        report: SpaceReport,
    },
    Failed {
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        error: String,
    },
}

/// A compaction is already running; the caller should wait for it.
#[derive(Debug)]
pub struct AlreadyRunning;

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Compaction {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a compaction of `store` in the background, unless one runs.
    pub fn start(self: &Arc<Self>, store: Arc<dyn Store>) -> Result<(), AlreadyRunning> {
        let started = Utc::now();
        {
            let mut st = self.lock();
            if matches!(*st, State::Running { .. }) {
                return Err(AlreadyRunning);
            }
            *st = State::Running {
                started,
                part: String::new(),
                at: 0,
                of: 0,
            };
        }
        tracing::info!("compaction started: giving back the disk space of removed records");
        let me = self.clone();
        let progress: ReclaimProgress = Arc::new(move |name: &str, at: usize, of: usize| {
            if let State::Running {
                part, at: a, of: o, ..
            } = &mut *me.lock()
            {
                (*part, *a, *o) = (name.to_string(), at, of);
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let result = store.reclaim_space(progress).await;
            let finished = Utc::now();
            *me.lock() = match result {
                Ok(report) => {
                    let (before, after) = totals(&report);
                    tracing::info!(
                        before_mib = before >> 20,
                        after_mib = after >> 20,
                        "compaction finished"
                    );
                    State::Done {
                        started,
                        finished,
                        report,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "compaction failed; the store is as it was, run it again later");
                    State::Failed {
                        started,
                        finished,
                        error: e.to_string(),
                    }
                }
            };
        });
        Ok(())
    }

    /// The state as the admin API shows it.
    pub fn status(&self) -> Value {
        match &*self.lock() {
            State::Idle => json!({ "state": "idle" }),
            State::Running {
                started,
                part,
                at,
                of,
            } => json!({
                "state": "running",
                "started": time(started),
                "part": part,
                "part_number": at,
                "parts": of,
            }),
            State::Done {
                started,
                finished,
                report,
            } => {
                let (before, after) = totals(report);
                let parts: Vec<Value> = report
                    .parts
                    .iter()
                    .map(|p| {
                        json!({
                            "name": p.name,
                            "bytes_before": p.before,
                            "bytes_after": p.after,
                            "skipped": p.skipped,
                        })
                    })
                    .collect();
                json!({
                    "state": "done",
                    "started": time(started),
                    "finished": time(finished),
                    "bytes_before": before,
                    "bytes_after": after,
                    "parts": parts,
                    "note": report.note,
                })
            }
            State::Failed {
                started,
                finished,
                error,
            } => json!({
                "state": "failed",
                "started": time(started),
                "finished": time(finished),
                "error": error,
            }),
        }
    }
}

/// Bytes before and after, summed over every part.
fn totals(r: &SpaceReport) -> (u64, u64) {
    r.parts
        .iter()
        .fold((0, 0), |(b, a), p| (b + p.before, a + p.after))
}
