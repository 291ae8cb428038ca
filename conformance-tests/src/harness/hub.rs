//! A hub process: its config, start, readiness, stop, kill -9, restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use knutepunkt::proto::client::EventClient;
use tonic::transport::Channel;

use super::{EpjAdapter, binary, certs, events, free_port, http_client};

/// The admin token of every test hub.
pub const ADMIN_TOKEN: &str = "test-admin-token-not-secret";

/// Config every TLS hub in the tests starts from: the dev certificates, two
/// vendors with agreements, an EPJ client per municipality (all scopes) and
/// the admin token.
fn base_config(certs: &Path, http: SocketAddr) -> String {
    use sha2::Digest;
    let admin_hash: String = sha2::Sha256::digest(ADMIN_TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        r#"
[auth]
token_url = "https://{http}/oauth/token"

[[auth.clients]]
id = "oslo-epj"
municipality = "958935420"
scopes = ["system/Observation.rs", "system/Communication.rs", "system/AuditEvent.rs", "system/pending.rs"]
jwk_file = "{c}/epj-oslo-epj.jwk.json"

[[auth.clients]]
id = "bergen-epj"
municipality = "964338531"
scopes = ["system/Observation.rs", "system/Communication.rs", "system/AuditEvent.rs", "system/pending.rs"]
jwk_file = "{c}/epj-bergen-epj.jwk.json"

[admin]
token_sha256 = "{admin_hash}"

[tls]
cert_file = "{c}/server.pem"
key_file = "{c}/server.key"
vendor_ca_file = "{c}/ca.pem"

[[vendors]]
id = "demo-vendor"
municipalities = ["958935420", "964338531"]

[[vendors]]
id = "other-vendor"
municipalities = ["964338531"]
"#,
        c = certs.display()
    )
}

/// How to start a hub. `Default` = TLS with the dev certificates and the
/// base vendors, embedded defaults otherwise, free ports.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Extra environment variables, e.g. `KNUTEPUNKT_STORE__MIN_FREE_BYTES`.
    pub env: Vec<(String, String)>,
    /// More config (TOML) appended to the base config, e.g. destinations.
    pub config_extra: String,
    /// Plain gRPC/HTTP with --insecure-dev instead of TLS.
    pub insecure: bool,
    /// Certificates and keys to configure instead of the shared [`certs`]
    /// (a per-test copy, e.g. to replace the server certificate at run time).
    pub certs_dir: Option<PathBuf>,
    /// Start the hub under this umask (through `sh -c 'umask …; exec …'`)
    /// instead of the test's own.
    pub umask: Option<u32>,
    /// Run on the PostgreSQL backend in this schema (several hubs may share
    /// one). Without it, `KNUTEPUNKT_TEST_BACKEND=postgres` gives each hub
    /// a schema of its own.
    pub pg: Option<std::sync::Arc<crate::pg::Schema>>,
    /// The hub's `store.hub_id` on PostgreSQL; default: from its HTTP port.
    pub hub_id: Option<String>,
}

/// A running hub process.
pub struct Hub {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
    opts: HubOptions,
    /// Keeps the log directory alive as long as the hub.
    _logs: tempfile::TempDir,
}

impl Hub {
    /// Starts a hub on `data_dir` with free ports and waits until it is ready.
    pub async fn start(data_dir: &Path, mut opts: HubOptions) -> Result<Hub> {
        if opts.pg.is_none() && crate::pg::backend_is_postgres() {
            opts.pg = Some(
                crate::pg::schema("KNUTEPUNKT_TEST_BACKEND=postgres")
                    .await?
                    .ok_or_else(|| {
                        anyhow!("KNUTEPUNKT_TEST_BACKEND=postgres, but no PostgreSQL")
                    })?,
            );
        }
        // The hub refuses a data directory open to others, and
        // `tempfile::tempdir()` makes directories 0777 minus the umask.
        if data_dir.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let logs = tempfile::tempdir()?;
        let mut hub = Hub {
            child: None,
            data_dir: data_dir.to_path_buf(),
            grpc: free_port()?,
            http: free_port()?,
            admin: free_port()?,
            log: logs.path().join("hub.log"),
            opts,
            _logs: logs,
        };
        hub.spawn().await?;
        Ok(hub)
    }

    async fn spawn(&mut self) -> Result<()> {
        let cfg_path = self._logs.path().join("knutepunkt.toml");
        let base = if self.opts.insecure {
            String::new()
        } else {
            let dir = match &self.opts.certs_dir {
                Some(d) => d.clone(),
                None => certs()?,
            };
            base_config(&dir, self.http)
        };
        std::fs::write(&cfg_path, format!("{base}\n{}", self.opts.config_extra))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let bin = binary("knutepunkt")?;
        let mut cmd = match self.opts.umask {
            Some(m) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("umask {m:03o} && exec \"$0\" \"$@\""))
                    .arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-addr")
            .arg(self.grpc.to_string())
            .arg("--http-addr")
            .arg(self.http.to_string())
            .arg("--admin-addr")
            .arg(self.admin.to_string())
            .arg("--config")
            .arg(&cfg_path);
        if self.opts.insecure {
            cmd.arg("--insecure-dev");
        }
        if let Some(schema) = &self.opts.pg {
            let id = self
                .opts
                .hub_id
                .clone()
                .unwrap_or_else(|| format!("hub-{}", self.http.port()));
            cmd.envs(schema.env(&id));
        }
        cmd.env("RUST_LOG", "info")
            .env_remove("KNUTEPUNKT_CONFIG")
            // The tests' own switches, not hub config (which refuses
            // unknown KNUTEPUNKT_* keys).
            .env_remove("KNUTEPUNKT_TEST_BACKEND")
            .env_remove("KNUTEPUNKT_TEST_PG_URL")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("cannot start knutepunkt")?);
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Polls /readyz until 200; an exit of the process is an error with its log.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = self.url("/readyz");
        let http = http_client()?;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("knutepunkt exited early ({status}); log:\n{}", self.logs());
            }
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(1)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "knutepunkt not ready after {timeout:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /readyz`: its status, or 0 when the hub does not answer.
    pub async fn readyz(&self) -> u16 {
        let Ok(client) = http_client() else { return 0 };
        match client
            .get(self.url("/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Waits until `/readyz` answers `want`; how long that took. Panics
    /// (with the hub's log) after `within`.
    pub async fn wait_readyz(&self, want: u16, within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let got = self.readyz().await;
            if got == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "/readyz answered {got}, not {want}, for {within:?}; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.opts.insecure { "http" } else { "https" };
        format!("{scheme}://{}{}", self.http, path)
    }

    /// `http://…/fhir/r4/{orgnr}`
    pub fn fhir_base(&self, orgnr: &str) -> String {
        self.url(&format!("/fhir/r4/{orgnr}"))
    }

    /// A gRPC client for vendor `demo-vendor` (mutual TLS unless insecure).
    pub async fn client(&self) -> Result<EventClient> {
        self.client_as(Some("demo-vendor")).await
    }

    /// A gRPC channel presenting `cert` (a dev-certs file stem such as
    /// `vendor-other-vendor`), or no client certificate with `None`.
    pub async fn channel_with(&self, cert: Option<&str>) -> Result<Channel> {
        if self.opts.insecure {
            return Ok(Channel::from_shared(format!("http://{}", self.grpc))?
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await?);
        }
        let dir = certs()?;
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
                dir.join("ca.pem"),
            )?));
        if let Some(stem) = cert {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                std::fs::read(dir.join(format!("{stem}.pem")))?,
                std::fs::read(dir.join(format!("{stem}.key")))?,
            ));
        }
        Ok(Channel::from_shared(format!("https://{}", self.grpc))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?)
    }

    /// A gRPC client for `vendor` (its dev certificate), or none.
    pub async fn client_as(&self, vendor: Option<&str>) -> Result<EventClient> {
        let stem = vendor.map(|v| format!("vendor-{v}"));
        Ok(EventClient::new(self.channel_with(stem.as_deref()).await?))
    }

    /// The Prometheus text of `GET /metrics` (admin listener, admin token).
    pub async fn metrics(&self) -> Result<String> {
        let r = http_client()?
            .get(format!("http://{}/metrics", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET /metrics answered {}", r.status());
        }
        Ok(r.text().await?)
    }

    /// Everything the hub wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub async fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("hub is not running");
        };
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()?;
        if !status.success() {
            bail!("could not signal the hub");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!(
                    "hub did not stop within 30 s of SIGTERM; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the hub again on the same data directory and ports.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop().await?;
        }
        self.spawn().await
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Config (TOML, for [`HubOptions::config_extra`]) that many tests share:
/// Bergen and Oslo, Oslo pulled by the EPJ client `oslo-vakt` (a pull
/// destination with a 60 s lease and its `[[auth.clients]]` entry) and, with
/// `push`, also pushed to `oslo-epj` at that adapter, with the extra
/// destination lines given (e.g. `"timeout_ms = 2000"`).
pub fn oslo_pulled_by_vakt(push: Option<(&EpjAdapter, &str)>) -> Result<String> {
    OsloVakt {
        push: push.map(|(epj, extra)| (epj, extra.to_string())),
        ..OsloVakt::default()
    }
    .toml()
}

/// The setup of [`oslo_pulled_by_vakt`], with the settings tests of
/// delivery and escalation change.
pub struct OsloVakt<'a> {
    /// Oslo's push destination `oslo-epj` at this adapter, with extra
    /// lines for it (see [`fast_retry`]).
    pub push: Option<(&'a EpjAdapter, String)>,
    /// The pull destination's lease.
    pub vakt_lease_secs: u64,
    /// `escalation_only` of the pull destination; `None` leaves it out.
    pub vakt_escalation_only: Option<bool>,
    /// The body of a `[delivery]` section, if any.
    pub delivery: Option<String>,
}

impl Default for OsloVakt<'_> {
    fn default() -> Self {
        OsloVakt {
            push: None,
            vakt_lease_secs: 60,
            vakt_escalation_only: None,
            delivery: None,
        }
    }
}

impl OsloVakt<'_> {
    pub fn toml(&self) -> Result<String> {
        let certs = certs()?.display().to_string();
        let delivery = self
            .delivery
            .as_ref()
            .map_or(String::new(), |d| format!("[delivery]\n{d}\n"));
        let push = self.push.as_ref().map_or(String::new(), |(epj, extra)| {
            format!(
                r#"
[[municipalities.destinations]]
name = "oslo-epj"
kind = "push"
url = "{url}"
ca_file = "{ca}"
{extra}
"#,
                url = epj.fhir_url(),
                ca = epj.cert.display()
            )
        });
        let only = self
            .vakt_escalation_only
            .map_or(String::new(), |o| format!("escalation_only = {o}\n"));
        Ok(format!(
            r#"
{delivery}
[[municipalities]]
orgnr = "{bergen}"
name = "Bergen kommune"

[[municipalities]]
orgnr = "{oslo}"
name = "Oslo kommune"
{push}
[[municipalities.destinations]]
name = "oslo-vakt"
kind = "pull"
lease_secs = {lease}
{only}
[[auth.clients]]
id = "oslo-vakt"
municipality = "{oslo}"
scopes = ["system/pending.rs"]
jwk_file = "{certs}/epj-oslo-vakt.jwk.json"
consumer = "oslo-vakt"
"#,
            bergen = events::BERGEN,
            oslo = events::OSLO,
            lease = self.vakt_lease_secs,
        ))
    }
}

/// Push destination lines for tests that make it fail: Bundles of
/// `max_batch`, a `timeout_ms` timeout, retries after 50–400 ms, and a
/// breaker that opens after 3 failures for 1 s.
pub fn fast_retry(max_batch: usize, timeout_ms: u64) -> String {
    format!(
        "max_batch = {max_batch}\ntimeout_ms = {timeout_ms}\nbackoff_base_ms = 50\nbackoff_cap_ms = 400\nbreaker_failures = 3\nbreaker_open_secs = 1"
    )
}

/// Submits `evs` one by one on one connection and panics unless each is
/// accepted (a test's setup, not what it checks). Returns their `Type/id`s.
pub async fn submit_all(hub: &Hub, evs: Vec<knutepunkt::proto::v1::Event>) -> Vec<String> {
    let mut c = super::ok(hub.client().await);
    let mut refs = Vec::new();
    for ev in evs {
        let r = super::ok(c.submit(ev).await).into_inner();
        assert_eq!(
            r.status,
            knutepunkt::proto::v1::ReceiptStatus::Accepted as i32,
            "{r:?}"
        );
        refs.push(r.resource);
    }
    refs
}
