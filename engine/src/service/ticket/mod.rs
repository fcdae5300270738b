//! `=ticket` (spec services.md §3): named pools of slots with 1 s leases, for concurrency caps
//! ("at most 10 DB logins") and fixed-size groups. `parse` splits command keys, `config` reads
//! the `=ticket` block, `command` is the service's input and output, `service` the state.

mod category;
mod command;
mod config;
mod parse;
mod service;
#[cfg(test)]
mod tests;

pub use command::{Outcome, Refusal, TicketCommand, TicketMessage, TicketOutput};
pub use config::{TicketConfig, DEFAULT_CAPACITY};
pub use parse::{command_key, parse_key, KeyError, LeaseId, TicketKey};
pub use service::{TicketService, LEASE};
