//! A consumer's queue figures (`Consumers::stats`): how many items are
//! pending and the oldest, counting the part of the log no window has read.

use std::sync::atomic::Ordering;

use super::consumer::Cons;
use super::keys::{self, TypeEntry};
use super::{Shared, lock, read};
use crate::domain::ResourceType;
use crate::store::{ConsumerStats, StoreError};

pub(crate) fn stats(s: &Shared, name: &str) -> Result<ConsumerStats, StoreError> {
    let mut c = lock(s.consumer(name)?);
    c.refresh_urgent(s, name, (0, 0))?;
    let unscanned = c.unscanned.load(Ordering::Acquire);
    let pending = (c.routine.len() + c.urgent.len() + c.explicit.len()) as u64 + unscanned;
    let mut oldest = [
        c.routine.keys().next().copied(),
        c.urgent.first(),
        c.explicit.keys().next().copied(),
    ]
    .into_iter()
    .flatten()
    .min();
    if unscanned > 0
        && let Some(next) = next_routine_after(s, &c)?
    {
        oldest = Some(oldest.map_or(next, |o| o.min(next)));
    }
    Ok(ConsumerStats {
        pending,
        oldest,
        floor: c.floor,
    })
}

/// The first unsettled routine event above the window, from the type index.
fn next_routine_after(s: &Shared, c: &Cons) -> Result<Option<u64>, StoreError> {
    let mut best: Option<u64> = None;
    for rt in ResourceType::ALL {
        let p = keys::index_prefix(b'T', c.org, rt.tag(), &[]);
        let lo = keys::with_seq(p.clone(), c.scanned + 1);
        let hi = keys::with_seq(p, s.visible());
        for g in s.ks.idx.range(lo..=hi) {
            let (k, v) = g.into_inner().map_err(read)?;
            let q = keys::tail_seq(&k)?;
            if !TypeEntry::from_bytes(&v)?.class.is_urgent() && !c.above.contains_key(&q) {
                best = Some(best.map_or(q, |b| b.min(q)));
                break;
            }
        }
    }
    Ok(best)
}
