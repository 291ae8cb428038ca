//! `knutepunkt-mock`: a strict local hub for vendor developers (see
//! `knutepunkt_adapters::kit::mock`). This file is the command line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use knutepunkt::config::{TlsConfig, VendorConfig, VendorIdentity};
use knutepunkt::domain::{Orgnr, VendorId};
use knutepunkt::ingest::{Identify, VendorPolicy};
use knutepunkt::proto::v1::vendor_ingest_service_server::VendorIngestServiceServer;
use knutepunkt_adapters::kit::mock::{Misbehave, Mock, Setup, Violate};
use tokio_util::sync::CancellationToken;

const AFTER_HELP: &str = "\
Every event is checked by the hub's own code, so what the mock refuses the
hub refuses too, with the same message. Nothing is stored on disk. Each event
prints one line (with the fix for a refusal); Ctrl-C, --max-events or SIGTERM
prints a summary, including whether events answered UNAVAILABLE were resent.

Examples:
  # Plain gRPC on localhost for a first try (no certificates):
  knutepunkt-mock --vendor acme-alarm --municipality 958935420

  # Mutual TLS as in production, with the files of `knutepunkt dev-certs`:
  knutepunkt dev-certs --vendor acme-alarm --out certs
  knutepunkt-mock --cert certs/server.pem --key certs/server.key --ca certs/ca.pem \\
      --vendor acme-alarm --municipality 958935420 --listen 127.0.0.1:50051

  # Test your retry logic: 30 % UNAVAILABLE, 200 ms answers, streams dropped
  # after 5 events; stop after 100 events and print the summary:
  knutepunkt-mock --fail-rate 0.3 --delay-ms 200 --drop-stream-after 5 --max-events 100

  # Then run the conformance scenario against it:
  conformance run --target 127.0.0.1:50051 --plain";

#[derive(Parser, Debug)]
#[command(
    name = "knutepunkt-mock",
    version,
    about = "A strict local Knutepunkt hub (VendorIngestService) for vendor developers: checks every event with the hub's rules, stores nothing",
    after_help = AFTER_HELP
)]
struct Args {
    /// Address to listen on (port 0: any free port; the first line says which).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Server certificate (PEM). With --key and --ca: mutual TLS, clients
    /// must present a certificate from --ca naming --vendor.
    #[arg(long, value_name = "FILE", requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// Private key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["cert", "ca"])]
    key: Option<PathBuf>,
    /// CA (PEM) that signs vendor client certificates.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// Your vendor system id (as in your certificate's SAN URI
    /// urn:knutepunkt:vendor:<id>). Without TLS every caller is this vendor.
    #[arg(long, default_value = "demo-vendor", value_name = "ID")]
    vendor: String,
    /// A municipality (orgnr) in your agreement; repeat for more.
    #[arg(long = "municipality", value_name = "ORGNR", default_values_t = [knutepunkt::sim::OSLO.to_string(), knutepunkt::sim::BERGEN.to_string()])]
    municipalities: Vec<String>,
    /// Largest event your agreement allows, bytes.
    #[arg(long, default_value_t = 65_536)]
    max_message_bytes: usize,
    /// Events per second your agreement allows (token bucket).
    #[arg(long, default_value_t = 20_000)]
    rate_per_sec: u32,
    /// Burst of the token bucket.
    #[arg(long, default_value_t = 40_000)]
    burst: u32,
    /// Streams open at once your agreement allows.
    #[arg(long, default_value_t = 16)]
    max_streams: u32,
    /// How far ahead of the mock's clock occurred_at may be, seconds.
    #[arg(long, default_value_t = 300)]
    max_future_skew_secs: u64,
    /// Answer this share of events (0.0-1.0) UNAVAILABLE without looking at them.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    fail_rate: f64,
    /// Seed for --fail-rate, for a reproducible run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Wait this long before each answer (test your timeouts).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    delay_ms: u64,
    /// End every SubmitStream with UNAVAILABLE after this many events.
    #[arg(long, value_name = "N")]
    drop_stream_after: Option<u64>,
    /// Stop after this many events and print the summary.
    #[arg(long, value_name = "N")]
    max_events: Option<u64>,
    /// Break a contract rule on purpose (to check that the conformance kit
    /// notices); repeat for more.
    #[arg(long, value_enum, value_name = "RULE")]
    violate: Vec<Violate>,
}

fn setup(a: &Args) -> Result<Setup> {
    if !(0.0..=1.0).contains(&a.fail_rate) {
        bail!("--fail-rate must be between 0.0 and 1.0");
    }
    for m in &a.municipalities {
        Orgnr::parse(m).map_err(|e| anyhow::anyhow!("--municipality {m}: {e}"))?;
    }
    let vendor = VendorConfig {
        id: a.vendor.clone(),
        municipalities: a.municipalities.clone(),
        max_message_bytes: a.max_message_bytes,
        max_streams: a.max_streams,
        rate_per_sec: a.rate_per_sec,
        burst: a.burst,
    };
    let policy = Arc::new(VendorPolicy::new(&vendor));
    let identify = a.cert.is_some().then(|| Identify::Certificate {
        from: VendorIdentity::SanUri,
        vendors: HashMap::from([(a.vendor.clone(), policy.clone())]),
    });
    Ok(Setup {
        identify,
        plain_caller: (VendorId(a.vendor.clone()), policy),
        max_future: chrono::Duration::seconds(a.max_future_skew_secs as i64),
        misbehave: Misbehave {
            fail_rate: a.fail_rate,
            seed: a.seed,
            delay: Duration::from_millis(a.delay_ms),
            drop_stream_after: a.drop_stream_after,
        },
        violate: a.violate.clone(),
        max_events: a.max_events,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let mock = Mock::new(setup(&a)?);
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let local = listener.local_addr()?;
    let stop = CancellationToken::new();
    let router = tonic::transport::Server::builder().add_service(
        VendorIngestServiceServer::new(mock.clone()).max_decoding_message_size(256 * 1024),
    );
    let server: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> = match (
        &a.cert, &a.key, &a.ca,
    ) {
        (Some(cert), Some(key), Some(ca)) => {
            let tls = TlsConfig::files(cert.clone(), key.clone(), ca.clone());
            let configs = knutepunkt::tls::Configs::load(&tls)
                .map_err(|e| anyhow::anyhow!("TLS files: {e}"))?;
            let rx = knutepunkt::tls::accept_loop(listener, configs.grpc, "grpc", stop.clone());
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|(s, _)| Ok::<_, std::io::Error>(s));
            println!(
                "knutepunkt-mock listening on {local} (mutual TLS; vendor {:?}, municipalities {})",
                a.vendor,
                a.municipalities.join(", ")
            );
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()))
        }
        _ => {
            eprintln!(
                "WARNING: knutepunkt-mock serves PLAIN gRPC without TLS: every caller is vendor {:?}. \
                     Local development only; the real hub always requires mutual TLS.",
                a.vendor
            );
            println!(
                "knutepunkt-mock listening on {local} (plain, no TLS; vendor {:?}, municipalities {})",
                a.vendor,
                a.municipalities.join(", ")
            );
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()))
        }
    };
    let server = tokio::spawn(server);
    let reason = tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = sigterm() => "SIGTERM",
        () = mock.finished() => "--max-events reached",
    };
    stop.cancel();
    // In-flight calls get a moment; the summary comes regardless.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    println!("stopping ({reason})");
    print!("{}", mock.tally().summary());
    Ok(())
}

#[cfg(unix)]
async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn sigterm() {
    std::future::pending().await
}
