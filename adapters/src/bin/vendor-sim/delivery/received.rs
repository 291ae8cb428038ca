//! Watching the adapter: its `received.log` read as it grows, and its
//! count of created resources.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::hubenv::EpjProcess;

/// `received.log`, read incrementally: `(Type/id, received µs since epoch)`.
pub(super) struct ReceivedLog {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl ReceivedLog {
    /// Starts reading at the current end of the file.
    pub(super) fn at_end(out: &Path) -> ReceivedLog {
        let path = out.join("received.log");
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        ReceivedLog {
            path,
            offset,
            partial: Vec::new(),
        }
    }

    /// Lines appended since the last call.
    pub(super) fn read_new(&mut self) -> Result<Vec<(String, i64)>> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        f.seek(SeekFrom::Start(self.offset))
            .with_context(|| format!("seeking in {}", self.path.display()))?;
        let mut buf = std::mem::take(&mut self.partial);
        let before = buf.len();
        f.read_to_end(&mut buf)
            .with_context(|| format!("reading {}", self.path.display()))?;
        self.offset += (buf.len() - before) as u64;
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.partial = buf.split_off(complete);
        let mut out = Vec::new();
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            let at = v["received"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_micros());
            if let (Some(t), Some(ty), Some(id)) = (at, v["type"].as_str(), v["id"].as_str()) {
                out.push((format!("{ty}/{id}"), t));
            }
        }
        Ok(out)
    }
}

/// Waits until the adapter has created `target` resources in total, with a
/// progress line a second; returns (time of the first growth seen, time
/// done) or an error on timeout.
pub(crate) async fn wait_created(
    epj: &EpjProcess,
    what: &str,
    from: u64,
    target: u64,
    timeout: Duration,
) -> Result<(Option<Instant>, Instant)> {
    let start = Instant::now();
    let mut first = None;
    let mut last_print = Instant::now();
    let mut last_n = from;
    loop {
        let n = epj.stats().await?.created;
        if n > from && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= target {
            return Ok((first, Instant::now()));
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "  {what}: {}/{} at the adapter ({}/s)",
                n - from,
                target - from,
                n.saturating_sub(last_n)
            );
            last_n = n;
            last_print = Instant::now();
        }
        if start.elapsed() > timeout {
            bail!(
                "{what}: only {} of {} resources reached the adapter within {:.0} s",
                n - from,
                target - from,
                timeout.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Follows `received.log` until every resource in `wanted` is there;
/// returns their receive times and how many other resources arrived
/// before each (in arrival order since the reader's position).
pub(super) async fn wait_for(
    log: &mut ReceivedLog,
    wanted: &[&str],
    timeout: Duration,
) -> Result<HashMap<String, (i64, u64)>> {
    let start = Instant::now();
    let mut found = HashMap::new();
    let mut seen = 0u64;
    let mut last_print = Instant::now();
    while found.len() < wanted.len() {
        for (res, at) in log.read_new()? {
            if wanted.contains(&res.as_str()) {
                found.insert(res, (at, seen));
            }
            seen += 1;
        }
        if start.elapsed() > timeout {
            bail!(
                "{} of {} alarms not at the adapter after {:.0} s",
                wanted.len() - found.len(),
                wanted.len(),
                timeout.as_secs_f64()
            );
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "  waiting for the alarms: {}/{} found, {seen} resources arrived",
                found.len(),
                wanted.len()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(found)
}
