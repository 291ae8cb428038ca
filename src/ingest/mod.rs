//! The vendor-facing gRPC edge (`knutepunkt.v1.VendorIngest`).
//!
//! The only module that knows tonic and the proto types. It finds out who
//! the vendor is (from the connection), converts and checks the event
//! ([`convert`]), has it normalized, hands it to the store, and answers only
//! once the store says it is durable. It never touches FHIR types.

pub mod convert;

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};

use crate::domain::{Invalid, Orgnr, Payload, Severity, VendorId};
use crate::normalize;
use crate::proto::v1 as pb;
use crate::proto::v1::vendor_ingest_server::VendorIngest;
use crate::store::{Class, NewRecord, PutError, PutOutcome, Store, patient_key};

/// Events of one stream processed at the same time. Enough to fill a group
/// commit from a single stream; bounded so one stream cannot take all memory.
const STREAM_WINDOW: usize = 256;

/// Why an event was not accepted; each has a stable `error_code`.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("municipality: {0} is not served by this hub; check the orgnr or ask the hub operator")]
    NotServed(Orgnr),
    #[error("{0}")]
    Store(#[from] PutError),
}

impl Rejection {
    /// Stable, never reused: vendors may branch on these.
    fn code(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "invalid_argument",
            Rejection::NotServed(_) => "municipality_not_served",
            Rejection::Store(PutError::Conflict(_)) => "conflict",
            Rejection::Store(PutError::UnknownAlarm { .. }) => "unknown_alarm",
            Rejection::Store(PutError::DiskFull { .. }) => "disk_full",
            Rejection::Store(PutError::Unavailable(_)) => "unavailable",
        }
    }

    fn status(&self) -> Status {
        let msg = self.to_string();
        match self {
            Rejection::Invalid(_) | Rejection::Store(PutError::UnknownAlarm { .. }) => {
                Status::invalid_argument(msg)
            }
            Rejection::NotServed(_) => Status::invalid_argument(msg),
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

struct Inner {
    store: Arc<dyn Store>,
    served: Option<BTreeSet<Orgnr>>,
    default_vendor: VendorId,
    max_future: chrono::Duration,
    /// Destination names per municipality: where each event is queued.
    routes: HashMap<Orgnr, Vec<String>>,
}

impl IngestService {
    pub fn new(
        store: Arc<dyn Store>,
        served: Option<BTreeSet<Orgnr>>,
        default_vendor: VendorId,
        max_future_skew_secs: u64,
        routes: HashMap<Orgnr, Vec<String>>,
    ) -> Self {
        IngestService {
            inner: Arc::new(Inner {
                store,
                served,
                default_vendor,
                max_future: chrono::Duration::seconds(max_future_skew_secs as i64),
                routes,
            }),
        }
    }

    /// Who is calling. Until vendor mTLS lands this is the configured default
    /// vendor; the request is passed so the identity can come from the
    /// connection's client certificate without changing callers.
    fn vendor_of<T>(&self, _req: &Request<T>) -> Result<VendorId, Status> {
        Ok(self.inner.default_vendor.clone())
    }
}

impl Inner {
    async fn process(&self, vendor: &VendorId, ev: pb::Event) -> Result<pb::Receipt, Rejection> {
        let event_id = ev.event_id.clone();
        let ev = convert::event(vendor, ev, chrono::Utc::now(), self.max_future)?;
        if let Some(served) = &self.served
            && !served.contains(&ev.municipality)
        {
            return Err(Rejection::NotServed(ev.municipality));
        }
        let resource = normalize::normalize(&ev)?;
        let content_hash: [u8; 32] = Sha256::digest(
            postcard::to_allocvec(&ev)
                .map_err(|e| PutError::Unavailable(format!("cannot encode event: {e}")))?,
        )
        .into();
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
        let destinations = self
            .routes
            .get(&ev.municipality)
            .cloned()
            .unwrap_or_default();
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
            destinations,
        };
        let (status, r) = match self.store.put(rec).await? {
            PutOutcome::Accepted(r) => (pb::ReceiptStatus::Accepted, r),
            PutOutcome::Duplicate(r) => (pb::ReceiptStatus::Duplicate, r),
        };
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
        vendor: &VendorId,
        ev: pb::Event,
    ) -> Result<pb::Receipt, (String, Rejection)> {
        let event_id = ev.event_id.clone();
        let res = self.process(vendor, ev).await;
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

type ReceiptStream = Pin<Box<dyn Stream<Item = Result<pb::Receipt, Status>> + Send>>;

#[tonic::async_trait]
impl VendorIngest for IngestService {
    async fn submit(&self, req: Request<pb::Event>) -> Result<Response<pb::Receipt>, Status> {
        let vendor = self.vendor_of(&req)?;
        match self.inner.handle(&vendor, req.into_inner()).await {
            Ok(r) => Ok(Response::new(r)),
            Err((_, rej)) => Err(rej.status()),
        }
    }

    type SubmitStreamStream = ReceiptStream;

    async fn submit_stream(
        &self,
        req: Request<Streaming<pb::Event>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let vendor = self.vendor_of(&req)?;
        let inner = self.inner.clone();
        // Up to STREAM_WINDOW events of this stream are in flight at once, so
        // they share group commits; each receipt goes out when its event is
        // durable, which may be out of order (matched by event_id).
        let receipts = req
            .into_inner()
            .map(move |item| {
                let inner = inner.clone();
                let vendor = vendor.clone();
                async move {
                    let ev = item?;
                    Ok(match inner.handle(&vendor, ev).await {
                        Ok(r) => r,
                        Err((event_id, rej)) => pb::Receipt {
                            event_id,
                            status: pb::ReceiptStatus::Rejected as i32,
                            resource: String::new(),
                            error: rej.to_string(),
                            error_code: rej.code().to_string(),
                        },
                    })
                }
            })
            .buffer_unordered(STREAM_WINDOW);
        Ok(Response::new(Box::pin(receipts)))
    }
}
