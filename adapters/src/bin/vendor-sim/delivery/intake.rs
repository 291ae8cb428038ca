//! The intake baseline: the adapter alone, taking pre-built Bundles of the
//! hub's batch size over one connection; the ceiling a drain can reach.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::DeliveryArgs;
use crate::hubenv::EpjProcess;

pub(crate) struct Intake {
    pub(crate) events: u64,
    pub(crate) bundles: u64,
    pub(crate) secs: f64,
    pub(crate) failed: u64,
}

/// The adapter alone: resources the hub delivered, re-sent to a fresh
/// adapter as pre-built Bundles of max_batch, one request at a time (as the
/// hub's push worker sends).
pub(super) async fn intake_baseline(
    a: &DeliveryArgs,
    epj_bin: &Path,
    source: &EpjProcess,
    work: &Path,
) -> Result<Intake> {
    eprintln!(
        "bench-delivery: intake baseline, {} resources in Bundles of {}",
        a.intake_events, a.max_batch
    );
    let out = source.out.clone();
    let want = a.intake_events as usize;
    let batch = a.max_batch as usize;
    let bundles = tokio::task::spawn_blocking(move || prebuild(&out, want, batch))
        .await
        .context("reading resources")??;
    let dir = work.join("epj-intake");
    let epj = EpjProcess::start(epj_bin, &dir, "ok", a.epj_layout).await?;
    let events: u64 = bundles.iter().map(|(n, _)| *n).sum();
    let n_bundles = bundles.len() as u64;
    let mut failed = 0u64;
    let start = Instant::now();
    let mut last_print = Instant::now();
    for (i, (_, body)) in bundles.into_iter().enumerate() {
        if epj.post_bundle(body).await? != 200 {
            failed += 1;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("  intake: {i}/{n_bundles} Bundles");
            last_print = Instant::now();
        }
        if start.elapsed() > a.phase_timeout {
            bail!("intake baseline timed out");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let created = epj.stats().await?.created;
    eprintln!("bench-delivery: {}", epj.stop().await?);
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    if created != events {
        bail!("intake baseline: {created} of {events} resources created");
    }
    Ok(Intake {
        events,
        bundles: n_bundles,
        secs,
        failed,
    })
}

/// Up to `want` resources from `out` (resource files or Bundle NDJSON
/// files) as transaction Bundles of `batch` conditional creates: (entries,
/// JSON).
fn prebuild(out: &Path, want: usize, batch: usize) -> Result<Vec<(u64, String)>> {
    let mut entries = Vec::with_capacity(want);
    for e in std::fs::read_dir(out).with_context(|| format!("listing {}", out.display()))? {
        if entries.len() >= want {
            break;
        }
        let e = e.with_context(|| format!("listing {}", out.display()))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let ndjson = name.ends_with(".ndjson");
        if name.starts_with('.') || !(ndjson || name.ends_with(".json")) {
            continue;
        }
        let bytes = std::fs::read(e.path()).with_context(|| format!("reading {name}"))?;
        let resources: Vec<serde_json::Value> = if ndjson {
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(serde_json::from_slice)
                .collect::<Result<_, _>>()
                .with_context(|| format!("parsing {name}"))?
        } else {
            vec![serde_json::from_slice(&bytes).with_context(|| format!("parsing {name}"))?]
        };
        for v in resources.into_iter().take(want - entries.len()) {
            if let Some(entry) = conditional_create(v) {
                entries.push(entry);
            }
        }
    }
    Ok(entries
        .chunks(batch.max(1))
        .map(|c| {
            let b =
                serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": c});
            (c.len() as u64, b.to_string())
        })
        .collect())
}

/// A transaction entry that creates `v` unless its first identifier exists.
fn conditional_create(v: serde_json::Value) -> Option<serde_json::Value> {
    let ident = &v["identifier"][0];
    let (Some(ty), Some(sys), Some(val), Some(id)) = (
        v["resourceType"].as_str(),
        ident["system"].as_str(),
        ident["value"].as_str(),
        v["id"].as_str(),
    ) else {
        return None;
    };
    let cond = form_urlencoded::Serializer::new(String::new())
        .append_pair("identifier", &format!("{sys}|{val}"))
        .finish();
    let (ty, id) = (ty.to_string(), id.to_string());
    Some(serde_json::json!({
        "fullUrl": format!("urn:uuid:{id}"),
        "resource": v,
        "request": { "method": "POST", "url": ty, "ifNoneExist": cond },
    }))
}
