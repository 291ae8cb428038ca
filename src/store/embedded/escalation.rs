//! Alarms handed to a destination's `escalate_to` fallback: at once when
//! a consumer dead-letters one (from `consumer::settle`), or when one is
//! still unsettled past its class's deadline (`escalate_overdue`, every
//! 500 ms). Each alarm once per consumer: the `E` marker records it.

use std::collections::BTreeMap;

use super::consumer::Cons;
use super::pending::Item;
use super::read::resource_at;
use super::{Shared, keys, lock, read};
use crate::store::{Class, Escalation, StoreError};

/// Adds this consumer's "escalated" marker to `batch`, and the fallback's
/// queue entry unless the fallback has had the item; whether it queued.
///
/// Called with `from`'s lock held; takes `to`'s. Configuration refuses an
/// escalation cycle, so these waits never go round in a circle.
pub(super) fn escalate(
    s: &Shared,
    batch: &mut fjall::OwnedWriteBatch,
    from: &str,
    to: &str,
    seq: u64,
    item: Item,
) -> Result<bool, StoreError> {
    let queue = !had(s, to, seq)?;
    if queue {
        batch.insert(
            &s.ks.cons,
            keys::name_seq(Some(b'Q'), to, seq),
            keys::class_patient(item.class, &item.patient),
        );
    }
    batch.insert(&s.ks.cons, keys::name_seq(Some(b'E'), from, seq), []);
    Ok(queue)
}

/// Whether the fallback `to` has had `seq`: queued there, settled there in
/// any way (a dead letter there waits for an operator's replay, as every
/// dead letter does), or read from its own log (then it is one of those).
fn had(s: &Shared, to: &str, seq: u64) -> Result<bool, StoreError> {
    let fb = lock(s.consumer(to)?);
    if fb.explicit.contains_key(&seq) || fb.settled_at(s, to, seq)?.is_some() {
        return Ok(true);
    }
    if !fb.reads_from_log(seq) {
        return Ok(false);
    }
    let Some(raw) = read::raw_record(s, seq)? else {
        return Ok(false);
    };
    let r: keys::Record = keys::decode(&raw)?;
    Ok(r.org == fb.org)
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
        c.refresh_urgent(s, name, (0, 0))?;
        let (red_us, yellow_us) = (c.spec.red_deadline_us, c.spec.yellow_deadline_us);
        let deadline = move |class: Class| {
            if class == Class::Red {
                red_us
            } else {
                yellow_us
            }
        };
        // Each class's window is in seq order: read only the overdue part.
        let overdue = |class: Class| {
            c.urgent
                .of(class)
                .iter()
                .take_while(move |(seq, _)| seq.saturating_add(deadline(class)) <= now)
        };
        let mut due: BTreeMap<u64, Item> = overdue(Class::Red)
            .chain(overdue(Class::Yellow))
            .chain(c.explicit.iter().filter(|(seq, i)| {
                i.class.is_urgent() && seq.saturating_add(deadline(i.class)) <= now
            }))
            .filter(|(seq, _)| !c.escalated.contains(seq))
            .map(|(s, i)| (*s, *i))
            .collect();
        // Never past what is visible: a later alarm has a higher seq.
        let through = |class: Class| now.saturating_sub(deadline(class)).min(s.visible());
        let seen = [Class::Red, Class::Yellow].map(|class| (class, through(class)));
        for (class, upto) in seen {
            due.extend(overdue_above_window(s, &c, name, class, upto)?);
        }
        if due.is_empty() {
            for (class, upto) in seen {
                c.urgent.set_overdue_seen(class, upto);
            }
            continue;
        }
        let due: Vec<(u64, Item)> = due.into_iter().collect();
        let mut batch = s.db.batch();
        let mut handed = Vec::new();
        for (seq, item) in &due {
            if escalate(s, &mut batch, name, &fb, *seq, *item)? {
                handed.push((fb.clone(), *seq, *item));
            }
        }
        s.commit(batch)?;
        // Only once they are durable: a failed commit looks again.
        for (class, upto) in seen {
            c.urgent.set_overdue_seen(class, upto);
        }
        for (seq, item) in due {
            c.escalated.insert(seq);
            out.push(escalation(s, name, &fb, seq, item, false)?);
        }
        drop(c);
        hand_over(s, handed);
    }
    Ok(out)
}

/// Alarms of `class` above the consumer's window, stored at or before
/// `through`, unsettled and not escalated yet. Each is looked at once:
/// the window's `overdue_seen` remembers how far this went.
fn overdue_above_window(
    s: &Shared,
    c: &Cons,
    name: &str,
    class: Class,
    through: u64,
) -> Result<Vec<(u64, Item)>, StoreError> {
    let w = c.urgent.window(class);
    let from = w.scanned.max(w.overdue_seen);
    if c.spec.escalation_only || through <= from {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let range = keys::alarm_key(c.org, from + 1)..=keys::alarm_key(c.org, through);
    for g in s.ks.alarms.range(range) {
        let (k, v) = g.into_inner().map_err(read)?;
        let seq = keys::tail_seq(&k)?;
        let (cls, patient) = keys::parse_class_patient(&v)?;
        if cls != class || c.escalated.contains(&seq) || c.settled_at(s, name, seq)?.is_some() {
            continue;
        }
        let item = Item {
            class,
            patient,
            answers: 0,
        };
        out.push((seq, item));
    }
    Ok(out)
}
