//! The EPJ test double (`epj-adapter` from `adapters/`) as a process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::binary;

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

    /// Starts in mode `ok` and switches to `mode` (e.g.
    /// `{"mode":"slow","delay_ms":300}`) before anyone sends to it.
    pub async fn start_in(mode: serde_json::Value) -> Result<EpjAdapter> {
        let epj = EpjAdapter::start("ok").await?;
        epj.set_mode(mode).await?;
        Ok(epj)
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
