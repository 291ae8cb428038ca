//! `epj-adapter`: a stand-in for a municipality's EPJ import endpoint, so
//! the hub's push delivery can be tested and measured against a real HTTPS
//! peer that writes files, honours conditional create, and fails on demand.
//! See `knutepunkt_adapters::epj` for the behaviour.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use knutepunkt_adapters::epj::layout::Layout;
use knutepunkt_adapters::epj::{Adapter, Config, Identity, Mode};

const AFTER_HELP: &str = "\
Example (self-signed certificate, free port, files under /tmp/epj/out):
  epj-adapter --listen 127.0.0.1:0 --self-signed /tmp/epj/tls --out /tmp/epj/out
  # stdout: listening on https://127.0.0.1:PORT
  # trust /tmp/epj/tls/cert.pem in the hub, push to https://127.0.0.1:PORT/fhir

FHIR endpoint:
  POST /fhir (or /fhir/), Content-Type: application/fhir+json, a transaction
  Bundle of conditional creates (request.method POST, request.url <Type>,
  request.ifNoneExist identifier=<system>|<value>). Answers 200 with a
  transaction-response Bundle: per entry \"201 Created\" (file written) or
  \"200 OK\" (identifier already received), location <Type>/<id>/_history/1.
  400 malformed, 409 id already used by another identifier, 415 wrong
  Content-Type; all with an OperationOutcome. All-or-nothing per Bundle.

Admin API (same listener, never affected by the mode):
  GET    /_admin/mode     current mode
  POST   /_admin/mode     {\"mode\":\"ok\"} | {\"mode\":\"down\"}
                          | {\"mode\":\"slow\",\"delay_ms\":500} | {\"mode\":\"error500\"}
                          | {\"mode\":\"error429\",\"retry_after_secs\":5}
                          | {\"mode\":\"reject422\",\"reject_codes\":[\"4.1\"]}
  GET    /_admin/stats    counters (requests_total, fhir_connections, dropped, by_status,
                          bundles_total, entries_total, max_bundle_entries, created,
                          duplicates, rejected_entries)
  DELETE /_admin/stats    zero the counters (answers the values before)

  curl --cacert /tmp/epj/tls/cert.pem -X POST https://127.0.0.1:PORT/_admin/mode \\
       -d '{\"mode\":\"error429\",\"retry_after_secs\":2}'

Files in --out: <Type>-<id>.json per resource (or, with --layout ndjson,
bundle-<n>.ndjson per Bundle, a resource per line), received.log (one JSON line per
created resource: received, type, id, subject pseudonym, priority, codes),
.identifier-index.jsonl and .pseudonym-key (hidden; keep them with the files).";

/// A municipality's EPJ import endpoint, simulated: receives the hub's FHIR
/// transaction Bundles over HTTPS and writes one file per resource.
#[derive(Debug, Parser)]
#[command(name = "epj-adapter", version, after_help = AFTER_HELP)]
struct Args {
    /// Address to listen on. Port 0 picks a free port; the first stdout line
    /// is always `listening on https://ADDR`.
    #[arg(long, env = "EPJ_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,

    /// Folder that receives one `<Type>-<id>.json` per created resource.
    #[arg(long, env = "EPJ_OUT")]
    out: PathBuf,

    /// Make (or reuse) a self-signed certificate for 127.0.0.1/localhost as
    /// DIR/cert.pem and DIR/key.pem; give DIR/cert.pem to the hub to trust.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_cert", "tls_key"],
          required_unless_present_all = ["tls_cert", "tls_key"])]
    self_signed: Option<PathBuf>,

    /// Certificate chain (PEM).
    #[arg(long, env = "EPJ_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "EPJ_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Mode at start: ok, down, slow, error500, error429, reject422. Change it
    /// at run time with POST /_admin/mode.
    #[arg(long, default_value = "ok")]
    mode: String,

    /// Delay of every answer in mode slow, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    delay_ms: u64,

    /// Retry-After in mode error429, in seconds.
    #[arg(long, default_value_t = 1)]
    retry_after_secs: u64,

    /// In mode reject422, reject entries with this code (a Communication
    /// reasonCode or an Observation code); repeat for more. None: reject all.
    #[arg(long = "reject-code", value_name = "CODE")]
    reject_codes: Vec<String>,

    /// Sync each file and the folder to disk before answering (slower; off
    /// by default since the adapter is a test double).
    #[arg(long)]
    fsync: bool,

    /// How new resources are written: `files` (one <Type>-<id>.json each) or
    /// `ndjson` (one bundle-<n>.ndjson per Bundle, a resource per line; much
    /// faster, for load tests). Example: --layout ndjson
    #[arg(long, value_enum, default_value_t = Layout::Files)]
    layout: Layout,

    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,

    /// Key for the subject pseudonyms in received.log (default: a random key
    /// kept in OUT/.pseudonym-key).
    #[arg(long, env = "EPJ_PSEUDONYM_KEY", hide_env_values = true)]
    pseudonym_key: Option<String>,

    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    knutepunkt_adapters::logging::init(&args.log)?;

    let mode = Mode::from_flags(
        &args.mode,
        args.delay_ms,
        args.retry_after_secs,
        args.reject_codes.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let identity = match (args.self_signed, args.tls_cert, args.tls_key) {
        (Some(dir), _, _) => Identity::SelfSigned(dir),
        (None, Some(cert), Some(key)) => Identity::Files { cert, key },
        _ => anyhow::bail!("give either --self-signed DIR or both --tls-cert and --tls-key"),
    };
    let cfg = Config {
        listen: args.listen,
        out: args.out,
        identity,
        mode,
        fsync: args.fsync,
        layout: args.layout,
        max_body_bytes: args.max_body_bytes,
        pseudonym_key: args.pseudonym_key,
    };

    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let adapter = Adapter::bind(cfg).await?;
        let addr = adapter.local_addr;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on https://{addr}")?;
            out.flush()?;
        }
        tracing::info!(%addr, cert = %adapter.cert_path.display(), "EPJ adapter ready");
        adapter.run(knutepunkt_adapters::signal::shutdown()).await;
        tracing::info!("EPJ adapter stopped");
        Ok(())
    })
}
