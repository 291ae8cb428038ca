//! The Markdown that `vendor-sim bench-delivery` prints: the delivery
//! phases, then pull, soak and issue 8's delivery targets, met or missed.

use std::fmt::Write as _;

use chrono::Utc;
use hdrhistogram::Histogram;

use crate::delivery::{AlarmResult, DeliveryArgs, DrainResult, E2e, Intake};
use crate::soak::More;

#[allow(clippy::too_many_arguments)]
pub fn markdown(
    a: &DeliveryArgs,
    e2e: &E2e,
    alarm: Option<&AlarmResult>,
    drain: Option<&DrainResult>,
    intake: Option<&Intake>,
    hub_mem: Option<(u64, u64)>,
    epj_mem: Option<(u64, u64)>,
    started_at: chrono::DateTime<Utc>,
) -> String {
    let intake_rate = intake.map(|i| i.events as f64 / i.secs.max(1e-9));
    let mut s = String::new();
    header(&mut s, a, started_at);
    e2e_row(&mut s, a, e2e);
    if let Some(al) = alarm {
        alarm_rows(&mut s, al, intake_rate);
    }
    if let Some(d) = drain {
        drain_row(&mut s, d, intake_rate);
    }
    if let Some(i) = intake {
        let _ = writeln!(
            s,
            "| baseline: EPJ adapter intake of pre-built Bundles | {} resources in {} Bundles, one request at a time | {:.0} events/s ({:.1} s, {} failed) | 1.00 |",
            i.events,
            i.bundles,
            i.events as f64 / i.secs.max(1e-9),
            i.secs,
            i.failed
        );
    }
    let mem = |m: Option<(u64, u64)>| match m {
        Some((rss, hwm)) => format!(
            "VmRSS {:.0} MiB, VmHWM {:.0} MiB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
        None => "n/a".into(),
    };
    let _ = writeln!(s, "| hub memory | at the end | {} | — |", mem(hub_mem));
    let _ = writeln!(
        s,
        "| EPJ adapter memory | at the end | {} | — |",
        mem(epj_mem)
    );
    s
}

/// The title, the command and the setting, and the table's head.
fn header(s: &mut String, a: &DeliveryArgs, started_at: chrono::DateTime<Utc>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let _ = writeln!(
        s,
        "## Knutepunkt delivery bench, {}\n",
        started_at.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(s, "- command: `vendor-sim {}`", args.join(" "));
    let _ = writeln!(
        s,
        "- hub with TLS and vendor mutual TLS; Oslo has one push destination to `epj-adapter` over HTTPS (max_batch {}, max_rate {}){}; times from the adapter's `received.log` vs the vendor's ack, same clock\n",
        a.max_batch,
        a.max_rate,
        if a.no_pull {
            ", no pull destination (--no-pull)"
        } else {
            " and a pull destination drained by the bench's own client"
        }
    );
    let _ = writeln!(s, "| measurement | setting | result | ratio |");
    let _ = writeln!(s, "|---|---|---|---|");
}

fn e2e_row(s: &mut String, a: &DeliveryArgs, e2e: &E2e) {
    let q = |h: &Histogram<u64>, x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    let l = &e2e.load;
    let _ = writeln!(
        s,
        "| end-to-end: ack → resource at the EPJ adapter | {} events/s for {:.0} s, {} streams, Oslo | p50 {:.2} / p99 {:.2} / p99.9 {:.2} / max {:.2} ms over {} events ({} at the adapter before the ack reached the vendor, counted as 0; {} missing); hub ack p99 {:.2} ms, {:.0} events/s achieved | — |",
        a.e2e_rate,
        a.e2e_secs.as_secs_f64(),
        l.clients,
        q(&e2e.latency_us, 0.5),
        q(&e2e.latency_us, 0.99),
        q(&e2e.latency_us, 0.999),
        e2e.latency_us.max() as f64 / 1000.0,
        e2e.latency_us.len(),
        e2e.before_ack,
        e2e.missing,
        l.ms(0.99),
        l.accepted_per_sec()
    );
}

fn alarm_rows(s: &mut String, al: &AlarmResult, intake_rate: Option<f64>) {
    let _ = writeln!(
        s,
        "| RED alarm (4.1) submitted while draining | behind {} measurements queued with the adapter down; {} still queued at its ack; {} resources arrived before it | ack → at the adapter {:.1} ms | — |",
        al.backlog, al.left_at_submit, al.ahead, al.draining_ms
    );
    let _ = writeln!(
        s,
        "| RED alarm (4.1) submitted while down | same backlog, alarm queued last | adapter back up → alarm at the adapter {:.1} ms (includes the hub noticing: breaker 1 s, backoff cap 0.5 s) | — |",
        al.while_down_ms
    );
    let rate = (al.backlog + 2) as f64 / al.drain_secs.max(1e-9);
    let _ = writeln!(
        s,
        "| drain of the alarm backlog | {} events | {:.1} s after the switch → {:.0} events/s (fill: {:.0} events/s ingest) | {} |",
        al.backlog + 2,
        al.drain_secs,
        rate,
        al.fill.accepted_per_sec(),
        intake_rate
            .map(|r| format!("{:.2} of intake", rate / r))
            .unwrap_or_else(|| "—".into())
    );
}

fn drain_row(s: &mut String, d: &DrainResult, intake_rate: Option<f64>) {
    let rate = d.backlog as f64 / d.from_first_secs.max(1e-9);
    let _ = writeln!(
        s,
        "| drain | backlog {} events (balanced mix) built with the adapter down | {:.0} events/s from first to last delivery ({:.1} s; {:.1} s from the switch to ok) | {:.2} of the hub's ingest ({:.0} events/s filling this backlog){} |",
        d.backlog,
        rate,
        d.from_first_secs,
        d.from_switch_secs,
        rate / d.fill.accepted_per_sec().max(1e-9),
        d.fill.accepted_per_sec(),
        intake_rate
            .map(|r| format!("; {:.2} of the adapter's intake", rate / r))
            .unwrap_or_default()
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The delivery bench's second table (pull, soak) and issue 8's delivery
/// targets, met or missed.
pub fn more_markdown(
    m: &More,
    e2e: &E2e,
    drain: Option<&DrainResult>,
    intake: Option<&Intake>,
    loads: [String; 2],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "- {}", loads.join("; "));
    if m.pull.is_some() || m.soak.is_some() {
        let _ = writeln!(s, "\n| measurement | setting | result |");
        let _ = writeln!(s, "|---|---|---|");
    }
    if let Some((p, expected)) = &m.pull {
        let _ = writeln!(
            s,
            "| pull: `$pending?_count=500` + `$confirm` (journaled), one request at a time, OAuth2 bearer token | Oslo's pull queue ({expected} events for Oslo so far) | {:.0} items/s ({} items in {:.1} s; {} requests; {:.1} s in $pending, {:.1} s in $confirm){} |",
            p.per_sec(),
            p.items,
            p.secs,
            p.requests,
            p.pending_secs,
            p.confirm_secs,
            if p.items == *expected {
                String::new()
            } else {
                format!("; **{} items, {expected} expected**", p.items)
            }
        );
    }
    if let Some(k) = &m.soak {
        let samples: Vec<String> = k
            .samples
            .iter()
            .map(|x| {
                format!(
                    "{}k: {:.0} MiB ({:.0}/s)",
                    x.stored / 1000,
                    mib(x.rss_kib),
                    x.rate
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| soak: hub RSS after each chunk (soak events stored: RSS (ingest rate of the chunk)) | {} events for Oslo, push{} delivering at the same time | {} |",
            k.events,
            if k.pull.is_some() { " and pull" } else { "" },
            samples.join("; ")
        );
        let end = k.end_mem.map_or(0, |x| x.0);
        let _ = writeln!(
            s,
            "| soak: end, both destinations have everything | push caught up {:.1} s after the last ack{} | hub VmRSS {:.0} MiB, VmHWM {:.0} MiB; store {:.0} MiB on disk |",
            k.push_lag_secs,
            k.pull
                .as_ref()
                .map(|p| format!(
                    "; the pull client confirmed {} items at {:.0}/s over the soak",
                    p.items,
                    p.per_sec()
                ))
                .unwrap_or_default(),
            mib(end),
            mib(k.end_mem.map_or(0, |x| x.1)),
            k.disk_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    targets(&mut s, m, e2e, drain, intake);
    s
}

fn targets(
    s: &mut String,
    m: &More,
    e2e: &E2e,
    drain: Option<&DrainResult>,
    intake: Option<&Intake>,
) {
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    let _ = writeln!(s, "\n| target (issue 8) | result | met? |");
    let _ = writeln!(s, "|---|---|---|");
    let p99 = e2e.load.ms(0.99);
    let _ = writeln!(
        s,
        "| ack p99 ≤ 5 ms at a steady 1,000 events/s while a push destination delivers | {p99:.2} ms ({:.0} events/s achieved); {} of {} acked events missing at the adapter | {} |",
        e2e.load.accepted_per_sec(),
        e2e.missing,
        e2e.load.accepted,
        yes(p99 <= 5.0)
    );
    if let Some(d) = drain {
        let rate = d.backlog as f64 / d.from_first_secs.max(1e-9);
        let of_intake = intake.map(|i| rate / (i.events as f64 / i.secs.max(1e-9)));
        let _ = writeln!(
            s,
            "| drain ≥ 15,000 events/s and ≥ 0.8 of the adapter's intake | {rate:.0} events/s ({:.2} of 15,000){} | {} |",
            rate / 15_000.0,
            of_intake
                .map(|x| format!("; {x:.2} of intake"))
                .unwrap_or_default(),
            yes(rate >= 15_000.0 && of_intake.is_none_or(|x| x >= 0.8))
        );
    }
    if let Some((p, _)) = &m.pull {
        let _ = writeln!(
            s,
            "| pull ≥ 10,000 items/s (`$pending?_count=500` + `$confirm`) | {:.0} items/s over {} items ({:.2} of the target) | {} |",
            p.per_sec(),
            p.items,
            p.per_sec() / 10_000.0,
            yes(p.per_sec() >= 10_000.0)
        );
    }
    if let Some(k) = &m.soak {
        let end = k.end_mem.map_or(0, |x| x.0);
        let at_1m = k.rss_at(1_000_000);
        let _ = writeln!(
            s,
            "| RSS after 10M stored and delivered (push + pull) ≤ 1.2 × RSS at 1M, and ≤ 300 MB | {} | {} |",
            match at_1m {
                Some(r) => format!(
                    "{:.0} MiB at the end ({} soak events) vs {:.0} MiB at 1M: {:.2}×",
                    mib(end),
                    k.events,
                    mib(r),
                    end as f64 / r.max(1) as f64
                ),
                None => format!(
                    "{:.0} MiB at the end of {} soak events (fewer than 1M: no 1M sample)",
                    mib(end),
                    k.events
                ),
            },
            match at_1m {
                Some(r) if k.events >= 10_000_000 => {
                    yes(end * 10 <= r * 12 && end * 1024 <= 300_000_000).to_string()
                }
                _ => format!(
                    "{} (not 10M)",
                    yes(at_1m.is_none_or(|r| end * 10 <= r * 12) && end * 1024 <= 300_000_000)
                ),
            }
        );
    }
}
