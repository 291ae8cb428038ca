//! A private PostgreSQL server for one test: `initdb` into a temporary
//! directory, `pg_ctl start` on a free loopback port, and stop/start at the
//! test's command, so a test may crash or restart the database without
//! touching the shared one on 127.0.0.1:5432. Stopped (`-m immediate`) and
//! deleted on drop.
//!
//! The binaries are taken from `KNUTEPUNKT_TEST_PG_BIN` (a directory), else
//! the newest `/usr/lib/postgresql/*/bin`, else `PATH`. PostgreSQL refuses to
//! run as root, so as root the server runs as the `postgres` user (set on
//! the child process, no `su`/`runuser` needed); as anyone else it runs as
//! that user. Trust authentication, `fsync = on`, `synchronous_commit = on`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// A running (or stopped) private PostgreSQL cluster.
pub struct PgServer {
    bin: PathBuf,
    /// `Some((uid, gid))` when the server runs as another user than us.
    user: Option<(u32, u32)>,
    port: u16,
    dir: tempfile::TempDir,
}

/// Why a private server cannot run here: the caller passes it to
/// [`crate::harness::skip`].
#[derive(Debug)]
pub struct CannotRun(pub String);

impl PgServer {
    /// Makes and starts a cluster. `Ok(Err(_))`: it cannot run on this
    /// machine (no PostgreSQL binaries, root without a `postgres` user);
    /// `Err`: it should have run and failed (the server log is in the error).
    pub fn start() -> Result<Result<PgServer, CannotRun>> {
        let Some(bin) = find_bin() else {
            return Ok(Err(CannotRun(
                "no initdb/pg_ctl (install PostgreSQL, or set KNUTEPUNKT_TEST_PG_BIN to its bin directory)"
                    .into(),
            )));
        };
        reap_orphans(&bin);
        let dir = tempfile::Builder::new().prefix("kp-pg-").tempdir()?;
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())?;
        let me = std::fs::metadata(dir.path())?;
        let user = if std::os::unix::fs::MetadataExt::uid(&me) == 0 {
            let Some(ids) = user_ids("postgres") else {
                return Ok(Err(CannotRun(
                    "running as root and there is no `postgres` user to run the server as".into(),
                )));
            };
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))
                .context("cannot hand the server's directory to the postgres user")?;
            Some(ids)
        } else {
            None
        };
        let mut server = PgServer {
            bin,
            user,
            port: 0,
            dir,
        };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                // Only initdb's own final sync of the new files: they matter
                // for an OS crash, not for the process crashes tested here.
                "--no-sync",
            ],
        )?;
        let mut last = None;
        for _ in 0..3 {
            server.port = crate::harness::free_port()?.port();
            match server.start_again() {
                Ok(()) => return Ok(Ok(server)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once,
    /// nothing is flushed or checkpointed; the next start runs crash
    /// recovery from the WAL (what a power cut does to the server).
    pub fn crash(&self) -> Result<()> {
        self.pg_ctl(&["stop", "-m", "immediate"])
    }

    /// `pg_ctl start` on the same port; returns once it takes connections.
    pub fn start_again(&self) -> Result<()> {
        let sock = self.dir.path().display().to_string();
        let opts = format!(
            "-p {} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
             -c max_connections=100 -c shared_buffers=32MB",
            self.port
        );
        self.pg_ctl(&["start", "-t", "30", "-l", &self.log_path(), "-o", &opts])
    }

    /// `pg_ctl restart -m fast`: sessions are ended, a shutdown checkpoint,
    /// a start.
    pub fn restart_fast(&self) -> Result<()> {
        self.pg_ctl(&["restart", "-m", "fast", "-t", "30", "-l", &self.log_path()])
    }

    /// Turns TLS on with the server certificate `cert` and its key `key`
    /// (PEM files, e.g. from `knutepunkt dev-certs`) and restarts. Plain
    /// connections stay allowed, so a test can see which ones used TLS in
    /// `pg_stat_ssl`.
    pub fn enable_tls(&self, cert: &Path, key: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.dir.path().join("data");
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let dest = data.join(to);
            std::fs::copy(from, &dest)
                .with_context(|| format!("cannot copy {} into the cluster", from.display()))?;
            // PostgreSQL refuses a key others can read, and must own it.
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(&dest, Some(uid), Some(gid))?;
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text)?;
        self.restart_fast()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log_path(&self) -> String {
        self.dir.path().join("server.log").display().to_string()
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let data = self.data();
        let mut all = vec!["-D", &data, "-w"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new(self.bin.join(tool));
        // PostgreSQL's tools refuse to run as root, hence the uid below.
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        if let Some((uid, gid)) = self.user {
            // std drops the supplementary groups too when it changes the uid.
            cmd.uid(uid).gid(gid);
        }
        // Output to a file, not a pipe: a server started without `-l`
        // would hold a pipe open and `output()` would wait for it forever.
        let out_path = self.dir.path().join(format!("{tool}.out"));
        let out = std::fs::File::create(&out_path)?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .with_context(|| format!("cannot run {}", self.bin.join(tool).display()))?;
        if !status.success() {
            bail!(
                "{tool} {} failed ({status}): {}\nserver log:\n{}",
                args.join(" "),
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Stopped already (a test that crashed it) is fine.
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
    }
}

/// Stops and deletes the servers of test processes that died without
/// dropping their [`PgServer`] (killed by a timeout, say): a `kp-pg-*`
/// directory whose `owner.pid` is no longer running.
fn reap_orphans(bin: &Path) {
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.path();
        let is_ours = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("kp-pg-"));
        let Some(pid) = std::fs::read_to_string(dir.join("owner.pid"))
            .ok()
            .filter(|_| is_ours)
        else {
            continue;
        };
        if Path::new("/proc").join(pid.trim()).exists() {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let mut cmd = Command::new(bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if std::os::unix::fs::MetadataExt::uid(&meta) != 0 {
            cmd.uid(std::os::unix::fs::MetadataExt::uid(&meta))
                .gid(std::os::unix::fs::MetadataExt::gid(&meta));
        }
        let _ = cmd.status();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The directory holding `initdb` and `pg_ctl`.
fn find_bin() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("KNUTEPUNKT_TEST_PG_BIN") {
        return Some(PathBuf::from(d)).filter(|d| has(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has(d))
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Some(d);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|d| has(d))
}

/// `(uid, gid)` of `name`, from `getent passwd` (any NSS source) or
/// `/etc/passwd`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let line = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/passwd")
                .ok()?
                .lines()
                .find_map(|l| l.starts_with(&format!("{name}:")).then(|| l.to_string()))
        })?;
    let mut f = line.trim().split(':');
    let (_, _, uid, gid) = (f.next()?, f.next()?, f.next()?, f.next()?);
    Some((uid.parse().ok()?, gid.parse().ok()?))
}
