//! Measurement: what bots record (round trips, messages, errors, disconnects) and how it is
//! aggregated. Each worker thread owns one `Shard` behind a mutex that only it and the
//! once-per-second reporter touch, so recording stays an uncontended lock + histogram add.
//! Latencies are kept in HDR histograms in microseconds (3 significant digits), so
//! percentiles stay exact enough at any rate without storing samples.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Error kinds, reported by name. Each error is counted once, whatever it causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No reply within `--timeout` (the bot is closed).
    Timeout,
    /// Bad frame or undecodable BSON from the server.
    Protocol,
    /// The server closed or reset the connection while the bot was running.
    Disconnect,
    /// A write or read failed for another reason.
    Io,
    /// A Lua scenario raised an error (or misused the bot API).
    Script,
    /// The connection could not be established (or its login was refused).
    Connect,
    /// The server answered a request with an error (lotus: `overloaded`, `handler_error`...).
    Server,
    /// A channel delivery skipped ids (lotus rooms): messages the bot never got.
    Gap,
}

impl ErrorKind {
    // New kinds go at the end: reports and tests index the arrays in this order.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Timeout,
        ErrorKind::Protocol,
        ErrorKind::Disconnect,
        ErrorKind::Io,
        ErrorKind::Script,
        ErrorKind::Connect,
        ErrorKind::Server,
        ErrorKind::Gap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Disconnect => "disconnect",
            ErrorKind::Io => "io",
            ErrorKind::Script => "script",
            ErrorKind::Connect => "connect",
            ErrorKind::Server => "server",
            ErrorKind::Gap => "gap",
        }
    }
}

/// Why a bot's connection ended before the run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The server closed the connection (read returned 0).
    Eof,
    /// Connection reset or broken pipe.
    Reset,
    /// We closed it: no reply within `--timeout`.
    Timeout,
    /// We closed it: the server sent something we cannot frame or decode.
    ProtocolError,
    /// Any other socket error.
    IoError,
    /// We closed it: the Lua scenario failed.
    ScriptError,
    /// We closed it: the server answered a request with an error.
    ServerError,
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 7] = [
        DisconnectReason::Eof,
        DisconnectReason::Reset,
        DisconnectReason::Timeout,
        DisconnectReason::ProtocolError,
        DisconnectReason::IoError,
        DisconnectReason::ScriptError,
        DisconnectReason::ServerError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DisconnectReason::Eof => "eof",
            DisconnectReason::Reset => "reset",
            DisconnectReason::Timeout => "timeout",
            DisconnectReason::ProtocolError => "protocol error",
            DisconnectReason::IoError => "io error",
            DisconnectReason::ScriptError => "script error",
            DisconnectReason::ServerError => "server error",
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    Other,
    /// Connected, but the server refused the login (lotus: `auth_failed`).
    Login,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 4] = [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Other,
        ConnectFailure::Login,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Other => "other",
            ConnectFailure::Login => "login",
        }
    }

    pub fn classify(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            std::io::ErrorKind::TimedOut => ConnectFailure::Timeout,
            _ => ConnectFailure::Other,
        }
    }
}

/// A latency histogram in microseconds. Bounds: 1us .. 1h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Correctness counters (errors, disconnects, connects): counted over the whole run,
/// warmup included, because a failure during warmup is still a failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub errors: [u64; ErrorKind::ALL.len()],
    pub disconnects: [u64; DisconnectReason::ALL.len()],
    pub connect_failures: [u64; ConnectFailure::ALL.len()],
    pub connects: u64,
}

impl Counters {
    pub fn merge(&mut self, other: &Counters) {
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        for (a, b) in self.disconnects.iter_mut().zip(other.disconnects) {
            *a += b;
        }
        for (a, b) in self.connect_failures.iter_mut().zip(other.connect_failures) {
            *a += b;
        }
        self.connects += other.connects;
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// Messages and round-trip latencies over some span of time.
#[derive(Debug, Clone)]
pub struct Window {
    pub latency: Histogram<u64>,
    pub sent: u64,
    pub received: u64,
    pub counters: Counters,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            sent: 0,
            received: 0,
            counters: Counters::default(),
        }
    }
}

impl Window {
    pub fn merge(&mut self, other: &Window) {
        // Both use the same bounds, so adding cannot fail; saturate rather than panic anyway.
        let _ = self.latency.add(&other.latency);
        self.sent += other.sent;
        self.received += other.received;
        self.counters.merge(&other.counters);
    }

    pub fn reset(&mut self) {
        self.latency.reset();
        self.sent = 0;
        self.received = 0;
        self.counters = Counters::default();
    }

    fn record_latency(&mut self, d: Duration) {
        let us = (d.as_micros().min(u64::MAX as u128) as u64).max(1);
        self.latency.saturating_record(us);
    }
}

/// Up to this many error messages are kept as examples for the report.
pub const ERROR_SAMPLES: usize = 5;

/// One worker thread's measurements.
#[derive(Debug, Default)]
pub struct ShardData {
    /// The current second: swapped out by the reporter at each tick.
    pub second: Window,
    /// Everything after the warmup (messages, latencies) plus the whole run's counters.
    pub total: Window,
    /// The first few error messages, for humans.
    pub samples: Vec<String>,
}

/// State shared by all bots and the reporter.
#[derive(Debug)]
pub struct Shared {
    pub shards: Vec<Mutex<ShardData>>,
    /// Bots connected right now.
    pub connected: AtomicUsize,
    /// Bots that ever connected.
    pub ever_connected: AtomicUsize,
    /// Messages and latencies are counted in `total` only from this instant on.
    pub measure_from: Instant,
    /// Channel messages delivered to bots (lotus rooms), over the whole run.
    pub deliveries: AtomicU64,
    /// Channel message ids the deliveries skipped, over the whole run.
    pub missed: AtomicU64,
}

impl Shared {
    pub fn new(workers: usize, measure_from: Instant) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..workers).map(|_| Mutex::default()).collect(),
            connected: AtomicUsize::new(0),
            ever_connected: AtomicUsize::new(0),
            measure_from,
            deliveries: AtomicU64::new(0),
            missed: AtomicU64::new(0),
        })
    }

    /// Locks a shard; a poisoned lock (a panicking thread) still yields its data.
    pub fn shard(&self, i: usize) -> MutexGuard<'_, ShardData> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// All shards' totals and error samples, merged.
    pub fn totals(&self) -> (Window, Vec<String>) {
        let mut total = Window::default();
        let mut samples = Vec::new();
        for i in 0..self.shards.len() {
            let s = self.shard(i);
            total.merge(&s.total);
            samples.extend(s.samples.iter().cloned());
        }
        samples.truncate(ERROR_SAMPLES);
        (total, samples)
    }
}

/// What a bot uses to record: a handle on its worker's shard.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
    shard: usize,
}

impl Recorder {
    pub fn new(shared: Arc<Shared>, shard: usize) -> Self {
        Self { shared, shard }
    }

    fn with<R>(&self, f: impl FnOnce(&mut ShardData, bool) -> R) -> R {
        let measuring = Instant::now() >= self.shared.measure_from;
        f(&mut self.shared.shard(self.shard), measuring)
    }

    pub fn sent(&self) {
        self.with(|s, measuring| {
            s.second.sent += 1;
            if measuring {
                s.total.sent += 1;
            }
        });
    }

    /// A message was received; `rtt` is set when it completed a round trip.
    pub fn received(&self, rtt: Option<Duration>) {
        self.with(|s, measuring| {
            s.second.received += 1;
            if let Some(d) = rtt {
                s.second.record_latency(d);
            }
            if measuring {
                s.total.received += 1;
                if let Some(d) = rtt {
                    s.total.record_latency(d);
                }
            }
        });
    }

    pub fn connected(&self) {
        self.shared.connected.fetch_add(1, Ordering::Relaxed);
        self.shared.ever_connected.fetch_add(1, Ordering::Relaxed);
        self.with(|s, _| {
            s.second.counters.connects += 1;
            s.total.counters.connects += 1;
        });
    }

    /// The bot's connection is gone (for any reason, including the end of the run).
    pub fn closed(&self) {
        self.shared.connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connect_failed(&self, why: ConnectFailure, message: String) {
        let i = ConnectFailure::ALL
            .iter()
            .position(|k| *k == why)
            .unwrap_or(0);
        self.with(|s, _| {
            s.second.counters.connect_failures[i] += 1;
            s.total.counters.connect_failures[i] += 1;
        });
        self.error(ErrorKind::Connect, None, message);
    }

    /// A channel message arrived (not a reply: it is not a round trip nor a received
    /// message; deliveries are reported on their own).
    pub fn delivered(&self) {
        self.shared.deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery skipped `missed` ids: one `gap` error, the ids counted as missed.
    pub fn gap(&self, missed: u64, message: String) {
        self.shared.missed.fetch_add(missed, Ordering::Relaxed);
        self.error(ErrorKind::Gap, None, message);
    }

    /// Counts an error (and the disconnect it caused, if any) and keeps a sample message.
    pub fn error(&self, kind: ErrorKind, disconnect: Option<DisconnectReason>, message: String) {
        let k = ErrorKind::ALL.iter().position(|e| *e == kind).unwrap_or(0);
        let d = disconnect.and_then(|r| DisconnectReason::ALL.iter().position(|x| *x == r));
        self.with(|s, _| {
            for w in [&mut s.second, &mut s.total] {
                w.counters.errors[k] += 1;
                if let Some(d) = d {
                    w.counters.disconnects[d] += 1;
                }
            }
            if s.samples.len() < ERROR_SAMPLES {
                s.samples.push(message);
            }
        });
    }
}

/// Latency percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Messages per second, 0 for an empty window (never NaN or infinite in a report).
pub fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 10_000);
        assert_eq!(l.min, 1);
        // 3 significant digits: within 0.1% of the exact value.
        let close =
            |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001 + 1.0;
        assert!(close(l.p50, 5_000), "{}", l.p50);
        assert!(close(l.p90, 9_000), "{}", l.p90);
        assert!(close(l.p99, 9_900), "{}", l.p99);
        assert!(close(l.p999, 9_990), "{}", l.p999);
        assert!(close(l.max, 10_000), "{}", l.max);
        assert!((l.mean - 5_000.5).abs() < 10.0);
    }

    #[test]
    fn empty_is_zero_not_nan() {
        let l = Latency::of(&new_histogram());
        assert_eq!(l, Latency::default());
        assert_eq!(rate(10, 0.0), 0.0);
        assert_eq!(rate(10, 2.0), 5.0);
    }

    #[test]
    fn sub_microsecond_rtts_count_as_one() {
        let mut w = Window::default();
        w.record_latency(Duration::from_nanos(10));
        w.record_latency(Duration::from_secs(7200)); // beyond the bounds: saturates
        assert_eq!(w.latency.len(), 2);
        assert_eq!(w.latency.min(), 1);
    }

    #[test]
    fn recorder_splits_warmup_from_measurement() {
        let later = Instant::now() + Duration::from_secs(3600);
        let shared = Shared::new(2, later);
        let r0 = Recorder::new(shared.clone(), 0);
        let r1 = Recorder::new(shared.clone(), 1);
        r0.sent();
        r0.received(Some(Duration::from_micros(100)));
        r1.connected();
        r1.error(
            ErrorKind::Timeout,
            Some(DisconnectReason::Timeout),
            "t".into(),
        );
        r1.connect_failed(ConnectFailure::Refused, "refused".into());
        // Still warming up: the message is in the second window but not in the totals...
        assert_eq!(shared.shard(0).second.received, 1);
        let (total, samples) = shared.totals();
        assert_eq!(total.received, 0);
        assert_eq!(total.latency.len(), 0);
        // ...while errors, disconnects and connects always count.
        assert_eq!(total.counters.error_total(), 2);
        assert_eq!(total.counters.errors[0], 1);
        assert_eq!(total.counters.disconnects[2], 1);
        assert_eq!(total.counters.connect_failures[0], 1);
        assert_eq!(total.counters.connects, 1);
        assert_eq!(samples, vec!["t".to_string(), "refused".to_string()]);
        assert_eq!(shared.connected.load(Ordering::Relaxed), 1);
        r1.closed();
        assert_eq!(shared.connected.load(Ordering::Relaxed), 0);
        assert_eq!(shared.ever_connected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn measured_after_warmup_and_merge() {
        let shared = Shared::new(2, Instant::now());
        for shard in 0..2 {
            let r = Recorder::new(shared.clone(), shard);
            for i in 0..50 {
                r.sent();
                r.received(Some(Duration::from_micros(100 + i)));
            }
        }
        let (total, _) = shared.totals();
        assert_eq!((total.sent, total.received), (100, 100));
        let l = Latency::of(&total.latency);
        assert_eq!(l.count, 100);
        assert_eq!(l.min, 100);
        assert_eq!(l.max, 149);
    }
}
