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
