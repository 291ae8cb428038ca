//! TLS handshakes are capped (security review, finding 4).
//!
//! With `tls.max_handshakes = 4` and a 3 s handshake timeout: four TCP
//! connections that never send a ClientHello fill the cap; further
//! connections are closed at once, counted in
//! `knutepunkt_tls_handshakes_refused_total` and logged once (rate-limited,
//! with the peer address only). The silent connections lose their slots at
//! the timeout, and a real mutual-TLS vendor gets in again.

use std::time::{Duration, Instant};

use conformance_tests::harness::{Hub, HubOptions, events, metric, ok};
use knutepunkt::proto::v1 as pb;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const CAP: usize = 4;
const TIMEOUT_SECS: u64 = 3;

/// Whether the hub closes `s` within `within` without sending anything.
async fn closed_by_hub(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_starve_the_handshake_cap() {
    let dir = ok(tempfile::tempdir());
    let opts = HubOptions {
        env: vec![
            ("KNUTEPUNKT_TLS__MAX_HANDSHAKES".into(), CAP.to_string()),
            (
                "KNUTEPUNKT_TLS__HANDSHAKE_TIMEOUT_SECS".into(),
                TIMEOUT_SECS.to_string(),
            ),
        ],
        ..HubOptions::default()
    };
    let hub = ok(Hub::start(dir.path(), opts).await);
    let before = metric(
        &ok(hub.metrics().await),
        "knutepunkt_tls_handshakes_refused_total",
        &[("listener", "grpc")],
    );
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..CAP {
        silent.push(ok(TcpStream::connect(hub.grpc).await));
    }
    // Give the accept loop time to take all four.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = 0;
    for _ in 0..6 {
        let mut s = ok(TcpStream::connect(hub.grpc).await);
        if closed_by_hub(&mut s, Duration::from_secs(1)).await {
            refused += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(TIMEOUT_SECS),
        "too slow to test the cap before the timeout"
    );
    assert_eq!(refused, 6, "connections over the cap are closed at once");
    let text = ok(hub.metrics().await);
    let after = metric(
        &text,
        "knutepunkt_tls_handshakes_refused_total",
        &[("listener", "grpc")],
    );
    assert!(
        after - before >= 6.0,
        "refused counter: {before} -> {after}"
    );

    // The silent connections time out; a real vendor gets in.
    tokio::time::sleep(Duration::from_secs(TIMEOUT_SECS) + Duration::from_millis(500)).await;
    for s in &mut silent {
        assert!(
            closed_by_hub(s, Duration::from_secs(2)).await,
            "a silent connection outlived the handshake timeout"
        );
    }
    let mut c = ok(hub.client().await);
    let r = ok(c
        .submit(events::heart_rate("tls-cap-1", events::OSLO, 7))
        .await)
    .into_inner();
    assert_eq!(r.status, pb::ReceiptStatus::Accepted as i32);

    let log = hub.logs();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake cap reached"))
        .collect();
    assert_eq!(warnings.len(), 1, "one rate-limited line:\n{log}");
    assert!(warnings[0].contains("127.0.0.1"), "{}", warnings[0]);
}
