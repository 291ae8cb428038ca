//! Settling a consumer's items: delivered, dead-lettered (an alarm is
//! handed to the consumer's fallback in the same write) or released. The
//! floor folds and the batch commits before the consumer is unlocked.

use std::collections::HashSet;
use std::sync::MutexGuard;

use super::{Cons, f_key};
use crate::store::embedded::escalation::{escalate, escalation, hand_over};
use crate::store::embedded::keys::{self, DlqRecord};
use crate::store::embedded::pending::Item;
use crate::store::embedded::{Shared, lock, now_micros, read};
use crate::store::{Settle, SettleReport, StoreError};

pub(crate) fn settle(
    s: &Shared,
    name: &str,
    outcomes: Vec<(u64, Settle)>,
) -> Result<SettleReport, StoreError> {
    let c = lock(s.consumer(name)?);
    let mut st = Settling {
        s,
        name,
        c,
        batch: s.db.batch(),
        now: now_micros(),
        report: SettleReport::default(),
        handed: Vec::new(),
        newly_above: Vec::new(),
        seen: HashSet::new(),
    };
    st.c.refresh_urgent(s, name, (0, 0))?;
    for (seq, outcome) in outcomes {
        st.one(seq, outcome)?;
    }
    st.finish()
}

/// One `settle` call under way: the consumer's lock, the batch every
/// outcome adds to, and what the call has gathered so far.
struct Settling<'a> {
    s: &'a Shared,
    name: &'a str,
    c: MutexGuard<'a, Cons>,
    batch: fjall::OwnedWriteBatch,
    now: u64,
    report: SettleReport,
    /// Alarms queued to a fallback: handed over once the batch is committed.
    handed: Vec<(String, u64, Item)>,
    /// Log items settled (seq, kind, urgent), for `fold`.
    newly_above: Vec<(u64, u8, bool)>,
    /// Items this call has settled already.
    seen: HashSet<u64>,
}

impl Settling<'_> {
    /// Settles one outcome: in the consumer's memory now, on disk with the
    /// batch.
    fn one(&mut self, seq: u64, outcome: Settle) -> Result<(), StoreError> {
        if !matches!(outcome, Settle::Release) && !self.seen.insert(seq) {
            return Ok(()); // named twice in one call
        }
        // An item the window has not reached yet (e.g. a pull consumer
        // confirms what it found by search) is settled all the same.
        let unscanned = if self.c.pending_item(seq).is_none() {
            self.c.unscanned_item(self.s, self.name, seq)?
        } else {
            None
        };
        let Some(item) = self.c.pending_item(seq).or(unscanned) else {
            return Ok(()); // settled before (e.g. confirmed twice)
        };
        let kind = match outcome {
            Settle::Release => {
                self.c.leases.remove(&seq);
                return Ok(());
            }
            Settle::Delivered => keys::SETTLED_DELIVERED,
            Settle::DeadLetter {
                attempts,
                error,
                response,
            } => {
                let rec = DlqRecord {
                    class: item.class as u8,
                    attempts,
                    error,
                    response,
                    at: self.now,
                    discarded: None,
                };
                self.dead_letter(seq, item, &rec)?;
                keys::SETTLED_DEAD
            }
        };
        self.forget(seq, item, kind, unscanned.is_some());
        self.report.settled += 1;
        Ok(())
    }

    /// Writes the dead letter of `seq`; an alarm also goes to the
    /// consumer's fallback (once per item), in the same batch.
    fn dead_letter(&mut self, seq: u64, item: Item, rec: &DlqRecord) -> Result<(), StoreError> {
        let (s, name) = (self.s, self.name);
        dead_letter(s, name, seq, rec, &mut self.batch)?;
        if item.class.is_urgent()
            && let Some(fb) = self.c.spec.escalate_to.clone()
            && !self.c.escalated.contains(&seq)
        {
            let queued = escalate(s, &mut self.batch, name, &fb, seq, item)?;
            self.c.escalated.insert(seq);
            self.report
                .escalated
                .push(escalation(s, name, &fb, seq, item, true)?);
            if queued {
                self.handed.push((fb, seq, item));
            }
        }
        Ok(())
    }

    /// Drops a settled item from the consumer's memory (lease, explicit
    /// queue, windows) and notes what `fold` must write for it.
    fn forget(&mut self, seq: u64, item: Item, kind: u8, unscanned: bool) {
        let (s, name, now) = (self.s, self.name, self.now);
        let c = &mut *self.c;
        c.leases.remove(&seq);
        if c.explicit.remove(&seq).is_some() {
            self.batch
                .remove(&s.ks.cons, keys::name_seq(Some(b'Q'), name, seq));
            if !c.reads_from_log(seq) {
                // No floor to fold into: keep the final state for `$status`
                // (and escalation's "has had it") until retention removes
                // the event.
                mark_settled(s, &mut self.batch, name, seq, (kind, now));
            }
        }
        let from_log = c.urgent.remove(seq).is_some() | c.routine.remove(&seq).is_some();
        if unscanned {
            c.uncount(1);
        }
        if from_log || unscanned {
            self.newly_above.push((seq, kind, item.class.is_urgent()));
        }
    }

    /// Folds what was settled into the floor and commits the batch; only
    /// then, with the consumer unlocked, are escalated alarms handed over.
    fn finish(self) -> Result<SettleReport, StoreError> {
        let Settling {
            s,
            name,
            mut c,
            mut batch,
            now,
            report,
            handed,
            newly_above,
            ..
        } = self;
        fold(s, name, &mut c, &mut batch, newly_above, now)?;
        s.commit(batch)?;
        drop(c);
        hand_over(s, handed);
        Ok(report)
    }
}

/// Writes the `S` mark of (`name`, `seq`): settled as `kind` at `at`.
fn mark_settled(
    s: &Shared,
    batch: &mut fjall::OwnedWriteBatch,
    name: &str,
    seq: u64,
    (kind, at): (u8, u64),
) {
    batch.insert(
        &s.ks.cons,
        keys::name_seq(Some(b'S'), name, seq),
        keys::settled_value(kind, at),
    );
}

/// Adds the dead letter of (`name`, `seq`) to `batch`, and says so.
fn dead_letter(
    s: &Shared,
    name: &str,
    seq: u64,
    rec: &DlqRecord,
    batch: &mut fjall::OwnedWriteBatch,
) -> Result<(), StoreError> {
    batch.insert(
        &s.ks.dlq,
        keys::name_seq(None, name, seq),
        keys::encode(rec)?,
    );
    tracing::warn!(destination = name, seq, attempts = rec.attempts, error = %rec.error, "delivery dead-lettered");
    metrics::counter!("knutepunkt_delivery_dead_lettered_total", "destination" => name.to_string())
        .increment(1);
    Ok(())
}

/// After a settle: log items (seq, kind, urgent) settled above the new ack
/// floor get their `S` key; a floor that moved drops the `S` keys it
/// passes and writes the new floor.
fn fold(
    s: &Shared,
    name: &str,
    c: &mut Cons,
    batch: &mut fjall::OwnedWriteBatch,
    newly_above: Vec<(u64, u8, bool)>,
    now: u64,
) -> Result<(), StoreError> {
    let floor = c.settled_through();
    for (seq, kind, urgent) in newly_above {
        if seq > floor {
            if !urgent {
                c.above.insert(seq, (kind, now));
            }
            mark_settled(s, batch, name, seq, (kind, now));
        }
    }
    if floor > c.floor {
        c.above = c.above.split_off(&(floor + 1));
        // Every `S` key the floor passes, routine and alarm: read from disk,
        // as settled alarms are not kept in memory.
        let lo = keys::name_seq(Some(b'S'), name, c.floor + 1);
        let hi = keys::name_seq(Some(b'S'), name, floor);
        for g in s.ks.cons.range(lo..=hi) {
            batch.remove(&s.ks.cons, g.key().map_err(read)?.to_vec());
        }
        c.floor = floor;
        batch.insert(&s.ks.cons, f_key(name), keys::floor_value(c.start, floor));
    }
    Ok(())
}
