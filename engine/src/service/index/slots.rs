//! A vector of at most `N` items stored inline (no heap buffer of its own), for the nodes of
//! the counted B-tree (`tree.rs`): a node's keys sit in the node itself, so reaching a node is
//! one pointer chase, not two, and its keys are contiguous for a scan.
//!
//! Items are `Option`s so that moving them in and out needs no `unsafe`; slots `0..len` are
//! `Some`, the rest `None`. The `Option` costs no space for an id (`Arc<str>` has a niche),
//! 8 bytes for a `TierKey` (32 instead of 24) and 4 for a child record.

pub struct Slots<T, const N: usize> {
    len: usize,
    items: [Option<T>; N],
}

impl<T, const N: usize> Default for Slots<T, N> {
    fn default() -> Self {
        Slots {
            len: 0,
            items: std::array::from_fn(|_| None),
        }
    }
}

impl<T, const N: usize> Slots<T, N> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, i: usize) -> &T {
        debug_assert!(i < self.len);
        self.items[i].as_ref().expect("slot below len")
    }

    pub fn get_mut(&mut self, i: usize) -> &mut T {
        debug_assert!(i < self.len);
        self.items[i].as_mut().expect("slot below len")
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items[..self.len]
            .iter()
            .map(|x| x.as_ref().expect("slot below len"))
    }

    /// Puts `x` at `i`, moving the items from `i` on one place up. Panics when full.
    pub fn insert(&mut self, i: usize, x: T) {
        assert!(
            self.len < N && i <= self.len,
            "slots full or index past the end"
        );
        self.items[i..=self.len].rotate_right(1);
        self.items[i] = Some(x);
        self.len += 1;
    }

    pub fn push(&mut self, x: T) {
        self.insert(self.len, x);
    }

    /// Takes the item at `i` out, moving the ones after it one place down.
    pub fn remove(&mut self, i: usize) -> T {
        assert!(i < self.len, "index past the end");
        let x = self.items[i].take().expect("slot below len");
        self.items[i..self.len].rotate_left(1);
        self.len -= 1;
        x
    }

    pub fn pop(&mut self) -> Option<T> {
        (self.len > 0).then(|| self.remove(self.len - 1))
    }

    /// Moves the items from `at` on into a new `Slots`; `self` keeps `0..at`.
    pub fn split_off(&mut self, at: usize) -> Self {
        assert!(at <= self.len, "index past the end");
        let mut rest = Self::default();
        for (to, from) in (at..self.len).enumerate() {
            rest.items[to] = self.items[from].take();
        }
        rest.len = self.len - at;
        self.len = at;
        rest
    }

    /// Moves every item of `other` to the end of `self`. Panics when they do not fit.
    pub fn append(&mut self, other: &mut Self) {
        assert!(self.len + other.len <= N, "slots full");
        for from in 0..other.len {
            self.items[self.len + from] = other.items[from].take();
        }
        self.len += other.len;
        other.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_split_append_keep_order() {
        let mut s: Slots<String, 6> = Slots::default();
        for (i, x) in ["b", "d", "a", "c"].into_iter().enumerate() {
            s.insert([0, 1, 0, 2][i], x.to_string());
        }
        let all = |s: &Slots<String, 6>| s.iter().cloned().collect::<Vec<_>>();
        assert_eq!(all(&s), ["a", "b", "c", "d"]);
        assert_eq!(s.remove(1), "b");
        let mut tail = s.split_off(1);
        assert_eq!(
            (all(&s), all(&tail)),
            (vec!["a".into()], vec!["c".into(), "d".into()])
        );
        s.push("x".into());
        s.append(&mut tail);
        assert_eq!(all(&s), ["a", "x", "c", "d"]);
        assert_eq!(tail.len(), 0);
        assert_eq!(s.pop().as_deref(), Some("d"));
        assert_eq!(s.len(), 3);
    }
}
