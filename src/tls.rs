//! TLS for the hub's listeners: rustls, TLS 1.2 and 1.3 only.
//!
//! - gRPC (vendors) requires a client certificate signed by the vendor CA
//!   (mutual TLS); no certificate, an untrusted CA or an expired certificate
//!   fails the handshake.
//! - HTTPS (EPJ systems) asks for no client certificate; EPJ clients prove
//!   who they are with OAuth2 bearer tokens.
//!
//! Certificates are reloaded on SIGHUP and when a file's modification time
//! changes. Each listener holds its rustls config behind an `ArcSwap`: new
//! handshakes use the new config, open connections keep theirs, so a reload
//! drops nothing.
//!
//! The accept loops are ours (not tonic's or axum's TLS options) because
//! neither can swap certificates under a running server; each handshake runs
//! in its own task with a timeout, so a slow client cannot stall accepting.
//! A semaphore caps the handshakes in progress (as mini-redis caps its
//! connections): a connection over the cap is closed at once, counted in
//! `knutepunkt_tls_handshakes_refused_total` and logged at most once per
//! [`REFUSED_LOG_EVERY`]. Clients that connect and never finish a handshake
//! can hold a slot only until the timeout, so the cap cannot starve real
//! clients for longer than that.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// At most one warning per listener this often while handshakes are refused.
pub const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// How many handshakes may be in progress at once, and for how long each.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    pub max: usize,
    pub timeout: Duration,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            max: TlsConfig::DEFAULT_MAX_HANDSHAKES,
            timeout: Duration::from_secs(TlsConfig::DEFAULT_HANDSHAKE_TIMEOUT_SECS),
        }
    }
}

impl HandshakeLimits {
    pub fn of(tls: &TlsConfig) -> Self {
        HandshakeLimits {
            max: tls.max_handshakes.max(1),
            timeout: Duration::from_secs(tls.handshake_timeout_secs.max(1)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("tls: {path} holds no {what}; expected PEM")]
    Empty { path: PathBuf, what: &'static str },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls: vendor CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A rustls client config that trusts only the CA certificates in
/// `ca_file` (PEM), for the hub's own connections out (PostgreSQL).
pub fn client_config(ca_file: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_file)? {
        roots.add(c)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The rustls config of one listener. `vendor_mtls`: require a client
/// certificate signed by `vendor_ca_file` (gRPC).
pub fn server_config(tls: &TlsConfig, vendor_mtls: bool) -> Result<ServerConfig, TlsError> {
    let auth = if vendor_mtls {
        ClientCerts::Required
    } else {
        ClientCerts::None
    };
    server_config_with(tls, auth)
}

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// None asked for (the FHIR API: callers use bearer tokens).
    None,
    /// Required, from `vendor_ca_file` (gRPC ingest).
    Required,
    /// Checked against `vendor_ca_file` when one is presented; a connection
    /// without one must authenticate otherwise (a gateway that also takes
    /// `private_key_jwt` tokens).
    Optional,
}

/// [`server_config`] with an explicit client-certificate policy.
pub fn server_config_with(tls: &TlsConfig, auth: ClientCerts) -> Result<ServerConfig, TlsError> {
    let vendor_mtls = auth == ClientCerts::Required;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if auth == ClientCerts::None {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&tls.vendor_ca_file)? {
            roots.add(c)?;
        }
        let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        if auth == ClientCerts::Optional {
            verifier = verifier.allow_unauthenticated();
        }
        builder.with_client_cert_verifier(verifier.build()?)
    };
    let mut cfg = builder.with_single_cert(certs(&tls.cert_file)?, key(&tls.key_file)?)?;
    cfg.alpn_protocols = if vendor_mtls {
        vec![b"h2".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(cfg)
}

/// A listener's current rustls config, replaceable while it serves.
pub type Shared = Arc<ArcSwap<ServerConfig>>;

/// Both listeners' configs, loaded now.
pub struct Configs {
    pub grpc: Shared,
    pub http: Shared,
}

impl Configs {
    pub fn load(tls: &TlsConfig) -> Result<Configs, TlsError> {
        Ok(Configs {
            grpc: Arc::new(ArcSwap::from_pointee(server_config(tls, true)?)),
            http: Arc::new(ArcSwap::from_pointee(server_config(tls, false)?)),
        })
    }

    /// Reloads both from disk; on error the old ones stay in use.
    pub fn reload(&self, tls: &TlsConfig) -> Result<(), TlsError> {
        let grpc = server_config(tls, true)?;
        let http = server_config(tls, false)?;
        self.grpc.store(Arc::new(grpc));
        self.http.store(Arc::new(http));
        Ok(())
    }
}

fn mtimes(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reloads the hub's certificates on SIGHUP and when a file changes
/// (checked every 2 s), until `stop`.
pub fn spawn_reloader(tls: TlsConfig, configs: Arc<Configs>, stop: CancellationToken) {
    let files = vec![
        tls.cert_file.clone(),
        tls.key_file.clone(),
        tls.vendor_ca_file.clone(),
    ];
    spawn_reloader_of(files, move || configs.reload(&tls), stop);
}

/// Calls `reload` on SIGHUP and when one of `files` changes (modification
/// time, checked every 2 s), until `stop`; logs the outcome. `reload`
/// builds the new configs and swaps them in, or leaves the old ones in use
/// when it fails. (The gateways' listeners use it too.)
pub fn spawn_reloader_of<F>(files: Vec<PathBuf>, reload: F, stop: CancellationToken)
where
    F: Fn() -> Result<(), TlsError> + Send + 'static,
{
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = mtimes(&files);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let why = tokio::select! {
                () = stop.cancelled() => return,
                () = hangup => "SIGHUP",
                _ = tick.tick() => {
                    let now = mtimes(&files);
                    if now == seen { continue; }
                    seen = now;
                    "a certificate file changed"
                }
            };
            match reload() {
                Ok(()) => tracing::info!(trigger = why, "TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(trigger = why, error = %e, "TLS reload failed; still using the previous certificates")
                }
            }
        }
    });
}

/// Accepts TCP connections and hands on those that complete a TLS
/// handshake, with the default [`HandshakeLimits`].
pub fn accept_loop(
    listener: TcpListener,
    config: Shared,
    what: &'static str,
    stop: CancellationToken,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    accept_loop_with(listener, config, what, stop, HandshakeLimits::default())
}

/// Accepts TCP connections and hands on those that complete a TLS
/// handshake within `limits`. Failed handshakes are counted and logged at
/// debug level (they are the normal face of port scans and misconfigured
/// clients); refused ones (cap reached) at warn level, rate-limited.
pub fn accept_loop_with(
    listener: TcpListener,
    config: Shared,
    what: &'static str,
    stop: CancellationToken,
    limits: HandshakeLimits,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max));
    tokio::spawn(async move {
        let mut refused = Refused::default();
        loop {
            let (tcp, peer) = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(listener = what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                refused.note(what, peer, limits.max);
                drop(tcp);
                continue;
            };
            // Our own accept loop, so TCP_NODELAY is ours to set: without it
            // small gRPC frames wait on Nagle + delayed ACK (~10 ms per ack).
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.load_full());
            let tx = tx.clone();
            tokio::spawn(async move {
                let res = tokio::time::timeout(limits.timeout, acceptor.accept(tcp)).await;
                // The slot is free once the handshake is over, not the connection.
                drop(permit);
                match res {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("knutepunkt_tls_handshake_failed_total", "listener" => what).increment(1);
                        tracing::debug!(listener = what, %peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("knutepunkt_tls_handshake_failed_total", "listener" => what).increment(1);
                        tracing::debug!(listener = what, %peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}

/// Counts refused connections and logs at most one line per
/// [`REFUSED_LOG_EVERY`] (a flood must not become a log flood).
#[derive(Default)]
struct Refused {
    last_log: Option<std::time::Instant>,
    since_log: u64,
}

impl Refused {
    fn note(&mut self, what: &'static str, peer: SocketAddr, max: usize) {
        metrics::counter!("knutepunkt_tls_handshakes_refused_total", "listener" => what)
            .increment(1);
        self.since_log += 1;
        if self
            .last_log
            .is_some_and(|t| t.elapsed() < REFUSED_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            listener = what,
            %peer,
            refused = self.since_log,
            max_handshakes = max,
            "TLS handshake cap reached: closing new connections until handshakes finish or time out (tls.max_handshakes)"
        );
        self.last_log = Some(std::time::Instant::now());
        self.since_log = 0;
    }
}

/// An axum listener over [`accept_loop`].
pub struct HttpsListener {
    pub rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    pub local: SocketAddr,
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop stopped (shutdown): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The vendor id in a client certificate: a SAN URI
/// `urn:knutepunkt:vendor:<id>`, or the subject CN.
pub fn vendor_id_of(
    cert: &CertificateDer<'_>,
    from: crate::config::VendorIdentity,
) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, x) = X509Certificate::from_der(cert.as_ref()).ok()?;
    match from {
        crate::config::VendorIdentity::SanUri => {
            let san = x.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) => u.strip_prefix(VENDOR_URI_PREFIX).map(str::to_string),
                _ => None,
            })
        }
        crate::config::VendorIdentity::Cn => x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
    }
}

/// SAN URI prefix that names a vendor system in its certificate.
pub const VENDOR_URI_PREFIX: &str = "urn:knutepunkt:vendor:";
