//! The CPU budget of a Lua callback (`%cpu`, issue #12): a callback that runs longer than the
//! budget is interrupted with a Lua error in that callback only, so one runaway loop costs
//! one callback instead of its core (and, in a multi-process node, its whole process, which
//! the supervisor kills after 3.1 s without a beat: that stays the last resort for code the
//! interrupt cannot reach, a C call that never returns).
//!
//! This layer knows no Lua. Each core has a [`Slot`]: the core stores the clock into it when
//! it enters a budgeted callback and 0 when it leaves (two relaxed stores per callback, no
//! lock, no system call: the coarse monotonic clock is read from the vDSO). One
//! `stage-budget` thread per process looks at the slots every [`TICK`]; for a core whose
//! callback is past its budget it calls the interrupt the core's script host registered
//! ([`Budget::register`]), which asks the Lua VM to stop at its next instruction. Whether
//! to raise the error is decided on the core itself, when the VM stops (the script layer's
//! hook, `script::budget`): the callback running then may not be the one that was late.
//!
//! The registered interrupt is called under the slot's lock, and the script host takes the
//! same lock to unregister before its Lua state is closed, so the thread never touches a
//! state that is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::Node;

/// How often the budget thread looks at the cores: how late past its budget a callback can
/// be interrupted.
pub const TICK: Duration = Duration::from_millis(10);
/// A callback still over budget this long after its interrupt was asked for gets asked
/// again (an interrupt can be lost when the VM clears a stale one at the same instant).
const REARM_MS: u64 = 100;

/// Asks a core's script state to stop at its next instruction. Called from the budget
/// thread, never from the core.
pub type Interrupt = Box<dyn Fn() + Send>;

/// A millisecond clock that costs next to nothing to read (`CLOCK_MONOTONIC_COARSE`, a few
/// ms resolution: enough for budgets of tens of ms and more).
pub fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC_COARSE exists on
    // every Linux this engine runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    // +1 so that no callback ever starts at 0, which means "none running".
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000 + 1
}

/// One core's budget state.
#[derive(Default)]
pub struct Slot {
    /// When the running budgeted callback started (or was last interrupted), [`coarse_ms`];
    /// 0 = no budgeted callback is running. Written by the core only.
    started: AtomicU64,
    /// The core's interrupt, while its script state lives.
    interrupt: Mutex<Option<Interrupt>>,
}

/// The CPU budget of every core of this process.
pub struct Budget {
    /// `%cpu` in msec; 0 = off.
    limit_ms: u64,
    slots: Vec<Slot>,
    /// Callbacks interrupted since the process started.
    exceeded: AtomicU64,
    /// When the last interruption was logged ([`coarse_ms`]), for logging once per second.
    logged_at: AtomicU64,
}

impl Budget {
    pub fn new(limit_ms: u64, cores: usize) -> Budget {
        Budget {
            limit_ms,
            slots: (0..cores).map(|_| Slot::default()).collect(),
            exceeded: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
        }
    }

    /// The budget in msec (0 = off).
    pub fn limit_ms(&self) -> u64 {
        self.limit_ms
    }

    /// Callbacks interrupted so far.
    pub fn exceeded(&self) -> u64 {
        self.exceeded.load(Ordering::Relaxed)
    }

    /// Core `core` enters a budgeted callback (called by the core's script host).
    #[inline]
    pub fn enter(&self, core: usize) {
        if let Some(slot) = self.slots.get(core) {
            slot.started.store(coarse_ms(), Ordering::Relaxed);
        }
    }

    /// Core `core` left its budgeted callback.
    #[inline]
    pub fn leave(&self, core: usize) {
        if let Some(slot) = self.slots.get(core) {
            slot.started.store(0, Ordering::Relaxed);
        }
    }

    /// On core `core`, its script state stopped at the interrupt: whether the running
    /// callback is past its budget (then its clock restarts, so a script that catches the
    /// error gets another full budget before the next one). `false` for a stale interrupt:
    /// the late callback has returned since.
    pub fn over(&self, core: usize) -> bool {
        let Some(slot) = self.slots.get(core) else {
            return false;
        };
        let started = slot.started.load(Ordering::Relaxed);
        let now = coarse_ms();
        if self.limit_ms == 0 || started == 0 || now.saturating_sub(started) < self.limit_ms {
            return false;
        }
        slot.started.store(now, Ordering::Relaxed);
        true
    }

    /// Counts an interrupted callback on core `core` and logs it, once per second at most.
    pub fn count(&self, core: usize) {
        let total = self.exceeded.fetch_add(1, Ordering::Relaxed) + 1;
        let now = coarse_ms();
        let last = self.logged_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                core,
                exceeded = total,
                "a Lua callback ran past its CPU budget of {} ms (%cpu) and was interrupted",
                self.limit_ms
            );
        }
    }

    /// Core `core`'s script state is ready to be interrupted (once built; `%preload` runs
    /// before, unbudgeted).
    pub fn register(&self, core: usize, interrupt: Interrupt) {
        if let Some(slot) = self.slots.get(core) {
            *slot.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = Some(interrupt);
        }
    }

    /// Core `core`'s script state is about to close: the thread must not touch it again.
    pub fn unregister(&self, core: usize) {
        if let Some(slot) = self.slots.get(core) {
            slot.started.store(0, Ordering::Relaxed);
            *slot.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// One look at every core: interrupts the callbacks past their budget. `armed` remembers,
    /// per core, which callback (its start) was last interrupted and when.
    fn look(&self, armed: &mut [(u64, u64)], now: u64) {
        if self.limit_ms == 0 {
            return;
        }
        for (slot, armed) in self.slots.iter().zip(armed.iter_mut()) {
            let started = slot.started.load(Ordering::Relaxed);
            if started == 0 || now.saturating_sub(started) < self.limit_ms {
                continue;
            }
            if armed.0 == started && now.saturating_sub(armed.1) < REARM_MS {
                continue;
            }
            *armed = (started, now);
            if let Some(interrupt) = &*slot.interrupt.lock().unwrap_or_else(|e| e.into_inner()) {
                interrupt();
            }
        }
    }
}

/// Starts the `stage-budget` thread (nothing when `%cpu` is 0). It ends with the node.
pub fn start(node: &Arc<Node>) {
    if node.budget.limit_ms == 0 {
        tracing::info!("%cpu is 0: Lua callbacks run without a CPU budget");
        return;
    }
    let weak = Arc::downgrade(node);
    let spawned = std::thread::Builder::new()
        .name("stage-budget".into())
        .spawn(move || watch(&weak));
    if let Err(err) = spawned {
        tracing::error!("cannot start the CPU budget thread: {err}; %cpu is not enforced");
    }
}

fn watch(node: &Weak<Node>) {
    let mut armed = Vec::new();
    loop {
        std::thread::sleep(TICK);
        let Some(node) = node.upgrade() else {
            return;
        };
        armed.resize(node.budget.slots.len(), (0, 0));
        node.budget.look(&mut armed, coarse_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counting(budget: &Budget, core: usize) -> Arc<AtomicUsize> {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        budget.register(
            core,
            Box::new(move || {
                c.fetch_add(1, Ordering::Relaxed);
            }),
        );
        calls
    }

    #[test]
    fn only_a_callback_past_its_budget_is_interrupted() {
        let budget = Budget::new(100, 2);
        let (c0, c1) = (counting(&budget, 0), counting(&budget, 1));
        let mut armed = vec![(0, 0); 2];
        budget.enter(0);
        budget.enter(1);
        let now = coarse_ms();
        budget.look(&mut armed, now + 50);
        assert_eq!(c0.load(Ordering::Relaxed), 0);
        budget.leave(1);
        budget.look(&mut armed, now + 150);
        assert_eq!(c0.load(Ordering::Relaxed), 1);
        assert_eq!(
            c1.load(Ordering::Relaxed),
            0,
            "core 1 left its callback in time"
        );
        // Asked once per late callback, again only if it is still late well after.
        budget.look(&mut armed, now + 160);
        assert_eq!(c0.load(Ordering::Relaxed), 1);
        budget.look(&mut armed, now + 150 + REARM_MS);
        assert_eq!(c0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_stale_interrupt_is_not_an_error() {
        let budget = Budget::new(100, 1);
        assert!(!budget.over(0), "no callback running");
        budget.enter(0);
        assert!(!budget.over(0), "the running callback is within its budget");
        budget.leave(0);
        assert!(!budget.over(0));
    }

    #[test]
    fn an_unregistered_core_is_never_touched() {
        let budget = Budget::new(100, 1);
        let calls = counting(&budget, 0);
        budget.unregister(0);
        let mut armed = vec![(0, 0)];
        budget.enter(0);
        budget.look(&mut armed, coarse_ms() + 1000);
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_budget_of_zero_never_interrupts() {
        let budget = Budget::new(0, 1);
        budget.enter(0);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!budget.over(0));
    }
}
