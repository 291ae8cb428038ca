//! Too large is `RESOURCE_EXHAUSTED` / `too_large`, whatever the size
//! (security review, finding 2; README's error table).
//!
//! Three sizes: just above the agreement's event limit (64 KiB by
//! default), just above 256 KiB (tonic's old decode limit, which answered
//! `OUT_OF_RANGE`) and above 1 MiB (the hub's transport limit, refused
//! before decoding). Unary calls get the status with `error-code`
//! metadata; on a stream, an event the hub could decode gets a rejected
//! receipt, and a message over the transport limit ends the stream with
//! the same status.

use conformance_tests::harness::{Hub, HubOptions, events, ok};
use knutepunkt::proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;

const OSLO: &str = events::OSLO;

/// A note whose encoded event is just above `bytes`.
fn event_of(id: &str, bytes: usize) -> pb::Event {
    let mut ev = events::note(id, OSLO, 5, "");
    if let Some(pb::event::Payload::Note(n)) = ev.payload.as_mut() {
        n.text = "x".repeat(bytes + 1);
    }
    ev
}

fn assert_too_large(what: &str, s: &tonic::Status) {
    assert_eq!(s.code(), Code::ResourceExhausted, "{what}: {s:?}");
    assert_eq!(
        s.metadata().get("error-code").and_then(|v| v.to_str().ok()),
        Some("too_large"),
        "{what}: {s:?}"
    );
    assert!(!s.message().is_empty(), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_is_resource_exhausted_at_every_size() {
    let dir = ok(tempfile::tempdir());
    let hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let mut c = ok(hub.client().await);
    let sizes = [
        ("just above the event limit", 64 * 1024),
        ("just above 256 KiB", 256 * 1024),
        ("above 1 MiB", 1024 * 1024 + 10),
        ("above 4 MiB", 4 * 1024 * 1024),
    ];
    for (i, (what, bytes)) in sizes.iter().enumerate() {
        let s = c
            .submit(event_of(&format!("big-{i}"), *bytes))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_too_large(what, &s);
    }
    // The connection is still good after each refusal.
    let r = ok(c.submit(events::heart_rate("small-1", OSLO, 5)).await).into_inner();
    assert_eq!(r.status, pb::ReceiptStatus::Accepted as i32);

    // On a stream: decodable events get a receipt with error_code too_large.
    for (what, bytes) in [("event limit", 64 * 1024), ("256 KiB", 256 * 1024)] {
        let evs = vec![
            event_of("s-big", bytes),
            events::heart_rate("s-small", OSLO, 6),
        ];
        let receipts: Vec<pb::Receipt> = ok(ok(c.submit_stream(tokio_stream::iter(evs)).await)
            .into_inner()
            .collect::<Result<Vec<_>, _>>()
            .await);
        assert_eq!(receipts.len(), 2, "{what}");
        let big = receipts.iter().find(|r| r.event_id == "s-big");
        assert_eq!(
            big.map(|r| r.error_code.as_str()),
            Some("too_large"),
            "{what}"
        );
    }
    // Above the transport limit the stream ends with the same status.
    let evs = vec![event_of("s-huge", 2 * 1024 * 1024)];
    let mut stream = match c.submit_stream(tokio_stream::iter(evs)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return assert_too_large("stream, 2 MiB", &s),
    };
    let mut seen = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(r) => panic!("stream, 2 MiB: a receipt {r:?}"),
            Err(s) => {
                assert_too_large("stream, 2 MiB", &s);
                seen = true;
            }
        }
    }
    assert!(seen, "stream, 2 MiB: ended without a status");
}
