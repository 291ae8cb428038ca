//! buf (the protobuf linter and breaking-change checker) for the contract
//! test, installed from the npm package `@bufbuild/buf` pinned in
//! `buf/package.json` and `buf/package-lock.json` (with integrity hashes).
//!
//! Installed once per lock file under `$HOME/.cache/knutepunkt/buf-<hash>`
//! with `npm ci --prefix`, the same way [`crate::fhir_validator`] keeps its
//! venv: each installer works in a private temporary directory and renames
//! it into place, so parallel tests and processes never see a half-made one.
//!
//! Outcomes: `Ok(path to buf)`; `Err(msg)` with [`SKIPPED_NO_NPM`] when
//! there is no `npm` (the caller reports a skip, or fails under `CI=true`);
//! any other `Err` is a failure, including a failed `npm ci`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The error text when npm/node is not installed: a skip, not a failure.
pub const SKIPPED_NO_NPM: &str = "skipped: npm (Node.js) not found";

const PACKAGE_JSON: &str = include_str!("../buf/package.json");
const PACKAGE_LOCK: &str = include_str!("../buf/package-lock.json");
/// Written last into a finished install; a directory without it is not used.
const READY_MARKER: &str = ".knutepunkt-ready";

/// Whether an [`install`] error means "skipped" rather than "failed".
pub fn is_skip(err: &str) -> bool {
    err.starts_with("skipped:")
}

/// The path of the `buf` executable, installed on first use (once per
/// process).
pub fn install() -> Result<PathBuf, String> {
    static BUF: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUF.get_or_init(install_or_reuse).clone()
}

fn install_or_reuse() -> Result<PathBuf, String> {
    let node = Command::new("node").arg("--version").output();
    let npm = Command::new("npm").arg("--version").output();
    match (node, npm) {
        (Ok(n), Ok(m)) if n.status.success() && m.status.success() => {}
        _ => return Err(SKIPPED_NO_NPM.to_string()),
    }
    let base = cache_dir();
    let key = format!("{PACKAGE_JSON}\n{PACKAGE_LOCK}");
    let dir = base.join(format!("buf-{:016x}", fnv1a(key.as_bytes())));
    let buf = buf_bin(&dir);
    if dir.join(READY_MARKER).exists() && buf.exists() {
        return Ok(buf);
    }
    std::fs::create_dir_all(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tmp = base.join(format!("buf-tmp-{}-{nonce}", std::process::id()));
    eprintln!(
        "buf: installing @bufbuild/buf into {} (once)",
        dir.display()
    );
    if let Err(e) = build(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(buf),
        Err(e) => {
            // Someone else finished first (or left a broken directory).
            let _ = std::fs::remove_dir_all(&tmp);
            if dir.join(READY_MARKER).exists() && buf.exists() {
                Ok(buf)
            } else {
                Err(format!(
                    "could not move the new install into {} ({e}); remove that directory and retry",
                    dir.display()
                ))
            }
        }
    }
}

fn build(tmp: &Path) -> Result<(), String> {
    std::fs::create_dir_all(tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    for (name, text) in [
        ("package.json", PACKAGE_JSON),
        ("package-lock.json", PACKAGE_LOCK),
    ] {
        let p = tmp.join(name);
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    // `ci` installs exactly the lock file (integrity-checked); the package's
    // install script is not needed: its launcher finds the platform binary
    // in the optional dependency npm installs.
    run(
        Command::new("npm")
            .args([
                "ci",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(tmp),
        "npm ci (conformance-tests/buf/package-lock.json)",
    )?;
    run(
        Command::new(buf_bin(tmp)).arg("--version"),
        "buf --version in the new install",
    )?;
    let marker = tmp.join(READY_MARKER);
    std::fs::write(&marker, PACKAGE_LOCK).map_err(|e| format!("writing {}: {e}", marker.display()))
}

/// Runs a command; on failure the error carries the end of its output.
pub fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: could not start: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        return Ok(text);
    }
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{what} failed ({}):\n{}",
        out.status,
        tail.join("\n")
    ))
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("knutepunkt"),
        None => std::env::temp_dir().join("knutepunkt-cache"),
    }
}

fn buf_bin(dir: &Path) -> PathBuf {
    let name = if cfg!(windows) { "buf.cmd" } else { "buf" };
    dir.join("node_modules").join(".bin").join(name)
}

/// FNV-1a, 64 bit: stable across Rust versions and runs, for the directory
/// name.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_is_recognised() {
        assert!(is_skip(SKIPPED_NO_NPM));
        assert!(!is_skip("npm ci failed"));
    }
}
