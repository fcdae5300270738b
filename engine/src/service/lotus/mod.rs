//! lotus (spec/lotus.md): Lua states with handlers and channels with history, as a built-in
//! stage `lotus.so+NAME`. This module holds the parts that are plain data and need no Lua and
//! no I/O — the two wires and the channel history rings — so each is tested on its own (the
//! configuration block is read by `config::lotus`); the Lua side (the sandbox handlers run in, the states) lives in
//! `script::lotus`.

pub mod channel;
pub mod password;
pub mod wire;
