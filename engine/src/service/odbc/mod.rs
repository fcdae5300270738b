//! The `odbc` service's Rust core (spec/services.md §1.1–§1.4): config parsing, the process-wide
//! ODBC environment, the per-OS-thread connection pool and the adapter that executes statements
//! with bound parameters and reads back whole result sets. Every call blocks: the Lua binding
//! (`script::services::odbc`, `engine/lua/prelude/odbc.lua`) serves them only in the blocking pool's Lua
//! states, never on a core (DESIGN.md principle 5). There is no Lua here; values cross as the
//! plain `Value` enum.

mod adapter;
pub mod cache;
mod config;
mod env;
mod error;
mod params;
mod pool;
mod result;
#[cfg(test)]
mod tests;

pub use adapter::Adapter;
pub use config::{ConnectionConfig, Dialect, OdbcConfig};
pub use env::environment;
pub use error::OdbcError;
pub use params::{Direction, Kind, ParamSpec};
pub use pool::{acquire, pooled_count, purge_thread_pool};
pub use result::{Column, ResultSet, Value};

/// Statements executed, process-wide, for the metrics: `[succeeded, failed]`. ODBC runs on
/// the blocking pool's threads, never on a core or the packet path, and a statement costs a
/// round trip to a database, so one relaxed atomic add per statement is nothing there.
pub static QUERIES: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// Counts one executed statement in [`QUERIES`].
pub fn count_query(ok: bool) {
    QUERIES[usize::from(!ok)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
