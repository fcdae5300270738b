//! A publish-only NATS connection that the cores write to themselves. Through the
//! `stage-nats` thread, every cross-node message cost a hand-over per direction (the core
//! wakes the thread, the thread wakes async-nats's connection task, which writes): the
//! thread's wake-up was most of a cross-node request's extra CPU (BENCHMARKS.md "Between nodes
//! through NATS"). Here a core writes the `PUB` itself, with one non-blocking `writev` on
//! the socket, as it sends a datagram to another process of its node.
//!
//! The connection carries no subscriptions: the `stage-nats` thread opens it (plain TCP,
//! `CONNECT` with the credentials of the URLs), answers the server's `PING`s, and writes what
//! a full socket buffer left over (`pending`, bounded). (The cores' own subscriptions,
//! `listen`, follow this connection to its server.) Whatever this cannot do falls back to
//! the thread's client: TLS, nkeys and credentials
//! files (`usable`), and any moment the connection is not open — before it is, after it
//! broke, while async-nats reconnects (the connection is closed on every disconnect event,
//! and reopened once the client is connected again). A message whose write fails was not
//! written at all and takes the thread's path, so it is still sent at most once.

use std::io::{IoSlice, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::ServerAddr;
use futures_lite::future;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::Cluster;

/// Bytes a full socket buffer may leave waiting for the thread to write; past it, a message
/// is unrouted rather than a process's memory growing behind a stalled server.
const MAX_PENDING: usize = 8 << 20;
/// How long opening the connection (TCP, `INFO`, `CONNECT`, `PING`/`PONG`) may take.
const HANDSHAKE: Duration = Duration::from_secs(2);
/// How long after a failed or broken connection it is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// The longest protocol line read from the server (`INFO` with a long server list).
const MAX_LINE: usize = 64 << 10;

#[derive(Default)]
pub(super) struct Direct {
    conn: Mutex<Option<Conn>>,
    /// Wakes the thread: bytes wait in `pending`.
    flush: Notify,
    /// Wakes the thread: async-nats is connected again, reopen now.
    reconnected: Notify,
    /// The server the connection is open to, while it is: the cores' own subscriptions
    /// (`listen`) connect there, so they follow the thread's connection from server to
    /// server without resolving names on a core.
    server: Mutex<Option<SocketAddr>>,
}

struct Conn {
    /// The socket the cores write to (the thread reads through another descriptor of it).
    stream: StdTcpStream,
    /// What the socket did not take yet, written by the thread; while it is not empty,
    /// later messages are appended to it so nothing overtakes.
    pending: Vec<u8>,
    /// The server's `max_payload`: a larger message would make it close the connection, so
    /// it takes the thread's path, where async-nats refuses it (counted as unrouted).
    max_payload: usize,
}

/// Whether the cores may publish themselves: only plain `nats://` servers without files to
/// authenticate with; the others keep going through async-nats, which speaks TLS and nkeys.
pub(super) fn usable(settings: &super::ClusterSettings) -> bool {
    let auth = &settings.auth;
    let files = auth.ca.is_some()
        || auth.cert.is_some()
        || auth.key.is_some()
        || auth.nkey.is_some()
        || auth.creds.is_some();
    !files
        && !settings.servers.is_empty()
        && settings.servers.iter().all(|url| {
            url.parse::<ServerAddr>()
                .is_ok_and(|a| a.scheme() == "nats" && !a.is_websocket())
        })
}

impl Direct {
    /// Publishes `payload` on `subject` (naming `reply`, the sending core's own subject, if
    /// any) if the connection is open: `Ok(false)` when it is not (the caller hands the
    /// message to the thread), `Err` when the message is unrouted.
    pub(super) fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) -> Result<bool, String> {
        let head = match reply {
            Some(reply) => format!("PUB {subject} {reply} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        let mut guard = self.conn.lock().unwrap();
        let Some(conn) = guard.as_mut().filter(|c| payload.len() <= c.max_payload) else {
            return Ok(false);
        };
        match conn.send(&[head.as_bytes(), payload, b"\r\n"]) {
            Ok(Sent::Written) => Ok(true),
            Ok(Sent::Queued) => {
                self.flush.notify_one();
                Ok(true)
            }
            Ok(Sent::Full) => Err("the direct NATS connection's send buffer is full".into()),
            // Nothing of it went out: the thread's client may still send it.
            Err(_) => {
                close(guard.take());
                Ok(false)
            }
        }
    }

    /// Closes the connection (async-nats lost the server: the cores take the thread's path,
    /// which counts them unrouted until it is back).
    pub(super) fn close(&self) {
        *self.server.lock().unwrap() = None;
        close(self.conn.lock().unwrap().take());
    }

    /// The server the connection is open to, if it is.
    pub(super) fn server(&self) -> Option<SocketAddr> {
        *self.server.lock().unwrap()
    }

    pub(super) fn reconnected(&self) {
        self.reconnected.notify_one();
    }
}

fn close(conn: Option<Conn>) {
    if let Some(conn) = conn {
        // The thread reads the other descriptor of this socket: it sees the end.
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    }
}

enum Sent {
    Written,
    Queued,
    Full,
}

impl Conn {
    /// Writes `parts` (at most 3) as one protocol message, or queues what the socket did not
    /// take.
    fn send(&mut self, parts: &[&[u8]]) -> std::io::Result<Sent> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if !self.pending.is_empty() {
            return Ok(self.queue(parts, 0, total));
        }
        let mut slices = [IoSlice::new(&[]); 3];
        for (slice, part) in slices.iter_mut().zip(parts) {
            *slice = IoSlice::new(part);
        }
        let slices = &slices[..parts.len().min(3)];
        loop {
            match (&self.stream).write_vectored(slices) {
                Ok(n) if n == total => return Ok(Sent::Written),
                Ok(n) => return Ok(self.queue(parts, n, total)),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(self.queue(parts, 0, total))
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Appends what is left of `parts` after the first `written` bytes to `pending`. A whole
    /// message past the bound is refused; the rest of one partly written always goes in
    /// (dropping it would cut the protocol stream).
    fn queue(&mut self, parts: &[&[u8]], written: usize, total: usize) -> Sent {
        if written == 0 && self.pending.len() + total > MAX_PENDING {
            return Sent::Full;
        }
        let mut skip = written;
        for part in parts {
            let from = skip.min(part.len());
            skip -= from;
            self.pending.extend_from_slice(&part[from..]);
        }
        Sent::Queued
    }
}

/// The thread's side, for as long as the process runs: opens the connection whenever
/// async-nats is connected and it is not open, and serves it until it breaks.
pub(super) async fn keep(cluster: Arc<Cluster>, addrs: Vec<ServerAddr>) {
    let Some(direct) = cluster.direct.as_ref() else {
        return;
    };
    while !cluster.stopping.load(Ordering::Acquire) {
        if cluster.connected.load(Ordering::Acquire) {
            match tokio::time::timeout(HANDSHAKE, open(&cluster, &addrs)).await {
                Ok(Ok((reader, writer, max_payload))) => {
                    *direct.server.lock().unwrap() = reader.peer_addr().ok();
                    *direct.conn.lock().unwrap() = Some(Conn {
                        stream: writer,
                        pending: Vec::new(),
                        max_payload,
                    });
                    if let Err(err) = serve(direct, &reader).await {
                        tracing::debug!(
                            "cluster member {}: direct NATS connection: {err}",
                            cluster.me
                        );
                    }
                    direct.close();
                }
                Ok(Err(err)) => tracing::debug!(
                    "cluster member {}: no direct NATS connection: {err}",
                    cluster.me
                ),
                Err(_) => tracing::debug!(
                    "cluster member {}: no direct NATS connection: the handshake timed out",
                    cluster.me
                ),
            }
        }
        future::or(tokio::time::sleep(RETRY), direct.reconnected.notified()).await;
    }
}

/// Connects to the first server that takes a plain `CONNECT`: the thread's descriptor of the
/// socket, the cores' one, and the server's `max_payload`.
async fn open(
    cluster: &Cluster,
    addrs: &[ServerAddr],
) -> std::io::Result<(TcpStream, StdTcpStream, usize)> {
    let mut last = std::io::Error::other("no server");
    for addr in addrs {
        match handshake(cluster, addrs, addr).await {
            Ok((stream, max_payload)) => {
                let std = stream.into_std()?;
                let writer = std.try_clone()?;
                return Ok((TcpStream::from_std(std)?, writer, max_payload));
            }
            Err(err) => last = err,
        }
    }
    Err(last)
}

async fn handshake(
    cluster: &Cluster,
    addrs: &[ServerAddr],
    addr: &ServerAddr,
) -> std::io::Result<(TcpStream, usize)> {
    let stream = TcpStream::connect((addr.host(), addr.port())).await?;
    // Each PUB goes out at once, as async-nats's own connection does.
    stream.set_nodelay(true)?;
    let mut lines = Lines::default();
    let max_payload = server_info(&lines.next(&stream).await?)?;
    let connect = connect_options(cluster, addrs, "publish");
    write_all(&stream, format!("CONNECT {connect}\r\nPING\r\n").as_bytes()).await?;
    loop {
        let line = lines.next(&stream).await?;
        match line.as_str() {
            "PONG" => return Ok((stream, max_payload)),
            "PING" => write_all(&stream, b"PONG\r\n").await?,
            err if err.starts_with("-ERR") => return Err(std::io::Error::other(line)),
            _ => {}
        }
    }
}

/// The server's `max_payload`, from its `INFO` line; an error when it is not a NATS server
/// or requires TLS.
pub(super) fn server_info(info: &str) -> std::io::Result<usize> {
    let info: serde_json::Value = info
        .strip_prefix("INFO ")
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| std::io::Error::other(format!("not a NATS server: {info}")))?;
    if info["tls_required"].as_bool() == Some(true) {
        return Err(std::io::Error::other("the server requires TLS"));
    }
    // The protocol's default when the server does not say.
    Ok(info["max_payload"]
        .as_u64()
        .map_or(super::MAX_PAYLOAD, |max| max as usize))
}

/// The `CONNECT` options of a plain connection of this member (`role` names it for the
/// server's monitoring), with the credentials of the URLs.
pub(super) fn connect_options(
    cluster: &Cluster,
    addrs: &[ServerAddr],
    role: &str,
) -> serde_json::Value {
    let mut connect = serde_json::json!({
        "verbose": false, "pedantic": false, "lang": "rust", "version": "stage",
        "protocol": 1, "echo": false, "headers": false, "no_responders": false,
        "name": format!("{} ({role})", cluster.me),
    });
    // As the client's options take them (`client::options`): the first URL that has some.
    if let Some(with) = addrs.iter().find(|a| a.username().is_some()) {
        let user = with.username().unwrap_or_default();
        match with.password() {
            Some(pass) => {
                connect["user"] = user.into();
                connect["pass"] = pass.into();
            }
            None => connect["auth_token"] = user.into(),
        }
    }
    connect
}

/// Reads the server's lines (`PING`, `INFO`, `-ERR`) and writes what waits in `pending`, until
/// the connection breaks or is closed.
async fn serve(direct: &Direct, stream: &TcpStream) -> std::io::Result<()> {
    let mut lines = Lines::default();
    loop {
        let readable = async { Some(stream.readable().await) };
        let flush = async {
            direct.flush.notified().await;
            None
        };
        match future::or(readable, flush).await {
            Some(ready) => {
                ready?;
                for line in lines.read(stream)? {
                    if line == "PING" {
                        pong(direct)?;
                    } else if line.starts_with("-ERR") {
                        return Err(std::io::Error::other(line));
                    }
                }
            }
            None => write_pending(direct, stream).await?,
        }
    }
}

fn pong(direct: &Direct) -> std::io::Result<()> {
    let mut guard = direct.conn.lock().unwrap();
    let conn = guard.as_mut().ok_or_else(closed)?;
    if let Sent::Queued = conn.send(&[b"PONG\r\n"])? {
        direct.flush.notify_one();
    }
    Ok(())
}

async fn write_pending(direct: &Direct, stream: &TcpStream) -> std::io::Result<()> {
    loop {
        {
            let mut guard = direct.conn.lock().unwrap();
            let conn = guard.as_mut().ok_or_else(closed)?;
            if conn.pending.is_empty() {
                return Ok(());
            }
            match stream.try_write(&conn.pending) {
                Ok(n) => {
                    conn.pending.drain(..n);
                    continue;
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
        stream.writable().await?;
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "closed")
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// The server's protocol lines, split at `\r\n`.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// The next whole line, waiting for it.
    async fn next(&mut self, stream: &TcpStream) -> std::io::Result<String> {
        loop {
            if let Some(line) = self.take() {
                return Ok(line);
            }
            stream.readable().await?;
            self.fill(stream)?;
        }
    }

    /// Every whole line the socket has now (none if it had nothing to read).
    fn read(&mut self, stream: &TcpStream) -> std::io::Result<Vec<String>> {
        self.fill(stream)?;
        Ok(std::iter::from_fn(|| self.take()).collect())
    }

    fn fill(&mut self, stream: &TcpStream) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        match stream.try_read(&mut chunk) {
            Ok(0) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) if self.buf.len() + n > MAX_LINE => {
                Err(std::io::Error::other("a protocol line too long"))
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn take(&mut self) -> Option<String> {
        let end = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 2);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(servers: &[&str]) -> super::super::ClusterSettings {
        super::super::ClusterSettings {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            auth: Default::default(),
            node: "a".into(),
            process: 1,
            notify: Duration::from_millis(100),
            expiry: Duration::from_millis(500),
            suspend: None,
        }
    }

    #[test]
    fn only_plain_servers_without_files_are_published_to_directly() {
        assert!(usable(&settings(&["nats://127.0.0.1:4222"])));
        assert!(usable(&settings(&["nats://u:p@h:1", "nats://h2:2"])));
        assert!(!usable(&settings(&["nats://h:1", "tls://h:2"])));
        assert!(!usable(&settings(&[])));
        let mut nkey = settings(&["nats://h:1"]);
        nkey.auth.nkey = Some("seed.nk".into());
        assert!(!usable(&nkey));
        let mut ca = settings(&["nats://h:1"]);
        ca.auth.ca = Some("ca.pem".into());
        assert!(!usable(&ca));
    }

    /// A message the socket takes in part is finished from `pending`, byte for byte, and
    /// later messages queue behind it.
    #[test]
    fn what_the_socket_did_not_take_is_queued_in_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = StdTcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut conn = Conn {
            stream,
            pending: Vec::new(),
            max_payload: super::super::MAX_PAYLOAD,
        };
        assert!(matches!(
            conn.queue(&[b"PUB a 2\r\n", b"xy", b"\r\n"], 5, 13),
            Sent::Queued
        ));
        assert_eq!(conn.pending, b" 2\r\nxy\r\n");
        assert!(matches!(conn.send(&[b"PONG\r\n"]).unwrap(), Sent::Queued));
        assert_eq!(conn.pending, b" 2\r\nxy\r\nPONG\r\n");
        let big = vec![0u8; MAX_PENDING];
        assert!(matches!(conn.send(&[&big]).unwrap(), Sent::Full));
    }
}
