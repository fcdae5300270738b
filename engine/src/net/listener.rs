//! Accepting and joining. Every core runs its own accept loop on its own SO_REUSEPORT socket
//! for each listener, so the kernel spreads connections over cores; the connection then
//! belongs to the accepting core for life. `broker.join` connects from the calling core.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};

use super::conn::{self, Conn};
use super::url::BrokerUrl;
use crate::node::notify::Notify;
use crate::node::runtime::Core;
use crate::node::ListenerShared;

/// Resolves a broker URL's host to the first socket address.
pub fn resolve(url: &BrokerUrl) -> std::io::Result<SocketAddr> {
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
pub fn warn_if_taken(addr: SocketAddr) {
    if addr.port() == 0 {
        return;
    }
    if let Err(err) = std::net::TcpListener::bind(addr) {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            tracing::warn!(
                "another program is already listening on {addr}: both will accept on it (SO_REUSEPORT) and new connections are split between them; stop the other one unless this is a restart without downtime"
            );
        }
    }
}

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(std::io::Error::from)
}

pub async fn accept_loop(core: Rc<Core>, shared: Arc<ListenerShared>, stop: Notify) {
    let listener = match core.take_prebound(shared.id) {
        Some(listener) => listener,
        None => match bind(shared.addr) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(listener = shared.id, addr = %shared.addr, "cannot listen on this core: {err}");
                return;
            }
        },
    };
    tracing::debug!(listener = shared.id, addr = %shared.addr, "accepting");
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => accept(&core, &shared, stream),
            Some(Err(err)) => {
                // Running out of descriptors must not spin the core: back off briefly.
                tracing::warn!(listener = shared.id, "accept failed: {err}");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracing::debug!(listener = shared.id, "stopped accepting");
}

fn accept(core: &Rc<Core>, shared: &Arc<ListenerShared>, stream: TcpStream) {
    let id = core.next_conn_id();
    let _ = stream.set_nodelay(true);
    let conn = Conn::new(id, shared.url.frame);
    conn.peer.set(stream.peer_addr().ok().map(canonical));
    conn.local.set(stream.local_addr().ok().map(canonical));
    {
        let props = shared.props.lock().unwrap();
        conn.expire_ms.set(props.expire);
        conn.commit_ms.set(props.commit);
    }
    core.add_conn(conn.clone());
    let accepted = core.host.dispatch_accept(shared.id, shared.stage, &conn);
    core.after_lua();
    if !accepted {
        core.remove_conn(id);
        return;
    }
    glommio::spawn_local(conn::serve(core.clone(), conn, stream)).detach();
}

/// Starts a TCP connect for an already-registered connection (`broker.join`).
pub fn join(core: &Rc<Core>, conn: Rc<Conn>, addr: SocketAddr, timeout: Duration) {
    let core = core.clone();
    glommio::spawn_local(async move {
        // glommio polls a new task at once: let `broker.join` return its socket object
        // before any callback of that socket can run.
        futures_lite::future::yield_now().await;
        match TcpStream::connect_timeout(addr, timeout).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                conn.peer.set(stream.peer_addr().ok().map(canonical));
                conn.local.set(stream.local_addr().ok().map(canonical));
                core.host.dispatch_connected(conn.id, &conn);
                core.after_lua();
                conn::serve(core, conn, stream).await;
            }
            Err(err) => {
                let err = std::io::Error::from(err);
                tracing::debug!(socket = conn.id, %addr, "connect failed: {err}");
                conn::finish(&core, &conn, conn::errno_of(&err));
            }
        }
    })
    .detach();
}
