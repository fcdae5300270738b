//! One ticket category (spec services.md §3.1, §3.4): its slots, its FIFO of waiters and its
//! members. Tickets are counted rather than stored: a slot has no identity the user can see
//! (the visible id is the request's lease id, spec §3.4).

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use super::parse::LeaseId;

#[derive(Debug, Default)]
pub(super) struct Category {
    /// Spec §3.2: |limit| slots; > 0 queues when exhausted, < 0 refuses, 0 takes nobody.
    pub limit: i64,
    /// Leases granted and not yet released or expired. May exceed |limit| after a shrink:
    /// those leases stay valid and their slots vanish when they come back (spec §3.3).
    pub held: usize,
    /// Waiting requests, oldest first: a freed slot goes to the front at once.
    pub queue: VecDeque<LeaseId>,
    /// Every request of the category, waiting or holding (the `=cat` broadcast audience).
    pub members: BTreeSet<LeaseId>,
    /// When `@cat` gave a `close_ms`.
    pub close_at: Option<Instant>,
    /// Closed by `close_ms` or a limit of 0: new requests are refused; the category is
    /// dropped once its last lease is gone.
    pub closed: bool,
}

impl Category {
    pub fn new(limit: i64) -> Category {
        Category {
            limit,
            closed: limit == 0,
            ..Category::default()
        }
    }

    pub fn slots(&self) -> usize {
        usize::try_from(self.limit.unsigned_abs()).unwrap_or(usize::MAX)
    }

    /// A slot can be granted now.
    pub fn has_free(&self) -> bool {
        !self.closed && self.held < self.slots()
    }

    /// Spec §3.1: waiting is only for positive limits.
    pub fn queues(&self) -> bool {
        self.limit > 0
    }

    /// Closed and nobody left holding or waiting: can be forgotten.
    pub fn finished(&self) -> bool {
        self.closed && self.members.is_empty()
    }
}
