//! The connection task: one TCP connection at a time, logged in, with a reader task that
//! routes replies to waiting calls and events to subscribers. When the connection breaks (or
//! `Client::force_reconnect` closes it), the requests already written fail with
//! `Disconnected`, and the task reconnects with exponential backoff, logs in again,
//! re-registers the schemas the server does not list, and resubscribes every channel from the
//! id after the last one delivered, so a subscriber resumes without a gap. Requests still in
//! the outbound queue are sent on the new connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::frame::{self, field, map, Frame, KIND_ERR, KIND_EVENT, KIND_OK};
use crate::{ChannelEvent, ClientConfig, Credentials, Error, Result};

/// A request waiting for its reply.
pub(crate) struct Waiter {
    pub tx: oneshot::Sender<Result<Value>>,
    /// The connection it was written on (`None` while it sits in the queue).
    pub sent_on: Option<u64>,
}

/// A subscription: where its events go and the position a resume starts from.
pub(crate) struct Sub {
    pub tx: mpsc::Sender<ChannelEvent>,
    /// Tells a subscription apart from a later one on the same channel.
    pub serial: u64,
    /// The id to resume from after a reconnect: the one after the last delivered, or the
    /// subscriber's own `from` while nothing was delivered.
    pub resume: Option<u64>,
}

/// One frame to send; `rid` 0 for fire-and-forget.
pub(crate) struct Out {
    pub rid: u64,
    pub frame: Vec<u8>,
}

/// What the caller side and the connection task share.
pub(crate) struct Shared {
    pub addr: String,
    pub creds: Credentials,
    pub cfg: ClientConfig,
    pub next_rid: AtomicU64,
    pub pending: Mutex<HashMap<u64, Waiter>>,
    pub subs: Mutex<HashMap<String, Sub>>,
    /// Schemas registered through this client, by typename, to re-register after a
    /// reconnect to a server that lost them.
    pub schemas: Mutex<HashMap<String, Value>>,
    pub reconnects: AtomicU64,
    /// False from a lost connection until the next login.
    pub connected: AtomicBool,
    pub kick: Notify,
    pub shutdown: Notify,
}

impl Shared {
    pub fn rid(&self) -> u64 {
        self.next_rid.fetch_add(1, Ordering::Relaxed)
    }
}

async fn read_frame(rd: &mut (impl AsyncReadExt + Unpin), max: usize) -> Result<Frame> {
    let mut h = [0u8; 4];
    rd.read_exact(&mut h).await?;
    let len = frame::body_len(h);
    if len > max {
        return Err(Error::Protocol(format!(
            "a frame of {len} bytes exceeds max_frame ({max})"
        )));
    }
    let mut body = vec![0; len];
    rd.read_exact(&mut body).await?;
    frame::decode(&body).map_err(Error::Protocol)
}

/// Sends one request on a connection that has no reader yet and reads until its reply.
async fn handshake_request(
    s: &Shared,
    stream: &mut TcpStream,
    name: &str,
    args: Value,
) -> Result<Value> {
    let rid = s.rid();
    stream
        .write_all(&frame::encode_request(rid, name, args))
        .await?;
    loop {
        let f = read_frame(stream, s.cfg.max_frame).await?;
        // An error with rid 0 answers a frame the server could not read (e.g. the login).
        if f.rid == rid || (f.kind == KIND_ERR && f.rid == 0) {
            return match f.kind {
                KIND_OK => Ok(f.args),
                KIND_ERR => Err(Error::from_reply(f.name, f.args)),
                k => Err(Error::Protocol(format!("reply of kind {k}"))),
            };
        }
    }
}

/// Connects, logs in, re-registers missing schemas and resubscribes every channel.
pub(crate) async fn establish(s: &Shared) -> Result<TcpStream> {
    let work = async {
        let addr = tokio::net::lookup_host(&s.addr)
            .await?
            .next()
            .ok_or_else(|| Error::Io(format!("`{}` resolves to no address", s.addr)))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(n) = s.cfg.recv_buffer {
            socket.set_recv_buffer_size(n)?;
        }
        let mut stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let login = handshake_request(
            s,
            &mut stream,
            "login",
            map([
                ("account", s.creds.account.as_str().into()),
                ("password", s.creds.password.as_str().into()),
                ("name", s.creds.node.as_str().into()),
            ]),
        )
        .await?;
        let listed: Vec<String> = match field(&login, "schemas") {
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|e| e[0].as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let missing: Vec<Value> = s
            .schemas
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| !listed.contains(t))
            .map(|(_, v)| v.clone())
            .collect();
        for schema in missing {
            handshake_request(s, &mut stream, "register", map([("schema", schema)])).await?;
        }
        let resubscribe: Vec<Vec<u8>> = s
            .subs
            .lock()
            .unwrap()
            .iter()
            .map(|(channel, sub)| subscribe_frame(0, channel, sub.resume))
            .collect();
        for f in resubscribe {
            stream.write_all(&f).await?;
        }
        Ok::<_, Error>(stream)
    };
    match tokio::time::timeout(s.cfg.request_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(s.cfg.request_timeout)),
    }
}

pub(crate) fn subscribe_frame(rid: u64, channel: &str, from: Option<u64>) -> Vec<u8> {
    let args = match from {
        Some(id) => map([
            ("channel", channel.into()),
            ("from", map([("id", id.into())])),
        ]),
        None => map([("channel", channel.into())]),
    };
    frame::encode_request(rid, "subscribe", args)
}

/// Runs the connection until every `Client` handle is gone.
pub(crate) async fn run(s: Arc<Shared>, mut stream: TcpStream, mut out: mpsc::Receiver<Out>) {
    let mut generation = 0u64;
    loop {
        generation += 1;
        let (rd, mut wr) = stream.into_split();
        let (stop_tx, stop_rx) = oneshot::channel();
        let mut reader = tokio::spawn(read_loop(s.clone(), rd, stop_rx));
        let mut shutdown = false;
        let mut reader_done = false;
        loop {
            tokio::select! {
                o = out.recv() => {
                    let Some(o) = o else { shutdown = true; break };
                    if o.rid != 0 {
                        match s.pending.lock().unwrap().get_mut(&o.rid) {
                            Some(w) => w.sent_on = Some(generation),
                            // Timed out while queued: nobody waits any more; do not send.
                            None => continue,
                        }
                    }
                    if wr.write_all(&o.frame).await.is_err() {
                        break;
                    }
                }
                _ = &mut reader => { reader_done = true; break }
                _ = s.kick.notified() => break,
                _ = s.shutdown.notified() => { shutdown = true; break }
            }
        }
        let _ = stop_tx.send(());
        if !reader_done {
            let _ = reader.await;
        }
        s.connected.store(false, Ordering::Relaxed);
        drop(wr);
        // Requests written on the lost connection will get no reply.
        s.pending
            .lock()
            .unwrap()
            .retain(|_, w| w.sent_on != Some(generation));
        if shutdown {
            return;
        }
        let mut delay = s.cfg.backoff_initial;
        stream = loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = s.shutdown.notified() => return,
            }
            match establish(&s).await {
                Ok(st) => break st,
                Err(_) => delay = (delay * 2).min(s.cfg.backoff_max),
            }
        };
        s.reconnects.fetch_add(1, Ordering::Relaxed);
        s.connected.store(true, Ordering::Relaxed);
    }
}

/// Reads frames until the connection ends or `stop` fires; a frame is routed completely
/// (a subscriber with a full buffer holds the reader, which holds the socket: back pressure
/// to the server, never a dropped message) before the next read.
async fn read_loop(s: Arc<Shared>, mut rd: OwnedReadHalf, mut stop: oneshot::Receiver<()>) {
    loop {
        let f = tokio::select! {
            f = read_frame(&mut rd, s.cfg.max_frame) => f,
            _ = &mut stop => return,
        };
        let Ok(f) = f else { return };
        match f.kind {
            KIND_OK | KIND_ERR => {
                // Dropping a waiter without an answer (rid 0, or it timed out) is fine.
                let waiter = s.pending.lock().unwrap().remove(&f.rid);
                if let Some(w) = waiter {
                    let r = if f.kind == KIND_OK {
                        Ok(f.args)
                    } else {
                        Err(Error::from_reply(f.name, f.args))
                    };
                    let _ = w.tx.send(r);
                } else if f.kind == KIND_ERR && f.rid == 0 {
                    // The server could not read one of our frames; nothing waits for it.
                }
            }
            KIND_EVENT => route_event(&s, &f.name, &f.args).await,
            _ => return,
        }
    }
}

async fn route_event(s: &Shared, name: &str, body: &Value) {
    let Some(channel) = field(body, "channel").and_then(Value::as_str) else {
        return;
    };
    let u = |k: &str| field(body, k).and_then(Value::as_u64).unwrap_or(0);
    let (event, id) = match name {
        "channel_message" => {
            let payload = match field(body, "msg") {
                Some(Value::Array(a)) => a.clone(),
                Some(v) => vec![v.clone()],
                None => Vec::new(),
            };
            let id = u("id");
            (
                ChannelEvent::Msg {
                    id,
                    epoch: u("epoch"),
                    payload,
                },
                Some(id),
            )
        }
        "channel_truncated" => (
            ChannelEvent::Truncated {
                first_id: u("first_id"),
            },
            None,
        ),
        "channel_deleted" => (ChannelEvent::Deleted, None),
        _ => return,
    };
    let Some((tx, serial)) = s
        .subs
        .lock()
        .unwrap()
        .get(channel)
        .map(|sub| (sub.tx.clone(), sub.serial))
    else {
        return;
    };
    let deleted = matches!(event, ChannelEvent::Deleted);
    let delivered = tx.send(event).await.is_ok();
    let mut subs = s.subs.lock().unwrap();
    if let Some(sub) = subs.get_mut(channel).filter(|sub| sub.serial == serial) {
        if !delivered || deleted {
            // The subscriber is gone, or the server ended the subscription.
            subs.remove(channel);
        } else if let Some(id) = id {
            // Only after the subscriber has it: a resume starts after what it was given.
            sub.resume = Some(id + 1);
        }
    }
}
