//! MQTT sensors in `knutepunkt demo`: when a broker answers at the
//! configured address and the `mqtt-gateway` binary sits next to
//! `knutepunkt`, the demo runs that gateway (as the vendor `mqtt-sensors`)
//! and its simulator, so SenML readings, alarms and notes from MQTT devices
//! show up in the simulated EPJ beside the gRPC vendors' events.
//!
//! Why it is a child process and not a library call: the gateway lives in
//! the adapters crate, which depends on this one; running the real binary
//! also shows exactly what a municipality would run. Without a broker or
//! the binary the demo says so in one line and goes on without sensors.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::proto::v1::IdSystem;
use crate::sim::Population;

/// The vendor id (and client certificate) the demo's gateway submits as.
pub const VENDOR: &str = "mqtt-sensors";
/// Residents that get a sensor (the first few of the demo population).
const SENSOR_RESIDENTS: usize = 3;

/// The running gateway and simulator; stopped by [`Sensors::stop`].
pub struct Sensors {
    gateway: Child,
    simulator: Child,
    /// Counts the messages the simulator published.
    printer: tokio::task::JoinHandle<u64>,
}

/// What the demo needs to start the sensors.
pub struct Setup<'a> {
    pub broker: &'a str,
    pub certs: &'a Path,
    pub work: &'a Path,
    pub grpc: SocketAddr,
    pub population: &'a Population,
    pub rate: f64,
    pub duration: Duration,
    pub show_lines: bool,
}

/// Starts the sensors, or prints the one line that says why not.
pub async fn start(s: Setup<'_>) -> Option<Sensors> {
    let Ok(addr) = s
        .broker
        .parse::<SocketAddr>()
        .or_else(|_| resolve(s.broker))
    else {
        println!(
            "  MQTT sensors: {} is not HOST:PORT; none in this demo",
            s.broker
        );
        return None;
    };
    if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
        println!(
            "  MQTT sensors: no broker at {} (start mosquitto to see them); none in this demo",
            s.broker
        );
        return None;
    }
    let bin = match std::env::current_exe() {
        Ok(p) => p.with_file_name("mqtt-gateway"),
        Err(_) => PathBuf::from("mqtt-gateway"),
    };
    if !bin.is_file() {
        println!(
            "  MQTT sensors: broker at {} answers, but mqtt-gateway is not next to knutepunkt \
             (cargo build -p knutepunkt-adapters); none in this demo",
            s.broker
        );
        return None;
    }
    match launch(&s, &bin).await {
        Ok(sensors) => Some(sensors),
        Err(e) => {
            println!("  MQTT sensors: could not start them ({e}); none in this demo");
            None
        }
    }
}

fn resolve(hostport: &str) -> Result<SocketAddr, ()> {
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or(())
}

/// The registry: one sensor per resident for the first few residents.
fn registry(population: &Population) -> String {
    let mut out = String::new();
    for r in population.residents().iter().take(SENSOR_RESIDENTS) {
        let p = r.person_id();
        let system = match IdSystem::try_from(p.system) {
            Ok(IdSystem::Dnr) => "dnr",
            Ok(IdSystem::Fhn) => "fhn",
            _ => "fnr",
        };
        out.push_str(&format!(
            "[[device]]\nid = \"sensor-{n}\"\nkind = \"home-monitoring-hub\"\nmunicipality = \"{org}\"\npatient_system = \"{system}\"\npatient_id = \"{id}\"\n\n",
            n = r.number,
            org = r.municipality,
            id = p.value
        ));
    }
    out
}

async fn launch(s: &Setup<'_>, bin: &Path) -> Result<Sensors, String> {
    let dir = s.work.join("mqtt");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let reg = dir.join("devices.toml");
    std::fs::write(&reg, registry(s.population))
        .map_err(|e| format!("writing the registry: {e}"))?;
    let run = format!("knutepunkt-demo-{}", std::process::id());
    let prefix = format!("{run}/knutepunkt/v1");
    let dead = format!("{run}/dead-letter");
    let log = std::fs::File::create(dir.join("gateway.log"))
        .map_err(|e| format!("creating the gateway log: {e}"))?;
    let gateway = Command::new(bin)
        .arg("run")
        .args(["--broker", s.broker, "--grpc", &s.grpc.to_string()])
        .arg("--registry")
        .arg(&reg)
        .arg("--certs")
        .arg(s.certs)
        .args(["--vendor", VENDOR, "--client-id", &format!("{run}-gw")])
        .args(["--topic-prefix", &prefix, "--dead-letter-prefix", &dead])
        .arg("--forget-session-on-exit")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    // Let the gateway subscribe before the first reading is published.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut simulator = Command::new(bin)
        .arg("simulate")
        .args(["--broker", s.broker, "--vendor", VENDOR])
        .arg("--registry")
        .arg(&reg)
        .args(["--topic-prefix", &prefix, "--dead-letter-prefix", &dead])
        .args(["--rate", &format!("{}", s.rate.clamp(0.1, 100.0))])
        .args(["--duration", &s.duration.as_secs().max(1).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the simulator: {e}"))?;
    let stdout = simulator.stdout.take().ok_or("no simulator output")?;
    let show = s.show_lines;
    let printer = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut n = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            // "{topic}  {what}": show the device and what it sent.
            let Some((topic, what)) = line.split_once("  ") else {
                continue;
            };
            let device = topic.rsplit('/').nth(1).unwrap_or("?");
            n += 1;
            if show {
                println!("{}  {VENDOR:<15} → MQTT {device}: {what}", super::clock());
            }
        }
        n
    });
    println!(
        "  MQTT sensors: broker {}, mqtt-gateway as vendor {VENDOR}, {SENSOR_RESIDENTS} residents with a SenML sensor",
        s.broker
    );
    Ok(Sensors {
        gateway,
        simulator,
        printer,
    })
}

impl Sensors {
    /// Waits for the simulator to finish, gives the gateway a moment to
    /// submit the last messages, and stops it (SIGTERM: it acks what is
    /// done and removes its broker session).
    pub async fn stop(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(15), self.simulator.wait()).await;
        let _ = self.simulator.start_kill();
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), &mut self.printer).await {
            println!(
                "{}  {VENDOR} published {n} MQTT messages (QoS 1) through mqtt-gateway",
                super::clock()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(pid) = self.gateway.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.gateway.wait())
            .await
            .is_err()
        {
            let _ = self.gateway.start_kill();
        }
    }
}
