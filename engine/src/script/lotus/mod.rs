//! lotus's Lua side (spec/lotus.md §9.1–9.2): the sandbox handlers are compiled and run in,
//! inside the core's own LuaJIT state. The wires, the configuration and the channel rings are
//! plain data in `service::lotus`.

pub mod files;
pub mod listen;
pub mod posts;
pub mod redis;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod value;
