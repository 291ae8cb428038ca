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

mod mqtt;

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
        let result = tour(grpc, http, &pki, duration, rate, vendors, poll, &opts).await;
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

#[allow(clippy::too_many_arguments)]
async fn tour(
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    pki: &DemoPki,
    duration: Duration,
    rate: f64,
    vendors: u8,
    poll: Duration,
    opts: &DemoOptions,
) -> Result<DemoSummary, BoxError> {
    let web = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_certs_only([reqwest::Certificate::from_pem(&pki.ca_pem)
            .map_err(|e| format!("reading the demo CA: {e}"))?])
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let base = format!("https://{http}");
    wait_ready(&web, &base).await?;

    let population = Arc::new(Population::demo(opts.seed));
    let orgs: Vec<String> = {
        let mut o: Vec<String> = population
            .residents()
            .iter()
            .map(|r| r.municipality.clone())
            .collect();
        o.sort();
        o.dedup();
        o
    };
    println!("Knutepunkt demo");
    println!("  hub: gRPC {grpc}, FHIR {base}/fhir/r4/{{orgnr}} (temporary data directory)");
    println!(
        "  {} synthetic residents in {}; {} vendor(s) × {rate} events/s for {} s",
        population.len(),
        orgs.iter()
            .map(|o| format!("{} ({o})", sim::municipality_name(o)))
            .collect::<Vec<_>>()
            .join(" and "),
        vendors,
        duration.as_secs()
    );
    println!("  over TLS: vendors with client certificates (mTLS), the EPJ with OAuth2 tokens");
    println!("  people are shown by pseudonym only; no national id is printed");

    let sensors = match &opts.mqtt_broker {
        Some(broker) => {
            mqtt::start(mqtt::Setup {
                broker,
                certs: &pki.dir,
                work: pki.dir.parent().unwrap_or(&pki.dir),
                grpc,
                population: &population,
                rate,
                duration,
                show_lines: opts.show_vendor_lines,
            })
            .await
        }
        None => None,
    };
    println!();

    let stats = Arc::new(Stats::default());
    let endpoint = format!("https://{grpc}");
    let plans: Vec<(&str, Mix)> = if vendors == 1 {
        vec![("vendor", Mix::BALANCED)]
    } else {
        vec![
            ("alarm-centre", Mix::ALARM_CENTRE),
            ("home-monitoring", Mix::HOME_MONITORING),
        ]
    };
    let started = Instant::now();
    let deadline = started + duration;
    let mut senders = Vec::new();
    for (i, (name, mix)) in plans.into_iter().enumerate() {
        let cfg = GenConfig::new(opts.seed.wrapping_add(i as u64 + 1), name, mix);
        let generator = Generator::new(population.clone(), cfg)?;
        let tls = pki.vendor_tls(name)?;
        senders.push(tokio::spawn(vendor(
            name,
            endpoint.clone(),
            tls,
            generator,
            rate,
            deadline,
            stats.clone(),
            opts.show_vendor_lines,
        )));
    }

    let mut tokens = HashMap::new();
    for org in &orgs {
        tokens.insert(org.clone(), pki.token(&web, &base, org).await?);
    }
    let mut epj = Epj::new(web, base, orgs, population.clone(), stats.clone(), tokens);
    // Read while the vendors send.
    while Instant::now() < deadline {
        tokio::time::sleep(poll).await;
        if let Err(e) = epj.poll_once().await {
            println!("{}  EPJ   poll failed: {e}", clock());
        }
    }
    for s in senders {
        match s.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => println!("{}  vendor stopped: {e}", clock()),
            Err(e) => println!("{}  vendor task failed: {e}", clock()),
        }
    }
    if let Some(s) = sensors {
        s.stop().await;
    }
    // Catch up with what was accepted at the end.
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

    summary(&stats, started.elapsed(), &epj);
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Ok(DemoSummary {
        sent: get(&stats.sent),
        accepted: get(&stats.accepted),
        duplicate: get(&stats.duplicate),
        rejected: get(&stats.rejected),
        errors: get(&stats.errors),
        seen_by_epj: get(&stats.seen_observations) + get(&stats.seen_communications),
        loops_closed: get(&stats.loops_closed),
    })
}

/// The demo's throw-away PKI and security config: a dev CA, the hub's
/// certificate, a client certificate per simulated vendor and a key pair per
/// municipality's EPJ client (see `knutepunkt dev-certs`).
struct DemoPki {
    dir: std::path::PathBuf,
    ca_pem: Vec<u8>,
    http: std::net::SocketAddr,
}

/// The simulated vendors (each has a certificate) and EPJ clients.
const DEMO_VENDORS: [&str; 4] = ["vendor", "alarm-centre", "home-monitoring", mqtt::VENDOR];
const DEMO_MUNICIPALITIES: [(&str, &str); 2] =
    [("958935420", "oslo-epj"), ("964338531", "bergen-epj")];

impl DemoPki {
    fn create(root: &std::path::Path) -> Result<DemoPki, BoxError> {
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

    fn config(&self, root: &std::path::Path) -> Result<Config, BoxError> {
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

    fn vendor_tls(&self, vendor: &str) -> Result<tonic::transport::ClientTlsConfig, BoxError> {
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
    async fn token(
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

/// What the EPJ remembers about an alarm, to show the loop closing.
struct SeenAlarm {
    what: String,
    seen: Instant,
}

/// The simulated EPJ: pulls each municipality's Observations and
/// Communications page by page, newer than what it has already seen.
struct Epj {
    web: reqwest::Client,
    base: String,
    orgs: Vec<String>,
    population: Arc<Population>,
    stats: Arc<Stats>,
    /// (orgnr, resource type) → the highest `meta.lastUpdated` seen.
    watermark: HashMap<(String, &'static str), String>,
    seen: HashSet<String>,
    alarms: HashMap<String, SeenAlarm>,
    /// orgnr → the access token of that municipality's EPJ client.
    tokens: HashMap<String, String>,
}

impl Epj {
    fn new(
        web: reqwest::Client,
        base: String,
        orgs: Vec<String>,
        population: Arc<Population>,
        stats: Arc<Stats>,
        tokens: HashMap<String, String>,
    ) -> Self {
        Epj {
            tokens,
            web,
            base,
            orgs,
            population,
            stats,
            watermark: HashMap::new(),
            seen: HashSet::new(),
            alarms: HashMap::new(),
        }
    }

    async fn poll_once(&mut self) -> Result<(), BoxError> {
        for org in self.orgs.clone() {
            for rtype in ["Communication", "Observation"] {
                self.poll_search(&org, rtype).await?;
            }
        }
        Ok(())
    }

    async fn poll_search(&mut self, org: &str, rtype: &'static str) -> Result<(), BoxError> {
        let key = (org.to_string(), rtype);
        let first = format!("{}/fhir/r4/{org}/{rtype}", self.base);
        let mut query = vec![("_count".to_string(), PAGE_SIZE.to_string())];
        if let Some(wm) = self.watermark.get(&key) {
            query.push(("_lastUpdated".into(), format!("gt{wm}")));
        }
        let token = self.tokens.get(org).cloned().unwrap_or_default();
        let mut request = self.web.get(&first).query(&query).bearer_auth(&token);
        for _ in 0..MAX_PAGES_PER_POLL {
            let resp = request
                .send()
                .await
                .map_err(|e| format!("GET {rtype} for {org}: {e}"))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("GET {rtype} for {org}: HTTP {status}").into());
            }
            let bundle: Value = resp
                .json()
                .await
                .map_err(|e| format!("{rtype} search for {org} is not JSON: {e}"))?;
            let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
            for entry in &entries {
                let res = &entry["resource"];
                if let Some(lu) = res["meta"]["lastUpdated"].as_str() {
                    let newer = match self.watermark.get(&key) {
                        Some(old) => later(lu, old),
                        None => true,
                    };
                    if newer {
                        self.watermark.insert(key.clone(), lu.to_string());
                    }
                }
                self.show(res);
            }
            match next_link(&bundle) {
                Some(next) if !entries.is_empty() => {
                    request = self.web.get(self.resolve(&next)?).bearer_auth(&token);
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Absolute `next` links must point at our own loopback hub; relative
    /// ones are taken relative to it.
    fn resolve(&self, link: &str) -> Result<String, BoxError> {
        if link.starts_with(&self.base) {
            Ok(link.to_string())
        } else if link.starts_with('/') {
            Ok(format!("{}{link}", self.base))
        } else {
            Err(format!("next link does not point at this hub: {link}").into())
        }
    }

    fn show(&mut self, res: &Value) {
        let rtype = res["resourceType"].as_str().unwrap_or("?");
        let id = res["id"].as_str().unwrap_or("").to_string();
        if id.is_empty() || !self.seen.insert(format!("{rtype}/{id}")) {
            return;
        }
        let who = res["subject"]["identifier"]["value"]
            .as_str()
            .map(|v| self.population.label(v))
            .unwrap_or_else(|| "no subject".into());
        let (what, at) = match rtype {
            "Observation" => {
                self.stats.seen_observations.fetch_add(1, Ordering::Relaxed);
                (observation_line(res), res["effectiveDateTime"].as_str())
            }
            "Communication" => {
                self.stats
                    .seen_communications
                    .fetch_add(1, Ordering::Relaxed);
                let category = res["category"][0]["coding"][0]["code"]
                    .as_str()
                    .unwrap_or("?");
                let line = if category == "alert" {
                    let line = alert_line(res);
                    self.alarms.insert(
                        format!("Communication/{id}"),
                        SeenAlarm {
                            what: line
                                .split(" · ")
                                .next()
                                .unwrap_or("")
                                .trim_start_matches("alert ")
                                .to_string(),
                            seen: Instant::now(),
                        },
                    );
                    line
                } else {
                    self.note_line(res)
                };
                (line, res["sent"].as_str())
            }
            other => (format!("{other} (not expected here)"), None),
        };
        let delay = at
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| {
                let ms = (Utc::now() - t.with_timezone(&Utc)).num_milliseconds();
                format!("  [+{:.1} s after the device]", ms as f64 / 1000.0)
            })
            .unwrap_or_default();
        println!("{}  EPJ ← {rtype:<13} {what} · {who}{delay}", clock());
    }

    fn note_line(&self, res: &Value) -> String {
        let text = payload_texts(res)
            .iter()
            .flat_map(|t| t.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" / ");
        match res["inResponseTo"][0]["reference"].as_str() {
            Some(r) => {
                let answered = match self.alarms.get(r) {
                    Some(a) => {
                        self.stats.loops_closed.fetch_add(1, Ordering::Relaxed);
                        format!(
                            "{} (seen {:.1} s earlier)",
                            a.what,
                            a.seen.elapsed().as_secs_f64()
                        )
                    }
                    None => r.to_string(),
                };
                format!(
                    "notification ↪ answers {answered}: \"{}\"",
                    shorten(&text, 70)
                )
            }
            None => format!("notification \"{}\"", shorten(&text, 70)),
        }
    }
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array()?.iter().find_map(|l| {
        (l["relation"].as_str() == Some("next"))
            .then(|| l["url"].as_str().map(str::to_string))
            .flatten()
    })
}

/// `a` is later than `b` (both FHIR instants); unparsable values compare as text.
fn later(a: &str, b: &str) -> bool {
    match (
        DateTime::parse_from_rfc3339(a),
        DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(x), Ok(y)) => x > y,
        _ => a > b,
    }
}

/// "85354-9 blood pressure 142/88 mm[Hg]", "59408-5 SpO2 96 %", …
fn observation_line(res: &Value) -> String {
    let coding = &res["code"]["coding"][0];
    let code = coding["code"].as_str().unwrap_or("?");
    let name = loinc_name(code)
        .map(str::to_string)
        .or_else(|| coding["display"].as_str().map(str::to_string))
        .unwrap_or_default();
    if let Some(components) = res["component"].as_array() {
        let part = |loinc: &str| {
            components
                .iter()
                .find(|c| {
                    c["code"]["coding"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|x| x["code"].as_str() == Some(loinc)))
                })
                .map(|c| &c["valueQuantity"])
        };
        if let (Some(s), Some(d)) = (part("8480-6"), part("8462-4")) {
            return format!(
                "{code} {name} {}/{} {}",
                number(&s["value"]),
                number(&d["value"]),
                unit(s)
            );
        }
    }
    let q = &res["valueQuantity"];
    format!("{code} {name} {} {}", number(&q["value"]), unit(q))
}

/// "alert RED 4.1 Fall, bathroom · "Fall detektert""
fn alert_line(res: &Value) -> String {
    let severity = match res["priority"].as_str() {
        Some("stat") => "RED",
        Some("asap") => "YELLOW",
        Some("routine") => "GREEN",
        _ => "",
    };
    let mut vkp: Option<(String, String, String)> = None;
    for reason in res["reasonCode"].as_array().into_iter().flatten() {
        for c in reason["coding"].as_array().into_iter().flatten() {
            if c["system"]
                .as_str()
                .is_some_and(|s| s.contains("vkp-alert-code"))
            {
                let code = c["code"].as_str().unwrap_or("?").to_string();
                let display = c["display"].as_str().unwrap_or("").to_string();
                let meaning = sim::alarm_kind(&code)
                    .map(|k| k.meaning.to_string())
                    .unwrap_or_else(|| display.clone());
                vkp = Some((code, meaning, display));
            }
        }
    }
    let (code, meaning, display) =
        vkp.unwrap_or_else(|| ("?".into(), String::new(), String::new()));
    // The payload repeats the code's display, then the vendor's text, then
    // the zone ("Sone: …"); show the zone after the meaning and the vendor
    // text in quotes.
    let mut zone = None;
    let mut texts = Vec::new();
    for line in payload_texts(res).iter().flat_map(|t| t.lines()) {
        let line = line.trim();
        if let Some(z) = line
            .strip_prefix("Sone:")
            .or_else(|| line.strip_prefix("Zone:"))
        {
            zone = Some(z.trim().to_string());
        } else if !line.is_empty()
            && !line.eq_ignore_ascii_case(&meaning)
            && !line.eq_ignore_ascii_case(&display)
        {
            texts.push(line.to_string());
        }
    }
    let mut out = format!("alert {severity} {code} {meaning}");
    if let Some(z) = zone {
        out.push_str(", ");
        out.push_str(&z);
    }
    if !texts.is_empty() {
        out.push_str(&format!(" · \"{}\"", texts.join(" / ")));
    }
    out
}

fn payload_texts(res: &Value) -> Vec<String> {
    res["payload"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["contentString"].as_str().map(str::to_string))
        .collect()
}

fn loinc_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "85354-9" => "blood pressure",
        "8867-4" => "heart rate",
        "59408-5" | "2708-6" => "SpO2",
        "29463-7" => "body weight",
        "8310-5" => "body temperature",
        "9279-1" => "respiratory rate",
        "15074-8" | "2339-0" => "blood glucose",
        _ => return None,
    })
}

fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e9 => format!("{}", x as i64),
        Some(x) => format!("{x}"),
        None => "?".into(),
    }
}

fn unit(q: &Value) -> &str {
    q["code"].as_str().or(q["unit"].as_str()).unwrap_or("")
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
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
        epj.alarms.len(),
        get(&stats.loops_closed)
    );
    if seen < get(&stats.accepted) {
        println!("  note: the EPJ saw fewer resources than were accepted");
    }
}

#[cfg(test)]
mod tests {
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
