//! Networking: broker URLs, binary socket addresses, listeners and connections.

pub mod conn;
pub mod listener;
pub mod sockaddr;
pub mod udp;
pub mod url;
