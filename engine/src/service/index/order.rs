//! Score ordering of a tier (spec/services.md §2.2 "Sort order within a tier" and "Ties").
//!
//! `Score`'s `Ord` *is* the rank order: `a < b` means `a` ranks before (better than) `b`.
//! Integers come before strings, integers are descending, strings are descending bytewise.
//! A tier holds one [`TierKey`] per score of an id (several scores = several entries, §2.2
//! "Several scores per tier"); ties between equal scores are broken newest-first by a
//! per-index sequence number, which also makes every key of a tier unique.

use std::cmp::Ordering;

/// One score: the spec's "tag byte plus either int64 or string bytes" (§2.2 partitions 1..4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Score {
    Int(i64),
    Str(Box<[u8]>),
}

impl Score {
    pub fn str(s: impl AsRef<[u8]>) -> Self {
        Score::Str(s.as_ref().into())
    }

    /// Bytes the score takes in the key, checked against the configured maximum key size.
    pub fn key_len(&self) -> usize {
        match self {
            Score::Int(_) => 8,
            Score::Str(s) => s.len(),
        }
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            // §2.2: integers descending — the higher score is the better rank.
            (Score::Int(a), Score::Int(b)) => b.cmp(a),
            // §2.2: strings descending bytewise.
            (Score::Str(a), Score::Str(b)) => b.cmp(a),
            // §2.2: integers come before strings.
            (Score::Int(_), Score::Str(_)) => Ordering::Less,
            (Score::Str(_), Score::Int(_)) => Ordering::Greater,
        }
    }
}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The key of one tier entry: the score, then the insertion sequence, newer first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierKey {
    pub score: Score,
    /// Per-index insertion counter; a larger value was inserted later.
    pub seq: u64,
}

impl Ord for TierKey {
    fn cmp(&self, other: &Self) -> Ordering {
        // §2.2 "Ties": a newly inserted duplicate is placed first within its tie group.
        self.score
            .cmp(&other.score)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for TierKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_descending_before_strings_descending() {
        let mut v = vec![
            Score::str("a"),
            Score::Int(-5),
            Score::str("b"),
            Score::Int(7),
            Score::str("ab"),
            Score::Int(0),
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                Score::Int(7),
                Score::Int(0),
                Score::Int(-5),
                Score::str("b"),
                Score::str("ab"),
                Score::str("a"),
            ]
        );
    }

    #[test]
    fn ties_newest_first() {
        let old = TierKey {
            score: Score::Int(3),
            seq: 1,
        };
        let new = TierKey {
            score: Score::Int(3),
            seq: 2,
        };
        assert!(new < old);
        assert!(
            TierKey {
                score: Score::Int(4),
                seq: 0
            } < new
        );
    }
}
