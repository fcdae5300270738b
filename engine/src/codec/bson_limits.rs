//! The limits every BSON decoder of the engine enforces, in one place: the Rust document
//! reader (`codec::document`), the BSON <-> Lua codec over the C API (`script::bson`) and the
//! LuaJIT FFI decoder of the packet path (`engine/lua/prelude/fastpath.lua`, which receives
//! the same numbers from `script::fastpath`). A frame's size is already bounded by `IN`; these
//! bound what a frame of that size can make a decoder do: recursion (depth) and the number of
//! values it builds (elements), so a hostile document costs its connection, never the stack or
//! a burst of allocation out of proportion with what a script expects.
//!
//! A client document over a limit is bad BSON: its connection is closed with `EBADMSG`. Each
//! hit is counted here (process-wide, per limit) and logged at most once per second, with the
//! number of hits since the last line, so a flood of such documents cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Deepest nesting of documents and arrays, counting the top-level document as level 1.
pub const MAX_DEPTH: usize = 64;

/// Most elements in one document, counted over every level (the top-level document's
/// elements plus those of every embedded document and array).
pub const MAX_ELEMENTS: usize = 1 << 20;

/// Which limit a document went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Depth,
    Elements,
}

static DEPTH_HITS: AtomicU64 = AtomicU64::new(0);
static ELEMENT_HITS: AtomicU64 = AtomicU64::new(0);
/// The second (since the Unix epoch) of the last log line, and the hits already reported.
static LAST_LOG_SECOND: AtomicU64 = AtomicU64::new(0);
static REPORTED: AtomicU64 = AtomicU64::new(0);

/// Counts one document refused for going over `limit` and logs it, at most once per second.
pub fn hit(limit: Limit) {
    match limit {
        Limit::Depth => DEPTH_HITS.fetch_add(1, Ordering::Relaxed),
        Limit::Elements => ELEMENT_HITS.fetch_add(1, Ordering::Relaxed),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_LOG_SECOND.load(Ordering::Relaxed);
    // One thread wins the second; the others stay silent until the next one.
    if now != last
        && LAST_LOG_SECOND
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let (depth, elements) = counts();
        let total = depth + elements;
        let since = total - REPORTED.swap(total, Ordering::Relaxed).min(total);
        tracing::warn!(
            depth_hits = depth,
            element_hits = elements,
            "{since} bson document(s) refused since the last report: nested deeper than \
             {MAX_DEPTH} levels or more than {MAX_ELEMENTS} elements (last: {limit:?}); \
             each closes its connection with EBADMSG"
        );
    }
}

/// Documents refused so far in this process: (too deep, too many elements).
pub fn counts() -> (u64, u64) {
    (
        DEPTH_HITS.load(Ordering::Relaxed),
        ELEMENT_HITS.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_are_counted_per_limit() {
        let (d0, e0) = counts();
        hit(Limit::Depth);
        hit(Limit::Elements);
        hit(Limit::Elements);
        let (d1, e1) = counts();
        // Other tests may count too (the counters are process-wide): at least ours.
        assert!(d1 > d0 && e1 >= e0 + 2, "{d0},{e0} -> {d1},{e1}");
    }
}
