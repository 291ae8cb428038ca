//! Destinations as consumers of the log, as NATS JetStream keeps them: a
//! durable ack floor (everything at or below it is settled), and in memory
//! what is unsettled above it, rebuilt from the floor at start.
//!
//! In memory per consumer:
//! - `urgent`: the oldest unsettled RED and YELLOW items, a window per
//!   class (`pending.rs`), read from the `alarms` keyspace (never by
//!   scanning the routine backlog) as takes need them; a take reads them
//!   lazily, only as far as its Bundle needs;
//! - `routine`: a window of unsettled routine items, read from the type
//!   index up to `scanned` as takes need them (so a backlog of millions
//!   costs a window, not millions of entries);
//! - `explicit`: items queued to it by name (escalated to it, replayed);
//! - `leases`: items taken by a pull client or in flight to a push
//!   destination (lost on restart: the item is offered again).
//!
//! On disk, only the exceptions: `F` (start, floor), `S` settled above the
//! floor (in memory too for routine items, in `above`; a settled alarm is
//! only on disk, so a routine backlog behind delivered alarms costs no
//! memory per alarm), `E` escalated (kept until retention removes the event, so an alarm
//! escalates once even when an operator replays it), `Q` explicit queue, and
//! dead letters. Settling a
//! Bundle delivered in order moves the floor: one key written.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::keys::{self, TypeEntry};
use super::pending::{self, Item, Urgent, merged};
use super::read::resource_at;
use super::{Shared, Spaces, lock, read};
use crate::domain::ResourceType;
use crate::store::{Class, ConsumerSpec, OutboxItem, StoreError};

mod settle;
pub(crate) use settle::settle;

/// Routine items read ahead of what a take needs.
const WINDOW: usize = 4096;

pub(crate) struct Cons {
    pub spec: ConsumerSpec,
    pub(super) org: u32,
    /// Events at or below `start` were stored before this consumer existed.
    pub(super) start: u64,
    pub(super) floor: u64,
    /// Routine items settled above the floor: seq → (kind, at). Settled
    /// alarms are never offered again (`urgent` only grows from the
    /// `alarms` keyspace above its windows, checking the `S` key), so only
    /// their `S` key keeps them, on disk. (Right after a start this map
    /// also holds the settled alarms above the alarm windows; a scan
    /// removes each as it passes it.)
    pub(super) above: BTreeMap<u64, (u8, u64)>,
    pub(super) escalated: BTreeSet<u64>,
    /// The routine window covers the log up to here.
    pub(super) scanned: u64,
    pub(super) routine: BTreeMap<u64, Item>,
    pub(super) urgent: Urgent,
    pub(super) explicit: BTreeMap<u64, Item>,
    pub(super) leases: HashMap<u64, u64>,
    /// Unsettled events of the consumer's municipality above the windows
    /// (routine above `scanned`, alarms above their class's window); the
    /// writer adds each commit's arrivals.
    pub unscanned: Arc<AtomicU64>,
}

fn f_key(name: &str) -> Vec<u8> {
    keys::name_prefix(Some(b'F'), name)
}

impl Cons {
    /// Rebuilds a consumer from its floor; a new one starts at `last_seq`.
    pub(crate) fn load(
        db: &fjall::Database,
        ks: &Spaces,
        spec: ConsumerSpec,
        last_seq: u64,
    ) -> Result<Cons, StoreError> {
        let name = spec.name.clone();
        let (start, floor) = match ks.cons.get(f_key(&name)).map_err(read)? {
            Some(v) => keys::parse_floor(&v)?,
            None => {
                ks.cons
                    .insert(f_key(&name), keys::floor_value(last_seq, last_seq))
                    .map_err(super::write)?;
                db.persist(fjall::PersistMode::SyncData)
                    .map_err(super::write)?;
                (last_seq, last_seq)
            }
        };
        let mut above = BTreeMap::new();
        for g in ks.cons.prefix(keys::name_prefix(Some(b'S'), &name)) {
            let (k, v) = g.into_inner().map_err(read)?;
            above.insert(keys::tail_seq(&k)?, keys::parse_settled(&v)?);
        }
        let mut escalated = BTreeSet::new();
        for g in ks.cons.prefix(keys::name_prefix(Some(b'E'), &name)) {
            escalated.insert(keys::tail_seq(&g.key().map_err(read)?)?);
        }
        let mut explicit = BTreeMap::new();
        for g in ks.cons.prefix(keys::name_prefix(Some(b'Q'), &name)) {
            let (k, v) = g.into_inner().map_err(read)?;
            let (class, patient) = keys::parse_class_patient(&v)?;
            explicit.insert(
                keys::tail_seq(&k)?,
                Item {
                    class,
                    patient,
                    answers: 0,
                },
            );
        }
        let org = spec.municipality.as_u32();
        let mut c = Cons {
            org,
            start,
            floor,
            above,
            escalated,
            scanned: floor,
            routine: BTreeMap::new(),
            urgent: Urgent::new(floor),
            explicit,
            leases: HashMap::new(),
            unscanned: Arc::new(AtomicU64::new(0)),
            spec,
        };
        if !c.spec.escalation_only {
            let mut n = 0u64;
            for rt in ResourceType::ALL {
                let p = keys::index_prefix(b'T', org, rt.tag(), &[]);
                let lo = keys::with_seq(p.clone(), floor.saturating_add(1));
                let hi = keys::with_seq(p, last_seq);
                for g in ks.idx.range(lo..=hi) {
                    if !c
                        .above
                        .contains_key(&keys::tail_seq(&g.key().map_err(read)?)?)
                    {
                        n += 1;
                    }
                }
            }
            c.unscanned.store(n, Ordering::Release);
            let added = c.scan_alarms(&ks.alarms, last_seq, (0, 0), |_| Ok(false))?;
            c.uncount(added);
        }
        Ok(c)
    }

    fn uncount(&self, n: u64) {
        let _ = self
            .unscanned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Reads alarms above the windows, up to `upto`, into `urgent` (see
    /// `Urgent::scan`). Settled alarms are skipped: those in `above` (at
    /// start every `S` key is there) leave it, and `on_disk` says whether
    /// one has an `S` key (settled before it reached memory).
    fn scan_alarms(
        &mut self,
        alarms: &fjall::Keyspace,
        upto: u64,
        (want, now): (usize, u64),
        on_disk: impl Fn(u64) -> Result<bool, StoreError>,
    ) -> Result<u64, StoreError> {
        if self.spec.escalation_only {
            return Ok(0);
        }
        let scan = pending::Scan {
            alarms,
            org: self.org,
            upto,
            want,
        };
        let (floor, above, leases) = (self.floor, &mut self.above, &self.leases);
        self.urgent.scan(
            &scan,
            |q| leases.get(&q).is_some_and(|u| *u > now),
            |q| Ok(q <= floor || above.remove(&q).is_some() || on_disk(q)?),
        )
    }

    /// Whether the consumer reads `seq` from its own log, so the floor and
    /// `above` know when it is settled. Otherwise (an escalation-only
    /// consumer, or an event older than the consumer) only its queue brings
    /// the item, and its `S` key keeps the final state until retention
    /// removes the event. (Queued items are of the consumer's municipality:
    /// config refuses a fallback of another.)
    pub(super) fn reads_from_log(&self, seq: u64) -> bool {
        !self.spec.escalation_only && seq > self.start
    }

    /// When `seq` was settled: from `above` for routine items above the
    /// floor, from its `S` key for alarms and for items the consumer does
    /// not read from its log.
    pub(super) fn settled_at(
        &self,
        s: &Shared,
        name: &str,
        seq: u64,
    ) -> Result<Option<(u8, u64)>, StoreError> {
        if let Some(v) = self.above.get(&seq) {
            return Ok(Some(*v));
        }
        if seq <= self.floor && self.reads_from_log(seq) {
            return Ok(None);
        }
        match s
            .ks
            .cons
            .get(keys::name_seq(Some(b'S'), name, seq))
            .map_err(read)?
        {
            Some(v) => keys::parse_settled(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Reads alarms stored since the last look into `urgent`, as far as
    /// its windows have room, or until each class has `want` items not
    /// leased at `now` (a take's need).
    pub(super) fn refresh_urgent(
        &mut self,
        s: &Shared,
        name: &str,
        need: (usize, u64),
    ) -> Result<(), StoreError> {
        let added = self.scan_alarms(&s.ks.alarms, s.visible(), need, |q| {
            s.ks.cons
                .contains_key(keys::name_seq(Some(b'S'), name, q))
                .map_err(read)
        })?;
        self.uncount(added);
        Ok(())
    }

    /// Routine items in the window that a take at `now` could pick: not
    /// leased, and not waiting (nor behind an item of the same patient that
    /// waits) for the alarm it answers. Counting a waiting note as free let
    /// a take return nothing while a later event of another patient was
    /// not read into the window yet.
    fn takeable_routine(&self, now: u64) -> usize {
        let mut blocked: HashSet<[u8; 16]> = HashSet::new();
        let mut n = 0;
        for (seq, item) in &self.routine {
            if self.leased(*seq, now) || blocked.contains(&item.patient) {
                continue;
            }
            if item.answers != 0 && self.pending_item(item.answers).is_some() {
                blocked.insert(item.patient);
                continue;
            }
            n += 1;
        }
        n
    }

    /// Extends the routine window until `want` items are free to take (or
    /// the log is read to its visible end).
    fn refill_routine(&mut self, s: &Shared, want: usize, now: u64) -> Result<(), StoreError> {
        if self.spec.escalation_only {
            return Ok(());
        }
        let visible = s.visible();
        loop {
            if self.takeable_routine(now) >= want || self.scanned >= visible {
                return Ok(());
            }
            let limit = WINDOW.max(want);
            let mut lim = visible;
            let mut entries = Vec::new();
            for rt in ResourceType::ALL {
                let p = keys::index_prefix(b'T', self.org, rt.tag(), &[]);
                let lo = keys::with_seq(p.clone(), self.scanned + 1);
                let hi = keys::with_seq(p, visible);
                let mut n = 0;
                for g in s.ks.idx.range(lo..=hi) {
                    let (k, v) = g.into_inner().map_err(read)?;
                    let seq = keys::tail_seq(&k)?;
                    if seq > lim {
                        break;
                    }
                    entries.push((seq, TypeEntry::from_bytes(&v)?));
                    n += 1;
                    if n >= limit {
                        lim = seq;
                        break;
                    }
                }
            }
            let mut added = 0u64;
            for (seq, e) in entries {
                if seq > lim || e.class.is_urgent() || self.above.contains_key(&seq) {
                    continue;
                }
                added += 1;
                self.routine.insert(
                    seq,
                    Item {
                        class: e.class,
                        patient: e.patient,
                        answers: e.answers,
                    },
                );
            }
            self.scanned = lim;
            self.uncount(added);
        }
    }

    /// An event of this consumer's municipality above its class's window,
    /// not settled yet: pending although not in memory.
    fn unscanned_item(&self, s: &Shared, name: &str, seq: u64) -> Result<Option<Item>, StoreError> {
        if self.spec.escalation_only
            || seq <= self.scanned.min(self.urgent.scanned())
            || seq <= self.start
            || seq > s.visible()
            || self.above.contains_key(&seq)
        {
            return Ok(None);
        }
        let Some(raw) = super::read::raw_record(s, seq)? else {
            return Ok(None);
        };
        let r: keys::Record = keys::decode(&raw)?;
        let class = Class::from_tag(r.class).unwrap_or(Class::Routine);
        let edge = if class.is_urgent() {
            self.urgent.window(class).scanned
        } else {
            self.scanned
        };
        if r.org != self.org || seq <= edge {
            return Ok(None);
        }
        // An alarm above its window is settled on disk only.
        if class.is_urgent() && self.settled_at(s, name, seq)?.is_some() {
            return Ok(None);
        }
        Ok(Some(Item {
            class,
            patient: r.patient,
            answers: r.answers,
        }))
    }

    fn leased(&self, seq: u64, now: u64) -> bool {
        self.leases.get(&seq).is_some_and(|u| *u > now)
    }

    pub(super) fn pending_item(&self, seq: u64) -> Option<Item> {
        self.urgent
            .get(seq)
            .or_else(|| self.routine.get(&seq))
            .or_else(|| self.explicit.get(&seq))
            .copied()
    }

    /// Candidates of one class, oldest first, each seq once, read only as
    /// far as the caller goes (a backlog of alarms costs a take nothing
    /// beyond the Bundle it fills).
    fn candidates(&self, class: Class) -> impl Iterator<Item = (u64, Item)> + '_ {
        let log = if class.is_urgent() {
            self.urgent.of(class)
        } else {
            &self.routine
        };
        merged(log, &self.explicit, class)
    }

    /// The highest seq at or below which nothing is unsettled.
    fn settled_through(&self) -> u64 {
        let mut f = self.scanned.min(self.urgent.scanned());
        for first in [self.routine.keys().next().copied(), self.urgent.first()]
            .into_iter()
            .flatten()
        {
            f = f.min(first.saturating_sub(1));
        }
        f.max(self.floor)
    }
}

pub(crate) fn take(
    s: &Shared,
    name: &str,
    max: usize,
    now: u64,
    lease_until: Option<u64>,
) -> Result<Vec<crate::store::OutboxItem>, StoreError> {
    let mut c = lock(s.consumer(name)?);
    c.refresh_urgent(s, name, (max, now))?;
    c.refill_routine(s, max, now)?;
    let mut picked: Vec<(u64, Item)> = Vec::new();
    let mut taken: HashSet<u64> = HashSet::new();
    for class in [Class::Red, Class::Yellow, Class::Routine] {
        if picked.len() >= max {
            break;
        }
        // Patients whose next routine item waits for its alarm: their later
        // routine items wait too (FIFO per patient and class).
        let mut blocked: HashSet<[u8; 16]> = HashSet::new();
        for (seq, item) in c.candidates(class) {
            if picked.len() >= max {
                break;
            }
            if c.leased(seq, now) || blocked.contains(&item.patient) {
                continue;
            }
            let gated = item.answers != 0
                && !taken.contains(&item.answers)
                && c.pending_item(item.answers).is_some();
            if gated {
                blocked.insert(item.patient);
                continue;
            }
            taken.insert(seq);
            picked.push((seq, item));
        }
    }
    if let Some(until) = lease_until {
        for (seq, _) in &picked {
            c.leases.insert(*seq, until);
        }
    }
    drop(c);
    picked
        .into_iter()
        .map(|(seq, item)| {
            Ok(OutboxItem {
                destination: name.to_string(),
                class: item.class,
                patient: item.patient,
                resource: resource_at(s, seq)?,
            })
        })
        .collect()
}
