//! `knutepunkt compact` (part of the binary, not the library): starts the
//! running hub's compaction through its admin API, shows which part of the
//! store it is on, and prints what each part went from and to.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

use crate::admin_call::call;

/// How often the command asks how far the compaction is.
const POLL: Duration = Duration::from_millis(500);

pub async fn compact(admin: &str, token: Option<&str>) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = admin.trim_end_matches('/');
    let url = format!("{base}/admin/compact");
    call(http.post(&url), token, base).await?;
    let started = Instant::now();
    let mut shown = String::new();
    loop {
        let st = call(http.get(&url), token, base).await?;
        match st["state"].as_str() {
            Some("running") => {
                let line = format!(
                    "compacting {} ({} of {})",
                    st["part"].as_str().unwrap_or(""),
                    st["part_number"],
                    st["parts"]
                );
                if line != shown {
                    eprintln!("{line}, {:.0} s", started.elapsed().as_secs_f64());
                    shown = line;
                }
                tokio::time::sleep(POLL).await;
            }
            Some("done") => return report(&st),
            Some("failed") => bail!(
                "the compaction failed: {}",
                st["error"].as_str().unwrap_or("no reason given")
            ),
            _ => bail!("the admin API answered an unknown state: {st}"),
        }
    }
}

fn mib(v: &Value) -> f64 {
    v.as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

/// The table of parts, the totals, and any note or skipped part.
fn report(st: &Value) -> anyhow::Result<()> {
    if let Some(note) = st["note"].as_str() {
        println!("nothing to compact: {note}");
        return Ok(());
    }
    println!("{:<10} {:>12} {:>12}", "part", "before MiB", "after MiB");
    for p in st["parts"].as_array().into_iter().flatten() {
        println!(
            "{:<10} {:>12.1} {:>12.1}{}",
            p["name"].as_str().unwrap_or(""),
            mib(&p["bytes_before"]),
            mib(&p["bytes_after"]),
            p["skipped"]
                .as_str()
                .map(|s| format!("  skipped: {s}"))
                .unwrap_or_default()
        );
    }
    println!(
        "{:<10} {:>12.1} {:>12.1}",
        "total",
        mib(&st["bytes_before"]),
        mib(&st["bytes_after"])
    );
    Ok(())
}
