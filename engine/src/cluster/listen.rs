//! A core's own subscription: each core of a member holds a plain NATS connection of its
//! own, subscribed to its own subject ([`hints::core_subject`], `stage.m.<member>.<core>`),
//! and reads it in a glommio task, as it reads its clients' sockets. A message for this
//! core then costs no hand-over: through the `stage-nats` thread, every arriving message
//! woke the thread, which posted it to the core's inbox and rang its doorbell (BENCHMARKS.md
//! "Between nodes through NATS"). Other members learn the subject from what the core
//! publishes (the NATS reply subject, `hints`).
//!
//! The connection exists only where the cores publish themselves (`direct::usable`: plain
//! `nats://`, no TLS nor authentication files) and while the thread's publish-only
//! connection is open; it goes to the same server (`Direct::server`), so the core resolves
//! no names and follows the thread's failovers. Connecting and the handshake are
//! non-blocking (io_uring) and bounded; a broken connection is opened again one retry period
//! later. While it is not subscribed, the core names no subject of its own, so nothing is
//! addressed to it: messages for it go to the member's subject and the thread, as before.
//! Each subject has exactly one subscriber, so nothing arrives twice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::ServerAddr;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::proto::{Op, Reader};
use super::{direct, hints, Cluster};
use crate::node::Node;

/// How long connecting and the handshake (`INFO`, `CONNECT`, `SUB`, `PING`/`PONG`) may take.
const HANDSHAKE: Duration = Duration::from_secs(2);
/// How long after a failed or broken connection (or while there is no server to go to) it
/// is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// Cores past this keep the thread's path: the cores listening are one bit each.
pub const MAX_CORES: usize = 64;

/// Starts core `core`'s subscription, if this process is in a cluster whose cores publish
/// themselves. Called on the core, inside its executor, as the core starts.
pub fn start(node: Arc<Node>, core: usize) {
    let Some(cluster) = super::get().cloned() else {
        return;
    };
    if cluster.direct.is_none() || core >= MAX_CORES {
        return;
    }
    glommio::spawn_local(keep(cluster, node, core)).detach();
}

async fn keep(cluster: Arc<Cluster>, node: Arc<Node>, core: usize) {
    let subject = hints::core_subject(&cluster.me, core);
    while !node.is_shutting_down() && !cluster.stopping() {
        if let Some(server) = cluster.direct.as_ref().and_then(|d| d.server()) {
            let opened = futures_lite::future::or(open(&cluster, server, &subject), async {
                glommio::timer::sleep(HANDSHAKE).await;
                Err(std::io::Error::other("the handshake timed out"))
            })
            .await;
            match opened {
                Ok((stream, reader)) => {
                    cluster.set_listening(core, true);
                    let end = serve(&cluster, &node, stream, reader).await;
                    cluster.set_listening(core, false);
                    if let Err(err) = end {
                        tracing::debug!(
                            "cluster member {}: core {core}'s NATS subscription: {err}",
                            cluster.me
                        );
                    }
                }
                Err(err) => tracing::debug!(
                    "cluster member {}: no NATS subscription for core {core}: {err}",
                    cluster.me
                ),
            }
        }
        glommio::timer::sleep(RETRY).await;
    }
}

/// Connects, subscribes to `subject` and waits for the server's `PONG`, after which the
/// subscription is in place.
async fn open(
    cluster: &Cluster,
    server: SocketAddr,
    subject: &str,
) -> std::io::Result<(TcpStream, Reader)> {
    let mut stream = TcpStream::connect(server).await?;
    // The connection also answers PINGs: each goes out at once.
    stream.set_nodelay(true)?;
    let mut reader = Reader::new(super::MAX_PAYLOAD);
    let mut chunk = vec![0u8; CHUNK];
    let info = loop {
        match reader.next()? {
            Some(Op::Info(line)) => break line,
            Some(Op::Err(line)) => return Err(std::io::Error::other(line)),
            Some(_) => {}
            None => read_some(&mut stream, &mut reader, &mut chunk).await?,
        }
    };
    reader.set_max_payload(direct::server_info(&info)?);
    let addrs: Vec<ServerAddr> = cluster
        .settings
        .servers
        .iter()
        .filter_map(|url| url.parse().ok())
        .collect();
    let connect = direct::connect_options(cluster, &addrs, "subscribe");
    let hello = format!("CONNECT {connect}\r\nSUB {subject} 1\r\nPING\r\n");
    stream.write_all(hello.as_bytes()).await?;
    loop {
        match reader.next()? {
            Some(Op::Pong) => return Ok((stream, reader)),
            Some(Op::Ping) => stream.write_all(b"PONG\r\n").await?,
            Some(Op::Err(line)) => return Err(std::io::Error::other(line)),
            // Nothing is published to a subject nobody named yet; anything else is noise.
            Some(_) => {}
            None => read_some(&mut stream, &mut reader, &mut chunk).await?,
        }
    }
}

/// Bytes read from the socket at most per read.
const CHUNK: usize = 64 << 10;

/// Delivers what arrives until the connection breaks, the server says an error, or the
/// process stops.
async fn serve(
    cluster: &Cluster,
    node: &Node,
    mut stream: TcpStream,
    mut reader: Reader,
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; CHUNK];
    while !node.is_shutting_down() && !cluster.stopping() {
        while let Some(op) = reader.next()? {
            match op {
                Op::Msg { reply, payload } => {
                    cluster.received(node, &payload, reply.as_deref(), true);
                    // A long burst must not starve the core's other tasks (as its inbox).
                    glommio::yield_if_needed().await;
                }
                Op::Ping => stream.write_all(b"PONG\r\n").await?,
                Op::Err(line) => return Err(std::io::Error::other(line)),
                Op::Pong | Op::Info(_) | Op::Other => {}
            }
        }
        read_some(&mut stream, &mut reader, &mut chunk).await?;
    }
    Ok(())
}

async fn read_some(
    stream: &mut TcpStream,
    reader: &mut Reader,
    chunk: &mut [u8],
) -> std::io::Result<()> {
    match stream.read(chunk).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        n => {
            reader.extend(&chunk[..n]);
            Ok(())
        }
    }
}
