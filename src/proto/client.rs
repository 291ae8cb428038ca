//! A vendor's client of `VendorIngestService` that speaks in [`Event`]s and
//! [`Receipt`]s.
//!
//! The contract wraps every event in a per-RPC request message
//! (`SubmitRequest`, `SubmitStreamRequest`) and every receipt in a per-RPC
//! response, as buf's STANDARD lint rules want. Callers inside this
//! repository (the demo, the adapters, the tests) only ever want to send an
//! event and read its receipt, so this thin wrapper does the wrapping in one
//! place instead of at every call site.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{IntoRequest, Response, Status};

use super::v1::vendor_ingest_service_client::VendorIngestServiceClient;
use super::v1::{
    Event, Receipt, SubmitRequest, SubmitResponse, SubmitStreamRequest, SubmitStreamResponse,
};

/// The receipts of one `SubmitStream` call, one per event.
pub type ReceiptStream = Pin<Box<dyn Stream<Item = Result<Receipt, Status>> + Send>>;

/// A `VendorIngestService` client. Cheap to clone (shares the channel).
#[derive(Clone, Debug)]
pub struct EventClient {
    raw: VendorIngestServiceClient<Channel>,
}

impl EventClient {
    pub fn new(channel: Channel) -> Self {
        EventClient {
            raw: VendorIngestServiceClient::new(channel),
        }
    }

    /// The generated client, for sending requests this wrapper cannot
    /// express (e.g. a request without an event).
    pub fn raw(&mut self) -> &mut VendorIngestServiceClient<Channel> {
        &mut self.raw
    }

    /// `Submit`: one event. Pass a `tonic::Request<Event>` to set a timeout
    /// or metadata.
    pub async fn submit(
        &mut self,
        event: impl IntoRequest<Event>,
    ) -> Result<Response<Receipt>, Status> {
        let req = event
            .into_request()
            .map(|event| SubmitRequest { event: Some(event) });
        let resp = self.raw.submit(req).await?;
        let (meta, answer, ext) = resp.into_parts();
        let receipt = receipt_of(answer)?;
        Ok(Response::from_parts(meta, receipt, ext))
    }

    /// `SubmitStream`: many events on one stream, one receipt per event.
    pub async fn submit_stream<S>(&mut self, events: S) -> Result<Response<ReceiptStream>, Status>
    where
        S: Stream<Item = Event> + Send + 'static,
    {
        let requests = events.map(|event| SubmitStreamRequest { event: Some(event) });
        let resp = self.raw.submit_stream(requests).await?;
        let (meta, answers, ext) = resp.into_parts();
        let receipts: ReceiptStream = Box::pin(answers.map(|a| a.and_then(stream_receipt_of)));
        Ok(Response::from_parts(meta, receipts, ext))
    }
}

fn receipt_of(answer: SubmitResponse) -> Result<Receipt, Status> {
    answer
        .receipt
        .ok_or_else(|| Status::internal("the hub answered Submit without a receipt"))
}

fn stream_receipt_of(answer: SubmitStreamResponse) -> Result<Receipt, Status> {
    answer
        .receipt
        .ok_or_else(|| Status::internal("the hub answered SubmitStream without a receipt"))
}
