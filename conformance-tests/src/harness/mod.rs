//! Drives the real `knutepunkt` binary: builds it once, starts it on free
//! loopback ports with its own data directory, waits until it is ready,
//! turns an early exit into an error carrying its log, and can stop it
//! gracefully, `kill -9` it and start it again on the same data.
//!
//! `hub.rs` runs the hub, `epj.rs` the EPJ double, `http.rs` is an EPJ
//! client's and operator's HTTP (tokens, paged searches), `events.rs`
//! builds valid events.

mod epj;
pub mod events;
mod http;
mod hub;

pub use epj::EpjAdapter;
pub use http::*;
pub use hub::*;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Result, anyhow, bail};
use knutepunkt::proto::v1 as pb;

/// Path of a binary of this workspace, built once per test process with the
/// same profile as the tests (a nested `cargo build` is quick when fresh).
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let mut cmd = Command::new(env!("CARGO"));
            // The same packages and targets as `cargo test --workspace`:
            // a narrower set resolves crate features differently (dev-only
            // features such as tokio's test-util), and cargo would then
            // compile every dependency again and overwrite the binaries the
            // outer run built. With the same set this is a no-op there.
            cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
            if !cfg!(debug_assertions) {
                cmd.arg("--release");
            }
            let out = cmd
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cargo build failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            // tests live in <target>/<profile>/deps/; binaries one level up
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            exe.parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .ok_or_else(|| "cannot find the target directory".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

/// Whether this run is CI (`CI=true`), where no test may skip.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The one way a test says it cannot run here (no root for a tmpfs, no
/// python3 for the FHIR validator, no FUSE, no Mosquitto, no npm for buf,
/// no promtool): under `CI=true` it fails with `reason`; on a developer's
/// machine it prints `SKIPPED <test>: <reason>` and the caller returns.
pub fn skip(test: &str, reason: &str) {
    if ci() {
        panic!("{test} cannot run and CI=true, so it fails instead of skipping: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// A free loopback port for a hub. Taken below the kernel's ephemeral range
/// (32768+), so no port-0 bind (the EPJ adapter, outgoing connections) can
/// grab it between the check and the hub's bind; a per-process counter
/// keeps parallel tests apart.
pub fn free_port() -> Result<SocketAddr> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 50) as u16 * 200;
    for _ in 0..2_000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l.local_addr()?);
        }
    }
    bail!("no free port between 20000 and 32000")
}

/// The dev PKI of this test process (`knutepunkt dev-certs`), made once:
/// CA, server certificate, vendors `demo-vendor` (Oslo and Bergen) and
/// `other-vendor` (Bergen only), an expired `demo-vendor` certificate, and
/// EPJ client `demo-epj`.
pub fn certs() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("kp-certs-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let out = Command::new(binary("knutepunkt").map_err(|e| e.to_string())?)
            .args([
                "dev-certs",
                "--vendor",
                "demo-vendor",
                "--vendor",
                "other-vendor",
                "--vendor",
                "stranger",
            ])
            .args([
                "--expired",
                "demo-vendor",
                "--epj-client",
                "oslo-epj",
                "--epj-client",
                "bergen-epj",
                "--epj-client",
                "oslo-vakt",
                "--out",
            ])
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "dev-certs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(dir)
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Replaces `dst` by the contents of `src` atomically (rename), keeping
/// `dst`'s modification time when `keep_mtime`, so a file watcher cannot
/// notice and only a SIGHUP reloads. For certificate reload tests.
pub fn replace_file(src: &Path, dst: &Path, keep_mtime: bool) -> Result<()> {
    let tmp = dst.with_extension("new");
    std::fs::copy(src, &tmp)?;
    if keep_mtime {
        let mtime = std::fs::metadata(dst)?.modified()?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)?
            .set_modified(mtime)?;
    }
    std::fs::rename(&tmp, dst)?;
    Ok(())
}

/// A copy of the shared dev certificates in a directory of its own, which a
/// test may change without touching any other test.
pub fn own_certs() -> Result<tempfile::TempDir> {
    let shared = certs()?;
    let mine = tempfile::tempdir()?;
    for e in std::fs::read_dir(&shared)? {
        let e = e?;
        std::fs::copy(e.path(), mine.path().join(e.file_name()))?;
    }
    Ok(mine)
}

/// Runs `knutepunkt dev-certs --out <out>` with `args`: a second, unrelated
/// PKI (its own CA) for tests that need foreign certificates or keys.
pub fn dev_certs(out: &Path, args: &[&str]) -> Result<()> {
    let res = Command::new(binary("knutepunkt")?)
        .arg("dev-certs")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()?;
    if !res.status.success() {
        bail!("dev-certs failed: {}", String::from_utf8_lossy(&res.stderr));
    }
    Ok(())
}

/// Sum of the Prometheus samples of `name` whose labels include every one
/// of `labels` (0 when there is none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, r)) => (n, r.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            if !all {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// Unwraps a test step's result, panicking with its error (tests only).
pub fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A `$confirm` Parameters body: every reference in `refs` journaled.
pub fn journaled(refs: &[String]) -> serde_json::Value {
    let parts: Vec<serde_json::Value> = refs
        .iter()
        .map(|r| {
            serde_json::json!({"name": "confirmation", "part": [
                {"name": "resource", "valueReference": {"reference": r}},
                {"name": "outcome", "valueCode": "journaled"},
            ]})
        })
        .collect();
    serde_json::json!({"resourceType": "Parameters", "parameter": parts})
}

/// `Type/id` of every entry of a Bundle, in order.
pub fn entry_refs(bundle: &serde_json::Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or(""),
                e["resource"]["id"].as_str().unwrap_or("")
            )
        })
        .collect()
}
