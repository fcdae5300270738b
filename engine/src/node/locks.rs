//! The ordered-execution locks of `stage.signal(">L.cb", v)` / `">>L.ms"` / `"<L.*"`
//! (spec/stage.md §10.5): per lock, one holder and a FIFO of waiting requests. A grant hands
//! back the waiting request's payload (the message the prelude then delivers to its stage);
//! a holder that neither releases nor extends within its lease is passed over.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a granted lock is held before it is force-released, unless extended.
pub const LEASE: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct LockTable {
    locks: HashMap<String, Lock>,
    generation: u64,
}

struct Lock {
    generation: u64,
    until: Instant,
    waiting: VecDeque<Vec<u8>>,
}

/// A granted request: deliver `payload`, and check the lease of `generation` after `lease`.
pub struct Grant {
    pub payload: Vec<u8>,
    pub generation: u64,
    pub lease: Duration,
}

impl LockTable {
    /// Queues a request; grants it at once if the lock is free.
    pub fn acquire(&mut self, key: &str, payload: Vec<u8>) -> Option<Grant> {
        if let Some(lock) = self.locks.get_mut(key) {
            lock.waiting.push_back(payload);
            return None;
        }
        self.generation += 1;
        let generation = self.generation;
        self.locks.insert(
            key.to_string(),
            Lock {
                generation,
                until: Instant::now() + LEASE,
                waiting: VecDeque::new(),
            },
        );
        Some(Grant {
            payload,
            generation,
            lease: LEASE,
        })
    }

    /// Extends the current holder's lease; returns the generation and time left to re-check.
    pub fn extend(&mut self, key: &str, by: Duration) -> Option<(u64, Duration)> {
        let lock = self.locks.get_mut(key)?;
        lock.until += by;
        Some((
            lock.generation,
            lock.until.saturating_duration_since(Instant::now()),
        ))
    }

    /// Releases the lock and grants the next waiter, if any.
    pub fn release(&mut self, key: &str) -> Option<Grant> {
        let mut lock = self.locks.remove(key)?;
        let payload = lock.waiting.pop_front()?;
        self.generation += 1;
        lock.generation = self.generation;
        lock.until = Instant::now() + LEASE;
        let generation = lock.generation;
        self.locks.insert(key.to_string(), lock);
        Some(Grant {
            payload,
            generation,
            lease: LEASE,
        })
    }

    /// The lease check: if `generation` still holds the lock and its lease ran out, the lock
    /// passes on (the grant is returned); if it was extended, `Err(left)` says when to look
    /// again; `Ok(None)` when there is nothing to do.
    pub fn check(&mut self, key: &str, generation: u64) -> Result<Option<Grant>, Duration> {
        let Some(lock) = self.locks.get(key) else {
            return Ok(None);
        };
        if lock.generation != generation {
            return Ok(None);
        }
        let left = lock.until.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            return Err(left);
        }
        tracing::debug!(lock = key, "lock lease ran out; passing it on");
        Ok(self.release(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_in_order_and_passes_on_release() {
        let mut t = LockTable::default();
        assert!(t.acquire("L", b"a".to_vec()).is_some());
        assert!(t.acquire("L", b"b".to_vec()).is_none());
        assert!(t.acquire("L", b"c".to_vec()).is_none());
        assert_eq!(t.release("L").unwrap().payload, b"b");
        assert_eq!(t.release("L").unwrap().payload, b"c");
        assert!(t.release("L").is_none());
        assert!(t.acquire("L", b"d".to_vec()).is_some());
    }

    #[test]
    fn an_expired_lease_passes_the_lock_on_and_extension_defers_it() {
        let mut t = LockTable::default();
        let g = t.acquire("L", b"a".to_vec()).unwrap();
        t.acquire("L", b"b".to_vec());
        assert!(t.check("L", g.generation).is_err());
        t.extend("L", Duration::from_millis(50)).unwrap();
        std::thread::sleep(LEASE + Duration::from_millis(60));
        let next = t.check("L", g.generation).unwrap().unwrap();
        assert_eq!(next.payload, b"b");
        assert!(t.check("L", g.generation).unwrap().is_none());
    }
}
