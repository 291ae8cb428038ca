//! The delivery bench's own pull client: an EPJ that drains its pull
//! destination with `GET …/$pending?_count=N` and then `POST …/$confirm` of
//! everything it got (`journaled`), one request at a time, with an OAuth2
//! bearer token (`private_key_jwt`, renewed every 2 minutes).
//!
//! Why it exists: issue 8's pull target is what an EPJ gets with exactly
//! this loop, so the bench measures the loop, not the store's take alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use knutepunkt::sim::OSLO;
use serde_json::{Value, json};

use crate::hubenv::{EPJ_PULL, HubProcess};

/// What a pull client did.
#[derive(Debug, Default, Clone)]
pub struct PullStats {
    pub items: u64,
    pub requests: u64,
    pub secs: f64,
    pub pending_secs: f64,
    pub confirm_secs: f64,
}

impl PullStats {
    pub fn per_sec(&self) -> f64 {
        self.items as f64 / self.secs.max(1e-9)
    }
}

pub struct PullClient {
    web: reqwest::Client,
    origin: String,
    certs: std::path::PathBuf,
    token: String,
    token_at: Instant,
    count: u32,
}

impl PullClient {
    /// A client for Oslo's pull destination, token fetched before timing.
    pub async fn new(hub: &HubProcess, count: u32) -> Result<PullClient> {
        let origin = hub.origin();
        let token = crate::token::request(&hub.web, &hub.certs, &origin, EPJ_PULL).await?;
        Ok(PullClient {
            web: hub.web.clone(),
            origin,
            certs: hub.certs.clone(),
            token,
            token_at: Instant::now(),
            count,
        })
    }

    fn url(&self, op: &str) -> String {
        format!("{}/fhir/r4/{OSLO}/{op}", self.origin)
    }

    /// One `$pending` + `$confirm`; returns how many items it confirmed and
    /// the time spent in each call.
    pub async fn round(&mut self, stats: &mut PullStats) -> Result<u64> {
        if self.token_at.elapsed() > Duration::from_secs(120) {
            self.token =
                crate::token::request(&self.web, &self.certs, &self.origin, EPJ_PULL).await?;
            self.token_at = Instant::now();
        }
        let t = Instant::now();
        let r = self
            .web
            .get(self.url("$pending"))
            .query(&[("_count", self.count.to_string())])
            .bearer_auth(&self.token)
            .send()
            .await
            .context("GET $pending")?;
        let status = r.status();
        let body = r.bytes().await.context("reading $pending")?;
        if !status.is_success() {
            bail!(
                "$pending answered HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let bundle: Value = serde_json::from_slice(&body).context("$pending is not JSON")?;
        stats.pending_secs += t.elapsed().as_secs_f64();
        stats.requests += 1;
        let refs: Vec<String> = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let r = &e["resource"];
                Some(format!(
                    "{}/{}",
                    r["resourceType"].as_str()?,
                    r["id"].as_str()?
                ))
            })
            .collect();
        if refs.is_empty() {
            return Ok(0);
        }
        let params: Vec<Value> = refs
            .iter()
            .map(|r| {
                json!({"name": "confirmation", "part": [
                    {"name": "resource", "valueReference": {"reference": r}},
                    {"name": "outcome", "valueCode": "journaled"},
                ]})
            })
            .collect();
        let t = Instant::now();
        let r = self
            .web
            .post(self.url("$confirm"))
            .bearer_auth(&self.token)
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
            .send()
            .await
            .context("POST $confirm")?;
        let status = r.status();
        let body = r.bytes().await.context("reading $confirm's answer")?;
        if !status.is_success() {
            bail!(
                "$confirm answered HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        stats.confirm_secs += t.elapsed().as_secs_f64();
        stats.requests += 1;
        stats.items += refs.len() as u64;
        Ok(refs.len() as u64)
    }
}

/// Drains the pull destination until `$pending` comes back empty, with a
/// progress line a second.
pub async fn drain(hub: &HubProcess, count: u32, timeout: Duration) -> Result<PullStats> {
    let mut c = PullClient::new(hub, count).await?;
    let mut stats = PullStats::default();
    let start = Instant::now();
    let (mut last_print, mut last_n) = (Instant::now(), 0u64);
    while c.round(&mut stats).await? > 0 {
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "  pull: {} items confirmed ({}/s)",
                stats.items,
                stats.items - last_n
            );
            (last_print, last_n) = (Instant::now(), stats.items);
        }
        if start.elapsed() > timeout {
            bail!(
                "pull drain: still items after {:.0} s",
                timeout.as_secs_f64()
            );
        }
    }
    stats.secs = start.elapsed().as_secs_f64();
    Ok(stats)
}

/// Pulls alongside a load until `confirmed` reaches `target` (which the
/// caller raises from `u64::MAX` to the real count once the load is done),
/// or `timeout`. Empty answers wait 100 ms.
pub async fn follow(
    mut c: PullClient,
    confirmed: Arc<AtomicU64>,
    target: Arc<AtomicU64>,
    timeout: Duration,
) -> Result<PullStats> {
    let mut stats = PullStats::default();
    let start = Instant::now();
    while confirmed.load(Ordering::Relaxed) < target.load(Ordering::Relaxed) {
        let n = c.round(&mut stats).await?;
        confirmed.fetch_add(n, Ordering::Relaxed);
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if start.elapsed() > timeout {
            bail!(
                "pull: {} items confirmed after {:.0} s, fewer than expected",
                confirmed.load(Ordering::Relaxed),
                timeout.as_secs_f64()
            );
        }
    }
    stats.secs = start.elapsed().as_secs_f64();
    Ok(stats)
}
