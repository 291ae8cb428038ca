//! The HTTPS listener: accepts TCP, completes TLS with rustls and serves the
//! routes over HTTP/1.1 with hyper. It lives apart from the routes because
//! the `down` mode must act below HTTP: it closes the connection without
//! any answer, which no axum handler can do.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::http::{ADMIN_PREFIX, AppState, router};

/// Most connections served at once; further ones wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A TLS handshake that takes longer is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The error a request fails with in mode `down`; hyper then closes the
/// connection without writing a response.
#[derive(Debug, thiserror::Error)]
#[error("mode down: connection dropped without an answer")]
struct Dropped;

/// What one accepted connection needs.
struct Conn {
    acceptor: TlsAcceptor,
    app: axum::Router,
    state: AppState,
    http: hyper::server::conn::http1::Builder,
}

impl Conn {
    /// Completes TLS and serves the connection's requests until it closes.
    async fn serve(
        self,
        tcp: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
        _permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Conn {
            acceptor,
            app,
            state,
            http,
        } = self;
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let counted = Arc::new(AtomicBool::new(false));
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            let state = state.clone();
            let fhir = !req.uri().path().starts_with(ADMIN_PREFIX);
            if fhir && !counted.swap(true, Ordering::Relaxed) {
                state.stats.fhir_connection();
            }
            async move {
                if fhir && state.mode.is_down() {
                    state.stats.request();
                    state.stats.dropped();
                    return Err(Dropped);
                }
                match app.oneshot(req).await {
                    Ok(resp) => Ok(resp),
                    Err(never) => match never {},
                }
            }
        });
        let conn = http.serve_connection(TokioIo::new(tls), svc);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Serves HTTPS on `listener` until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish (up to 10 s).
pub async fn run(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: AppState,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let app = router(state.clone(), max_body_bytes);
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            acceptor: acceptor.clone(),
            app: app.clone(),
            state: state.clone(),
            http: http.clone(),
        };
        tokio::spawn(conn.serve(tcp, peer, graceful.watcher(), permit));
    }
    drop(listener);
    tracing::info!("stopped accepting; waiting for in-flight requests");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within 10 s; closing them");
    }
}
