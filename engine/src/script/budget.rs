//! The Lua half of the CPU budget (`%cpu`, `node::budget`): the hook that turns the budget
//! thread's interrupt into a Lua error, and the marks a core's host puts around every
//! callback it runs.
//!
//! The budget thread interrupts a core's LuaJIT state with `lua_sethook(L, hook,
//! LUA_MASKCOUNT, 1)`, the asynchronous interrupt LuaJIT documents (its own Ctrl-C handler in
//! luajit.c does the same from a signal handler). The VM then calls [`hook`] before its next
//! instruction; compiled code reaches it too because the vendored LuaJIT is built with
//! `LUAJIT_ENABLE_CHECKHOOK` (see `.cargo/config.toml`), which makes every compiled loop
//! check the hook flag. The hook runs on the core: it removes itself and, only when the
//! callback running now is past its budget (the one that was late may have returned in the
//! meantime), raises "CPU budget of N ms exceeded". The prelude's `xpcall` at the callback's
//! boundary catches and logs it like any script error.
//!
//! Not budgeted: `%preload` and the stages' main scripts (they run once, at boot) and the
//! pool threads' states (`thread.new` functions are meant to run long).

use std::cell::{Cell, RefCell};
use std::ffi::c_int;
use std::sync::Arc;

use mlua::{ffi, Lua};

use crate::node::Node;

thread_local! {
    /// The node and core index of the core running on this thread, for [`hook`].
    static CORE: RefCell<Option<(Arc<Node>, usize)>> = const { RefCell::new(None) };
}

/// A core's LuaJIT state as the budget thread holds it.
struct StatePtr(*mut ffi::lua_State);

// SAFETY: the pointer is only used for `lua_sethook`, which LuaJIT allows from another thread
// (it only stores the hook and flips the dispatch table), and only while the state is open:
// `CoreBudget`'s drop unregisters it, under the slot's lock, before the state closes.
unsafe impl Send for StatePtr {}

/// The budget of one core's script host: marks its callbacks and keeps its state
/// interruptible while it lives.
pub struct CoreBudget {
    node: Arc<Node>,
    core: usize,
    /// Callbacks entered and not yet left: a host call made from inside another (never
    /// expected, but harmless) stays within the outer one's budget.
    depth: Cell<u32>,
}

impl CoreBudget {
    /// Makes core `core`'s state `lua` interruptible by the budget thread; `None` when
    /// `%cpu` is 0.
    pub fn attach(lua: &Lua, node: &Arc<Node>, core: usize) -> Option<CoreBudget> {
        if node.budget.limit_ms() == 0 {
            return None;
        }
        let mut state = std::ptr::null_mut();
        // SAFETY: the closure only records the state pointer; outside any callback mlua runs
        // it on the main state, which lives as long as `lua`.
        let got = unsafe { lua.exec_raw::<()>((), |l| state = l) };
        if let Err(err) = got {
            tracing::error!("%cpu cannot be enforced on core {core}: {err}");
            return None;
        }
        let state = StatePtr(state);
        node.budget.register(
            core,
            Box::new(move || {
                let state = &state;
                // SAFETY: see `StatePtr`.
                unsafe { ffi::lua_sethook(state.0, Some(hook), ffi::LUA_MASKCOUNT, 1) };
            }),
        );
        CORE.with(|c| *c.borrow_mut() = Some((node.clone(), core)));
        Some(CoreBudget {
            node: node.clone(),
            core,
            depth: Cell::new(0),
        })
    }

    /// Runs `f`, one callback, within the budget.
    #[inline]
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _mark = Mark::enter(self);
        f()
    }
}

impl Drop for CoreBudget {
    fn drop(&mut self) {
        self.node.budget.unregister(self.core);
        CORE.with(|c| c.borrow_mut().take());
    }
}

/// The budget of the callback `f` runs, when the host has one.
#[inline]
pub fn within<R>(budget: &Option<CoreBudget>, f: impl FnOnce() -> R) -> R {
    match budget {
        Some(b) => b.run(f),
        None => f(),
    }
}

/// A callback being run; leaving it (even by unwinding) takes it off the clock.
struct Mark<'a>(&'a CoreBudget);

impl<'a> Mark<'a> {
    fn enter(budget: &'a CoreBudget) -> Mark<'a> {
        let depth = budget.depth.get();
        if depth == 0 {
            budget.node.budget.enter(budget.core);
        }
        budget.depth.set(depth + 1);
        Mark(budget)
    }
}

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        let depth = self.0.depth.get() - 1;
        self.0.depth.set(depth);
        if depth == 0 {
            self.0.node.budget.leave(self.0.core);
        }
    }
}

/// The count hook the budget thread sets. It always removes itself; it raises the budget
/// error only when the callback running now is over its budget.
unsafe extern "C-unwind" fn hook(l: *mut ffi::lua_State, _ar: *mut ffi::lua_Debug) {
    // SAFETY: `l` is the running state; removing the hook is always allowed inside it.
    unsafe { ffi::lua_sethook(l, None, 0, 0) };
    // Decided in a closure so that nothing with a destructor is alive when lua_error below
    // unwinds through this frame.
    let over = CORE.with(|c| {
        let c = c.borrow();
        let (node, core) = c.as_ref()?;
        if !node.budget.over(*core) {
            return None;
        }
        node.budget.count(*core);
        Some(node.budget.limit_ms())
    });
    let Some(limit) = over else {
        return;
    };
    let limit = c_int::try_from(limit).unwrap_or(c_int::MAX);
    // SAFETY: raising an error from a hook is allowed; the message is "where: CPU budget of N
    // ms exceeded", level 0 being the interrupted Lua function.
    unsafe {
        ffi::luaL_where(l, 0);
        ffi::lua_pushfstring(l, c"CPU budget of %d ms exceeded".as_ptr(), limit);
        ffi::lua_concat(l, 2);
        ffi::lua_error(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::budget;
    use crate::plan::Plan;
    use mlua::{LuaOptions, StdLib};

    /// A node of one core whose Lua callbacks have a budget of `cpu_ms`.
    fn node(cpu_ms: u64) -> Arc<Node> {
        let plan = Plan {
            cpu_ms,
            ..Plan::empty()
        };
        Node::new(vec![0], Arc::new(plan), None)
    }

    fn lua() -> Lua {
        // SAFETY: a test state with the jit library, to look at its traces.
        unsafe { Lua::unsafe_new_with(StdLib::ALL, LuaOptions::default()) }
    }

    #[test]
    fn a_jit_compiled_endless_loop_is_interrupted() {
        // On its own thread, so that a build whose compiled loops cannot be interrupted (no
        // LUAJIT_ENABLE_CHECKHOOK) fails this test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let node = node(50);
            let lua = lua();
            let core = CoreBudget::attach(&lua, &node, 0).expect("a budget");
            budget::start(&node);
            let err = core
                .run(|| lua.load("jit.on() while true do end").exec())
                .expect_err("the loop ends only by the budget");
            // The loop ran as compiled code (a trace exists): the check-hook build reached it.
            let traced: bool = lua
                .load("return require('jit.util').traceinfo(1) ~= nil")
                .eval()
                .unwrap();
            // The state is fine afterwards, and a short callback is not interrupted.
            let n: i64 = core
                .run(|| {
                    lua.load("local n = 0 for i = 1, 1000 do n = n + i end return n")
                        .eval()
                })
                .unwrap();
            let _ = tx.send((err.to_string(), traced, node.budget.exceeded(), n));
        });
        let (err, traced, exceeded, n) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect(
            "a compiled loop was not interrupted: is LuaJIT built with LUAJIT_ENABLE_CHECKHOOK?",
        );
        assert!(err.contains("CPU budget of 50 ms exceeded"), "{err}");
        assert!(traced, "the loop was never compiled");
        assert_eq!(exceeded, 1);
        assert_eq!(n, 500_500);
    }

    #[test]
    fn a_stale_interrupt_only_removes_itself() {
        let node = node(50);
        let lua = lua();
        let _core = CoreBudget::attach(&lua, &node, 0).expect("a budget");
        // As if the budget thread had interrupted a callback that has returned since.
        let mut state = std::ptr::null_mut();
        // SAFETY: records the main state, as attach does.
        unsafe { lua.exec_raw::<()>((), |l| state = l) }.unwrap();
        // SAFETY: on the state's own thread.
        unsafe { ffi::lua_sethook(state, Some(hook), ffi::LUA_MASKCOUNT, 1) };
        let n: i64 = lua.load("return 1 + 1").eval().unwrap();
        assert_eq!(n, 2);
        assert_eq!(node.budget.exceeded(), 0);
    }

    #[test]
    fn no_budget_when_cpu_is_zero() {
        let node = node(0);
        assert!(CoreBudget::attach(&lua(), &node, 0).is_none());
    }
}
