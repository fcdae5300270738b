//! Networking: broker URLs, binary socket addresses, connection ids, listeners, connections
//! (TCP, and WebSocket through `ws`) and UDP endpoints. This layer runs sockets and framing and knows nothing of cores or Lua:
//! whoever owns the connections (a core, or a test) implements [`ConnEvents`] and is told
//! what happens on them.

mod addr_cell;
pub mod admission;
pub mod conn;
mod due;
pub mod id;
pub mod listener;
pub mod lookup;
pub mod ratelog;
pub mod sockaddr;
pub mod stats;
pub mod udp;
pub mod url;
pub mod ws;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod ws_tests;

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;

use crate::codec::framing::Framing;
use conn::Conn;
use id::ConnId;

/// What the owner of connections does with their events. The accept loop, the connection
/// task and the UDP receive loop call these on the owner's thread, one at a time; the
/// owner may call back into the connection (commit, close) from inside any of them.
pub trait ConnEvents: 'static {
    /// A fresh id for a connection this owner accepts or opens.
    fn next_conn_id(&self) -> ConnId;
    /// Where the traffic of a connection of listener `listener` (`None`: an outgoing
    /// `broker.join` connection) is counted; asked once per connection, never per packet.
    /// An owner that keeps no counters gets a fresh set for each connection.
    fn stats(&self, listener: Option<u64>) -> Rc<stats::IoStats> {
        let _ = listener;
        Rc::default()
    }
    /// A client was accepted on listener `listener`. `false` refuses it: it is closed at
    /// once, without a `closed` event and before any of its input is read.
    fn accepted(self: &Rc<Self>, listener: u64, conn: &Rc<Conn>) -> bool;
    /// An outgoing connection (`broker.join`) is established.
    fn connected(self: &Rc<Self>, conn: &Rc<Conn>);
    /// One complete frame, cut without a copy. An error (the frame cannot be decoded)
    /// closes this connection with EBADMSG and is logged.
    fn frame(self: &Rc<Self>, conn: &Rc<Conn>, frame: Bytes) -> Result<(), String>;
    /// The connection ended (`errno` 0 = an orderly close); once per connection that was
    /// accepted or joined. Its output has been flushed as far as the peer allowed.
    fn closed(self: &Rc<Self>, conn: &Rc<Conn>, errno: i32);
    /// One UDP datagram on endpoint `endpoint`, already checked to be one message.
    fn datagram(self: &Rc<Self>, endpoint: u64, message: &[u8], framing: Framing, from: SocketAddr);
}
