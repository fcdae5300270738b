//! Restart intensity (Erlang/OTP's supervisor `intensity` and `period`, `#restart` in the
//! configuration). The supervisor restarts a process that died; one that keeps dying would
//! otherwise be forked again and again, each boot loading scripts and binding ports, and its
//! log would drown everything else. Here each process number keeps the times of its recent
//! restarts: within the limit a restart happens at once, past it the restart waits, and the
//! wait doubles with every further crash inside the period (1 s, 2 s, 4 s … up to
//! [`MAX_BACKOFF`]). A process that stays up for a whole period is forgiven: its old
//! restarts fall out of the window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Restart;

/// The longest a crashing process waits for its restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The restarts of one process number within the last period.
#[derive(Debug, Default)]
pub struct History {
    restarts: VecDeque<Instant>,
}

impl History {
    /// Records that the process died at `now` and is to be restarted; returns how long the
    /// restart must wait (zero within the limit).
    pub fn restart_delay(&mut self, limit: Restart, now: Instant) -> Duration {
        let period = Duration::from_secs(u64::from(limit.period_s));
        while let Some(&oldest) = self.restarts.front() {
            if now.duration_since(oldest) >= period {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.restarts.push_back(now);
        let count = self.restarts.len() as u32;
        if count <= limit.intensity {
            return Duration::ZERO;
        }
        let excess = (count - limit.intensity - 1).min(16);
        (Duration::from_secs(1) * (1u32 << excess)).min(MAX_BACKOFF)
    }

    /// Restarts counted in the current window (for the log line).
    pub fn recent(&self) -> usize {
        self.restarts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Restart = Restart {
        intensity: 3,
        period_s: 10,
    };

    #[test]
    fn restarts_within_the_intensity_are_immediate() {
        let mut h = History::default();
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(
                h.restart_delay(LIMIT, t0 + Duration::from_secs(i)),
                Duration::ZERO
            );
        }
    }

    #[test]
    fn past_the_intensity_the_wait_doubles_up_to_the_cap() {
        let mut h = History::default();
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..12)
            .map(|i| {
                h.restart_delay(LIMIT, t0 + Duration::from_millis(100 * i))
                    .as_secs()
            })
            .collect();
        assert_eq!(delays, [0, 0, 0, 1, 2, 4, 8, 16, 30, 30, 30, 30]);
        assert_eq!(h.recent(), 12);
    }

    #[test]
    fn a_quiet_period_forgives_old_crashes() {
        let mut h = History::default();
        let t0 = Instant::now();
        for i in 0..5 {
            h.restart_delay(LIMIT, t0 + Duration::from_millis(i));
        }
        // Ten seconds after the last of them, the window is empty again.
        let later = t0 + Duration::from_secs(10) + Duration::from_millis(5);
        assert_eq!(h.restart_delay(LIMIT, later), Duration::ZERO);
        assert_eq!(h.recent(), 1);
    }
}
