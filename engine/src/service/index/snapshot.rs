//! An index's snapshot image, built on its owner core in slices ([`Build`]) so that no core
//! turn encodes more than [`SLICE_IDS`] ids: encoding a million ids at once took the core
//! longer than the 500 ms `%cpu` budget of the callback whose `set` started it (that `set`
//! lost its reply; BENCHMARKS.md "Snapshotting a big index beside a packet echo"). Between
//! slices the core serves everything else, including more mutations of the same index.
//!
//! **Why the image is still right.** The ranking keeps its ids at stable positions
//! (`Ranking::at`); a build walks the positions with a cursor, one slice per turn, and
//! remembers every id that changed (`touched`: a `set`, a `del`) or moved (a removal moves
//! the last id into the hole) since the build started. When the cursor reaches the end,
//! [`Build::finish`] appends the *current* state of each remembered id (a PUT, or a REMOVE
//! for an id that is gone) in the same turn. An id not remembered kept its state and its
//! position throughout, so the cursor encoded it exactly once, as it is now; a remembered
//! id may have been encoded earlier in an older state, but its record at the end is
//! applied after that one on load (records are whole id states, replayed in order, and
//! replaying one is idempotent: `record.rs`). So the image is the index as it is at the turn
//! of `finish`, and the log can be emptied with it: every record logged before that turn is
//! in the image, and the snapshot job reaches the sync thread after all of their appends.
//!
//! The last step costs one encode per id changed while the build ran (each of which already
//! cost a `set` or `del`), in one turn. Why slices and not a copy handed to the sync thread:
//! a copy of a million entries (their tier vectors, scores and values) is itself O(ids) on
//! the core: 233-288 ms against 357-458 ms for encoding them in one go (`index-snapshot-cost`,
//! BENCHMARKS.md), so it would shorten the stall by a third, not remove it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ranking::Ranking;
use super::record;
use super::store;

/// Ids encoded per slice (one core turn) at most. Each costs the encoding of its record and
/// CRC (0.2-0.4 µs for an id with one score and no value on this project's machine).
pub const SLICE_IDS: usize = 2048;

/// Bytes encoded per slice at most: ids with big values end a slice sooner (the CRC and the
/// copy cost by the byte: 2,048 ids of 4 KB each would be 8 MB in one turn).
pub const SLICE_BYTES: usize = 256 << 10;

/// A snapshot image being built; lives in its index until [`Build::finish`].
pub struct Build {
    buf: Vec<u8>,
    /// The next position to encode.
    cursor: usize,
    /// Records in `buf` (ids encoded, then the end's records).
    records: u64,
    /// Ids changed or moved since the build started: encoded again at the end.
    touched: HashSet<Arc<str>, ahash::RandomState>,
    /// Slices run, and when the build started: the `index snapshot built` line.
    slices: u32,
    started: Instant,
}

impl Build {
    /// Starts a build of `ranking` (nothing encoded yet) and makes it report moved ids.
    pub fn start(ranking: &mut Ranking) -> Build {
        ranking.watch_moves(true);
        let mut buf = Vec::with_capacity(store::SNAP_HEADER + ranking.ids() * 32);
        store::snapshot_header(&mut buf);
        Build {
            buf,
            cursor: 0,
            records: 0,
            touched: HashSet::default(),
            slices: 0,
            started: Instant::now(),
        }
    }

    /// An id changed by a command since the start.
    pub fn touched(&mut self, id: &Arc<str>) {
        self.touched.insert(id.clone());
    }

    /// Encodes up to `max` ids from the cursor, stopping after the record that takes the
    /// slice past `max_bytes`; true once every position is encoded.
    pub fn step(&mut self, ranking: &mut Ranking, max: usize, max_bytes: usize) -> bool {
        self.slices += 1;
        for id in ranking.take_moved() {
            self.touched(&id);
        }
        let end = ranking.ids().min(self.cursor.saturating_add(max));
        let started = self.buf.len();
        while self.cursor < end && self.buf.len() - started < max_bytes {
            if let Some((id, e)) = ranking.at(self.cursor) {
                record::encode_put(&mut self.buf, id, e);
                self.records += 1;
            }
            self.cursor += 1;
        }
        self.cursor >= ranking.ids()
    }

    /// Encodes what is left, then the current state of every id changed or moved since the
    /// start, and stops the ranking reporting moves: the image of `ranking` as it is now.
    pub fn finish(mut self, ranking: &mut Ranking) -> Vec<u8> {
        self.step(ranking, usize::MAX, usize::MAX);
        for id in ranking.take_moved() {
            self.touched(&id);
        }
        ranking.watch_moves(false);
        for id in &self.touched {
            match ranking.entry(id) {
                Some(e) => record::encode_put(&mut self.buf, id, e),
                None => record::encode_remove(&mut self.buf, id),
            }
            self.records += 1;
        }
        store::finish_header(&mut self.buf, ranking.next_seq(), self.records);
        self.buf
    }

    /// How far the cursor is (positions encoded).
    pub fn encoded(&self) -> usize {
        self.cursor
    }

    pub fn slices(&self) -> u32 {
        self.slices
    }

    /// Time since the build started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
}
