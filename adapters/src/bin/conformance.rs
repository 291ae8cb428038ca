//! `conformance`: runs the scripted conformance scenario against a test hub
//! and writes the report (see `knutepunkt_adapters::kit::scenario`). This
//! file is the command line.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use knutepunkt::domain::Orgnr;
use knutepunkt_adapters::kit::events::EventKit;
use knutepunkt_adapters::kit::scenario::{self, Scenario};
use knutepunkt_adapters::kit::target::TargetArgs;

const AFTER_HELP: &str = "\
Examples:
  # Against the municipality's test hub, with your vendor certificate:
  conformance run --target test-hub.kommune.no:50051 \\
      --cert acme-alarm.pem --key acme-alarm.key --ca kommune-ca.pem \\
      --municipality 958935420 --junit conformance.xml

  # Against a local knutepunkt-mock (plain gRPC):
  knutepunkt-mock --listen 127.0.0.1:50051 &
  conformance run --target 127.0.0.1:50051 --plain

Exit status: 0 when every rule passed, 1 when one failed, 2 on bad usage.";

const RUN_HELP: &str = "\
The scenario: one event of every payload kind (each measurement kind, an
alarm of each severity, a note), a duplicate, a resend after a timeout, the
closed loop (an alarm, then a note answering it), each rejection (bad field,
impossible value, unknown alarm code, conflict, unknown alarm, municipality
outside the agreement, too large, missing event), one receipt per event on a
stream with a bad event in it, and a stream that breaks and is resumed.
UNAVAILABLE and timeouts are retried with the same event_id, as your client
should. Every event_id starts with the run id, so runs never collide; the
events use synthetic national ids only.

Examples:
  conformance run --target test-hub.kommune.no:50051 \\
      --cert acme-alarm.pem --key acme-alarm.key --ca kommune-ca.pem --junit report.xml
  conformance run --target 127.0.0.1:50051 --plain --report report.txt";

#[derive(Parser, Debug)]
#[command(
    name = "conformance",
    version,
    about = "Knutepunkt conformance kit: run the scripted vendor scenario against a test hub and report pass/fail per rule",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the scenario and write the report.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// A municipality (orgnr) in your agreement; the events are for it.
    #[arg(long, default_value = knutepunkt::sim::OSLO, value_name = "ORGNR")]
    municipality: String,
    /// A valid orgnr NOT in your agreement (for the not_permitted rule).
    #[arg(long, default_value = "942110464", value_name = "ORGNR")]
    other_municipality: String,
    /// Your agreement's largest event in bytes (the too_large rule sends
    /// more than this).
    #[arg(long, default_value_t = 65_536)]
    max_message_bytes: usize,
    /// Which synthetic person (test number) the events are about.
    #[arg(long, default_value_t = 4242)]
    person: u32,
    /// Prefix of every event_id (default: kp-conf-<unix ms>).
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// Also write the report as JUnit XML to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write the text report to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let Cmd::Run(a) = Cli::parse().cmd;
    for (flag, m) in [
        ("--municipality", &a.municipality),
        ("--other-municipality", &a.other_municipality),
    ] {
        Orgnr::parse(m).map_err(|e| anyhow::anyhow!("{flag} {m}: {e}"))?;
    }
    if a.municipality == a.other_municipality {
        bail!("--other-municipality must differ from --municipality");
    }
    let target = a.target.resolve()?;
    let run = a.run_id.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        format!("kp-conf-{ms}")
    });
    let sc = Scenario {
        kit: EventKit {
            run,
            municipality: a.municipality.clone(),
            person: a.person,
        },
        other_municipality: a.other_municipality.clone(),
        max_message_bytes: a.max_message_bytes,
    };
    eprintln!("conformance: running against {}", a.target.describe());
    let report = scenario::run(&sc, &target, &a.target.describe()).await;
    let text = report.text();
    print!("{text}");
    if let Some(p) = &a.report {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.junit {
        std::fs::write(p, report.junit()).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("conformance: JUnit XML written to {}", p.display());
    }
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}
