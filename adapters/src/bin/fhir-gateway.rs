//! `fhir-gateway`: where home-monitoring platforms POST FHIR R4
//! Observations; they reach the hub as events over gRPC with the platform's
//! vendor certificate. See `knutepunkt_adapters::fhirgw` for the behaviour.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use knutepunkt_adapters::fhirgw::{DEFAULT_LISTEN, FileConfig, Gateway};

const AFTER_HELP: &str = "\
Example (dev certificates from `knutepunkt dev-certs --vendor acme --out certs`):
  cat > gw.toml <<EOF
  [tls]
  cert_file = \"certs/server.pem\"        # the gateway's own certificate
  key_file = \"certs/server.key\"
  client_ca_file = \"certs/ca.pem\"       # platforms' client certificates chain to this
  [hub]
  addr = \"127.0.0.1:50051\"              # the hub's gRPC listener
  ca_file = \"certs/ca.pem\"
  [[platforms]]
  id = \"acme\"                           # SAN URI urn:knutepunkt:vendor:acme of its certificate
  municipalities = [\"958935420\"]
  hub_cert_file = \"certs/vendor-acme.pem\" # what the gateway presents to the hub for it
  hub_key_file = \"certs/vendor-acme.key\"
  EOF
  fhir-gateway --config gw.toml --listen 127.0.0.1:8445
  # stdout: listening on https://127.0.0.1:8445

  curl --cacert certs/ca.pem --cert certs/vendor-acme.pem --key certs/vendor-acme.key \\
       -H 'Content-Type: application/fhir+json' \\
       https://localhost:8445/fhir/r4/958935420/Observation -d @spo2.json
  # 201 Created, Location: Observation/<id>; the same POST again: 200 OK, same Location

A platform without a client certificate (private_key_jwt, as at the hub):
  public_url = \"https://gw.kommune.no:8445\"   # top of the file; aud = <public_url>/oauth/token
  [[platforms]]  ... jwk_file = \"nordic-rpm.jwk.json\"   # its public key (EC P-256 or RSA)
  POST /oauth/token  grant_type=client_credentials&client_assertion_type=
      urn:ietf:params:oauth:client-assertion-type:jwt-bearer&client_assertion=<JWT>
  -> {\"access_token\": ...}; then Authorization: Bearer <token> on the POSTs below

Endpoints (client certificate, or a bearer token from /oauth/token):
  POST /fhir/r4/{orgnr}/Observation   one Observation -> 201/200 + Location, or an
                                      OperationOutcome naming the element (4xx)
  POST /fhir/r4/{orgnr}               a transaction or batch Bundle -> 200 with a
                                      transaction-response/batch-response, one verdict
                                      per entry: 201 Created / 200 OK with location
                                      Observation/<id>, or 4xx/503 with an outcome

Observations: status final; code MDC (urn:iso:std:iso:11073:10101) or LOINC, e.g.
150456 SpO2, 149530/149546 pulse rate, 150020 blood pressure with components
150021/150022, 188736 weight, 150364 temperature, 151562 respiration rate,
160184/160188 glucose; valueQuantity (or component[].valueQuantity) with a UCUM
unit in code (system http://unitsofmeasure.org) or unit; effectiveDateTime with
time zone; subject.identifier with the fnr/D-nummer/FH-nummer OID (or a reference to
a Patient entry); device.identifier.value (or a reference to a Device entry).
Repeats are harmless: the event id comes from Observation.identifier, else from
the content and device.

Certificates: [tls] cert_file, key_file and client_ca_file are reloaded when a file
changes (checked every 2 s) or on SIGHUP (kill -HUP <pid>); open connections keep
theirs. The platforms' hub_cert_file/hub_key_file are read at start.";

/// FHIR R4 gateway for home-monitoring platforms: receives Observations over
/// HTTPS (mutual TLS) and submits them to the hub over gRPC.
#[derive(Debug, Parser)]
#[command(name = "fhir-gateway", version, after_help = AFTER_HELP)]
struct Args {
    /// The configuration file (TOML): [tls], [hub] and one [[platforms]]
    /// per platform.
    #[arg(long, env = "FHIR_GATEWAY_CONFIG", value_name = "FILE")]
    config: PathBuf,

    /// Address to listen on (overrides `listen` in the file). Port 0 picks a
    /// free port; the first stdout line is always `listening on https://ADDR`.
    #[arg(long, env = "FHIR_GATEWAY_LISTEN")]
    listen: Option<SocketAddr>,

    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    knutepunkt_adapters::logging::init(&args.log)?;

    let cfg = FileConfig::load(&args.config)?;
    let listen = match (args.listen, cfg.listen) {
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => DEFAULT_LISTEN
            .parse()
            .context("the default listen address")?,
    };
    let platforms = cfg.platforms.len();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let gw = Gateway::bind(cfg, listen).await?;
        let addr = gw.local_addr;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on https://{addr}")?;
            out.flush()?;
        }
        tracing::info!(%addr, platforms, "FHIR gateway ready");
        gw.run(knutepunkt_adapters::signal::shutdown()).await?;
        tracing::info!("FHIR gateway stopped");
        Ok(())
    })
}
