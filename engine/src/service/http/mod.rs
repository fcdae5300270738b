//! `curl.so`, the outbound HTTP(S) client (spec services.md §5), without its Lua wiring: the
//! configuration (`config`), the request as plain data and its timeout rule (`request`), the
//! reply and its curl result codes (`reply`), and the isahc-backed agent that turns one into
//! the other without blocking the core that polls it (`client`).

mod client;
mod config;
mod reply;
mod request;

#[cfg(test)]
mod tests;

pub use client::{HttpAgent, StartError, MAX_REDIRECTS};
pub use config::{default_user_agent, HttpConfig, DEFAULT_TIMEOUT, MAX_BODY};
pub use reply::{code, is_textual, parse_content_type, HttpData, HttpReply};
pub use request::{
    encode_form, timeouts, Body, FormValue, HttpRequest, Timeouts, MIN_CONNECT_TIMEOUT,
};
