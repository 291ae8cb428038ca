//! `knutepunkt backup` and `knutepunkt restore` (part of the binary, not
//! the library): the admin API's client for an online backup, the offline
//! backup of a stopped hub's data directory, and restore.
//!
//! A backup is written to `FILE.tmp` (mode 0600: it holds national ids in
//! clear), synced, read back through once to check it, and only then
//! renamed to `FILE`; so `FILE` is always a whole, checked backup.
//!
//! Progress: an online backup shows bytes as they arrive (the hub does not
//! know the record count before it has read the snapshot); the counts per
//! keyspace come from the check at the end. An offline backup and a
//! restore show bytes and records as they go.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use knutepunkt::backup::format::{Header, Summary, verify};
use knutepunkt::store::embedded::backup::{DATA_FILES, backup_offline, restore};

/// Prints bytes (and records, when known) to stderr at most every 500 ms.
struct Progress {
    last: Instant,
    started: Instant,
}

impl Progress {
    fn new() -> Progress {
        let now = Instant::now();
        Progress {
            last: now - Duration::from_secs(1),
            started: now,
        }
    }

    fn show(&mut self, verb: &str, bytes: u64, records: Option<u64>) {
        if self.last.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last = Instant::now();
        let recs = records
            .map(|r| format!(", {r} records"))
            .unwrap_or_default();
        eprint!(
            "\r  {verb} {:.1} MiB{recs} ({:.0} s)   ",
            bytes as f64 / (1024.0 * 1024.0),
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn tmp_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Creates (or truncates) `path` with mode 0600.
fn create_private(path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // An existing file keeps its mode under `mode()`; set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// `knutepunkt backup`: from the running hub's admin API, or (with
/// `data_dir`) from a stopped hub's data directory.
pub async fn backup(
    out: &Path,
    admin: &str,
    token: Option<&str>,
    data_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let tmp = tmp_path(out);
    let res = match data_dir {
        Some(dir) => {
            let (dir, tmp) = (dir.to_path_buf(), tmp.clone());
            tokio::task::spawn_blocking(move || offline(&dir, &tmp)).await?
        }
        None => download(admin, token, &tmp).await,
    };
    let checked = res.and_then(|()| {
        eprintln!("\r  checking {} …{:30}", tmp.display(), "");
        let f = File::open(&tmp).with_context(|| format!("cannot read {}", tmp.display()))?;
        verify(BufReader::new(f))
            .with_context(|| format!("the backup just written to {} is not valid", tmp.display()))
    });
    let (header, summary) = match checked {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    sync_parent(out)?;
    println!(
        "backup written to {} (mode 0600): {}",
        out.display(),
        describe(&header, &summary)
    );
    Ok(())
}

async fn download(admin: &str, token: Option<&str>, tmp: &Path) -> anyhow::Result<()> {
    let base = admin.trim_end_matches('/');
    let mut req = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?
        .get(format!("{base}/admin/backup"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut resp = req.send().await.with_context(|| {
        format!("cannot reach the admin API at {base}; is the hub running, and is --admin right? (for a stopped hub use --data-dir)")
    })?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        bail!(
            "the admin API refused the backup ({status}): {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    let mut file = BufWriter::new(create_private(tmp)?);
    let mut bytes = 0u64;
    let mut progress = Progress::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .context("the backup stream broke off; see the hub's log, then run the backup again")?
    {
        file.write_all(&chunk)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        bytes += chunk.len() as u64;
        progress.show("received", bytes, None);
    }
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    Ok(())
}

fn offline(data_dir: &Path, tmp: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for name in DATA_FILES {
        match std::fs::read(data_dir.join(name)) {
            Ok(b) => files.push((name.to_string(), b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("cannot read {}: {e}", data_dir.join(name).display()),
        }
    }
    let mut file = BufWriter::new(create_private(tmp)?);
    let mut progress = Progress::new();
    backup_offline(&data_dir.join("store"), &files, &mut file, &mut |b, r| {
        progress.show("written", b, Some(r))
    })?;
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    Ok(())
}

/// `knutepunkt restore`.
pub fn run_restore(from: &Path, data_dir: &Path) -> anyhow::Result<()> {
    // Whatever the caller's umask, the restored store is private (0700/0600),
    // as the hub requires at start.
    knutepunkt::private_files::restrict_umask();
    let mut progress = Progress::new();
    eprintln!("checking {} …", from.display());
    let report = restore(from, data_dir, &mut |b, r| {
        progress.show("restored", b, Some(r))
    })
    .with_context(|| format!("restore of {} refused", from.display()))?;
    eprintln!();
    println!(
        "restored into {}: {}",
        data_dir.display(),
        describe(&report.header, &report.summary)
    );
    println!(
        "start the hub with data_dir = {} and the same destinations: each continues from its floor",
        data_dir.display()
    );
    Ok(())
}

fn describe(h: &Header, s: &Summary) -> String {
    let created = chrono::DateTime::from_timestamp_micros(h.created_us as i64)
        .map(knutepunkt::admin::rfc3339)
        .unwrap_or_default();
    let per: Vec<String> = s
        .per_keyspace
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    format!(
        "{} records ({}), {} file(s), {:.1} MiB; snapshot of {created}, store layout {}, knutepunkt {}",
        s.records,
        per.join(", "),
        s.files.len(),
        s.bytes as f64 / (1024.0 * 1024.0),
        h.layout,
        h.hub_version
    )
}

fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", parent.display()))
}
