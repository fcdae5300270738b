//! Accepting and joining. Every core runs its own accept loop on its own SO_REUSEPORT socket
//! for each listener, so the kernel spreads connections over cores; the connection then
//! belongs to the accepting core for life. `broker.join` connects from the calling core.
//!
//! A new connection first passes its listener's [`Gate`] (`maxconn`, `perip`): over a cap it
//! is closed at once, before the owner hears of it. On a WebSocket listener it then runs its
//! HTTP upgrade ([`super::ws`]) before the owner hears of it; on a TCP listener it is served
//! at once. Running out of descriptors on `accept`
//! (EMFILE/ENFILE) backs the loop off instead of letting it spin.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};

use super::admission::{Gate, Ticket};
use super::conn::{self, Conn};
use super::url::BrokerUrl;
use super::{ws, ConnEvents};
use crate::codec::framing::FrameSpec;
use crate::notify::Notify;

/// Where `join` connects: an address, or a URL whose host name is looked up first.
pub enum Destination {
    Address(SocketAddr),
    Name(BrokerUrl),
}

impl Destination {
    /// An IP literal host resolves at once (no lookup); a name is looked up by `join`.
    pub fn of(url: BrokerUrl) -> std::io::Result<Destination> {
        if names_an_address(&url) {
            resolve(&url).map(Destination::Address)
        } else {
            Ok(Destination::Name(url))
        }
    }
}

/// Whether a broker URL's host is an IP literal (no lookup needed).
fn names_an_address(url: &BrokerUrl) -> bool {
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_ok()
}

/// Resolves a broker URL's host to the first socket address.
pub fn resolve(url: &BrokerUrl) -> std::io::Result<SocketAddr> {
    if !names_an_address(url) {
        super::lookup::before(&url.host)?;
    }
    url.authority()
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "host has no address"))
}

/// An IPv4 client of a dual-stack (`[::]`) listener shows up as `::ffff:a.b.c.d`; scripts
/// (ban lists, logs) expect the plain IPv4 address.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// SO_REUSEPORT lets a second program bind a port another one listens on, and the kernel
/// then splits new connections between them: a `stage` started twice by mistake would
/// silently take half of the first one's players. A plain bind (no SO_REUSEPORT) tells
/// whether someone is there; it is a warning, not an error, because starting the new node
/// before stopping the old one is also how a restart without downtime is done. (Not checked
/// in a multi-process node, whose processes share their ports on purpose.)
///
/// The probe binds without listening: a listening probe (std's `TcpListener::bind`) would,
/// for the instant it exists, take connections of clients already knocking on the port
/// (a restart while players reconnect) and reset them when it closes.
pub fn warn_if_taken(addr: SocketAddr) {
    if addr.port() == 0 {
        return;
    }
    if let Err(err) = bind_probe(addr) {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            tracing::warn!(
                "another program is already listening on {addr}: both will accept on it (SO_REUSEPORT) and new connections are split between them; stop the other one unless this is a restart without downtime"
            );
        }
    }
}

/// Binds a plain TCP socket to `addr` (SO_REUSEADDR, as std does, so connections of an
/// earlier run in TIME_WAIT do not count; no SO_REUSEPORT; no listen) and closes it.
fn bind_probe(addr: SocketAddr) -> std::io::Result<()> {
    let raw = super::sockaddr::to_binary(&super::sockaddr::SockAddr::Inet(addr));
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2)/setsockopt(2)/bind(2)/close(2) on a descriptor this function
    // owns; `raw` is a sockaddr of the family given, `raw.len()` bytes long.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let rc = libc::bind(
            fd,
            raw.as_ptr().cast::<libc::sockaddr>(),
            raw.len() as libc::socklen_t,
        );
        let result = if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(fd);
        result
    }
}

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(std::io::Error::from)
}

/// The first pause after a failed `accept` (EMFILE: out of descriptors); it doubles on each
/// further failure up to [`ACCEPT_BACKOFF_MAX`] and starts over after a success.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// What an accept loop serves: the listener's id (reported with each accepted client), the
/// address every core binds, the framing its connections use and its limits.
#[derive(Clone)]
pub struct Endpoint {
    pub id: u64,
    pub addr: SocketAddr,
    pub frame: FrameSpec,
    pub gate: Arc<Gate>,
    /// `Some(path)` on a `ws://` listener: the path its HTTP upgrade must request.
    pub websocket: Option<Arc<str>>,
}

/// Accepts on `endpoint` (on `prebound` when this core already bound it) until `stop`
/// fires; each client becomes a connection of `events`, served by its own task.
pub async fn accept_loop<H: ConnEvents>(
    events: Rc<H>,
    endpoint: Endpoint,
    prebound: Option<TcpListener>,
    stop: Notify,
) {
    let listener = match prebound {
        Some(listener) => listener,
        None => match bind(endpoint.addr) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(listener = endpoint.id, addr = %endpoint.addr, "cannot listen on this core: {err}");
                return;
            }
        },
    };
    tracing::debug!(listener = endpoint.id, addr = %endpoint.addr, "accepting");
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accept(&events, &endpoint, stream);
            }
            Some(Err(err)) => {
                // Out of descriptors (EMFILE/ENFILE), the pending connection stays in the
                // backlog and accept fails again at once: retrying straight away would spin
                // the core. Wait, longer while it goes on, until descriptors are free.
                endpoint
                    .gate
                    .accept_failed(&std::io::Error::from(err), backoff);
                let pause = glommio::timer::sleep(backoff);
                if futures_lite::future::or(
                    async {
                        pause.await;
                        false
                    },
                    async {
                        stop.wait().await;
                        true
                    },
                )
                .await
                {
                    break;
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    tracing::debug!(listener = endpoint.id, "stopped accepting");
}

fn accept<H: ConnEvents>(events: &Rc<H>, endpoint: &Endpoint, stream: TcpStream) {
    let peer = stream.peer_addr().ok().map(canonical);
    // Over a cap: dropping the stream closes it before anything of it was read, and the
    // owner (the scripts) never hears of it. The gate counts and logs it.
    let Ok(ticket) = endpoint.gate.admit(peer.map(|p| p.ip())) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    if let Some(path) = &endpoint.websocket {
        // The upgrade holds the ticket, so handshakes in progress count against the caps.
        glommio::spawn_local(ws::upgrade(
            events.clone(),
            endpoint.clone(),
            path.clone(),
            stream,
            peer,
            ticket,
        ))
        .detach();
        return;
    }
    if let Some(conn) = admit(events, endpoint, &stream, peer, ticket) {
        glommio::spawn_local(conn::serve(events.clone(), conn, stream)).detach();
    }
    // Refused: dropping the stream closes it before anything of it was read.
}

/// Makes the connection object of an accepted client holding `ticket` and asks the owner
/// whether it takes it; `None` when the accept callback refused it (its places are free
/// then, whoever still holds the connection object).
pub(super) fn admit<H: ConnEvents>(
    events: &Rc<H>,
    endpoint: &Endpoint,
    stream: &TcpStream,
    peer: Option<SocketAddr>,
    ticket: Ticket,
) -> Option<Rc<Conn>> {
    let conn = Conn::new(events.next_conn_id(), endpoint.frame);
    conn.peer.set(peer);
    conn.local.set(stream.local_addr().ok().map(canonical));
    conn.frame_deadline.set(
        endpoint
            .gate
            .limits
            .deadline()
            .map(|d| d.as_millis() as u64),
    );
    conn.admit(ticket);
    conn.count_in(events.stats(Some(endpoint.id)));
    if events.accepted(endpoint.id, &conn) {
        Some(conn)
    } else {
        conn.release();
        conn.count_refused();
        None
    }
}

/// Starts a TCP connect for a connection the owner already registered (`broker.join`):
/// `connected` when it is up, or `closed` with the lookup's or the connect's error.
pub fn join<H: ConnEvents>(events: &Rc<H>, conn: Rc<Conn>, to: Destination, timeout: Duration) {
    let events = events.clone();
    glommio::spawn_local(async move {
        // glommio polls a new task at once: let `broker.join` return its socket object
        // before any callback of that socket can run.
        futures_lite::future::yield_now().await;
        conn.count_in(events.stats(None));
        let addr = match to {
            Destination::Address(addr) => addr,
            Destination::Name(url) => {
                // getaddrinfo blocks (it may ask a DNS server): glommio's blocking thread
                // runs it while this core serves on.
                match glommio::executor()
                    .spawn_blocking(move || resolve(&url))
                    .await
                {
                    Ok(addr) => addr,
                    Err(err) => {
                        tracing::debug!(socket = conn.id.raw(), "lookup failed: {err}");
                        conn::finish(&events, &conn, conn::errno_of(&err));
                        return;
                    }
                }
            }
        };
        match TcpStream::connect_timeout(addr, timeout).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                conn.peer.set(stream.peer_addr().ok().map(canonical));
                conn.local.set(stream.local_addr().ok().map(canonical));
                events.connected(&conn);
                conn::serve(events, conn, stream).await;
            }
            Err(err) => {
                let err = std::io::Error::from(err);
                tracing::debug!(socket = conn.id.raw(), %addr, "connect failed: {err}");
                conn::finish(&events, &conn, conn::errno_of(&err));
            }
        }
    })
    .detach();
}
