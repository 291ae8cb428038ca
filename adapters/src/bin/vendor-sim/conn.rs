//! How vendor-sim reaches the hub's gRPC ingest: mutual TLS as a vendor
//! (the hub's normal, secure setup) or plain HTTP/2 for a hub started with
//! `--insecure-dev`.
//!
//! Why it exists: a benchmark that skips TLS measures a hub nobody runs.
//! The vendor's identity is its client certificate, exactly as
//! `knutepunkt dev-certs` writes it (`ca.pem`, `vendor-<id>.pem`,
//! `vendor-<id>.key`), and the hub's certificate is checked against the CA
//! with the name `localhost`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The server name the hub's certificate is checked against.
pub const HUB_NAME: &str = "localhost";

/// Command-line flags for the connection. Either `--certs DIR` (with
/// `--vendor`), or `--ca`, `--cert` and `--key`, or `--plain`.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnArgs {
    /// A `knutepunkt dev-certs` directory: uses DIR/ca.pem and
    /// DIR/vendor-<VENDOR>.pem/.key.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["ca", "cert", "key", "plain"])]
    pub certs: Option<PathBuf>,
    /// With --certs: the vendor id whose certificate to present.
    #[arg(long, default_value = "demo-vendor", value_name = "ID")]
    pub vendor: String,
    /// CA certificate (PEM) the hub's server certificate must chain to.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"], conflicts_with = "plain")]
    pub ca: Option<PathBuf>,
    /// The vendor's client certificate (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["ca", "key"], conflicts_with = "plain")]
    pub cert: Option<PathBuf>,
    /// The vendor's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["ca", "cert"], conflicts_with = "plain")]
    pub key: Option<PathBuf>,
    /// Plain HTTP/2 without TLS, for a hub started with --insecure-dev.
    #[arg(long)]
    pub plain: bool,
}

impl ConnArgs {
    /// Mutual TLS with the files of a dev-certs directory.
    pub fn dev_certs(dir: &Path, vendor: &str) -> ConnArgs {
        ConnArgs {
            certs: Some(dir.to_path_buf()),
            vendor: vendor.to_string(),
            ..ConnArgs::default()
        }
    }

    /// Reads the files once; the result connects any number of clients.
    pub fn resolve(&self) -> Result<Conn> {
        let (ca, cert, key) = match (&self.certs, &self.ca, &self.cert, &self.key) {
            (Some(dir), ..) => (
                dir.join("ca.pem"),
                dir.join(format!("vendor-{}.pem", self.vendor)),
                dir.join(format!("vendor-{}.key", self.vendor)),
            ),
            (None, Some(ca), Some(cert), Some(key)) => (ca.clone(), cert.clone(), key.clone()),
            _ if self.plain => return Ok(Conn { tls: None }),
            _ => bail!(
                "say how to reach the hub: --certs DIR [--vendor ID] or --ca/--cert/--key for \
                 mutual TLS, or --plain for a hub started with --insecure-dev"
            ),
        };
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let tls = ClientTlsConfig::new()
            .domain_name(HUB_NAME)
            .ca_certificate(Certificate::from_pem(read(&ca)?))
            .identity(Identity::from_pem(read(&cert)?, read(&key)?));
        Ok(Conn { tls: Some(tls) })
    }
}

/// A resolved way to connect (cheap to clone).
#[derive(Debug, Clone)]
pub struct Conn {
    tls: Option<ClientTlsConfig>,
}

impl Conn {
    /// "mutual TLS" or "plain (insecure-dev)", for progress lines.
    pub fn describe(&self) -> &'static str {
        if self.tls.is_some() {
            "mutual TLS"
        } else {
            "plain, no TLS (insecure-dev hub)"
        }
    }

    /// One HTTP/2 connection to the hub at `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Channel> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .context("hub address")?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone()).context("TLS settings")?;
        }
        ep.connect()
            .await
            .with_context(|| format!("connecting to the hub at {scheme}://{addr}"))
    }
}
