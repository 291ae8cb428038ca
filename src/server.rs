//! Wires the hub together: opens the store, binds the gRPC and HTTP
//! listeners, serves until told to stop, then drains and closes the store.
//!
//! `Hub::start` binds before anything is served, so a caller (the CLI, the
//! demo, a test) learns the real ports even when it asked for port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::IntoFuture;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::domain::VendorId;
use crate::ingest::IngestService;
use crate::proto;
use crate::proto::v1::vendor_ingest_service_server::VendorIngestServiceServer;
use crate::store::Store;
use crate::store::open::{HubStore, StoreOpenError};

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreOpenError),
    #[error("cannot listen on {addr} ({what}): {source}; is another process using the port?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    DataDir(#[from] crate::private_files::PrivateError),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Delivery(#[from] crate::deliver::push::PushSetupError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditSetupError),
    #[error(transparent)]
    Tls(crate::tls::TlsError),
}

/// A started hub: store open, ports bound, nothing served yet.
pub struct Hub {
    cfg: Config,
    store: HubStore,
    grpc: TcpListener,
    http: TcpListener,
    admin: TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl Hub {
    pub async fn start(cfg: Config) -> Result<Hub, StartError> {
        cfg.validate()?;
        // Before anything is written: private from the first file on.
        crate::private_files::restrict_umask();
        crate::private_files::prepare(&cfg.data_dir)?;
        // One consumer per destination; a destination seen for the first
        // time starts at the current end of the log.
        let store = HubStore::open(&cfg).await?;
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let grpc = bind("gRPC", cfg.grpc_addr).await?;
        let http = bind("HTTP", cfg.http_addr).await?;
        let admin = bind("admin", cfg.admin_addr).await?;
        let local = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let grpc_addr = local(&grpc, "gRPC", cfg.grpc_addr)?;
        let http_addr = local(&http, "HTTP", cfg.http_addr)?;
        let admin_addr = local(&admin, "admin", cfg.admin_addr)?;
        if cfg.municipalities.is_empty() {
            tracing::warn!(
                "no municipalities configured: accepting events for every valid orgnr; list them in the config for production"
            );
        }
        Ok(Hub {
            cfg,
            store,
            grpc,
            http,
            admin,
            grpc_addr,
            http_addr,
            admin_addr,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` completes, then stops taking requests, lets
    /// in-flight ones finish, and closes the store (every queued write is
    /// answered first).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Hub {
            cfg,
            store,
            grpc,
            http,
            admin,
            grpc_addr,
            http_addr,
            admin_addr,
        } = self;
        let token = CancellationToken::new();
        let dyn_store: Arc<dyn Store> = store.shared();
        let listen = Listen {
            tls: tls_configs(&cfg, &token)?,
            handshakes: cfg
                .tls
                .as_ref()
                .map(crate::tls::HandshakeLimits::of)
                .unwrap_or_default(),
            token: token.clone(),
        };
        let grpc_server = listen.grpc(grpc_router(&cfg, dyn_store.clone()).await?, grpc);

        let auditor = crate::audit::Auditor::from_config(&cfg, dyn_store.clone())?;
        let app = api_router(&cfg, &dyn_store, &auditor, listen.tls.is_some())?;
        let http_server = listen.http(app, http, http_addr);

        let registry = crate::deliver::Registry::default();
        let admin_server = axum::serve(admin, admin_router(&cfg, &store, &registry)?)
            .with_graceful_shutdown(token.clone().cancelled_owned());
        // Delivery stops on its own token, after the servers, so that it can
        // finish the requests in flight before the store closes.
        let delivery_stop = CancellationToken::new();
        let background = spawn_background(&cfg, &dyn_store, registry, &delivery_stop, auditor)?;

        tracing::info!(%grpc_addr, %http_addr, %admin_addr, data_dir = %cfg.data_dir.display(), "knutepunkt is serving");
        let stopper = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; finishing those in flight");
            stopper.cancel();
        });
        let servers = async {
            let (g, h, a) = tokio::join!(grpc_server, http_server, admin_server);
            g.map_err(ServeError::from)
                .and(h.and(a).map_err(ServeError::Http))
        };
        let result = serve_until_grace(servers, &token).await;
        // Whatever ended first, stop the other too.
        token.cancel();
        delivery_stop.cancel();
        drain_and_close(background, dyn_store, store).await;
        result
    }
}

/// The FHIR API for EPJ systems, with its token authority (src/auth) and
/// the audit trail every read goes through (src/audit.rs).
fn api_router(
    cfg: &Config,
    store: &Arc<dyn Store>,
    auditor: &crate::audit::Auditor,
    https: bool,
) -> Result<axum::Router, ServeError> {
    let authority = Arc::new(crate::auth::Authority::from_config(cfg, store.clone())?);
    Ok(api::router(ApiState {
        store: store.clone(),
        municipalities: cfg.served_municipalities().ok().flatten(),
        public_url: cfg.public_url.clone(),
        pull: Arc::new(pull_consumers(cfg)),
        destinations: Arc::new(all_destinations(cfg)),
        https,
        auth: authority,
        audit: auditor.clone(),
    }))
}

/// The admin API behind the admin credential: metrics, delivery status,
/// dead letters, compaction and (embedded store only) online backups.
fn admin_router(
    cfg: &Config,
    store: &HubStore,
    registry: &crate::deliver::Registry,
) -> Result<axum::Router, ServeError> {
    let guard = Arc::new(crate::auth::admin::AdminGuard::from_config(cfg)?);
    Ok(crate::admin::router(crate::admin::AdminState {
        store: store.shared(),
        registry: registry.clone(),
        guard,
        metrics: metrics_handle(),
        compaction: Arc::default(),
        // PostgreSQL is backed up with its own tools (pg_basebackup, PITR).
        backup: match store {
            HubStore::Embedded(s) => Some(crate::backup::BackupSource::new(s, cfg)),
            HubStore::Postgres(_) => None,
        },
    }))
}

/// The TLS configurations of the listeners (reloaded when their files
/// change), or `None` in insecure dev mode (said loudly).
fn tls_configs(
    cfg: &Config,
    token: &CancellationToken,
) -> Result<Option<Arc<crate::tls::Configs>>, ServeError> {
    match &cfg.tls {
        Some(t) if !cfg.insecure_dev => {
            let configs = Arc::new(crate::tls::Configs::load(t).map_err(ServeError::Tls)?);
            crate::tls::spawn_reloader(t.clone(), configs.clone(), token.clone());
            Ok(Some(configs))
        }
        _ => {
            tracing::warn!(
                "INSECURE DEV MODE: plain gRPC and HTTP, no client certificates, no EPJ tokens; every gRPC caller is {:?}. Never use this with real data.",
                cfg.default_vendor
            );
            Ok(None)
        }
    }
}

/// The gRPC services: vendor ingest (with its size limit), health and
/// reflection.
async fn grpc_router(
    cfg: &Config,
    store: Arc<dyn Store>,
) -> Result<tonic::transport::server::Router, ServeError> {
    let ingest = IngestService::new(
        store,
        cfg.served_municipalities().ok().flatten(),
        identify(cfg),
        cfg.max_future_skew_secs,
    );
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<VendorIngestServiceServer<IngestService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    Ok(tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(crate::ingest::limit::TooLarge::new(
            VendorIngestServiceServer::new(ingest)
                .max_decoding_message_size(grpc_decode_limit(cfg)),
        )))
}

/// How the public listeners accept: through rustls with the handshake
/// limits, or plain TCP in dev mode; both stop on `token`.
struct Listen {
    tls: Option<Arc<crate::tls::Configs>>,
    handshakes: crate::tls::HandshakeLimits,
    token: CancellationToken,
}

type Served<E> = futures::future::BoxFuture<'static, Result<(), E>>;

impl Listen {
    fn grpc(
        &self,
        router: tonic::transport::server::Router,
        listener: TcpListener,
    ) -> Served<tonic::transport::Error> {
        let stop = self.token.clone().cancelled_owned();
        match &self.tls {
            Some(c) => {
                let rx = crate::tls::accept_loop_with(
                    listener,
                    c.grpc.clone(),
                    "grpc",
                    self.token.clone(),
                    self.handshakes,
                );
                let incoming = tokio_stream::wrappers::ReceiverStream::new(rx)
                    .map(|(s, _)| Ok::<_, std::io::Error>(s));
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
            }
            None => Box::pin(router.serve_with_incoming_shutdown(
                TcpListenerStream::new(listener).map(|c| {
                    c.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                }),
                stop,
            )),
        }
    }

    fn http(
        &self,
        app: axum::Router,
        listener: TcpListener,
        local: SocketAddr,
    ) -> Served<std::io::Error> {
        let stop = self.token.clone().cancelled_owned();
        match &self.tls {
            Some(c) => {
                let rx = crate::tls::accept_loop_with(
                    listener,
                    c.http.clone(),
                    "https",
                    self.token.clone(),
                    self.handshakes,
                );
                let listener = crate::tls::HttpsListener { rx, local };
                Box::pin(
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .into_future(),
                )
            }
            None => Box::pin(
                axum::serve(
                    listener.tap_io(|s| {
                        let _ = s.set_nodelay(true);
                    }),
                    app,
                )
                .with_graceful_shutdown(stop)
                .into_future(),
            ),
        }
    }
}

/// Delivery, the audit pruner, operational metrics and their upkeep, and
/// retention: every task that runs beside the servers until `stop`.
fn spawn_background(
    cfg: &Config,
    store: &Arc<dyn Store>,
    registry: crate::deliver::Registry,
    stop: &CancellationToken,
    auditor: crate::audit::Auditor,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServeError> {
    let mut tasks = crate::deliver::spawn(cfg, store.clone(), registry, stop.clone(), auditor)?;
    tasks.push(crate::audit::spawn_pruner(cfg, store.clone(), stop.clone()));
    tasks.push(crate::ops_metrics::spawn(cfg, stop.clone()));
    if let Some(h) = metrics_handle() {
        tasks.push(crate::ops_metrics::spawn_upkeep(h, stop.clone()));
    }
    tasks.push(crate::retention::spawn(
        cfg.retention_policy(),
        store.clone(),
        crate::retention::EVERY,
        stop.clone(),
    ));
    Ok(tasks)
}

/// Runs the servers until they end; after `token` is cancelled they get
/// [`SHUTDOWN_GRACE`] to finish the requests in flight.
async fn serve_until_grace(
    servers: impl Future<Output = Result<(), ServeError>>,
    token: &CancellationToken,
) -> Result<(), ServeError> {
    tokio::pin!(servers);
    let grace_over = async {
        token.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = &mut servers => r,
        () = grace_over => {
            tracing::warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "connections still open after the grace period; closing them");
            Ok(())
        }
    }
}

/// Lets the background tasks finish (deliveries in flight) and closes the
/// store, each within [`SHUTDOWN_GRACE`].
async fn drain_and_close(
    background: Vec<tokio::task::JoinHandle<()>>,
    dyn_store: Arc<dyn Store>,
    store: HubStore,
) {
    let finish = futures::future::join_all(background);
    if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
        tracing::warn!(
            "deliveries still in flight after the grace period; they will be sent again after restart"
        );
    }
    drop(dyn_store);
    if tokio::time::timeout(SHUTDOWN_GRACE, store.close())
        .await
        .is_err()
    {
        tracing::warn!(
            "store writer did not stop in time; every acknowledged event is already on disk"
        );
    } else {
        tracing::info!("stopped; store closed");
    }
}

/// tonic's decode limit: above every agreement's event limit, so events
/// between the two get the agreement's `too_large` answer from validation
/// and larger ones the same answer from [`crate::ingest::limit`].
fn grpc_decode_limit(cfg: &Config) -> usize {
    let largest = cfg.vendors.iter().map(|v| v.max_message_bytes).max();
    crate::ingest::limit::transport_limit(largest.unwrap_or(0))
}

/// How ingest identifies vendors: by certificate, or (insecure dev mode)
/// everyone as the default vendor.
fn identify(cfg: &Config) -> crate::ingest::Identify {
    if cfg.insecure_dev {
        return crate::ingest::Identify::InsecureDev(VendorId(cfg.default_vendor.clone()));
    }
    crate::ingest::Identify::Certificate {
        from: cfg.vendor_identity,
        vendors: cfg
            .vendors
            .iter()
            .map(|v| (v.id.clone(), Arc::new(crate::ingest::VendorPolicy::new(v))))
            .collect(),
    }
}

/// Every destination name per municipality, escalation-only ones included.
fn all_destinations(cfg: &Config) -> std::collections::BTreeMap<crate::domain::Orgnr, Vec<String>> {
    let mut out: std::collections::BTreeMap<_, Vec<String>> = std::collections::BTreeMap::new();
    for (org, d) in cfg.destinations() {
        out.entry(org).or_default().push(d.name);
    }
    out
}

/// Pull destinations per municipality, for `$pending`/`$confirm`.
fn pull_consumers(
    cfg: &Config,
) -> std::collections::BTreeMap<crate::domain::Orgnr, Vec<crate::api::pull::PullConsumer>> {
    let mut out: std::collections::BTreeMap<_, Vec<_>> = std::collections::BTreeMap::new();
    for (org, d) in cfg.destinations() {
        if d.kind == crate::config::DestinationKind::Pull {
            out.entry(org)
                .or_default()
                .push(crate::api::pull::PullConsumer {
                    name: d.name,
                    lease_secs: d.lease_secs,
                });
        }
    }
    out
}

/// The process-wide Prometheus recorder, installed on first use. `None` when
/// another recorder was installed first (e.g. by an embedding program).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .clone()
}
