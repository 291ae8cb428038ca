//! The Markdown that `vendor-sim bench` prints: one table of what it
//! measured, with every hub rate as a ratio to the baselines of the same
//! run, and issue 8's targets with met / missed.

use std::fmt::Write as _;
use std::path::Path;

use chrono::Utc;

use crate::baseline::BaselineReport;
use crate::bench::{BenchArgs, Phases};
use crate::load::LoadReport;
use crate::nats::NatsReport;
use crate::retention::RetentionBench;

/// Everything one bench run measured.
pub struct Report<'a> {
    pub a: &'a BenchArgs,
    pub bin: &'a Path,
    pub work: &'a Path,
    pub baselines: &'a [BaselineReport],
    /// The JetStream baseline, or why it was skipped.
    pub nats: &'a Result<NatsReport, String>,
    pub p: &'a Phases,
    pub mem_end: Option<(u64, u64)>,
    pub cache_end: Option<u64>,
    pub disk_end: u64,
    /// The retention step, or why it did not run.
    pub retention: &'a Result<RetentionBench, String>,
    /// Load average at the start, when the hub started, at the end.
    pub loads: [String; 3],
    pub started_at: chrono::DateTime<Utc>,
}

/// A target's "met?" cell.
fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn mem(m: Option<(u64, u64)>) -> String {
    match m {
        Some((rss, hwm)) => format!(
            "VmRSS {:.0} MiB, VmHWM {:.0} MiB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
        None => "n/a".into(),
    }
}

pub fn ack(r: &LoadReport) -> String {
    format!(
        "ack p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms",
        r.ms(0.5),
        r.ms(0.99),
        r.ms(0.999)
    )
}

pub fn problems(r: &LoadReport) -> String {
    let mut s = String::new();
    if r.rejected + r.errors + r.duplicate > 0 || r.timed_out {
        let _ = write!(
            s,
            " — {} rejected, {} duplicate, {} errors{}",
            r.rejected,
            r.duplicate,
            r.errors,
            if r.timed_out { ", TIMED OUT" } else { "" }
        );
        if let Some(e) = &r.first_error {
            let _ = write!(s, " (first: {})", e.replace('|', "/"));
        }
    }
    s
}

impl Report<'_> {
    /// "0.53 of sled 0.34; 0.20 of fjall 3; 4.04× JetStream".
    fn ratios(&self, rate: f64) -> String {
        let mut parts: Vec<String> = self
            .baselines
            .iter()
            .map(|b| format!("{:.2} of {}", rate / b.per_sec().max(1e-9), b.engine))
            .collect();
        if let Ok(n) = self.nats {
            parts.push(format!("{:.2}× JetStream", rate / n.per_sec().max(1e-9)));
        }
        parts.join("; ")
    }

    fn header(&self, s: &mut String) {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let args: Vec<String> = std::env::args().skip(1).collect();
        let _ = writeln!(
            s,
            "## Knutepunkt bench, {}\n",
            self.started_at.format("%Y-%m-%d %H:%M UTC")
        );
        let _ = writeln!(s, "- command: `vendor-sim {}`", args.join(" "));
        let _ = writeln!(
            s,
            "- hub: `{}`; {cpus} CPUs; baselines and hub data under `{}` (same disk)",
            self.bin.display(),
            self.work.display()
        );
        let _ = writeln!(s, "- {}", self.loads.join("; "));
        let _ = writeln!(
            s,
            "- ratio = hub ACCEPTED events/s ÷ each baseline's durable events/s, all measured in this run\n"
        );
    }

    fn baseline_rows(&self, s: &mut String) {
        for b in self.baselines {
            let _ = writeln!(
                s,
                "| baseline: bare {} | {} events × (record {} B + 4 index keys), commit + sync every {} | {} | — |",
                b.engine,
                b.events,
                b.value_size,
                b.batch,
                b.summary()
            );
        }
        match self.nats {
            Ok(n) => {
                let _ = writeln!(
                    s,
                    "| baseline: NATS JetStream (`{}`), file store, `sync_interval: always` | {} messages × {} B, {} connections × {} acks in flight | {} | — |",
                    n.version,
                    n.messages,
                    n.size,
                    n.clients,
                    n.window,
                    n.summary()
                );
            }
            Err(why) => {
                let _ = writeln!(s, "| baseline: NATS JetStream | — | {why} | — |");
            }
        }
    }

    fn hub_rows(&self, s: &mut String) {
        self.load_rows(s);
        self.search_row(s);
        self.resource_rows(s);
    }

    /// The hub's stream, unary and steady-rate loads.
    fn load_rows(&self, s: &mut String) {
        let p = self.p;
        let st = &p.stream;
        let fl = match st.first_last() {
            Some((f, l, n)) => format!(
                "; first {} {f:.0}/s, last {n} {l:.0}/s (last ÷ first {:.2})",
                self.a.mark_every,
                l / f.max(1e-9)
            ),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "| hub SubmitStream | {} clients × window {}, {} events | {:.0} events/s{fl}; {}{} | {} |",
            st.clients,
            st.window,
            st.events,
            st.accepted_per_sec(),
            ack(st),
            problems(st),
            self.ratios(st.accepted_per_sec())
        );
        let u = &p.unary;
        let _ = writeln!(
            s,
            "| hub Submit (unary) | {} clients, {} events | {:.0} events/s; {}{} | {} |",
            u.clients,
            u.events,
            u.accepted_per_sec(),
            ack(u),
            problems(u),
            self.ratios(u.accepted_per_sec())
        );
        let _ = writeln!(
            s,
            "| hub steady rate (no destination) | {} events/s for {:.0} s, {} streams | {:.0} events/s achieved; {}{} | — |",
            self.a.steady_rate,
            self.a.steady_secs.as_secs_f64(),
            p.steady.clients,
            p.steady.accepted_per_sec(),
            ack(&p.steady),
            problems(&p.steady)
        );
    }

    /// The FHIR search timings, if they ran.
    fn search_row(&self, s: &mut String) {
        if let Some(sr) = &self.p.search {
            let result = if sr.ok == 0 {
                format!(
                    "no successful search ({})",
                    sr.first_failure.clone().unwrap_or_default()
                )
            } else {
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} ok, {} failed, {:.1} entries/page",
                    sr.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                    sr.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                    sr.latency_us.max() as f64 / 1000.0,
                    sr.ok,
                    sr.failed,
                    sr.entries as f64 / sr.ok as f64
                )
            };
            let _ = writeln!(
                s,
                "| FHIR search (first page, _count=50) | {} searches, ~{} events stored | {} | — |",
                sr.searches, sr.stored, result
            );
        }
    }

    /// The hub's memory, block cache and disk use at the measured points.
    fn resource_rows(&self, s: &mut String) {
        let p = self.p;
        let st = &p.stream;
        let stored_end = self.stored_end();
        let _ = writeln!(
            s,
            "| hub memory | after the stream load ({} events stored); after the loads; at the end ({} stored) | {}; {}; {} | — |",
            st.accepted,
            stored_end,
            mem(p.mem_after_stream),
            mem(p.mem_after_load),
            mem(self.mem_end)
        );
        let cache = |c: Option<u64>| c.map_or("n/a".to_string(), |b| format!("{:.0} MiB", mib(b)));
        let _ = writeln!(
            s,
            "| hub store block cache (in the RSS above; capacity 64 MiB) | same points | {}; {}; {} | — |",
            cache(p.cache_after_stream),
            cache(p.cache_after_load),
            cache(self.cache_end)
        );
        let _ = writeln!(
            s,
            "| hub disk (`du` of the store) | after the stream load; at the end | {:.0} MiB = {:.0} B per event; {:.0} MiB = {:.0} B per event | — |",
            mib(p.disk_after_stream),
            p.disk_after_stream as f64 / st.accepted.max(1) as f64,
            mib(self.disk_end),
            self.disk_end as f64 / stored_end.max(1) as f64
        );
    }

    fn retention_rows(&self, s: &mut String) {
        let r = match self.retention {
            Ok(r) => r,
            Err(why) => {
                let _ = writeln!(s, "| retention pass | — | {why} | — |");
                return;
            }
        };
        let rate = r.removed_per_sec();
        let _ = writeln!(
            s,
            "| retention pass (the stopped hub's store opened as a library, no destinations) | every data class kept 1 day, clock 1 day after the median stored event: the older half of {} events | {} removed, {} held in {:.1} s = {:.0} removed/s | {:.2} of SubmitStream's accepted/s |",
            r.stored,
            r.removed,
            r.held,
            r.pass.as_secs_f64(),
            rate,
            rate / self.p.stream.accepted_per_sec().max(1e-9)
        );
        let [left, yard, pass, compacted] = r.du;
        let per_event = |b: u64| b as f64 / r.stored.max(1) as f64;
        let back = |b: u64, a: u64| (b as f64 - a as f64) / r.removed.max(1) as f64;
        let [c0, c1] = r.compaction;
        let _ = writeln!(
            s,
            "| disk given back by retention (`du` of the store, journal included) | as the hub left it; flushed + major-compacted with fjall alone before the pass ({:.1} s: the yardstick); after the pass (store closed); after the hub's own compaction (`knutepunkt compact`, {:.1} s) | {:.0} MiB = {:.0} B per event; {:.0} MiB = {:.0} B per event; {:.0} MiB; {:.0} MiB: {:.0} B per removed event back from the yardstick ({:.0} from as left) | after ÷ yardstick: {:.2} after the pass, {:.2} compacted |",
            c0.as_secs_f64(),
            c1.as_secs_f64(),
            mib(left),
            per_event(left),
            mib(yard),
            per_event(yard),
            mib(pass),
            mib(compacted),
            back(yard, compacted),
            back(left, compacted),
            pass as f64 / yard.max(1) as f64,
            compacted as f64 / yard.max(1) as f64
        );
        let [tl, tb, tp, tc] = r.tables();
        let _ = writeln!(
            s,
            "| table bytes given back (every keyspace; journal left out) | as the hub left them (memtables in the journal only); compacted before the pass; after the pass; compacted after it | {:.0} MiB; {:.0} MiB = {:.0} B per event; {:.0} MiB; {:.0} MiB: {:.0} B per removed event | after ÷ before: {:.2} after the pass, {:.2} compacted |",
            mib(tl),
            mib(tb),
            per_event(tb),
            mib(tp),
            mib(tc),
            back(tb, tc),
            tp as f64 / tb.max(1) as f64,
            tc as f64 / tb.max(1) as f64
        );
        let spaces: Vec<String> = r
            .spaces
            .iter()
            .map(|(n, [l, b, p, a])| {
                // A keyspace against its compacted size before the pass; the
                // journal (which no compaction before the pass trims the
                // same way) against its size after the pass.
                let before = if n == "journal" { p } else { b };
                let shrank = if a < before { "" } else { " (did not shrink)" };
                format!(
                    "{n} {:.1} → {:.1} → {:.1} → {:.1} MiB{shrank}",
                    mib(*l),
                    mib(*b),
                    mib(*p),
                    mib(*a)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| keyspaces (table bytes) and journal | as left → compacted before the pass → after the pass → compacted after it | {} | — |",
            spaces.join("; ")
        );
    }

    fn stored_end(&self) -> u64 {
        let p = self.p;
        let loads = p.stream.accepted + p.unary.accepted + p.steady.accepted;
        p.search.as_ref().map_or(loads, |s| s.stored.max(loads))
    }

    fn targets(&self, s: &mut String) {
        let _ = writeln!(s, "\n| target (issue 8) | result | met? |");
        let _ = writeln!(s, "|---|---|---|");
        self.throughput_targets(s);
        self.memory_targets(s);
        self.search_target(s);
    }

    /// SubmitStream's rate: absolute, over the run, and against NATS.
    fn throughput_targets(&self, s: &mut String) {
        let st = &self.p.stream;
        let rate = st.accepted_per_sec();
        let _ = writeln!(
            s,
            "| SubmitStream ≥ 20,000 durable events/s over 1M | {rate:.0} events/s over {} ({:.2} of the target) | {} |",
            st.events,
            rate / 20_000.0,
            if st.events < 1_000_000 {
                "not over 1M"
            } else {
                yes(rate >= 20_000.0)
            }
        );
        if let Some((f, l, _)) = st.first_last() {
            let _ = writeln!(
                s,
                "| last stretch ≥ 0.8 × first | {:.2} | {} |",
                l / f.max(1e-9),
                yes(l >= 0.8 * f)
            );
        }
        match self.nats {
            Ok(n) => {
                let x = rate / n.per_sec().max(1e-9);
                let _ = writeln!(
                    s,
                    "| 2× NATS JetStream (`sync_interval: always`) | {x:.2}× ({rate:.0} vs {:.0}/s) | {} |",
                    n.per_sec(),
                    yes(x >= 2.0)
                );
            }
            Err(why) => {
                let _ = writeln!(
                    s,
                    "| 2× NATS JetStream (`sync_interval: always`) | not measured ({why}) | — |"
                );
            }
        }
    }

    /// The hub's RSS after the stream load, and its growth to the end.
    fn memory_targets(&self, s: &mut String) {
        let p = self.p;
        let st = &p.stream;
        if let Some((rss, _)) = p.mem_after_stream {
            let _ = writeln!(
                s,
                "| RSS ≤ 300 MB (no destination) | {:.0} MiB after {} events | {} |",
                rss as f64 / 1024.0,
                st.accepted,
                yes(rss * 1024 <= 300_000_000)
            );
        }
        if let (Some(sr), Some((first, _)), Some((last, _))) =
            (&p.search, p.mem_after_stream, self.mem_end)
        {
            let ratio = last as f64 / first.max(1) as f64;
            // RSS in KiB, cache in bytes: both as MiB here.
            let outside = match (p.cache_after_stream, self.cache_end) {
                (Some(c0), Some(c1)) => {
                    let before = first as f64 / 1024.0 - mib(c0);
                    let after = last as f64 / 1024.0 - mib(c1);
                    format!(
                        "; without the block cache {before:.0} → {after:.0} MiB = {:.2}×",
                        after / before.max(1.0)
                    )
                }
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| RSS at {} stored ≤ 1.2× RSS after the stream load ({}) | {:.0} → {:.0} MiB = {ratio:.2}×{outside} | {} |",
                sr.stored,
                p.stream.accepted,
                first as f64 / 1024.0,
                last as f64 / 1024.0,
                yes(ratio <= 1.2)
            );
        }
    }

    /// The search p99 against its target.
    fn search_target(&self, s: &mut String) {
        if let Some(sr) = &self.p.search {
            let p99 = sr.latency_us.value_at_quantile(0.99) as f64 / 1000.0;
            let _ = writeln!(
                s,
                "| search p99 ≤ 25 ms at 10M stored | {p99:.2} ms at {} stored | {} |",
                sr.stored,
                if sr.stored < 10_000_000 {
                    format!("{} (not at 10M)", yes(p99 <= 25.0))
                } else {
                    yes(p99 <= 25.0).to_string()
                }
            );
        }
    }
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    r.header(&mut s);
    let _ = writeln!(s, "| measurement | setting | result | ratio |");
    let _ = writeln!(s, "|---|---|---|---|");
    r.baseline_rows(&mut s);
    r.hub_rows(&mut s);
    r.retention_rows(&mut s);
    r.targets(&mut s);
    s
}
