//! The `knutepunkt` command: run the hub, or a demo of it, and the
//! operator's tools (dead letters, backup and restore, migrate).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use knutepunkt::config::{Config, LogFormat, Overrides};
use knutepunkt::server::Hub;

mod admin_call;
mod backup_cmd;
mod compact_cmd;
mod dlq_cmd;

use dlq_cmd::DlqAction;

// jemalloc, not glibc malloc. Measured in one `vendor-sim bench-delivery`
// run each (BENCHMARKS.md): with glibc, malloc/free were a fifth of the
// hub's CPU and its RSS grew with every event delivered (freed buffers stay
// in the per-thread arenas of the tokio and blocking threads); with
// jemalloc the pull drain ran 1.5x as fast and the hub ended at 173 MiB
// instead of 291 MiB. A solved problem, so a well-kept crate, not tuning.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "knutepunkt",
    version,
    about = "Welfare-technology integration hub: vendor events in over gRPC, FHIR R4 out to the municipality's EPJ",
    after_help = "Examples:\n  knutepunkt demo                      # a 15-second demo with a simulated vendor and EPJ\n  knutepunkt serve --config knutepunkt.example.toml\n  knutepunkt serve --data-dir /var/lib/knutepunkt --grpc-addr 0.0.0.0:50051 --http-addr 0.0.0.0:8080"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub until SIGTERM or Ctrl-C.
    #[command(
        after_help = "Examples:\n  knutepunkt serve --config /etc/knutepunkt/knutepunkt.toml\n  KNUTEPUNKT_DATA_DIR=/data knutepunkt serve --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:8080\n\nEvery config field can also be set as KNUTEPUNKT_<FIELD> (nested: KNUTEPUNKT_STORE__MIN_FREE_BYTES)."
    )]
    Serve(ServeArgs),
    /// A guided tour: starts the hub on a temporary store over real TLS,
    /// runs simulated vendors (alarm centre, home monitoring) sending
    /// alarms, readings and follow-up notes, and a simulated EPJ that reads
    /// them over FHIR and prints what it sees. Ends with a summary.
    #[command(
        after_help = "Examples:\n  knutepunkt demo\n  knutepunkt demo --duration 60 --rate 5\n  knutepunkt demo --vendors 1 --quiet-vendors\n  knutepunkt demo --mqtt-broker 127.0.0.1:1883   # MQTT sensors too (needs mqtt-gateway next to knutepunkt)"
    )]
    Demo(DemoArgs),
    /// Move a data directory written by a sled-era release (before the store
    /// became a log with consumer cursors) into today's layout. Stop the hub
    /// first. The old store is kept as `<data-dir>/store.sled-old` until you
    /// delete it.
    #[command(
        after_help = "Example:\n  knutepunkt migrate --config /etc/knutepunkt/knutepunkt.toml --data-dir /var/lib/knutepunkt\n\nThe config names the destinations whose queues move over; use the one the hub runs with."
    )]
    Migrate {
        #[arg(long, env = "KNUTEPUNKT_CONFIG")]
        config: Option<PathBuf>,
        /// The hub's data directory (holds `store/`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print the effective configuration (file + environment + flags) and exit.
    /// With `store.backend = "postgres"` also check that PostgreSQL answers
    /// and that its schema version is one this build runs on.
    #[command(after_help = "Example:\n  knutepunkt check-config --config knutepunkt.example.toml")]
    CheckConfig {
        #[arg(long, env = "KNUTEPUNKT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Make a throw-away PKI for development, the demo and tests: a dev CA,
    /// the hub's server certificate, vendor client certificates and EPJ
    /// client key pairs (JWK). Never use it in production.
    #[command(
        after_help = "Examples:\n  knutepunkt dev-certs --out dev-certs\n  knutepunkt dev-certs --out certs --vendor acme-alarm --vendor nattilsyn-as --epj-client oslo-epj --host hub.test"
    )]
    DevCerts {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// A vendor id to make a client certificate for (repeatable).
        #[arg(long = "vendor", default_values_t = ["demo-vendor".to_string(), "other-vendor".to_string()])]
        vendors: Vec<String>,
        /// A vendor id to make an already expired certificate for (repeatable; for tests).
        #[arg(long = "expired")]
        expired: Vec<String>,
        /// An EPJ client id to make a key pair for (repeatable).
        #[arg(long = "epj-client", default_values_t = ["demo-epj".to_string()])]
        epj_clients: Vec<String>,
        /// An extra DNS name or IP for the server certificate (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Dead letters: deliveries that failed for good. Talks to the running
    /// hub's admin API.
    #[command(
        after_help = "Examples:\n  knutepunkt dlq list\n  knutepunkt dlq list --destination oslo-epj --code 4.1\n  knutepunkt dlq show oslo-epj 1763868000123456\n  knutepunkt dlq replay oslo-epj 1763868000123456\n  knutepunkt dlq replay-all --destination oslo-epj --from 2026-11-23T00:00:00Z\n  knutepunkt dlq discard oslo-epj 1763868000123456 --reason \"registered by hand in the EPJ\""
    )]
    Dlq {
        #[command(flatten)]
        admin: AdminApi,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Take a consistent backup of every stored event, audit record and
    /// delivery state while the hub runs (through its admin API), or of a
    /// stopped hub's data directory. The file (mode 0600) holds national ids
    /// in clear: keep it like the data directory.
    #[command(
        after_help = "Examples:\n  knutepunkt backup --out /backup/knutepunkt-$(date +%F).kpbackup\n  knutepunkt backup --admin http://127.0.0.1:8081 --out kp.kpbackup   # token in KNUTEPUNKT_ADMIN_TOKEN\n  knutepunkt backup --data-dir /var/lib/knutepunkt --out kp.kpbackup    # hub stopped"
    )]
    Backup {
        /// The backup file to write (written as FILE.tmp, checked, then renamed).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        admin: AdminApi,
        /// Back up this stopped hub's data directory instead of asking the admin API.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Restore a backup into a new, empty data directory; start the hub on
    /// it with the same destinations and each continues from its floor.
    #[command(
        after_help = "Example:\n  knutepunkt restore --from /backup/knutepunkt-2026-12-01.kpbackup --data-dir /var/lib/knutepunkt-restored"
    )]
    Restore {
        /// The backup file (`knutepunkt backup --out`).
        #[arg(long)]
        from: PathBuf,
        /// The new data directory: must not exist or be empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Give back the disk space of events that retention removed: the
    /// running hub rewrites its store's tables (through its admin API; reads
    /// and writes go on). Takes minutes on a big store; run it at a quiet
    /// hour. Shows which part it is on and what each went from and to.
    #[command(
        after_help = "Examples:\n  knutepunkt compact                                   # admin API on 127.0.0.1:8081, token in KNUTEPUNKT_ADMIN_TOKEN\n  KNUTEPUNKT_ADMIN_TOKEN=\"$(cat /etc/knutepunkt/admin.token)\" knutepunkt compact --admin http://10.0.0.5:8081"
    )]
    Compact {
        #[command(flatten)]
        admin: AdminApi,
    },
    /// Exit 0 when a URL answers 2xx, else 1: a health check for container
    /// images that have no curl.
    #[command(
        after_help = "Examples:\n  knutepunkt probe https://localhost:8080/readyz --ca /etc/knutepunkt/tls/ca.pem\n  knutepunkt probe http://127.0.0.1:8080/readyz     # an --insecure-dev hub"
    )]
    Probe {
        /// URL to GET, e.g. https://localhost:8080/readyz
        url: String,
        /// PEM file with the CA that signed the hub's certificate, when it is
        /// not publicly trusted (e.g. from `knutepunkt dev-certs`).
        #[arg(long, env = "KNUTEPUNKT_PROBE_CA")]
        ca: Option<PathBuf>,
    },
}

/// `knutepunkt serve`'s flags: the config file, and what overrides it.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (see knutepunkt.example.toml); optional.
    #[arg(long, env = "KNUTEPUNKT_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the embedded store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address for the vendor gRPC API, e.g. 127.0.0.1:50051.
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// Address for FHIR REST, health and metrics, e.g. 127.0.0.1:8080.
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Address for the admin API (dead letters, destinations); keep it on loopback.
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// Development only: plain gRPC/HTTP, no client certificates or
    /// tokens. Logged loudly. Never use it with real data.
    #[arg(long)]
    insecure_dev: bool,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The config file, and the flags as overrides of its settings.
    fn into_parts(self) -> (Option<PathBuf>, Overrides) {
        let flags = Overrides {
            data_dir: self.data_dir,
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            admin_addr: self.admin_addr,
            insecure_dev: self.insecure_dev.then_some(true),
            log_format: self.log_format,
        };
        (self.config, flags)
    }
}

/// `knutepunkt demo`'s flags.
#[derive(clap::Args)]
struct DemoArgs {
    /// How long the vendors send, seconds.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Events per second per vendor.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// 1: one vendor; 2: an alarm centre and a home-monitoring app.
    #[arg(long, default_value_t = 2)]
    vendors: u8,
    /// Seed: the same seed tells the same story.
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    /// Print only what the EPJ sees, not each event sent.
    #[arg(long)]
    quiet_vendors: bool,
    /// MQTT broker for simulated MQTT sensors (through mqtt-gateway, when it
    /// is next to knutepunkt); "none" to leave them out.
    #[arg(long, default_value = "127.0.0.1:1883", env = "KNUTEPUNKT_MQTT_BROKER")]
    mqtt_broker: String,
}

/// Where a running hub's admin API is and its token (`dlq`, `backup`,
/// `compact`).
#[derive(clap::Args, Debug)]
struct AdminApi {
    /// Base URL of the hub's admin API.
    #[arg(
        long,
        env = "KNUTEPUNKT_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    admin: String,
    /// The admin API's bearer token (its SHA-256 is admin.token_sha256 in
    /// the hub's config).
    #[arg(long, env = "KNUTEPUNKT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

/// `RUST_LOG`, or `default` without it, with one cap that no setting lifts:
/// tokio-postgres logs every statement's parameters (national ids, FHIR
/// JSON) at DEBUG, so it never logs below INFO.
fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A directive for the same target replaces one from RUST_LOG.
    ["tokio_postgres=info", "tokio_postgres::query=info"]
        .into_iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, tracing_subscriber::EnvFilter::add_directive)
}

/// Logs to stderr and, when `traces` is given, this crate's spans to OTLP.
fn init_logging(format: LogFormat, traces: Option<&opentelemetry_sdk::trace::SdkTracerProvider>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = log_filter("info,fjall=warn,lsm_tree=warn,h2=warn,tower=warn,hyper=warn");
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(traces.map(knutepunkt::telemetry::layer))
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let (config, flags) = args.into_parts();
            serve(config.as_deref(), &flags).await?;
        }
        Command::Dlq { admin, action } => {
            dlq_cmd::dlq(&admin.admin, admin.admin_token.as_deref(), action).await?
        }
        Command::Backup {
            out,
            admin,
            data_dir,
        } => {
            backup_cmd::backup(
                &out,
                &admin.admin,
                admin.admin_token.as_deref(),
                data_dir.as_deref(),
            )
            .await?
        }
        Command::Restore { from, data_dir } => backup_cmd::run_restore(&from, &data_dir)?,
        Command::DevCerts {
            out,
            vendors,
            expired,
            epj_clients,
            hosts,
        } => {
            dev_certs(knutepunkt::devcerts::DevCerts {
                out,
                vendors,
                expired_vendors: expired,
                epj_clients,
                hosts,
            })?;
        }
        Command::Demo(args) => demo(args).await?,
        Command::Compact { admin } => {
            compact_cmd::compact(&admin.admin, admin.admin_token.as_deref()).await?
        }
        Command::Probe { url, ca } => {
            probe(&url, ca.as_deref()).await?;
        }
        Command::Migrate { config, data_dir } => migrate_cmd(config.as_deref(), data_dir)?,
        Command::CheckConfig { config } => check_config(config.as_deref()).await?,
    }
    Ok(())
}

/// `knutepunkt demo`: the guided tour, with the hub's log kept to warnings.
async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    // The demo prints its own story; keep the hub's log to warnings.
    let filter = log_filter("warn,knutepunkt::server=error");
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    knutepunkt::demo::run(knutepunkt::demo::DemoOptions {
        duration: std::time::Duration::from_secs(args.duration),
        rate: args.rate,
        vendors: args.vendors,
        seed: args.seed,
        show_vendor_lines: !args.quiet_vendors,
        mqtt_broker: (args.mqtt_broker != "none").then_some(args.mqtt_broker),
        ..knutepunkt::demo::DemoOptions::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("demo failed: {e}"))
}

/// `knutepunkt migrate`: loads the config (for the data directory and the
/// destinations) and moves the sled-era store over.
fn migrate_cmd(config: Option<&std::path::Path>, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let overrides = Overrides {
        data_dir,
        ..Overrides::default()
    };
    let cfg = Config::load(config, &overrides)?;
    // The new store must pass the hub's private-files check.
    knutepunkt::private_files::restrict_umask();
    migrate(&cfg)
}

/// `knutepunkt check-config`: prints the effective configuration, and
/// checks PostgreSQL when it is the backend.
async fn check_config(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cfg = Config::load(config, &Overrides::default())?;
    println!("{}", pretty_json(&cfg)?);
    if cfg.store.backend == knutepunkt::config::StoreBackend::Postgres {
        check_postgres(&cfg).await?;
    }
    Ok(())
}

/// `knutepunkt serve`: loads the config, starts logging (and traces), and
/// serves until SIGTERM/Ctrl-C.
async fn serve(config: Option<&std::path::Path>, flags: &Overrides) -> anyhow::Result<()> {
    let cfg = Config::load(config, flags)?;
    let traces = knutepunkt::telemetry::provider(&cfg.telemetry)?;
    init_logging(cfg.log_format, traces.as_ref());
    if let Some(e) = cfg
        .telemetry
        .otlp_endpoint
        .as_deref()
        .filter(|_| traces.is_some())
    {
        tracing::info!(endpoint = %knutepunkt::telemetry::traces_url(e), "exporting traces over OTLP/HTTP");
    }
    let hub = Hub::start(cfg)
        .await
        .context("knutepunkt could not start")?;
    let served = hub.run_until(shutdown_signal()).await;
    if let Some(t) = traces {
        // Sends what is buffered; a collector that is gone only costs the timeout.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    Ok(served?)
}

/// `knutepunkt dev-certs`: writes the files and says how to use them.
fn dev_certs(opts: knutepunkt::devcerts::DevCerts) -> anyhow::Result<()> {
    let files = knutepunkt::devcerts::generate(&opts)?;
    for f in &files {
        println!("wrote {}", f.display());
    }
    println!(
        "\nUse them with:\n[tls]\ncert_file = \"{0}/server.pem\"\nkey_file = \"{0}/server.key\"\nvendor_ca_file = \"{0}/ca.pem\"",
        opts.out.display()
    );
    Ok(())
}

/// `knutepunkt probe`: succeeds when `url` answers 2xx within 3 s.
async fn probe(url: &str, ca: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut client = reqwest::Client::builder();
    if let Some(ca) = ca {
        let pem =
            std::fs::read(ca).with_context(|| format!("cannot read --ca {}", ca.display()))?;
        client = client.tls_certs_merge([reqwest::Certificate::from_pem(&pem)?]);
    }
    let r = client
        .build()?
        .get(url)
        .timeout(std::time::Duration::from_secs(3))
        .send()
        .await
        .with_context(|| format!("{url} did not answer"))?;
    if !r.status().is_success() {
        anyhow::bail!("{url} answered {}", r.status());
    }
    Ok(())
}

/// `knutepunkt migrate`: renames `store/` to `store.sled-old`, moves it
/// into a new `store/`, and says what moved.
fn migrate(cfg: &Config) -> anyhow::Result<()> {
    let store = cfg.data_dir.join("store");
    let old = cfg.data_dir.join("store.sled-old");
    if !store.join("conf").is_file() {
        anyhow::bail!(
            "{} holds no sled-era store (no conf file): nothing to migrate",
            store.display()
        );
    }
    if old.exists() {
        anyhow::bail!(
            "{} exists from an earlier attempt: remove the half-made {} and rename {} back to store, then run again",
            old.display(),
            store.display(),
            old.display()
        );
    }
    std::fs::rename(&store, &old)
        .with_context(|| format!("cannot rename {} to {}", store.display(), old.display()))?;
    eprintln!("migrating {} → {} …", old.display(), store.display());
    let report = knutepunkt::store::embedded::migrate::from_sled(
        &old,
        &store,
        &cfg.consumer_specs(),
        &mut |n| eprint!("\r  {n} events moved"),
    )
    .with_context(|| {
        format!(
            "migration failed; the old store is untouched in {}",
            old.display()
        )
    })?;
    eprintln!();
    println!(
        "moved {} events, {} audit records, {} used assertion ids, {} dead letters, {} destination queues; when the hub runs well, delete {}",
        report.events,
        report.audit_records,
        report.used_jtis,
        report.dead_letters,
        report.consumers,
        old.display()
    );
    Ok(())
}

/// The configuration as JSON, with a password in `store.url` blanked.
fn pretty_json(cfg: &Config) -> anyhow::Result<String> {
    let mut shown = cfg.clone();
    if let Some(url) = &shown.store.url {
        shown.store.url = Some(knutepunkt::store::postgres::redact_url(url));
    }
    serde_json::to_string_pretty(&shown).context("cannot print the configuration")
}

/// `check-config` with `backend = "postgres"`: can the hub reach the
/// database, and is its schema one this build runs on? Changes nothing.
async fn check_postgres(cfg: &Config) -> anyhow::Result<()> {
    use knutepunkt::store::postgres::{pg_config, schema};
    let pg = pg_config(&cfg.postgres_options())?;
    let st = schema::status(&pg).await?;
    eprintln!(
        "PostgreSQL {} at {}: reachable",
        st.server_version, st.target
    );
    match st.applied {
        None => eprintln!(
            "schema: none yet; the hub creates version {} at start",
            st.known
        ),
        Some(v) if v == st.known => eprintln!("schema: version {v}, current"),
        Some(v) if v < st.known => eprintln!(
            "schema: version {v}; the hub migrates it to {} at start",
            st.known
        ),
        Some(v) => anyhow::bail!(
            "schema version {v} is newer than this build knows ({}); run the knutepunkt version that wrote it",
            st.known
        ),
    }
    Ok(())
}
