//! Crash safety: `kill -9` while vendors stream events loses no event the
//! hub acknowledged, and a full disk is refused cleanly and recovered from.

use conformance_tests::harness::ok;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conformance_tests::harness::events::{self, OSLO};
use conformance_tests::harness::{Hub, HubOptions, ReceiptStatus, get_json, search_all};
use tokio::sync::Mutex;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_loses_no_acknowledged_event() {
    let dir = ok(tempfile::tempdir());
    let mut hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..6u32 {
        let mut c = ok(hub.client().await);
        let acked = acked.clone();
        let count = count.clone();
        clients.push(tokio::spawn(async move {
            // Far more than can be sent before the kill: the stream breaks.
            let evs = (0..50_000u32).map(move |i| {
                events::heart_rate(&format!("c{client}-{i}"), OSLO, client * 100 + i % 50)
            });
            let Ok(resp) = c.submit_stream(tokio_stream::iter(evs)).await else {
                return;
            };
            let mut rx = resp.into_inner();
            while let Some(Ok(r)) = rx.next().await {
                if r.status == ReceiptStatus::Accepted as i32 {
                    acked.lock().await.insert(r.resource);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Let load build up, then pull the plug mid-stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < 3_000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ok(hub.kill9());
    for c in clients {
        let _ = c.await;
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() >= 3_000,
        "only {} acks before the kill: {}",
        acked.len(),
        hub.logs()
    );
    ok(hub.restart().await);
    let stored: HashSet<String> =
        ok(search_all(&format!("{}/Observation?_count=500", hub.fhir_base(OSLO))).await)
            .iter()
            .map(|r| format!("Observation/{}", r["id"].as_str().unwrap_or_default()))
            .collect();
    let lost: Vec<_> = acked.difference(&stored).take(5).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost after kill -9, e.g. {lost:?}",
        acked.difference(&stored).count()
    );
    // Spot-check reads by id too.
    for r in acked.iter().take(50) {
        let (status, _) = ok(get_json(&format!("{}/{r}", hub.fhir_base(OSLO))).await);
        assert_eq!(status, 200, "{r}");
    }
}

/// A size-limited tmpfs for the data dir; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size_mb: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        st.success().then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn free_bytes(p: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(p)
        .output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

#[tokio::test]
async fn full_disk_is_refused_cleanly_and_recovered() {
    if conformance_tests::pg::embedded_store_only("full_disk_is_refused_cleanly_and_recovered") {
        return;
    }
    let Some(disk) = SmallDisk::mount(96) else {
        conformance_tests::harness::skip(
            "full_disk_is_refused_cleanly_and_recovered",
            "cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)",
        );
        return;
    };
    let reserve: u64 = 24 * 1024 * 1024;
    let opts = HubOptions {
        env: vec![(
            "KNUTEPUNKT_STORE__MIN_FREE_BYTES".into(),
            reserve.to_string(),
        )],
        ..HubOptions::default()
    };
    let data = disk.dir.path().join("data");
    let mut hub = ok(Hub::start(&data, opts).await);
    let mut c = ok(hub.client().await);
    let r = ok(c.submit(events::heart_rate("before", OSLO, 1)).await).into_inner();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32);

    // Something else fills the disk down to 1 MiB under the reserve.
    let filler = disk.dir.path().join("filler");
    let fill = free_bytes(disk.dir.path()).saturating_sub(reserve) + 1024 * 1024;
    ok(std::fs::write(&filler, vec![0u8; fill as usize]));
    let err = c.submit(events::heart_rate("during", OSLO, 1)).await.err();
    let err = err.unwrap_or_else(|| panic!("accepted an event with the disk full"));
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("disk"), "{err:?}");
    let (status, _) = ok(get_json(&hub.url("/readyz")).await);
    assert_eq!(status, 503, "not ready while the disk is full");
    assert!(
        hub.logs().contains("disk full"),
        "operator was not told: {}",
        hub.logs()
    );

    // Space returns: the hub takes events again without a restart.
    ok(std::fs::remove_file(&filler));
    let r = ok(c.submit(events::heart_rate("during", OSLO, 1)).await).into_inner();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32);
    let (status, _) = ok(get_json(&hub.url("/readyz")).await);
    assert_eq!(status, 200);
    let all = ok(search_all(&format!("{}/Observation", hub.fhir_base(OSLO))).await);
    assert_eq!(all.len(), 2);
    ok(hub.stop().await);
}
