//! The Lua side of a core: the LuaJIT state and the libraries scripts see.

pub mod logger;
