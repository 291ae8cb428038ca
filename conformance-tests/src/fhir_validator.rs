//! An independent FHIR R4 check for tests: runs `fhir-validator/validate.py`
//! (fhir.resources 6.1.0, FHIR 4.0.1, pydantic 1) on resources the hub
//! produced, so a shape mistake in fhir-sdk or in our mapping is caught by a
//! second implementation rather than confirmed by the same one.
//!
//! The Python venv is created once per requirements file and Python version
//! under `$HOME/.cache/knutepunkt/fhir-venv-<hash>`, so CI and developers
//! reuse it. Creation is race-free across parallel tests and processes: each
//! creator builds in a private temporary directory and renames it into place;
//! whoever loses the rename uses the winner's venv.
//!
//! Outcomes: `Ok(())` all valid; `Err(msg)` with [`SKIPPED_NO_PYTHON`] when
//! there is no `python3` (the caller reports a skip, see [`is_skip`]); any
//! other `Err` is a failure, including a failed `pip install`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::cache::{READY_MARKER, install_dir, install_once};

/// The error text when python3 is not installed: a skip, not a failure.
pub const SKIPPED_NO_PYTHON: &str = "skipped: python3 not found";

const REQUIREMENTS: &str = include_str!("../fhir-validator/requirements.txt");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fhir-validator/validate.py");
/// Whether a [`validate`] error means "skipped" rather than "failed".
pub fn is_skip(err: &str) -> bool {
    err.starts_with("skipped:")
}

/// Validates each resource with fhir.resources (FHIR R4 4.0.1). Unknown
/// elements, missing required elements and malformed primitives fail.
pub fn validate(resources: &[serde_json::Value]) -> Result<(), String> {
    let python = venv_python()?;
    let input = serde_json::to_vec(resources).map_err(|e| format!("encoding input: {e}"))?;
    let mut child = Command::new(&python)
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", python.display()))?;
    // Write from another thread so a validator that prints a lot while we
    // are still writing cannot deadlock on full pipes.
    let mut stdin = child.stdin.take().ok_or("validator has no stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running the validator: {e}"))?;
    let written = writer
        .join()
        .map_err(|_| "writing to the validator panicked".to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return Ok(());
    }
    if let Err(e) = written {
        return Err(format!(
            "writing to the validator failed ({e}); it exited with {}:\n{stdout}{stderr}",
            out.status
        ));
    }
    Err(format!(
        "FHIR validation failed ({}):\n{}\n{}",
        out.status,
        only_failures(&stdout),
        stderr
    ))
}

/// Keeps the failing resources and the summary out of a long report.
fn only_failures(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| !l.starts_with("ok "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The venv's python, created on first use (once per process).
fn venv_python() -> Result<PathBuf, String> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    VENV.get_or_init(create_or_reuse_venv).clone()
}

fn create_or_reuse_venv() -> Result<PathBuf, String> {
    let version = match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let mut v = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if v.is_empty() {
                v = String::from_utf8_lossy(&o.stderr).trim().to_string();
            }
            v
        }
        // Not installed (or a shim without a python behind it).
        _ => return Err(SKIPPED_NO_PYTHON.to_string()),
    };

    let dir = install_dir("fhir-venv", &format!("{REQUIREMENTS}\n{version}"));
    let python = venv_bin(&dir);
    install_once(
        &dir,
        &python,
        &format!("fhir_validator: the validator venv ({version})"),
        build_venv,
    )
}

fn build_venv(tmp: &Path) -> Result<(), String> {
    run(
        Command::new("python3").arg("-m").arg("venv").arg(tmp),
        "python3 -m venv (on Debian/Ubuntu: apt-get install python3-venv)",
    )?;
    let py = venv_bin(tmp);
    let req = tmp.join("requirements.txt");
    std::fs::write(&req, REQUIREMENTS).map_err(|e| format!("writing {}: {e}", req.display()))?;
    run(
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
            ])
            .arg(&req),
        "pip install -r fhir-validator/requirements.txt",
    )?;
    run(
        Command::new(&py).args(["-c", "import fhir.resources, pydantic"]),
        "importing fhir.resources in the new venv",
    )?;
    let marker = tmp.join(READY_MARKER);
    std::fs::write(&marker, REQUIREMENTS).map_err(|e| format!("writing {}: {e}", marker.display()))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    crate::cache::run(cmd, what).map(drop)
}

fn venv_bin(dir: &Path) -> PathBuf {
    if cfg!(windows) {
        dir.join("Scripts").join("python.exe")
    } else {
        dir.join("bin").join("python")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_is_recognised() {
        assert!(is_skip(SKIPPED_NO_PYTHON));
        assert!(!is_skip("FHIR validation failed"));
    }
}
