//! The per-OS-thread connection pool (spec §1.3): `key → deque of idle connections`, where the
//! key is the `%odbc` name (or the raw string given to `odbc.new`). Each blocking worker thread
//! runs one Lua state, so the pool is thread-local and takes no lock. Acquire pops from the
//! front, discarding connections the driver reports dead, and connects when none is left;
//! release (from `Adapter`) pushes live connections to the back — the intended behaviour, not
//! the original's lookup-by-string bug that disconnected them.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use odbc_api::Connection;

use super::adapter::Adapter;
use super::config::ConnectionConfig;
use super::env::connect;
use super::error::OdbcError;

thread_local! {
    static POOL: RefCell<HashMap<String, VecDeque<Connection<'static>>>> =
        RefCell::new(HashMap::new());
}

/// An adapter on a pooled connection for `key`, reusing an idle live one when there is one.
pub fn acquire(key: &str, cfg: &ConnectionConfig) -> Result<Adapter, OdbcError> {
    let conn = match pop_live(key) {
        Some(conn) => conn,
        None => connect(cfg)?,
    };
    Ok(Adapter::wrap(conn, Some(key.to_string()), cfg))
}

/// The first idle connection the driver does not report dead; dead ones are dropped
/// (disconnected). A driver that cannot tell is trusted: a broken link fails on execute.
fn pop_live(key: &str) -> Option<Connection<'static>> {
    while let Some(conn) = pop_front(key) {
        if !conn.is_dead().unwrap_or(false) {
            return Some(conn);
        }
        tracing::warn!("[SQL] dropping a dead pooled connection for {key}");
    }
    None
}

fn pop_front(key: &str) -> Option<Connection<'static>> {
    POOL.with(|p| p.borrow_mut().get_mut(key).and_then(VecDeque::pop_front))
}

/// Puts a connection (its transaction already ended) back for reuse, or drops it when dead or
/// when the thread is shutting down and its pool is gone.
pub(crate) fn release(key: String, conn: Connection<'static>) {
    if conn.is_dead().unwrap_or(false) {
        return;
    }
    let rejected = POOL.try_with(|p| p.borrow_mut().entry(key).or_default().push_back(conn));
    // On thread exit the connection was moved into the closure and dropped with it: fine.
    let _ = rejected;
}

/// Idle connections this thread holds for `key` (for tests and diagnostics).
pub fn pooled_count(key: &str) -> usize {
    POOL.with(|p| p.borrow().get(key).map_or(0, VecDeque::len))
}

/// Disconnects every idle connection of this thread (e.g. before the worker exits).
pub fn purge_thread_pool() {
    let idle = POOL.with(|p| std::mem::take(&mut *p.borrow_mut()));
    drop(idle);
}
