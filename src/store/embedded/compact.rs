//! Giving disk space back: each keyspace flushed and major-compacted.
//!
//! Why the hub has to ask for it: fjall's leveled compaction picks its work
//! by level 0's table count and each level's size, not by how much of a
//! table is removed. A removed record's bytes go only when a compaction
//! merges it with its tombstone in the last level. The tombstones a
//! retention pass writes are small, so they seldom push a compaction down
//! to the last level, where the old records lie, and a running hub keeps
//! most of the space (BENCHMARKS.md, "Retention: the space that comes
//! back"). A major compaction merges every table of a keyspace into the
//! last level: removed records and their tombstones both go.
//!
//! Cost: every live record of a keyspace is read and written once, and the
//! keyspace's other compactions wait meanwhile (fjall holds a lock for a
//! major compaction). Reads and writes go on; on a big store, run it at a
//! quiet hour. A rewrite needs up to the keyspace's size in free disk
//! before it gives anything back, so the smallest keyspaces go first, and
//! one that does not fit above the store's free-space reserve is skipped
//! and reported, never started.

use fjall::Keyspace;

use super::Shared;
use super::writer::free_bytes;
use crate::store::{ReclaimProgress, SpacePart, SpaceReport, StoreError};

/// The journal's line in the report.
pub(crate) const JOURNAL: &str = "journal";

/// Flushes and major-compacts every keyspace, smallest first; then reports
/// the journal, which fjall trims once every keyspace has flushed past it.
/// Stops before the next keyspace once `closing()` says the store closes.
pub(crate) fn reclaim(
    s: &Shared,
    progress: &ReclaimProgress,
    closing: &dyn Fn() -> bool,
) -> Result<SpaceReport, StoreError> {
    mark_compaction(s)?;
    let mut spaces: Vec<(&str, &Keyspace)> = s.ks.named().to_vec();
    spaces.sort_by_key(|(_, ks)| ks.disk_space());
    let journal_before = journal_bytes(s)?;
    let total = spaces.len();
    let mut parts = Vec::with_capacity(total + 1);
    for (i, (name, ks)) in spaces.into_iter().enumerate() {
        if closing() {
            tracing::info!(
                done = i,
                of = total,
                "compaction stopped: the store is closing; run it again after the start"
            );
            break;
        }
        progress(name, i + 1, total);
        parts.push(compact_one(s, name, ks)?);
    }
    parts.push(SpacePart {
        name: JOURNAL.into(),
        before: journal_before,
        after: journal_bytes(s)?,
        skipped: None,
    });
    Ok(SpaceReport { parts, note: None })
}

/// One keyspace: skipped when rewriting it could eat into the free-space
/// reserve that the writer keeps for accepting events.
fn compact_one(s: &Shared, name: &str, ks: &Keyspace) -> Result<SpacePart, StoreError> {
    let before = ks.disk_space();
    let free = free_bytes(&s.dir)
        .map_err(|e| StoreError::Read(format!("cannot read free disk space: {e}")))?;
    if free < before.saturating_add(s.min_free_bytes) {
        let skipped = format!(
            "rewriting it needs up to {} MiB free above the {} MiB reserve; {} MiB are free",
            before >> 20,
            s.min_free_bytes >> 20,
            free >> 20
        );
        tracing::warn!(
            keyspace = name,
            "{skipped}; free disk space, then compact again"
        );
        return Ok(SpacePart {
            name: name.into(),
            before,
            after: before,
            skipped: Some(skipped),
        });
    }
    let failed = |e: fjall::Error| StoreError::Write(format!("compacting keyspace {name}: {e}"));
    // What the memtable holds (tombstones included) must be in a table for
    // the compaction to see it.
    ks.rotate_memtable_and_wait().map_err(failed)?;
    ks.major_compact().map_err(failed)?;
    let after = ks.disk_space();
    tracing::info!(
        keyspace = name,
        before_mib = before >> 20,
        after_mib = after >> 20,
        "compacted a keyspace"
    );
    Ok(SpacePart {
        name: name.into(),
        before,
        after,
        skipped: None,
    })
}

/// Writes when the store was last compacted into `meta`.
///
/// The write matters more than the key: fjall seals the active journal file
/// only when a flush finds its write position past 64 MB, and a journal
/// file opened again at start-up (for appending) reports position 0 until
/// something is written to it. Without a write first, a hub compacted
/// before its first event after a start kept its whole journal (BENCHMARKS.md,
/// "2026-12-08 (tenth session)").
fn mark_compaction(s: &Shared) -> Result<(), StoreError> {
    s.ks.meta
        .insert(COMPACTED_AT, super::now_micros().to_be_bytes())
        .map_err(|e| StoreError::Write(format!("cannot note the compaction in the store: {e}")))
}

/// The `meta` key of [`mark_compaction`].
pub(crate) const COMPACTED_AT: &str = "compacted_at";

fn journal_bytes(s: &Shared) -> Result<u64, StoreError> {
    s.db.journal_disk_space()
        .map_err(|e| StoreError::Read(format!("cannot read the journal's size: {e}")))
}
