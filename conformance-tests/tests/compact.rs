//! `knutepunkt compact` against the real binary: it needs the admin token,
//! it runs while a vendor keeps submitting, it reports each part of the
//! store, and everything stored before and during it is still served.
//! On PostgreSQL it says that autovacuum does this and what to run instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use conformance_tests::harness::events::{self, OSLO};
use conformance_tests::harness::{
    ADMIN_TOKEN, Hub, HubOptions, ReceiptStatus, binary, get_json, ok, search_all,
};
use conformance_tests::pg::backend_is_postgres;

/// Runs `knutepunkt compact` against `hub`, with `token` in the
/// environment; (success, stdout, stderr).
async fn compact(hub: &Hub, token: Option<&str>) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(ok(binary("knutepunkt")));
    cmd.args(["compact", "--admin", &format!("http://{}", hub.admin)])
        .env_remove("KNUTEPUNKT_ADMIN_TOKEN")
        .env_remove("KNUTEPUNKT_ADMIN_URL");
    if let Some(t) = token {
        cmd.env("KNUTEPUNKT_ADMIN_TOKEN", t);
    }
    let out = ok(cmd.output().await);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_needs_the_token_runs_under_load_and_keeps_every_event() {
    let dir = ok(tempfile::tempdir());
    let opts = HubOptions {
        config_extra: ok(conformance_tests::harness::oslo_pulled_by_vakt(None)),
        ..HubOptions::default()
    };
    let hub = ok(Hub::start(dir.path(), opts).await);
    let mut c = ok(hub.client().await);
    for i in 0..200 {
        let r = ok(c
            .submit(events::heart_rate(&format!("before-{i}"), OSLO, i % 7))
            .await);
        assert_eq!(r.into_inner().status, ReceiptStatus::Accepted as i32);
    }

    let (okay, _, err) = compact(&hub, None).await;
    assert!(!okay, "compact without the admin token must fail");
    assert!(
        err.contains("token"),
        "the error must name the token: {err}"
    );

    // A vendor keeps submitting while the hub compacts.
    let stop = Arc::new(AtomicBool::new(false));
    let vendor = {
        let (stop, mut c) = (stop.clone(), ok(hub.client().await));
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) || n < 50 {
                let r = ok(c
                    .submit(events::heart_rate(&format!("during-{n}"), OSLO, n % 7))
                    .await);
                assert_eq!(r.into_inner().status, ReceiptStatus::Accepted as i32);
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    let (okay, out, err) = compact(&hub, Some(ADMIN_TOKEN)).await;
    stop.store(true, Ordering::Relaxed);
    let during = ok(vendor.await);
    assert!(okay, "compact failed: {err}\n{out}");
    if backend_is_postgres() {
        assert!(out.contains("autovacuum"), "{out}");
    } else {
        for part in ["log", "ids", "idx", "audit", "journal", "total"] {
            assert!(
                out.lines().any(|l| l.starts_with(part)),
                "no line for {part}: {out}"
            );
        }
    }
    let (status, st) = ok(get_json(&format!("http://{}/admin/compact", hub.admin)).await);
    assert_eq!((status, st["state"].as_str()), (200, Some("done")), "{st}");

    // Everything stored before and during the compaction is served.
    let all = ok(search_all(&format!("{}/Observation?_count=500", hub.fhir_base(OSLO))).await);
    assert_eq!(all.len(), 200 + during as usize);
    assert!(hub.logs().contains("compaction finished"), "{}", hub.logs());
}
