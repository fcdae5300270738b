//! Networking: broker URLs, binary socket addresses, listeners and connections.

pub mod sockaddr;
