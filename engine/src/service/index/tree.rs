//! An order-statistic treap: a sorted set of unique keys with a value each, where insert,
//! remove, rank-of-key and key-at-rank all cost O(log n) expected (spec/services.md §2.2
//! "Storage engine": rank and key-at-rank must both be logarithmic).
//!
//! Every node keeps the size of its subtree, which is what turns an ordinary balanced search
//! tree into one that can count. Nodes live in one `Vec` (indices instead of boxes) so a tier
//! of a million entries is one allocation plus a free list, and dropping it is not a deep
//! recursion. Balance comes from random heap priorities (a deterministic xorshift, so runs are
//! reproducible); the expected depth is O(log n), which also bounds the recursion below.
//!
//! A big tier does not fit in the caches, so what an operation costs is the nodes it reads:
//! insert and remove are one descent each and then touch only the nodes of that path
//! (BENCHMARKS.md "index.so ranking versus a Redis sorted set").

use std::cmp::Ordering;

const NIL: u32 = u32::MAX;

struct Node<K, V> {
    key: K,
    val: V,
    left: u32,
    right: u32,
    prio: u32,
    /// Number of nodes in the subtree rooted here, this one included.
    size: u32,
}

/// One arena slot, on a cache line of its own: a node of a tier (a `TierKey` and an
/// `Arc<str>` id) is 64 bytes, and unaligned it would straddle two lines, so a descent
/// through a tier far larger than the caches would miss twice per level instead of once.
#[repr(align(64))]
struct Slot<K, V>(Option<Node<K, V>>);

pub struct Treap<K, V> {
    nodes: Vec<Slot<K, V>>,
    free: Vec<u32>,
    root: u32,
    rng: u64,
    /// The search path of the last insert or remove (node, went right), kept to reuse its
    /// allocation.
    path: Vec<(u32, bool)>,
}

impl<K: Ord, V> Default for Treap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord, V> Treap<K, V> {
    pub fn new() -> Self {
        Treap {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            rng: 0x9E37_79B9_7F4A_7C15,
            path: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.size(self.root) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.root == NIL
    }

    fn node(&self, i: u32) -> &Node<K, V> {
        self.nodes[i as usize].0.as_ref().expect("live node")
    }

    fn node_mut(&mut self, i: u32) -> &mut Node<K, V> {
        self.nodes[i as usize].0.as_mut().expect("live node")
    }

    fn size(&self, i: u32) -> u32 {
        if i == NIL {
            0
        } else {
            self.node(i).size
        }
    }

    fn next_prio(&mut self) -> u32 {
        // xorshift64: cheap, and deterministic so a failing test replays identically.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 32) as u32
    }

    /// Nodes before `node` within its own subtree, plus itself, when the search goes on to
    /// its right child: `size - size(right)` reads the right child, which the search visits
    /// next anyway, where `1 + size(left)` would read a node off the path (a cache miss).
    fn passed(&self, node: &Node<K, V>) -> u32 {
        node.size - self.size(node.right)
    }

    /// One descent toward `key`, shared by insert and remove: the path taken (each node and
    /// whether the search went right of it, in the reused `self.path` buffer, which the
    /// caller puts back), the node holding `key` (`NIL` if none) and how many keys lie
    /// before where the search ended. Reads path nodes only (see [`Self::passed`]).
    fn descend(&mut self, key: &K) -> (Vec<(u32, bool)>, u32, u32) {
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        let mut t = self.root;
        let mut before = 0u32;
        while t != NIL {
            let node = self.node(t);
            match key.cmp(&node.key) {
                Ordering::Less => {
                    path.push((t, false));
                    t = node.left;
                }
                Ordering::Greater => {
                    before += self.passed(node);
                    path.push((t, true));
                    t = node.right;
                }
                Ordering::Equal => break,
            }
        }
        (path, t, before)
    }

    /// Splits the subtree `t` (of `size` nodes) into the keys below `key` and those above
    /// (`key` is not in it), with their sizes. Sizes are carried down the search path
    /// instead of summed from both children, so only path nodes are read.
    fn split_by_key(&mut self, t: u32, key: &K) -> (u32, u32, u32, u32) {
        if t == NIL {
            return (NIL, NIL, 0, 0);
        }
        let total = self.node(t).size;
        if self.node(t).key < *key {
            let right = self.node(t).right;
            let (a, b, _, sb) = self.split_by_key(right, key);
            let n = self.node_mut(t);
            n.right = a;
            n.size = total - sb;
            (t, b, total - sb, sb)
        } else {
            let left = self.node(t).left;
            let (a, b, sa, _) = self.split_by_key(left, key);
            let n = self.node_mut(t);
            n.left = b;
            n.size = total - sa;
            (a, t, sa, total - sa)
        }
    }

    /// Joins two treaps where every key of `a` is less than every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        let (pa, sa) = (self.node(a).prio, self.node(a).size);
        let (pb, sb) = (self.node(b).prio, self.node(b).size);
        if pa >= pb {
            let ar = self.node(a).right;
            let m = self.merge(ar, b);
            let n = self.node_mut(a);
            n.right = m;
            n.size = sa + sb;
            a
        } else {
            let bl = self.node(b).left;
            let m = self.merge(a, bl);
            let n = self.node_mut(b);
            n.left = m;
            n.size = sa + sb;
            b
        }
    }

    /// Makes `child` the subtree the search path reached below its last node (or the root),
    /// and adds `delta` to the size of every node on the path.
    fn reattach(&mut self, path: &[(u32, bool)], child: u32, delta: i32) {
        match path.last() {
            None => self.root = child,
            Some(&(p, right)) => {
                let n = self.node_mut(p);
                if right {
                    n.right = child;
                } else {
                    n.left = child;
                }
            }
        }
        for &(p, _) in path {
            let n = self.node_mut(p);
            n.size = n.size.wrapping_add_signed(delta);
        }
    }

    /// Number of keys for which `probe(key)` is `Less` (keys "before" the probe). `probe` must
    /// be monotone over the key order: `Less` for a prefix, then `Equal`/`Greater`.
    pub fn count_before_by(&self, mut probe: impl FnMut(&K) -> Ordering) -> usize {
        let mut t = self.root;
        let mut n = 0u32;
        while t != NIL {
            let node = self.node(t);
            if probe(&node.key) == Ordering::Less {
                n += self.passed(node);
                t = node.right;
            } else {
                t = node.left;
            }
        }
        n as usize
    }

    /// 1-based rank of `key`, if present.
    pub fn rank(&self, key: &K) -> Option<usize> {
        let mut t = self.root;
        let mut before = 0u32;
        while t != NIL {
            let node = self.node(t);
            match key.cmp(&node.key) {
                Ordering::Less => t = node.left,
                Ordering::Greater => {
                    before += self.passed(node);
                    t = node.right;
                }
                Ordering::Equal => return Some((before + self.passed(node)) as usize),
            }
        }
        None
    }

    /// The entry at 1-based `rank`.
    pub fn select(&self, rank: usize) -> Option<(&K, &V)> {
        if rank == 0 || rank > self.len() {
            return None;
        }
        let mut k = rank as u32 - 1;
        let mut t = self.root;
        loop {
            let node = self.node(t);
            let ls = self.size(node.left);
            match k.cmp(&ls) {
                Ordering::Less => t = node.left,
                Ordering::Equal => return Some((&node.key, &node.val)),
                Ordering::Greater => {
                    k -= ls + 1;
                    t = node.right;
                }
            }
        }
    }

    /// Inserts `key`; returns false (and changes nothing) when it is already present.
    pub fn insert(&mut self, key: K, val: V) -> bool {
        self.insert_ranked(key, val).is_some()
    }

    /// Inserts `key` and returns its 1-based rank; `None` (and nothing changes) when it is
    /// already present.
    ///
    /// One descent finds the rank (or the duplicate) and remembers the search path; the new
    /// node then takes the place its priority gives it on that path, whose subtree is split
    /// around it. Everything after the descent touches path nodes only, already in cache: a
    /// big tier is far larger than the caches, and every node read off the path is a miss.
    pub fn insert_ranked(&mut self, key: K, val: V) -> Option<usize> {
        let (path, found, before) = self.descend(&key);
        if found != NIL {
            self.path = path;
            return None;
        }
        let prio = self.next_prio();
        // Heap order: the new node goes above the first path node of lower priority.
        let at = path
            .iter()
            .position(|&(p, _)| self.node(p).prio < prio)
            .unwrap_or(path.len());
        let below = path.get(at).map_or(NIL, |&(p, _)| p);
        let (left, right, sl, sr) = self.split_by_key(below, &key);
        let node = Node {
            key,
            val,
            left,
            right,
            prio,
            size: 1 + sl + sr,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = Slot(Some(node));
                i
            }
            None => {
                assert!(self.nodes.len() < NIL as usize, "treap full");
                self.nodes.push(Slot(Some(node)));
                (self.nodes.len() - 1) as u32
            }
        };
        self.reattach(&path[..at], i, 1);
        self.path = path;
        Some(before as usize + 1)
    }

    /// Removes `key`, returning its value: one descent, then its two subtrees are joined
    /// in its place.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (path, t, _) = self.descend(key);
        if t == NIL {
            self.path = path;
            return None;
        }
        let (l, r) = (self.node(t).left, self.node(t).right);
        let joined = self.merge(l, r);
        self.reattach(&path, joined, -1);
        self.path = path;
        self.free.push(t);
        let node = self.nodes[t as usize].0.take().expect("live node");
        if self.root == NIL {
            // Empty again: give the arena back instead of keeping a high-water mark.
            self.nodes.clear();
            self.free.clear();
        }
        Some(node.val)
    }

    /// In-order iteration from 1-based `rank` (O(log n) to start, O(1) amortized per step).
    pub fn iter_from(&self, rank: usize) -> Iter<'_, K, V> {
        let mut it = Iter {
            tree: self,
            stack: Vec::new(),
        };
        if rank == 0 || rank > self.len() {
            return it;
        }
        let mut k = rank as u32 - 1;
        let mut t = self.root;
        while t != NIL {
            let node = self.node(t);
            let ls = self.size(node.left);
            match k.cmp(&ls) {
                Ordering::Less => {
                    // This node comes after the start: visit it once the left side is done.
                    it.stack.push(t);
                    t = node.left;
                }
                Ordering::Equal => {
                    it.stack.push(t);
                    break;
                }
                Ordering::Greater => {
                    k -= ls + 1;
                    t = node.right;
                }
            }
        }
        it
    }
}

pub struct Iter<'a, K, V> {
    tree: &'a Treap<K, V>,
    /// Nodes still to visit, next on top; each one's left subtree is already done.
    stack: Vec<u32>,
}

impl<'a, K: Ord, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let t = self.stack.pop()?;
        let tree = self.tree;
        let node = tree.node(t);
        let mut c = node.right;
        while c != NIL {
            self.stack.push(c);
            c = tree.node(c).left;
        }
        Some((&node.key, &node.val))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Checks every subtree's size and the heap order of priorities below `i`; its size.
    fn shape<K: Ord, V>(t: &Treap<K, V>, i: u32) -> u32 {
        if i == NIL {
            return 0;
        }
        let n = t.node(i);
        for c in [n.left, n.right] {
            assert!(c == NIL || t.node(c).prio <= n.prio, "heap order");
        }
        assert!(n.left == NIL || t.node(n.left).key < n.key, "key order");
        assert!(n.right == NIL || n.key < t.node(n.right).key, "key order");
        let size = 1 + shape(t, n.left) + shape(t, n.right);
        assert_eq!(n.size, size, "subtree size");
        size
    }

    #[test]
    fn matches_sorted_vec_on_random_ops() {
        let mut rng = XorShift(0xDEAD_BEEF_1234_5678);
        let mut t: Treap<u32, u32> = Treap::new();
        let mut v: Vec<u32> = Vec::new();
        for step in 0..20_000 {
            let op = rng.next() % 10;
            let key = (rng.next() % 3000) as u32;
            if op < 6 {
                let inserted = t.insert_ranked(key, key.wrapping_mul(7));
                match v.binary_search(&key) {
                    Ok(_) => assert_eq!(inserted, None),
                    Err(p) => {
                        assert_eq!(inserted, Some(p + 1));
                        v.insert(p, key);
                    }
                }
            } else if op < 9 {
                let removed = t.remove(&key);
                match v.binary_search(&key) {
                    Ok(p) => {
                        assert_eq!(removed, Some(key.wrapping_mul(7)));
                        v.remove(p);
                    }
                    Err(_) => assert_eq!(removed, None),
                }
            } else if !v.is_empty() {
                let r = (rng.next() % v.len() as u64) as usize;
                let got: Vec<u32> = t.iter_from(r + 1).take(5).map(|(k, _)| *k).collect();
                assert_eq!(got, v[r..(r + 5).min(v.len())].to_vec());
            }
            assert_eq!(t.len(), v.len());
            assert_eq!(shape(&t, t.root), v.len() as u32, "step {step}");
            // rank and select of a random key / position, plus the count-before probe
            let probe = (rng.next() % 3000) as u32;
            let before = v.partition_point(|x| *x < probe);
            assert_eq!(t.count_before_by(|k| k.cmp(&probe)), before);
            assert_eq!(t.rank(&probe), v.binary_search(&probe).ok().map(|p| p + 1));
            if !v.is_empty() {
                let r = (rng.next() % v.len() as u64) as usize;
                assert_eq!(t.select(r + 1).map(|(k, _)| *k), Some(v[r]), "step {step}");
            }
        }
        assert_eq!(t.select(0), None);
        assert_eq!(t.select(v.len() + 1), None);
        let all: Vec<u32> = t.iter_from(1).map(|(k, _)| *k).collect();
        assert_eq!(all, v);
    }

    #[test]
    fn a_tier_node_fills_one_cache_line() {
        use super::super::order::TierKey;
        assert_eq!(
            std::mem::size_of::<Slot<TierKey, std::sync::Arc<str>>>(),
            64
        );
    }

    #[test]
    fn remove_to_empty_and_reuse() {
        let mut t: Treap<i32, ()> = Treap::new();
        for i in 0..100 {
            t.insert(i, ());
        }
        for i in 0..100 {
            assert_eq!(t.rank(&i), Some(1));
            t.remove(&i);
        }
        assert!(t.is_empty());
        assert!(t.insert(5, ()));
        assert_eq!(t.rank(&5), Some(1));
    }
}
