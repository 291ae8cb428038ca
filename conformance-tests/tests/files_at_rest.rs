//! Files at rest are private, whatever the umask (issue: files at rest).
//!
//! The hub is started under umask 022 (which would make files 0644 and
//! directories 0755), takes an event and serves a search; afterwards every
//! directory under its data directory is 0700 and every file 0600 at most.
//! Then the data directory is opened to others, and the hub refuses to
//! start and prints the `chmod` to run; likewise for one file in it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conformance_tests::harness::{Hub, HubOptions, binary, events, ok, search_all};
use knutepunkt::proto::v1 as pb;

/// Every path under `dir` (itself included) with its permission bits.
fn modes(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = ok(std::fs::symlink_metadata(&p));
        out.push((p.clone(), m.permissions().mode() & 0o7777, m.is_dir()));
        if m.is_dir() {
            for e in ok(std::fs::read_dir(&p)) {
                todo.push(ok(e).path());
            }
        }
    }
    out
}

fn chmod(p: &Path, mode: u32) {
    ok(std::fs::set_permissions(
        p,
        std::fs::Permissions::from_mode(mode),
    ));
}

/// Starts the binary on `data` (insecure dev mode, port 0: the refusal
/// comes before any listener) and expects it to exit with the chmod hint.
/// Not through `Hub::start`, which makes its data directory private.
async fn refused(data: &Path, what: &str) {
    let mut child = ok(Command::new(ok(binary("knutepunkt")))
        .args(["serve", "--insecure-dev", "--data-dir"])
        .arg(data)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .env_remove("KNUTEPUNKT_CONFIG")
        // The tests' own switch, not a hub setting (the hub refuses
        // unknown KNUTEPUNKT_* variables).
        .env_remove("KNUTEPUNKT_TEST_BACKEND")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn());
    let deadline = Instant::now() + Duration::from_secs(20);
    while ok(child.try_wait()).is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: the hub started on a data directory open to others");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = ok(child.wait_with_output());
    assert!(!out.status.success(), "{what}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hint = format!("chmod -R go-rwx {}", data.display());
    assert!(stderr.contains(&hint), "{what}: no `{hint}` in:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_private_under_umask_022_and_an_open_directory_is_refused() {
    let dir = ok(tempfile::tempdir());
    let data = dir.path().join("data");
    let opts = HubOptions {
        umask: Some(0o022),
        ..HubOptions::default()
    };
    let mut hub = ok(Hub::start(&data, opts).await);
    let mut c = ok(hub.client().await);
    let r = ok(c
        .submit(events::heart_rate("rest-1", events::OSLO, 8))
        .await)
    .into_inner();
    assert_eq!(r.status, pb::ReceiptStatus::Accepted as i32);
    let found = ok(search_all(&format!("{}/Observation", hub.fhir_base(events::OSLO))).await);
    assert_eq!(found.len(), 1);
    ok(hub.stop().await);

    let all = modes(&data);
    // On PostgreSQL the store's files are the database's; the data dir
    // still holds the hub's own (the audit pseudonym key).
    let least = if conformance_tests::pg::backend_is_postgres() {
        1
    } else {
        3
    };
    assert!(all.len() > least, "the hub wrote nothing? {all:?}");
    for (p, mode, is_dir) in &all {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(
            mode & !want,
            0,
            "{} has mode {mode:04o}, more than {want:04o}",
            p.display()
        );
    }

    chmod(&data, 0o755);
    refused(&data, "directory 0755").await;
    chmod(&data, 0o700);
    let file = all
        .iter()
        .find(|(_, _, is_dir)| !is_dir)
        .map(|(p, _, _)| p.clone())
        .unwrap_or_else(|| panic!("no file in the data directory"));
    chmod(&file, 0o644);
    refused(&data, "a file 0644").await;
    chmod(&file, 0o600);
    ok(hub.restart().await);
}
