//! The per-second time series: at every tick the reporter swaps each worker's "current
//! second" window for an empty one and merges them into one `Point`. The points feed the
//! progress line, the JSON summary and the chart.

use crate::stats::{Latency, Shared, Window};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// One second (or the last, shorter, span) of the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Point {
    /// Seconds since the start of the run, at the end of this span.
    pub t: f64,
    /// Length of the span in seconds (1 except possibly for the last point).
    pub span_s: f64,
    /// True when the span lies (at least partly) in the warmup.
    pub warmup: bool,
    /// Bots connected at the end of the span.
    pub connected: usize,
    pub sent: u64,
    pub received: u64,
    /// Received messages per second during the span.
    pub msgs_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Errors of any kind during the span.
    pub errors: u64,
}

/// Builds the series from the workers' shards.
pub struct Collector {
    shared: Arc<Shared>,
    start: Instant,
    last: Instant,
    merged: Window,
    spare: Window,
    pub points: Vec<Point>,
}

impl Collector {
    pub fn new(shared: Arc<Shared>, start: Instant) -> Self {
        Self {
            shared,
            start,
            last: start,
            merged: Window::default(),
            spare: Window::default(),
            points: Vec::new(),
        }
    }

    /// Closes the span ending at `now` and returns its point.
    pub fn tick(&mut self, now: Instant) -> &Point {
        self.merged.reset();
        for i in 0..self.shared.shards.len() {
            // Swap under the lock (cheap), merge outside it so bots wait as little as possible.
            self.spare.reset();
            std::mem::swap(&mut self.shared.shard(i).second, &mut self.spare);
            self.merged.merge(&self.spare);
        }
        let span_s = now.saturating_duration_since(self.last).as_secs_f64();
        let lat = Latency::of(&self.merged.latency);
        self.points.push(Point {
            t: now.saturating_duration_since(self.start).as_secs_f64(),
            span_s,
            warmup: self.last < self.shared.measure_from,
            connected: self.shared.connected.load(Ordering::Relaxed),
            sent: self.merged.sent,
            received: self.merged.received,
            msgs_per_s: crate::stats::rate(self.merged.received, span_s),
            p50_us: lat.p50,
            p99_us: lat.p99,
            max_us: lat.max,
            errors: self.merged.counters.error_total(),
        });
        self.last = now;
        self.points.last().expect("just pushed")
    }

    /// When the last tick happened.
    pub fn last_tick(&self) -> Instant {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;
    use std::time::Duration;

    #[test]
    fn ticks_split_seconds() {
        let start = Instant::now();
        let shared = Shared::new(2, start + Duration::from_secs(1));
        let mut c = Collector::new(shared.clone(), start);
        let r = Recorder::new(shared.clone(), 1);
        for _ in 0..10 {
            r.received(Some(Duration::from_micros(250)));
        }
        let p = c.tick(start + Duration::from_secs(1)).clone();
        assert_eq!(p.received, 10);
        assert_eq!(p.msgs_per_s, 10.0);
        assert!(p.warmup);
        assert!(p.p99_us >= 250 && p.p99_us < 251);
        r.received(None);
        let p = c.tick(start + Duration::from_millis(1500)).clone();
        assert_eq!(p.received, 1);
        assert_eq!(p.span_s, 0.5);
        assert_eq!(p.msgs_per_s, 2.0);
        assert!(!p.warmup);
        assert_eq!(p.p99_us, 0);
        assert_eq!(c.points.len(), 2);
    }
}
