//! The STAGE engine: configuration, the thread-per-core runtime, TCP networking and framing,
//! the BSON codec, and the LuaJIT host that runs game scripts. The `stage` binary
//! (`engine/bin/stage.rs`) is a thin wrapper around [`cli::main`].
//!
//! Module map (one concept each; see ARCHITECTURE.md for the invariants):
//! - [`config`]  — parse and validate the JSON configuration, named key paths in errors.
//! - [`codec`]   — BSON <-> Lua values, and the `packet`/`text`/raw framings.
//! - [`net`]     — broker URLs, binary socket addresses, listeners and connections.
//! - [`core`]    — one pinned glommio executor per core, cross-core mailboxes, shutdown.
//! - [`script`]  — the per-core LuaJIT state, the prelude, `stage.load`, the logger.
//! - [`service`] — built-in services (index.so, `=ticket`, `=route`) as core-local state machines.
//! - [`supervisor`] — the multi-process node: start, watch and restart the child processes.
//! - [`cli`]     — command line: run, `--check`, embedded default configuration.

pub mod cli;
pub mod codec;
pub mod config;
pub mod net;
pub mod node;
pub mod notify;
pub mod plan;
pub mod script;
pub mod service;
pub mod supervisor;
