//! Alarms handed to a destination's `escalate_to` fallback: at once when
//! a consumer dead-letters one (from `consumer::settle`), or when one is
//! still unsettled past its class's deadline (`escalate_overdue`, every
//! 500 ms). Each alarm once per consumer: the `E` marker records it.

use std::collections::BTreeMap;

use super::pending::Item;
use super::read::resource_at;
use super::{Shared, keys, lock};
use crate::store::{Class, Escalation, StoreError};

/// Adds the fallback's queue entry and this consumer's "escalated" marker
/// to `batch`.
pub(super) fn escalate(
    s: &Shared,
    batch: &mut fjall::OwnedWriteBatch,
    from: &str,
    to: &str,
    seq: u64,
    item: Item,
) -> Result<(), StoreError> {
    s.consumer(to)?;
    batch.insert(
        &s.ks.cons,
        keys::name_seq(Some(b'Q'), to, seq),
        keys::class_patient(item.class, &item.patient),
    );
    batch.insert(&s.ks.cons, keys::name_seq(Some(b'E'), from, seq), []);
    Ok(())
}

pub(super) fn escalation(
    s: &Shared,
    from: &str,
    to: &str,
    seq: u64,
    item: Item,
    dead_lettered: bool,
) -> Result<Escalation, StoreError> {
    Ok(Escalation {
        from: from.to_string(),
        to: to.to_string(),
        seq,
        resource: resource_at(s, seq)?.resource,
        class: item.class,
        dead_lettered,
    })
}

/// After the batch is committed: the fallbacks learn of their new items
/// and their workers wake up.
pub(super) fn hand_over(s: &Shared, handed: Vec<(String, u64, Item)>) {
    if handed.is_empty() {
        return;
    }
    for (to, seq, item) in handed {
        if let Ok(fb) = s.consumer(&to) {
            lock(fb).explicit.insert(seq, item);
        }
    }
    s.committed.send_replace(s.visible());
}

pub(crate) fn escalate_overdue(s: &Shared, now: u64) -> Result<Vec<Escalation>, StoreError> {
    let mut out = Vec::new();
    for (name, cref) in &s.consumers {
        let mut c = lock(cref);
        let Some(fb) = c.spec.escalate_to.clone() else {
            continue;
        };
        c.refresh_urgent(s)?;
        let deadline = |class: Class| {
            if class == Class::Red {
                c.spec.red_deadline_us
            } else {
                c.spec.yellow_deadline_us
            }
        };
        // Each class's map is in seq order: read only the overdue part.
        let overdue = |class: Class| {
            c.urgent
                .of(class)
                .iter()
                .take_while(move |(seq, _)| seq.saturating_add(deadline(class)) <= now)
        };
        let due: Vec<(u64, Item)> = overdue(Class::Red)
            .chain(overdue(Class::Yellow))
            .chain(c.explicit.iter().filter(|(seq, i)| {
                i.class.is_urgent() && seq.saturating_add(deadline(i.class)) <= now
            }))
            .filter(|(seq, _)| !c.escalated.contains(seq))
            .map(|(s, i)| (*s, *i))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        if due.is_empty() {
            continue;
        }
        let mut batch = s.db.batch();
        let mut handed = Vec::new();
        for (seq, item) in &due {
            escalate(s, &mut batch, name, &fb, *seq, *item)?;
            handed.push((fb.clone(), *seq, *item));
        }
        s.commit(batch)?;
        for (seq, item) in due {
            c.escalated.insert(seq);
            out.push(escalation(s, name, &fb, seq, item, false)?);
        }
        drop(c);
        hand_over(s, handed);
    }
    Ok(out)
}
