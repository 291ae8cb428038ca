//! The keyspaces, their memtable sizes, and how the database is opened.
//!
//! fjall keeps its defaults for background work (one worker per core, up
//! to four). Tried and measured (BENCHMARKS.md, "2026-12-07"): one worker
//! with the hub rotating memtables itself (no busy loop, but flushes wait
//! behind compactions, so writes halt after a big load), and the workers at
//! a lower CPU priority; neither lowered the ack tail.

use std::path::Path;

use fjall::config::{FilterPolicy, PartitioningPolicy};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use super::{OpenError, engine};

const MIB: u64 = 1024 * 1024;

/// Each keyspace's name, in backup order, with its memtable size. Small
/// memtables: nine keyspaces each flush on their own, and their sum bounds
/// the memory writes hold before they reach tables.
pub(crate) const KEYSPACES: [(&str, u64); 9] = [
    ("log", 16 * MIB),
    ("ids", 8 * MIB),
    ("idx", 8 * MIB),
    ("alarms", 2 * MIB),
    ("cons", 2 * MIB),
    ("dlq", 2 * MIB),
    ("audit", 4 * MIB),
    ("jti", 2 * MIB),
    ("meta", MIB),
];

/// The keyspaces (see [`super::keys`]).
#[derive(Clone)]
pub(crate) struct Spaces {
    pub log: Keyspace,
    pub ids: Keyspace,
    pub idx: Keyspace,
    pub alarms: Keyspace,
    pub cons: Keyspace,
    pub dlq: Keyspace,
    pub audit: Keyspace,
    pub jti: Keyspace,
    pub meta: Keyspace,
}

impl Spaces {
    /// Every keyspace with its name, in backup order (as [`KEYSPACES`]).
    pub(crate) fn named(&self) -> [(&'static str, &Keyspace); 9] {
        // In the order of `KEYSPACES` and of `open_spaces` below.
        let spaces = [
            &self.log,
            &self.ids,
            &self.idx,
            &self.alarms,
            &self.cons,
            &self.dlq,
            &self.audit,
            &self.jti,
            &self.meta,
        ];
        std::array::from_fn(|i| (KEYSPACES[i].0, spaces[i]))
    }
}

/// How a keyspace is laid out on disk. fjall stores these with the
/// keyspace when it is created; a keyspace created by an older hub keeps
/// its own.
///
/// - Bloom filters only where a point read can miss: `ids` (idempotency)
///   and `jti` (replay guard) are asked for keys that mostly do not exist,
///   `cons`/`dlq`/`meta` are small. `log` and `audit` are read by a seq
///   that exists, `idx` and `alarms` only by range: a filter there costs
///   memory (fjall pins level-0 filters) and disk, and saves no read.
/// - `log` and `audit` take their keys in increasing order, so fjall moves
///   their flushed tables to the last level without rewriting them, and a
///   table keeps the pinned full index it was flushed with. Partitioned
///   indexes keep only a small top-level index per table in memory, the
///   rest goes through the block cache: memory no longer grows with the
///   number of events stored (BENCHMARKS.md, "2026-12-07 (later)").
fn create_options(name: &str, memtable: u64) -> KeyspaceCreateOptions {
    let o = KeyspaceCreateOptions::default().max_memtable_size(memtable);
    match name {
        "log" | "audit" => o
            .filter_policy(FilterPolicy::disabled())
            .index_block_partitioning_policy(PartitioningPolicy::all(true)),
        "idx" | "alarms" => o.filter_policy(FilterPolicy::disabled()),
        _ => o,
    }
}

/// How much sealed journal fjall keeps before it flushes the keyspaces that
/// hold it back.
///
/// fjall seals the journal once it passes 64 MB and deletes a sealed file
/// once every keyspace with writes in it has flushed past it. A keyspace
/// that seldom fills its memtable (`meta` holds one key, written when the
/// store is created; `dlq`, `jti`, `cons` and `alarms` can be as quiet)
/// holds back every file sealed after its last flush, until the sealed
/// files reach this bound. fjall's default bound is 512 MiB, so a hub that
/// only takes events kept up to 600 MiB of journal, more than the tables
/// of its first 300,000 events, and a restart replayed all of it
/// (BENCHMARKS.md, "2026-12-08 (tenth session)"). With 128 MiB the journal
/// stays near 200 MiB; the price is a flush of a quiet keyspace's small
/// memtable every 128 MiB of writes.
pub(crate) const JOURNAL_BOUND: u64 = 128 * MIB;

/// Creates `dir` if needed and opens the database with every keyspace.
pub(crate) fn open_spaces(dir: &Path, cache_bytes: u64) -> Result<(Database, Spaces), OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let db = Database::builder(dir)
        .cache_size(cache_bytes)
        .max_journaling_size(JOURNAL_BOUND)
        .open()
        .map_err(engine(dir))?;
    let [log, ids, idx, alarms, cons, dlq, audit, jti, meta] = KEYSPACES.map(|(name, size)| {
        db.keyspace(name, || create_options(name, size))
            .map_err(engine(dir))
    });
    let ks = Spaces {
        log: log?,
        ids: ids?,
        idx: idx?,
        alarms: alarms?,
        cons: cons?,
        dlq: dlq?,
        audit: audit?,
        jti: jti?,
        meta: meta?,
    };
    Ok((db, ks))
}

#[cfg(test)]
mod tests {
    use super::super::compact_tests::noise;
    use super::*;

    /// A keyspace that never fills its memtable must not hold back the
    /// journal beyond [`JOURNAL_BOUND`]: without the bound, fjall keeps
    /// every file sealed after that keyspace's one write, up to 512 MiB.
    #[test]
    fn a_quiet_keyspace_does_not_hold_back_the_journal() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let (db, ks) = open_spaces(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        ks.cons
            .insert("quiet", [1])
            .unwrap_or_else(|e| panic!("{e}"));
        // 400 MiB of incompressible values (the journal compresses large
        // entries): more than the bound and its sealed files together.
        let mut peak = 0;
        for i in 0..6400u64 {
            ks.log
                .insert(i.to_be_bytes(), noise(i, 64 * 1024))
                .unwrap_or_else(|e| panic!("{e}"));
            peak = peak.max(db.journal_disk_space().unwrap_or_else(|e| panic!("{e}")));
        }
        assert!(
            peak <= 2 * JOURNAL_BOUND,
            "the journal reached {} MiB while 400 MiB were written",
            peak >> 20
        );
        assert_eq!(
            ks.cons.get("quiet").ok().flatten().as_deref(),
            Some(&[1u8][..])
        );
    }
}
