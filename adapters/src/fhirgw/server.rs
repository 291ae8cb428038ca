//! The HTTPS listener, with client certificates required at the handshake.
//!
//! It reuses the hub's own pieces rather than copies of them: the rustls
//! configuration (`knutepunkt::tls::server_config`, the one the hub's gRPC
//! listener uses for vendors), the accept loop with its handshake timeout
//! and TCP_NODELAY (`knutepunkt::tls::accept_loop`), and the rule that
//! names a vendor system in a certificate (`knutepunkt::tls::vendor_id_of`).
//! A connection without a certificate from the configured CA never gets
//! to HTTP, unless some platform is configured for `private_key_jwt`: then
//! a connection without a certificate is let through and must carry a
//! bearer token ([`token`](super::token)); a bad certificate is still
//! refused at the handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use knutepunkt::config::{TlsConfig, VendorIdentity};
use knutepunkt::tls::{ClientCerts, HttpsListener, accept_loop, vendor_id_of};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::TlsSection;

/// Who is on the other end of a connection, found once per connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The platform id from the client certificate's SAN URI
    /// `urn:knutepunkt:vendor:<id>`; `None` when it names none.
    pub platform: Option<String>,
}

impl Connected<IncomingStream<'_, HttpsListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, HttpsListener>) -> Self {
        let (_, conn) = stream.io().get_ref();
        let platform = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| vendor_id_of(c, VendorIdentity::SanUri));
        PeerInfo {
            addr: *stream.remote_addr(),
            platform,
        }
    }
}

/// The gateway's rustls config: its certificate, client certificates
/// checked against `client_ca_file`, HTTP/1.1. They are required, unless
/// `tokens_too` (some platform uses `private_key_jwt`): then a connection
/// without one gets to HTTP, where it needs a bearer token.
pub fn tls_config(
    tls: &TlsSection,
    tokens_too: bool,
) -> Result<ServerConfig, knutepunkt::tls::TlsError> {
    let hub_style = TlsConfig::files(
        tls.cert_file.clone(),
        tls.key_file.clone(),
        tls.client_ca_file.clone(),
    );
    let certs = if tokens_too {
        ClientCerts::Optional
    } else {
        ClientCerts::Required
    };
    let mut cfg = knutepunkt::tls::server_config_with(&hub_style, certs)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The listener's rustls config as loaded now, and what it was loaded
/// from, so it can be reloaded while the gateway serves.
pub struct Tls {
    section: TlsSection,
    tokens_too: bool,
    current: knutepunkt::tls::Shared,
}

impl Tls {
    pub fn load(section: TlsSection, tokens_too: bool) -> Result<Tls, knutepunkt::tls::TlsError> {
        let current = Arc::new(ArcSwap::from_pointee(tls_config(&section, tokens_too)?));
        Ok(Tls {
            section,
            tokens_too,
            current,
        })
    }

    /// Reloads the certificates on SIGHUP and when a file changes, as the
    /// hub does (`knutepunkt::tls::spawn_reloader_of`): new connections get
    /// the new ones, open connections keep theirs.
    fn spawn_reloader(&self, stop: CancellationToken) {
        let files = vec![
            self.section.cert_file.clone(),
            self.section.key_file.clone(),
            self.section.client_ca_file.clone(),
        ];
        let (section, tokens_too) = (self.section.clone(), self.tokens_too);
        let current = self.current.clone();
        let reload = move || {
            current.store(Arc::new(tls_config(&section, tokens_too)?));
            Ok(())
        };
        knutepunkt::tls::spawn_reloader_of(files, reload, stop);
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish.
pub async fn run(
    listener: TcpListener,
    tls: Tls,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let stop = CancellationToken::new();
    tls.spawn_reloader(stop.clone());
    let rx = accept_loop(listener, tls.current.clone(), "fhir-gateway", stop.clone());
    let stopper = stop.clone();
    axum::serve(
        HttpsListener { rx, local },
        app.into_make_service_with_connect_info::<PeerInfo>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        stopper.cancel();
    })
    .await
}
