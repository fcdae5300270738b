//! The front door of a listener: how many connections it holds at once (`maxconn`), how many
//! of them one peer address may hold (`perip`), and how long a started frame may take to
//! arrive (`deadline`). One [`Gate`] per listener is shared by the cores of the process; it
//! is touched when a connection is accepted and when it ends, never per frame or packet. An
//! admitted connection carries a [`Ticket`] whose drop gives its places back.
//!
//! Every refusal and every frame deadline is counted on the gate and logged at most once per
//! second per listener and limit ([`RateLog`]), with the count since the last line.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ratelog::RateLog;

/// The default `deadline`: a started frame must be complete within 10 s.
pub const DEFAULT_DEADLINE_MS: u64 = 10_000;

/// Shards of the per-address table: cores accepting at once rarely wait on each other.
const SHARDS: usize = 16;

/// A listener's connection limits, from its URL (`maxconn=N&perip=M&deadline=MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections of the listener in this process; `None` = no cap.
    pub maxconn: Option<u32>,
    /// Open connections per peer IP address in this process; `None` = no cap.
    pub perip: Option<u32>,
    /// Msec a frame whose first byte has arrived has to be complete; 0 = no deadline.
    pub deadline_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            maxconn: None,
            perip: None,
            deadline_ms: DEFAULT_DEADLINE_MS,
        }
    }
}

impl Limits {
    /// The frame deadline as connections use it; `None` when off.
    pub fn deadline(&self) -> Option<Duration> {
        (self.deadline_ms > 0).then(|| Duration::from_millis(self.deadline_ms))
    }
}

/// Which cap turned a new connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    MaxConn,
    PerIp,
}

/// What one listener counts (since it was opened, in this process).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub open: u32,
    pub refused_maxconn: u64,
    pub refused_perip: u64,
    pub timed_out: u64,
    pub accept_errors: u64,
}

pub struct Gate {
    pub listener: u64,
    pub limits: Limits,
    open: AtomicU32,
    /// Open connections per address, only when `perip` is set; an address whose count
    /// drops to 0 is removed, so the table holds only addresses with open connections.
    per_ip: Vec<Mutex<HashMap<IpAddr, u32>>>,
    hasher: std::collections::hash_map::RandomState,
    refused_maxconn: AtomicU64,
    refused_perip: AtomicU64,
    timed_out: AtomicU64,
    accept_errors: AtomicU64,
    log_maxconn: RateLog,
    log_perip: RateLog,
    log_timed_out: RateLog,
    log_accept: RateLog,
}

impl Gate {
    pub fn new(listener: u64, limits: Limits) -> Arc<Gate> {
        let shards = if limits.perip.is_some() { SHARDS } else { 0 };
        Arc::new(Gate {
            listener,
            limits,
            open: AtomicU32::new(0),
            per_ip: (0..shards).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            refused_maxconn: AtomicU64::new(0),
            refused_perip: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            log_maxconn: RateLog::default(),
            log_perip: RateLog::default(),
            log_timed_out: RateLog::default(),
            log_accept: RateLog::default(),
        })
    }

    /// Takes a place for a new connection from `peer` (`None` when its address is unknown:
    /// it then counts against `maxconn` only), or counts and logs the refusal.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Ticket, Refused> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                match self.limits.maxconn {
                    Some(max) if n >= max => None,
                    _ => Some(n + 1),
                }
            });
        if taken.is_err() {
            self.refused(Refused::MaxConn);
            return Err(Refused::MaxConn);
        }
        let mut ticket = Ticket {
            gate: self.clone(),
            peer: None,
        };
        if let (Some(max), Some(ip)) = (self.limits.perip, peer) {
            let mut shard = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
            let count = shard.entry(ip).or_insert(0);
            if *count >= max {
                drop(shard);
                // The ticket gives back the `maxconn` place taken above.
                drop(ticket);
                self.refused(Refused::PerIp);
                return Err(Refused::PerIp);
            }
            *count += 1;
            ticket.peer = Some(ip);
        }
        Ok(ticket)
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.per_ip[self.hasher.hash_one(ip) as usize % self.per_ip.len()]
    }

    fn refused(&self, why: Refused) {
        let (counter, log, what) = match why {
            Refused::MaxConn => (
                &self.refused_maxconn,
                &self.log_maxconn,
                format!("maxconn={}", self.limits.maxconn.unwrap_or(0)),
            ),
            Refused::PerIp => (
                &self.refused_perip,
                &self.log_perip,
                format!("perip={}", self.limits.perip.unwrap_or(0)),
            ),
        };
        let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(n) = log.hit() {
            tracing::warn!(
                listener = self.listener,
                "{n} new connection(s) closed at once: over {what} ({total} since the listener opened)"
            );
        }
    }

    /// A connection of this listener was closed because a started frame missed `deadline`.
    pub fn frame_timed_out(&self) {
        let total = self.timed_out.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(n) = self.log_timed_out.hit() {
            tracing::warn!(
                listener = self.listener,
                "{n} connection(s) closed with ETIMEDOUT: a started frame was not complete within deadline={} ms ({total} since the listener opened)",
                self.limits.deadline_ms
            );
        }
    }

    /// `accept` failed (out of descriptors, most often); logged here at most once a second.
    pub fn accept_failed(&self, err: &std::io::Error, backoff: Duration) {
        let total = self.accept_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(n) = self.log_accept.hit() {
            tracing::warn!(
                listener = self.listener,
                "accept failed {n} time(s): {err}; retrying in {} ms ({total} since the listener opened)",
                backoff.as_millis()
            );
        }
    }

    pub fn counters(&self) -> Counters {
        Counters {
            open: self.open.load(Ordering::Relaxed),
            refused_maxconn: self.refused_maxconn.load(Ordering::Relaxed),
            refused_perip: self.refused_perip.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }
}

/// A connection's places at its listener's gate, given back when it is dropped.
pub struct Ticket {
    gate: Arc<Gate>,
    peer: Option<IpAddr>,
}

impl Ticket {
    pub fn gate(&self) -> &Gate {
        &self.gate
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(ip) = self.peer {
            let mut shard = self
                .gate
                .shard(ip)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(count) = shard.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    shard.remove(&ip);
                }
            }
        }
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn perip_caps_one_address_and_gives_places_back() {
        let gate = Gate::new(
            1,
            Limits {
                perip: Some(2),
                ..Limits::default()
            },
        );
        let a = gate.admit(ip(1)).unwrap();
        let _b = gate.admit(ip(1)).unwrap();
        assert_eq!(gate.admit(ip(1)).err(), Some(Refused::PerIp));
        // Another address is not affected.
        let _c = gate.admit(ip(2)).unwrap();
        drop(a);
        let _d = gate.admit(ip(1)).unwrap();
        let counters = gate.counters();
        assert_eq!((counters.open, counters.refused_perip), (3, 1));
    }

    #[test]
    fn maxconn_caps_the_listener_and_a_refusal_leaves_no_place_taken() {
        let gate = Gate::new(
            1,
            Limits {
                maxconn: Some(2),
                perip: Some(1),
                ..Limits::default()
            },
        );
        let a = gate.admit(ip(1)).unwrap();
        // Refused by perip: the maxconn place it took is given back.
        assert_eq!(gate.admit(ip(1)).err(), Some(Refused::PerIp));
        let _b = gate.admit(ip(2)).unwrap();
        assert_eq!(gate.admit(ip(3)).err(), Some(Refused::MaxConn));
        drop(a);
        let _c = gate.admit(ip(3)).unwrap();
        let counters = gate.counters();
        assert_eq!(
            (
                counters.open,
                counters.refused_maxconn,
                counters.refused_perip
            ),
            (2, 1, 1)
        );
        assert!(gate.per_ip.iter().all(|s| s.lock().unwrap().len() <= 2));
    }
}
