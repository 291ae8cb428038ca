//! The EPJ adapter (`epj-adapter`, the EPJ test double) as a child process
//! the delivery benches push to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use knutepunkt_adapters::epj::Snapshot;
use knutepunkt_adapters::epj::layout::Layout;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use super::{proc_memory_kib, stop_child, tail};

/// The EPJ adapter (the EPJ test double) as a child process.
pub struct EpjProcess {
    child: Child,
    pid: u32,
    pub addr: SocketAddr,
    /// Its import folder (`received.log` is here).
    pub out: PathBuf,
    /// Its self-signed certificate.
    pub cert: PathBuf,
    web: reqwest::Client,
}

impl EpjProcess {
    /// Starts `epj-adapter` on a free port with files under `dir`.
    pub async fn start(bin: &Path, dir: &Path, mode: &str, layout: Layout) -> Result<EpjProcess> {
        let out = dir.join("out");
        let tls = dir.join("tls");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("epj-adapter.log");
        let err =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--mode", mode, "--log", "warn"])
            .arg("--layout")
            .arg(match layout {
                Layout::Files => "files",
                Layout::Ndjson => "ndjson",
            })
            .arg("--out")
            .arg(&out)
            .arg("--self-signed")
            .arg(&tls)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the EPJ adapter exited at once")?;
        let stdout = child
            .stdout
            .take()
            .context("no stdout from the EPJ adapter")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the EPJ adapter did not start within 30 s")?
            .context("reading the EPJ adapter's stdout")?
            .unwrap_or_default();
        let addr: SocketAddr = first
            .trim()
            .strip_prefix("listening on https://")
            .and_then(|a| a.parse().ok())
            .with_context(|| {
                format!(
                    "unexpected first line from epj-adapter: {first:?}; its log:\n{}",
                    tail(&log, 20)
                )
            })?;
        let cert = tls.join("cert.pem");
        let web = crate::token::https_client(&cert)?;
        Ok(EpjProcess {
            child,
            pid,
            addr,
            out,
            cert,
            web,
        })
    }

    /// The FHIR base the hub pushes to.
    pub fn fhir_url(&self) -> String {
        format!("https://{}/fhir", self.addr)
    }

    /// Switches the mode: `{"mode":"down"}`, `{"mode":"ok"}`, ...
    pub async fn set_mode(&self, mode: &str) -> Result<()> {
        let r = self
            .web
            .post(format!("https://{}/_admin/mode", self.addr))
            .json(&serde_json::json!({ "mode": mode }))
            .send()
            .await
            .context("POST /_admin/mode")?;
        if !r.status().is_success() {
            bail!("epj-adapter refused mode {mode}: HTTP {}", r.status());
        }
        Ok(())
    }

    /// The adapter's counters.
    pub async fn stats(&self) -> Result<Snapshot> {
        self.web
            .get(format!("https://{}/_admin/stats", self.addr))
            .send()
            .await
            .context("GET /_admin/stats")?
            .json()
            .await
            .context("reading /_admin/stats")
    }

    /// POSTs a transaction Bundle; returns the HTTP status.
    pub async fn post_bundle(&self, body: String) -> Result<u16> {
        let r = self
            .web
            .post(self.fhir_url())
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .context("POST /fhir")?;
        let status = r.status().as_u16();
        let _ = r.bytes().await;
        Ok(status)
    }

    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        proc_memory_kib(self.pid)
    }

    pub async fn stop(mut self) -> Result<String> {
        stop_child(
            &mut self.child,
            self.pid,
            "EPJ adapter",
            Duration::from_secs(20),
        )
        .await
    }
}
