//! `knutepunkt demo`: the whole loop on one screen in ~15 seconds.
//!
//! Why it exists: someone new to the hub (a municipality's IT staff, a
//! vendor, a reviewer) should see what it does without configuring
//! anything. [`run`] starts a hub in-process on a temporary data directory
//! and free loopback ports, lets one or two simulated vendors ([`crate::sim`])
//! send a realistic, human-paced mix of alarms, readings and follow-up notes
//! over gRPC, and lets a simulated EPJ pull what was stored over FHIR REST
//! (searchset Bundles, `next` links, a `_lastUpdated=gt…` watermark), printing
//! one line per resource. It ends with a summary and shuts the hub down.
//!
//! With an MQTT broker at [`DemoOptions::mqtt_broker`], simulated MQTT
//! sensors send through the real `mqtt-gateway` too ([`mqtt`]).
//!
//! The output never contains a national id: people are shown as
//! "resident #3 (Oslo)" via [`crate::sim::Population::label`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Local, Utc};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::proto::client::EventClient;
use crate::proto::v1::{Receipt, ReceiptStatus};
use crate::server::Hub;
use crate::sim::{self, GenConfig, Generator, Mix, Population};

mod epj;
mod mqtt;
mod pki;

use epj::Epj;
use pki::DemoPki;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the demo does. `Default` is the 15-second tour.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the vendors send (the EPJ keeps reading a little longer to
    /// catch up). Capped at one hour.
    pub duration: Duration,
    /// Events per second per vendor; a handful so a person can read along.
    pub rate: f64,
    /// 1: one vendor sending everything; 2: an alarm centre and a
    /// home-monitoring app.
    pub vendors: u8,
    /// Seed for the residents and events: the same seed tells the same story.
    pub seed: u64,
    /// How often the simulated EPJ polls the FHIR search API.
    pub poll_interval: Duration,
    /// Print a line per event the vendors send, too (not just what the EPJ sees).
    pub show_vendor_lines: bool,
    /// MQTT broker (HOST:PORT) for the simulated MQTT sensors; `None`: none.
    pub mqtt_broker: Option<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(15),
            rate: 2.0,
            vendors: 2,
            seed: 2024,
            poll_interval: Duration::from_millis(500),
            show_vendor_lines: true,
            mqtt_broker: Some("127.0.0.1:1883".into()),
        }
    }
}

/// Counters shared by the vendors and the EPJ.
#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    accepted: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    seen_observations: AtomicU64,
    seen_communications: AtomicU64,
    loops_closed: AtomicU64,
}

/// Upper bounds that keep every loop finite whatever the options say.
const MAX_DURATION: Duration = Duration::from_secs(3600);
const MAX_RATE: f64 = 1000.0;
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_PAGES_PER_POLL: usize = 100;
const PAGE_SIZE: u32 = 50;

/// Runs the demo: hub in-process, simulated vendors over gRPC, simulated EPJ
/// over FHIR REST, a summary, then a clean shutdown. Errors say which part
/// failed; the temporary data directory is removed in every case.
pub async fn run(opts: DemoOptions) -> Result<(), BoxError> {
    run_with_summary(opts).await.map(|_| ())
}

/// What the demo counted, for tests and for callers that want the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DemoSummary {
    pub sent: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub errors: u64,
    /// Resources the simulated EPJ read over FHIR search.
    pub seen_by_epj: u64,
    /// Notes whose `inResponseTo` pointed at an alert the EPJ had already seen.
    pub loops_closed: u64,
}

/// [`run`], returning the counts it printed.
pub async fn run_with_summary(opts: DemoOptions) -> Result<DemoSummary, BoxError> {
    let duration = opts.duration.min(MAX_DURATION);
    let rate = if opts.rate.is_finite() && opts.rate > 0.0 {
        opts.rate.min(MAX_RATE)
    } else {
        DemoOptions::default().rate
    };
    let vendors = opts.vendors.clamp(1, 2);
    let poll = opts
        .poll_interval
        .clamp(Duration::from_millis(50), Duration::from_secs(10));

    let dir = tempfile::Builder::new()
        .prefix("knutepunkt-demo-")
        .tempdir()
        .map_err(|e| format!("creating a temporary data directory: {e}"))?;
    let pki = DemoPki::create(dir.path())?;
    let hub = Hub::start(pki.config(dir.path())?)
        .await
        .map_err(|e| format!("starting the hub: {e}"))?;
    let grpc = hub.grpc_addr();
    let http = hub.http_addr();

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = hub.run_until(async move {
        // A dropped sender also means stop.
        let _ = stop_rx.await;
    });

    let tour = async move {
        let setup = TourSetup {
            grpc,
            http,
            pki: &pki,
            duration,
            rate,
            vendors,
            poll,
            opts: &opts,
        };
        let result = tour(&setup).await;
        let _ = stop_tx.send(());
        result
    };

    let (served, toured) = tokio::join!(server, tour);
    // Report the demo's own failure first: it usually explains the hub's.
    let summary = toured?;
    served.map_err(|e| format!("hub stopped with an error: {e}"))?;
    drop(dir);
    Ok(summary)
}

/// What the tour runs with: the hub's addresses, the demo PKI, and the
/// options as [`run_with_summary`] clamped them.
struct TourSetup<'a> {
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    pki: &'a DemoPki,
    duration: Duration,
    rate: f64,
    vendors: u8,
    poll: Duration,
    opts: &'a DemoOptions,
}

async fn tour(t: &TourSetup<'_>) -> Result<DemoSummary, BoxError> {
    let web = epj_client(t.pki)?;
    let base = format!("https://{}", t.http);
    wait_ready(&web, &base).await?;

    let population = Arc::new(Population::demo(t.opts.seed));
    let orgs = municipalities(&population);
    intro(t, &base, &population, &orgs);
    let sensors = start_sensors(t, &population).await;
    println!();

    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let deadline = started + t.duration;
    let run = VendorRun {
        endpoint: format!("https://{}", t.grpc),
        population: &population,
        rate: t.rate,
        deadline,
        stats: &stats,
    };
    let senders = start_vendors(&run, t.pki, t.vendors, t.opts)?;

    let mut tokens = HashMap::new();
    for org in &orgs {
        tokens.insert(org.clone(), t.pki.token(&web, &base, org).await?);
    }
    let mut epj = Epj::new(web, base, orgs, population.clone(), stats.clone(), tokens);
    // Read while the vendors send.
    while Instant::now() < deadline {
        tokio::time::sleep(t.poll).await;
        if let Err(e) = epj.poll_once().await {
            println!("{}  EPJ   poll failed: {e}", clock());
        }
    }
    join_vendors(senders).await;
    if let Some(s) = sensors {
        s.stop().await;
    }
    catch_up(&mut epj, &stats, t.poll).await;

    summary(&stats, started.elapsed(), &epj);
    Ok(DemoSummary::of(&stats))
}

/// The tour's opening lines: the hub, the residents, the vendors.
fn intro(t: &TourSetup<'_>, base: &str, population: &Population, orgs: &[String]) {
    let (grpc, rate) = (t.grpc, t.rate);
    println!("Knutepunkt demo");
    println!("  hub: gRPC {grpc}, FHIR {base}/fhir/r4/{{orgnr}} (temporary data directory)");
    println!(
        "  {} synthetic residents in {}; {} vendor(s) × {rate} events/s for {} s",
        population.len(),
        orgs.iter()
            .map(|o| format!("{} ({o})", sim::municipality_name(o)))
            .collect::<Vec<_>>()
            .join(" and "),
        t.vendors,
        t.duration.as_secs()
    );
    println!("  over TLS: vendors with client certificates (mTLS), the EPJ with OAuth2 tokens");
    println!("  people are shown by pseudonym only; no national id is printed");
}

/// Starts the simulated MQTT sensors when the options name a broker.
async fn start_sensors(t: &TourSetup<'_>, population: &Population) -> Option<mqtt::Sensors> {
    let broker = t.opts.mqtt_broker.as_ref()?;
    mqtt::start(mqtt::Setup {
        broker,
        certs: &t.pki.dir,
        work: t.pki.dir.parent().unwrap_or(&t.pki.dir),
        grpc: t.grpc,
        population,
        rate: t.rate,
        duration: t.duration,
        show_lines: t.opts.show_vendor_lines,
    })
    .await
}

/// Waits for every vendor to stop, and says why one stopped early.
async fn join_vendors(senders: Vec<tokio::task::JoinHandle<Result<(), BoxError>>>) {
    for s in senders {
        match s.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => println!("{}  vendor stopped: {e}", clock()),
            Err(e) => println!("{}  vendor task failed: {e}", clock()),
        }
    }
}

impl DemoSummary {
    /// The counts `stats` holds now.
    fn of(stats: &Stats) -> DemoSummary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DemoSummary {
            sent: get(&stats.sent),
            accepted: get(&stats.accepted),
            duplicate: get(&stats.duplicate),
            rejected: get(&stats.rejected),
            errors: get(&stats.errors),
            seen_by_epj: get(&stats.seen_observations) + get(&stats.seen_communications),
            loops_closed: get(&stats.loops_closed),
        }
    }
}

/// The demo EPJ's HTTP client: trusts the demo CA only.
fn epj_client(pki: &DemoPki) -> Result<reqwest::Client, BoxError> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_certs_only([reqwest::Certificate::from_pem(&pki.ca_pem)
            .map_err(|e| format!("reading the demo CA: {e}"))?])
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?)
}

/// The municipalities the residents live in, sorted.
fn municipalities(population: &Population) -> Vec<String> {
    let mut o: Vec<String> = population
        .residents()
        .iter()
        .map(|r| r.municipality.clone())
        .collect();
    o.sort();
    o.dedup();
    o
}

/// What every simulated vendor shares.
struct VendorRun<'a> {
    endpoint: String,
    population: &'a Arc<Population>,
    rate: f64,
    deadline: Instant,
    stats: &'a Arc<Stats>,
}

/// One vendor with a balanced mix, or an alarm centre and a
/// home-monitoring vendor; each sends until the deadline.
fn start_vendors(
    run: &VendorRun<'_>,
    pki: &DemoPki,
    vendors: u8,
    opts: &DemoOptions,
) -> Result<Vec<tokio::task::JoinHandle<Result<(), BoxError>>>, BoxError> {
    let plans: Vec<(&str, Mix)> = if vendors == 1 {
        vec![("vendor", Mix::BALANCED)]
    } else {
        vec![
            ("alarm-centre", Mix::ALARM_CENTRE),
            ("home-monitoring", Mix::HOME_MONITORING),
        ]
    };
    let mut senders = Vec::new();
    for (i, (name, mix)) in plans.into_iter().enumerate() {
        let cfg = GenConfig::new(opts.seed.wrapping_add(i as u64 + 1), name, mix);
        let generator = Generator::new(run.population.clone(), cfg)?;
        let tls = pki.vendor_tls(name)?;
        senders.push(tokio::spawn(vendor(
            name,
            run.endpoint.clone(),
            tls,
            generator,
            run.rate,
            run.deadline,
            run.stats.clone(),
            opts.show_vendor_lines,
        )));
    }
    Ok(senders)
}

/// After the vendors stopped: the EPJ reads until it has seen everything
/// accepted, or `DRAIN_TIMEOUT` passes.
async fn catch_up(epj: &mut Epj, stats: &Stats, poll: Duration) {
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    loop {
        if let Err(e) = epj.poll_once().await {
            println!("{}  EPJ   poll failed: {e}", clock());
        }
        let seen = stats.seen_observations.load(Ordering::Relaxed)
            + stats.seen_communications.load(Ordering::Relaxed);
        if seen >= stats.accepted.load(Ordering::Relaxed) || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(poll).await;
    }
}

async fn wait_ready(web: &reqwest::Client, base: &str) -> Result<(), BoxError> {
    let until = Instant::now() + READY_TIMEOUT;
    let url = format!("{base}/readyz");
    loop {
        match web.get(&url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(r) => {
                return Err(format!("hub not ready after 15 s: {url} says {}", r.status()).into());
            }
            Err(e) => return Err(format!("hub not ready after 15 s: {e}").into()),
        }
    }
}

/// One simulated vendor: sends at a steady, human-paced rate until the
/// deadline, one unary Submit at a time, and prints what came back.
#[allow(clippy::too_many_arguments)]
async fn vendor(
    name: &'static str,
    endpoint: String,
    tls: tonic::transport::ClientTlsConfig,
    mut generator: Generator,
    rate: f64,
    deadline: Instant,
    stats: Arc<Stats>,
    show: bool,
) -> Result<(), BoxError> {
    let channel = tonic::transport::Channel::from_shared(endpoint)
        .map_err(|e| format!("{name}: {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("{name}: TLS: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("{name}: connecting to the hub: {e}"))?;
    let mut client = EventClient::new(channel);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < deadline {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let ev = generator.next_event();
        let what = generator.population().describe(&ev);
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let mut req = tonic::Request::new(ev);
        req.set_timeout(Duration::from_secs(10));
        let answer = client.submit(req).await;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let outcome = match answer {
            Ok(r) => receipt_outcome(&stats, &r.into_inner()),
            // Unary Submit answers bad input with a status, not a receipt.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
                ) =>
            {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                format!("REJECTED {:?}: {}", status.code(), status.message())
            }
            Err(status) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                format!("ERROR {:?}: {}", status.code(), status.message())
            }
        };
        if show {
            println!(
                "{}  {name:<15} → {what}  [{outcome} in {ms:.1} ms]",
                clock()
            );
        }
    }
    Ok(())
}

fn receipt_outcome(stats: &Stats, r: &Receipt) -> String {
    match ReceiptStatus::try_from(r.status) {
        Ok(ReceiptStatus::Accepted) => {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            "ACCEPTED".into()
        }
        Ok(ReceiptStatus::Duplicate) => {
            stats.duplicate.fetch_add(1, Ordering::Relaxed);
            "DUPLICATE".into()
        }
        Ok(ReceiptStatus::Rejected) => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            format!("REJECTED {}: {}", r.error_code, r.error)
        }
        _ => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            format!("unknown receipt status {}", r.status)
        }
    }
}

fn clock() -> String {
    Local::now().format("%H:%M:%S%.3f").to_string()
}

fn summary(stats: &Stats, elapsed: Duration, epj: &Epj) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let seen = get(&stats.seen_observations) + get(&stats.seen_communications);
    println!("\nSummary after {:.1} s", elapsed.as_secs_f64());
    println!(
        "  vendors sent {}: {} accepted, {} duplicate, {} rejected, {} errors",
        get(&stats.sent),
        get(&stats.accepted),
        get(&stats.duplicate),
        get(&stats.rejected),
        get(&stats.errors)
    );
    println!(
        "  EPJ saw {seen}: {} Observations, {} Communications ({} alerts); {} notes answered an alarm it had seen",
        get(&stats.seen_observations),
        get(&stats.seen_communications),
        epj.alarms_seen(),
        get(&stats.loops_closed)
    );
    if seen < get(&stats.accepted) {
        println!("  note: the EPJ saw fewer resources than were accepted");
    }
}

#[cfg(test)]
mod tests {
    use super::epj::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_read_well() {
        let bp = json!({
            "resourceType": "Observation",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "component": [
                {"code": {"coding": [{"code": "8480-6"}]}, "valueQuantity": {"value": 142.0, "code": "mm[Hg]"}},
                {"code": {"coding": [{"code": "8462-4"}]}, "valueQuantity": {"value": 88, "code": "mm[Hg]"}}
            ]
        });
        assert_eq!(
            observation_line(&bp),
            "85354-9 blood pressure 142/88 mm[Hg]"
        );
        let spo2 = json!({
            "code": {"coding": [{"code": "59408-5"}]},
            "valueQuantity": {"value": 96, "unit": "%"}
        });
        assert_eq!(observation_line(&spo2), "59408-5 SpO2 96 %");
        let alert = json!({
            "priority": "stat",
            "reasonCode": [{"coding": [
                {"system": "http://ehelse.no/fhir/CodeSystem/vkp-alert-code-v090", "code": "4.1"},
                {"system": "http://snomed.info/sct", "code": "1912002"}
            ]}],
            "payload": [{"contentString": "Fall"}, {"contentString": "Fall detektert"}]
        });
        assert_eq!(
            alert_line(&alert),
            "alert RED 4.1 Fall · \"Fall detektert\""
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_closes_the_loop_end_to_end() {
        let opts = DemoOptions {
            duration: Duration::from_secs(3),
            rate: 8.0,
            poll_interval: Duration::from_millis(200),
            show_vendor_lines: false,
            mqtt_broker: None,
            ..DemoOptions::default()
        };
        let s = run_with_summary(opts)
            .await
            .unwrap_or_else(|e| panic!("demo failed: {e}"));
        assert!(s.sent >= 20, "{s:?}");
        assert_eq!(s.accepted, s.sent, "{s:?}");
        assert_eq!(s.seen_by_epj, s.accepted, "the EPJ sees everything: {s:?}");
        assert!(s.loops_closed > 0, "{s:?}");
    }

    #[test]
    fn watermark_and_links() {
        assert!(later(
            "2026-01-01T10:00:00.000002Z",
            "2026-01-01T10:00:00.000001Z"
        ));
        assert!(!later("2026-01-01T11:00:00+02:00", "2026-01-01T10:00:00Z"));
        let b =
            json!({"link": [{"relation": "self", "url": "x"}, {"relation": "next", "url": "/n"}]});
        assert_eq!(next_link(&b).as_deref(), Some("/n"));
        assert_eq!(next_link(&json!({})), None);
    }
}
