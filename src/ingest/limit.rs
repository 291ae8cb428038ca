//! One answer for "too large", whatever the size.
//!
//! Two limits apply to a vendor's message. The event limit of the vendor's
//! agreement (`max_message_bytes`, 64 KiB by default) is checked in
//! validation and answered `RESOURCE_EXHAUSTED` / `too_large`. Above it,
//! tonic's decode limit ([`transport_limit`], at least 1 MiB) stops the
//! hub from buffering a huge message at all; tonic answers that with
//! `OUT_OF_RANGE` before our handler runs. [`TooLarge`] (a Tower layer
//! around the ingest service, for unary calls) and [`map_decode_error`]
//! (for messages on a stream) turn that into the same documented answer.
//!
//! Only tonic's decoder produces `OUT_OF_RANGE` here: the handlers never
//! answer with it, so the mapping cannot hide another error.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

/// The smallest decode limit; raised when an agreement allows larger events.
pub const MIN_TRANSPORT_LIMIT: usize = 1024 * 1024;

/// The decode limit for vendors whose largest event limit is `max_event`:
/// above every agreement, so the agreement's limit answers first.
pub fn transport_limit(max_event: usize) -> usize {
    MIN_TRANSPORT_LIMIT.max(max_event.saturating_add(64 * 1024))
}

/// The stable code (README's error table) the answer carries.
pub const CODE: &str = "too_large";

/// The answer to a message over the transport limit.
pub fn too_large() -> Status {
    let mut st = Status::resource_exhausted(
        "too_large: the message is larger than this hub decodes; send one smaller event per message (your agreement's max_message_bytes); do not resend as is",
    );
    st.metadata_mut().insert(
        "error-code",
        tonic::metadata::MetadataValue::from_static(CODE),
    );
    st
}

/// tonic's decode-limit error (on a stream) as [`too_large`]; any other
/// status unchanged.
pub fn map_decode_error(s: Status) -> Status {
    if s.code() == Code::OutOfRange {
        too_large()
    } else {
        s
    }
}

/// Wraps a gRPC service: a trailers-only answer `OUT_OF_RANGE` (tonic's
/// decode limit on a unary call) becomes [`too_large`].
#[derive(Debug, Clone)]
pub struct TooLarge<S> {
    inner: S,
}

impl<S> TooLarge<S> {
    pub fn new(inner: S) -> Self {
        TooLarge { inner }
    }
}

impl<S: NamedService> NamedService for TooLarge<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> Service<http::Request<B>> for TooLarge<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            rewrite(resp.headers_mut());
            Ok(resp)
        })
    }
}

/// Rewrites a trailers-only `OUT_OF_RANGE` status in `headers`.
fn rewrite(headers: &mut http::HeaderMap) {
    let out_of_range = (Code::OutOfRange as i32).to_string();
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(out_of_range.as_bytes()) {
        return;
    }
    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(h);
    }
    if too_large().add_header(headers).is_err() {
        // Cannot happen with our fixed message; keep a valid status anyway.
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_becomes_resource_exhausted() {
        let mut h = http::HeaderMap::new();
        let tonic_answer = Status::out_of_range("decoded message length too large");
        assert!(tonic_answer.add_header(&mut h).is_ok());
        rewrite(&mut h);
        let st = Status::from_header_map(&h).unwrap_or_else(|| Status::unknown("none"));
        assert_eq!(st.code(), Code::ResourceExhausted);
        assert!(st.message().starts_with("too_large"), "{}", st.message());
        assert_eq!(
            h.get("error-code").map(|v| v.as_bytes()),
            Some(&b"too_large"[..])
        );
    }

    #[test]
    fn other_answers_stay() {
        let mut h = http::HeaderMap::new();
        assert!(Status::invalid_argument("x").add_header(&mut h).is_ok());
        let before = h.clone();
        rewrite(&mut h);
        assert_eq!(h, before);
        assert_eq!(
            map_decode_error(Status::unavailable("y")).code(),
            Code::Unavailable
        );
        assert_eq!(
            map_decode_error(Status::out_of_range("z")).code(),
            Code::ResourceExhausted
        );
    }

    #[test]
    fn the_transport_limit_stays_above_every_agreement() {
        assert_eq!(transport_limit(64 * 1024), MIN_TRANSPORT_LIMIT);
        assert!(transport_limit(4 * 1024 * 1024) > 4 * 1024 * 1024);
    }
}
