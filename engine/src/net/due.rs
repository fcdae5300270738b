//! What a connection task must do next by the clock, decided the same way for the TCP task
//! (`conn`) and the WebSocket task (`ws`) before each read: flush the pending output (at
//! once, or `commit` after the last flush unless a flush was forced), close a connection idle
//! for longer than `expire`, close one whose started frame (or message) missed the
//! listener's `deadline`, or wait, with one timer at the earliest of these. [`Clock::due`] is
//! a pure function of the clock and the connection's state, so the decisions are unit-tested
//! without a socket; the tasks keep their own I/O.

use std::time::{Duration, Instant};

use super::conn::{self, Conn};

/// What the decision reads: the time and the connection's state at the top of the loop.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    pub now: Instant,
    /// Output waits to be written.
    pub has_output: bool,
    /// When the task last flushed (`None`: not yet).
    pub last_flush: Option<Instant>,
    /// The least time between flushes (`None`: flush at once: no `commit`, or one was forced).
    pub commit: Option<Duration>,
    /// When the connection expires if nothing more is read (`None`: never).
    pub expire_at: Option<Instant>,
    /// When the first bytes of the frame not yet complete arrived (`None`: no partial frame).
    pub frame_started: Option<Instant>,
    /// How long a started frame may take (`None`: no limit).
    pub frame_deadline: Option<Duration>,
}

/// The decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// Write the pending output now.
    Flush,
    /// Close the connection (ETIMEDOUT).
    Close(Late),
    /// Nothing is due: read, with a timer at this instant (`None`: no timer).
    Wait(Option<Instant>),
}

/// Why a connection is closed by the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Late {
    /// Nothing read for `expire`.
    Idle,
    /// A started frame was not complete within `deadline`.
    Frame,
}

impl Clock {
    /// The clock of `conn`'s task: `last_rx` is its last read, `last_flush` its last flush,
    /// `frame_started` when its pending frame began.
    pub(super) fn of(
        conn: &Conn,
        now: Instant,
        last_rx: Instant,
        last_flush: Option<Instant>,
        frame_started: Option<Instant>,
    ) -> Clock {
        let commit_ms = u64::from(conn.commit_ms.get());
        Clock {
            now,
            has_output: conn.has_output(),
            last_flush,
            commit: (commit_ms > 0 && !conn.flush_forced.get())
                .then(|| Duration::from_millis(commit_ms)),
            expire_at: conn::idle_deadline(conn, last_rx),
            frame_started,
            frame_deadline: conn.frame_deadline.duration(),
        }
    }

    /// A flush comes first (a reply already made is sent even to a connection about to
    /// expire), then the idle deadline, then the frame deadline.
    pub(super) fn due(&self) -> Due {
        let now = self.now;
        let flush_at = self
            .has_output
            .then(|| match (self.last_flush, self.commit) {
                (Some(at), Some(commit)) => at + commit,
                _ => now,
            });
        if flush_at.is_some_and(|at| at <= now) {
            return Due::Flush;
        }
        if self.expire_at.is_some_and(|at| at <= now) {
            return Due::Close(Late::Idle);
        }
        let frame_due = self
            .frame_started
            .zip(self.frame_deadline)
            .map(|(at, limit)| at + limit);
        if frame_due.is_some_and(|at| at <= now) {
            return Due::Close(Late::Frame);
        }
        Due::Wait(
            [flush_at, self.expire_at, frame_due]
                .into_iter()
                .flatten()
                .min(),
        )
    }
}

impl Late {
    /// Logs (debug) and counts the close; returns the errno the task ends with. `unit` names
    /// what was started ("frame", or "message" on a WebSocket).
    pub(super) fn close(self, conn: &Conn, unit: &str) -> i32 {
        match self {
            Late::Idle => tracing::debug!(
                socket = conn.id.raw(),
                "idle for longer than expire; closing"
            ),
            Late::Frame => {
                tracing::debug!(
                    socket = conn.id.raw(),
                    "a started {unit} was not complete within the deadline; closing"
                );
                conn.count_frame_timeout();
            }
        }
        libc::ETIMEDOUT
    }
}

/// What one turn of a connection loop does after [`next_step`].
pub(super) enum Step {
    /// Write the pending output now; the flush may wait until this idle deadline.
    Flush(Option<Instant>),
    /// Read, with the task's timer armed for what comes due next.
    Read,
}

/// One turn's decision for the TCP and the WebSocket task: builds the [`Clock`], closes a
/// late connection (`Err(errno)`; `unit` as in [`Late::close`]), or flushes, or arms `timer`
/// and reads. A plain function on purpose: a `Clock` (and the `Instant` it was made from)
/// in scope at one of the task's awaits would be stored in every connection's task, 120
/// bytes of each idle connection (BENCHMARKS.md "Memory per idle connection").
pub(super) fn next_step(
    conn: &Conn,
    last_rx: Instant,
    last_flush: Option<Instant>,
    started: Option<Instant>,
    timer: &mut Option<(Instant, glommio::timer::Timer)>,
    unit: &str,
) -> Result<Step, i32> {
    let now = Instant::now();
    let clock = Clock::of(conn, now, last_rx, last_flush, started);
    match clock.due() {
        Due::Flush => Ok(Step::Flush(clock.expire_at)),
        Due::Close(late) => Err(late.close(conn, unit)),
        Due::Wait(at) => {
            arm(timer, at, |at| {
                glommio::timer::Timer::new(at.saturating_duration_since(now))
            });
            Ok(Step::Read)
        }
    }
}

/// Keeps the task's one timer for `wanted` (from [`Due::Wait`]): none when nothing is
/// waited for, a new one (made by `new`) when the armed one would fire later than wanted.
/// An armed one that fires earlier is kept: the idle deadline moves with every read, and a
/// timer that fires early only brings the loop back to re-arm it.
pub(super) fn arm<T>(
    timer: &mut Option<(Instant, T)>,
    wanted: Option<Instant>,
    new: impl FnOnce(Instant) -> T,
) {
    match (wanted, &*timer) {
        (None, _) => *timer = None,
        (Some(at), Some((armed, _))) if *armed <= at => {}
        (Some(at), _) => *timer = Some((at, new(at))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A connection with nothing pending and no limits, at `t0 + 1 s`.
    fn quiet(t0: Instant) -> Clock {
        Clock {
            now: t0 + ms(1000),
            has_output: false,
            last_flush: None,
            commit: None,
            expire_at: None,
            frame_started: None,
            frame_deadline: None,
        }
    }

    #[test]
    fn nothing_pending_and_no_limits_waits_without_a_timer() {
        assert_eq!(quiet(Instant::now()).due(), Due::Wait(None));
    }

    #[test]
    fn output_flushes_at_once_without_commit_or_a_first_time_and_after_commit_otherwise() {
        let t0 = Instant::now();
        let now = t0 + ms(1000);
        let out = Clock {
            has_output: true,
            ..quiet(t0)
        };
        // No commit (or forced), or never flushed: now.
        assert_eq!(out.due(), Due::Flush);
        let never = Clock {
            commit: Some(ms(50)),
            ..out
        };
        assert_eq!(never.due(), Due::Flush);
        let forced = Clock {
            last_flush: Some(now - ms(10)),
            ..out
        };
        assert_eq!(forced.due(), Due::Flush);
        // Flushed 10 ms ago with commit 50: the timer is at the last flush + 50.
        let recent = Clock {
            last_flush: Some(now - ms(10)),
            commit: Some(ms(50)),
            ..out
        };
        assert_eq!(recent.due(), Due::Wait(Some(now + ms(40))));
        // Exactly commit later: due.
        let later = Clock {
            last_flush: Some(now - ms(50)),
            ..recent
        };
        assert_eq!(later.due(), Due::Flush);
    }

    #[test]
    fn a_due_flush_goes_before_an_expired_idle_or_frame_deadline() {
        let t0 = Instant::now();
        let c = Clock {
            has_output: true,
            expire_at: Some(t0),
            frame_started: Some(t0),
            frame_deadline: Some(ms(1)),
            ..quiet(t0)
        };
        assert_eq!(c.due(), Due::Flush);
        // The flush not due yet: the idle deadline closes first, then the frame deadline.
        let waiting = Clock {
            last_flush: Some(c.now),
            commit: Some(ms(50)),
            ..c
        };
        assert_eq!(waiting.due(), Due::Close(Late::Idle));
        let no_expire = Clock {
            expire_at: None,
            ..waiting
        };
        assert_eq!(no_expire.due(), Due::Close(Late::Frame));
    }

    #[test]
    fn deadlines_close_when_reached_and_the_timer_is_at_the_earliest() {
        let t0 = Instant::now();
        let now = t0 + ms(1000);
        let c = Clock {
            expire_at: Some(now + ms(300)),
            frame_started: Some(now - ms(100)),
            frame_deadline: Some(ms(200)),
            ..quiet(t0)
        };
        assert_eq!(c.due(), Due::Wait(Some(now + ms(100))));
        // A deadline but no partial frame: only the idle deadline counts.
        let idle = Clock {
            frame_started: None,
            ..c
        };
        assert_eq!(idle.due(), Due::Wait(Some(now + ms(300))));
        let expired = Clock {
            expire_at: Some(now),
            ..idle
        };
        assert_eq!(expired.due(), Due::Close(Late::Idle));
        let late = Clock {
            frame_started: Some(now - ms(200)),
            ..c
        };
        assert_eq!(late.due(), Due::Close(Late::Frame));
    }

    #[test]
    fn the_timer_is_made_again_only_when_wanted_earlier_and_dropped_when_not_wanted() {
        let t0 = Instant::now();
        let mut made = 0;
        let mut timer: Option<(Instant, u32)> = None;
        let mut new = |_| {
            made += 1;
            made
        };
        arm(&mut timer, Some(t0 + ms(100)), &mut new);
        assert_eq!(timer, Some((t0 + ms(100), 1)));
        // Later than armed (the idle deadline moved): kept, it fires early.
        arm(&mut timer, Some(t0 + ms(200)), &mut new);
        assert_eq!(timer, Some((t0 + ms(100), 1)));
        // Earlier: a new timer.
        arm(&mut timer, Some(t0 + ms(50)), &mut new);
        assert_eq!(timer, Some((t0 + ms(50), 2)));
        arm(&mut timer, None, &mut new);
        assert_eq!(timer, None);
        arm(&mut timer, Some(t0 + ms(300)), &mut new);
        assert_eq!(timer, Some((t0 + ms(300), 3)));
    }
}
