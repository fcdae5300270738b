//! The Lua side of a core, and the only module that names mlua: the LuaJIT state, the
//! prelude and the natives behind it, the libraries scripts see (bundle, logger, sockaddr),
//! BSON <-> Lua values, the blocking pool's states, and the glue to the built-in services.
//! It implements `node::host::ScriptHost`, the trait through which a core drives its Lua
//! state; the node layer below knows no Lua.

pub mod bson;
pub mod budget;
pub mod bundle;
pub mod check;
pub mod cluster;
pub mod crypto;
#[cfg(test)]
mod decoder_props;
pub mod fastpath;
pub mod host;
pub mod image;
pub mod library;
pub mod loader;
pub mod logger;
pub mod lotus;
pub mod messaging;
pub mod natives;
pub mod pool;
pub mod reload;
pub mod services;
pub mod shared;
pub mod sockaddr;

/// Scripts compiled into the binary, served under `@builtin/`: the seed's v1 example (the
/// embedded default configuration runs it) and the helper libraries.
pub static EMBEDDED: crate::plan::Embedded = &[
    (
        "v1/start.lua",
        include_str!("../../lua/examples/v1/start.lua"),
    ),
    (
        "v1/packet.lua",
        include_str!("../../lua/examples/v1/packet.lua"),
    ),
    // `"%package": ["@builtin/lib", ...]` makes `stage.require("index")` find the index.so helper.
    ("lib/index.lua", include_str!("../../lua/lib/index.lua")),
    // ... and `stage.require("curl")` the curl.so helper.
    ("lib/curl.lua", include_str!("../../lua/lib/curl.lua")),
    // ... and `stage.require("lotus")` the lotus client (also `require("lotus")` anywhere).
    ("lib/lotus.lua", include_str!("../../lua/lib/lotus.lua")),
];
