//! An EPJ import endpoint for tests, benchmarks and demos: it plays the
//! municipality's patient-record system that the hub pushes to.
//!
//! It receives FHIR R4 `transaction` Bundles of conditional creates over
//! HTTPS (`POST /fhir`), writes each new resource to a folder as one file
//! (or each Bundle's new resources as one NDJSON file),
//! answers with a `transaction-response`, and can be switched at run time to
//! look down, slow, overloaded or picky (`POST /_admin/mode`), while counting
//! what it was sent (`GET /_admin/stats`).
//!
//! Map of the module:
//! - [`bundle`]: checks a transaction Bundle; builds the answers (FHIR edge).
//! - [`outbox`]: the import folder, identifier index and `received.log`.
//! - [`layout`]: how resources land there: a file each, or NDJSON per Bundle.
//! - [`mode`]: the failure switches.
//! - [`stats`]: the counters.
//! - [`http`]: the routes.
//! - [`server`]: TLS + HTTP/1.1 accept loop; where `down` drops connections.
//! - [`tls`]: PEM loading and the self-signed certificate.
//!
//! **Invariant: no national id in a log line, an answer or `received.log`.**
//! Subjects appear only as keyed pseudonyms; answers name entries by index.
//!
//! **Invariant: a transaction is all-or-nothing.** A Bundle is checked whole
//! before anything is written; a rejected (422), malformed (400) or
//! conflicting (409) Bundle leaves no file behind.

pub mod bundle;
pub mod http;
pub mod layout;
pub mod mode;
pub mod outbox;
pub mod server;
pub mod stats;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use mode::{Mode, ModeSwitch};
pub use stats::{Snapshot, Stats};

/// Where the TLS identity comes from.
#[derive(Debug, Clone)]
pub enum Identity {
    /// PEM certificate chain and private key.
    Files {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
    /// `DIR/cert.pem` and `DIR/key.pem`, made if absent.
    SelfSigned(PathBuf),
}

/// Everything the adapter needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The import folder.
    pub out: PathBuf,
    /// TLS identity.
    pub identity: Identity,
    /// Mode at start.
    pub mode: Mode,
    /// Sync every file and the folder before answering.
    pub fsync: bool,
    /// How new resources are written.
    pub layout: layout::Layout,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Key for subject pseudonyms in `received.log`; `None` uses
    /// `OUT/.pseudonym-key`.
    pub pseudonym_key: Option<String>,
}

/// An adapter that is bound and ready to serve.
pub struct Adapter {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: http::AppState,
    max_body_bytes: usize,
    /// The bound address.
    pub local_addr: SocketAddr,
    /// The certificate clients should trust.
    pub cert_path: PathBuf,
}

/// Why the adapter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS identity.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Import folder.
    #[error(transparent)]
    Outbox(#[from] outbox::OpenError),
    /// Listening socket.
    #[error("cannot listen on {addr}: {source}; pick a free port (0 picks one)")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Adapter {
    /// Loads or makes the certificate, opens the import folder (rebuilding
    /// the identifier index) and binds the listener.
    pub async fn bind(cfg: Config) -> Result<Adapter, StartError> {
        let (cert, key) = match &cfg.identity {
            Identity::Files { cert, key } => (cert.clone(), key.clone()),
            Identity::SelfSigned(dir) => {
                let (c, k, made) = tls::ensure_self_signed(dir)?;
                if made {
                    tracing::info!(cert = %c.display(), "made a self-signed certificate");
                }
                (c, k)
            }
        };
        let tls = tls::server_config(&cert, &key)?;
        let out = cfg.out.clone();
        let (fsync, layout) = (cfg.fsync, cfg.layout);
        let key_opt = cfg.pseudonym_key.clone();
        let opened = tokio::task::spawn_blocking(move || {
            outbox::Outbox::open(&out, fsync, layout, key_opt.as_deref())
        })
        .await
        .map_err(|e| StartError::Outbox(outbox::OpenError::from_join(&cfg.out, e)))??;
        let (outbox, report) = opened;
        tracing::info!(
            out = %cfg.out.display(),
            resources = report.resources,
            recovered = report.recovered,
            temp_removed = report.temp_removed,
            "import folder opened"
        );
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
        Ok(Adapter {
            listener,
            tls,
            state: http::AppState {
                outbox: Arc::new(outbox),
                mode: ModeSwitch::new(cfg.mode),
                stats: Arc::new(Stats::default()),
            },
            max_body_bytes: cfg.max_body_bytes,
            local_addr,
            cert_path: cert,
        })
    }

    /// Serves until `shutdown` completes; see [`server::run`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        server::run(
            self.listener,
            self.tls,
            self.state,
            self.max_body_bytes,
            shutdown,
        )
        .await
    }
}
