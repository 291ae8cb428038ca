//! Drives the real `knutepunkt` binary: builds it once, starts it on free
//! loopback ports with its own data directory, waits until it is ready,
//! turns an early exit into an error carrying its log, and can stop it
//! gracefully, `kill -9` it and start it again on the same data.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use knutepunkt::proto::v1 as pb;
use knutepunkt::proto::v1::vendor_ingest_client::VendorIngestClient;
use tonic::transport::Channel;

/// Path of a binary of this workspace, built once per test process with the
/// same profile as the tests (a nested `cargo build` is quick when fresh).
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "knutepunkt",
                "-p",
                "knutepunkt-adapters",
                "--bins",
            ]);
            if !cfg!(debug_assertions) {
                cmd.arg("--release");
            }
            let out = cmd
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cargo build failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            // tests live in <target>/<profile>/deps/; binaries one level up
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            exe.parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .ok_or_else(|| "cannot find the target directory".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

/// A free loopback port (bound, read and released; the hub binds it next).
pub fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// How to start a hub. `Default` = embedded defaults on free ports.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Extra environment variables, e.g. `KNUTEPUNKT_STORE__MIN_FREE_BYTES`.
    pub env: Vec<(String, String)>,
    /// Config file to pass with --config.
    pub config: Option<PathBuf>,
}

/// A running hub process.
pub struct Hub {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
    opts: HubOptions,
    /// Keeps the log directory alive as long as the hub.
    _logs: tempfile::TempDir,
}

impl Hub {
    /// Starts a hub on `data_dir` with free ports and waits until it is ready.
    pub async fn start(data_dir: &Path, opts: HubOptions) -> Result<Hub> {
        let logs = tempfile::tempdir()?;
        let mut hub = Hub {
            child: None,
            data_dir: data_dir.to_path_buf(),
            grpc: free_port()?,
            http: free_port()?,
            admin: free_port()?,
            log: logs.path().join("hub.log"),
            opts,
            _logs: logs,
        };
        hub.spawn().await?;
        Ok(hub)
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(binary("knutepunkt")?);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-addr")
            .arg(self.grpc.to_string())
            .arg("--http-addr")
            .arg(self.http.to_string())
            .arg("--admin-addr")
            .arg(self.admin.to_string())
            .arg("--insecure-dev");
        if let Some(c) = &self.opts.config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("RUST_LOG", "info")
            .env_remove("KNUTEPUNKT_CONFIG")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("cannot start knutepunkt")?);
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Polls /readyz until 200; an exit of the process is an error with its log.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = self.url("/readyz");
        let http = reqwest::Client::new();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("knutepunkt exited early ({status}); log:\n{}", self.logs());
            }
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(1)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "knutepunkt not ready after {timeout:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// `http://…/fhir/r4/{orgnr}`
    pub fn fhir_base(&self, orgnr: &str) -> String {
        self.url(&format!("/fhir/r4/{orgnr}"))
    }

    pub async fn client(&self) -> Result<VendorIngestClient<Channel>> {
        let ch = Channel::from_shared(format!("http://{}", self.grpc))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(VendorIngestClient::new(ch))
    }

    /// Everything the hub wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub async fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("hub is not running");
        };
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()?;
        if !status.success() {
            bail!("could not signal the hub");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!(
                    "hub did not stop within 30 s of SIGTERM; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the hub again on the same data directory and ports.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop().await?;
        }
        self.spawn().await
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `epj-adapter` (the EPJ test double in `adapters/`), over HTTPS
/// with a self-signed certificate the hub is told to trust.
pub struct EpjAdapter {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub out: PathBuf,
    pub cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl EpjAdapter {
    pub async fn start(mode: &str) -> Result<EpjAdapter> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("out");
        let certs = dir.path().join("certs");
        let mut child = Command::new(binary("epj-adapter")?)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--out")
            .arg(&out)
            .arg("--self-signed")
            .arg(&certs)
            .arg("--mode")
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start epj-adapter")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut l).map(|_| l)
        })
        .await??;
        let addr = line
            .trim()
            .strip_prefix("listening on https://")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected first line from epj-adapter: {line:?}"))?;
        Ok(EpjAdapter {
            child: Some(child),
            addr,
            out,
            cert: certs.join("cert.pem"),
            _dir: dir,
        })
    }

    pub fn fhir_url(&self) -> String {
        format!("https://{}/fhir", self.addr)
    }

    fn client(&self) -> Result<reqwest::Client> {
        let pem = std::fs::read(&self.cert)?;
        Ok(reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem)?])
            .timeout(Duration::from_secs(10))
            .build()?)
    }

    /// Switches failure mode at run time, e.g. `{"mode":"down"}`.
    pub async fn set_mode(&self, mode: serde_json::Value) -> Result<()> {
        let r = self
            .client()?
            .post(format!("https://{}/_admin/mode", self.addr))
            .json(&mode)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "epj-adapter refused mode {mode}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    pub async fn stats(&self) -> Result<serde_json::Value> {
        Ok(self
            .client()?
            .get(format!("https://{}/_admin/stats", self.addr))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Resources created so far, in arrival order: (type, id) from received.log.
    pub fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.out.join("received.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `n` resources were created, or fails after `timeout`.
    pub async fn wait_created(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received().len();
            if got >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("epj-adapter has {got} of {n} resources after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EpjAdapter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Builders for valid events; tests change one field to break a rule.
pub mod events {
    use super::pb;
    use knutepunkt::domain::synthetic;

    pub const OSLO: &str = "958935420";
    pub const BERGEN: &str = "964338531";

    pub fn now() -> prost_types::Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        prost_types::Timestamp {
            seconds: d.as_secs() as i64,
            nanos: 0,
        }
    }

    fn base(event_id: &str, org: &str, resident: u32, payload: pb::event::Payload) -> pb::Event {
        pb::Event {
            event_id: event_id.into(),
            municipality: org.into(),
            patient: Some(pb::PersonId {
                system: pb::IdSystem::Fnr as i32,
                value: synthetic::fnr(resident),
            }),
            device: Some(pb::Device {
                id: format!("dev-{resident}"),
                kind: "sensor".into(),
            }),
            occurred_at: Some(now()),
            payload: Some(payload),
        }
    }

    pub fn quantity(
        event_id: &str,
        org: &str,
        resident: u32,
        kind: pb::MeasurementKind,
        value: f64,
        unit: &str,
    ) -> pb::Event {
        base(
            event_id,
            org,
            resident,
            pb::event::Payload::Measurement(pb::Measurement {
                kind: kind as i32,
                reading: Some(pb::measurement::Reading::Quantity(pb::Quantity {
                    value,
                    unit: unit.into(),
                })),
            }),
        )
    }

    pub fn heart_rate(event_id: &str, org: &str, resident: u32) -> pb::Event {
        quantity(
            event_id,
            org,
            resident,
            pb::MeasurementKind::HeartRate,
            72.0,
            "/min",
        )
    }

    pub fn blood_pressure(
        event_id: &str,
        org: &str,
        resident: u32,
        sys: f64,
        dia: f64,
    ) -> pb::Event {
        base(
            event_id,
            org,
            resident,
            pb::event::Payload::Measurement(pb::Measurement {
                kind: pb::MeasurementKind::BloodPressure as i32,
                reading: Some(pb::measurement::Reading::BloodPressure(pb::BloodPressure {
                    systolic: sys,
                    diastolic: dia,
                })),
            }),
        )
    }

    pub fn alarm(
        event_id: &str,
        org: &str,
        resident: u32,
        code: &str,
        severity: pb::Severity,
    ) -> pb::Event {
        base(
            event_id,
            org,
            resident,
            pb::event::Payload::Alarm(pb::Alarm {
                code: code.into(),
                severity: severity as i32,
                text: "Beboer registrert utenfor seng".into(),
                zone: "soverom".into(),
            }),
        )
    }

    pub fn note(event_id: &str, org: &str, resident: u32, in_response_to: &str) -> pb::Event {
        base(
            event_id,
            org,
            resident,
            pb::event::Payload::Note(pb::Note {
                text: "Tilsyn utført, beboer hjulpet tilbake i seng".into(),
                in_response_to: in_response_to.into(),
            }),
        )
    }
}

/// GETs a FHIR URL and returns (status, JSON body).
pub async fn get_json(url: &str) -> Result<(u16, serde_json::Value)> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body))
}

/// Follows a search's `next` links and returns every resource, in order.
pub async fn search_all(first_url: &str) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut url = Some(first_url.to_string());
    let mut pages = 0;
    while let Some(u) = url.take() {
        let (status, b) = get_json(&u).await?;
        if status != 200 {
            bail!("GET {u} answered {status}: {b}");
        }
        for e in b["entry"].as_array().into_iter().flatten() {
            out.push(e["resource"].clone());
        }
        url = b["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
        pages += 1;
        if pages > 100_000 {
            bail!("more than 100,000 pages: the next links loop");
        }
    }
    Ok(out)
}

pub use pb::ReceiptStatus;
