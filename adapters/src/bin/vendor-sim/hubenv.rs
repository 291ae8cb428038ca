//! The processes a bench runs against, set up as in production: the real
//! `knutepunkt` binary with TLS, vendor mutual TLS, an EPJ OAuth client and
//! (for delivery) a push destination, plus the real `epj-adapter` over
//! HTTPS.
//!
//! Why it exists: the hub refuses to start without TLS unless told
//! `--insecure-dev`, and a benchmark of that insecure hub would measure a
//! setup nobody runs. Everything here is throw-away: a `knutepunkt
//! dev-certs` PKI in the bench's temporary directory, free loopback ports,
//! children killed if the bench stops early.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use knutepunkt::sim::{BERGEN, OSLO};
use tokio::process::{Child, Command};

use crate::addr;

mod epj;

pub use epj::EpjProcess;
use knutepunkt_adapters::conn::ConnArgs;

/// The vendor the bench submits as (a dev-certs client certificate).
pub const VENDOR: &str = "bench-vendor";
/// EPJ clients (dev-certs key pairs) that search Oslo's and Bergen's data.
pub const EPJ_OSLO: &str = "bench-oslo-epj";
pub const EPJ_BERGEN: &str = "bench-bergen-epj";
/// The EPJ client that drains Oslo's pull destination (`$pending`/`$confirm`).
pub const EPJ_PULL: &str = "bench-oslo-pull";
/// Oslo's pull destination in the delivery bench.
pub const PULL_DEST: &str = "bench-pull";

/// A binary next to this executable (`knutepunkt`, `epj-adapter`), or `given`.
pub fn sibling_bin(given: Option<PathBuf>, name: &str) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .context("finding this executable")?
            .with_file_name(name),
    };
    if !path.is_file() {
        bail!(
            "{} not found; build it (cargo build --release -p knutepunkt -p knutepunkt-adapters --bins) or pass its path",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `knutepunkt dev-certs --out dir` for the bench's vendor and EPJ clients.
pub async fn make_certs(hub_bin: &Path, dir: &Path) -> Result<()> {
    let out = Command::new(hub_bin)
        .arg("dev-certs")
        .arg("--out")
        .arg(dir)
        .args(["--vendor", VENDOR, "--epj-client", EPJ_OSLO])
        .args(["--epj-client", EPJ_BERGEN, "--epj-client", EPJ_PULL])
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} dev-certs", hub_bin.display()))?;
    if !out.status.success() {
        bail!(
            "knutepunkt dev-certs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let path = dir.join(ADMIN_TOKEN_FILE);
    std::fs::write(&path, token).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A push destination for Oslo, as the delivery bench configures it.
#[derive(Debug, Clone)]
pub struct PushDest {
    /// `https://ADDR/fhir` of the EPJ adapter.
    pub url: String,
    /// The adapter's self-signed certificate, trusted as `ca_file`.
    pub ca_file: PathBuf,
    pub max_batch: usize,
    pub max_rate: u32,
    /// Also a pull destination for Oslo, drained by [`EPJ_PULL`].
    pub pull: bool,
}

/// The hub's config: TLS, the vendor with a generous agreement, the EPJ
/// clients, and with `push` Oslo's push destination.
/// The admin token's file in the certificate directory (written by
/// [`make_certs`]); the bench reads `/metrics` with it.
const ADMIN_TOKEN_FILE: &str = "bench-admin.token";

pub fn hub_config(certs: &Path, http: SocketAddr, push: Option<&PushDest>) -> String {
    let c = certs.display();
    let scopes = r#"["system/Observation.rs", "system/Communication.rs"]"#;
    let mut s = format!(
        r#"# Written by vendor-sim bench (throw-away dev PKI).
[tls]
cert_file = "{c}/server.pem"
key_file = "{c}/server.key"
vendor_ca_file = "{c}/ca.pem"

[auth]
token_url = "https://{http}/oauth/token"

[admin]
token_file = "{c}/{ADMIN_TOKEN_FILE}"

[[auth.clients]]
id = "{EPJ_OSLO}"
municipality = "{OSLO}"
scopes = {scopes}
jwk_file = "{c}/epj-{EPJ_OSLO}.jwk.json"

[[auth.clients]]
id = "{EPJ_BERGEN}"
municipality = "{BERGEN}"
scopes = {scopes}
jwk_file = "{c}/epj-{EPJ_BERGEN}.jwk.json"

# Generous limits: the bench measures the hub, not the agreement.
[[vendors]]
id = "{VENDOR}"
municipalities = ["{OSLO}", "{BERGEN}"]
max_streams = 1024
rate_per_sec = 1000000
burst = 2000000
"#
    );
    if let Some(p) = push {
        s.push_str(&format!(
            r#"
[[municipalities]]
orgnr = "{OSLO}"
name = "Oslo kommune"

# Short retry and breaker times so the drain starts within about a second
# of the adapter coming back; large batches and rate for the drain.
[[municipalities.destinations]]
name = "bench-epj"
kind = "push"
url = "{url}"
ca_file = "{ca}"
max_batch = {batch}
max_rate = {rate}
timeout_ms = 30000
backoff_base_ms = 50
backoff_cap_ms = 500
breaker_failures = 5
breaker_open_secs = 1

{pull}
[[municipalities]]
orgnr = "{BERGEN}"
name = "Bergen kommune"
"#,
            pull = if p.pull {
                pull_config(certs)
            } else {
                String::new()
            },
            url = p.url,
            ca = p.ca_file.display(),
            batch = p.max_batch,
            rate = p.max_rate,
        ));
    }
    s
}

/// Oslo's pull destination and the EPJ client that drains it. A long lease:
/// the bench's client confirms everything it takes, so nothing is offered
/// twice while it works.
fn pull_config(certs: &Path) -> String {
    format!(
        r#"
[[municipalities.destinations]]
name = "{PULL_DEST}"
kind = "pull"
lease_secs = 600

[[auth.clients]]
id = "{EPJ_PULL}"
municipality = "{OSLO}"
scopes = ["system/pending.rs"]
jwk_file = "{c}/epj-{EPJ_PULL}.jwk.json"
consumer = "{PULL_DEST}"
"#,
        c = certs.display()
    )
}

/// `du` of a file tree in bytes (allocated blocks, as `du -s` counts).
pub fn du_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return own;
    };
    own + entries.flatten().map(|e| du_bytes(&e.path())).sum::<u64>()
}

/// "`what`: 1.23 0.98 0.77" from /proc/loadavg (as `uptime` shows it): other
/// work on this machine changes every bare figure, so each run prints it.
pub fn loadavg_line(what: &str) -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let three: Vec<&str> = l.split_whitespace().take(3).collect();
    format!("{what} (1/5/15 min): {}", three.join(" "))
}

/// The hub as a child process; killed if dropped while still running.
pub struct HubProcess {
    child: Child,
    pub pid: u32,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The admin listener (plain HTTP on loopback; `/metrics` is here).
    pub admin: SocketAddr,
    pub certs: PathBuf,
    pub log: PathBuf,
    /// HTTPS client trusting the dev CA.
    pub web: reqwest::Client,
}

impl HubProcess {
    /// Writes the config to `work/hub.toml` and starts `knutepunkt serve`
    /// with its data in `work/hub`, its log in `work/hub.log`.
    pub async fn start(
        bin: &Path,
        work: &Path,
        certs: &Path,
        push: Option<&PushDest>,
    ) -> Result<HubProcess> {
        Self::start_with_env(bin, work, certs, push, &[]).await
    }

    /// As [`HubProcess::start`], with `KNUTEPUNKT_*` settings in the
    /// environment on top of the config file (e.g. `[store]` for the
    /// PostgreSQL backend).
    pub async fn start_with_env(
        bin: &Path,
        work: &Path,
        certs: &Path,
        push: Option<&PushDest>,
        env: &[(String, String)],
    ) -> Result<HubProcess> {
        Self::start_full(bin, work, certs, push, env, None).await
    }

    /// As [`HubProcess::start`], with the hub run under `wrapper` (a program
    /// and its arguments, e.g. `valgrind --tool=callgrind ...`): the hub's
    /// command line follows the wrapper's. A wrapped hub starts slowly, so it
    /// gets 10 minutes to become ready instead of 30 s.
    pub async fn start_wrapped(
        bin: &Path,
        work: &Path,
        certs: &Path,
        push: Option<&PushDest>,
        wrapper: &[std::ffi::OsString],
    ) -> Result<HubProcess> {
        Self::start_full(bin, work, certs, push, &[], Some(wrapper)).await
    }

    async fn start_full(
        bin: &Path,
        work: &Path,
        certs: &Path,
        push: Option<&PushDest>,
        env: &[(String, String)],
        wrapper: Option<&[std::ffi::OsString]>,
    ) -> Result<HubProcess> {
        let grpc = SocketAddr::from(([127, 0, 0, 1], addr::free_port()?));
        let http = SocketAddr::from(([127, 0, 0, 1], addr::free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], addr::free_port()?));
        let cfg = work.join("hub.toml");
        std::fs::write(&cfg, hub_config(certs, http, push))
            .with_context(|| format!("writing {}", cfg.display()))?;
        let log = work.join("hub.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("log file handle")?;
        let (mut cmd, ready_within) = hub_command(bin, wrapper);
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(work.join("hub"))
            .arg("--grpc-addr")
            .arg(grpc.to_string())
            .arg("--http-addr")
            .arg(http.to_string())
            .arg("--admin-addr")
            .arg(admin.to_string())
            .env("RUST_LOG", "warn")
            .env_remove("KNUTEPUNKT_CONFIG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the hub exited at once")?;
        let web = crate::token::https_client(&certs.join("ca.pem"))?;
        wait_ready(&mut child, &web, http, &log, ready_within).await?;
        Ok(HubProcess {
            child,
            pid,
            grpc,
            http,
            admin,
            certs: certs.to_path_buf(),
            log,
            web,
        })
    }

    /// How a load generator reaches this hub: mutual TLS as the bench vendor.
    pub fn conn(&self) -> ConnArgs {
        ConnArgs::dev_certs(&self.certs, VENDOR)
    }

    /// `https://ADDR` of the FHIR API.
    pub fn origin(&self) -> String {
        format!("https://{}", self.http)
    }

    /// VmRSS and VmHWM in KiB from /proc.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        proc_memory_kib(self.pid)
    }

    /// What the store's block cache holds, bytes (the hub's
    /// `knutepunkt_store_cache_bytes` gauge); `None` if it cannot be read.
    pub async fn store_cache_bytes(&self) -> Option<u64> {
        let token = std::fs::read_to_string(self.certs.join(ADMIN_TOKEN_FILE)).ok()?;
        let text = reqwest::Client::new()
            .get(format!("http://{}/metrics", self.admin))
            .bearer_auth(token.trim())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("knutepunkt_store_cache_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    /// SIGTERM, then up to 20 s for a graceful stop, then SIGKILL.
    pub async fn stop(self) -> Result<String> {
        self.stop_within(Duration::from_secs(20)).await
    }

    /// SIGTERM, then up to `grace` for a graceful stop, then SIGKILL (a hub
    /// under valgrind needs minutes to stop and write its profile).
    pub async fn stop_within(mut self, grace: Duration) -> Result<String> {
        let what = format!("hub (log {})", self.log.display());
        stop_child(&mut self.child, self.pid, &what, grace).await
    }
}

/// VmRSS and VmHWM of `pid` in KiB.
pub fn proc_memory_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

async fn stop_child(child: &mut Child, pid: u32, what: &str, grace: Duration) -> Result<String> {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => Ok(format!("{what} stopped on SIGTERM ({status})")),
        Ok(Err(e)) => Err(e).with_context(|| format!("waiting for the {what}")),
        Err(_) => {
            child
                .kill()
                .await
                .with_context(|| format!("killing the {what}"))?;
            Ok(format!(
                "{what} did not stop within {} s of SIGTERM; killed",
                grace.as_secs()
            ))
        }
    }
}

/// The command that runs the hub (under `wrapper`, if any) and how long it
/// gets to become ready.
fn hub_command(bin: &Path, wrapper: Option<&[std::ffi::OsString]>) -> (Command, Duration) {
    match wrapper {
        Some([program, args @ ..]) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            (c, Duration::from_secs(600))
        }
        _ => (Command::new(bin), Duration::from_secs(30)),
    }
}

/// Polls the hub's `/readyz` on `http` until it answers, the hub exits, or
/// `within` has passed (the last two with the tail of its `log`).
async fn wait_ready(
    child: &mut Child,
    web: &reqwest::Client,
    http: SocketAddr,
    log: &Path,
    within: Duration,
) -> Result<()> {
    let ready = format!("https://{http}/readyz");
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().context("checking the hub process")? {
            bail!(
                "the hub exited during start-up ({status}); its log:\n{}",
                tail(log, 40)
            );
        }
        if let Ok(r) = web.get(&ready).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "the hub was not ready after {} s; its log:\n{}",
                within.as_secs(),
                tail(log, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
