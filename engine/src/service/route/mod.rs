//! `=route` (spec services.md §4): publish/subscribe with "first willing taker" delivery.
//! `parse` splits keys and tokens, `command` is the service's input and output,
//! `config` its block (keep-alive), `subscribers` the subscriber table with keep-alive, `service` the offers and delivery.

mod command;
mod config;
mod parse;
mod service;
mod subscribers;
#[cfg(test)]
mod tests;

pub use command::{RouteCommand, RouteMessage, RouteOutput, SubChange};
pub use config::RouteConfig;
pub use parse::{
    fallbacks, parse_claim, parse_key, parse_targets, with_ret, KeyError, OfferId, RouteKey,
    Target, Targets,
};
pub use service::{RouteService, OFFER_TIMEOUT};
pub use subscribers::KEEPALIVE;
