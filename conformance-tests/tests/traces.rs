//! OpenTelemetry traces with the real binary: a hub configured with an
//! OTLP/HTTP endpoint (here a small receiver in the test) exports one trace
//! per event — ingest, store put and delivery spans (push and pull) under
//! the trace id that is the resource id — and no national id or token is in
//! what it sends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use conformance_tests::harness::events::{self, OSLO};
use conformance_tests::harness::{
    EpjAdapter, Hub, HubOptions, entry_refs, get_json, ok, submit_all, token, vakt_confirm,
};
use knutepunkt::domain::synthetic;
use knutepunkt::proto::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;

type Received = Arc<Mutex<Vec<Bytes>>>;

/// An OTLP/HTTP receiver on a free port: keeps every `POST /v1/traces` body.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(|State(got): State<Received>, body: Bytes| async move {
                if let Ok(mut g) = got.lock() {
                    g.push(body);
                }
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }),
        )
        .with_state(got.clone());
    let l = ok(tokio::net::TcpListener::bind("127.0.0.1:0").await);
    let addr = ok(l.local_addr());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}"), got)
}

/// One exported span: name, trace id (hex), string/int attributes.
#[derive(Debug)]
struct Span {
    name: String,
    trace: String,
    attrs: BTreeMap<String, String>,
}

fn spans(bodies: &[Bytes]) -> Vec<Span> {
    let mut out = Vec::new();
    for b in bodies {
        let req = ok(ExportTraceServiceRequest::decode(b.as_ref()));
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Any::StringValue(s)) => s.clone(),
                                Some(Any::IntValue(i)) => i.to_string(),
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    let trace = s.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    out.push(Span {
                        name: s.name,
                        trace,
                        attrs,
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_one_trace_without_national_ids_or_tokens() {
    let (endpoint, got) = receiver().await;
    let epj = ok(EpjAdapter::start("ok").await);
    let cfg = ok(conformance_tests::harness::oslo_pulled_by_vakt(Some((
        &epj, "",
    ))));
    let dir = ok(tempfile::tempdir());
    let mut hub = ok(Hub::start(
        &dir.path().join("data"),
        HubOptions {
            config_extra: cfg,
            env: vec![("KNUTEPUNKT_TELEMETRY__OTLP_ENDPOINT".into(), endpoint)],
            ..HubOptions::default()
        },
    )
    .await);

    let evs = vec![
        events::heart_rate("t-hr", OSLO, 3),
        events::alarm("t-al", OSLO, 3, "4.1", pb::Severity::Red),
    ];
    let refs = submit_all(&hub, evs).await;
    // Delivered by push, and by pull: $pending, then $confirm of both.
    ok(epj.wait_created(2, Duration::from_secs(20)).await);
    pull_and_confirm(&hub).await;
    let origin = hub.url("");
    let tokens = [
        ok(token(&origin, "oslo-vakt").await),
        ok(token(&origin, "oslo-epj").await),
    ];

    // A graceful stop sends what the exporter still buffers.
    ok(hub.stop().await);
    let bodies = exported(&got).await;
    assert!(
        !bodies.is_empty(),
        "no OTLP request arrived; log:\n{}",
        hub.logs()
    );
    let all = spans(&bodies);
    for r in &refs {
        one_trace_per_event(&all, r);
    }
    // Nothing that identifies a person or grants access, in any byte sent.
    let secrets = [synthetic::fnr(3)]
        .into_iter()
        .chain(tokens.iter().cloned())
        .collect::<Vec<_>>();
    for b in &bodies {
        for s in &secrets {
            let found = b.windows(s.len()).any(|w| w == s.as_bytes());
            assert!(
                !found,
                "an exported trace payload contains a national id or a token"
            );
        }
    }
}

/// `oslo-vakt` takes both events with `$pending` and confirms them.
async fn pull_and_confirm(hub: &Hub) {
    let base = hub.fhir_base(OSLO);
    let (status, b) = ok(get_json(&format!("{base}/$pending?consumer=oslo-vakt&_count=10")).await);
    assert_eq!(status, 200, "{b}");
    let offered = entry_refs(&b);
    assert_eq!(offered.len(), 2, "{b}");
    let body = conformance_tests::harness::journaled(&offered);
    let (status, text) = ok(vakt_confirm(&base, &body).await);
    assert_eq!(status, 200, "{text}");
}

/// The OTLP requests that arrived, once both confirm spans are among them
/// (or after 10 s).
async fn exported(got: &Received) -> Vec<Bytes> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bodies = got.lock().map(|g| g.clone()).unwrap_or_default();
        let names: Vec<String> = spans(&bodies).into_iter().map(|s| s.name).collect();
        if names.iter().filter(|n| *n == "deliver.confirm").count() >= 2
            || Instant::now() > deadline
        {
            return bodies;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The event behind `r` is one trace: its id, with ingest, store, push and
/// confirm spans carrying what an operator needs.
fn one_trace_per_event(all: &[Span], r: &str) {
    let id = r.split('/').nth(1).unwrap_or_default();
    let trace_id = id.replace('-', "");
    let mine: Vec<&Span> = all.iter().filter(|s| s.trace == trace_id).collect();
    let names: Vec<&str> = mine.iter().map(|s| s.name.as_str()).collect();
    for want in ["ingest", "store.put", "deliver.push", "deliver.confirm"] {
        assert!(names.contains(&want), "{r}: no {want} span in {names:?}");
    }
    let ingest = mine.iter().find(|s| s.name == "ingest").map(|s| &s.attrs);
    let ingest = ingest.unwrap_or_else(|| panic!("no ingest span"));
    assert_eq!(ingest.get("resource_id").map(String::as_str), Some(id));
    assert_eq!(
        ingest.get("vendor").map(String::as_str),
        Some("demo-vendor")
    );
    assert_eq!(ingest.get("municipality").map(String::as_str), Some(OSLO));
    let confirm = mine.iter().find(|s| s.name == "deliver.confirm");
    let confirm = confirm
        .map(|s| &s.attrs)
        .unwrap_or_else(|| panic!("no confirm"));
    assert_eq!(
        confirm.get("destination").map(String::as_str),
        Some("oslo-vakt")
    );
    assert_eq!(
        confirm.get("outcome").map(String::as_str),
        Some("delivered")
    );
    let pushed = mine
        .iter()
        .filter(|s| s.name == "deliver.push")
        .any(|s| s.attrs.get("outcome").map(String::as_str) == Some("delivered"));
    assert!(pushed, "{r}: no delivered push span");
}
