//! The STAGE engine: configuration, the thread-per-core runtime, TCP networking and framing,
//! the BSON codec, and the LuaJIT host that runs game scripts. The `stage` binary
//! (`engine/bin/stage.rs`) is a thin wrapper around `cli::main`.

pub mod codec;
pub mod config;
