//! `vendor-sim baseline`: what this disk does with sled alone.
//!
//! Why it exists: "events/s" means nothing without the disk it ran on. The
//! honest yardstick for a hub that acks only after fdatasync is the same
//! number of bare sled inserts of about the same size, made durable the way
//! group commit does it: a batch of inserts, then `flush()` and an
//! `fdatasync` of sled's data file (`flush()` alone does not sync the file
//! on Linux). The bench divides the hub's events/s by this.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use knutepunkt::sim::SplitMix64;

#[derive(Args, Debug, Clone)]
pub struct BaselineArgs {
    /// A new or empty directory for the sled database (removed afterwards
    /// unless --keep).
    #[arg(long)]
    pub dir: PathBuf,
    /// Number of inserts.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub events: u64,
    /// Inserts per flush + fdatasync, like one group commit.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Bytes per value (a stored FHIR resource with its index entries is about 1.5 KB).
    #[arg(long, default_value_t = 1536, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub value_size: u64,
    /// Keep the database directory.
    #[arg(long)]
    pub keep: bool,
}

/// What the baseline measured.
#[derive(Debug)]
pub struct BaselineReport {
    pub events: u64,
    pub batch: u64,
    pub value_size: u64,
    pub elapsed: Duration,
    pub syncs: u64,
    /// flush + fdatasync time per batch, microseconds.
    pub sync_us: Histogram<u64>,
}

impl BaselineReport {
    pub fn writes_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn print_text(&self) {
        println!(
            "baseline: {} sled inserts of {} B, flush + fdatasync every {}: {:.2} s → {:.0} durable writes/s",
            self.events,
            self.value_size,
            self.batch,
            self.elapsed.as_secs_f64(),
            self.writes_per_sec()
        );
        println!(
            "  {} syncs; flush + fdatasync p50 {:.3} ms, p99 {:.3} ms",
            self.syncs,
            self.sync_us.value_at_quantile(0.5) as f64 / 1000.0,
            self.sync_us.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
}

pub async fn run_cli(a: BaselineArgs) -> Result<()> {
    let dir = crate::fresh_dir(&a.dir)?;
    let keep = a.keep;
    let report = tokio::task::spawn_blocking(move || run(&dir, a.events, a.batch, a.value_size))
        .await
        .context("baseline task failed")??;
    report.print_text();
    if !keep {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("removing {}", a.dir.display()))?;
    }
    Ok(())
}

/// Runs the baseline in `dir` (blocking; call from a blocking thread).
pub fn run(dir: &Path, events: u64, batch: u64, value_size: u64) -> Result<BaselineReport> {
    let db = sled::Config::new()
        .path(dir)
        // Configured like the hub's store (src/store/sled.rs), so the ratio
        // compares the hub's work, not sled settings: 64 MiB cache, 8 MiB
        // segments, throughput mode, no background flusher.
        .cache_capacity(64 * 1024 * 1024)
        .segment_size(8 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .with_context(|| format!("opening sled in {}", dir.display()))?;
    let tree = db.open_tree("baseline").context("opening the sled tree")?;
    // sled's data file; syncing it is what makes the batch durable.
    let data_file = dir.join("db");
    let data =
        File::open(&data_file).with_context(|| format!("opening {}", data_file.display()))?;

    // Incompressible bytes, like the hub's varied JSON; a fresh prefix per
    // insert so no two values are equal.
    let mut rng = SplitMix64::new(0xB45E_11AE);
    let mut value = vec![0u8; value_size as usize];
    for chunk in value.chunks_mut(8) {
        let r = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    #[allow(clippy::expect_used)]
    let mut sync_us =
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid");
    let batch = batch.max(1);
    let mut syncs = 0u64;
    let started = Instant::now();
    for i in 0..events {
        let stamp = i.to_le_bytes();
        let n = stamp.len().min(value.len());
        value[..n].copy_from_slice(&stamp[..n]);
        tree.insert(i.to_be_bytes(), value.as_slice())
            .context("sled insert")?;
        if (i + 1) % batch == 0 || i + 1 == events {
            let t = Instant::now();
            tree.flush().context("sled flush")?;
            data.sync_data()
                .with_context(|| format!("fdatasync of {}", data_file.display()))?;
            sync_us.saturating_record((t.elapsed().as_micros() as u64).max(1));
            syncs += 1;
        }
    }
    let elapsed = started.elapsed();
    drop(tree);
    drop(db);
    Ok(BaselineReport {
        events,
        batch,
        value_size,
        elapsed,
        syncs,
        sync_us,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn baseline_counts_batches() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let r = super::run(dir.path(), 1_000, 64, 1536).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.events, 1_000);
        assert_eq!(r.syncs, 16, "15 full batches and one partial");
        assert!(r.writes_per_sec() > 0.0);
    }
}
