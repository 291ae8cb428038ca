//! A consumer's unsettled items in memory, shaped so a take costs what it
//! returns, not what is queued: the oldest alarms in a window per class
//! (the oldest RED is found without walking the YELLOW ones; the rest wait
//! in the `alarms` keyspace), and candidates merged lazily in seq order
//! from the log's map and the explicit queue.

use std::collections::BTreeMap;
use std::iter::Peekable;

use super::keys;
use crate::store::{Class, StoreError};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub(super) class: Class,
    pub(super) patient: [u8; 16],
    /// `seq` of the alarm a note answers; 0 for none.
    pub(super) answers: u64,
}

/// Unsettled alarms of one class kept in memory per consumer; the rest
/// wait in the `alarms` keyspace, counted in the consumer's `unscanned`.
/// A take needs only the oldest, so an outage with a million alarms queued
/// costs this many entries, not a million.
#[cfg(not(test))]
pub(super) const ALARM_WINDOW: usize = 4096;
/// Small in unit tests, so the model test crosses the window's edge.
#[cfg(test)]
pub(super) const ALARM_WINDOW: usize = 3;

/// The oldest unsettled alarms of one class: every unsettled alarm of the
/// class at or below `scanned` is in `items`.
#[derive(Default)]
pub(super) struct Window {
    pub(super) items: BTreeMap<u64, Item>,
    pub(super) scanned: u64,
    /// Escalation has looked at this class's alarms above the window up
    /// to here (in memory only: after a restart it looks once more, and
    /// the `E` markers keep it from escalating twice).
    pub(super) overdue_seen: u64,
}

/// Unsettled RED and YELLOW items found through the `alarms` keyspace.
pub(crate) struct Urgent {
    red: Window,
    yellow: Window,
}

/// What a scan of the `alarms` keyspace is asked to do.
pub(super) struct Scan<'a> {
    pub alarms: &'a fjall::Keyspace,
    pub org: u32,
    /// Read no alarm above this seq (the visible end of the log).
    pub upto: u64,
    /// Free (unleased) items each class must hold when the scan ends (a
    /// take's `max`); 0 for settle, stats and escalation, which only keep
    /// the windows filled.
    pub want: usize,
}

impl Urgent {
    /// Empty windows that start after `floor`.
    pub(super) fn new(floor: u64) -> Urgent {
        let w = || Window {
            scanned: floor,
            ..Window::default()
        };
        Urgent {
            red: w(),
            yellow: w(),
        }
    }

    /// The window of `class` (YELLOW's for anything but RED).
    pub(super) fn window(&self, class: Class) -> &Window {
        if class == Class::Red {
            &self.red
        } else {
            &self.yellow
        }
    }

    fn window_mut(&mut self, class: Class) -> &mut Window {
        if class == Class::Red {
            &mut self.red
        } else {
            &mut self.yellow
        }
    }

    /// The in-memory items of `class`.
    pub(super) fn of(&self, class: Class) -> &BTreeMap<u64, Item> {
        &self.window(class).items
    }

    pub(super) fn get(&self, seq: u64) -> Option<&Item> {
        self.red
            .items
            .get(&seq)
            .or_else(|| self.yellow.items.get(&seq))
    }

    pub(super) fn remove(&mut self, seq: u64) -> Option<Item> {
        self.red
            .items
            .remove(&seq)
            .or_else(|| self.yellow.items.remove(&seq))
    }

    /// The oldest unsettled alarm in memory.
    pub(super) fn first(&self) -> Option<u64> {
        [
            self.red.items.keys().next(),
            self.yellow.items.keys().next(),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied()
    }

    /// Every unsettled alarm at or below this seq is in memory.
    pub(super) fn scanned(&self) -> u64 {
        self.red.scanned.min(self.yellow.scanned)
    }

    pub(super) fn len(&self) -> usize {
        self.red.items.len() + self.yellow.items.len()
    }

    pub(super) fn set_overdue_seen(&mut self, class: Class, seq: u64) {
        let w = self.window_mut(class);
        w.overdue_seen = w.overdue_seen.max(seq);
    }

    /// Reads alarms above each window into it, oldest first, until the
    /// window holds `ALARM_WINDOW` items with `want` of them free, or the
    /// scan reaches `upto`. One pass serves both classes; a full class
    /// keeps its place, so nothing is read twice. `settled` says whether an
    /// alarm above the floor was settled before it reached memory. Returns
    /// how many alarms came into memory.
    pub(super) fn scan(
        &mut self,
        scan: &Scan,
        leased: impl Fn(u64) -> bool,
        mut settled: impl FnMut(u64) -> Result<bool, StoreError>,
    ) -> Result<u64, StoreError> {
        // Counted only for a take (settle, stats and escalation ask for no
        // free items), as it walks the window.
        let free = |w: &Window| {
            if scan.want == 0 {
                0
            } else {
                w.items.keys().filter(|q| !leased(**q)).count()
            }
        };
        // Per class: free items now, and whether it takes more.
        let mut free_n = [free(&self.red), free(&self.yellow)];
        let full = |w: &Window, f: usize| w.items.len() >= ALARM_WINDOW && f >= scan.want;
        let reads = |w: &Window, f: usize| w.scanned < scan.upto && !full(w, f);
        let from = [(&self.red, free_n[0]), (&self.yellow, free_n[1])]
            .into_iter()
            .filter(|(w, f)| reads(w, *f))
            .map(|(w, _)| w.scanned)
            .min();
        let Some(from) = from else {
            return Ok(0);
        };
        let lo = keys::alarm_key(scan.org, from + 1);
        let hi = keys::alarm_key(scan.org, scan.upto);
        let mut added = 0;
        for g in scan.alarms.range(lo..=hi) {
            if !reads(&self.red, free_n[0]) && !reads(&self.yellow, free_n[1]) {
                break;
            }
            let (k, v) = g.into_inner().map_err(super::read)?;
            let seq = keys::tail_seq(&k)?;
            let (class, patient) = keys::parse_class_patient(&v)?;
            let i = usize::from(class != Class::Red);
            let w = self.window_mut(class);
            if seq <= w.scanned || full(w, free_n[i]) {
                continue;
            }
            w.scanned = seq;
            if settled(seq)? {
                continue;
            }
            let item = Item {
                class,
                patient,
                answers: 0,
            };
            w.items.insert(seq, item);
            free_n[i] += 1;
            added += 1;
        }
        // A class that never filled up has seen every alarm up to `upto`.
        for (i, w) in [&mut self.red, &mut self.yellow].into_iter().enumerate() {
            if !full(w, free_n[i]) {
                w.scanned = w.scanned.max(scan.upto);
            }
        }
        Ok(added)
    }
}

/// Items of `class` from `log` and `explicit`, oldest first, each seq once;
/// lazy, so a take stops reading when its Bundle is full.
pub(super) fn merged<'a>(
    log: &'a BTreeMap<u64, Item>,
    explicit: &'a BTreeMap<u64, Item>,
    class: Class,
) -> impl Iterator<Item = (u64, Item)> + 'a {
    Merge {
        a: of_class(log, class).peekable(),
        b: of_class(explicit, class).peekable(),
    }
}

fn of_class(m: &BTreeMap<u64, Item>, class: Class) -> impl Iterator<Item = (u64, Item)> + '_ {
    m.iter()
        .filter(move |(_, i)| i.class == class)
        .map(|(s, i)| (*s, *i))
}

/// Two seq-ordered iterators as one, a seq in both given once. Written by
/// hand: a dozen lines, where a crate (itertools' `merge_by` + `dedup_by`)
/// would be a new dependency for one call.
struct Merge<A: Iterator<Item = (u64, Item)>, B: Iterator<Item = (u64, Item)>> {
    a: Peekable<A>,
    b: Peekable<B>,
}

impl<A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = (u64, Item)>,
    B: Iterator<Item = (u64, Item)>,
{
    type Item = (u64, Item);

    fn next(&mut self) -> Option<(u64, Item)> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) if y.0 < x.0 => self.b.next(),
            (Some(x), Some(y)) if y.0 == x.0 => {
                self.b.next();
                self.a.next()
            }
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(class: Class) -> Item {
        Item {
            class,
            patient: [0; 16],
            answers: 0,
        }
    }

    #[test]
    fn merged_is_in_seq_order_with_each_seq_once_and_one_class_only() {
        let log: BTreeMap<u64, Item> = [
            (1, item(Class::Red)),
            (4, item(Class::Yellow)),
            (5, item(Class::Red)),
            (9, item(Class::Red)),
        ]
        .into();
        let explicit: BTreeMap<u64, Item> = [
            (2, item(Class::Red)),
            (5, item(Class::Red)),
            (7, item(Class::Routine)),
            (11, item(Class::Red)),
        ]
        .into();
        let seqs: Vec<u64> = merged(&log, &explicit, Class::Red)
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, [1, 2, 5, 9, 11]);
        let seqs: Vec<u64> = merged(&log, &explicit, Class::Routine)
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, [7]);
    }

    /// An `alarms` keyspace in a temp dir with the given (seq, class).
    fn alarms(entries: &[(u64, Class)]) -> (tempfile::TempDir, fjall::Database, fjall::Keyspace) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, ks) = super::super::spaces::open_spaces(dir.path(), 1 << 20).expect("open");
        for (seq, class) in entries {
            ks.alarms
                .insert(
                    keys::alarm_key(7, *seq),
                    keys::class_patient(*class, &[0; 16]),
                )
                .expect("insert");
        }
        (dir, db, ks.alarms)
    }

    fn seqs(u: &Urgent, class: Class) -> Vec<u64> {
        u.of(class).keys().copied().collect()
    }

    #[test]
    fn scan_keeps_the_oldest_of_each_class_and_reads_each_alarm_once() {
        use Class::{Red as R, Yellow as Y};
        let (_dir, _db, ks) = alarms(&[
            (2, Y),
            (3, R),
            (4, Y),
            (5, Y),
            (6, Y),
            (7, R),
            (8, Y),
            (9, R),
            (10, R),
            (11, R),
        ]);
        let scan = |upto, want| Scan {
            alarms: &ks,
            org: 7,
            upto,
            want,
        };
        let mut u = Urgent::new(1);
        let mut looked = Vec::new();
        let mut note = |q| {
            looked.push(q);
            Ok(false)
        };
        // Nothing above 8 yet: RED has room left and saw all up to 8.
        assert_eq!(u.scan(&scan(8, 0), |_| false, &mut note).expect("scan"), 5);
        assert_eq!((seqs(&u, R), seqs(&u, Y)), (vec![3, 7], vec![2, 4, 5]));
        assert_eq!((u.window(R).scanned, u.window(Y).scanned), (8, 5));
        assert_eq!(u.scanned(), 5);
        // YELLOW is full, so only RED reads on, from 9; 8 waits on disk.
        assert_eq!(u.scan(&scan(11, 0), |_| false, &mut note).expect("scan"), 1);
        assert_eq!(seqs(&u, R), [3, 7, 9]);
        assert_eq!(u.window(R).scanned, 9);
        // Two YELLOW settled: the window refills from 6, skipping what
        // `settled` says was settled on disk (8).
        u.remove(2);
        u.remove(4);
        let added = u
            .scan(
                &scan(11, 0),
                |_| false,
                |q| {
                    looked.push(q);
                    Ok(q == 8)
                },
            )
            .expect("scan");
        assert_eq!(added, 1);
        assert_eq!(seqs(&u, Y), [5, 6]);
        assert_eq!(u.window(Y).scanned, 11);
        // Every alarm was looked at once.
        looked.sort_unstable();
        assert_eq!(looked, [2, 3, 4, 5, 6, 7, 8, 9]);
        // A take that needs two free RED items while all three are leased
        // reads past the window's size.
        let added = u
            .scan(&scan(11, 2), |q| q < 10, |_| Ok(false))
            .expect("scan");
        assert_eq!((added, seqs(&u, R)), (2, vec![3, 7, 9, 10, 11]));
    }

    #[test]
    fn urgent_keeps_the_classes_apart_and_knows_the_oldest() {
        let (_dir, _db, ks) = alarms(&[(3, Class::Yellow), (5, Class::Red), (8, Class::Red)]);
        let mut u = Urgent::new(0);
        let scan = Scan {
            alarms: &ks,
            org: 7,
            upto: 8,
            want: 0,
        };
        u.scan(&scan, |_| false, |_| Ok(false)).expect("scan");
        assert_eq!(u.first(), Some(3));
        assert_eq!(seqs(&u, Class::Red), [5, 8]);
        assert_eq!(u.len(), 3);
        assert!(u.remove(3).is_some());
        assert_eq!(u.first(), Some(5));
        assert!(u.get(8).is_some() && u.get(3).is_none());
    }
}
