//! End-to-end tests: every test starts the real `stage` binary and talks to it over loopback
//! sockets, as a game client would. One test binary, so tests that need the examples' fixed
//! port can serialize on one lock.

mod harness;

mod admin;
mod bson_limits;
mod budget;
mod cli;
mod cluster;
mod crypto;
mod curl;
mod deploy;
mod examples;
mod ffi_path;
mod framing;
mod front_door;
mod index;
mod lobby;
mod logs;
mod lotus;
mod messaging;
mod odbc;
mod packets;
mod processes;
mod redis_server;
mod reload;
mod route;
mod scripts;
mod shared;
mod threads;
mod ticket;
mod udp;
mod websocket;
