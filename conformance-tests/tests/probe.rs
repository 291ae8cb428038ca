//! `knutepunkt probe`, the container's health check (Dockerfile
//! `HEALTHCHECK`): exit 0 when the hub answers 2xx over TLS with the
//! given CA, and a failure an operator can read otherwise.

use std::process::Command;

use conformance_tests::harness::{self, Hub, HubOptions, ok};

fn probe(args: &[&str]) -> (bool, String) {
    let bin = ok(harness::binary("knutepunkt"));
    let out = ok(Command::new(bin)
        .arg("probe")
        .args(args)
        .env_remove("KNUTEPUNKT_PROBE_CA")
        .output());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_passes_on_a_ready_hub_and_fails_saying_why() {
    let dir = ok(tempfile::tempdir());
    let mut hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let ca = ok(harness::certs()).join("ca.pem");
    let ca = ca.display().to_string();
    let ready = hub.url("/readyz");

    let (passed, err) = probe(&[&ready, "--ca", &ca]);
    assert!(passed, "probe of a ready hub failed: {err}");

    // Without the CA the hub's certificate is not trusted: a failure.
    let (passed, err) = probe(&[&ready]);
    assert!(!passed, "probe passed without the CA");
    assert!(err.contains("did not answer"), "{err}");

    // A path the hub does not serve: its status is named.
    let (passed, err) = probe(&[&hub.url("/no-such-path"), "--ca", &ca]);
    assert!(!passed, "probe passed on a 404");
    assert!(err.contains("404"), "{err}");

    // A stopped hub: a failure, not a hang.
    let url = ready.clone();
    ok(hub.stop().await);
    let started = std::time::Instant::now();
    let (passed, err) = probe(&[&url, "--ca", &ca]);
    assert!(!passed, "probe passed on a stopped hub");
    assert!(err.contains("did not answer"), "{err}");
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
}
