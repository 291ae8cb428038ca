//! OpenTelemetry traces over OTLP/HTTP (protobuf), off unless
//! `[telemetry] otlp_endpoint` is set.
//!
//! **One trace per event, named by the resource id.** The trace id of every
//! span about an event is its resource id (a UUID v5: 16 bytes, exactly a
//! trace id), so ingest (`ingest`, `store.put`) and delivery
//! (`deliver.push` per item, `deliver.confirm` per confirmed item) land in
//! one trace without the hub storing any trace context, across restarts and
//! restores, and an operator finds the trace from an Observation's id (the
//! id without dashes). Each of those spans is a child of the event's root
//! span context (that trace id, a span id derived from the resource id).
//! That root is never exported as a span of its own: the OpenTelemetry SDK
//! picks span ids itself, so a real span cannot be given that id. Viewers
//! show the spans of an event under a root they have not received; the
//! spans and their order are all there.
//!
//! Attributes are resource id, vendor id, municipality orgnr, class, seq,
//! destination and outcome — never a national id, a token or a key. Only
//! spans of this crate are exported (a per-layer filter), so no library's
//! span can carry a request's contents out.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector (protobuf); traces are POSTed to
    /// `<url>/v1/traces`. Unset: no traces. Example: "http://127.0.0.1:4318".
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "telemetry.otlp_endpoint {endpoint:?}: {msg}; give the collector's base URL, e.g. http://127.0.0.1:4318"
)]
pub struct TelemetryError {
    endpoint: String,
    msg: String,
}

/// The traces URL for a configured base (or full `/v1/traces`) URL.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The tracer provider exporting to the configured collector, or `None`
/// when traces are off. Shut it down at exit to send what is buffered.
pub fn provider(cfg: &TelemetryConfig) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let Some(endpoint) = cfg.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let err = |msg: String| TelemetryError {
        endpoint: endpoint.to_string(),
        msg,
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(err("not an http:// or https:// URL".into()));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("knutepunkt")
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build(),
    ))
}

/// The `tracing` layer that turns this crate's spans into OpenTelemetry
/// spans of `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    let only_ours =
        tracing_subscriber::filter::Targets::new().with_target("knutepunkt", tracing::Level::INFO);
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("knutepunkt"))
        .with_filter(only_ours)
}

/// The event's root span context: trace id = resource id, span id derived
/// from it, sampled.
pub fn event_root(resource_id: uuid::Uuid) -> SpanContext {
    let d = Sha256::digest(resource_id.as_bytes());
    let mut span = [0u8; 8];
    span.copy_from_slice(&d[..8]);
    if span == [0; 8] {
        span[7] = 1; // an all-zero span id is invalid
    }
    SpanContext::new(
        TraceId::from_bytes(*resource_id.as_bytes()),
        SpanId::from_bytes(span),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

/// Puts `span` into the event's trace. Without the OpenTelemetry layer
/// (traces off) it does nothing.
pub fn join_event(span: &tracing::Span, resource_id: uuid::Uuid) {
    let cx = opentelemetry::Context::new().with_remote_span_context(event_root(resource_id));
    let _ = span.set_parent(cx);
}

/// One span per delivered item, in the item's event trace: `name` is
/// `deliver.push` or `deliver.confirm`. Record `outcome` before dropping.
pub fn item_span(
    name: &'static str,
    destination: &str,
    resource: &crate::store::ResourceRef,
    seq: u64,
) -> tracing::Span {
    let span = match name {
        "deliver.confirm" => tracing::info_span!(
            "deliver.confirm",
            destination = %destination,
            resource_id = %resource.id,
            resource_type = resource.resource_type.as_str(),
            seq,
            outcome = tracing::field::Empty,
        ),
        _ => tracing::info_span!(
            "deliver.push",
            destination = %destination,
            resource_id = %resource.id,
            resource_type = resource.resource_type.as_str(),
            seq,
            outcome = tracing::field::Empty,
        ),
    };
    join_event(&span, resource.id);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_the_resource_id() {
        let id = crate::domain::resource_id(&crate::domain::VendorId("v".into()), "e1");
        let root = event_root(id);
        assert_eq!(root.trace_id().to_string(), id.simple().to_string());
        assert!(root.is_valid() && root.is_sampled() && root.is_remote());
        assert_eq!(event_root(id), root, "derived, not random");
        assert_eq!(
            traces_url("http://c:4318/"),
            "http://c:4318/v1/traces".to_string()
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
        let off = provider(&TelemetryConfig::default());
        assert!(matches!(off, Ok(None)));
        let bad = provider(&TelemetryConfig {
            otlp_endpoint: Some("collector:4318".into()),
        });
        assert!(bad.is_err());
    }
}
