//! `vendor-sim baseline`: what this disk does with a bare storage engine and
//! the hub's write pattern.
//!
//! Why it exists: "events/s" means nothing without the disk it ran on. The
//! honest yardstick for a hub that acks only after fdatasync is the same
//! engine writing the same keys, made durable the way the hub's group commit
//! does it, with no gRPC, TLS, FHIR or validation. Per event: one record of
//! incompressible bytes under its big-endian sequence number, its id entry
//! (a random 16-byte id) and three search keys ending in the sequence (type,
//! patient, code; the layout of `knutepunkt::store::embedded::keys`); a
//! commit every `batch` events, one durable sync per commit.
//!
//! - **fjall 3**, the hub's engine, opened by the store's own function (its
//!   cache and memtable sizes): one atomic batch across `log`, `ids` and
//!   `idx`, `commit()`, then `persist(SyncData)`.
//! - **sled 0.34**, the engine before it (still used by `knutepunkt migrate`),
//!   configured as the old store was: the inserts into three trees,
//!   `flush()`, then `fdatasync` of sled's `db` file (`flush()` alone does
//!   not sync the file on Linux).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use knutepunkt::sim::SplitMix64;
use knutepunkt::store::embedded::{keys, open_engine_for_baseline};

/// Which bare engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// sled 0.34, configured as the old store was.
    Sled,
    /// fjall 3, opened as the hub opens it.
    Fjall,
    /// Both, sled first, each in its own directory.
    Both,
}

#[derive(Args, Debug, Clone)]
pub struct BaselineArgs {
    /// A new or empty directory for the databases (removed afterwards
    /// unless --keep).
    #[arg(long)]
    pub dir: PathBuf,
    /// Events to write (each: record + id entry + 3 index keys).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub events: u64,
    /// Events per commit + durable sync, like one group commit.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Bytes per record (a stored FHIR resource is about 1.5 KB).
    #[arg(long, default_value_t = 1536, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub value_size: u64,
    /// Which engine(s).
    #[arg(long, value_enum, default_value_t = Engine::Both)]
    pub engine: Engine,
    /// Keep the database directories.
    #[arg(long)]
    pub keep: bool,
}

/// What one baseline measured.
#[derive(Debug)]
pub struct BaselineReport {
    pub engine: &'static str,
    pub events: u64,
    pub batch: u64,
    pub value_size: u64,
    pub elapsed: Duration,
    pub syncs: u64,
    /// commit + durable sync time per batch, microseconds.
    pub sync_us: Histogram<u64>,
    /// `du` of the database directory at the end.
    pub disk_bytes: u64,
    /// Events/s over the first and the last tenth of the events, as the
    /// hub's stream reports its first and last stretch.
    pub stretches: (f64, f64),
}

impl BaselineReport {
    pub fn per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The Markdown table's result cell.
    pub fn summary(&self) -> String {
        let (first, last) = self.stretches;
        format!(
            "{:.0} events/s ({} commits; commit + sync p50 {:.3} ms, p99 {:.3} ms; {:.0} B on disk per event; first tenth {:.0}/s, last tenth {:.0}/s, last ÷ first {:.2})",
            self.per_sec(),
            self.syncs,
            self.sync_us.value_at_quantile(0.5) as f64 / 1000.0,
            self.sync_us.value_at_quantile(0.99) as f64 / 1000.0,
            self.disk_bytes as f64 / self.events.max(1) as f64,
            first,
            last,
            last / first.max(1e-9)
        )
    }

    pub fn print_text(&self) {
        println!(
            "baseline {}: {} events × (record {} B + 4 keys), commit + sync every {}: {:.2} s → {}",
            self.engine,
            self.events,
            self.value_size,
            self.batch,
            self.elapsed.as_secs_f64(),
            self.summary()
        );
    }
}

pub async fn run_cli(a: BaselineArgs) -> Result<()> {
    let dir = crate::fresh_dir(&a.dir)?;
    let (keep, engine) = (a.keep, a.engine);
    eprintln!(
        "baseline: {}",
        crate::hubenv::loadavg_line("load at the start")
    );
    let reports = tokio::task::spawn_blocking(move || -> Result<Vec<BaselineReport>> {
        let mut out = Vec::new();
        if matches!(engine, Engine::Sled | Engine::Both) {
            out.push(run_sled(
                &dir.join("sled"),
                a.events,
                a.batch,
                a.value_size,
            )?);
        }
        if matches!(engine, Engine::Fjall | Engine::Both) {
            out.push(run_fjall(
                &dir.join("fjall"),
                a.events,
                a.batch,
                a.value_size,
            )?);
        }
        Ok(out)
    })
    .await
    .context("baseline task failed")??;
    for r in &reports {
        r.print_text();
    }
    println!("{}", crate::hubenv::loadavg_line("load at the end"));
    if let [s, f] = reports.as_slice() {
        println!("fjall ÷ sled: {:.2}", f.per_sec() / s.per_sec().max(1e-9));
    }
    if !keep {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("removing {}", a.dir.display()))?;
    }
    Ok(())
}

/// One event's keys and values, as the hub's writer stages them.
struct Pattern {
    rng: SplitMix64,
    record: Vec<u8>,
}

struct EventKeys {
    seq: [u8; 8],
    id: [u8; 16],
    id_entry: [u8; 40],
    type_key: Vec<u8>,
    type_entry: [u8; 25],
    patient_key: Vec<u8>,
    code_key: Vec<u8>,
}

impl Pattern {
    fn new(value_size: u64) -> Pattern {
        Pattern {
            rng: SplitMix64::new(0xB45E_11AE),
            record: vec![0u8; value_size as usize],
        }
    }

    fn fill(&mut self, b: &mut [u8]) {
        for chunk in b.chunks_mut(8) {
            let r = self.rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    /// Event `i`: fresh random record bytes (incompressible, like varied
    /// JSON that the engine's block compression cannot shrink much).
    fn next(&mut self, i: u64) -> EventKeys {
        let mut record = std::mem::take(&mut self.record);
        self.fill(&mut record);
        self.record = record;
        let mut id = [0u8; 16];
        self.fill(&mut id);
        let mut id_entry = [0u8; 40];
        self.fill(&mut id_entry);
        let mut type_entry = [0u8; 25];
        self.fill(&mut type_entry);
        // Two municipalities, two resource types, 500 residents, 10 codes.
        let org = 900_000_000 + (self.rng.below(2) as u32);
        let rt = self.rng.below(2) as u8;
        let patient = (self.rng.below(500) as u128).to_be_bytes();
        let code = self.rng.below(10).to_be_bytes();
        EventKeys {
            seq: keys::seq_key(i + 1),
            id,
            id_entry,
            type_key: keys::with_seq(keys::index_prefix(b'T', org, rt, &[]), i + 1),
            type_entry,
            patient_key: keys::with_seq(keys::index_prefix(b'P', org, rt, &patient), i + 1),
            code_key: keys::with_seq(keys::index_prefix(b'C', org, rt, &code), i + 1),
        }
    }
}

fn sync_histogram() -> Histogram<u64> {
    // Constant, valid bounds: cannot fail at run time.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// A progress line on stderr every 5 s, and the time of every commit.
struct Progress {
    what: &'static str,
    total: u64,
    started: Instant,
    last: Instant,
    last_n: u64,
    /// (events committed, time since the start) after each commit.
    marks: Vec<(u64, Duration)>,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Progress {
        eprintln!("baseline {what}: {total} events, a commit + durable sync per batch");
        Progress {
            what,
            total,
            started: Instant::now(),
            last: Instant::now(),
            last_n: 0,
            marks: Vec::new(),
        }
    }

    /// Events/s over the first and the last tenth of the events (at
    /// commit boundaries: the first commit at or past a tenth, the last
    /// one at or before nine tenths).
    fn stretches(&self) -> (f64, f64) {
        let tenth = (self.total / 10).max(1);
        let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        let first = self
            .marks
            .iter()
            .find(|(n, _)| *n >= tenth)
            .map_or(0.0, |(n, d)| rate(*n, *d));
        let end = self.marks.last().copied().unwrap_or_default();
        let from = self
            .marks
            .iter()
            .rev()
            .find(|(n, _)| *n <= end.0.saturating_sub(tenth))
            .copied()
            .unwrap_or_default();
        (first, rate(end.0 - from.0, end.1.saturating_sub(from.1)))
    }

    fn tick(&mut self, n: u64) {
        self.marks.push((n, self.started.elapsed()));
        let dt = self.last.elapsed();
        if dt >= Duration::from_secs(5) {
            eprintln!(
                "  baseline {}: {n}/{} events ({:.0}/s)",
                self.what,
                self.total,
                (n - self.last_n) as f64 / dt.as_secs_f64()
            );
            self.last = Instant::now();
            self.last_n = n;
        }
    }
}

/// sled 0.34 in `dir` (blocking; call from a blocking thread).
pub fn run_sled(dir: &Path, events: u64, batch: u64, value_size: u64) -> Result<BaselineReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = sled::Config::new()
        .path(dir)
        // As the old store configured it: 64 MiB cache, 8 MiB segments,
        // throughput mode, no background flusher (the sync is ours).
        .cache_capacity(64 * 1024 * 1024)
        .segment_size(8 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .with_context(|| format!("opening sled in {}", dir.display()))?;
    let tree = |n: &str| {
        db.open_tree(n)
            .with_context(|| format!("opening sled tree {n}"))
    };
    let (log, ids, idx) = (tree("log")?, tree("ids")?, tree("idx")?);
    let data_file = dir.join("db");
    let data =
        File::open(&data_file).with_context(|| format!("opening {}", data_file.display()))?;
    let mut pattern = Pattern::new(value_size);
    let mut sync_us = sync_histogram();
    let (batch, mut syncs) = (batch.max(1), 0u64);
    let mut progress = Progress::new("sled 0.34", events);
    let started = Instant::now();
    for i in 0..events {
        let k = pattern.next(i);
        log.insert(k.seq, pattern.record.as_slice())
            .context("sled insert")?;
        ids.insert(k.id, &k.id_entry[..]).context("sled insert")?;
        idx.insert(k.type_key, &k.type_entry[..])
            .context("sled insert")?;
        idx.insert(k.patient_key, &[][..]).context("sled insert")?;
        idx.insert(k.code_key, &[][..]).context("sled insert")?;
        if (i + 1) % batch == 0 || i + 1 == events {
            let t = Instant::now();
            db.flush().context("sled flush")?;
            data.sync_data()
                .with_context(|| format!("fdatasync of {}", data_file.display()))?;
            sync_us.saturating_record((t.elapsed().as_micros() as u64).max(1));
            syncs += 1;
            progress.tick(i + 1);
        }
    }
    let elapsed = started.elapsed();
    drop((log, ids, idx));
    drop(db);
    Ok(BaselineReport {
        engine: "sled 0.34",
        events,
        batch,
        value_size,
        elapsed,
        syncs,
        sync_us,
        disk_bytes: crate::hubenv::du_bytes(dir),
        stretches: progress.stretches(),
    })
}

/// fjall 3 in `dir`, opened as the hub opens it (blocking).
pub fn run_fjall(dir: &Path, events: u64, batch: u64, value_size: u64) -> Result<BaselineReport> {
    let (db, [log, ids, idx]) = open_engine_for_baseline(dir)
        .with_context(|| format!("opening fjall in {}", dir.display()))?;
    let mut pattern = Pattern::new(value_size);
    let mut sync_us = sync_histogram();
    let (batch, mut syncs) = (batch.max(1), 0u64);
    let mut progress = Progress::new("fjall 3", events);
    let started = Instant::now();
    let mut wb = db.batch();
    for i in 0..events {
        let k = pattern.next(i);
        wb.insert(&log, k.seq, pattern.record.as_slice());
        wb.insert(&ids, k.id, k.id_entry);
        wb.insert(&idx, k.type_key, k.type_entry);
        wb.insert(&idx, k.patient_key, []);
        wb.insert(&idx, k.code_key, []);
        if (i + 1) % batch == 0 || i + 1 == events {
            let t = Instant::now();
            std::mem::replace(&mut wb, db.batch())
                .commit()
                .context("fjall commit")?;
            db.persist(fjall::PersistMode::SyncData)
                .context("fjall persist (SyncData)")?;
            sync_us.saturating_record((t.elapsed().as_micros() as u64).max(1));
            syncs += 1;
            progress.tick(i + 1);
        }
    }
    let elapsed = started.elapsed();
    drop((log, ids, idx));
    drop(db);
    Ok(BaselineReport {
        engine: "fjall 3",
        events,
        batch,
        value_size,
        elapsed,
        syncs,
        sync_us,
        disk_bytes: crate::hubenv::du_bytes(dir),
        stretches: progress.stretches(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_engines_count_batches_and_disk() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        for r in [
            super::run_sled(&dir.path().join("s"), 1_000, 64, 1536),
            super::run_fjall(&dir.path().join("f"), 1_000, 64, 1536),
        ] {
            let r = r.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.events, 1_000);
            assert_eq!(r.syncs, 16, "15 full batches and one partial");
            assert!(r.per_sec() > 0.0);
            let (first, last) = r.stretches;
            assert!(first > 0.0 && last > 0.0, "{}: {first} {last}", r.engine);
            assert!(
                r.disk_bytes >= 1_000 * 1536,
                "{}: {}",
                r.engine,
                r.disk_bytes
            );
        }
    }
}
