//! Built-in services (spec/services.md) as core-local Rust state machines; each is owned by one
//! core and reached by messages.

pub mod index;
