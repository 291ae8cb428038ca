//! Tools the tests install for themselves, once, under
//! `$HOME/.cache/knutepunkt` (buf from npm, the FHIR validator's venv):
//! each installer works in a private temporary directory and renames it
//! into place, so parallel tests and processes never see a half-made one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Written last into a finished install; a directory without it is not used.
pub const READY_MARKER: &str = ".knutepunkt-ready";

/// `$HOME/.cache/knutepunkt` (a temp directory without a home).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("knutepunkt"),
        None => std::env::temp_dir().join("knutepunkt-cache"),
    }
}

/// `<cache>/<name>-<hash of key>`: a new directory whenever what is
/// installed (`key`: pinned versions, lock files) changes.
pub fn install_dir(name: &str, key: &str) -> PathBuf {
    cache_dir().join(format!("{name}-{:016x}", fnv1a(key.as_bytes())))
}

/// `exe` once `dir` is installed; otherwise `build` makes the install in a
/// temporary directory (given to it; it writes [`READY_MARKER`] last),
/// which then becomes `dir`. `what` names it in the progress line.
pub fn install_once(
    dir: &Path,
    exe: &Path,
    what: &str,
    build: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    if dir.join(READY_MARKER).exists() && exe.exists() {
        return Ok(exe.to_path_buf());
    }
    let base = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = base.join(format!(
        "{}-tmp-{}-{nonce}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    eprintln!("{what}: installing into {} (once)", dir.display());
    if let Err(e) = build(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(exe.to_path_buf()),
        Err(e) => {
            // Someone else finished first (or left a broken directory).
            let _ = std::fs::remove_dir_all(&tmp);
            if dir.join(READY_MARKER).exists() && exe.exists() {
                Ok(exe.to_path_buf())
            } else {
                Err(format!(
                    "could not move the new install into {} ({e}); remove that directory and retry",
                    dir.display()
                ))
            }
        }
    }
}

/// Runs a command; its output, or on failure an error that carries the
/// end of that output (where npm and pip say what went wrong).
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

/// FNV-1a, 64 bit: a hash that is stable across Rust versions and runs
/// (std's `DefaultHasher` promises neither), for directory names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The install directories' names must not change between releases
    /// (a new name means installing again).
    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
