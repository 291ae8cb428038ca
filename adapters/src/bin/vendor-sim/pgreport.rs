//! The Markdown that `vendor-sim bench-postgres` prints: events/s per
//! setting as a ratio to the embedded store and to pgbench of the same run,
//! rows per group transaction, and bytes per event in PostgreSQL.

use std::fmt::Write as _;

use crate::benchreport::{ack, problems};
use crate::pgload::{PgReport, Setting};

fn name(st: &Setting) -> String {
    match st.hubs {
        0 => "embedded store (fjall), 1 hub".into(),
        1 => "PostgreSQL, 1 hub".into(),
        n => format!("PostgreSQL, {n} hubs"),
    }
}

impl PgReport<'_> {
    fn header(&self, s: &mut String) {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let args: Vec<String> = std::env::args().skip(1).collect();
        let sv = &self.server;
        let _ = writeln!(
            s,
            "## Knutepunkt bench-postgres, {}\n",
            self.started_at.format("%Y-%m-%d %H:%M UTC")
        );
        let _ = writeln!(s, "- command: `vendor-sim {}`", args.join(" "));
        let _ = writeln!(
            s,
            "- hub: `{}`; {cpus} CPUs; hubs, load generator and PostgreSQL on the same machine",
            self.bin.display()
        );
        let _ = writeln!(
            s,
            "- PostgreSQL {} (`fsync` {}, `synchronous_commit` {} on the server, forced on by the hub and pgbench; `wal_sync_method` {})",
            sv.version, sv.fsync, sv.synchronous_commit, sv.wal_sync_method
        );
        let _ = writeln!(
            s,
            "- every setting: a fresh schema, {} SubmitStream clients × window {} taking the hubs in turn, {} events; the schema is dropped afterwards",
            self.a.clients, self.a.window, self.a.events
        );
        let _ = writeln!(s, "- {}\n", self.loads.join("; "));
    }

    fn embedded_rate(&self) -> Option<f64> {
        self.settings
            .iter()
            .find(|s| s.hubs == 0)
            .map(|s| s.load.accepted_per_sec())
    }

    fn settings_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "| setting | accepted events/s | ÷ embedded | ack latency | rows per transaction: mean (p50 / p99) | commit: transactions, mean ms | CPU s during the load: hubs / PostgreSQL / load generator (cores busy) | bytes per event |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        let emb = self.embedded_rate();
        for st in &self.settings {
            let rate = st.load.accepted_per_sec();
            let ratio = match emb {
                Some(e) if st.hubs > 0 => format!("{:.2}", rate / e.max(1e-9)),
                Some(_) => "1.00".into(),
                None => "—".into(),
            };
            let r = &st.rows_per_tx;
            let bytes = match &st.size {
                Some(z) => format!(
                    "{:.0} ({} events, {:.1} MiB in the schema)",
                    z.bytes_per_event(),
                    z.events,
                    z.total_bytes as f64 / 1048576.0
                ),
                None => format!(
                    "{:.0} (`du` of the data directory)",
                    st.disk_bytes as f64 / st.load.accepted.max(1) as f64
                ),
            };
            let c = &st.cpu;
            let cpu = format!(
                "{:.1} / {:.1} / {:.1} ({:.2})",
                c.hubs,
                c.postgres,
                c.loadgen,
                (c.hubs + c.postgres + c.loadgen) / st.load.elapsed.as_secs_f64().max(1e-9)
            );
            let _ = writeln!(
                s,
                "| {} | {:.0} ({} accepted in {:.2} s{}) | {ratio} | {} | {:.1} ({:.0} / {:.0}){} | {:.0}, {:.2} ms | {cpu} | {bytes} |",
                name(st),
                rate,
                st.load.accepted,
                st.load.elapsed.as_secs_f64(),
                problems(&st.load),
                ack(&st.load),
                r.mean(),
                r.p50,
                r.p99,
                if st.hubs == 0 { " events per sync" } else { "" },
                st.commit_seconds.count,
                st.commit_seconds.mean() * 1000.0,
            );
        }
    }

    fn pgbench_table(&self, s: &mut String) {
        let runs = match &self.pgbench {
            Ok(r) => r,
            Err(why) => {
                let _ = writeln!(s, "\npgbench: {why}");
                return;
            }
        };
        let _ = writeln!(
            s,
            "\npgbench on the same server, same run: a scratch table (bigserial key + text, no other index), each transaction one INSERT of R rows of {} random bytes, `-c C -j C -T {}`:\n",
            self.payload, self.a.pgbench_secs
        );
        let _ = writeln!(s, "| pgbench | transactions/s | rows/s | latency mean |");
        let _ = writeln!(s, "|---|---|---|---|");
        for r in runs {
            let _ = writeln!(
                s,
                "| C = {}, R = {} | {:.0} ({} in {} s) | {:.0} | {:.2} ms |",
                r.clients,
                r.rows_per_tx,
                r.tps,
                r.transactions,
                r.secs,
                r.rows_per_sec(),
                r.latency_ms
            );
        }
        // Each hub setting against the pgbench run with its rows per
        // transaction and as many clients as it had hubs (or the nearest).
        let mut lines = Vec::new();
        for st in self.settings.iter().filter(|st| st.hubs > 0) {
            let best = runs
                .iter()
                .filter(|r| r.rows_per_tx > 1 || runs.iter().all(|x| x.rows_per_tx == 1))
                .min_by_key(|r| r.clients.abs_diff(st.hubs));
            if let Some(r) = best {
                lines.push(format!(
                    "{}: {:.2} of pgbench C = {}, R = {} ({:.0} rows/s)",
                    name(st),
                    st.load.accepted_per_sec() / r.rows_per_sec().max(1e-9),
                    r.clients,
                    r.rows_per_tx,
                    r.rows_per_sec()
                ));
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(s, "\nHub events/s ÷ pgbench rows/s: {}.", lines.join("; "));
        }
    }

    fn tables_of_last(&self, s: &mut String) {
        let Some((st, z)) = self
            .settings
            .iter()
            .rev()
            .find_map(|st| st.size.as_ref().map(|z| (st, z)))
        else {
            return;
        };
        let parts: Vec<String> = z
            .tables
            .iter()
            .take(6)
            .map(|(t, b)| format!("{t} {:.0} B/event", *b as f64 / z.events.max(1) as f64))
            .collect();
        let _ = writeln!(
            s,
            "\nWhere the bytes are ({}; table + TOAST + indexes): {}. Mean `kp_events` row {:.0} B, of it the resource JSON {:.0} B.",
            name(st),
            parts.join(", "),
            z.avg_row,
            z.avg_json
        );
    }
}

pub fn markdown(r: &PgReport<'_>) -> String {
    let mut s = String::new();
    r.header(&mut s);
    r.settings_table(&mut s);
    r.pgbench_table(&mut s);
    r.tables_of_last(&mut s);
    let _ = writeln!(
        s,
        "\nRows per transaction: `knutepunkt_store_rows_per_transaction` (events + audit records per group transaction), summed `_sum`/`_count` over the hubs' `/metrics`; p50/p99 are the largest of the hubs' (the exporter's recent window). Embedded: `knutepunkt_store_group_size` (requests per sync). CPU: user + system seconds from /proc of the hub processes, of every process named `postgres` on the machine (other sessions too), and of this process, from the start to the end of the load; cores busy = their sum / the load's wall time (other work on the machine is not in it)."
    );
    s
}
