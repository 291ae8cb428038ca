//! A consumer's unsettled items in memory, shaped so a take costs what it
//! returns, not what is queued: alarms in one map per class (the oldest RED
//! is found without walking the YELLOW ones), and candidates merged lazily
//! in seq order from the log's map and the explicit queue.

use std::collections::BTreeMap;
use std::iter::Peekable;

use crate::store::Class;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub(super) class: Class,
    pub(super) patient: [u8; 16],
    /// `seq` of the alarm a note answers; 0 for none.
    pub(super) answers: u64,
}

/// Unsettled RED and YELLOW items found through the `alarms` keyspace.
#[derive(Default)]
pub(crate) struct Urgent {
    red: BTreeMap<u64, Item>,
    yellow: BTreeMap<u64, Item>,
}

impl Urgent {
    /// The map of `class` (YELLOW's for anything but RED).
    pub(super) fn of(&self, class: Class) -> &BTreeMap<u64, Item> {
        if class == Class::Red {
            &self.red
        } else {
            &self.yellow
        }
    }

    pub(super) fn insert(&mut self, seq: u64, item: Item) {
        if item.class == Class::Red {
            self.red.insert(seq, item);
        } else {
            self.yellow.insert(seq, item);
        }
    }

    pub(super) fn get(&self, seq: u64) -> Option<&Item> {
        self.red.get(&seq).or_else(|| self.yellow.get(&seq))
    }

    pub(super) fn remove(&mut self, seq: u64) -> Option<Item> {
        self.red.remove(&seq).or_else(|| self.yellow.remove(&seq))
    }

    /// The oldest unsettled alarm.
    pub(super) fn first(&self) -> Option<u64> {
        [self.red.keys().next(), self.yellow.keys().next()]
            .into_iter()
            .flatten()
            .min()
            .copied()
    }

    pub(super) fn len(&self) -> usize {
        self.red.len() + self.yellow.len()
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

    #[test]
    fn urgent_keeps_the_classes_apart_and_knows_the_oldest() {
        let mut u = Urgent::default();
        u.insert(8, item(Class::Red));
        u.insert(3, item(Class::Yellow));
        u.insert(5, item(Class::Red));
        assert_eq!(u.first(), Some(3));
        assert_eq!(u.of(Class::Red).keys().copied().collect::<Vec<_>>(), [5, 8]);
        assert_eq!(u.len(), 3);
        assert!(u.remove(3).is_some());
        assert_eq!(u.first(), Some(5));
        assert!(u.get(8).is_some() && u.get(3).is_none());
    }
}
