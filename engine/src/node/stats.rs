//! A core's counters for the admin endpoint (`/metrics`, `/status`): what its connections,
//! callbacks and service shards did, kept in plain `Cell`s on the core itself — counting is
//! an add to memory only this core's thread touches, never a lock or a shared atomic on the
//! packet path. When an operator scrapes, the admin thread asks every core through its inbox
//! ([`super::CoreMsg::Snapshot`]) and the core answers with a [`CoreSnapshot`]: plain data
//! that leaves the core, so the gathering happens off the packet path.
//!
//! Connection traffic is counted by `net` into the [`IoStats`] the core hands each
//! connection (one per listener and core, `ConnEvents::stats`); the callback histogram is
//! fed by the core around every call into its script host; the script host reports its own
//! figures (Lua memory, errors, messages by policy, loaded scripts) as a [`HostStats`].

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use crate::net::stats::{IoFigures, IoStats};

/// Upper bounds (seconds) of the callback duration histogram's buckets. Chosen for Lua
/// callbacks: most take microseconds, a slow one milliseconds, a runaway one is stopped by
/// the CPU budget (`%cpu`, 500 ms by default); `+Inf` is implied.
pub const CALLBACK_BUCKETS: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1, 0.5, 2.0,
];

/// The kinds of script callback a core times (the `kind` label of the histogram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callback {
    Accept,
    Receive,
    Close,
    Connect,
    Datagram,
    /// A posted message: a stage message, timer, job, thread result, service output.
    Message,
    Idle,
}

impl Callback {
    pub const ALL: [Callback; 7] = [
        Callback::Accept,
        Callback::Receive,
        Callback::Close,
        Callback::Connect,
        Callback::Datagram,
        Callback::Message,
        Callback::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Callback::Accept => "accept",
            Callback::Receive => "receive",
            Callback::Close => "close",
            Callback::Connect => "connect",
            Callback::Datagram => "datagram",
            Callback::Message => "message",
            Callback::Idle => "idle",
        }
    }
}

/// A histogram with the fixed [`CALLBACK_BUCKETS`] (per-bucket counts, not cumulative).
#[derive(Default)]
pub struct Histogram {
    counts: [Cell<u64>; CALLBACK_BUCKETS.len() + 1],
    sum_ns: Cell<u64>,
}

impl Histogram {
    pub fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = CALLBACK_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(CALLBACK_BUCKETS.len());
        self.counts[i].set(self.counts[i].get() + 1);
        self.sum_ns
            .set(self.sum_ns.get().wrapping_add(took.as_nanos() as u64));
    }

    pub fn read(&self) -> HistogramFigures {
        HistogramFigures {
            counts: self.counts.iter().map(Cell::get).collect(),
            sum_seconds: self.sum_ns.get() as f64 / 1e9,
        }
    }
}

/// A copy of a [`Histogram`]: `counts[i]` callbacks took at most `CALLBACK_BUCKETS[i]` (and
/// more than the bucket before); the last entry counts the ones above every bound.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramFigures {
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramFigures {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another core's figures (same buckets).
    pub fn merge(&mut self, other: &HistogramFigures) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
    }
}

/// The service shards' counters of one core. The shards themselves are state machines that
/// do no I/O; the core (and the script glue that runs their commands on it) counts here.
#[derive(Default)]
pub struct ServiceStats {
    /// index.so requests handled by this core's shards (one per command of a batch).
    pub index_ops: Cell<u64>,
    /// `=ticket` grants sent.
    pub ticket_grants: Cell<u64>,
    /// `=ticket` leases that expired and queued requests cancelled (`cancel` entries).
    pub ticket_expiries: Cell<u64>,
    /// `=ticket` requests refused (unknown category, category or queue full).
    pub ticket_refusals: Cell<u64>,
    /// `=route` willingness queries sent to subscribers.
    pub route_offers: Cell<u64>,
    /// `=route` claims received (`route:=`).
    pub route_claims: Cell<u64>,
    /// `=route` messages nobody took (sent to the publisher's fail callback).
    pub route_failures: Cell<u64>,
    /// curl.so requests sent from this core, by result (`ok`, or curl's result code).
    pub http: RefCell<BTreeMap<String, u64>>,
}

impl ServiceStats {
    pub fn inc(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }

    pub fn http_result(&self, result: &str) {
        *self
            .http
            .borrow_mut()
            .entry(result.to_string())
            .or_default() += 1;
    }
}

/// Every counter of one core.
#[derive(Default)]
pub struct CoreStats {
    /// Per listener (by id, with its URL for the label), kept after the listener closes so
    /// its counters never go backwards.
    listeners: RefCell<BTreeMap<u64, (String, Rc<IoStats>)>>,
    /// Outgoing connections (`broker.join`).
    pub joined: Rc<IoStats>,
    callbacks: [Histogram; Callback::ALL.len()],
    pub services: ServiceStats,
}

impl CoreStats {
    /// The counters of listener `id` on this core (created on its first connection).
    pub fn listener(&self, id: u64, url: impl FnOnce() -> String) -> Rc<IoStats> {
        self.listeners
            .borrow_mut()
            .entry(id)
            .or_insert_with(|| (url(), Rc::default()))
            .1
            .clone()
    }

    pub fn callback(&self, kind: Callback, took: Duration) {
        let i = Callback::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.callbacks[i].record(took);
    }

    pub fn listener_figures(&self) -> Vec<ListenerFigures> {
        self.listeners
            .borrow()
            .iter()
            .map(|(id, (url, io))| ListenerFigures {
                id: *id,
                url: url.clone(),
                io: io.read(),
            })
            .collect()
    }

    pub fn callback_figures(&self) -> Vec<(&'static str, HistogramFigures)> {
        Callback::ALL
            .iter()
            .zip(&self.callbacks)
            .map(|(k, h)| (k.name(), h.read()))
            .collect()
    }

    pub fn service_figures(&self) -> ServiceFigures {
        let s = &self.services;
        ServiceFigures {
            index_ops: s.index_ops.get(),
            ticket_grants: s.ticket_grants.get(),
            ticket_expiries: s.ticket_expiries.get(),
            ticket_refusals: s.ticket_refusals.get(),
            ticket_waiting: 0,
            ticket_held: 0,
            route_offers: s.route_offers.get(),
            route_claims: s.route_claims.get(),
            route_failures: s.route_failures.get(),
            route_pending: 0,
            http: s
                .http
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }
}

/// One listener's traffic on one core.
#[derive(Clone, Debug)]
pub struct ListenerFigures {
    pub id: u64,
    pub url: String,
    pub io: IoFigures,
}

/// The service counters of one core, plus the gauges read from its shards at snapshot time.
#[derive(Clone, Debug, Default)]
pub struct ServiceFigures {
    pub index_ops: u64,
    pub ticket_grants: u64,
    pub ticket_expiries: u64,
    pub ticket_refusals: u64,
    /// Requests queued in this core's `=ticket` shards now.
    pub ticket_waiting: u64,
    /// Leases held in this core's `=ticket` shards now.
    pub ticket_held: u64,
    pub route_offers: u64,
    pub route_claims: u64,
    pub route_failures: u64,
    /// `=route` messages waiting for a claim on this core now.
    pub route_pending: u64,
    pub http: Vec<(String, u64)>,
}

/// A script file a core has loaded (`stage.load`, main scripts): the version it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptVersion {
    pub path: String,
    /// Modification time, ns since the epoch (0 for scripts built into the binary).
    pub mtime_ns: i64,
    pub size: u64,
    /// FNV-1a 64 of the source the core compiled.
    pub hash: u64,
}

/// What the script host reports of itself (`ScriptHost::stats`).
#[derive(Clone, Debug, Default)]
pub struct HostStats {
    /// Bytes held by the core's Lua state.
    pub lua_memory: u64,
    /// Script errors caught and logged (every one, also those the log folds into "the same
    /// error N more times").
    pub lua_errors: u64,
    /// Messages handed to at least one receiver, by policy (`one`, `all`, `node`, `remote`).
    pub routed: Vec<(String, u64)>,
    /// Messages that found no receiver, by policy.
    pub unrouted: Vec<(String, u64)>,
    /// The scripts this core has loaded and serves now.
    pub scripts: Vec<ScriptVersion>,
}

/// One core's answer to a scrape.
#[derive(Clone, Debug, Default)]
pub struct CoreSnapshot {
    pub core: usize,
    /// Connections this core owns now.
    pub connections: usize,
    pub listeners: Vec<ListenerFigures>,
    pub joined: IoFigures,
    pub callbacks: Vec<(&'static str, HistogramFigures)>,
    pub services: ServiceFigures,
    pub host: HostStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_lands_in_the_first_bucket_that_holds_it() {
        let h = Histogram::default();
        h.record(Duration::from_micros(5)); // <= 10 us
        h.record(Duration::from_micros(10)); // == 10 us: same bucket (le)
        h.record(Duration::from_micros(11)); // <= 25 us
        h.record(Duration::from_secs(3)); // above every bound
        let f = h.read();
        assert_eq!(f.counts[0], 2);
        assert_eq!(f.counts[1], 1);
        assert_eq!(f.counts[CALLBACK_BUCKETS.len()], 1);
        assert_eq!(f.count(), 4);
        assert!((f.sum_seconds - 3.000_026).abs() < 1e-9);
        let mut total = f.clone();
        total.merge(&f);
        assert_eq!(total.count(), 8);
    }

    #[test]
    fn a_listener_keeps_one_set_of_counters() {
        let stats = CoreStats::default();
        let a = stats.listener(7, || "tcp://x".into());
        IoStats::add(&a.frames_in, 2);
        let b = stats.listener(7, || unreachable!());
        IoStats::add(&b.frames_in, 1);
        let figures = stats.listener_figures();
        assert_eq!(figures.len(), 1);
        assert_eq!(
            (figures[0].url.as_str(), figures[0].io.frames_in),
            ("tcp://x", 3)
        );
    }
}
