//! `vendor-sim bench`'s retention step: how fast a retention pass removes
//! events and how much disk it gives back.
//!
//! Runs on the store the stopped hub left behind, opened as a library:
//! 1. `du` of the store as the hub left it;
//! 2. the yardstick, with fjall alone (opened as the hub opens it): every
//!    memtable flushed and every keyspace major-compacted, then `du` and
//!    each keyspace's table bytes. Compaction alone shrinks a store (fjall
//!    writes levels 0 and 1 uncompressed and the last level with LZ4), so
//!    the space retention gives back is measured from here, not from 1;
//!    one read of the log finds the median stored event (its seq is its
//!    arrival time, µs);
//! 3. the hub's own retention pass (`EventLog::apply_retention`, no
//!    destinations, so nothing is held back) with every data class kept one
//!    day and the clock one day after the median event: the older half of
//!    the log is past retention. The store is closed, `du` taken again and
//!    each keyspace's table bytes (what a hub has after a pass; the bench
//!    has flushed and compacted nothing since);
//! 4. the hub's own compaction (`EventLog::reclaim_space`, what
//!    `knutepunkt compact` runs: each keyspace flushed and major-compacted),
//!    `du` once more.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use knutepunkt::store::embedded::{EmbeddedOptions, EmbeddedStore, keys, open_engine_for_baseline};
use knutepunkt::store::{EventLog, ReclaimProgress, RetentionPolicy, RetentionReport, SpacePart};

use crate::hubenv;

/// One day, µs: what the policy keeps of every data class.
const DAY_US: u64 = 24 * 3600 * 1_000_000;

/// The journal's line among the keyspaces.
pub const JOURNAL: &str = "journal";

/// What the retention step measured.
pub struct RetentionBench {
    /// Events in the log before the pass.
    pub stored: u64,
    pub removed: u64,
    pub held: u64,
    pub pass: Duration,
    /// `du` of the store: as the hub left it; flushed and compacted before
    /// the pass (the yardstick); after the pass (store closed); flushed and
    /// compacted after the pass.
    pub du: [u64; 4],
    /// The flush + major compaction before and after the pass.
    pub compaction: [Duration; 2],
    /// Keyspace (the journal last, the others largest first) and its table
    /// bytes: as the hub left them (what its memtables held is only in the
    /// journal), compacted before the pass, after the pass, compacted after.
    pub spaces: Vec<(String, [u64; 4])>,
}

impl RetentionBench {
    pub fn removed_per_sec(&self) -> f64 {
        self.removed as f64 / self.pass.as_secs_f64().max(1e-9)
    }

    /// Table bytes of every keyspace (the journal left out), as in `spaces`.
    pub fn tables(&self) -> [u64; 4] {
        let mut t = [0; 4];
        for (_, b) in self.spaces.iter().filter(|(n, _)| n != JOURNAL) {
            for (t, x) in t.iter_mut().zip(b) {
                *t += x;
            }
        }
        t
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// The step, on the store in `store_dir` (the hub must be stopped).
pub async fn run(store_dir: &Path) -> Result<RetentionBench> {
    let du_left = hubenv::du_bytes(store_dir);
    eprintln!(
        "bench: retention: store {:.0} MiB on disk as the hub left it; flush + major compaction first (the yardstick)",
        mib(du_left)
    );
    let dir = store_dir.to_path_buf();
    let (stored, median, [left, yardstick], compaction_before) =
        tokio::task::spawn_blocking(move || prepare(&dir))
            .await
            .context("retention: compaction task failed")??;
    let du_yardstick = hubenv::du_bytes(store_dir);
    eprintln!(
        "bench: retention: compacted in {:.1} s: {:.0} MiB on disk, {stored} events",
        compaction_before.as_secs_f64(),
        mib(du_yardstick)
    );
    if stored < 2 {
        bail!("the store holds {stored} events: nothing to measure");
    }

    let (report, pass) = retention_pass(store_dir, stored, median).await?;
    let du_pass = hubenv::du_bytes(store_dir);
    eprintln!(
        "bench: retention: {} removed, {} held in {:.1} s; store {:.0} MiB on disk (closed)",
        report.removed,
        report.held,
        pass.as_secs_f64(),
        mib(du_pass)
    );

    let (after_pass, after, compaction_after) = hub_compaction(store_dir).await?;
    let du_after = hubenv::du_bytes(store_dir);
    eprintln!(
        "bench: retention: the hub's compaction (`knutepunkt compact`) {:.1} s; store {:.0} MiB on disk",
        compaction_after.as_secs_f64(),
        mib(du_after)
    );

    let spaces = per_space([&left, &yardstick, &after_pass, &after]);
    Ok(RetentionBench {
        stored,
        removed: report.removed,
        held: report.held,
        pass,
        du: [du_left, du_yardstick, du_pass, du_after],
        compaction: [compaction_before, compaction_after],
        spaces,
    })
}

/// One retention pass (every class kept a day, the clock a day after the
/// median event), with its progress every 5 s; the store is closed after.
async fn retention_pass(
    store_dir: &Path,
    stored: u64,
    median: u64,
) -> Result<(RetentionReport, Duration)> {
    let store = EmbeddedStore::open(store_dir, EmbeddedOptions::default(), Vec::new())
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let policy = RetentionPolicy {
        default: [Some(DAY_US); 3],
        per_municipality: Default::default(),
    };
    eprintln!(
        "bench: retention: pass over {stored} events, every class kept 1 day, clock 1 day after the median event (about {} to remove)",
        stored / 2
    );
    let started = Instant::now();
    let report = {
        // A boxed future: no pinning needed; it borrows `store` until the
        // block ends, before `close` takes it.
        let mut pass = store.apply_retention(policy, median + DAY_US);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tokio::select! {
                r = &mut pass => break r,
                _ = tick.tick() => eprintln!(
                    "  retention pass: {:.0} s, store {:.0} MiB on disk",
                    started.elapsed().as_secs_f64(),
                    mib(hubenv::du_bytes(store_dir))
                ),
            }
        }
    };
    let pass = started.elapsed();
    store.close().await;
    let report = report.context("the retention pass failed")?;
    Ok((report, pass))
}

/// Step 4: the hub's own compaction (`EventLog::reclaim_space`, what
/// `knutepunkt compact` runs); each part's bytes before and after it, and
/// how long it took. The store is closed after.
async fn hub_compaction(store_dir: &Path) -> Result<(Sizes, Sizes, Duration)> {
    let store = EmbeddedStore::open(store_dir, EmbeddedOptions::default(), Vec::new())
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let progress: ReclaimProgress = Arc::new(|name: &str, at: usize, of: usize| {
        eprintln!("  compaction: {name} ({at} of {of})");
    });
    let started = Instant::now();
    let report = store.reclaim_space(progress).await;
    let took = started.elapsed();
    store.close().await;
    let report = report.context("the hub's compaction failed")?;
    for p in &report.parts {
        match &p.skipped {
            Some(why) => eprintln!("  compaction: {} skipped: {why}", p.name),
            None => eprintln!(
                "  compaction: {} {:.1} → {:.1} MiB",
                p.name,
                mib(p.before),
                mib(p.after)
            ),
        }
    }
    let sizes = |f: fn(&SpacePart) -> u64| {
        report
            .parts
            .iter()
            .map(|p| (p.name.clone(), f(p)))
            .collect()
    };
    Ok((sizes(|p| p.before), sizes(|p| p.after), took))
}

/// Each keyspace's table bytes at the four points (as left, the yardstick,
/// after the pass, after compaction), largest first, the journal last.
fn per_space(at: [&[(String, u64)]; 4]) -> Vec<(String, [u64; 4])> {
    let four = |n: &str| at.map(|sizes| size_of(sizes, n));
    let mut spaces: Vec<(String, [u64; 4])> = at[1]
        .iter()
        .filter(|(n, _)| n != JOURNAL)
        .map(|(n, _)| (n.clone(), four(n)))
        // Leaves out the near-empty ones (`meta`, `jti`, ...).
        .filter(|(_, b)| b.iter().any(|&x| x >= 64 * 1024))
        .collect();
    spaces.sort_by(|x, y| y.1[1].cmp(&x.1[1]));
    spaces.push((JOURNAL.into(), four(JOURNAL)));
    spaces
}

fn size_of(sizes: &[(String, u64)], name: &str) -> u64 {
    sizes.iter().find(|(n, _)| n == name).map_or(0, |(_, b)| *b)
}

/// The engine as the hub opens it, with every keyspace of the store.
fn open_all(dir: &Path) -> Result<(Database, Vec<(String, Keyspace)>)> {
    let (db, _) = open_engine_for_baseline(dir)
        .with_context(|| format!("opening the store in {} with fjall", dir.display()))?;
    let mut spaces = Vec::new();
    for name in db.list_keyspace_names() {
        let name = name.to_string();
        // Every one exists: this only hands out its handle.
        let ks = db
            .keyspace(&name, KeyspaceCreateOptions::default)
            .with_context(|| format!("opening keyspace {name}"))?;
        spaces.push((name, ks));
    }
    spaces.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((db, spaces))
}

/// Table bytes of every keyspace, and the journal's bytes.
fn sizes(db: &Database, spaces: &[(String, Keyspace)]) -> Result<Sizes> {
    let mut out: Vec<(String, u64)> = spaces
        .iter()
        .map(|(n, ks)| (n.clone(), ks.disk_space()))
        .collect();
    out.push((
        JOURNAL.into(),
        db.journal_disk_space().context("journal size")?,
    ));
    Ok(out)
}

/// Flushes every memtable, then compacts every keyspace into its last
/// level, which drops what tombstones cover and the tombstones (blocking).
fn compact_all(spaces: &[(String, Keyspace)]) -> Result<Duration> {
    let started = Instant::now();
    eprintln!("  compaction: flushing {} memtables", spaces.len());
    for (name, ks) in spaces {
        ks.rotate_memtable_and_wait()
            .with_context(|| format!("flushing {name}"))?;
    }
    for (name, ks) in spaces {
        let (before, t) = (ks.disk_space(), Instant::now());
        // Waits for the minor compactions the flushes started.
        ks.major_compact()
            .with_context(|| format!("compacting {name}"))?;
        if before > 0 {
            eprintln!(
                "  compaction: {name} {:.1} → {:.1} MiB in {:.1} s",
                mib(before),
                mib(ks.disk_space()),
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(started.elapsed())
}

/// Table bytes per keyspace, and the journal's.
type Sizes = Vec<(String, u64)>;

/// The sizes as the hub left them and the yardstick's (every keyspace
/// flushed and compacted), then the events in the log and the median one's
/// seq (blocking).
fn prepare(dir: &Path) -> Result<(u64, u64, [Sizes; 2], Duration)> {
    let (db, spaces) = open_all(dir)?;
    let left = sizes(&db, &spaces)?;
    let took = compact_all(&spaces)?;
    let compacted = sizes(&db, &spaces)?;
    let log = spaces
        .iter()
        .find(|(n, _)| n == "log")
        .map(|(_, ks)| ks.clone())
        .context("the store has no log keyspace")?;
    eprintln!("  retention: reading the log for its median event");
    // Every 64th seq: the median to within 64 events, in little memory.
    let mut sample = Vec::new();
    let mut n = 0u64;
    let mut last = Instant::now();
    for g in log.iter() {
        let k = g.key().context("reading the log")?;
        if n.is_multiple_of(64) {
            sample.push(keys::be_u64(&k).context("a log key is not a seq")?);
        }
        n += 1;
        if last.elapsed() >= Duration::from_secs(5) {
            eprintln!("  retention: {n} log entries read");
            last = Instant::now();
        }
    }
    let median = sample.get(sample.len() / 2).copied().unwrap_or(0);
    Ok((n, median, [left, compacted], took))
}
