//! One lotus channel's history: the ids its owner assigns and the ring of the newest messages
//! (spec/lotus.md §6.5). The owner core of a channel is the only writer, so ids form one total
//! order per channel; this module is the bookkeeping of that order and knows nothing of
//! subscribers, sockets or persistence.
//!
//! Ids start at 1 and grow by one per accepted publish; eviction from the ring never reuses an
//! id. A deleted channel is gone (spec §6.4, the original's delete defect fixed): publishing to
//! the name again starts a new *epoch* with ids from 1, and every delivery and history reply
//! carries the epoch so a client resuming with an id of the old epoch learns that its position
//! means nothing any more (spec §10 question 9).

use std::collections::VecDeque;

/// Spec §6.5: the default number of messages a channel keeps.
pub const DEFAULT_HISTORY: usize = 256;
/// `{from = {id = k}}` without a `limit` returns at most this many items.
pub const DEFAULT_FROM_LIMIT: usize = 256;

/// A history query (spec §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// The newest `n` messages, ascending.
    Last(usize),
    /// Every retained message with `id >= from` (inclusive), ascending, at most `limit`.
    From { id: u64, limit: usize },
}

/// A history reply: the ring's bounds at reply time and the selected messages.
#[derive(Debug, Clone, PartialEq)]
pub struct History<M> {
    pub epoch: u64,
    /// The oldest retained id (0 when nothing is retained).
    pub first_id: u64,
    /// The newest id ever assigned in this epoch (0 when none).
    pub last_id: u64,
    /// Messages the query asked for were evicted before it came: the client missed some.
    pub truncated: bool,
    pub items: Vec<(u64, M)>,
}

/// The history of one channel.
#[derive(Debug)]
pub struct Channel<M> {
    epoch: u64,
    last_id: u64,
    capacity: usize,
    ring: VecDeque<(u64, M)>,
}

impl<M: Clone> Channel<M> {
    /// A channel keeping the newest `capacity` messages (at least one), in epoch `epoch`
    /// (the caller picks something that differs from the name's previous epochs, e.g. the
    /// creation time).
    pub fn new(epoch: u64, capacity: usize) -> Channel<M> {
        Channel {
            epoch,
            last_id: 0,
            capacity: capacity.max(1),
            ring: VecDeque::new(),
        }
    }

    /// A channel recovered from storage: `items` ascending by id (the newest `capacity` are
    /// kept), `last_id` the newest id ever assigned (at least the newest item's).
    pub fn restore(epoch: u64, capacity: usize, last_id: u64, items: Vec<(u64, M)>) -> Channel<M> {
        let mut ch = Channel::new(epoch, capacity);
        for (id, m) in items {
            ch.push(id, m);
        }
        ch.last_id = ch.last_id.max(last_id);
        ch
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// The oldest retained id, 0 when the ring is empty.
    pub fn first_id(&self) -> u64 {
        self.ring.front().map_or(0, |(id, _)| *id)
    }

    /// Accepts one message: assigns the next id, keeps it in the ring (evicting the oldest
    /// when full) and returns the id.
    pub fn publish(&mut self, msg: M) -> u64 {
        let id = self.last_id + 1;
        self.push(id, msg);
        id
    }

    fn push(&mut self, id: u64, msg: M) {
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back((id, msg));
        self.last_id = id;
    }

    /// Answers a history query against the ring as it is now.
    pub fn history(&self, query: Query) -> History<M> {
        let (items, truncated) = match query {
            Query::Last(n) => {
                let skip = self.ring.len().saturating_sub(n);
                (self.ring.iter().skip(skip).cloned().collect(), false)
            }
            Query::From { id, limit } => {
                let first = self.first_id();
                // Ids from `id` up to the oldest retained one existed and are gone: either the
                // ring evicted them, or (empty ring) everything since `id` was evicted.
                let oldest_kept = if self.ring.is_empty() {
                    self.last_id + 1
                } else {
                    first
                };
                let truncated = id < oldest_kept && id <= self.last_id && oldest_kept > 1;
                let items = self
                    .ring
                    .iter()
                    .filter(|(i, _)| *i >= id)
                    .take(limit)
                    .cloned()
                    .collect();
                (items, truncated)
            }
        };
        History {
            epoch: self.epoch,
            first_id: self.first_id(),
            last_id: self.last_id,
            truncated,
            items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn channel(cap: usize, n: u64) -> Channel<u64> {
        let mut ch = Channel::new(7, cap);
        for i in 1..=n {
            assert_eq!(ch.publish(i * 10), i);
        }
        ch
    }

    fn ids(h: &History<u64>) -> Vec<u64> {
        h.items.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn ids_start_at_one_and_eviction_never_reuses_them() {
        let ch = channel(3, 5);
        assert_eq!((ch.first_id(), ch.last_id()), (3, 5));
        let h = ch.history(Query::Last(10));
        assert_eq!(ids(&h), [3, 4, 5]);
        assert_eq!(h.items[0].1, 30);
        assert_eq!(
            (h.epoch, h.first_id, h.last_id, h.truncated),
            (7, 3, 5, false)
        );
    }

    #[test]
    fn last_n_is_the_newest_n_ascending() {
        let ch = channel(256, 10);
        assert_eq!(ids(&ch.history(Query::Last(3))), [8, 9, 10]);
        assert!(ch.history(Query::Last(0)).items.is_empty());
    }

    #[test]
    fn from_is_inclusive_and_flags_evicted_messages() {
        let ch = channel(4, 10); // keeps 7..=10
        let h = ch.history(Query::From { id: 8, limit: 256 });
        assert_eq!((ids(&h), h.truncated), (vec![8, 9, 10], false));
        let h = ch.history(Query::From { id: 2, limit: 256 });
        assert_eq!((ids(&h), h.truncated), (vec![7, 8, 9, 10], true));
        let h = ch.history(Query::From { id: 2, limit: 2 });
        assert_eq!((ids(&h), h.truncated), (vec![7, 8], true));
    }

    #[test]
    fn from_past_the_newest_is_empty_not_an_error() {
        let ch = channel(4, 3);
        let h = ch.history(Query::From { id: 4, limit: 256 });
        assert!(h.items.is_empty() && !h.truncated);
        assert_eq!((h.first_id, h.last_id), (1, 3));
        let fresh: Channel<u64> = Channel::new(1, 4);
        let h = fresh.history(Query::From { id: 1, limit: 256 });
        assert!(h.items.is_empty() && !h.truncated);
        assert_eq!((h.first_id, h.last_id), (0, 0));
    }

    #[test]
    fn restore_keeps_the_sequence() {
        let mut ch = Channel::restore(3, 2, 9, vec![(5, 50), (6, 60), (8, 80)]);
        assert_eq!((ch.first_id(), ch.last_id()), (6, 9));
        assert_eq!(ch.publish(100), 10);
    }

    proptest! {
        /// Whatever was published and whatever is asked, a `from` reply is the retained
        /// suffix starting at `k`, ascending without gaps, and `truncated` says exactly
        /// whether messages at or after `k` were lost.
        #[test]
        fn from_replies_are_gapless_suffixes(cap in 1usize..20, n in 0u64..60, k in 0u64..70, limit in 1usize..30) {
            let ch = channel(cap, n);
            let h = ch.history(Query::From { id: k, limit });
            let got = ids(&h);
            for w in got.windows(2) {
                prop_assert_eq!(w[0] + 1, w[1]);
            }
            let evicted_start = n.saturating_sub(cap as u64) + 1; // oldest retained id
            let want_first = k.max(evicted_start).max(1);
            if let Some(first) = got.first() {
                prop_assert_eq!(*first, want_first);
            } else {
                prop_assert!(want_first > n);
            }
            prop_assert!(got.len() <= limit);
            prop_assert_eq!(h.truncated, k < evicted_start && evicted_start > 1 && k <= n);
            for (id, m) in &h.items {
                prop_assert_eq!(*m, id * 10);
            }
        }
    }
}
