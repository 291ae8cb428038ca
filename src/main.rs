//! The `knutepunkt` command: run the hub, or a demo of it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use knutepunkt::config::{Config, LogFormat, Overrides};
use knutepunkt::server::Hub;

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
    Serve {
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
        /// Log format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Print the effective configuration (file + environment + flags) and exit.
    #[command(after_help = "Example:\n  knutepunkt check-config --config knutepunkt.example.toml")]
    CheckConfig {
        #[arg(long, env = "KNUTEPUNKT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Exit 0 when a URL answers 2xx, else 1: a health check for container
    /// images that have no curl.
    #[command(after_help = "Example:\n  knutepunkt probe http://127.0.0.1:8080/readyz")]
    Probe {
        /// URL to GET, e.g. http://127.0.0.1:8080/readyz
        url: String,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sled=warn,h2=warn,tower=warn,hyper=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
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
        Command::Serve {
            config,
            data_dir,
            grpc_addr,
            http_addr,
            log_format,
        } => {
            let flags = Overrides {
                data_dir,
                grpc_addr,
                http_addr,
                log_format,
            };
            let cfg = Config::load(config.as_deref(), &flags)?;
            init_logging(cfg.log_format);
            let hub = Hub::start(cfg)
                .await
                .context("knutepunkt could not start")?;
            hub.run_until(shutdown_signal()).await?;
        }
        Command::Probe { url } => {
            let r = reqwest::Client::new()
                .get(&url)
                .timeout(std::time::Duration::from_secs(3))
                .send()
                .await
                .with_context(|| format!("{url} did not answer"))?;
            if !r.status().is_success() {
                anyhow::bail!("{url} answered {}", r.status());
            }
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(config.as_deref(), &Overrides::default())?;
            println!("{}", pretty_json(&cfg)?);
        }
    }
    Ok(())
}

fn pretty_json(cfg: &Config) -> anyhow::Result<String> {
    serde_json::to_string_pretty(cfg).context("cannot print the configuration")
}
