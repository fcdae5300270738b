//! The command and reply model of `index.so` (spec/services.md §2.3), as plain Rust values.
//!
//! The router decodes a message's BSON payload into a [`Request`] (using [`parse_spec`] for
//! the `CMD?INDEX[/TIER]` text and [`batch_order`] for the batch form) and encodes the
//! [`Reply`] back; this module knows nothing about Lua or BSON, so user values `v` travel as
//! opaque encoded bytes.

use std::sync::Arc;

use bytes::Bytes;

use super::order::Score;

/// Number of tiers an id can hold scores in (§2.2 "Tier semantics").
pub const TIERS: usize = 4;

/// The command letter or word of a spec (§2.3: `s`/`set`, `d`/`del`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Set,
    Del,
    Get,
    Range,
    ForEach,
    Total,
}

/// The `/TIER` part of a spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierSel {
    /// No `/TIER` at all: tier 1, except for `total`, which then counts ids.
    Default,
    /// `/1` .. `/4`.
    One(u8),
    /// `/` or `/0` (open question 10: `/0` means "all tiers" like the original's `del`).
    All,
}

impl TierSel {
    /// The single tier (0-based) a command works on, if it names or defaults to one.
    pub fn single(self) -> Option<usize> {
        match self {
            TierSel::Default => Some(0),
            TierSel::One(t) => Some(t as usize - 1),
            TierSel::All => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("index spec {0:?}: unknown command")]
    Command(String),
    #[error("index spec {0:?}: bad tier (expected 1..4, 0 or empty)")]
    Tier(String),
    #[error("index spec {0:?}: bad index name")]
    Name(String),
}

/// Parses `CMD?INDEX[/TIER]` (or `CMD:INDEX[/TIER]`).
///
/// The last `/` separates the tier (§2.3) when what follows it is empty or a number; otherwise
/// the whole text is the name (`sub/dir/idx` is index `sub/dir/idx`, tier 1).
pub fn parse_spec(spec: &str) -> Result<(Kind, String, TierSel), SpecError> {
    let cut = spec
        .find(['?', ':'])
        .ok_or_else(|| SpecError::Command(spec.into()))?;
    let kind = match &spec[..cut] {
        "s" | "set" => Kind::Set,
        "d" | "del" => Kind::Del,
        "g" | "get" => Kind::Get,
        "r" | "range" => Kind::Range,
        "f" | "forEach" => Kind::ForEach,
        "t" | "total" => Kind::Total,
        _ => return Err(SpecError::Command(spec.into())),
    };
    let rest = &spec[cut + 1..];
    let (name, tier) = match rest.rfind('/') {
        Some(p) if rest[p + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            let t = &rest[p + 1..];
            let tier = match t {
                "" | "0" => TierSel::All,
                _ => match t.parse::<u8>() {
                    Ok(n @ 1..=4) => TierSel::One(n),
                    _ => return Err(SpecError::Tier(spec.into())),
                },
            };
            (&rest[..p], tier)
        }
        _ => (rest, TierSel::Default),
    };
    if !valid_name(name) {
        return Err(SpecError::Name(spec.into()));
    }
    Ok((kind, name.to_string(), tier))
}

/// Index names become file paths under the configured prefix: refuse anything that could
/// leave it (absolute, `..`, empty components) or that the filesystem cannot hold.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\0')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Splits a batch key `#<seq>.<spec>` into its sequence number and spec (§2.3 "Batch").
pub fn parse_batch_key(key: &str) -> (Option<u64>, &str) {
    if let Some(rest) = key.strip_prefix('#') {
        if let Some(dot) = rest.find('.') {
            if let Ok(n) = rest[..dot].parse::<u64>() {
                return (Some(n), &rest[dot + 1..]);
            }
        }
    }
    (None, key)
}

/// The execution order of a batch's keys (given in document order): numbered entries in
/// ascending sequence, then unnumbered ones in document order (§2.3 "Batch").
pub fn batch_order<S: AsRef<str>>(keys: &[S]) -> Vec<usize> {
    let mut numbered: Vec<(u64, usize)> = Vec::new();
    let mut plain = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match parse_batch_key(k.as_ref()).0 {
            Some(n) => numbered.push((n, i)),
            None => plain.push(i),
        }
    }
    // Stable, so equal numbers keep document order.
    numbered.sort_by_key(|&(n, _)| n);
    numbered.into_iter().map(|(_, i)| i).chain(plain).collect()
}

/// One id of a `set` payload: `{ ID = { i = ..., I = ..., v = ... } }`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SetItem {
    pub id: String,
    /// `i`: the scores of the selected tier (a single score is a one-element list).
    pub scores: Option<Vec<Score>>,
    /// `I`: scores per tier, `[0]` = tier 1; `None` leaves that tier alone.
    pub tiers: [Option<Vec<Score>>; TIERS],
    /// `v`: replaces the stored value when present.
    pub v: Option<Bytes>,
}

/// Where a `range` starts (§2.3 "range details").
#[derive(Clone, Debug, PartialEq)]
pub enum RangeFrom {
    /// `{score, count}`: the first entry whose score ranks at or below `score`.
    Score(Score),
    /// `{ID, delta, count}`: `delta` ranks above the id's first score, clamped at rank 1.
    Id { id: String, delta: i64 },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Set(Vec<SetItem>),
    Del(Vec<String>),
    Get(Vec<String>),
    Range { from: RangeFrom, count: i64 },
    ForEach { start: i64, count: i64 },
    Total,
}

impl Command {
    pub fn kind(&self) -> Kind {
        match self {
            Command::Set(_) => Kind::Set,
            Command::Del(_) => Kind::Del,
            Command::Get(_) => Kind::Get,
            Command::Range { .. } => Kind::Range,
            Command::ForEach { .. } => Kind::ForEach,
            Command::Total => Kind::Total,
        }
    }
}

/// One command against one index.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub index: String,
    pub tier: TierSel,
    pub command: Command,
}

/// The `d` of a set result (§2.3 "set details").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetResult {
    /// New 1-based rank (the best of the id's scores) in the selected tier.
    Rank(u64),
    /// `0`: the selected tier's scores were unchanged.
    Unchanged,
    /// `-1`: the selected tier was not touched (or holds no score of the id now).
    Untouched,
    /// `undefined`: the item was rejected (`i` with tier = all, key too long, ...).
    Error,
}

impl SetResult {
    /// The wire value of `d`; `None` = undefined.
    pub fn d(self) -> Option<i64> {
        match self {
            SetResult::Rank(r) => Some(r as i64),
            SetResult::Unchanged => Some(0),
            SetResult::Untouched => Some(-1),
            SetResult::Error => None,
        }
    }
}

/// A get result (§2.3 "get details").
#[derive(Clone, Debug, PartialEq)]
pub enum GetResult {
    /// Unknown id: an empty table.
    Unknown,
    /// With a tier: `I = [ {i = score, d = rank}, ... ]`, best rank first.
    Tier {
        v: Option<Bytes>,
        scores: Vec<(Score, u64)>,
    },
    /// With tier = all: `I = [ [scores tier1], .., [scores tier4] ]`, `None` = empty tier.
    All {
        v: Option<Bytes>,
        tiers: [Option<Vec<Score>>; TIERS],
    },
}

/// One entry of a range / forEach result: `"#<d>" = {i, k, v, d}`.
#[derive(Clone, Debug, PartialEq)]
pub struct RankedEntry {
    pub d: u64,
    pub i: Score,
    pub k: Arc<str>,
    pub v: Option<Bytes>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `null`: the index cannot be opened or created, or the command is invalid for the tier.
    Null,
    Set(Vec<(String, SetResult)>),
    Del(Vec<(String, bool)>),
    Get(Vec<(String, GetResult)>),
    /// range and forEach.
    Entries(Vec<RankedEntry>),
    Total(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("s?idx").unwrap(),
            (Kind::Set, "idx".into(), TierSel::Default)
        );
        assert_eq!(
            parse_spec("get:idx/2").unwrap(),
            (Kind::Get, "idx".into(), TierSel::One(2))
        );
        assert_eq!(
            parse_spec("del?a/b/").unwrap(),
            (Kind::Del, "a/b".into(), TierSel::All)
        );
        assert_eq!(
            parse_spec("t?a/b/0").unwrap(),
            (Kind::Total, "a/b".into(), TierSel::All)
        );
        assert_eq!(
            parse_spec("f?a/b").unwrap(),
            (Kind::ForEach, "a/b".into(), TierSel::Default)
        );
        assert!(matches!(parse_spec("x?idx"), Err(SpecError::Command(_))));
        assert!(matches!(parse_spec("set?idx/5"), Err(SpecError::Tier(_))));
        assert!(matches!(parse_spec("set?../x/1"), Err(SpecError::Name(_))));
        assert!(matches!(parse_spec("set?/abs"), Err(SpecError::Name(_))));
        assert!(matches!(parse_spec("set?/1"), Err(SpecError::Name(_))));
    }

    #[test]
    fn batch_keys() {
        assert_eq!(parse_batch_key("#12.set:idx/1"), (Some(12), "set:idx/1"));
        assert_eq!(parse_batch_key("get:idx"), (None, "get:idx"));
        let keys = ["get:a", "#2.set:a", "#1.del:a", "total:a", "#10.get:a"];
        assert_eq!(batch_order(&keys), vec![2, 1, 4, 0, 3]);
    }
}
