//! Built-in services (spec/services.md) as core-local Rust state machines; each is owned by one core and reached by messages.
//!
//! `=ticket` and `=route` do no I/O: a command goes in with the current time and the sender's
//! reply address, and the messages to send come out; index.so keeps its rankings in memory and
//! its log and snapshots in its directory. `tick` runs what is due (lease expiry, offer
//! timeouts) and `next_deadline` says when that is, so the owning core can sleep until then.
//! `http` (curl.so) is the exception that talks to the network: its futures wait on isahc's
//! own thread, so a core polls them without blocking.

mod address;
pub mod http;
pub mod index;
pub mod lotus;
pub mod odbc;
pub mod route;
pub mod shard;
pub mod ticket;

pub use address::{reply_key, Payload, Requester};
