//! How an adapter reaches the hub's gRPC ingest: mutual TLS as a vendor
//! (the hub's normal, secure setup) or plain HTTP/2 for a hub started with
//! `--insecure-dev`.
//!
//! Why it exists: `vendor-sim` and `mqtt-gateway` both present a vendor's
//! client certificate, and both take the same flags for it; one place reads
//! the files and builds the channel. The vendor's identity is its client
//! certificate, exactly as `knutepunkt dev-certs` writes it (`ca.pem`,
//! `vendor-<id>.pem`, `vendor-<id>.key`), and the hub's certificate is
//! checked against the CA with the name `localhost` unless told otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The server name the hub's certificate is checked against by default
/// (what `knutepunkt dev-certs` puts in the server certificate).
pub const HUB_NAME: &str = "localhost";

/// Why a connection could not be set up; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(
        "say how to reach the hub: --certs DIR [--vendor ID] or --ca/--cert/--key for \
         mutual TLS, or --plain for a hub started with --insecure-dev"
    )]
    NoCredentials,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hub address {0}: {1}")]
    Address(String, String),
    #[error("TLS settings for the hub: {0}")]
    Tls(String),
    #[error("connecting to the hub at {0}: {1}")]
    Connect(String, String),
}

/// Command-line flags for the connection. Either `--certs DIR` (with
/// `--vendor`), or `--ca`, `--cert` and `--key`, or `--plain`.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnArgs {
    /// A `knutepunkt dev-certs` directory: uses DIR/ca.pem and
    /// DIR/vendor-<VENDOR>.pem/.key.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["ca", "cert", "key", "plain"])]
    pub certs: Option<PathBuf>,
    /// The vendor id: with --certs, whose certificate to present.
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
    pub fn resolve(&self) -> Result<Conn, ConnError> {
        let (ca, cert, key) = match (&self.certs, &self.ca, &self.cert, &self.key) {
            (Some(dir), ..) => (
                dir.join("ca.pem"),
                dir.join(format!("vendor-{}.pem", self.vendor)),
                dir.join(format!("vendor-{}.key", self.vendor)),
            ),
            (None, Some(ca), Some(cert), Some(key)) => (ca.clone(), cert.clone(), key.clone()),
            _ if self.plain => return Ok(Conn { tls: None }),
            _ => return Err(ConnError::NoCredentials),
        };
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| ConnError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
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

    /// Checks the hub's certificate against `name` instead of `localhost`.
    pub fn with_server_name(mut self, name: &str) -> Conn {
        self.tls = self.tls.map(|t| t.domain_name(name));
        self
    }

    /// One HTTP/2 connection to the hub at `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Channel, ConnError> {
        self.connect_to(&addr.to_string()).await
    }

    /// One HTTP/2 connection to the hub at `host:port` (a name or an address).
    pub async fn connect_to(&self, host_port: &str) -> Result<Channel, ConnError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = format!("{scheme}://{host_port}");
        let mut ep = Endpoint::from_shared(uri.clone())
            .map_err(|e| ConnError::Address(host_port.to_string(), e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| ConnError::Tls(e.to_string()))?;
        }
        ep.connect()
            .await
            .map_err(|e| ConnError::Connect(uri, error_chain(&e)))
    }
}

/// An error with its sources, so "transport error" says what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
