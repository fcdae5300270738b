//! Connection ids. A connection's id carries the core that owns it in its low byte, so any
//! core can route an operation on an id (commit, close) to the owner without a lookup
//! table; listener ids carry the tag [`LISTENER_TAG`] there instead (a listener belongs to
//! every core). Scripts see both as plain integers (`socket[0]`); the engine passes
//! connection ids as [`ConnId`], so nobody masks bits by hand.

use std::fmt;

/// How many low bits of an id name the owning core.
const CORE_BITS: u32 = 8;
const CORE_MASK: u64 = (1 << CORE_BITS) - 1;
/// The low byte of a listener id: listeners belong to every core, not one.
const LISTENER_TAG: u64 = 0xFF;
/// The most cores a process may run: every other low-byte value names a core.
pub const MAX_CORES: usize = LISTENER_TAG as usize;

/// The id of a connection (accepted or joined), which knows its owner core.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The `seq`-th connection of core `core`.
    pub fn new(core: usize, seq: u64) -> ConnId {
        debug_assert!(core < MAX_CORES, "core {core} does not fit in an id");
        ConnId((seq << CORE_BITS) | core as u64)
    }

    /// The id a script holds, if it names a connection (not a listener).
    pub fn from_raw(raw: u64) -> Option<ConnId> {
        (raw & CORE_MASK != LISTENER_TAG).then_some(ConnId(raw))
    }

    /// The integer scripts see.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The core that reads, writes and closes this connection.
    pub fn owner(self) -> usize {
        (self.0 & CORE_MASK) as usize
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of the `seq`-th listener of the process (seq starts at 1).
pub fn listener_id(seq: u64) -> u64 {
    (seq << CORE_BITS) | LISTENER_TAG
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_id_knows_its_core() {
        let id = ConnId::new(3, 42);
        assert_eq!(id.owner(), 3);
        assert_eq!(ConnId::from_raw(id.raw()), Some(id));
        assert_eq!(ConnId::new(0, 1).raw(), 256);
    }

    #[test]
    fn listener_ids_are_not_connection_ids() {
        let l = listener_id(1);
        assert_eq!(ConnId::from_raw(l), None);
        assert_ne!(listener_id(1), listener_id(2));
    }
}
