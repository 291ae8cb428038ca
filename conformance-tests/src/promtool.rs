//! `promtool` for the alert-rule tests: from `PATH`, else from Debian's
//! `prometheus` package, fetched with `apt-get download` (no root needed)
//! and unpacked with `dpkg-deb -x` into `~/.cache/knutepunkt/promtool`,
//! once per machine. Nothing is installed system-wide.
//!
//! `Err` says why there is none (the caller skips, or fails under CI).

use std::path::PathBuf;
use std::process::Command;

fn works(p: &std::path::Path) -> bool {
    Command::new(p)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn cache() -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/knutepunkt/promtool"))
}

/// The path of a working `promtool`.
pub fn promtool() -> Result<PathBuf, String> {
    let on_path = PathBuf::from("promtool");
    if works(&on_path) {
        return Ok(on_path);
    }
    let dir = cache()?;
    let cached = dir.join("usr/bin/promtool");
    if works(&cached) {
        return Ok(cached);
    }
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let download = Command::new("apt-get")
        .args(["download", "prometheus"])
        .current_dir(scratch.path())
        .output()
        .map_err(|e| format!("promtool is not on PATH and apt-get cannot run ({e})"))?;
    if !download.status.success() {
        return Err(format!(
            "promtool is not on PATH and `apt-get download prometheus` failed: {}",
            String::from_utf8_lossy(&download.stderr).trim()
        ));
    }
    let deb = std::fs::read_dir(scratch.path())
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download prometheus left no .deb")?;
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let unpack = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&dir)
        .output()
        .map_err(|e| format!("dpkg-deb cannot run ({e})"))?;
    if !unpack.status.success() || !works(&cached) {
        return Err(format!(
            "unpacking {} gave no working promtool: {}",
            deb.display(),
            String::from_utf8_lossy(&unpack.stderr).trim()
        ));
    }
    // Only promtool is used: drop the server and the rest of the package.
    for extra in ["usr/bin/prometheus", "usr/share", "etc", "lib", "var"] {
        let p = dir.join(extra);
        let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
    }
    Ok(cached)
}
