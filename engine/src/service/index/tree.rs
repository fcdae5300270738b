//! A counted B+tree: a sorted set of unique keys with a value each, where insert, remove,
//! rank-of-key and key-at-rank all cost O(log n) (spec/services.md §2.2 "Storage engine":
//! rank and key-at-rank must both be logarithmic).
//!
//! Entries live in leaves of up to `N - 1` keys (plus one overflow slot while a leaf splits),
//! chained left to right for iteration. An inner node holds up to `N - 1` children, the
//! separators between them (each the lower bound of the child to its right) and, per child,
//! the number of entries below it: those counts are what turn a B-tree into one that can
//! count, since a rank is the sum of the counts left of the search path. Nodes live in two
//! `Vec` arenas (indices instead of boxes) so dropping a big tier is not a deep recursion.
//! Every node except the root is at least half full, so the depth is O(log n / log N).
//!
//! Why a B-tree and not the treap this replaced: a big tier does not fit in the caches, so
//! what an operation costs is the nodes it reads. A treap of ~200k entries is ~25 levels of
//! dependent cache misses per descent; here a descent reads 4 nodes, and a node's keys are
//! contiguous and scanned front to back, so the processor fetches their cache lines in
//! parallel instead of one after another (BENCHMARKS.md "index.so ranking versus a Redis
//! sorted set").

use std::cmp::Ordering;

use super::slots::Slots;

const NIL: u32 = u32::MAX;

/// Node capacity of the index's tiers (one slot more than a node keeps, for the entry or
/// child that makes it split): leaves of up to 32 entries, inner nodes of up to 32 children,
/// so a tier of a million entries is 4-5 levels deep and a node's keys are 16 cache lines.
pub const NODE: usize = 33;

struct Leaf<K, V, const N: usize> {
    keys: Slots<K, N>,
    vals: Slots<V, N>,
    /// The next leaf in key order (`NIL` for the last).
    next: u32,
}

#[derive(Clone, Copy)]
struct Child {
    node: u32,
    /// Entries in that child's subtree.
    count: u32,
}

struct Inner<K, const N: usize> {
    /// `seps[i]` is a lower bound of child `i + 1`'s keys and above every key of child `i`.
    /// A separator need not be a key still in the tree: removals leave them in place.
    seps: Slots<K, N>,
    kids: Slots<Child, N>,
}

impl<K, const N: usize> Inner<K, N> {
    fn count(&self) -> u32 {
        self.kids.iter().map(|c| c.count).sum()
    }

    /// Entries below the children before `i`.
    fn count_before(&self, i: usize) -> u32 {
        self.kids.iter().take(i).map(|c| c.count).sum()
    }
}

/// A node is "under-full" below this many keys or children (the root excepted); merging
/// two nodes is possible whenever one of them is under-full and they fit in `N - 1`.
const fn min_fill(n: usize) -> usize {
    n / 2
}

pub struct CountedTree<K, V, const N: usize = NODE> {
    leaves: Vec<Leaf<K, V, N>>,
    inners: Vec<Inner<K, N>>,
    free_leaves: Vec<u32>,
    free_inners: Vec<u32>,
    root: u32,
    /// Inner levels above the leaves (0: the root is a leaf).
    height: usize,
    len: usize,
    /// The search path of the last insert or remove (inner node, child taken), kept to
    /// reuse its allocation.
    path: Vec<(u32, usize)>,
}

impl<K: Ord + Clone, V, const N: usize> Default for CountedTree<K, V, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Two distinct elements of one arena, both mutable.
fn pair<T>(v: &mut [T], a: u32, b: u32) -> (&mut T, &mut T) {
    let (a, b) = (a as usize, b as usize);
    assert_ne!(a, b, "two distinct nodes");
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

fn alloc<T>(arena: &mut Vec<T>, free: &mut Vec<u32>, x: T) -> u32 {
    match free.pop() {
        Some(i) => {
            arena[i as usize] = x;
            i
        }
        None => {
            assert!(arena.len() < NIL as usize, "tree full");
            arena.push(x);
            (arena.len() - 1) as u32
        }
    }
}

impl<K: Ord + Clone, V, const N: usize> CountedTree<K, V, N> {
    pub fn new() -> Self {
        // A node must split into two that are not under-full.
        const { assert!(N >= 4, "node capacity") };
        CountedTree {
            leaves: Vec::new(),
            inners: Vec::new(),
            free_leaves: Vec::new(),
            free_inners: Vec::new(),
            root: NIL,
            height: 0,
            len: 0,
            path: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn leaf(&self, i: u32) -> &Leaf<K, V, N> {
        &self.leaves[i as usize]
    }

    fn inner(&self, i: u32) -> &Inner<K, N> {
        &self.inners[i as usize]
    }

    /// Walks from the root to a leaf: at each inner node `pick` chooses the child index;
    /// `visit` sees each (inner node, child index). Returns the leaf and the number of
    /// entries in the subtrees left of the path.
    fn walk(
        &self,
        mut pick: impl FnMut(&Inner<K, N>) -> usize,
        mut visit: impl FnMut(u32, usize),
    ) -> (u32, usize) {
        let mut n = self.root;
        let mut before = 0usize;
        for _ in 0..self.height {
            let inner = self.inner(n);
            let i = pick(inner);
            before += inner.count_before(i) as usize;
            visit(n, i);
            n = inner.kids.get(i).node;
        }
        (n, before)
    }

    /// The leaf that holds `key` or would hold it, with the path to it and the number of
    /// entries left of that path. Inner nodes are scanned front to back (see the `//!`).
    fn descend(&self, key: &K, visit: impl FnMut(u32, usize)) -> (u32, usize) {
        self.walk(
            |inner| inner.seps.iter().take_while(|s| *s <= key).count(),
            visit,
        )
    }

    /// Position of `key` in leaf `l`, and whether it is there.
    fn find_in_leaf(&self, l: u32, key: &K) -> (usize, bool) {
        let keys = &self.leaf(l).keys;
        let p = keys.iter().take_while(|k| *k < key).count();
        (p, p < keys.len() && keys.get(p) == key)
    }

    /// Number of keys for which `probe(key)` is `Less` (keys "before" the probe). `probe` must
    /// be monotone over the key order: `Less` for a prefix, then `Equal`/`Greater`.
    pub fn count_before_by(&self, mut probe: impl FnMut(&K) -> Ordering) -> usize {
        if self.root == NIL {
            return 0;
        }
        // A separator with `Less` bounds every key left of it, which is then `Less` too.
        let mut before_sep = |k: &K| probe(k) == Ordering::Less;
        let (l, before) = self.walk(
            |inner| inner.seps.iter().take_while(|s| before_sep(s)).count(),
            |_, _| {},
        );
        before
            + self
                .leaf(l)
                .keys
                .iter()
                .take_while(|k| before_sep(k))
                .count()
    }

    /// 1-based rank of `key`, if present.
    pub fn rank(&self, key: &K) -> Option<usize> {
        if self.root == NIL {
            return None;
        }
        let (l, before) = self.descend(key, |_, _| {});
        let (p, found) = self.find_in_leaf(l, key);
        found.then_some(before + p + 1)
    }

    /// The leaf and position of the entry at 0-based `k` (`k < len`).
    fn locate(&self, k: usize) -> (u32, usize) {
        let mut k = k as u32;
        let (l, _) = self.walk(
            |inner| {
                let mut i = 0;
                while k >= inner.kids.get(i).count {
                    k -= inner.kids.get(i).count;
                    i += 1;
                }
                i
            },
            |_, _| {},
        );
        (l, k as usize)
    }

    /// The entry at 1-based `rank`.
    pub fn select(&self, rank: usize) -> Option<(&K, &V)> {
        if rank == 0 || rank > self.len {
            return None;
        }
        let (l, p) = self.locate(rank - 1);
        let leaf = self.leaf(l);
        Some((leaf.keys.get(p), leaf.vals.get(p)))
    }

    /// Inserts `key`; returns false (and changes nothing) when it is already present.
    pub fn insert(&mut self, key: K, val: V) -> bool {
        self.insert_ranked(key, val).is_some()
    }

    /// Inserts `key` and returns its 1-based rank; `None` (and nothing changes) when it is
    /// already present. One descent finds the leaf and counts the rank; a full leaf splits
    /// and the split goes up the remembered path as far as it must.
    pub fn insert_ranked(&mut self, key: K, val: V) -> Option<usize> {
        if self.root == NIL {
            self.root = alloc(&mut self.leaves, &mut self.free_leaves, Self::new_leaf());
            self.height = 0;
        }
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        let (l, before) = self.descend(&key, |n, i| path.push((n, i)));
        let (p, found) = self.find_in_leaf(l, &key);
        if found {
            self.path = path;
            return None;
        }
        let leaf = &mut self.leaves[l as usize];
        leaf.keys.insert(p, key);
        leaf.vals.insert(p, val);
        self.len += 1;
        for &(n, i) in &path {
            self.inners[n as usize].kids.get_mut(i).count += 1;
        }
        if self.leaves[l as usize].keys.len() == N {
            self.split_up(&path, l);
        }
        self.path = path;
        Some(before + p + 1)
    }

    fn new_leaf() -> Leaf<K, V, N> {
        Leaf {
            keys: Slots::default(),
            vals: Slots::default(),
            next: NIL,
        }
    }

    /// Splits the over-full leaf `l` (the end of `path`), then each over-full inner node up
    /// the path; a split root gets a new root above it.
    fn split_up(&mut self, path: &[(u32, usize)], l: u32) {
        let leaf = &mut self.leaves[l as usize];
        let at = N / 2;
        let right = Leaf {
            keys: leaf.keys.split_off(at),
            vals: leaf.vals.split_off(at),
            next: leaf.next,
        };
        let mut sep = right.keys.get(0).clone();
        let (mut lc, mut rc) = (at as u32, right.keys.len() as u32);
        let mut right = alloc(&mut self.leaves, &mut self.free_leaves, right);
        self.leaves[l as usize].next = right;
        let mut left = l;
        for &(n, i) in path.iter().rev() {
            let inner = &mut self.inners[n as usize];
            inner.kids.get_mut(i).count = lc;
            inner.kids.insert(
                i + 1,
                Child {
                    node: right,
                    count: rc,
                },
            );
            inner.seps.insert(i, sep);
            if inner.kids.len() < N {
                return;
            }
            // Over-full: the left half keeps `at` children, the separator between the halves
            // goes up.
            let kids = inner.kids.split_off(at);
            let mut seps = inner.seps.split_off(at - 1);
            sep = seps.remove(0);
            lc = inner.count();
            let upper = Inner { seps, kids };
            rc = upper.count();
            right = alloc(&mut self.inners, &mut self.free_inners, upper);
            left = n;
        }
        let mut root = Inner {
            seps: Slots::default(),
            kids: Slots::default(),
        };
        root.seps.push(sep);
        root.kids.push(Child {
            node: left,
            count: lc,
        });
        root.kids.push(Child {
            node: right,
            count: rc,
        });
        self.root = alloc(&mut self.inners, &mut self.free_inners, root);
        self.height += 1;
    }

    /// Removes `key`, returning its value: one descent, then an under-full node borrows
    /// from or merges with a sibling, up the path as far as it must.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        if self.root == NIL {
            return None;
        }
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        let (l, _) = self.descend(key, |n, i| path.push((n, i)));
        let (p, found) = self.find_in_leaf(l, key);
        if !found {
            self.path = path;
            return None;
        }
        let leaf = &mut self.leaves[l as usize];
        leaf.keys.remove(p);
        let val = leaf.vals.remove(p);
        self.len -= 1;
        if self.len == 0 {
            // Empty again: give the arenas back instead of keeping a high-water mark.
            *self = Self {
                path,
                ..Self::new()
            };
            return Some(val);
        }
        for &(n, i) in &path {
            self.inners[n as usize].kids.get_mut(i).count -= 1;
        }
        self.rebalance(&path, l);
        self.path = path;
        Some(val)
    }

    /// Restores the fill of the nodes on `path` (ending at leaf `l`), bottom up, and drops
    /// root levels left with one child.
    fn rebalance(&mut self, path: &[(u32, usize)], l: u32) {
        let min = min_fill(N);
        let mut under = self.leaf(l).keys.len() < min;
        for (level, &(n, i)) in path.iter().enumerate().rev() {
            if !under {
                break;
            }
            // The pair (j, j + 1) of siblings that holds the under-full child.
            let j = i.saturating_sub(1);
            if level + 1 == path.len() {
                self.balance_leaves(n, j);
            } else {
                self.balance_inners(n, j);
            }
            under = self.inner(n).kids.len() < min;
        }
        while self.height > 0 && self.inner(self.root).kids.len() == 1 {
            let old = self.root;
            self.root = self.inner(old).kids.get(0).node;
            self.free_inner(old);
            self.height -= 1;
        }
    }

    fn free_inner(&mut self, n: u32) {
        self.inners[n as usize] = Inner {
            seps: Slots::default(),
            kids: Slots::default(),
        };
        self.free_inners.push(n);
    }

    /// Leaves `j` and `j + 1` of inner node `n`, one of them under-full: merged into one
    /// when they fit, else their entries are shared out evenly.
    fn balance_leaves(&mut self, n: u32, j: usize) {
        let inner = &self.inners[n as usize];
        let (a, b) = (inner.kids.get(j).node, inner.kids.get(j + 1).node);
        let (left, right) = pair(&mut self.leaves, a, b);
        let total = left.keys.len() + right.keys.len();
        let inner = &mut self.inners[n as usize];
        if total < N {
            left.keys.append(&mut right.keys);
            left.vals.append(&mut right.vals);
            left.next = right.next;
            inner.seps.remove(j);
            let gone = inner.kids.remove(j + 1);
            inner.kids.get_mut(j).count = total as u32;
            self.leaves[gone.node as usize] = Self::new_leaf();
            self.free_leaves.push(gone.node);
            return;
        }
        let half = total / 2;
        let have = left.keys.len();
        if have < half {
            // The front of the right leaf moves to the end of the left one.
            let keys = right.keys.split_off(half - have);
            let vals = right.vals.split_off(half - have);
            left.keys.append(&mut right.keys);
            left.vals.append(&mut right.vals);
            (right.keys, right.vals) = (keys, vals);
        } else {
            let mut keys = left.keys.split_off(half);
            let mut vals = left.vals.split_off(half);
            keys.append(&mut right.keys);
            vals.append(&mut right.vals);
            (right.keys, right.vals) = (keys, vals);
        }
        *inner.seps.get_mut(j) = right.keys.get(0).clone();
        inner.kids.get_mut(j).count = half as u32;
        inner.kids.get_mut(j + 1).count = (total - half) as u32;
    }

    /// Inner nodes `j` and `j + 1` of inner node `n`, one of them under-full: merged into one
    /// (with the separator between them) when they fit, else their children are shared out
    /// evenly, rotating through that separator.
    fn balance_inners(&mut self, n: u32, j: usize) {
        let parent = &self.inners[n as usize];
        let (a, b) = (parent.kids.get(j).node, parent.kids.get(j + 1).node);
        let (have, total) = {
            let (left, right) = (self.inner(a), self.inner(b));
            (left.kids.len(), left.kids.len() + right.kids.len())
        };
        if total < N {
            let parent = &mut self.inners[n as usize];
            let sep = parent.seps.remove(j);
            let gone = parent.kids.remove(j + 1);
            parent.kids.get_mut(j).count += gone.count;
            let (left, right) = pair(&mut self.inners, a, b);
            left.seps.push(sep);
            left.seps.append(&mut right.seps);
            left.kids.append(&mut right.kids);
            self.free_inner(b);
            return;
        }
        let half = total / 2;
        let (left, right) = pair(&mut self.inners, a, b);
        // The separators that change sides, and the one that replaces the parent's.
        let (mut moved, up) = if have < half {
            let kids = right.kids.split_off(half - have);
            left.kids.append(&mut right.kids);
            right.kids = kids;
            let seps = right.seps.split_off(half - have);
            let mut moved = std::mem::replace(&mut right.seps, seps);
            let up = moved.pop().expect("a separator per child moved");
            (moved, up)
        } else {
            let mut kids = left.kids.split_off(half);
            kids.append(&mut right.kids);
            right.kids = kids;
            let moved = left.seps.split_off(half);
            let up = left
                .seps
                .pop()
                .expect("a separator left of the moved children");
            (moved, up)
        };
        let (lc, rc) = (left.count(), right.count());
        let parent = &mut self.inners[n as usize];
        let down = std::mem::replace(parent.seps.get_mut(j), up);
        parent.kids.get_mut(j).count = lc;
        parent.kids.get_mut(j + 1).count = rc;
        let (left, right) = pair(&mut self.inners, a, b);
        if have < half {
            left.seps.push(down);
            left.seps.append(&mut moved);
        } else {
            moved.push(down);
            moved.append(&mut right.seps);
            right.seps = moved;
        }
    }
}

pub struct Iter<'a, K, V, const N: usize> {
    tree: &'a CountedTree<K, V, N>,
    leaf: u32,
    pos: usize,
}

impl<K: Ord + Clone, V, const N: usize> CountedTree<K, V, N> {
    /// In-order iteration from 1-based `rank` (O(log n) to start, O(1) per step).
    pub fn iter_from(&self, rank: usize) -> Iter<'_, K, V, N> {
        let (leaf, pos) = if rank == 0 || rank > self.len {
            (NIL, 0)
        } else {
            self.locate(rank - 1)
        };
        Iter {
            tree: self,
            leaf,
            pos,
        }
    }
}

impl<'a, K, V, const N: usize> Iterator for Iter<'a, K, V, N> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        while self.leaf != NIL {
            let leaf = &self.tree.leaves[self.leaf as usize];
            if self.pos < leaf.keys.len() {
                self.pos += 1;
                return Some((leaf.keys.get(self.pos - 1), leaf.vals.get(self.pos - 1)));
            }
            (self.leaf, self.pos) = (leaf.next, 0);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Checks every invariant below node `n` at `height` (counts, separators, fill, key
    /// order) and returns its keys in order, appended to `out`.
    fn check<K: Ord + Clone + std::fmt::Debug, V, const N: usize>(
        t: &CountedTree<K, V, N>,
        n: u32,
        height: usize,
        lo: Option<&K>,
        hi: Option<&K>,
        out: &mut Vec<K>,
    ) -> u32 {
        let root = n == t.root;
        let in_bounds = |k: &K| lo.is_none_or(|lo| lo <= k) && hi.is_none_or(|hi| k < hi);
        if height == 0 {
            let leaf = t.leaf(n);
            assert!(root || leaf.keys.len() >= min_fill(N), "leaf fill");
            assert!(leaf.keys.len() < N && leaf.vals.len() == leaf.keys.len());
            for k in leaf.keys.iter() {
                assert!(in_bounds(k), "key {k:?} outside its separators");
                assert!(out.last().is_none_or(|last| last < k), "key order");
                out.push(k.clone());
            }
            return leaf.keys.len() as u32;
        }
        let inner = t.inner(n);
        assert!(root || inner.kids.len() >= min_fill(N), "inner fill");
        assert!(inner.kids.len() >= 2 && inner.kids.len() < N);
        assert_eq!(inner.seps.len() + 1, inner.kids.len());
        for (i, c) in inner.kids.iter().enumerate() {
            let lo = if i == 0 {
                lo
            } else {
                Some(inner.seps.get(i - 1))
            };
            let hi = if i + 1 == inner.kids.len() {
                hi
            } else {
                Some(inner.seps.get(i))
            };
            let count = check(t, c.node, height - 1, lo, hi, out);
            assert_eq!(c.count, count, "child count");
        }
        inner.count()
    }

    fn keys<K: Ord + Clone + std::fmt::Debug, V, const N: usize>(
        t: &CountedTree<K, V, N>,
    ) -> Vec<K> {
        let mut out = Vec::new();
        if t.root != NIL {
            let n = check(t, t.root, t.height, None, None, &mut out);
            assert_eq!(n as usize, t.len());
        }
        out
    }

    /// Runs `ops` (key, insert?) against a tree and a sorted `Vec`, comparing every answer:
    /// ranks returned, values removed, sizes, rank / select / count-before / iteration.
    fn against_vec<const N: usize>(ops: &[(u16, bool)], probes: &[u16]) {
        let mut t: CountedTree<u16, u32, N> = CountedTree::new();
        let mut v: Vec<u16> = Vec::new();
        for (step, &(key, insert)) in ops.iter().enumerate() {
            if insert {
                let got = t.insert_ranked(key, u32::from(key) * 7);
                match v.binary_search(&key) {
                    Ok(_) => assert_eq!(got, None),
                    Err(p) => {
                        assert_eq!(got, Some(p + 1), "step {step}");
                        v.insert(p, key);
                    }
                }
            } else {
                let got = t.remove(&key);
                match v.binary_search(&key) {
                    Ok(p) => {
                        assert_eq!(got, Some(u32::from(key) * 7));
                        v.remove(p);
                    }
                    Err(_) => assert_eq!(got, None),
                }
            }
            assert_eq!(t.len(), v.len());
            assert_eq!(t.is_empty(), v.is_empty());
            assert_eq!(keys(&t), v, "step {step}");
            let probe = probes[step % probes.len()];
            assert_eq!(
                t.count_before_by(|k| k.cmp(&probe)),
                v.partition_point(|x| *x < probe)
            );
            assert_eq!(t.rank(&probe), v.binary_search(&probe).ok().map(|p| p + 1));
            if !v.is_empty() {
                let r = usize::from(probe) % v.len();
                assert_eq!(t.select(r + 1), Some((&v[r], &(u32::from(v[r]) * 7))));
                let got: Vec<u16> = t.iter_from(r + 1).take(40).map(|(k, _)| *k).collect();
                assert_eq!(got, v[r..(r + 40).min(v.len())]);
            }
        }
        assert_eq!(t.select(0), None);
        assert_eq!(t.select(v.len() + 1), None);
        assert_eq!(t.iter_from(v.len() + 1).next(), None);
        let all: Vec<u16> = t.iter_from(1).map(|(k, _)| *k).collect();
        assert_eq!(all, v);
    }

    /// Inserts more often than removes (the tree grows, splits and deepens), over a key range
    /// small enough for duplicates and for removes that hit.
    fn ops(keys: u16, max: usize) -> impl Strategy<Value = Vec<(u16, bool)>> {
        prop::collection::vec((0..keys, prop::bool::weighted(0.6)), 1..max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn smallest_nodes_match_a_sorted_vec(
            ops in ops(300, 1500),
            probes in prop::collection::vec(0u16..310, 1..50),
        ) {
            against_vec::<4>(&ops, &probes);
        }

        #[test]
        fn small_nodes_match_a_sorted_vec(
            ops in ops(500, 1500),
            probes in prop::collection::vec(0u16..510, 1..50),
        ) {
            against_vec::<7>(&ops, &probes);
        }

        #[test]
        fn index_nodes_match_a_sorted_vec(
            ops in ops(3000, 4000),
            probes in prop::collection::vec(0u16..3010, 1..50),
        ) {
            against_vec::<NODE>(&ops, &probes);
        }
    }

    #[test]
    fn grow_to_many_levels_then_drain() {
        // Ascending inserts then removes from the front, then from the back: every split
        // and every merge / borrow direction, several levels deep.
        let mut t: CountedTree<u32, (), 4> = CountedTree::new();
        for i in 0..2000 {
            assert_eq!(t.insert_ranked(i, ()), Some(i as usize + 1));
        }
        assert!(t.height >= 5);
        assert_eq!(keys(&t), (0..2000).collect::<Vec<_>>());
        for i in 0..1000 {
            assert_eq!(t.remove(&i), Some(()));
            assert_eq!(t.rank(&1999), Some(1999 - i as usize));
        }
        for i in (1000..2000).rev() {
            assert_eq!(t.remove(&i), Some(()));
            keys(&t);
        }
        assert!(t.is_empty() && t.leaves.is_empty() && t.inners.is_empty());
        assert!(t.insert(5, ()));
        assert_eq!(t.rank(&5), Some(1));
    }

    #[test]
    fn index_keys_sit_in_their_node() {
        // A tier key takes half a cache line in its slot (its `Option` costs 8 bytes: the
        // score's niche already tells ints from strings), an id 16 bytes, so a leaf's keys
        // are 16 cache lines and a scan reads about half of them.
        use super::super::order::TierKey;
        use std::mem::size_of;
        assert_eq!(size_of::<Option<TierKey>>(), 32);
        assert_eq!(size_of::<Option<std::sync::Arc<str>>>(), 16);
    }
}
