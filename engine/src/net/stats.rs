//! Traffic counters of one listener (or of the outgoing `broker.join` connections) on one
//! core: plain `Cell`s, because a connection is served only by the core that owns it, so
//! counting a frame is an add to memory no other thread touches — no lock, no atomic on the
//! packet path. The owner (a core) keeps one [`IoStats`] per listener and reads them when an
//! operator scrapes the metrics (`node::stats`); `net` only adds to them.

use std::cell::Cell;

/// What the connections of one listener on one core did since the core started.
#[derive(Default, Debug)]
pub struct IoStats {
    /// Connections accepted (past the listener's gate and the accept callback) or joined.
    pub accepted: Cell<u64>,
    /// Connections of these that have ended (closed by either side, expired, refused later).
    pub closed: Cell<u64>,
    /// Frames cut from the input (packet / text framing: one message; raw: one read).
    pub frames_in: Cell<u64>,
    /// Bytes read from the sockets.
    pub bytes_in: Cell<u64>,
    /// Messages committed to the output buffers (one `commit`, one returned value).
    pub frames_out: Cell<u64>,
    /// Bytes written to the sockets.
    pub bytes_out: Cell<u64>,
    /// Connections closed with ENOBUFS: unsent output passed `OUT` (a peer that does not
    /// read; docs/limits.md).
    pub overflow_closes: Cell<u64>,
}

impl IoStats {
    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.accepted.get().saturating_sub(self.closed.get())
    }

    /// The figures as plain numbers (for a snapshot that leaves the core).
    pub fn read(&self) -> IoFigures {
        IoFigures {
            accepted: self.accepted.get(),
            closed: self.closed.get(),
            frames_in: self.frames_in.get(),
            bytes_in: self.bytes_in.get(),
            frames_out: self.frames_out.get(),
            bytes_out: self.bytes_out.get(),
            overflow_closes: self.overflow_closes.get(),
        }
    }
}

/// A copy of an [`IoStats`], sendable to another thread.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFigures {
    pub accepted: u64,
    pub closed: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub overflow_closes: u64,
}

impl IoFigures {
    pub fn open(&self) -> u64 {
        self.accepted.saturating_sub(self.closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_is_accepted_minus_closed() {
        let s = IoStats::default();
        IoStats::add(&s.accepted, 3);
        IoStats::add(&s.closed, 1);
        IoStats::add(&s.bytes_in, 10);
        assert_eq!(s.open(), 2);
        let f = s.read();
        assert_eq!((f.accepted, f.closed, f.bytes_in, f.open()), (3, 1, 10, 2));
    }
}
