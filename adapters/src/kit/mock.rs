//! `knutepunkt-mock`: a strict local `VendorIngestService` for vendor
//! developers.
//!
//! Every event goes through the hub's own checks
//! (`knutepunkt::ingest::validate`, which also runs `normalize`), so the mock
//! refuses exactly what the hub refuses, with the hub's messages. The two
//! rules that need the hub's store are kept in memory here, with the store's
//! own error types: idempotency (DUPLICATE for the same content, `conflict`
//! for other content under a used event_id) and the closed loop (a note's
//! `in_response_to` must name a stored alarm of the same vendor and
//! municipality). Nothing is written to disk.
//!
//! For each event one line says what happened and, for a refusal, how to
//! fix it; [`Tally`] prints the summary at the end. The misbehaviour
//! switches in [`Misbehave`] let a vendor test its retry logic; [`Violate`]
//! breaks a rule on purpose, to check that the conformance kit notices.

mod tally;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use knutepunkt::domain::{Event, Payload, VendorId};
use knutepunkt::ingest::{
    self, Caller, Checks, Identify, Rejection, Validated, VendorPolicy, rejected_receipt,
};
use knutepunkt::proto::v1 as pb;
use knutepunkt::proto::v1::vendor_ingest_service_server::VendorIngestService;
use knutepunkt::store::{PutError, ResourceRef};
use tokio::sync::{Notify, mpsc};
use tonic::{Request, Response, Status, Streaming};

pub use tally::Tally;

/// Misbehaviour on purpose, so a vendor can test its retry logic.
#[derive(Debug, Clone, Default)]
pub struct Misbehave {
    /// Share of events (0.0-1.0) answered UNAVAILABLE (unary) or with a
    /// REJECTED `unavailable` receipt (stream) without being looked at.
    pub fail_rate: f64,
    /// Seed of the failure dice, for a reproducible run.
    pub seed: u64,
    /// Wait this long before each answer.
    pub delay: Duration,
    /// End every stream with UNAVAILABLE after this many events.
    pub drop_stream_after: Option<u64>,
}

/// A contract rule the mock breaks on purpose (to test the conformance kit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Violate {
    /// Answer a resent event ACCEPTED instead of DUPLICATE.
    Duplicate,
    /// Accept a note whose in_response_to names no stored alarm.
    ClosedLoop,
    /// Accept a used event_id with other content (no `conflict`).
    Conflict,
}

/// How the mock identifies callers and what it allows them.
pub struct Setup {
    /// With TLS: by client certificate (`Identify::Certificate`); without:
    /// every caller is this vendor with this agreement.
    pub identify: Option<Identify>,
    pub plain_caller: (VendorId, Arc<VendorPolicy>),
    pub max_future: chrono::Duration,
    pub misbehave: Misbehave,
    pub violate: Vec<Violate>,
    /// Stop after this many events (the summary is printed then).
    pub max_events: Option<u64>,
}

/// What is remembered of an accepted event.
struct Seen {
    event: Event,
    resource: ResourceRef,
    is_alarm: bool,
}

/// The mock service. Cheap to clone.
#[derive(Clone)]
pub struct Mock {
    inner: Arc<Inner>,
}

struct Inner {
    setup: Setup,
    seen: Mutex<HashMap<(String, String), Seen>>,
    numbered: AtomicU64,
    streams: AtomicU64,
    dice: Mutex<fastrand::Rng>,
    pub tally: Tally,
    /// Woken when `max_events` is reached.
    pub done: Notify,
}

/// The answer to one event, before it is put on the wire.
enum Verdict {
    Receipt(pb::Receipt),
    Rejected(Rejection),
    /// UNAVAILABLE on purpose (--fail-rate).
    Unavailable,
}

impl Mock {
    pub fn new(setup: Setup) -> Self {
        let seed = setup.misbehave.seed;
        Mock {
            inner: Arc::new(Inner {
                setup,
                seen: Mutex::new(HashMap::new()),
                numbered: AtomicU64::new(0),
                streams: AtomicU64::new(0),
                dice: Mutex::new(fastrand::Rng::with_seed(seed)),
                tally: Tally::default(),
                done: Notify::new(),
            }),
        }
    }

    pub fn tally(&self) -> &Tally {
        &self.inner.tally
    }

    /// Resolves once `--max-events` events have been answered.
    pub async fn finished(&self) {
        self.inner.done.notified().await
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        match &self.inner.setup.identify {
            Some(id) => id.caller(req),
            None => {
                let (v, p) = &self.inner.setup.plain_caller;
                Ok((v.clone(), Some(p.clone())))
            }
        }
    }
}

impl Inner {
    /// Judges one event and prints the line for it.
    async fn answer(&self, caller: &Caller, ev: Option<pb::Event>, how: &str) -> Verdict {
        let n = self.numbered.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.setup.misbehave.delay.is_zero() {
            tokio::time::sleep(self.setup.misbehave.delay).await;
        }
        let event_id = ev.as_ref().map(|e| e.event_id.clone()).unwrap_or_default();
        let fail = self.setup.misbehave.fail_rate > 0.0
            && self
                .dice
                .lock()
                .map(|mut d| d.f64() < self.setup.misbehave.fail_rate)
                .unwrap_or(false);
        let verdict = if fail {
            Verdict::Unavailable
        } else {
            match ev {
                None => Verdict::Rejected(Rejection::from(ingest::missing_event())),
                Some(ev) => match self.judge(caller, ev) {
                    Ok(r) => Verdict::Receipt(r),
                    Err(rej) => Verdict::Rejected(rej),
                },
            }
        };
        self.tally
            .record(n, how, &event_id, &verdict_view(&verdict));
        if let Some(max) = self.setup.max_events
            && n >= max
        {
            self.done.notify_one();
        }
        verdict
    }

    /// The hub's checks, then the store's rules kept in memory.
    fn judge(&self, caller: &Caller, ev: pb::Event) -> Result<pb::Receipt, Rejection> {
        let (vendor, policy) = caller;
        let event_id = ev.event_id.clone();
        let checks = Checks {
            vendor,
            policy: policy.as_deref(),
            served: None,
            max_future: self.setup.max_future,
            now: chrono::Utc::now(),
        };
        let Validated { event, resource } = ingest::validate(&checks, ev)?;
        let rref = ResourceRef {
            resource_type: resource.resource_type,
            id: resource.id,
        };
        let violate = |v: Violate| self.setup.violate.contains(&v);
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| Rejection::Store(PutError::Unavailable("mock state poisoned".into())))?;
        let key = (vendor.0.clone(), event_id.clone());
        let mut status = pb::ReceiptStatus::Accepted;
        if let Some(old) = seen.get(&key) {
            if old.event == event {
                if !violate(Violate::Duplicate) {
                    status = pb::ReceiptStatus::Duplicate;
                }
            } else if !violate(Violate::Conflict) {
                return Err(Rejection::Store(PutError::Conflict(old.resource)));
            }
        } else if let Payload::Note(note) = &event.payload
            && let Some(alarm) = &note.in_response_to
            && !violate(Violate::ClosedLoop)
        {
            let ok = seen
                .get(&(vendor.0.clone(), alarm.clone()))
                .is_some_and(|a| a.is_alarm && a.event.municipality == event.municipality);
            if !ok {
                return Err(Rejection::Store(PutError::UnknownAlarm {
                    event_id: alarm.clone(),
                }));
            }
        }
        if status == pb::ReceiptStatus::Accepted && !seen.contains_key(&key) {
            let is_alarm = matches!(event.payload, Payload::Alarm(_));
            seen.insert(
                key,
                Seen {
                    event,
                    resource: rref,
                    is_alarm,
                },
            );
        }
        Ok(pb::Receipt {
            event_id,
            status: status as i32,
            resource: rref.to_string(),
            error: String::new(),
            error_code: String::new(),
        })
    }
}

/// What [`Tally`] needs to know of a verdict.
pub enum View<'a> {
    Stored(&'a pb::Receipt),
    Rejected(&'a Rejection),
    Unavailable,
}

fn verdict_view(v: &Verdict) -> View<'_> {
    match v {
        Verdict::Receipt(r) => View::Stored(r),
        Verdict::Rejected(r) => View::Rejected(r),
        Verdict::Unavailable => View::Unavailable,
    }
}

const UNAVAILABLE_ON_PURPOSE: &str =
    "knutepunkt-mock answers UNAVAILABLE on purpose (--fail-rate); retry with the same event_id";

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::SubmitStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl VendorIngestService for Mock {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = self.caller(&req)?;
        let ev = req.into_inner().event;
        match self.inner.answer(&caller, ev, "unary").await {
            Verdict::Receipt(r) => Ok(Response::new(pb::SubmitResponse { receipt: Some(r) })),
            Verdict::Rejected(rej) => Err(rej.status()),
            Verdict::Unavailable => Err(Status::unavailable(UNAVAILABLE_ON_PURPOSE)),
        }
    }

    type SubmitStreamStream = ResponseStream;

    async fn submit_stream(
        &self,
        req: Request<Streaming<pb::SubmitStreamRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let caller = self.caller(&req)?;
        let permit = match &caller.1 {
            Some(p) => Some(p.stream_permit()?),
            None => None,
        };
        let stream_no = self.inner.streams.fetch_add(1, Ordering::Relaxed) + 1;
        let inner = self.inner.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        // One event at a time: the mock is for correctness, not throughput.
        tokio::spawn(async move {
            let _permit = permit;
            let how = format!("stream {stream_no}");
            let mut count = 0u64;
            while let Some(item) = inbound.next().await {
                let Ok(req) = item else { break };
                if inner.setup.misbehave.drop_stream_after == Some(count) {
                    inner.tally.dropped_stream(stream_no, count);
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "knutepunkt-mock dropped this stream on purpose (--drop-stream-after); \
                             reconnect and resend what has no receipt, with the same event_ids",
                        )))
                        .await;
                    return;
                }
                count += 1;
                let event_id = req.event.as_ref().map(|e| e.event_id.clone());
                let receipt = match inner.answer(&caller, req.event, &how).await {
                    Verdict::Receipt(r) => r,
                    Verdict::Rejected(rej) => rejected_receipt(event_id.unwrap_or_default(), &rej),
                    Verdict::Unavailable => pb::Receipt {
                        event_id: event_id.unwrap_or_default(),
                        status: pb::ReceiptStatus::Rejected as i32,
                        resource: String::new(),
                        error: UNAVAILABLE_ON_PURPOSE.into(),
                        error_code: "unavailable".into(),
                    },
                };
                let answer = pb::SubmitStreamResponse {
                    receipt: Some(receipt),
                };
                if tx.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
            inner.tally.stream_ended(stream_no, count);
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out)))
    }
}
