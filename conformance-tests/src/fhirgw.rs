//! A running `fhir-gateway` for the black-box tests, and an HTTPS client
//! that acts as a home-monitoring platform.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::harness::events::OSLO;
use crate::harness::{self, Hub};

/// A running `fhir-gateway` in front of `hub`. Platform `demo-vendor` may
/// post for Oslo only (the hub would take Bergen from it too, so a Bergen
/// refusal is the gateway's own allow-list); `stranger` has a certificate
/// from the same CA but is not configured.
pub struct Gateway {
    child: Option<Child>,
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// The gateway with the platforms described above.
    pub async fn start(hub: &Hub) -> Result<Gateway> {
        Self::start_with(hub, "", "").await
    }

    /// The same, with `top` added at the top of the config file and
    /// `platforms` (more `[[platforms]]` tables) at its end; `{PORT}` in
    /// `top` is the port the gateway will listen on.
    pub async fn start_with(hub: &Hub, top: &str, platforms: &str) -> Result<Gateway> {
        Self::start_in(hub, top, platforms, &harness::certs()?).await
    }

    /// The gateway with its own certificate, key and client CA
    /// (`server.pem`, `server.key`, `ca.pem`) from `tls_dir`, e.g. a copy
    /// that a test replaces while it runs.
    pub async fn start_with_tls(hub: &Hub, tls_dir: &Path) -> Result<Gateway> {
        Self::start_in(hub, "", "", tls_dir).await
    }

    async fn start_in(hub: &Hub, top: &str, platforms: &str, tls_dir: &Path) -> Result<Gateway> {
        let listen = harness::free_port()?;
        let top = top.replace("{PORT}", &listen.port().to_string());
        let certs = harness::certs()?;
        let dir = tempfile::tempdir()?;
        let c = certs.display();
        let t = tls_dir.display();
        let cfg = format!(
            r#"{top}
[tls]
cert_file = "{t}/server.pem"
key_file = "{t}/server.key"
client_ca_file = "{t}/ca.pem"

[hub]
addr = "{grpc}"
ca_file = "{c}/ca.pem"

[[platforms]]
id = "demo-vendor"
municipalities = ["{OSLO}"]
hub_cert_file = "{c}/vendor-demo-vendor.pem"
hub_key_file = "{c}/vendor-demo-vendor.key"
{platforms}
"#,
            grpc = hub.grpc
        );
        let cfg_path = dir.path().join("gw.toml");
        std::fs::write(&cfg_path, cfg)?;
        let log = std::fs::File::create(dir.path().join("gw.log"))?;
        let mut child = Command::new(harness::binary("fhir-gateway")?)
            .arg("--config")
            .arg(&cfg_path)
            .arg("--listen")
            .arg(listen.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("cannot start fhir-gateway")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut l).map(|_| l)
        })
        .await??;
        let gw_log = std::fs::read_to_string(dir.path().join("gw.log")).unwrap_or_default();
        let addr = line
            .trim()
            .strip_prefix("listening on https://")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected first line {line:?}; log:\n{gw_log}"))?;
        Ok(Gateway {
            child: Some(child),
            addr,
            _dir: dir,
        })
    }

    /// `https://localhost:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        // The gateway's dev certificate names localhost.
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// The gateway's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("gw.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An HTTPS client trusting the dev CA and presenting `cert` (a dev-certs
/// file stem such as `vendor-demo-vendor`), or no certificate.
pub fn platform_client(cert: Option<&str>) -> Result<reqwest::Client> {
    let dir: PathBuf = harness::certs()?;
    let ca = std::fs::read(dir.join("ca.pem"))?;
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca)?])
        .timeout(Duration::from_secs(30));
    if let Some(stem) = cert {
        let mut pem = std::fs::read(dir.join(format!("{stem}.pem")))?;
        pem.extend(std::fs::read(dir.join(format!("{stem}.key")))?);
        b = b.identity(reqwest::Identity::from_pem(&pem)?);
    }
    Ok(b.build()?)
}
