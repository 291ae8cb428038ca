//! Per-vendor limits: rate, concurrent streams, message size.

use super::*;

fn stranger(limits: &str) -> String {
    format!(
        r#"
[[vendors]]
id = "stranger"
municipalities = ["{OSLO}"]
{limits}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_resource_exhausted_with_a_retry_hint() {
    let (_d, hub) = hub_with(&stranger("rate_per_sec = 5\nburst = 5")).await;
    let mut c = ok(hub.client_as(Some("stranger")).await);
    let mut accepted = 0;
    let mut hint = None;
    for i in 0..30 {
        match c
            .submit(events::heart_rate(&format!("rl-{i}"), OSLO, 400 + i))
            .await
        {
            Ok(r) => {
                assert_eq!(r.into_inner().status, ReceiptStatus::Accepted as i32);
                accepted += 1;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                let ms: u64 = s
                    .metadata()
                    .get("retry-after-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no retry-after-ms hint: {s:?}"));
                hint = Some(ms);
                break;
            }
        }
    }
    let ms = hint.unwrap_or_else(|| panic!("30 events at full speed were never limited"));
    // The burst of 5 (plus at most what refilled meanwhile) goes through.
    assert!(
        (5..=7).contains(&accepted),
        "accepted {accepted} before the limit"
    );
    assert!((1..=1000).contains(&ms), "retry-after-ms {ms}");
    // Heeding the hint works.
    tokio::time::sleep(Duration::from_millis(ms + 20)).await;
    let r = ok(c.submit(events::heart_rate("rl-after", OSLO, 499)).await).into_inner();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32);
    // On a stream the excess is REJECTED with code rate_limited.
    let evs: Vec<_> = (0..20)
        .map(|i| events::heart_rate(&format!("rls-{i}"), OSLO, 450 + i))
        .collect();
    let receipts: Vec<pb::Receipt> = ok(ok(c.submit_stream(tokio_stream::iter(evs)).await)
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await);
    let limited = receipts
        .iter()
        .filter(|r| r.status == ReceiptStatus::Rejected as i32 && r.error_code == "rate_limited")
        .count();
    assert_eq!(receipts.len(), 20);
    assert!(
        limited >= 13,
        "only {limited} of 20 rate limited: {receipts:?}"
    );
    let m = ok(hub.metrics().await);
    assert!(
        metric(
            &m,
            "knutepunkt_events_total",
            &[("status", "rejected"), ("reason", "rate_limited")]
        ) >= 14.0,
        "{m}"
    );
    // The limit is per vendor: demo-vendor is not slowed down.
    let mut d = ok(hub.client().await);
    for i in 0..10 {
        let r = ok(d
            .submit(events::heart_rate(&format!("d-{i}"), OSLO, 480 + i))
            .await);
        assert_eq!(r.into_inner().status, ReceiptStatus::Accepted as i32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_caps_concurrent_streams() {
    let (_d, hub) = hub_with(&stranger("max_streams = 1")).await;
    let mut c = ok(hub.client_as(Some("stranger")).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    ok(tx.send(events::heart_rate("ms-1", OSLO, 501)).await);
    let mut first = ok(c
        .submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await)
    .into_inner();
    let r = ok(
        ok(tokio::time::timeout(Duration::from_secs(10), first.next()).await)
            .unwrap_or_else(|| panic!("first stream ended")),
    );
    assert_eq!(r.status, ReceiptStatus::Accepted as i32);
    // The first stream is open: a second one is refused.
    let mut c2 = ok(hub.client_as(Some("stranger")).await);
    let second = c2
        .submit_stream(tokio_stream::iter(vec![events::heart_rate(
            "ms-2", OSLO, 502,
        )]))
        .await;
    match second {
        Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
        Ok(r) => {
            let first_item = r.into_inner().next().await;
            match first_item {
                Some(Err(s)) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
                other => panic!("a second concurrent stream was served: {other:?}"),
            }
        }
    }
    assert_eq!(stored_for(&hub, OSLO, 502).await, 0);
    // Unary calls are not streams: still allowed.
    let r = ok(c2.submit(events::heart_rate("ms-u", OSLO, 503)).await).into_inner();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32);
    // The first stream still works; once it is closed a new one gets in.
    ok(tx.send(events::heart_rate("ms-3", OSLO, 504)).await);
    let r = ok(
        ok(tokio::time::timeout(Duration::from_secs(10), first.next()).await)
            .unwrap_or_else(|| panic!("first stream ended")),
    );
    assert_eq!(r.status, ReceiptStatus::Accepted as i32);
    drop(tx);
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(10), first.next()).await {}
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = c2
            .submit_stream(tokio_stream::iter(vec![events::heart_rate(
                "ms-4", OSLO, 505,
            )]))
            .await;
        let got = match res {
            Ok(r) => r.into_inner().next().await,
            Err(s) => Some(Err(s)),
        };
        match got {
            Some(Ok(r)) => {
                assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
                break;
            }
            Some(Err(s)) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("no stream after the first closed: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_size_is_per_vendor() {
    let (_d, hub) = hub_with(&stranger("max_message_bytes = 400")).await;
    let big = |id: &str, resident: u32| {
        let mut ev = events::note(id, OSLO, resident, "");
        if let Some(pb::event::Payload::Note(n)) = ev.payload.as_mut() {
            n.text = "Tilsyn utført. ".repeat(40);
        }
        ev
    };
    let mut c = ok(hub.client_as(Some("stranger")).await);
    let s = c
        .submit(big("big-1", 601))
        .await
        .err()
        .unwrap_or_else(|| panic!("a too large event was accepted"));
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("400"), "{s:?}");
    let r: Vec<pb::Receipt> = ok(ok(c
        .submit_stream(tokio_stream::iter(vec![big("big-2", 602)]))
        .await)
    .into_inner()
    .collect::<Result<Vec<_>, _>>()
    .await);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, ReceiptStatus::Rejected as i32);
    assert_eq!(r[0].error_code, "too_large");
    // A small event of the same vendor passes; the same big event from a
    // vendor with the default limit passes too.
    let ok1 = ok(c.submit(events::heart_rate("small", OSLO, 603)).await).into_inner();
    assert_eq!(ok1.status, ReceiptStatus::Accepted as i32);
    let ok2 = ok(ok(hub.client().await).submit(big("big-3", 604)).await).into_inner();
    assert_eq!(ok2.status, ReceiptStatus::Accepted as i32);
}
