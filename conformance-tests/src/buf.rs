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

use crate::cache::{READY_MARKER, install_dir, install_once};

/// The error text when npm/node is not installed: a skip, not a failure.
pub const SKIPPED_NO_NPM: &str = "skipped: npm (Node.js) not found";

const PACKAGE_JSON: &str = include_str!("../buf/package.json");
const PACKAGE_LOCK: &str = include_str!("../buf/package-lock.json");

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
    let dir = install_dir("buf", &format!("{PACKAGE_JSON}\n{PACKAGE_LOCK}"));
    let buf = buf_bin(&dir);
    install_once(&dir, &buf, "buf: @bufbuild/buf", build)
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

/// Runs a command (see [`crate::cache::run`]).
pub fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    crate::cache::run(cmd, what)
}

fn buf_bin(dir: &Path) -> PathBuf {
    let name = if cfg!(windows) { "buf.cmd" } else { "buf" };
    dir.join("node_modules").join(".bin").join(name)
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
