//! The demo's throw-away PKI and security config (see `knutepunkt dev-certs`).

use super::*;

/// The demo's throw-away PKI and security config: a dev CA, the hub's
/// certificate, a client certificate per simulated vendor and a key pair per
/// municipality's EPJ client (see `knutepunkt dev-certs`).
pub(super) struct DemoPki {
    pub(super) dir: std::path::PathBuf,
    pub(super) ca_pem: Vec<u8>,
    pub(super) http: std::net::SocketAddr,
}

/// The simulated vendors (each has a certificate) and EPJ clients.
const DEMO_VENDORS: [&str; 4] = ["vendor", "alarm-centre", "home-monitoring", mqtt::VENDOR];
const DEMO_MUNICIPALITIES: [(&str, &str); 2] =
    [("958935420", "oslo-epj"), ("964338531", "bergen-epj")];

impl DemoPki {
    pub(super) fn create(root: &std::path::Path) -> Result<DemoPki, BoxError> {
        let dir = root.join("certs");
        crate::devcerts::generate(&crate::devcerts::DevCerts {
            out: dir.clone(),
            vendors: DEMO_VENDORS.iter().map(|v| v.to_string()).collect(),
            expired_vendors: vec![],
            epj_clients: DEMO_MUNICIPALITIES
                .iter()
                .map(|(_, c)| c.to_string())
                .collect(),
            hosts: vec![],
        })
        .map_err(|e| format!("making demo certificates: {e}"))?;
        let ca_pem =
            std::fs::read(dir.join("ca.pem")).map_err(|e| format!("reading the demo CA: {e}"))?;
        // The token URL (the `aud` of EPJ assertions) must be known before
        // the hub starts, so the demo picks its HTTPS port up front.
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?;
        Ok(DemoPki { dir, ca_pem, http })
    }

    pub(super) fn config(&self, root: &std::path::Path) -> Result<Config, BoxError> {
        let mut cfg = Config::for_dev(root.join("data"));
        cfg.insecure_dev = false;
        cfg.http_addr = self.http;
        cfg.tls = Some(crate::config::TlsConfig::files(
            self.dir.join("server.pem"),
            self.dir.join("server.key"),
            self.dir.join("ca.pem"),
        ));
        cfg.vendors = DEMO_VENDORS
            .iter()
            .map(|v| crate::config::VendorConfig {
                id: v.to_string(),
                municipalities: DEMO_MUNICIPALITIES
                    .iter()
                    .map(|(o, _)| o.to_string())
                    .collect(),
                max_message_bytes: 64 * 1024,
                max_streams: 4,
                rate_per_sec: 1000,
                burst: 1000,
            })
            .collect();
        cfg.auth.token_url = Some(format!("https://{}/oauth/token", self.http));
        cfg.auth.clients = DEMO_MUNICIPALITIES
            .iter()
            .map(|(org, client)| crate::auth::config::ClientConfig {
                id: client.to_string(),
                municipality: org.to_string(),
                scopes: vec![
                    "system/Observation.rs".into(),
                    "system/Communication.rs".into(),
                ],
                jwk: None,
                jwk_file: Some(self.dir.join(format!("epj-{client}.jwk.json"))),
                consumer: None,
            })
            .collect();
        Ok(cfg)
    }

    pub(super) fn vendor_tls(
        &self,
        vendor: &str,
    ) -> Result<tonic::transport::ClientTlsConfig, BoxError> {
        let read =
            |f: String| std::fs::read(self.dir.join(&f)).map_err(|e| format!("reading {f}: {e}"));
        Ok(tonic::transport::ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                read(format!("vendor-{vendor}.pem"))?,
                read(format!("vendor-{vendor}.key"))?,
            )))
    }

    /// An access token for the EPJ client of `org`: client credentials with
    /// a signed `private_key_jwt` assertion, as a real EPJ would get it.
    pub(super) async fn token(
        &self,
        web: &reqwest::Client,
        base: &str,
        org: &str,
    ) -> Result<String, BoxError> {
        let client = DEMO_MUNICIPALITIES
            .iter()
            .find(|(o, _)| *o == org)
            .map(|(_, c)| *c)
            .ok_or_else(|| format!("no demo EPJ client for {org}"))?;
        let key = std::fs::read(self.dir.join(format!("epj-{client}.key")))?;
        Ok(
            crate::auth::client::request_token(web, &format!("{base}/oauth/token"), client, &key)
                .await?,
        )
    }
}
