//! Dead letters and where an item stands: what an operator and `$status`
//! see of a consumer. A dead letter is settled for the consumer's floor but
//! keeps its event from retention until it is replayed or discarded.

use super::keys::{self, DlqRecord};
use super::pending::Item;
use super::read::raw_record;
use super::{Shared, lock, now_micros, read};
use crate::store::{
    Class, DeadLetter, DeadLetterFilter, DeliveryState, StoreError, seq_to_time, time_to_seq,
};

pub(crate) fn dead_letters(
    s: &Shared,
    filter: &DeadLetterFilter,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let from = filter.from.map(time_to_seq).unwrap_or(0);
    let to = filter.to.map(time_to_seq).unwrap_or(u64::MAX);
    if from >= to {
        return Ok(Vec::new());
    }
    // One destination's keys are (name, seq): read only its time range.
    let keys: Box<dyn Iterator<Item = _>> =
        match &filter.destination {
            Some(d) => Box::new(s.ks.dlq.range(
                keys::name_seq(None, d, from)..=keys::name_seq(None, d, to.saturating_sub(1)),
            )),
            None => Box::new(s.ks.dlq.prefix(Vec::new())),
        };
    let mut out = Vec::new();
    // Keys sort by name length first; collect, then order by (name, seq).
    for g in keys {
        if filter.destination.is_some() && out.len() >= limit {
            break;
        }
        let (k, v) = g.into_inner().map_err(read)?;
        let seq = keys::tail_seq(&k)?;
        if seq < from || seq >= to {
            continue;
        }
        let rec: DlqRecord = keys::decode(&v)?;
        if rec.discarded.is_some() {
            continue;
        }
        let Some(raw) = raw_record(s, seq)? else {
            continue;
        };
        let r: keys::Record = keys::decode(&raw)?;
        let codes: Vec<String> = r.codes.iter().map(|(_, c)| c.to_string()).collect();
        if let Some(c) = &filter.code
            && !codes.iter().any(|x| x == c)
        {
            continue;
        }
        out.push(DeadLetter {
            destination: keys::dlq_name(&k)?,
            seq,
            resource: super::read::materialize(seq, &raw)?.resource,
            class: Class::from_tag(rec.class).unwrap_or(Class::Routine),
            attempts: rec.attempts,
            error: rec.error,
            response: rec.response,
            at: seq_to_time(rec.at),
            codes,
        });
    }
    out.sort_by(|a, b| (&a.destination, a.seq).cmp(&(&b.destination, b.seq)));
    out.truncate(limit);
    Ok(out)
}

pub(crate) fn dead_letter(
    s: &Shared,
    name: &str,
    seq: u64,
) -> Result<Option<DlqRecord>, StoreError> {
    match s
        .ks
        .dlq
        .get(keys::name_seq(None, name, seq))
        .map_err(read)?
    {
        Some(v) => keys::decode(&v).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn replay(s: &Shared, name: &str, seq: u64) -> Result<bool, StoreError> {
    let mut c = lock(s.consumer(name)?);
    let Some(rec) = dead_letter(s, name, seq)?.filter(|r| r.discarded.is_none()) else {
        return Ok(false);
    };
    let raw = raw_record(s, seq)?
        .ok_or_else(|| StoreError::Corrupt(format!("dead letter {seq} has no record")))?;
    let r: keys::Record = keys::decode(&raw)?;
    let item = Item {
        class: Class::from_tag(rec.class).unwrap_or(Class::Routine),
        patient: r.patient,
        answers: 0,
    };
    let mut batch = s.db.batch();
    batch.remove(&s.ks.dlq, keys::name_seq(None, name, seq));
    batch.insert(
        &s.ks.cons,
        keys::name_seq(Some(b'Q'), name, seq),
        keys::class_patient(item.class, &item.patient),
    );
    if !c.reads_from_log(seq) {
        // Its `S` mark only records the final state for `$status`. A log
        // consumer's mark stays: the log position is settled, the replay is
        // an explicit queue entry.
        batch.remove(&s.ks.cons, keys::name_seq(Some(b'S'), name, seq));
    }
    s.commit(batch)?;
    c.explicit.insert(seq, item);
    drop(c);
    s.committed.send_replace(s.visible());
    tracing::info!(destination = name, seq, "dead letter replayed");
    Ok(true)
}

pub(crate) fn discard(s: &Shared, name: &str, seq: u64, reason: &str) -> Result<bool, StoreError> {
    let _c = lock(s.consumer(name)?);
    let Some(mut rec) = dead_letter(s, name, seq)?.filter(|r| r.discarded.is_none()) else {
        return Ok(false);
    };
    rec.discarded = Some((now_micros(), reason.to_string()));
    let mut batch = s.db.batch();
    batch.insert(
        &s.ks.dlq,
        keys::name_seq(None, name, seq),
        keys::encode(&rec)?,
    );
    s.commit(batch)?;
    tracing::info!(destination = name, seq, reason, "dead letter discarded");
    Ok(true)
}

pub(crate) fn delivery_state(
    s: &Shared,
    name: &str,
    seq: u64,
) -> Result<Option<DeliveryState>, StoreError> {
    let c = lock(s.consumer(name)?);
    if c.pending_item(seq).is_some() {
        return Ok(Some(match c.leases.get(&seq) {
            Some(until) if *until > now_micros() => DeliveryState::Leased {
                until: seq_to_time(*until),
            },
            _ => DeliveryState::Pending,
        }));
    }
    if let Some(rec) = dead_letter(s, name, seq)? {
        return Ok(Some(match rec.discarded {
            Some((at, reason)) => DeliveryState::Discarded {
                at: seq_to_time(at),
                reason,
            },
            None => DeliveryState::DeadLettered {
                at: seq_to_time(rec.at),
                error: rec.error,
            },
        }));
    }
    if let Some((_, at)) = c.settled_at(s, name, seq)? {
        return Ok(Some(DeliveryState::Delivered {
            at: Some(seq_to_time(at)),
        }));
    }
    if c.spec.escalation_only {
        return Ok(None);
    }
    let Some(raw) = raw_record(s, seq)? else {
        return Ok(None);
    };
    let r: keys::Record = keys::decode(&raw)?;
    if r.org != c.org || seq <= c.start || seq > s.visible() {
        return Ok(None);
    }
    Ok(Some(if seq <= c.floor {
        DeliveryState::Delivered { at: None }
    } else {
        DeliveryState::Pending
    }))
}
