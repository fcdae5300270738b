//! One index in memory: ids with their value and per-tier scores, and one order-statistic
//! tree per tier; the command semantics of spec/services.md §2.3 live here.
//!
//! Every mutating method reports the ids it changed in `touched`, so the caller can log their
//! resulting state (see `record.rs`) without this file knowing about files.
//!
//! The ids live in an insertion-ordered map (`IndexMap`: a dense vector of entries plus a
//! table of positions) rather than a plain hash map, for two reasons. A snapshot image is
//! built in slices across several core turns (`snapshot.rs`) and needs positions that stay
//! put between slices: an entry keeps its position until it is removed, and a removal moves
//! only the last entry into the hole (reported through [`Ranking::take_moved`] while a build
//! watches). And growing the map past its capacity rebuilds only the table of positions
//! (8 bytes an id, hashes kept with the entries) instead of moving and rehashing every entry.

use std::sync::Arc;

use indexmap::IndexMap;

use super::command::{GetResult, RangeFrom, RankedEntry, SetItem, SetResult, TierSel, TIERS};
use super::order::{Score, TierKey};
use super::record::{Entry, Mutation};
use super::tree::CountedTree;

#[derive(Default)]
pub struct Ranking {
    entries: IndexMap<Arc<str>, Entry, ahash::RandomState>,
    tiers: [CountedTree<TierKey, Arc<str>>; TIERS],
    /// Next insertion sequence: larger = newer, which ranks first among equal scores.
    next_seq: u64,
    /// While a snapshot build watches (`Some`): the ids a removal moved to another position.
    moved: Option<Vec<Arc<str>>>,
}

impl Ranking {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ids(&self) -> usize {
        self.entries.len()
    }

    pub fn tier_len(&self, t: usize) -> usize {
        self.tiers[t].len()
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The id at position `at` (`0..ids()`), for a snapshot built in slices: a position keeps
    /// its id until that id is removed or [`Self::take_moved`] reports it moved.
    pub fn at(&self, at: usize) -> Option<(&Arc<str>, &Entry)> {
        self.entries.get_index(at)
    }

    /// Starts (`true`) or stops reporting the ids that removals move (see [`Self::take_moved`]).
    pub fn watch_moves(&mut self, on: bool) {
        self.moved = on.then(Vec::new);
    }

    /// The ids moved to another position since the last call (a removal moves the last id
    /// into the removed one's place), while watching.
    pub fn take_moved(&mut self) -> Vec<Arc<str>> {
        self.moved.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Replays one persisted mutation.
    pub fn apply(&mut self, m: Mutation) {
        match m {
            Mutation::Put(id, mut e) => {
                let id: Arc<str> = id.into();
                for tier in e.tiers.iter_mut() {
                    tier.sort();
                    if let Some(max) = tier.iter().map(|k| k.seq).max() {
                        self.next_seq = self.next_seq.max(max + 1);
                    }
                }
                self.remove_entry(&id);
                for (t, tier) in e.tiers.iter().enumerate() {
                    for k in tier {
                        self.tiers[t].insert(k.clone(), id.clone());
                    }
                }
                self.entries.insert(id, e);
            }
            Mutation::Remove(id) => {
                self.remove_entry(&id);
            }
        }
    }

    pub fn bump_seq(&mut self, at_least: u64) {
        self.next_seq = self.next_seq.max(at_least);
    }

    fn remove_entry(&mut self, id: &str) -> Option<Entry> {
        let (at, _, e) = self.entries.swap_remove_full(id)?;
        if let Some(moved) = &mut self.moved {
            // The last id now fills the hole (none when the removed id was the last).
            if let Some((k, _)) = self.entries.get_index(at) {
                moved.push(k.clone());
            }
        }
        for (t, tier) in e.tiers.iter().enumerate() {
            for k in tier {
                self.tiers[t].remove(k);
            }
        }
        Some(e)
    }

    /// 1-based rank of the id's best score in tier `t`.
    fn best_rank(&self, id: &str, t: usize) -> Option<u64> {
        // An entry's keys are kept in rank order, so the first is the best.
        let k = self.entries.get(id)?.tiers[t].first()?;
        self.tiers[t].rank(k).map(|r| r as u64)
    }

    /// `set` of one id (§2.3 "set details"). Takes the item's scores and value and leaves
    /// its id, which the caller's reply names (no copy of it per `set`).
    pub fn set(
        &mut self,
        item: &mut SetItem,
        sel: TierSel,
        max_key: usize,
        touched: &mut Vec<Arc<str>>,
    ) -> SetResult {
        let id = item.id.as_str();
        let mut tiers = std::mem::take(&mut item.tiers);
        // Open question 10: `i` with tier = all is rejected instead of reading out of bounds.
        let selected = match (sel.single(), item.scores.take()) {
            (None, Some(_)) => return SetResult::Error,
            (Some(t), Some(s)) => {
                tiers[t] = Some(s);
                t
            }
            // With tier = all, `d` reports tier 1 (the default tier).
            (t, None) => t.unwrap_or(0),
        };
        let too_long = |s: &Score| s.key_len() > max_key;
        if id.len() > max_key || id.contains('\0') || tiers.iter().flatten().flatten().any(too_long)
        {
            return SetResult::Error;
        }
        // In place: the id keeps its position (a snapshot built in slices relies on it).
        let (at, existed) = match self.entries.get_index_of(id) {
            Some(at) => (at, true),
            None => (
                self.entries
                    .insert_full(Arc::<str>::from(id), Entry::default())
                    .0,
                false,
            ),
        };
        let (id, mut entry) = match self.entries.get_index_mut(at) {
            Some((k, e)) => (k.clone(), std::mem::take(e)),
            None => unreachable!("position {at} was just looked up or inserted"),
        };
        let given = tiers.each_ref().map(Option::is_some);
        let mut changed = [false; TIERS];
        let mut best = None;
        for (t, new) in tiers.into_iter().enumerate() {
            if let Some(new) = new {
                let (c, rank) = self.replace_scores(&id, &mut entry.tiers[t], t, new);
                changed[t] = c;
                if t == selected {
                    best = rank;
                }
            }
        }
        let v = item.v.take();
        let v_set = v.is_some();
        if v_set {
            entry.v = v;
        }
        if !existed || v_set || changed.iter().any(|c| *c) {
            touched.push(id.clone());
        }
        if let Some((_, e)) = self.entries.get_index_mut(at) {
            *e = entry;
        }
        if changed[selected] {
            match best.or_else(|| self.best_rank(&id, selected)) {
                Some(r) => SetResult::Rank(r),
                None => SetResult::Untouched,
            }
        } else if given[selected] {
            SetResult::Unchanged
        } else {
            SetResult::Untouched
        }
    }

    /// Makes `keys` (tier `t` of `id`, in rank order) hold exactly the scores `new`: equal
    /// scores keep their key (and so their place among ties), missing ones get a fresh,
    /// newest sequence, obsolete ones go. Returns whether anything changed, and the rank of
    /// the id's best key when that key is one inserted here (the insert tells it: no second
    /// descent of the tree for the reply).
    ///
    /// That rank is final: the keys are merged in score order, and an old key equal to a
    /// new score is matched before any insert of that score, so every key removed or
    /// inserted after the best one ranks below it and does not move it.
    fn replace_scores(
        &mut self,
        id: &Arc<str>,
        keys: &mut Vec<TierKey>,
        t: usize,
        mut new: Vec<Score>,
    ) -> (bool, Option<u64>) {
        new.sort();
        let old = std::mem::take(keys);
        let mut out = Vec::with_capacity(new.len());
        let mut changed = false;
        let mut best = None;
        let mut old_it = old.into_iter().peekable();
        let mut new_it = new.into_iter().peekable();
        loop {
            let ord = match (old_it.peek(), new_it.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(o), Some(n)) => o.score.cmp(n),
            };
            match ord {
                std::cmp::Ordering::Equal => {
                    out.push(old_it.next().unwrap());
                    new_it.next();
                }
                std::cmp::Ordering::Less => {
                    let k = old_it.next().unwrap();
                    self.tiers[t].remove(&k);
                    changed = true;
                }
                std::cmp::Ordering::Greater => {
                    let k = TierKey {
                        score: new_it.next().unwrap(),
                        seq: self.next_seq,
                    };
                    self.next_seq += 1;
                    let rank = self.tiers[t].insert_ranked(k.clone(), id.clone());
                    // Keys come in score order: one as good as the best so far is newer
                    // than it, so it is the best now.
                    if out.first().is_none_or(|f: &TierKey| f.score == k.score) {
                        best = rank.map(|r| r as u64);
                    }
                    out.push(k);
                    changed = true;
                }
            }
        }
        out.sort();
        *keys = out;
        (changed, best)
    }

    /// `del` of one id: `true` if it was known (§2.3 "del details").
    pub fn del(&mut self, id: &str, sel: TierSel, touched: &mut Vec<Arc<str>>) -> bool {
        match sel.single() {
            None => match self.entries.get_key_value(id) {
                Some((k, _)) => {
                    let k = k.clone();
                    self.remove_entry(id);
                    touched.push(k);
                    true
                }
                None => false,
            },
            Some(t) => {
                let Some((k, e)) = self.entries.get_key_value(id) else {
                    return false;
                };
                if e.tiers[t].is_empty() {
                    return true;
                }
                let k = k.clone();
                let keys = std::mem::take(&mut self.entries.get_mut(id).unwrap().tiers[t]);
                for key in &keys {
                    self.tiers[t].remove(key);
                }
                touched.push(k);
                true
            }
        }
    }

    /// `get` of one id (§2.3 "get details").
    pub fn get(&self, id: &str, sel: TierSel) -> GetResult {
        let Some(e) = self.entries.get(id) else {
            return GetResult::Unknown;
        };
        match sel.single() {
            Some(t) => GetResult::Tier {
                v: e.v.clone(),
                scores: e.tiers[t]
                    .iter()
                    .map(|k| (k.score.clone(), self.tiers[t].rank(k).unwrap_or(0) as u64))
                    .collect(),
            },
            None => GetResult::All {
                v: e.v.clone(),
                tiers: std::array::from_fn(|t| {
                    let keys = &e.tiers[t];
                    (!keys.is_empty()).then(|| keys.iter().map(|k| k.score.clone()).collect())
                }),
            },
        }
    }

    /// `count` entries of tier `t` from 1-based rank `start`.
    pub fn entries_from(&self, t: usize, start: u64, count: u64) -> Vec<RankedEntry> {
        let start = start.max(1);
        self.tiers[t]
            .iter_from(start as usize)
            .take(count.min(usize::MAX as u64) as usize)
            .enumerate()
            .map(|(n, (k, id))| RankedEntry {
                d: start + n as u64,
                i: k.score.clone(),
                k: id.clone(),
                v: self.entries.get(id).and_then(|e| e.v.clone()),
            })
            .collect()
    }

    /// `range` in tier `t` (§2.3 "range details"); `None` when the start id is unknown or
    /// has no score in the tier.
    pub fn range(&self, t: usize, from: &RangeFrom, count: i64) -> Option<Vec<RankedEntry>> {
        let start = match from {
            RangeFrom::Score(s) => {
                // First entry whose score ranks at or below `s`: skip the strictly better ones.
                self.tiers[t].count_before_by(|k| k.score.cmp(s)) as u64 + 1
            }
            RangeFrom::Id { id, delta } => {
                let r = self.best_rank(id, t)? as i64;
                r.saturating_sub(*delta).max(1) as u64
            }
        };
        Some(self.entries_from(t, start, count.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, scores: &[i64]) -> SetItem {
        SetItem {
            id: id.into(),
            scores: Some(scores.iter().map(|s| Score::Int(*s)).collect()),
            ..SetItem::default()
        }
    }

    fn order(r: &Ranking, t: usize) -> Vec<(String, Score)> {
        r.entries_from(t, 1, u64::MAX)
            .into_iter()
            .map(|e| (e.k.to_string(), e.i))
            .collect()
    }

    #[test]
    fn set_ranks_ties_and_results() {
        let mut r = Ranking::new();
        let mut touched = Vec::new();
        let one = TierSel::Default;
        assert_eq!(
            r.set(&mut item("a", &[10]), one, 128, &mut touched),
            SetResult::Rank(1)
        );
        assert_eq!(
            r.set(&mut item("b", &[20]), one, 128, &mut touched),
            SetResult::Rank(1)
        );
        // Equal score: the newer one ranks first.
        assert_eq!(
            r.set(&mut item("c", &[10]), one, 128, &mut touched),
            SetResult::Rank(2)
        );
        assert_eq!(r.best_rank("a", 0), Some(3));
        // Same scores again: unchanged, and `a` keeps its place behind `c`.
        assert_eq!(
            r.set(&mut item("a", &[10]), one, 128, &mut touched),
            SetResult::Unchanged
        );
        assert_eq!(r.best_rank("a", 0), Some(3));
        // A tier that is not touched.
        assert_eq!(
            r.set(&mut item("a", &[1]), TierSel::One(2), 128, &mut touched),
            SetResult::Rank(1)
        );
        let mut only_v = SetItem {
            id: "a".into(),
            ..SetItem::default()
        };
        only_v.v = Some(bytes::Bytes::from_static(b"x"));
        assert_eq!(
            r.set(&mut only_v, TierSel::One(3), 128, &mut touched),
            SetResult::Untouched
        );
        // `i` with tier = all is rejected; over-long keys too.
        assert_eq!(
            r.set(&mut item("z", &[1]), TierSel::All, 128, &mut touched),
            SetResult::Error
        );
        assert_eq!(
            r.set(&mut item("long", &[1]), one, 3, &mut touched),
            SetResult::Error
        );
        assert!(r.entry("z").is_none());
        // Several scores: the id appears once per score.
        assert_eq!(
            r.set(&mut item("d", &[15, 5]), one, 128, &mut touched),
            SetResult::Rank(2)
        );
        let names: Vec<String> = order(&r, 0).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["b", "d", "c", "a", "d"]);
        // Replacing one of two scores keeps the other's key.
        assert_eq!(
            r.set(&mut item("d", &[15, 25]), one, 128, &mut touched),
            SetResult::Rank(1)
        );
        assert_eq!(r.tier_len(0), 5);
    }

    #[test]
    fn set_reports_the_rank_of_the_best_key() {
        // Several scores per id, repeated ones, ties with other ids: the rank a `set`
        // answers (from its inserts) is the one a lookup finds afterwards.
        let mut r = Ranking::new();
        let mut touched = Vec::new();
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = format!("u{}", x % 50);
            let scores: Vec<i64> = (0..1 + (x >> 8) % 3)
                .map(|n| ((x >> (12 + 4 * n)) % 6) as i64)
                .collect();
            let got = r.set(&mut item(&id, &scores), TierSel::Default, 128, &mut touched);
            if let SetResult::Rank(rank) = got {
                assert_eq!(Some(rank), r.best_rank(&id, 0), "{id} {scores:?}");
            }
        }
    }

    #[test]
    fn strings_after_ints() {
        let mut r = Ranking::new();
        let mut t = Vec::new();
        let s = |id: &str, sc: Score| SetItem {
            id: id.into(),
            scores: Some(vec![sc]),
            ..SetItem::default()
        };
        r.set(
            &mut s("x", Score::str("apple")),
            TierSel::Default,
            128,
            &mut t,
        );
        r.set(&mut s("y", Score::Int(-100)), TierSel::Default, 128, &mut t);
        r.set(
            &mut s("z", Score::str("banana")),
            TierSel::Default,
            128,
            &mut t,
        );
        let names: Vec<String> = order(&r, 0).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["y", "z", "x"]);
    }

    #[test]
    fn del_get_range() {
        let mut r = Ranking::new();
        let mut t = Vec::new();
        for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            r.set(
                &mut item(id, &[(i as i64) * 10]),
                TierSel::Default,
                128,
                &mut t,
            );
        }
        // Ranks: e(40) d(30) c(20) b(10) a(0)
        let from = |s| RangeFrom::Score(Score::Int(s));
        let ks = |v: Vec<RankedEntry>| {
            v.into_iter()
                .map(|e| (e.k.to_string(), e.d))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ks(r.range(0, &from(25), 2).unwrap()),
            [("c".into(), 3), ("b".into(), 4)]
        );
        assert_eq!(ks(r.range(0, &from(30), 1).unwrap()), [("d".into(), 2)]);
        let by_id = |id: &str, delta| RangeFrom::Id {
            id: id.into(),
            delta,
        };
        assert_eq!(
            ks(r.range(0, &by_id("b", 1), 2).unwrap()),
            [("c".into(), 3), ("b".into(), 4)]
        );
        assert_eq!(
            ks(r.range(0, &by_id("d", 9), 1).unwrap()),
            [("e".into(), 1)]
        );
        assert_eq!(r.range(0, &by_id("nobody", 0), 1), None);
        assert_eq!(
            r.get("c", TierSel::Default),
            GetResult::Tier {
                v: None,
                scores: vec![(Score::Int(20), 3)]
            }
        );
        assert_eq!(r.get("q", TierSel::Default), GetResult::Unknown);
        assert!(r.del("c", TierSel::One(1), &mut t));
        assert_eq!(r.tier_len(0), 4);
        assert_eq!(r.ids(), 5);
        assert!(matches!(
            r.get("c", TierSel::All),
            GetResult::All {
                tiers: [None, None, None, None],
                ..
            }
        ));
        assert!(r.del("c", TierSel::All, &mut t));
        assert!(!r.del("c", TierSel::All, &mut t));
        assert_eq!(r.ids(), 4);
    }
}
