//! UDP endpoints (`broker.ready("udp://host:port?filter=IN,OUT", receive)`, spec/stage.md
//! §4.2-4.3, 4.6). Like a TCP listener, every core binds its own SO_REUSEPORT socket for the
//! endpoint, so the kernel spreads datagrams over cores (by the sender's address, so one
//! client's datagrams keep landing on the same core, in order). Each datagram is one message:
//! framed as the filter says (`packet`: exactly one frame, whose length is the datagram's),
//! handed to the receive callback with the sender's address, and whatever the callback
//! returns is sent back to that address.
//!
//! Sending never waits: each core keeps a plain non-blocking duplicate of its socket for
//! `socket.commit(v, addr)`, and one unbound socket per address family for
//! `broker.signal(addr, table)`. A datagram the kernel cannot take at once is dropped and
//! counted — UDP promises no more, and a core must never block.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::Duration;

use glommio::net::UdpSocket;

use super::listener::Endpoint;
use super::ConnEvents;
use crate::codec::framing::Framing;
use crate::notify::Notify;

thread_local! {
    /// Sockets bound by `broker.ready` on this core, waiting for their receive loop.
    static PREBOUND: RefCell<HashMap<u64, UdpSocket>> = RefCell::new(HashMap::new());
    /// This core's sending side of each endpoint (a non-blocking duplicate of its socket).
    static SENDERS: RefCell<HashMap<u64, StdUdpSocket>> = RefCell::new(HashMap::new());
    /// Unbound sockets for `broker.signal(addr, table)`: IPv4, IPv6.
    static LOOSE: RefCell<(Option<StdUdpSocket>, Option<StdUdpSocket>)> =
        const { RefCell::new((None, None)) };
}

/// Binds an endpoint. A multicast IPv4 address binds the port on every interface and joins
/// the group (spec §4.1: "UDP to a multicast IPv4 address joins the group").
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    match addr.ip() {
        IpAddr::V4(group) if group.is_multicast() => {
            let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            let socket = UdpSocket::bind(any).map_err(std::io::Error::from)?;
            socket
                .join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)
                .map_err(std::io::Error::from)?;
            Ok(socket)
        }
        _ => UdpSocket::bind(addr).map_err(std::io::Error::from),
    }
}

pub fn prebind(id: u64, socket: UdpSocket) {
    PREBOUND.with(|p| p.borrow_mut().insert(id, socket));
}

/// A non-blocking duplicate of `socket` for sending from natives (which cannot await).
fn sender_of(socket: &UdpSocket) -> std::io::Result<StdUdpSocket> {
    // SAFETY: dup(2) of a descriptor we own; the new descriptor is owned by the result.
    let fd = unsafe { libc::dup(socket.as_raw_fd()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    let sender = unsafe { StdUdpSocket::from_raw_fd(fd) };
    sender.set_nonblocking(true)?;
    Ok(sender)
}

/// This core's receive loop for `endpoint`, until `stop` fires: each datagram that is one
/// message goes to `events.datagram`.
pub async fn serve<H: ConnEvents>(events: Rc<H>, endpoint: Endpoint, stop: Notify) {
    let id = endpoint.id;
    let socket = match PREBOUND.with(|p| p.borrow_mut().remove(&id)) {
        Some(socket) => socket,
        None => match bind(endpoint.addr) {
            Ok(socket) => socket,
            Err(err) => {
                tracing::error!(listener = id, addr = %endpoint.addr, "cannot bind udp on this core: {err}");
                return;
            }
        },
    };
    match sender_of(&socket) {
        Ok(sender) => {
            SENDERS.with(|s| s.borrow_mut().insert(id, sender));
        }
        Err(err) => tracing::error!(listener = id, "udp: no sending socket on this core: {err}"),
    }
    // One byte more than the largest message: a datagram that fills it was cut short.
    let mut buf = vec![0u8; endpoint.frame.input + 1];
    loop {
        let received =
            futures_lite::future::or(async { Some(socket.recv_from(&mut buf).await) }, async {
                stop.wait().await;
                None
            })
            .await;
        match received {
            None => break,
            Some(Ok((n, peer))) => {
                if is_one_message(&endpoint, &buf[..n], n == buf.len()) {
                    // Straight from the receive buffer: no copy per datagram.
                    events.datagram(id, &buf[..n], endpoint.frame.framing, peer);
                }
            }
            Some(Err(err)) => {
                tracing::warn!(listener = id, "udp receive failed: {err}");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    SENDERS.with(|s| s.borrow_mut().remove(&id));
    tracing::debug!(listener = id, "udp endpoint closed on this core");
}

/// Whether a datagram is one message (if not, it is logged at debug and dropped): not cut
/// short, and in `packet` framing exactly one frame.
fn is_one_message(endpoint: &Endpoint, bytes: &[u8], truncated: bool) -> bool {
    if truncated {
        tracing::debug!(
            listener = endpoint.id,
            "udp datagram larger than the input size {} dropped",
            endpoint.frame.input
        );
        return false;
    }
    if endpoint.frame.framing == Framing::Packet {
        let declared = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        if declared != Some(bytes.len()) || bytes.len() <= 4 {
            tracing::debug!(
                listener = endpoint.id,
                "udp datagram of {} bytes is not one packet frame: dropped",
                bytes.len()
            );
            return false;
        }
    }
    true
}

/// Sends `bytes` to `to` from this core's socket of endpoint `id`.
pub fn send(id: u64, bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    SENDERS.with(|s| match s.borrow().get(&id) {
        Some(sender) => sender.send_to(bytes, to),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "this udp socket is closed (or not open on this core)",
        )),
    })
}

/// Sends `bytes` to `to` from an unbound socket of this core (`broker.signal(addr, v)`).
pub fn send_loose(bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    LOOSE.with(|l| {
        let mut l = l.borrow_mut();
        let slot = if to.is_ipv4() { &mut l.0 } else { &mut l.1 };
        if slot.is_none() {
            let any: SocketAddr = if to.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = StdUdpSocket::bind(any)?;
            socket.set_nonblocking(true)?;
            *slot = Some(socket);
        }
        slot.as_ref().map_or(Ok(0), |s| s.send_to(bytes, to))
    })
}
