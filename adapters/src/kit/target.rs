//! How the conformance kit reaches the hub under test: mutual TLS with the
//! vendor's own certificate (as in production), or plain HTTP/2 for a
//! `knutepunkt-mock` or hub started without TLS.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Command-line flags for the hub under test.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// The hub's gRPC address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,
    /// Your vendor system's client certificate (PEM), from the
    /// municipality's vendor CA.
    #[arg(long, value_name = "FILE", requires = "key", conflicts_with = "plain")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert", conflicts_with = "plain")]
    pub key: Option<PathBuf>,
    /// CA certificate (PEM) the hub's server certificate must chain to.
    #[arg(long, value_name = "FILE", requires = "cert", conflicts_with = "plain")]
    pub ca: Option<PathBuf>,
    /// The name the hub's certificate is checked against (default: the host
    /// of --target, or "localhost" when that is an IP address).
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,
    /// Plain HTTP/2 without TLS: only for a knutepunkt-mock or a hub started
    /// with --insecure-dev.
    #[arg(long)]
    pub plain: bool,
}

impl TargetArgs {
    /// "mutual TLS" or "plain", for the report.
    pub fn describe(&self) -> String {
        if self.plain {
            format!("{} (plain, no TLS)", self.target)
        } else {
            format!("{} (mutual TLS)", self.target)
        }
    }

    /// Reads the certificate files once; the result connects many times.
    pub fn resolve(&self) -> Result<Target> {
        if self.plain {
            return Ok(Target {
                uri: format!("http://{}", self.target),
                tls: None,
            });
        }
        let (Some(cert), Some(key), Some(ca)) = (&self.cert, &self.key, &self.ca) else {
            bail!(
                "give your vendor certificate with --cert FILE --key FILE and the hub's CA with \
                 --ca FILE, or --plain for a knutepunkt-mock started without TLS"
            );
        };
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let host = self
            .target
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(&self.target);
        let domain = match &self.domain {
            Some(d) => d.clone(),
            None if host.parse::<std::net::IpAddr>().is_ok() => "localhost".to_string(),
            None => host.to_string(),
        };
        let tls = ClientTlsConfig::new()
            .domain_name(domain)
            .ca_certificate(Certificate::from_pem(read(ca)?))
            .identity(Identity::from_pem(read(cert)?, read(key)?));
        Ok(Target {
            uri: format!("https://{}", self.target),
            tls: Some(tls),
        })
    }
}

/// A resolved hub address (cheap to clone).
#[derive(Debug, Clone)]
pub struct Target {
    uri: String,
    tls: Option<ClientTlsConfig>,
}

impl Target {
    /// A new HTTP/2 connection (each stream-reconnect check uses its own).
    pub async fn connect(&self) -> Result<Channel> {
        let mut ep = Endpoint::from_shared(self.uri.clone())
            .context("--target")?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone()).context("TLS settings")?;
        }
        ep.connect()
            .await
            .with_context(|| format!("connecting to {}", self.uri))
    }
}
