//! Drives the real `knutepunkt` binary: builds it once, starts it on free
//! loopback ports with its own data directory, waits until it is ready,
//! turns an early exit into an error carrying its log, and can stop it
//! gracefully, `kill -9` it and start it again on the same data.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1 as pb;
use tonic::transport::Channel;

/// Path of a binary of this workspace, built once per test process with the
/// same profile as the tests (a nested `cargo build` is quick when fresh).
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let mut cmd = Command::new(env!("CARGO"));
            // The same packages and targets as `cargo test --workspace`:
            // a narrower set resolves crate features differently (dev-only
            // features such as tokio's test-util), and cargo would then
            // compile every dependency again and overwrite the binaries the
            // outer run built. With the same set this is a no-op there.
            cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
            if !cfg!(debug_assertions) {
                cmd.arg("--release");
            }
            let out = cmd
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cargo build failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            // tests live in <target>/<profile>/deps/; binaries one level up
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            exe.parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .ok_or_else(|| "cannot find the target directory".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

/// Whether this run is CI (`CI=true`), where no test may skip.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The one way a test says it cannot run here (no root for a tmpfs, no
/// python3 for the FHIR validator, no FUSE, no Mosquitto, no npm for buf,
/// no promtool): under `CI=true` it fails with `reason`; on a developer's
/// machine it prints `SKIPPED <test>: <reason>` and the caller returns.
pub fn skip(test: &str, reason: &str) {
    if ci() {
        panic!("{test} cannot run and CI=true, so it fails instead of skipping: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// A free loopback port for a hub. Taken below the kernel's ephemeral range
/// (32768+), so no port-0 bind (the EPJ adapter, outgoing connections) can
/// grab it between the check and the hub's bind; a per-process counter
/// keeps parallel tests apart.
pub fn free_port() -> Result<SocketAddr> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 50) as u16 * 200;
    for _ in 0..2_000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l.local_addr()?);
        }
    }
    bail!("no free port between 20000 and 32000")
}

/// The dev PKI of this test process (`knutepunkt dev-certs`), made once:
/// CA, server certificate, vendors `demo-vendor` (Oslo and Bergen) and
/// `other-vendor` (Bergen only), an expired `demo-vendor` certificate, and
/// EPJ client `demo-epj`.
pub fn certs() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("kp-certs-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let out = Command::new(binary("knutepunkt").map_err(|e| e.to_string())?)
            .args([
                "dev-certs",
                "--vendor",
                "demo-vendor",
                "--vendor",
                "other-vendor",
                "--vendor",
                "stranger",
            ])
            .args([
                "--expired",
                "demo-vendor",
                "--epj-client",
                "oslo-epj",
                "--epj-client",
                "bergen-epj",
                "--epj-client",
                "oslo-vakt",
                "--out",
            ])
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "dev-certs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(dir)
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Runs `knutepunkt dev-certs --out <out>` with `args`: a second, unrelated
/// PKI (its own CA) for tests that need foreign certificates or keys.
pub fn dev_certs(out: &Path, args: &[&str]) -> Result<()> {
    let res = Command::new(binary("knutepunkt")?)
        .arg("dev-certs")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()?;
    if !res.status.success() {
        bail!("dev-certs failed: {}", String::from_utf8_lossy(&res.stderr));
    }
    Ok(())
}

/// Sum of the Prometheus samples of `name` whose labels include every one
/// of `labels` (0 when there is none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, r)) => (n, r.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            if !all {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

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

/// A running `epj-adapter` (the EPJ test double in `adapters/`), over HTTPS
/// with a self-signed certificate the hub is told to trust.
pub struct EpjAdapter {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub out: PathBuf,
    pub cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl EpjAdapter {
    pub async fn start(mode: &str) -> Result<EpjAdapter> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("out");
        let certs = dir.path().join("certs");
        let mut child = Command::new(binary("epj-adapter")?)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--out")
            .arg(&out)
            .arg("--self-signed")
            .arg(&certs)
            .arg("--mode")
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start epj-adapter")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut l).map(|_| l)
        })
        .await??;
        let addr = line
            .trim()
            .strip_prefix("listening on https://")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected first line from epj-adapter: {line:?}"))?;
        Ok(EpjAdapter {
            child: Some(child),
            addr,
            out,
            cert: certs.join("cert.pem"),
            _dir: dir,
        })
    }

    pub fn fhir_url(&self) -> String {
        format!("https://{}/fhir", self.addr)
    }

    fn client(&self) -> Result<reqwest::Client> {
        let pem = std::fs::read(&self.cert)?;
        Ok(reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem)?])
            .timeout(Duration::from_secs(10))
            .build()?)
    }

    /// Switches failure mode at run time, e.g. `{"mode":"down"}`.
    pub async fn set_mode(&self, mode: serde_json::Value) -> Result<()> {
        let r = self
            .client()?
            .post(format!("https://{}/_admin/mode", self.addr))
            .json(&mode)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "epj-adapter refused mode {mode}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    pub async fn stats(&self) -> Result<serde_json::Value> {
        Ok(self
            .client()?
            .get(format!("https://{}/_admin/stats", self.addr))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Resources created so far, in arrival order: (type, id) from received.log.
    pub fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.out.join("received.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `n` resources were created, or fails after `timeout`.
    pub async fn wait_created(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received().len();
            if got >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("epj-adapter has {got} of {n} resources after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EpjAdapter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Unwraps a test step's result, panicking with its error (tests only).
pub fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// `Type/id` of every entry of a Bundle, in order.
pub fn entry_refs(bundle: &serde_json::Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or(""),
                e["resource"]["id"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Config (TOML, for [`HubOptions::config_extra`]) that many tests share:
/// Bergen and Oslo, Oslo pulled by the EPJ client `oslo-vakt` (a pull
/// destination with a 60 s lease and its `[[auth.clients]]` entry) and, with
/// `push`, also pushed to `oslo-epj` at that adapter, with the extra
/// destination lines given (e.g. `"timeout_ms = 2000"`).
pub fn oslo_pulled_by_vakt(push: Option<(&EpjAdapter, &str)>) -> Result<String> {
    let certs = certs()?.display().to_string();
    let push = push.map_or(String::new(), |(epj, extra)| {
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
    Ok(format!(
        r#"
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
lease_secs = 60

[[auth.clients]]
id = "oslo-vakt"
municipality = "{oslo}"
scopes = ["system/pending.rs"]
jwk_file = "{certs}/epj-oslo-vakt.jwk.json"
consumer = "oslo-vakt"
"#,
        bergen = events::BERGEN,
        oslo = events::OSLO,
    ))
}

/// Builders for valid events; tests change one field to break a rule.
pub mod events {
    use super::pb;
    use knutepunkt::domain::synthetic;

    pub const OSLO: &str = "958935420";
    pub const BERGEN: &str = "964338531";

    pub fn now() -> prost_types::Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        prost_types::Timestamp {
            seconds: d.as_secs() as i64,
            nanos: 0,
        }
    }

    /// The device time every builder uses: the first call's `now()`, fixed
    /// for the test process. A resend built a second later must be the same
    /// event, or the hub rightly calls it a conflict (CI failed once on that).
    pub fn device_time() -> prost_types::Timestamp {
        static AT: std::sync::OnceLock<prost_types::Timestamp> = std::sync::OnceLock::new();
        *AT.get_or_init(now)
    }

    fn base(event_id: &str, org: &str, resident: u32, payload: pb::event::Payload) -> pb::Event {
        pb::Event {
            event_id: event_id.into(),
            municipality: org.into(),
            patient: Some(pb::PersonId {
                system: pb::IdSystem::Fnr as i32,
                value: synthetic::fnr(resident),
            }),
            device: Some(pb::Device {
                id: format!("dev-{resident}"),
                kind: "sensor".into(),
            }),
            occurred_at: Some(device_time()),
            payload: Some(payload),
        }
    }

    pub fn quantity(
        event_id: &str,
        org: &str,
        resident: u32,
        kind: pb::MeasurementKind,
        value: f64,
        unit: &str,
    ) -> pb::Event {
        base(
            event_id,
            org,
            resident,
            pb::event::Payload::Measurement(pb::Measurement {
                kind: kind as i32,
                reading: Some(pb::measurement::Reading::Quantity(pb::Quantity {
                    value,
                    unit: unit.into(),
                })),
            }),
        )
    }

    pub fn heart_rate(event_id: &str, org: &str, resident: u32) -> pb::Event {
        quantity(
            event_id,
            org,
            resident,
            pb::MeasurementKind::HeartRate,
            72.0,
            "/min",
        )
    }

    pub fn blood_pressure(
        event_id: &str,
        org: &str,
        resident: u32,
        sys: f64,
        dia: f64,
    ) -> pb::Event {
        base(
            event_id,
            org,
            resident,
            pb::event::Payload::Measurement(pb::Measurement {
                kind: pb::MeasurementKind::BloodPressure as i32,
                reading: Some(pb::measurement::Reading::BloodPressure(pb::BloodPressure {
                    systolic: sys,
                    diastolic: dia,
                })),
            }),
        )
    }

    pub fn alarm(
        event_id: &str,
        org: &str,
        resident: u32,
        code: &str,
        severity: pb::Severity,
    ) -> pb::Event {
        base(
            event_id,
            org,
            resident,
            pb::event::Payload::Alarm(pb::Alarm {
                code: code.into(),
                severity: severity as i32,
                text: "Beboer registrert utenfor seng".into(),
                zone: "soverom".into(),
            }),
        )
    }

    pub fn note(event_id: &str, org: &str, resident: u32, in_response_to: &str) -> pb::Event {
        base(
            event_id,
            org,
            resident,
            pb::event::Payload::Note(pb::Note {
                text: "Tilsyn utført, beboer hjulpet tilbake i seng".into(),
                in_response_to: in_response_to.into(),
            }),
        )
    }
}

/// An HTTP client that trusts the dev CA (and speaks plain HTTP too).
pub fn http_client() -> Result<reqwest::Client> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let ca = std::fs::read(certs().map_err(|e| e.to_string())?.join("ca.pem"))
                .map_err(|e| e.to_string())?;
            reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(&ca).map_err(|e| e.to_string())?])
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The EPJ client a test acts as for `url`: the pull consumer named by a
/// `consumer=` parameter, else the municipality's own client from the path
/// (`/fhir/r4/{orgnr}/…`). `None` outside the FHIR API.
fn client_for(url: &str) -> Option<String> {
    if let Some(c) = url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("consumer="))
        && certs().is_ok_and(|d| d.join(format!("epj-{c}.key")).exists())
    {
        return Some(c.to_string());
    }
    let org = url.split("/fhir/r4/").nth(1)?.split(['/', '?']).next()?;
    match org {
        "958935420" => Some("oslo-epj".into()),
        "964338531" => Some("bergen-epj".into()),
        _ => None,
    }
}

/// A signed `private_key_jwt` assertion of dev EPJ client `client` for `aud`.
pub fn assertion(client: &str, aud: &str) -> Result<String> {
    let key = std::fs::read(certs()?.join(format!("epj-{client}.key")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let jti = format!(
        "{}-{}-{}",
        std::process::id(),
        now,
        JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let claims = serde_json::json!({ "iss": client, "sub": client, "aud": aud, "exp": now + 120, "iat": now, "jti": jti });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(client.to_string());
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(&key)?,
    )?)
}

/// Asks the hub at `origin` (`https://host:port`) for an access token as
/// `client`; (status, body).
pub async fn request_token(
    origin: &str,
    client: &str,
    assertion: &str,
) -> Result<(u16, serde_json::Value)> {
    let form = [
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    let body = form
        .iter()
        .fold(
            form_urlencoded::Serializer::new(String::new()),
            |mut s, (k, v)| {
                s.append_pair(k, v);
                s
            },
        )
        .finish();
    let _ = client;
    let r = http_client()?
        .post(format!("{origin}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    Ok((
        r.status().as_u16(),
        r.json().await.unwrap_or(serde_json::Value::Null),
    ))
}

/// A cached access token for `client` at `origin`.
pub async fn token(origin: &str, client: &str) -> Result<String> {
    type Cache = std::sync::Mutex<std::collections::HashMap<(String, String), (String, Instant)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (origin.to_string(), client.to_string());
    if let Some((t, at)) = cache.lock().map_err(|_| anyhow!("poisoned"))?.get(&key)
        && at.elapsed() < Duration::from_secs(120)
    {
        return Ok(t.clone());
    }
    let (status, body) = request_token(
        origin,
        client,
        &assertion(client, &format!("{origin}/oauth/token"))?,
    )
    .await?;
    let t = body["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token for {client} from {origin} ({status}): {body}"))?
        .to_string();
    cache
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .insert(key, (t.clone(), Instant::now()));
    Ok(t)
}

/// The bearer a test request to `url` carries: an EPJ client's token on
/// FHIR URLs of a TLS hub, the admin token on `/admin/`, none otherwise.
async fn bearer_for(url: &str) -> Result<Option<String>> {
    if url.contains("/admin/") {
        return Ok(Some(ADMIN_TOKEN.to_string()));
    }
    let Some(rest) = url.strip_prefix("https://") else {
        return Ok(None);
    };
    let origin = format!("https://{}", rest.split('/').next().unwrap_or_default());
    match client_for(url) {
        Some(c) if url.contains("/fhir/r4/") && !url.ends_with("/metadata") => {
            Ok(Some(token(&origin, &c).await?))
        }
        _ => Ok(None),
    }
}

/// A request builder for `url` with the right bearer token.
pub async fn authed(method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder> {
    let mut r = http_client()?.request(method, url);
    if let Some(t) = bearer_for(url).await? {
        r = r.bearer_auth(t);
    }
    Ok(r)
}

/// GETs a FHIR (or admin) URL as the right client; (status, JSON body).
pub async fn get_json(url: &str) -> Result<(u16, serde_json::Value)> {
    let r = authed(reqwest::Method::GET, url)
        .await?
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body))
}

/// Follows a search's `next` links and returns every resource, in order.
pub async fn search_all(first_url: &str) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut url = Some(first_url.to_string());
    let mut pages = 0;
    while let Some(u) = url.take() {
        let (status, b) = get_json(&u).await?;
        if status != 200 {
            bail!("GET {u} answered {status}: {b}");
        }
        for e in b["entry"].as_array().into_iter().flatten() {
            out.push(e["resource"].clone());
        }
        url = b["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
        pages += 1;
        if pages > 100_000 {
            bail!("more than 100,000 pages: the next links loop");
        }
    }
    Ok(out)
}

pub use pb::ReceiptStatus;
