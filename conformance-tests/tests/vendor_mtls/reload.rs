//! Certificate reload (on change and on SIGHUP) without dropping connections.

use super::*;

fn replace(src: &Path, dst: &Path, keep_mtime: bool) {
    ok(harness::replace_file(src, dst, keep_mtime));
}

/// Waits until a new connection trusting only `ca` gets an event accepted.
async fn wait_trusted(hub: &Hub, ca: &Path, vendor: Option<(PathBuf, PathBuf)>, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    loop {
        n += 1;
        if let Ok(ch) = channel(hub, ca, vendor.clone()).await
            && let Ok(r) = EventClient::new(ch)
                .submit(events::heart_rate(&format!("probe-{n}"), OSLO, 700))
                .await
        {
            return r.into_inner().status != ReceiptStatus::Rejected as i32;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_on_change_and_sighup_keeps_connections() {
    // This hub's own copy of the certificates, so replacing them touches no
    // other test.
    let shared = ok(harness::certs());
    let mine = ok(harness::own_certs());
    let data = ok(tempfile::tempdir());
    let hub = ok(Hub::start(
        data.path(),
        HubOptions {
            certs_dir: Some(mine.path().to_path_buf()),
            ..HubOptions::default()
        },
    )
    .await);
    let vendor = ident(mine.path(), "vendor-demo-vendor");
    let old_ca = shared.join("ca.pem");
    let mut old = EventClient::new(ok(channel(&hub, &old_ca, vendor.clone()).await));
    let r = ok(old.submit(events::heart_rate("before", OSLO, 701)).await).into_inner();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32);

    a_changed_certificate_is_served(&hub, mine.path(), &old_ca, &vendor, &mut old).await;
    sighup_reloads_an_unchanged_looking_certificate(&hub, mine.path(), &vendor, &mut old).await;
}

/// Copies another dev PKI's server key and certificate over the hub's
/// (`keep_mtime`: with the old files' modification times, so only a SIGHUP
/// can tell).
fn install_server_cert(from: &Path, mine: &Path, keep_mtime: bool) {
    for f in ["server.key", "server.pem"] {
        replace(&from.join(f), &mine.join(f), keep_mtime);
    }
}

/// Step 1: a new server certificate from another CA, noticed by the
/// watcher. New connections (gRPC and HTTPS) get it; the one made before
/// still serves.
async fn a_changed_certificate_is_served(
    hub: &Hub,
    mine: &Path,
    old_ca: &Path,
    vendor: &Option<(PathBuf, PathBuf)>,
    old: &mut EventClient,
) {
    let second = ok(tempfile::tempdir());
    ok(harness::dev_certs(second.path(), &["--vendor", "x"]));
    install_server_cert(second.path(), mine, false);
    assert!(
        wait_trusted(hub, &second.path().join("ca.pem"), vendor.clone(), 10).await,
        "new connections do not get the new certificate; log:\n{}",
        hub.logs()
    );
    assert!(
        channel(hub, old_ca, vendor.clone()).await.is_err()
            || EventClient::new(ok(channel(hub, old_ca, vendor.clone()).await))
                .submit(events::heart_rate("stale", OSLO, 702))
                .await
                .is_err(),
        "a new connection still got the old certificate"
    );
    // The connection made before the reload is still up and serving.
    let r = ok(old.submit(events::heart_rate("after-1", OSLO, 703)).await).into_inner();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32);
    // HTTPS got the new certificate too.
    let https = ok(reqwest::Client::builder()
        .tls_certs_only([ok(reqwest::Certificate::from_pem(&ok(std::fs::read(
            second.path().join("ca.pem"),
        ))))])
        .build());
    let st = ok(https.get(hub.url("/readyz")).send().await).status();
    assert!(st.is_success(), "{st}");
}

/// Step 2: a third certificate with unchanged modification times. Only
/// the SIGHUP can make the hub load it, in the same process.
async fn sighup_reloads_an_unchanged_looking_certificate(
    hub: &Hub,
    mine: &Path,
    vendor: &Option<(PathBuf, PathBuf)>,
    old: &mut EventClient,
) {
    let third = ok(tempfile::tempdir());
    ok(harness::dev_certs(third.path(), &["--vendor", "x"]));
    install_server_cert(third.path(), mine, true);
    let third_ca = third.path().join("ca.pem");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !wait_trusted(hub, &third_ca, vendor.clone(), 0).await,
        "reloaded without a change or a signal"
    );
    let pid = hub.pid().unwrap_or_else(|| panic!("hub not running"));
    let st = ok(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status());
    assert!(st.success());
    assert!(
        wait_trusted(hub, &third_ca, vendor.clone(), 10).await,
        "SIGHUP did not reload; log:\n{}",
        hub.logs()
    );
    assert!(
        hub.logs()
            .lines()
            .any(|l| l.contains("TLS certificates reloaded") && l.contains("SIGHUP")),
        "{}",
        hub.logs()
    );
    // Still the same process, and the first connection still works.
    assert_eq!(hub.pid(), Some(pid));
    let r = ok(old.submit(events::heart_rate("after-2", OSLO, 704)).await).into_inner();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32);
}
