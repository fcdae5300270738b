//! A tokio client for lotus wire v1 (spec/lotus.md §9.6, §9.7): log in, register schemas,
//! create, update, read and run states (`exec` without a reply, `call` with one), publish to
//! channels, read their history and subscribe with resume. It speaks the wire itself
//! (`frame`), so it does not depend on the engine.
//!
//! One connection task per client (`conn`) owns the socket: requests go through a bounded
//! outbound queue, replies find their caller by request id, events go to the channel's
//! subscriber. A broken connection is re-established with backoff, and every subscription
//! resumes from the id after the last one it received — no gap, no duplicate.
//!
#![doc = include_str!("../README.md")]

mod conn;
mod error;
pub mod frame;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

pub use rmpv::Value;
use tokio::sync::{mpsc, oneshot};

use conn::{Out, Shared, Sub, Waiter};
pub use error::{Error, Result};
use frame::{field, map};

/// Who logs in: an account of the lotus stage's `accounts` block, and this node's name
/// (the session is `project.node`).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub account: String,
    pub password: String,
    pub node: String,
}

/// Timeouts, queue sizes and the reconnect policy.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long a request may take, queueing included (also bounds connect + login).
    pub request_timeout: Duration,
    /// Frames waiting to be written; a caller waits (within its timeout) when it is full.
    pub outbound_queue: usize,
    /// Events buffered per subscription; when full the client stops reading the socket
    /// until the subscriber catches up (the server may then drop the connection at its
    /// output cap, and the subscription resumes after the reconnect).
    pub subscription_buffer: usize,
    /// The first reconnect delay; it doubles after each failed attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The largest frame body accepted from the server.
    pub max_frame: usize,
    /// SO_RCVBUF for the socket (`None`: the system's default).
    pub recv_buffer: Option<u32>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(10),
            outbound_queue: 1024,
            subscription_buffer: 1024,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_frame: 16 << 20,
            recv_buffer: None,
        }
    }
}

/// A state type: its name, the initial value of new states, and handlers and timer
/// callbacks as Lua source (`function(ctx, state, ...) ... end`), compiled by the server.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub typename: String,
    pub init: Option<Value>,
    pub handlers: Vec<(String, String)>,
    pub callbacks: Vec<(String, String)>,
}

impl Schema {
    pub fn new(typename: impl Into<String>) -> Schema {
        Schema {
            typename: typename.into(),
            ..Default::default()
        }
    }

    pub fn init(mut self, v: Value) -> Schema {
        self.init = Some(v);
        self
    }

    pub fn handler(mut self, name: impl Into<String>, source: impl Into<String>) -> Schema {
        self.handlers.push((name.into(), source.into()));
        self
    }

    pub fn callback(mut self, name: impl Into<String>, source: impl Into<String>) -> Schema {
        self.callbacks.push((name.into(), source.into()));
        self
    }

    fn to_value(&self) -> Value {
        let table = |list: &[(String, String)]| {
            Value::Map(
                list.iter()
                    .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                    .collect(),
            )
        };
        let mut m = vec![
            (Value::from("typename"), Value::from(self.typename.as_str())),
            (Value::from("handlers"), table(&self.handlers)),
            (Value::from("callbacks"), table(&self.callbacks)),
        ];
        if let Some(init) = &self.init {
            m.push((Value::from("init"), init.clone()));
        }
        Value::Map(m)
    }
}

/// One step of a path into a state (`update`, `get`).
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Str(String),
    Int(i64),
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key::Str(s.to_string())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key::Str(s)
    }
}

impl From<i64> for Key {
    fn from(i: i64) -> Key {
        Key::Int(i)
    }
}

fn keys(path: &[Key]) -> Value {
    Value::Array(
        path.iter()
            .map(|k| match k {
                Key::Str(s) => Value::from(s.as_str()),
                Key::Int(i) => Value::from(*i),
            })
            .collect(),
    )
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelEvent {
    /// A message: its id in the channel's epoch (a deleted channel starts a new epoch at
    /// id 1) and the publish's arguments (one for a client's publish, any number for a
    /// handler's `ctx.publish(ch, ...)`).
    Msg {
        id: u64,
        epoch: u64,
        payload: Vec<Value>,
    },
    /// A resume started before the oldest retained message: messages before `first_id`
    /// are lost; the replay from `first_id` follows.
    Truncated { first_id: u64 },
    /// The channel was deleted; the subscription ends after this event.
    Deleted,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubOpts {
    /// Replay retained messages with `id >= from` before the live ones (`None`: live only).
    pub from: Option<u64>,
}

/// A history query (spec §6.5).
#[derive(Debug, Clone, Copy)]
pub enum Query {
    /// The newest `n` retained messages.
    Last(u64),
    /// Retained messages with `id >= k`.
    From(u64),
}

/// A history reply: the ring's bounds at reply time and the selected messages, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub epoch: u64,
    pub first_id: u64,
    pub last_id: u64,
    /// `From(k)` asked for messages older than the ring holds.
    pub truncated: bool,
    pub items: Vec<(u64, Vec<Value>)>,
}

/// A publish's place in the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: u64,
    pub epoch: u64,
}

struct Handle {
    shared: Arc<Shared>,
    out: mpsc::Sender<Out>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The connection task ends; subscriptions see their stream end.
        self.shared.shutdown.notify_one();
    }
}

/// A logged-in lotus session. Cloning is cheap; the connection closes when the last clone
/// (and every `StateRef`, `Channel` and `Subscription` made from it) is dropped.
#[derive(Clone)]
pub struct Client {
    h: Arc<Handle>,
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

impl Client {
    /// Connects with the default [`ClientConfig`].
    pub async fn connect(addr: &str, creds: Credentials) -> Result<Client> {
        Client::connect_with(addr, creds, ClientConfig::default()).await
    }

    /// Connects to a lotus stage's `listen` address and logs in; a refused login is
    /// `Error::Server { code: "auth_failed", .. }`.
    pub async fn connect_with(addr: &str, creds: Credentials, cfg: ClientConfig) -> Result<Client> {
        let (tx, rx) = mpsc::channel(cfg.outbound_queue.max(1));
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            creds,
            cfg,
            next_rid: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            schemas: Mutex::new(HashMap::new()),
            reconnects: AtomicU64::new(0),
            connected: AtomicBool::new(true),
            kick: Default::default(),
            shutdown: Default::default(),
        });
        let stream = conn::establish(&shared).await?;
        tokio::spawn(conn::run(shared.clone(), stream, rx));
        Ok(Client {
            h: Arc::new(Handle { shared, out: tx }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.h.shared
    }

    /// How many times the connection was re-established.
    pub fn reconnects(&self) -> u64 {
        self.shared().reconnects.load(Ordering::Relaxed)
    }

    /// Whether the client is connected and logged in now (false while it reconnects).
    pub fn is_connected(&self) -> bool {
        self.shared().connected.load(Ordering::Relaxed)
    }

    /// Closes the current connection as a network failure would: requests in flight fail
    /// with `Disconnected`, and the client reconnects and resumes its subscriptions.
    pub fn force_reconnect(&self) {
        self.shared().kick.notify_one();
    }

    /// Sends a request and waits for its reply, within `request_timeout`.
    pub async fn request(&self, name: &str, args: Value) -> Result<Value> {
        let s = self.shared();
        let timeout = s.cfg.request_timeout;
        let rid = s.rid();
        let (tx, rx) = oneshot::channel();
        s.pending
            .lock()
            .unwrap()
            .insert(rid, Waiter { tx, sent_on: None });
        let frame = frame::encode_request(rid, name, args);
        let work = async {
            self.h
                .out
                .send(Out { rid, frame })
                .await
                .map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Disconnected)?
        };
        // Forgets the waiter however this ends: reply, timeout, or the caller giving up.
        let _forget = Forget(s, rid);
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// Queues a request without a reply (rid 0); waits only for room in the queue.
    pub async fn send(&self, name: &str, args: Value) -> Result<()> {
        let timeout = self.shared().cfg.request_timeout;
        let frame = frame::encode_request(0, name, args);
        match tokio::time::timeout(timeout, self.h.out.send(Out { rid: 0, frame })).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    pub async fn ping(&self) -> Result<()> {
        self.request("ping", map([])).await.map(drop)
    }

    /// Registers (or replaces) a schema; every handler must compile, else
    /// `compile_error` naming it. Remembered, to re-register after a reconnect to a server
    /// that no longer lists it.
    pub async fn register(&self, schema: &Schema) -> Result<()> {
        let v = schema.to_value();
        self.request("register", map([("schema", v.clone())]))
            .await?;
        self.shared()
            .schemas
            .lock()
            .unwrap()
            .insert(schema.typename.clone(), v);
        Ok(())
    }

    /// The project's schemas as (typename, hash).
    pub async fn schema_list(&self) -> Result<Vec<(String, String)>> {
        let v = self.request("schema_list", map([])).await?;
        Ok(match v {
            Value::Array(list) => list
                .iter()
                .filter_map(|e| Some((e[0].as_str()?.to_string(), e[1].as_str()?.to_string())))
                .collect(),
            _ => Vec::new(),
        })
    }

    /// Creates state `name` of type `ty` from `value` (`Nil`: the schema's `init`), unless
    /// it exists (then nothing changes); returns a handle to it either way.
    pub async fn init(&self, ty: &str, name: &str, value: Value) -> Result<StateRef> {
        self.request(
            "init_state",
            map([
                ("typename", ty.into()),
                ("statename", name.into()),
                ("value", value),
            ]),
        )
        .await?;
        Ok(self.state(name))
    }

    /// A handle to an existing state (nothing is sent).
    pub fn state(&self, name: &str) -> StateRef {
        StateRef {
            client: self.clone(),
            name: name.to_string(),
        }
    }

    /// Sets the value at `path` in state `name` (an empty path replaces the state, `Nil`
    /// removes the key).
    pub async fn update(&self, name: &str, path: &[Key], value: Value) -> Result<()> {
        self.request(
            "update_state",
            map([
                ("statename", name.into()),
                ("keys", keys(path)),
                ("value", value),
            ]),
        )
        .await
        .map(drop)
    }

    /// Reads the value at `path` in state `name` (an empty path: the whole state).
    pub async fn get(&self, name: &str, path: &[Key]) -> Result<Value> {
        self.request(
            "get",
            map([("statename", name.into()), ("keys", keys(path))]),
        )
        .await
    }

    pub fn channel(&self, name: &str) -> Channel {
        Channel {
            client: self.clone(),
            name: name.to_string(),
        }
    }
}

struct Forget<'a>(&'a Shared, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().unwrap().remove(&self.1);
    }
}

/// A state by name.
#[derive(Clone)]
pub struct StateRef {
    client: Client,
    name: String,
}

impl StateRef {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn args(&self, f: &str, args: Vec<Value>) -> Value {
        map([
            ("statename", self.name.as_str().into()),
            ("funcname", f.into()),
            ("params", Value::Array(args)),
        ])
    }

    /// Runs handler `f` with `args` on the state's owner, without a reply (the seed's
    /// `s.fn(...)`): returns once the request is queued.
    pub async fn exec(&self, f: &str, args: Vec<Value>) -> Result<()> {
        self.client.send("execute_state", self.args(f, args)).await
    }

    /// Runs handler `f` and returns what it returned.
    pub async fn call(&self, f: &str, args: Vec<Value>) -> Result<Vec<Value>> {
        match self.client.request("call", self.args(f, args)).await? {
            Value::Array(values) => Ok(values),
            Value::Nil => Ok(Vec::new()),
            other => Ok(vec![other]),
        }
    }

    pub async fn get(&self, path: &[Key]) -> Result<Value> {
        self.client.get(&self.name, path).await
    }

    pub async fn update(&self, path: &[Key], value: Value) -> Result<()> {
        self.client.update(&self.name, path, value).await
    }
}

/// A channel by name.
#[derive(Clone)]
pub struct Channel {
    client: Client,
    name: String,
}

impl Channel {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes one message; returns the id the channel gave it.
    pub async fn publish(&self, msg: Value) -> Result<Published> {
        let r = self
            .client
            .request(
                "publish",
                map([("channel", self.name.as_str().into()), ("msg", msg)]),
            )
            .await?;
        let u = |k| field(&r, k).and_then(Value::as_u64).unwrap_or(0);
        Ok(Published {
            id: u("id"),
            epoch: u("epoch"),
        })
    }

    /// Deletes the channel: subscribers get `Deleted`; a later publish starts a new epoch.
    pub async fn delete(&self) -> Result<()> {
        self.client
            .request(
                "delete_channel",
                map([("channel", self.name.as_str().into())]),
            )
            .await
            .map(drop)
    }

    pub async fn history(&self, q: Query) -> Result<History> {
        let query = match q {
            Query::Last(n) => ("last", Value::from(n)),
            Query::From(id) => ("from", map([("id", id.into())])),
        };
        let r = self
            .client
            .request(
                "channel_history",
                map([("channel", self.name.as_str().into()), query]),
            )
            .await?;
        let u = |k| field(&r, k).and_then(Value::as_u64).unwrap_or(0);
        let items = match field(&r, "items") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|it| {
                    let id = field(it, "id").and_then(Value::as_u64).unwrap_or(0);
                    let msg = match field(it, "msg") {
                        Some(Value::Array(a)) => a.clone(),
                        Some(v) => vec![v.clone()],
                        None => Vec::new(),
                    };
                    (id, msg)
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(History {
            epoch: u("epoch"),
            first_id: u("first_id"),
            last_id: u("last_id"),
            truncated: field(&r, "truncated").and_then(Value::as_bool) == Some(true),
            items,
        })
    }

    /// Subscribes (one live subscription per channel per client). Events that arrive are
    /// buffered in the returned stream; after a reconnect it resumes from the id after the
    /// last one it received (before the first one: from `opts.from`, or from the id after
    /// the channel's newest at subscribe time).
    pub async fn subscribe(&self, opts: SubOpts) -> Result<Subscription> {
        let s = self.client.shared();
        // Where a resume starts before anything is delivered: for a live subscription, the
        // id after the newest one now (asked before subscribing, so nothing published after
        // the subscription can fall before it; a never-used channel starts at 1).
        let resume = match opts.from {
            Some(id) => Some(id),
            None => match self.history(Query::Last(0)).await {
                Ok(h) => Some(h.last_id + 1),
                Err(e) if e.code() == Some("channel_not_found") => Some(1),
                Err(e) => return Err(e),
            },
        };
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(s.cfg.subscription_buffer.max(1));
        {
            let mut subs = s.subs.lock().unwrap();
            if subs.get(&self.name).is_some_and(|sub| !sub.tx.is_closed()) {
                return Err(Error::AlreadySubscribed(self.name.clone()));
            }
            // Registered before the request, so events that follow the reply are routed.
            subs.insert(self.name.clone(), Sub { tx, serial, resume });
        }
        let mut args = vec![(Value::from("channel"), Value::from(self.name.as_str()))];
        if let Some(id) = opts.from {
            args.push((Value::from("from"), map([("id", id.into())])));
        }
        if let Err(e) = self.client.request("subscribe", Value::Map(args)).await {
            let mut subs = s.subs.lock().unwrap();
            if subs.get(&self.name).is_some_and(|sub| sub.serial == serial) {
                subs.remove(&self.name);
            }
            return Err(e);
        }
        Ok(Subscription {
            rx,
            client: self.client.clone(),
            channel: self.name.clone(),
            serial,
        })
    }
}

/// A channel's events, in the channel's order; ends after `Deleted` or when the client
/// closes. Dropping it unsubscribes.
pub struct Subscription {
    rx: mpsc::Receiver<ChannelEvent>,
    client: Client,
    channel: String,
    serial: u64,
}

impl Subscription {
    /// The next event (`None`: the subscription ended).
    pub async fn next_event(&mut self) -> Option<ChannelEvent> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for Subscription {
    type Item = ChannelEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let s = self.client.shared();
        let mine = {
            let mut subs = s.subs.lock().unwrap();
            let mine = subs
                .get(&self.channel)
                .is_some_and(|sub| sub.serial == self.serial);
            if mine {
                subs.remove(&self.channel);
            }
            mine
        };
        if mine {
            // Best effort: with a full queue the server keeps sending events nobody routes.
            let frame = frame::encode_request(
                0,
                "unsubscribe",
                map([("channel", self.channel.as_str().into())]),
            );
            let _ = self.client.h.out.try_send(Out { rid: 0, frame });
        }
    }
}
