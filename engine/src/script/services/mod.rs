//! The glue between Lua and the built-in services of `crate::service`: one module per
//! service, each turning a Lua message into the service's commands and its outputs back into
//! values the prelude sends on. The services themselves know no Lua.
//!
//! - [`index`] — `E.index_call`: index.so messages on the owning core's shard.
//! - [`timed`] — `E.ticket_call` / `E.route_call` / `E.service_tick`: `=ticket` and `=route`.
//! - [`http`]  — `E.http_call` / `E.http_reply`: curl.so requests and their replies.
//! - [`odbc`]  — `E.odbc_*`: odbc adapters and result sets (blocking pool threads only).

pub mod http;
pub mod index;
pub mod odbc;
pub mod timed;
