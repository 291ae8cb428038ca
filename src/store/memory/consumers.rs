//! The model's [`Consumers`]: take, settle, escalation, dead letters and
//! delivery state, each rule written as the spec states it (see
//! `super::Inner::is_pending` for what "pending" means).

use std::collections::BTreeSet;

use super::{Dead, Final, Inner, MemoryStore, ready, unknown};
use crate::store::{
    Class, ConsumerStats, Consumers, DeadLetter, DeadLetterFilter, DeliveryState, Escalation,
    OutboxItem, Settle, SettleReport, StoreError, StoreFuture, seq_to_time, time_to_seq,
};

impl Inner {
    /// Hands `seq` to `to` unless `to` has had it: pending there, or
    /// settled there in any way (delivered, dead-lettered, discarded). An
    /// event `to` reads from its log is always one of those. A dead letter
    /// at the fallback waits for an operator's replay, as every dead letter
    /// does; a second escalation does not send it again.
    fn queue_to(&mut self, to: &str, seq: u64) {
        let Some(f) = self.consumers.get(to) else {
            return;
        };
        if self.in_scope(f, seq) || f.queue.contains(&seq) || f.settled.contains_key(&seq) {
            return;
        }
        if let Some(f) = self.consumers.get_mut(to) {
            f.queue.insert(seq);
        }
    }

    /// Escalates (`name`, `seq`) to the consumer's fallback unless it was
    /// escalated before; the escalation, if one happened.
    fn escalate(&mut self, name: &str, seq: u64, dead_lettered: bool) -> Option<Escalation> {
        let to = self.consumers.get(name)?.spec.escalate_to.clone()?;
        let ev = self.events.get(&seq)?;
        let (class, resource) = (ev.rec.class, ev.resource());
        if !class.is_urgent() || !self.escalated.insert((name.to_string(), seq)) {
            return None;
        }
        self.queue_to(&to, seq);
        Some(Escalation {
            from: name.to_string(),
            to,
            seq,
            resource,
            class,
            dead_lettered,
        })
    }

    fn take(
        &mut self,
        name: &str,
        max: usize,
        now: u64,
        lease_until: Option<u64>,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let c = self.consumers.get(name).ok_or_else(|| unknown(name))?;
        let mut candidates: Vec<(Class, u64)> = self
            .pending(c)
            .into_iter()
            .filter(|s| c.leases.get(s).is_none_or(|&until| until <= now))
            .filter_map(|s| self.events.get(&s).map(|e| (e.rec.class, s)))
            .collect();
        candidates.sort();
        let mut taken: BTreeSet<u64> = BTreeSet::new();
        let mut blocked_patients: BTreeSet<[u8; 16]> = BTreeSet::new();
        let mut out = Vec::new();
        for (class, seq) in candidates {
            if out.len() >= max {
                break;
            }
            let Some(ev) = self.events.get(&seq) else {
                continue;
            };
            if class == Class::Routine {
                if blocked_patients.contains(&ev.rec.patient_key) {
                    continue;
                }
                if let Some(alarm) = ev.answers
                    && self.is_pending(c, alarm)
                    && !taken.contains(&alarm)
                {
                    blocked_patients.insert(ev.rec.patient_key);
                    continue;
                }
            }
            taken.insert(seq);
            out.push(OutboxItem {
                destination: name.to_string(),
                class,
                patient: ev.rec.patient_key,
                resource: ev.stored(seq),
            });
        }
        if let Some(until) = lease_until
            && let Some(c) = self.consumers.get_mut(name)
        {
            for seq in taken {
                c.leases.insert(seq, until);
            }
        }
        Ok(out)
    }

    fn settle(
        &mut self,
        name: &str,
        outcomes: Vec<(u64, Settle)>,
        now: u64,
    ) -> Result<SettleReport, StoreError> {
        if !self.consumers.contains_key(name) {
            return Err(unknown(name));
        }
        let mut report = SettleReport::default();
        for (seq, outcome) in outcomes {
            if !self.pending_for(name, seq) {
                continue;
            }
            let Some(c) = self.consumers.get_mut(name) else {
                continue;
            };
            match outcome {
                Settle::Release => {
                    c.leases.remove(&seq);
                }
                Settle::Delivered => {
                    c.queue.remove(&seq);
                    c.leases.remove(&seq);
                    c.settled.insert(seq, Final::Delivered { at: now });
                    report.settled += 1;
                }
                Settle::DeadLetter {
                    attempts,
                    error,
                    response,
                } => {
                    c.queue.remove(&seq);
                    c.leases.remove(&seq);
                    c.settled.insert(
                        seq,
                        Final::DeadLettered {
                            at: now,
                            error: error.clone(),
                        },
                    );
                    self.dead.insert(
                        (name.to_string(), seq),
                        Dead {
                            attempts,
                            error,
                            response,
                            at: now,
                        },
                    );
                    report.settled += 1;
                    report.escalated.extend(self.escalate(name, seq, true));
                }
            }
        }
        Ok(report)
    }

    fn escalate_overdue(&mut self, now: u64) -> Vec<Escalation> {
        let names: Vec<String> = self.consumers.keys().cloned().collect();
        let mut out = Vec::new();
        for name in names {
            let Some(c) = self.consumers.get(&name) else {
                continue;
            };
            if c.spec.escalate_to.is_none() {
                continue;
            }
            let (red, yellow) = (c.spec.red_deadline_us, c.spec.yellow_deadline_us);
            let overdue: Vec<u64> = self
                .pending(c)
                .into_iter()
                .filter(|s| {
                    let deadline = match self.events.get(s).map(|e| e.rec.class) {
                        Some(Class::Red) => red,
                        Some(Class::Yellow) => yellow,
                        _ => return false,
                    };
                    s.saturating_add(deadline) <= now
                })
                .collect();
            for seq in overdue {
                out.extend(self.escalate(&name, seq, false));
            }
        }
        out
    }

    fn stats(&self, name: &str) -> Result<ConsumerStats, StoreError> {
        let c = self.consumers.get(name).ok_or_else(|| unknown(name))?;
        let pending = self.pending(c);
        Ok(ConsumerStats {
            pending: pending.len() as u64,
            oldest: pending.first().copied(),
            // Everything up to here is settled (the model has no real floor).
            floor: pending
                .first()
                .map_or(self.last_seq, |s| s.saturating_sub(1)),
        })
    }

    fn dead_letters(&self, filter: &DeadLetterFilter, limit: usize) -> Vec<DeadLetter> {
        let from = filter.from.map_or(0, time_to_seq);
        let to = filter.to.map_or(u64::MAX, time_to_seq);
        self.dead
            .iter()
            .filter(|((dest, seq), _)| {
                filter.destination.as_ref().is_none_or(|d| d == dest) && *seq >= from && *seq < to
            })
            .filter_map(|((dest, seq), d)| {
                let ev = self.events.get(seq)?;
                let codes: Vec<String> = ev
                    .rec
                    .resource
                    .codes
                    .iter()
                    .map(|(_, c)| c.clone())
                    .collect();
                if let Some(code) = &filter.code
                    && !codes.contains(code)
                {
                    return None;
                }
                Some(DeadLetter {
                    destination: dest.clone(),
                    seq: *seq,
                    resource: ev.resource(),
                    class: ev.rec.class,
                    attempts: d.attempts,
                    error: d.error.clone(),
                    response: d.response.clone(),
                    at: seq_to_time(d.at),
                    codes,
                })
            })
            .take(limit)
            .collect()
    }

    fn replay(&mut self, name: &str, seq: u64) -> Result<bool, StoreError> {
        if !self.consumers.contains_key(name) {
            return Err(unknown(name));
        }
        if self.dead.remove(&(name.to_string(), seq)).is_none() {
            return Ok(false);
        }
        if let Some(c) = self.consumers.get_mut(name) {
            c.settled.remove(&seq);
            c.queue.insert(seq);
        }
        Ok(true)
    }

    fn discard(
        &mut self,
        name: &str,
        seq: u64,
        reason: String,
        now: u64,
    ) -> Result<bool, StoreError> {
        if !self.consumers.contains_key(name) {
            return Err(unknown(name));
        }
        if self.dead.remove(&(name.to_string(), seq)).is_none() {
            return Ok(false);
        }
        if let Some(c) = self.consumers.get_mut(name) {
            c.settled.insert(seq, Final::Discarded { at: now, reason });
        }
        Ok(true)
    }

    fn delivery_state(
        &self,
        name: &str,
        seq: u64,
        now: u64,
    ) -> Result<Option<DeliveryState>, StoreError> {
        let c = self.consumers.get(name).ok_or_else(|| unknown(name))?;
        if !self.events.contains_key(&seq) {
            return Ok(None);
        }
        if self.is_pending(c, seq) {
            return Ok(Some(match c.leases.get(&seq) {
                Some(&until) if until > now => DeliveryState::Leased {
                    until: seq_to_time(until),
                },
                _ => DeliveryState::Pending,
            }));
        }
        Ok(c.settled.get(&seq).map(|f| match f {
            Final::Delivered { at } => DeliveryState::Delivered {
                at: Some(seq_to_time(*at)),
            },
            Final::DeadLettered { at, error } => DeliveryState::DeadLettered {
                at: seq_to_time(*at),
                error: error.clone(),
            },
            Final::Discarded { at, reason } => DeliveryState::Discarded {
                at: seq_to_time(*at),
                reason: reason.clone(),
            },
        }))
    }
}

impl Consumers for MemoryStore {
    fn take(
        &self,
        consumer: &str,
        max: usize,
        now: u64,
        lease_until: Option<u64>,
    ) -> StoreFuture<'_, Vec<OutboxItem>> {
        ready(self.lock().take(consumer, max, now, lease_until))
    }

    fn settle(
        &self,
        consumer: &str,
        outcomes: Vec<(u64, Settle)>,
    ) -> StoreFuture<'_, SettleReport> {
        let now = self.now();
        ready(self.lock().settle(consumer, outcomes, now))
    }

    fn stats(&self, consumer: &str) -> StoreFuture<'_, ConsumerStats> {
        ready(self.lock().stats(consumer))
    }

    fn escalate_overdue(&self, now: u64) -> StoreFuture<'_, Vec<Escalation>> {
        ready(Ok(self.lock().escalate_overdue(now)))
    }

    fn dead_letters(
        &self,
        filter: DeadLetterFilter,
        limit: usize,
    ) -> StoreFuture<'_, Vec<DeadLetter>> {
        ready(Ok(self.lock().dead_letters(&filter, limit)))
    }

    fn dead_letter_replay(&self, consumer: &str, seq: u64) -> StoreFuture<'_, bool> {
        ready(self.lock().replay(consumer, seq))
    }

    fn dead_letter_discard(
        &self,
        consumer: &str,
        seq: u64,
        reason: String,
    ) -> StoreFuture<'_, bool> {
        let now = self.now();
        ready(self.lock().discard(consumer, seq, reason, now))
    }

    fn delivery_state(&self, consumer: &str, seq: u64) -> StoreFuture<'_, Option<DeliveryState>> {
        let now = self.now();
        ready(self.lock().delivery_state(consumer, seq, now))
    }
}
