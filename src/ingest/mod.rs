//! The vendor-facing gRPC edge (`knutepunkt.v1.VendorIngestService`).
//!
//! The only module that knows tonic and the proto types. It finds out who
//! the vendor is (from the connection), converts and checks the event
//! ([`convert`]), has it normalized, hands it to the store, and answers only
//! once the store says it is durable. It never touches FHIR types.

pub mod content_hash;
pub mod convert;
pub mod limit;

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::domain::{Invalid, Orgnr, Payload, Severity, VendorId};
use crate::normalize;
use crate::proto::v1 as pb;
use crate::proto::v1::vendor_ingest_service_server::VendorIngestService;
use crate::store::{Class, NewRecord, PutError, PutOutcome, Store, patient_key};

/// Events of one stream processed at the same time. Enough to fill a group
/// commit from a single stream; bounded so one stream cannot take all memory.
const STREAM_WINDOW: usize = 256;

/// Why an event was not accepted; each has a stable `error_code`.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    // The orgnr is not repeated: an answer copies no request value.
    #[error("municipality: is not served by this hub; check the orgnr or ask the hub operator")]
    NotServed(Orgnr),
    #[error(
        "municipality: your system has no agreement with this municipality; ask the municipality to add it to your agreement"
    )]
    NotPermitted(Orgnr),
    #[error("the event is {size} bytes; your agreement allows {max}")]
    TooLarge { size: usize, max: usize },
    #[error("rate limit of {rate} events/s exceeded; retry after {retry_after_ms} ms")]
    RateLimited { rate: u32, retry_after_ms: u64 },
    #[error("{0}")]
    Store(#[from] PutError),
}

impl Rejection {
    /// Stable, never reused: vendors may branch on these.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "invalid_argument",
            Rejection::NotServed(_) => "municipality_not_served",
            Rejection::NotPermitted(_) => "not_permitted",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::Store(PutError::Conflict(_)) => "conflict",
            Rejection::Store(PutError::UnknownAlarm { .. }) => "unknown_alarm",
            Rejection::Store(PutError::DiskFull { .. }) => "disk_full",
            Rejection::Store(PutError::Unavailable(_)) => "unavailable",
        }
    }

    /// What the vendor should do about it (the README's table, as data).
    pub fn advice(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "fix the named field; do not resend the event as it is",
            Rejection::NotServed(_) => "check the orgnr, or ask the hub operator to serve it",
            Rejection::NotPermitted(_) => "ask the municipality to add it to your agreement",
            Rejection::TooLarge { .. } => {
                "send a smaller event (shorter texts); do not resend as is"
            }
            Rejection::RateLimited { .. } => {
                "slow down; resend after retry-after-ms with the same event_id"
            }
            Rejection::Store(PutError::Conflict(_)) => "use a new event_id for a new event",
            Rejection::Store(PutError::UnknownAlarm { .. }) => {
                "send the alarm first, then the note that answers it"
            }
            Rejection::Store(PutError::DiskFull { .. } | PutError::Unavailable(_)) => {
                "resend later with the same event_id"
            }
        }
    }

    /// The gRPC status a unary `Submit` answers with; its `error-code`
    /// metadata is the stream's `error_code`.
    pub fn status(&self) -> Status {
        let mut st = self.status_only();
        st.metadata_mut().insert(
            "error-code",
            tonic::metadata::MetadataValue::from_static(self.code()),
        );
        st
    }

    fn status_only(&self) -> Status {
        let msg = self.to_string();
        match self {
            Rejection::Invalid(_) | Rejection::Store(PutError::UnknownAlarm { .. }) => {
                Status::invalid_argument(msg)
            }
            Rejection::NotServed(_) => Status::invalid_argument(msg),
            Rejection::NotPermitted(_) => Status::permission_denied(msg),
            Rejection::TooLarge { .. } => Status::resource_exhausted(msg),
            Rejection::RateLimited { retry_after_ms, .. } => {
                let mut st = Status::resource_exhausted(msg);
                if let Ok(v) = retry_after_ms.to_string().parse() {
                    st.metadata_mut().insert("retry-after-ms", v);
                }
                st
            }
            Rejection::Store(PutError::Conflict(_)) => Status::already_exists(msg),
            Rejection::Store(PutError::DiskFull { .. }) => Status::resource_exhausted(msg),
            Rejection::Store(PutError::Unavailable(_)) => Status::unavailable(msg),
        }
    }
}

/// The gRPC service. Cheap to clone.
#[derive(Clone)]
pub struct IngestService {
    inner: Arc<Inner>,
}

/// What one vendor's agreement allows, with its live limiters.
pub struct VendorPolicy {
    municipalities: BTreeSet<Orgnr>,
    max_message_bytes: usize,
    rate: u32,
    limiter: governor::DefaultDirectRateLimiter,
    max_streams: u32,
    streams: Arc<tokio::sync::Semaphore>,
}

impl VendorPolicy {
    /// The agreement's size and rate limits, checked before anything else.
    fn admit(&self, ev: &pb::Event) -> Result<(), Rejection> {
        let size = prost::Message::encoded_len(ev);
        if size > self.max_message_bytes {
            return Err(Rejection::TooLarge {
                size,
                max: self.max_message_bytes,
            });
        }
        if let Err(not_until) = self.limiter.check() {
            use governor::clock::{Clock, DefaultClock};
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Rejection::RateLimited {
                rate: self.rate,
                retry_after_ms: wait.as_millis().max(1) as u64,
            });
        }
        Ok(())
    }

    /// A slot for one more open stream, held as long as the stream.
    pub fn stream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "your agreement allows {} concurrent streams; close one or retry later",
                self.max_streams
            ))
        })
    }

    pub fn new(v: &crate::config::VendorConfig) -> Self {
        let nz = |n: u32| std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        VendorPolicy {
            municipalities: v
                .municipalities
                .iter()
                .filter_map(|m| Orgnr::parse(m).ok())
                .collect(),
            max_message_bytes: v.max_message_bytes,
            rate: v.rate_per_sec,
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_second(nz(v.rate_per_sec)).allow_burst(nz(v.burst)),
            ),
            max_streams: v.max_streams,
            streams: Arc::new(tokio::sync::Semaphore::new(v.max_streams as usize)),
        }
    }
}

/// How gRPC callers are identified.
pub enum Identify {
    /// Development only: every caller is this vendor, with no limits.
    InsecureDev(VendorId),
    /// By client certificate; only the listed vendors get in.
    Certificate {
        from: crate::config::VendorIdentity,
        vendors: HashMap<String, Arc<VendorPolicy>>,
    },
}

struct Inner {
    store: Arc<dyn Store>,
    served: Option<BTreeSet<Orgnr>>,
    identify: Identify,
    max_future: chrono::Duration,
}

impl IngestService {
    pub fn new(
        store: Arc<dyn Store>,
        served: Option<BTreeSet<Orgnr>>,
        identify: Identify,
        max_future_skew_secs: u64,
    ) -> Self {
        IngestService {
            inner: Arc::new(Inner {
                store,
                served,
                identify,
                max_future: chrono::Duration::seconds(max_future_skew_secs as i64),
            }),
        }
    }

    /// Who is calling, see [`Identify::caller`].
    fn vendor_of<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.inner.identify.caller(req)
    }
}

impl Identify {
    /// Who is calling: the vendor named by the connection's client
    /// certificate (already verified against the vendor CA by TLS), which
    /// must have an agreement here.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        match self {
            Identify::InsecureDev(v) => Ok((v.clone(), None)),
            Identify::Certificate { from, vendors } => {
                let certs = req.peer_certs().ok_or_else(|| {
                    Status::unauthenticated("a client certificate is required (mutual TLS)")
                })?;
                let id = certs
                    .first()
                    .and_then(|c| crate::tls::vendor_id_of(c, *from))
                    .ok_or_else(|| {
                        Status::unauthenticated(
                            "your client certificate names no vendor system (expected a SAN URI urn:knutepunkt:vendor:<id>)",
                        )
                    })?;
                match vendors.get(&id) {
                    Some(p) => Ok((VendorId(id), Some(p.clone()))),
                    None => {
                        tracing::warn!(vendor = %id, "certificate of a vendor with no agreement here");
                        metrics::counter!("knutepunkt_vendor_denied_total", "reason" => "unknown_vendor").increment(1);
                        Err(Status::permission_denied(format!(
                            "vendor system {id:?} has no agreement with this hub; ask the hub operator"
                        )))
                    }
                }
            }
        }
    }
}

/// The calling vendor and its agreement (`None` in insecure dev mode).
pub type Caller = (VendorId, Option<Arc<VendorPolicy>>);

/// Everything one event is checked against before it reaches the store.
pub struct Checks<'a> {
    pub vendor: &'a VendorId,
    /// The vendor's agreement; `None` checks no agreement (insecure dev).
    pub policy: Option<&'a VendorPolicy>,
    /// The municipalities this hub serves; `None` serves any.
    pub served: Option<&'a BTreeSet<Orgnr>>,
    pub max_future: chrono::Duration,
    pub now: chrono::DateTime<chrono::Utc>,
}

/// An event that passed [`validate`]: the domain event and its FHIR form.
#[derive(Debug)]
pub struct Validated {
    pub event: crate::domain::Event,
    pub resource: normalize::Normalized,
}

/// Every rule the hub checks without its store, in the hub's order: size
/// and rate, shape and identifiers, served municipality, agreement, and the
/// values against the code tables (`normalize`). Not checked here, because
/// they need the store: idempotency (duplicate/conflict) and that a note's
/// `in_response_to` names a stored alarm. `knutepunkt-mock` calls this too,
/// so the mock and the hub cannot disagree.
pub fn validate(c: &Checks<'_>, ev: pb::Event) -> Result<Validated, Rejection> {
    if let Some(p) = c.policy {
        p.admit(&ev)?;
    }
    let ev = convert::event(c.vendor, ev, c.now, c.max_future)?;
    if let Some(served) = c.served
        && !served.contains(&ev.municipality)
    {
        return Err(Rejection::NotServed(ev.municipality));
    }
    if let Some(p) = c.policy
        && !p.municipalities.contains(&ev.municipality)
    {
        tracing::warn!(vendor = %c.vendor, municipality = %ev.municipality, "event for a municipality outside the vendor's agreement");
        metrics::counter!("knutepunkt_vendor_denied_total", "reason" => "no_agreement")
            .increment(1);
        return Err(Rejection::NotPermitted(ev.municipality));
    }
    let resource = normalize::normalize(&ev)?;
    Ok(Validated {
        event: ev,
        resource,
    })
}

/// The receipt of a rejected event on a stream.
pub fn rejected_receipt(event_id: String, rej: &Rejection) -> pb::Receipt {
    pb::Receipt {
        event_id,
        status: pb::ReceiptStatus::Rejected as i32,
        resource: String::new(),
        error: rej.to_string(),
        error_code: rej.code().to_string(),
    }
}

impl Inner {
    async fn process(&self, caller: &Caller, ev: pb::Event) -> Result<pb::Receipt, Rejection> {
        let (vendor, policy) = caller;
        let event_id = ev.event_id.clone();
        let checks = Checks {
            vendor,
            policy: policy.as_deref(),
            served: self.served.as_ref(),
            max_future: self.max_future,
            now: chrono::Utc::now(),
        };
        let Validated {
            event: ev,
            resource,
        } = validate(&checks, ev)?;
        let content_hash = content_hash::content_hash(&ev);
        let (answers_alarm, is_alarm) = match &ev.payload {
            Payload::Note(n) => (n.in_response_to.clone(), false),
            Payload::Alarm(_) => (None, true),
            Payload::Measurement(_) => (None, false),
        };
        let class = match &ev.payload {
            Payload::Alarm(a) if a.severity == Severity::Red => Class::Red,
            Payload::Alarm(a) if a.severity == Severity::Yellow => Class::Yellow,
            _ => Class::Routine,
        };
        // The event's trace (its trace id is the resource id): no patient,
        // no event text in it.
        let span = tracing::info_span!(
            "ingest",
            resource_id = %resource.id,
            resource_type = resource.resource_type.as_str(),
            vendor = %ev.vendor,
            municipality = %ev.municipality,
            class = ?class,
            outcome = tracing::field::Empty,
        );
        crate::telemetry::join_event(&span, resource.id);
        let put_span = tracing::info_span!(parent: &span, "store.put");
        let rec = NewRecord {
            vendor: ev.vendor,
            event_id: ev.event_id,
            content_hash,
            municipality: ev.municipality,
            patient_key: patient_key(ev.patient.system().oid(), ev.patient.value()),
            resource,
            answers_alarm,
            is_alarm,
            class,
        };
        let put = tracing::Instrument::instrument(self.store.put(rec), put_span).await;
        let (status, r) = match put {
            Ok(PutOutcome::Accepted(r)) => (pb::ReceiptStatus::Accepted, r),
            Ok(PutOutcome::Duplicate(r)) => (pb::ReceiptStatus::Duplicate, r),
            Err(e) => {
                span.record("outcome", "refused");
                return Err(e.into());
            }
        };
        span.record("outcome", status.as_str_name());
        Ok(pb::Receipt {
            event_id,
            status: status as i32,
            resource: r.to_string(),
            error: String::new(),
            error_code: String::new(),
        })
    }

    /// Processes one event and records the outcome in metrics and logs.
    async fn handle(
        &self,
        caller: &Caller,
        ev: pb::Event,
    ) -> Result<pb::Receipt, (String, Rejection)> {
        let event_id = ev.event_id.clone();
        let vendor = &caller.0;
        let res = self.process(caller, ev).await;
        match &res {
            Ok(r) => {
                let status = if r.status == pb::ReceiptStatus::Duplicate as i32 {
                    "duplicate"
                } else {
                    "accepted"
                };
                metrics::counter!("knutepunkt_events_total", "status" => status).increment(1);
            }
            Err(rej) => {
                metrics::counter!("knutepunkt_events_total", "status" => "rejected", "reason" => rej.code())
                    .increment(1);
                match rej {
                    Rejection::Store(PutError::DiskFull { .. } | PutError::Unavailable(_)) => {
                        tracing::warn!(vendor = %vendor, code = rej.code(), error = %rej, "event not stored")
                    }
                    // The message names fields, never values of national ids.
                    _ => {
                        tracing::debug!(vendor = %vendor, code = rej.code(), error = %rej, "event rejected")
                    }
                }
            }
        }
        res.map_err(|e| (event_id, e))
    }
}

type ReceiptStream = Pin<Box<dyn Stream<Item = Result<pb::SubmitStreamResponse, Status>> + Send>>;

/// The error for a request that carries no `event`.
pub fn missing_event() -> Invalid {
    Invalid::new("event", "is required: the request wraps one Event")
}

#[tonic::async_trait]
impl VendorIngestService for IngestService {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = self.vendor_of(&req)?;
        let Some(ev) = req.into_inner().event else {
            return Err(Rejection::from(missing_event()).status());
        };
        match self.inner.handle(&caller, ev).await {
            Ok(r) => Ok(Response::new(pb::SubmitResponse { receipt: Some(r) })),
            Err((_, rej)) => Err(rej.status()),
        }
    }

    type SubmitStreamStream = ReceiptStream;

    async fn submit_stream(
        &self,
        req: Request<Streaming<pb::SubmitStreamRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let caller = self.vendor_of(&req)?;
        // Per-vendor cap on open streams; the permit lives as long as the stream.
        let permit = match &caller.1 {
            Some(p) => Some(p.stream_permit()?),
            None => None,
        };
        let inner = self.inner.clone();
        // Up to STREAM_WINDOW events of this stream are in flight at once, so
        // they share group commits; each receipt goes out when its event is
        // durable, which may be out of order (matched by event_id).
        let receipts = req
            .into_inner()
            .map(move |item| {
                let inner = inner.clone();
                let caller = caller.clone();
                let _permit = &permit;
                async move {
                    let answer = match item.map_err(limit::map_decode_error)?.event {
                        Some(ev) => inner.handle(&caller, ev).await,
                        None => Err((String::new(), Rejection::from(missing_event()))),
                    };
                    let receipt = match answer {
                        Ok(r) => r,
                        Err((event_id, rej)) => rejected_receipt(event_id, &rej),
                    };
                    Ok(pb::SubmitStreamResponse {
                        receipt: Some(receipt),
                    })
                }
            })
            .buffer_unordered(STREAM_WINDOW);
        Ok(Response::new(Box::pin(receipts)))
    }
}
