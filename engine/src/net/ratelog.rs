//! A log line that is written at most once per second however often its event happens (a
//! connect flood, a descriptor shortage): each line carries how many events it stands for,
//! so nothing is hidden and the log cannot be used to slow the process down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest time between two lines of one [`RateLog`].
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct RateLog {
    /// Events since the last line.
    pending: AtomicU64,
    /// Events since the process started (the metrics' limit hits).
    total: AtomicU64,
    /// When the last line was written; `None` before the first.
    last: Mutex<Option<Instant>>,
}

impl RateLog {
    /// A log with no line written yet (usable in a `static`).
    pub const fn new() -> RateLog {
        RateLog {
            pending: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Events counted since the process started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts one event. Returns `Some(n)` when a line is due now, `n` being the events it
    /// reports (this one and those since the last line); the caller writes the line.
    pub fn hit(&self) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        // Another core holding the lock is writing a line at this very moment: this event
        // goes into the next one.
        let mut last = self.last.try_lock().ok()?;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < LOG_INTERVAL) {
            return None;
        }
        *last = Some(now);
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_carries_the_events_in_between() {
        let log = RateLog::default();
        assert_eq!(log.hit(), Some(1));
        assert_eq!(log.hit(), None);
        assert_eq!(log.hit(), None);
        // Pretend the last line is older than the interval.
        *log.last.lock().unwrap() = Some(Instant::now() - LOG_INTERVAL);
        assert_eq!(log.hit(), Some(3));
        assert_eq!(log.hit(), None);
    }
}
