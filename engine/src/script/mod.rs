//! The Lua side of a core: the LuaJIT state and the libraries scripts see.

pub mod bundle;
pub mod fastpath;
pub mod host;
pub mod http_service;
pub mod loader;
pub mod logger;
pub mod messaging;
pub mod natives;
pub mod odbc_lua;
pub mod services;
pub mod shared;
pub mod timed_services;
