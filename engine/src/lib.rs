//! The STAGE engine: configuration, the thread-per-core runtime, TCP/UDP networking and
//! framing, and the LuaJIT host that runs game scripts. The `stage` binary
//! (`stage/src/main.rs`) is a thin wrapper around [`cli::main`].
//!
//! Module map, top layer first; a module uses only the layers below it (ARCHITECTURE.md
//! "Layers"; `tests/layers.rs` keeps it so):
//! - [`cli`], [`supervisor`] — the command line and its roles; the multi-process supervisor.
//! - [`script`]  — the only Lua: per-core LuaJIT states, prelude, natives, bundle, logger,
//!   BSON <-> Lua, the blocking pool, the glue to the services. Implements
//!   [`node::host::ScriptHost`].
//! - [`admin`]   — the `#admin` endpoint: Prometheus metrics, status JSON, reload, the
//!   console page, on its own `stage-admin` thread; reaches the cores through their inboxes.
//! - [`cluster`] — stages of other nodes through NATS: membership heartbeats, a member
//!   registry, the `stage-nats` thread that bridges the client to the cores' inboxes.
//! - [`node`]    — one pinned glommio executor per core, inboxes, peers, locks, timers,
//!   service shards, shutdown; drives a `ScriptHost`, knows no Lua.
//! - [`net`]     — broker URLs, socket addresses, connection ids, listeners, connections,
//!   UDP; reports to a [`net::ConnEvents`] owner, knows no core.
//! - [`plan`]    — what this process runs, built once from the configuration.
//! - [`service`] — built-in services (index.so, `=ticket`, `=route`, curl.so, odbc).
//! - [`codec`], [`config`], [`notify`], [`logging`] — framing; the JSON configuration; a
//!   core-local event; where log lines go.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod logging;
pub mod net;
pub mod node;
pub mod notify;
pub mod plan;
pub mod script;
pub mod service;
pub mod supervisor;
