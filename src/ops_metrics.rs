//! Gauges for the operator's alerts that no request path updates: time
//! left on the TLS certificates, room on the data directory's disk and the
//! store's reserve, the delivery deadlines, and a zero for every per-destination counter (so
//! `increase()` sees the first dead letter). See `deploy/prometheus/`.
//!
//! Refreshed every [`EVERY`] by one task, until its stop token. A second
//! task ([`spawn_upkeep`]) drains the recorder's histogram samples.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, TlsConfig};

/// How often the gauges are refreshed.
pub const EVERY: Duration = Duration::from_secs(30);

/// How often the recorder's histogram samples are folded into its
/// summaries (the exporter's own default for its HTTP listener).
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds the recorder's histogram samples every [`UPKEEP_EVERY`]. Without
/// it every sample of every histogram stays in memory until `/metrics` is
/// rendered: a hub that nobody scrapes grew by about 13 bytes per event
/// (BENCHMARKS.md, "2026-12-07"). `install_recorder` leaves this to us.
pub fn spawn_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                () = stop.cancelled() => return,
            }
        }
    })
}

/// Starts the refresher for `cfg`.
pub fn spawn(cfg: &Config, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let data_dir = cfg.data_dir.clone();
    let tls = cfg.tls.clone().filter(|_| !cfg.insecure_dev);
    metrics::gauge!("knutepunkt_delivery_deadline_seconds", "class" => "red")
        .set(cfg.delivery.deadline_red_secs as f64);
    metrics::gauge!("knutepunkt_delivery_deadline_seconds", "class" => "yellow")
        .set(cfg.delivery.deadline_yellow_secs as f64);
    metrics::gauge!("knutepunkt_store_min_free_bytes").set(cfg.store.min_free_bytes as f64);
    for (_, d) in cfg.destinations() {
        for name in [
            "knutepunkt_delivery_delivered_total",
            "knutepunkt_delivery_retried_total",
            "knutepunkt_delivery_dead_lettered_total",
            "knutepunkt_delivery_escalated_total",
        ] {
            metrics::counter!(name, "destination" => d.name.clone()).increment(0);
        }
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            disk(&data_dir);
            if let Some(t) = &tls {
                certificates(t);
            }
        }
    })
}

/// Free (for the hub's user) and total bytes of the data directory's
/// filesystem.
fn disk(dir: &Path) {
    match rustix::fs::statvfs(dir) {
        Ok(s) => {
            let block = s.f_frsize.max(1) as f64;
            metrics::gauge!("knutepunkt_disk_free_bytes").set(s.f_bavail as f64 * block);
            metrics::gauge!("knutepunkt_disk_total_bytes").set(s.f_blocks as f64 * block);
        }
        Err(e) => tracing::debug!(error = %e, "statvfs of the data directory failed"),
    }
}

/// Seconds until notAfter of the server certificate and of the vendor CA
/// (the earliest of its certificates); negative once expired.
fn certificates(tls: &TlsConfig) {
    for (which, path) in [
        ("server", &tls.cert_file),
        ("vendor_ca", &tls.vendor_ca_file),
    ] {
        match seconds_left(path, chrono::Utc::now().timestamp()) {
            Some(left) => {
                metrics::gauge!("knutepunkt_tls_cert_expiry_seconds", "cert" => which)
                    .set(left as f64);
            }
            None => tracing::debug!(cert = which, "cannot read the certificate's expiry"),
        }
    }
}

/// The earliest notAfter among the PEM certificates in `path`, as seconds
/// from `now` (for a chain: the first to expire breaks it).
pub fn seconds_left(path: &PathBuf, now: i64) -> Option<i64> {
    use x509_parser::prelude::*;
    CertificateDer::pem_file_iter(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|der| {
            let (_, x) = X509Certificate::from_der(der.as_ref()).ok()?;
            Some(x.validity().not_after.timestamp() - now)
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_certificate_has_about_its_validity_left() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let r = crate::devcerts::generate(&crate::devcerts::DevCerts {
            out: dir.path().to_path_buf(),
            vendors: vec![],
            expired_vendors: vec![],
            epj_clients: vec![],
            hosts: vec![],
        });
        assert!(r.is_ok(), "{r:?}");
        let now = chrono::Utc::now().timestamp();
        let left = seconds_left(&dir.path().join("server.pem"), now);
        assert!(left.is_some_and(|s| s > 86_400), "{left:?}");
        assert_eq!(seconds_left(&dir.path().join("missing.pem"), now), None);
    }
}
