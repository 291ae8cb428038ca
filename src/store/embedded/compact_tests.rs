//! Unit tests of `reclaim_space` (`compact.rs`): the space retention
//! removed comes back, and so does the journal of a store just opened.

use super::tests::{OSLO, org, put, rec, tmp};
use super::*;
use crate::domain::VendorId;
use crate::store::Class;

/// A record of 4 KiB that LZ4 cannot shrink much (an LCG's hex, seeded).
fn incompressible(event: &str, seed: u64) -> NewRecord {
    let mut r = rec(event, 1, Class::Routine);
    let mut x = seed ^ 0x2545_f491_4f6c_dd1d;
    let pad: String = (0..256)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            format!("{x:016x}")
        })
        .collect();
    r.resource.json = format!("{{\"resourceType\":\"Observation\",\"note\":\"{pad}\"}}");
    r
}

/// A retention pass leaves the removed records' bytes on disk until a
/// compaction reaches them; `reclaim_space` gives them back at once and
/// keeps what was not removed.
#[tokio::test]
async fn reclaim_space_gives_back_what_retention_removed() {
    let dir = tmp();
    let opts = EmbeddedOptions {
        min_free_bytes: 0,
        ..EmbeddedOptions::default()
    };
    // No destinations: nothing holds an event back from retention.
    let s = EmbeddedStore::open(dir.path(), opts, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..1500 {
        put(&s, incompressible(&format!("old-{i}"), i)).await;
    }
    let cut = now_micros();
    let mut kept = Vec::new();
    for i in 0..500 {
        kept.push(put(&s, incompressible(&format!("new-{i}"), 1500 + i)).await);
    }
    let steps = Arc::new(Mutex::new(Vec::new()));
    let seen = steps.clone();
    let progress: ReclaimProgress = Arc::new(move |name: &str, i: usize, n: usize| {
        lock(&seen).push((name.to_string(), i, n));
    });
    // First everything into tables, so the pass below is measured alone.
    let first = s.reclaim_space(progress.clone()).await;
    let first = first.unwrap_or_else(|e| panic!("{e}"));
    let policy = RetentionPolicy {
        default: [Some(0); 3],
        ..RetentionPolicy::default()
    };
    let r = s.apply_retention(policy, cut).await;
    assert_eq!(r.ok().map(|r| (r.removed, r.held)), Some((1500, 0)));
    let report = s.reclaim_space(progress).await;
    let report = report.unwrap_or_else(|e| panic!("{e}"));

    let log = |r: &SpaceReport| {
        r.parts
            .iter()
            .find(|p| p.name == "log")
            .map(|p| (p.before, p.after, p.skipped.clone()))
    };
    let (Some((_, full, None)), Some((before, after, None))) = (log(&first), log(&report)) else {
        panic!("no compacted log in {first:?} / {report:?}");
    };
    assert!(full > 1500 * 4096, "4 KiB records in {full} bytes?");
    assert!(
        before >= full,
        "the pass alone gave back {before} of {full} bytes"
    );
    assert!(
        after * 3 < full,
        "a quarter kept, but {after} of {full} bytes left"
    );
    assert_eq!(report.parts.len(), 10, "{report:?}");
    assert_eq!(
        report.parts.last().map(|p| p.name.as_str()),
        Some(compact::JOURNAL)
    );
    assert!(report.note.is_none());
    let steps = lock(&steps).clone();
    assert_eq!(steps.len(), 18, "{steps:?}");
    assert!(
        steps[..9]
            .iter()
            .enumerate()
            .all(|(i, (_, at, n))| *at == i + 1 && *n == 9)
    );
    // What retention kept is still there, in order.
    let o = org(OSLO);
    for (i, seq) in kept.iter().enumerate().step_by(97) {
        let id = crate::domain::resource_id(&VendorId("v1".into()), &format!("new-{i}"));
        let got = s.get(o, ResourceType::Observation, id).await.ok().flatten();
        assert_eq!(got.map(|r| r.seq), Some(*seq));
    }
}

/// A store compacted right after it was opened, before anything new was
/// written, still trims its journal. fjall seals the active journal file
/// only when a flush finds its write position past 64 MB, and a file opened
/// again for appending reports position 0 until it is written to; without
/// the compaction's own write, the whole file stayed.
#[tokio::test]
async fn reclaim_space_trims_the_journal_of_a_store_just_opened() {
    let dir = tmp();
    {
        let (db, ks) = spaces::open_spaces(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        check_layout(dir.path(), &db, &ks).unwrap_or_else(|e| panic!("{e}"));
        let mut n = 0u64;
        let mut put_raw = |space: &fjall::Keyspace, mib: u64| {
            for _ in 0..mib * 16 {
                n += 1;
                let v = noise(n, 64 * 1024);
                space
                    .insert(n.to_be_bytes(), v)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        };
        // 58 MiB through `jti`'s small memtable (flushed as it goes, the
        // journal below 64 MB at each flush), then 14 MiB that stay in the
        // memtables of `ids` and `idx`: one active journal file of 72 MiB.
        put_raw(&ks.jti, 58);
        put_raw(&ks.ids, 7);
        put_raw(&ks.idx, 7);
        db.persist(fjall::PersistMode::SyncAll)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let s = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let quiet: ReclaimProgress = Arc::new(|_: &str, _: usize, _: usize| {});
    let report = s
        .reclaim_space(quiet)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let journal = report
        .parts
        .iter()
        .find(|p| p.name == compact::JOURNAL)
        .map(|p| (p.before, p.after));
    let Some((before, after)) = journal else {
        panic!("no journal in {report:?}")
    };
    assert!(before > 70 << 20, "the journal held {before} bytes before");
    assert!(
        after < before,
        "the journal stayed at {after} bytes after the compaction"
    );
    assert!(
        s.shared
            .ks
            .meta
            .get(compact::COMPACTED_AT)
            .ok()
            .flatten()
            .is_some(),
        "the compaction is not noted in meta"
    );
}

/// `len` bytes that neither LZ4 nor the journal's compression can shrink
/// (xorshift64 from `seed`): a value whose size on disk is its length.
pub(super) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = vec![0u8; len];
    for chunk in v.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    v
}
