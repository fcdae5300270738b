//! The timed built-in services (`=ticket`, `=route`) as their owner core holds them: the pure
//! state machine plus the one timer that drives its `tick`. The services say when they next
//! have something to do (`next_deadline`: a lease expiry, an offer timeout, a keep-alive
//! expiry); the owner keeps a single timer armed at that instant, so those things happen
//! without any traffic, and re-checks after every call, because a call can move the deadline
//! earlier (a new lease, a new offer).
//!
//! A timer that has been overtaken by an earlier one is not cancelled: when it fires it just
//! ticks (a tick with nothing due does nothing). Each timer carries a generation so the slot
//! knows whether the timer it counts on is the one that fired.

use std::time::{Duration, Instant};

use crate::service::route::RouteService;
use crate::service::ticket::TicketService;

pub enum TimedService {
    Ticket(TicketService),
    Route(RouteService),
}

pub struct TimedSlot {
    pub service: TimedService,
    /// The pending timer the slot relies on: when it fires, and its generation.
    armed: Option<(Instant, u64)>,
    generation: u64,
}

impl TimedSlot {
    pub fn new(service: TimedService) -> TimedSlot {
        TimedSlot {
            service,
            armed: None,
            generation: 0,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match &self.service {
            TimedService::Ticket(s) => s.next_deadline(),
            TimedService::Route(s) => s.next_deadline(),
        }
    }

    /// After a call or a tick: `Some((delay, generation))` when a new timer must be started
    /// (nothing pending, or the service's deadline is now earlier than the pending timer).
    pub fn arm(&mut self, now: Instant) -> Option<(Duration, u64)> {
        let next = self.next_deadline()?;
        if self.armed.is_some_and(|(at, _)| at <= next) {
            return None;
        }
        self.generation += 1;
        self.armed = Some((next, self.generation));
        Some((next.saturating_duration_since(now), self.generation))
    }

    /// Timer `generation` fired: if it was the one relied on, nothing is pending any more.
    pub fn fired(&mut self, generation: u64) {
        if self.armed.is_some_and(|(_, g)| g == generation) {
            self.armed = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ticket::{TicketCommand, TicketConfig};
    use crate::service::Requester;

    #[test]
    fn one_timer_at_the_earliest_deadline_rearmed_after_it_fires() {
        let config = TicketConfig {
            capacity: 10,
            categories: vec![("c".into(), 1)],
        };
        let mut slot = TimedSlot::new(TimedService::Ticket(TicketService::new("ticket", &config)));
        let t = Instant::now();
        assert_eq!(slot.arm(t), None, "nothing to do, no timer");
        let TimedService::Ticket(s) = &mut slot.service else {
            unreachable!()
        };
        s.handle(
            t,
            Requester::new(1, "game"),
            TicketCommand::Request {
                category: "c".into(),
                callback: "cb".into(),
                feedback: None,
                request_key: "ticket:c=cb".into(),
                value: Default::default(),
            },
        );
        let (delay, g) = slot.arm(t).expect("a lease: a timer");
        assert_eq!(delay, Duration::from_secs(1));
        assert_eq!(slot.arm(t), None, "already armed for that instant");
        slot.fired(g + 7);
        assert_eq!(slot.arm(t), None, "a stale timer does not disarm");
        slot.fired(g);
        assert!(slot.arm(t).is_some(), "fired: armed again");
    }
}
