//! One core's part of a lotus stage (spec/lotus.md §9.1–9.4). Every core serves the lotus
//! connections it accepted and owns a share of the states and channels: a state belongs to
//! core `owner_of_name(project \0 name)`, a channel to `owner_of_name(project \0 # \0 name)`
//! (`service::shard`, the rule index.so and `=ticket` use). A request for something another
//! core owns travels there as a [`Post`] through that core's inbox, and the answer comes back
//! the same way, so everything about one state or channel happens on one core, one item at a
//! time, in the order each connection sent it (inboxes are FIFO per sender).
//!
//! Handlers run in the core's own LuaJIT state, in the project's sandbox
//! (`sandbox::Sandbox`), inside the host's CPU budget. A handler never waits: what it asks of
//! other states (`ctx.state(x).fn()`, `ctx.updatestate`, `ctx.initstate`) and `ctx.publish`
//! are posted, even to its own core, so a handler is never re-entered.
//!
//! Channels: the owner assigns ids, keeps the history ring and the set of cores with
//! subscribers; a publish goes once to each such core, which writes it to its subscribers.
//! A subscriber that resumes from an id is *pending* until the owner's replay reaches it:
//! deliveries already on their way are older than the replay and skipped, deliveries after
//! it are newer, so the client sees no gap and no duplicate.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mlua::{Function, Lua, MultiValue, RegistryKey, Table, Value as LuaValue, Variadic};
use rmpv::Value;

use super::posts::{Post, Stored, Wire};
use super::sandbox::{CompileError, Compiled, Sandbox};
use super::store::{Cmd, Item, Record, Store, Waiter};
use super::value::{from_lua, to_lua};
use crate::config::{LotusConfig, Secret};
use crate::net::conn::Conn;
use crate::net::id::ConnId;
use crate::node::post::PostKind;
use crate::node::runtime::{try_current, Core};
use crate::node::CoreMsg;
use crate::service::lotus::channel::{Channel, History, Query};
use crate::service::lotus::wire::{self, compat, map, v1, Command, Outgoing, Request, WireError};
use crate::service::shard::owner_of_name;

/// An error reply: a spec §9.6 code and its details.
struct Failure {
    code: &'static str,
    detail: Value,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            detail: map([("message", Value::from(message.into()))]),
        }
    }
}

impl From<WireError> for Failure {
    fn from(e: WireError) -> Failure {
        Failure::new(e.code, e.message)
    }
}

/// A connection of this core.
struct Session {
    wire: Wire,
    /// `(project, node)` once logged in.
    login: Option<(String, String)>,
    /// Channels subscribed; `false` while a resume's replay is on its way.
    subs: HashMap<String, bool>,
    /// Frames that arrived while a `register` of this connection waits for the store: they
    /// run, in order, once the schema is known to every core (an `init_state` right after a
    /// `register` must find the schema on the state's owner).
    held: Option<std::collections::VecDeque<Vec<u8>>>,
    /// A newer login took this connection's identity: it is closing, its frames are dropped.
    kicked: bool,
}

/// A registered schema, as every core keeps it; compiled on this core at first use.
struct Schema {
    value: Value,
    hash: u64,
    compiled: RefCell<Option<Rc<Compiled>>>,
}

/// A running timer of a state (spec §7, in msec).
struct Timer {
    generation: u64,
    delay_ms: u64,
    callback: String,
    once: bool,
    count: u64,
    start_ms: u64,
}

/// A state owned by this core.
struct State {
    typename: String,
    schema: Rc<Schema>,
    /// The state's table and its `ctx`, kept in the Lua registry: a `Table` handle held in
    /// Rust takes a slot of mlua's auxiliary stack (about 8000 per state), so a core holding
    /// one per state crashed at ~8000 states (BENCHMARKS.md, lotus memory per state).
    table: RegistryKey,
    ctx: Option<RegistryKey>,
    timers: HashMap<String, Timer>,
    exiting: bool,
    /// Bumped at every write to the store (the Redis write is fenced on it).
    rev: u64,
}

/// A channel owned by this core.
struct Owned {
    history: Channel<Value>,
    /// Cores with at least one subscriber.
    cores: HashSet<usize>,
}

/// Everything of one project on this core.
#[derive(Default)]
struct Project {
    sandbox: Option<Rc<Sandbox>>,
    schemas: HashMap<String, Rc<Schema>>,
    states: HashMap<String, State>,
    channels: HashMap<String, Owned>,
    /// This core's subscribers, by channel.
    local: HashMap<String, Vec<ConnId>>,
    /// States (`s\0name`) and channels (`c\0name`) whose stored copy has been loaded (or
    /// found absent): requests for them run at once.
    loaded: HashSet<String>,
    /// Posts waiting for a load, in arrival order, by the same key.
    waiting: HashMap<String, Vec<Vec<u8>>>,
    /// States changed since the last flush (written, or deleted when gone).
    dirty: HashSet<String>,
    /// States whose running handler called `ctx.save()`: written when it returns.
    save_now: HashSet<String>,
}

/// A reply held until the `ctx.save()` its handler asked for is written.
struct HeldReply {
    conn: u64,
    wire: Wire,
    rid: u64,
    name: &'static str,
    result: Result<Value, Failure>,
}

/// One core's lotus.
pub struct Server {
    lua: Lua,
    me: Weak<Server>,
    entry: String,
    cfg: LotusConfig,
    core: usize,
    cores: usize,
    sessions: RefCell<HashMap<ConnId, Session>>,
    projects: RefCell<HashMap<String, Project>>,
    next_timer: Cell<u64>,
    /// States this core may hold per project (`max_states` shared over the cores).
    max_local_states: usize,
    store: Arc<Store>,
    flush_scheduled: Cell<bool>,
    /// Replies waiting for their `ctx.save()`, by the token the store answers with.
    held: RefCell<HashMap<u64, HeldReply>>,
    next_save: Cell<u64>,
    /// States over `max_state_bytes` already logged, and how many flushes skipped one.
    oversize_logged: RefCell<HashSet<String>>,
    oversize_skipped: Cell<u64>,
    /// Who holds each `project.node` identity this core keeps (`login_owner`): the
    /// connection that logged in last.
    holders: RefCell<HashMap<String, u64>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new state's first revision: the clock in microseconds. A state is written at most once
/// per flush, far less than once a microsecond, so a state made again after a delete starts
/// above every revision its predecessor reached (and below 2^53 until the year 2255).
fn first_rev() -> u64 {
    now_ms().saturating_mul(1000)
}

/// FNV-1a over the schema's encoding: its identity in `schemas` lists.
fn content_hash(bytes: &[u8]) -> u64 {
    crate::service::shard::fnv1a(bytes)
}

fn state_key(project: &str, name: &str) -> String {
    format!("{project}\0{name}")
}

fn channel_key(project: &str, name: &str) -> String {
    format!("{project}\0#\0{name}")
}

impl Server {
    pub fn new(
        lua: &Lua,
        entry: &str,
        cfg: LotusConfig,
        core: usize,
        cores: usize,
        store: Arc<Store>,
    ) -> Rc<Server> {
        let max_local_states = cfg.max_states.div_ceil(cores.max(1));
        Rc::new_cyclic(|me| Server {
            lua: lua.clone(),
            me: me.clone(),
            entry: entry.to_string(),
            cfg,
            core,
            cores,
            sessions: RefCell::new(HashMap::new()),
            projects: RefCell::new(HashMap::new()),
            next_timer: Cell::new(1),
            max_local_states,
            store,
            flush_scheduled: Cell::new(false),
            held: RefCell::new(HashMap::new()),
            next_save: Cell::new(1),
            oversize_logged: RefCell::new(HashSet::new()),
            oversize_skipped: Cell::new(0),
            holders: RefCell::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &LotusConfig {
        &self.cfg
    }

    fn core_rt() -> Option<Rc<Core>> {
        try_current()
    }

    fn send(&self, core: usize, post: &Post) {
        let Some(rt) = Self::core_rt() else { return };
        let msg = CoreMsg::Post {
            kind: PostKind::Lotus,
            payload: post.encode().into(),
        };
        if let Err(err) = rt.node.send(core, msg) {
            rt.node.log_dropped(core, &err);
        }
    }

    // ---- connections -------------------------------------------------------------------

    /// A client connected on a lotus listener.
    pub fn accept(&self, conn: &Rc<Conn>, wire: Wire) {
        self.sessions.borrow_mut().insert(
            conn.id,
            Session {
                wire,
                login: None,
                subs: HashMap::new(),
                held: None,
                kicked: false,
            },
        );
    }

    /// One frame body of a lotus connection. An error closes the connection (a frame that
    /// cannot even be read as the wire's encoding, on the compat wire whose original had no
    /// error replies, or before login).
    pub fn receive(&self, conn: &Rc<Conn>, body: &[u8]) -> Result<(), String> {
        let (wire, login) = match self.sessions.borrow().get(&conn.id) {
            Some(s) if s.kicked => return Ok(()),
            Some(s) => (s.wire, s.login.clone()),
            None => return Err("not a lotus connection".into()),
        };
        let Some((project, _node)) = login else {
            return self.login(conn, wire, body);
        };
        if let Some(held) = self
            .sessions
            .borrow_mut()
            .get_mut(&conn.id)
            .and_then(|s| s.held.as_mut())
        {
            held.push_back(body.to_vec());
            return Ok(());
        }
        self.handle_frame(conn.id, wire, &project, body);
        Ok(())
    }

    /// One request frame of a logged-in connection: decoded and run (here or on its owner).
    fn handle_frame(&self, conn: ConnId, wire: Wire, project: &str, body: &[u8]) {
        let request = match wire {
            Wire::V1 => v1::decode(body),
            Wire::Compat => compat::decode(body),
        };
        match request {
            Ok(request) => self.dispatch(conn.raw(), wire, project, body, request),
            Err(e) => {
                tracing::debug!(socket = conn.raw(), "lotus: {e}");
                // The request id is unknown when the frame could not be read; v1 answers
                // rid 0 so the client learns why (its `err` handler sees the code).
                self.write(
                    conn.raw(),
                    wire,
                    &Outgoing::Err {
                        rid: 0,
                        code: e.code.into(),
                        detail: map([("message", Value::from(e.message))]),
                    },
                );
            }
        }
    }

    /// A `register` of connection `conn` is answered: the frames held behind it run now, in
    /// order, until one of them is another `register` (the rest wait behind that one).
    fn release_held(&self, conn: u64) {
        let Some(id) = ConnId::from_raw(conn) else {
            return;
        };
        let (wire, project, mut frames) = {
            let mut sessions = self.sessions.borrow_mut();
            let Some(s) = sessions.get_mut(&id) else {
                return;
            };
            let Some((project, _)) = s.login.clone() else {
                return;
            };
            (s.wire, project, s.held.take().unwrap_or_default())
        };
        while let Some(body) = frames.pop_front() {
            self.handle_frame(id, wire, &project, &body);
            let mut sessions = self.sessions.borrow_mut();
            if let Some(held) = sessions.get_mut(&id).and_then(|s| s.held.as_mut()) {
                held.extend(frames.drain(..));
                return;
            }
        }
    }

    fn login(&self, conn: &Rc<Conn>, wire: Wire, body: &[u8]) -> Result<(), String> {
        let (rid, command) = match wire {
            Wire::Compat => match compat::decode_login(body) {
                Ok(c) => (0, c),
                Err(e) => return self.refuse_login(conn, wire, 0, &e.message),
            },
            Wire::V1 => match v1::decode(body) {
                Ok(Request {
                    rid,
                    command: c @ Command::Login { .. },
                }) => (rid, c),
                Ok(Request { rid, .. }) => {
                    return self.refuse_login(conn, wire, rid, "log in first")
                }
                Err(e) => return self.refuse_login(conn, wire, 0, &e.message),
            },
        };
        let Command::Login {
            account,
            password,
            node,
        } = command
        else {
            unreachable!("matched above")
        };
        let Some(acc) = self.cfg.accounts.iter().find(|a| a.account == account) else {
            return self.refuse_login(conn, wire, rid, "account does not exist");
        };
        let ok = match &acc.secret {
            Secret::Plain(p) => *p == password,
            Secret::Hash(h) => crate::service::lotus::password::verify(&password, h),
        };
        if !ok {
            return self.refuse_login(conn, wire, rid, "wrong password");
        }
        let project = acc.project.clone();
        if let Some(s) = self.sessions.borrow_mut().get_mut(&conn.id) {
            s.login = Some((project.clone(), node.clone()));
        }
        self.claim(&project, &node, conn.id.raw(), true);
        let token = (content_hash(&now_ms().to_le_bytes()) ^ conn.id.raw()) % 100_000_000;
        tracing::info!(
            socket = conn.id.raw(),
            "lotus `{}`: {project}.{node} logged in",
            self.entry
        );
        match wire {
            Wire::Compat => {
                let _ = conn.append(&compat::login_line(Ok(token as u32)));
            }
            Wire::V1 => {
                let schemas = self.schema_list(&project);
                self.write(
                    conn.id.raw(),
                    wire,
                    &Outgoing::Ok {
                        rid,
                        name: "login".into(),
                        result: map([
                            ("ok", Value::from(true)),
                            ("session", Value::from(format!("{project}.{node}"))),
                            ("token", Value::from(token)),
                            ("schemas", schemas),
                        ]),
                    },
                );
            }
        }
        Ok(())
    }

    fn refuse_login(
        &self,
        conn: &Rc<Conn>,
        wire: Wire,
        rid: u64,
        reason: &str,
    ) -> Result<(), String> {
        tracing::info!(
            socket = conn.id.raw(),
            "lotus `{}`: login refused: {reason}",
            self.entry
        );
        match wire {
            Wire::Compat => {
                let _ = conn.append(&compat::login_line(Err(reason)));
            }
            Wire::V1 => self.write(
                conn.id.raw(),
                wire,
                &Outgoing::Err {
                    rid,
                    code: "auth_failed".into(),
                    detail: map([("message", Value::from(reason))]),
                },
            ),
        }
        conn.request_close(0);
        Ok(())
    }

    /// The connection ended: its subscriptions go.
    pub fn close(&self, conn: ConnId) -> bool {
        let Some(session) = self.sessions.borrow_mut().remove(&conn) else {
            return false;
        };
        if let Some((project, node)) = session.login {
            for channel in session.subs.keys() {
                self.drop_local(&project, channel, conn);
            }
            self.claim(&project, &node, conn.raw(), false);
        }
        true
    }

    // ---- one connection per identity (spec §3.2 step 5) ---------------------------------

    /// The core that keeps who holds `project.node`: every login and close of that identity
    /// goes there, so two logins on different cores are ordered by one inbox.
    fn login_owner(&self, project: &str, node: &str) -> usize {
        owner_of_name(&format!("{project}\0@\0{node}"), self.cores)
    }

    /// Tells the identity's keeper that `conn` took (`add`) or let go of `project.node`.
    fn claim(&self, project: &str, node: &str, conn: u64, add: bool) {
        self.send(
            self.login_owner(project, node),
            &Post::Login {
                project: project.to_string(),
                node: node.to_string(),
                conn,
                add,
            },
        );
    }

    /// On the keeper: the newest login holds the identity and the one it replaces is
    /// kicked; a close only lets go when the closing connection still holds it.
    fn holder(&self, project: &str, node: &str, conn: u64, add: bool) {
        let key = format!("{project}.{node}");
        let mut holders = self.holders.borrow_mut();
        if add {
            match holders.insert(key, conn) {
                Some(old) if old != conn => {
                    drop(holders);
                    tracing::info!(
                        socket = old,
                        "lotus `{}`: {project}.{node} logged in again (socket {conn}); \
                         the previous connection is closed",
                        self.entry
                    );
                    self.kick(old);
                }
                _ => {}
            }
        } else if holders.get(&key) == Some(&conn) {
            holders.remove(&key);
        }
    }

    /// Closes connection `conn` wherever it lives; it sees nothing but the close (the
    /// original sent no notice either). Frames it already sent and this core has not read
    /// yet are dropped; its subscriptions go when the close completes.
    fn kick(&self, conn: u64) {
        let Some(id) = ConnId::from_raw(conn) else {
            return;
        };
        if id.owner() != self.core {
            self.send(id.owner(), &Post::Kick { conn });
            return;
        }
        if let Some(s) = self.sessions.borrow_mut().get_mut(&id) {
            s.kicked = true;
        }
        if let Some(c) = Self::core_rt().and_then(|rt| rt.conn(id)) {
            c.request_close(0);
        }
    }

    // ---- output ------------------------------------------------------------------------

    fn encode(wire: Wire, out: &Outgoing) -> Option<Vec<u8>> {
        match wire {
            Wire::V1 => Some(v1::encode(out)),
            Wire::Compat => compat::encode(out),
        }
    }

    /// Sends `out` to connection `conn` (0: nobody) wherever it lives.
    fn write(&self, conn: u64, wire: Wire, out: &Outgoing) {
        if conn == 0 {
            if let Outgoing::Err { code, detail, .. } = out {
                tracing::warn!("lotus `{}`: {code}: {}", self.entry, detail);
            }
            return;
        }
        let Some(frame) = Self::encode(wire, out) else {
            tracing::warn!(
                socket = conn,
                "lotus: a reply too large for the compat wire's 2-byte length was dropped"
            );
            return;
        };
        self.write_frame(conn, frame);
    }

    fn write_frame(&self, conn: u64, frame: Vec<u8>) {
        let Some(id) = ConnId::from_raw(conn) else {
            return;
        };
        if id.owner() != self.core {
            self.send(id.owner(), &Post::Out { conn, frame });
            return;
        }
        if let Some(c) = Self::core_rt().and_then(|rt| rt.conn(id)) {
            // A slow reader past its output cap is closed by the connection itself (ENOBUFS);
            // the client resumes from its last id.
            let _ = c.append(&frame);
        }
    }

    fn reply(&self, conn: u64, wire: Wire, rid: u64, name: &str, result: Result<Value, Failure>) {
        if rid == 0 {
            if let Err(f) = &result {
                tracing::debug!("lotus `{}`: {name}: {}: {}", self.entry, f.code, f.detail);
            }
            return;
        }
        let out = match result {
            Ok(result) => Outgoing::Ok {
                rid,
                name: name.into(),
                result,
            },
            Err(f) => Outgoing::Err {
                rid,
                code: f.code.into(),
                detail: f.detail,
            },
        };
        self.write(conn, wire, &out);
    }

    // ---- dispatch ----------------------------------------------------------------------

    fn state_owner(&self, project: &str, name: &str) -> usize {
        owner_of_name(&state_key(project, name), self.cores)
    }

    fn channel_owner(&self, project: &str, name: &str) -> usize {
        owner_of_name(&channel_key(project, name), self.cores)
    }

    /// Routes a decoded request: runs it here when this core owns what it names, or posts
    /// the original body to the owner.
    fn dispatch(&self, conn: u64, wire: Wire, project: &str, body: &[u8], request: Request) {
        let owner = match &request.command {
            Command::InitState { statename, .. }
            | Command::UpdateState { statename, .. }
            | Command::Execute { statename, .. }
            | Command::Get { statename, .. } => Some(self.state_owner(project, statename)),
            Command::Publish { channel, .. }
            | Command::DeleteChannel { channel }
            | Command::ChannelHistory { channel, .. } => Some(self.channel_owner(project, channel)),
            _ => None,
        };
        match owner {
            Some(core) if core != self.core => self.send(
                core,
                &Post::Req {
                    conn,
                    wire,
                    project: project.to_string(),
                    body: body.to_vec(),
                },
            ),
            _ => {
                if let Some(key) = gate_key(&request.command) {
                    let post = || {
                        Post::Req {
                            conn,
                            wire,
                            project: project.to_string(),
                            body: body.to_vec(),
                        }
                        .encode()
                    };
                    if !self.admit(project, &key, post) {
                        return;
                    }
                }
                self.run(conn, wire, project, request)
            }
        }
    }

    /// Whether what `key` names is loaded; if not, `post` waits for its load (the first
    /// waiter asks the store).
    fn admit(&self, project: &str, key: &str, post: impl FnOnce() -> Vec<u8>) -> bool {
        let first = {
            let mut projects = self.projects.borrow_mut();
            let p = projects.entry(project.to_string()).or_default();
            if p.loaded.contains(key) {
                return true;
            }
            let w = p.waiting.entry(key.to_string()).or_default();
            w.push(post());
            w.len() == 1
        };
        if first {
            let (project, core) = (project.to_string(), self.core);
            self.store.send(match key.split_once('\0') {
                Some(("s", name)) => Cmd::LoadState {
                    core,
                    project,
                    name: name.to_string(),
                },
                _ => Cmd::LoadChannel {
                    core,
                    project,
                    channel: key[2..].to_string(),
                },
            });
        }
        false
    }

    /// A load is done: the waiting posts run in their order (or fail when the store did).
    fn loaded(&self, project: &str, key: &str, error: Option<String>) {
        let waiting = {
            let mut projects = self.projects.borrow_mut();
            let p = projects.entry(project.to_string()).or_default();
            if error.is_none() {
                p.loaded.insert(key.to_string());
            }
            p.waiting.remove(key).unwrap_or_default()
        };
        for bytes in waiting {
            match &error {
                None => self.post(&bytes),
                Some(e) => {
                    if let Ok(Post::Req {
                        conn, wire, body, ..
                    }) = Post::decode(&bytes)
                    {
                        let request = match wire {
                            Wire::V1 => v1::decode(&body),
                            Wire::Compat => compat::decode(&body),
                        };
                        if let Ok(r) = request {
                            let name = r.command.name();
                            self.reply(
                                conn,
                                wire,
                                r.rid,
                                name,
                                Err(Failure::new("overloaded", e.clone())),
                            );
                        }
                    }
                }
            }
        }
    }

    fn stored(&self, stored: Stored) {
        match stored {
            Stored::Schema {
                waiter,
                project,
                typename,
                schema,
                error,
            } => {
                let result = match error {
                    Some(e) => Err(Failure::new("overloaded", e)),
                    None => Ok(self.register_done(&project, &typename, schema)),
                };
                self.reply(waiter.conn, waiter.wire, waiter.rid, "register", result);
                self.release_held(waiter.conn);
            }
            Stored::Saved {
                token,
                project,
                name,
                error,
            } => self.saved(token, &project, &name, error),
            Stored::Flushed { failed } => {
                for (project, name) in failed {
                    self.mark_dirty(&project, &name);
                }
            }
            Stored::State {
                project,
                name,
                found,
                error,
            } => {
                if let Some((record, schema)) = found {
                    if let Err(e) = self.restore_state(&project, &name, record, schema) {
                        tracing::warn!(
                            "lotus `{}`: {project}/{name}: the stored state cannot be read: {e}",
                            self.entry
                        );
                    }
                }
                self.loaded(&project, &format!("s\0{name}"), error);
            }
            Stored::Channel {
                project,
                channel,
                found,
                error,
            } => {
                if let Some((epoch, last_id, items)) = found {
                    self.projects
                        .borrow_mut()
                        .entry(project.clone())
                        .or_default()
                        .channels
                        .entry(channel.clone())
                        .or_insert_with(|| Owned {
                            history: Channel::restore(epoch, self.cfg.history, last_id, items),
                            cores: HashSet::new(),
                        });
                }
                self.loaded(&project, &format!("c\0{channel}"), error);
            }
        }
    }

    fn restore_state(
        &self,
        project: &str,
        name: &str,
        record: Record,
        schema: Value,
    ) -> Result<(), String> {
        let known = self
            .projects
            .borrow()
            .get(project)
            .and_then(|p| p.schemas.get(&record.typename).cloned());
        let schema = match known {
            Some(s) => s,
            None => {
                self.install_schema(project, &record.typename, schema);
                self.projects
                    .borrow()
                    .get(project)
                    .and_then(|p| p.schemas.get(&record.typename).cloned())
                    .ok_or("no schema")?
            }
        };
        let data = super::value::decode(&record.data)?;
        let LuaValue::Table(table) = to_lua(&self.lua, &data).map_err(|e| e.to_string())? else {
            return Err("not a table".into());
        };
        self.projects
            .borrow_mut()
            .entry(project.to_string())
            .or_default()
            .states
            .insert(
                name.to_string(),
                State {
                    typename: record.typename,
                    schema,
                    table: self
                        .lua
                        .create_registry_value(table)
                        .map_err(|e| e.to_string())?,
                    ctx: None,
                    timers: HashMap::new(),
                    exiting: false,
                    rev: record.rev,
                },
            );
        Ok(())
    }

    // ---- write-behind ------------------------------------------------------------------

    /// State `name` changed (or went): it is written at the next flush.
    fn mark_dirty(&self, project: &str, name: &str) {
        self.projects
            .borrow_mut()
            .entry(project.to_string())
            .or_default()
            .dirty
            .insert(name.to_string());
        if !self.flush_scheduled.replace(true) {
            if let Some(rt) = Self::core_rt() {
                rt.post_later(
                    Duration::from_millis(self.cfg.flush_ms),
                    PostKind::Lotus,
                    Post::Flush.encode().into(),
                );
            }
        }
    }

    /// The node stops in order: every dirty state goes to the store now, not at the next
    /// flush_ms (the binary then waits for the store to write it, `store::stop_all`).
    pub fn stop(&self) {
        self.flush();
    }

    /// Every dirty state of this core, in one batch to the store.
    fn flush(&self) {
        self.flush_scheduled.set(false);
        let mut items = Vec::new();
        let mut projects = self.projects.borrow_mut();
        for (project, p) in projects.iter_mut() {
            for name in std::mem::take(&mut p.dirty) {
                // A state that cannot be written was logged by `item`; it is not retried
                // until it changes again.
                if let Ok(item) = self.item(project, &name, p) {
                    items.push(item);
                }
            }
        }
        drop(projects);
        if !items.is_empty() {
            self.store.send(Cmd::Flush {
                core: self.core,
                items,
            });
        }
    }

    /// What the store is to do with state `name` now: write it (at the next `rev`), or
    /// delete it when it is gone. An error (logged) when it cannot be stored.
    fn item(&self, project: &str, name: &str, p: &mut Project) -> Result<Item, Failure> {
        let write = match p.states.get_mut(name) {
            None => None,
            Some(st) => {
                let table = self.lua.registry_value::<LuaValue>(&st.table);
                let data = match table.map_err(|e| e.to_string()).and_then(|t| from_lua(&t)) {
                    Ok(v) => super::value::encode(&v),
                    Err(e) => {
                        tracing::warn!("lotus `{}`: {project}/{name}: not stored: {e}", self.entry);
                        return Err(Failure::new("handler_error", format!("not stored: {e}")));
                    }
                };
                if data.len() > self.cfg.max_state_bytes {
                    self.oversize_skipped.set(self.oversize_skipped.get() + 1);
                    if self
                        .oversize_logged
                        .borrow_mut()
                        .insert(format!("{project}\0{name}"))
                    {
                        tracing::warn!(
                            "lotus `{}`: {project}/{name}: {} bytes is over max_state_bytes ({}): not stored ({} such skips on this core)",
                            self.entry,
                            data.len(),
                            self.cfg.max_state_bytes,
                            self.oversize_skipped.get()
                        );
                    }
                    return Err(Failure::new(
                        "too_large",
                        format!(
                            "state `{name}` is {} bytes, over max_state_bytes ({}): not stored",
                            data.len(),
                            self.cfg.max_state_bytes
                        ),
                    ));
                }
                st.rev += 1;
                Some(Record {
                    typename: st.typename.clone(),
                    schema_hash: st.schema.hash,
                    rev: st.rev,
                    data,
                })
            }
        };
        Ok(Item {
            project: project.to_string(),
            name: name.to_string(),
            write,
        })
    }

    /// Whether the handler that just ran on state `name` called `ctx.save()` (the request
    /// is then cleared).
    fn take_save(&self, project: &str, name: &str) -> bool {
        self.projects
            .borrow_mut()
            .get_mut(project)
            .is_some_and(|p| p.save_now.remove(name))
    }

    /// `ctx.save()`: state `name` goes to the store now rather than at the next flush; the
    /// reply `held` (if any) is sent once the store answered (`Stored::Saved`), failing
    /// with the store's error when the write did.
    fn save(&self, project: &str, name: &str, held: Option<HeldReply>) {
        let item = {
            let mut projects = self.projects.borrow_mut();
            let p = projects.entry(project.to_string()).or_default();
            // Written now with its latest content: the next flush need not write it again.
            p.dirty.remove(name);
            self.item(project, name, p)
        };
        match item {
            Ok(item) => {
                let token = self.next_save.get();
                self.next_save.set(token + 1);
                if let Some(h) = held {
                    self.held.borrow_mut().insert(token, h);
                }
                self.store.send(Cmd::Save {
                    core: self.core,
                    token,
                    item,
                });
            }
            Err(f) => {
                if let Some(h) = held {
                    // The handler's own error, if it failed, says more than the save's.
                    let result = h.result.and(Err(f));
                    self.reply(h.conn, h.wire, h.rid, h.name, result);
                }
            }
        }
    }

    /// A `ctx.save()` write is done: its held reply goes out (a failed write is retried at
    /// the next flush, as a failed flush is).
    fn saved(&self, token: u64, project: &str, name: &str, error: Option<String>) {
        if error.is_some() {
            self.mark_dirty(project, name);
        }
        let Some(h) = self.held.borrow_mut().remove(&token) else {
            return;
        };
        let result = match error {
            Some(e) => h.result.and_then(|_| Err(Failure::new("overloaded", e))),
            None => h.result,
        };
        self.reply(h.conn, h.wire, h.rid, h.name, result);
    }

    /// Runs a request on this core (its owner, or a request about the connection itself).
    fn run(&self, conn: u64, wire: Wire, project: &str, request: Request) {
        let Request { rid, command } = request;
        let name = command.name();
        let dirty = match &command {
            Command::InitState { statename, .. }
            | Command::UpdateState { statename, .. }
            | Command::Execute { statename, .. } => Some(statename.clone()),
            _ => None,
        };
        let executes = matches!(command, Command::Execute { .. });
        let result = match command {
            Command::Login { .. } => Err(Failure::new("bad_frame", "already logged in")),
            Command::Ping => Ok(Value::from("pong")),
            Command::SchemaList => Ok(self.schema_list(project)),
            Command::Register { schema } => match self.register(conn, wire, rid, project, schema) {
                Ok(()) => return,
                Err(f) => Err(f),
            },
            Command::InitState {
                typename,
                statename,
                value,
                strict,
            } => self.init_state(project, &typename, &statename, value, strict),
            Command::UpdateState {
                statename,
                keys,
                value,
            } => self.update_state(project, &statename, &keys, &value),
            Command::Execute {
                statename,
                funcname,
                params,
                reply,
            } => self
                .execute(project, &statename, &funcname, &params)
                .map(|values| {
                    if reply {
                        Value::Array(values)
                    } else {
                        Value::Nil
                    }
                }),
            Command::Get { statename, keys } => self.get(project, &statename, &keys),
            Command::Subscribe { channel, from } => {
                self.subscribe(conn, wire, project, &channel, from)
            }
            Command::Unsubscribe { channel } => {
                if let Some(id) = ConnId::from_raw(conn) {
                    if let Some(s) = self.sessions.borrow_mut().get_mut(&id) {
                        s.subs.remove(&channel);
                    }
                    self.drop_local(project, &channel, id);
                }
                Ok(Value::Nil)
            }
            Command::Publish { channel, msg } => self.publish(project, &channel, msg),
            Command::DeleteChannel { channel } => self.delete_channel(project, &channel),
            Command::ChannelHistory { channel, query } => {
                match self.history(project, &channel, query) {
                    Ok(history) => {
                        if rid != 0 {
                            self.write(
                                conn,
                                wire,
                                &Outgoing::ChannelHistory {
                                    rid,
                                    channel,
                                    history,
                                },
                            );
                        }
                        return;
                    }
                    Err(f) => Err(f),
                }
            }
        };
        if let Some(statename) = dirty {
            // A handler that failed may have changed its state before the error (`call` as
            // much as `execute_state`).
            if executes && self.take_save(project, &statename) {
                let held = HeldReply {
                    conn,
                    wire,
                    rid,
                    name,
                    result,
                };
                self.save(project, &statename, Some(held));
                return;
            }
            if result.is_ok() || executes {
                self.mark_dirty(project, &statename);
            }
        }
        self.reply(conn, wire, rid, name, result);
    }

    /// A post from another core (or from this one, for handler requests and timers).
    pub fn post(&self, payload: &[u8]) {
        let post = match Post::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("lotus `{}`: bad post: {e}", self.entry);
                return;
            }
        };
        match post {
            Post::Req {
                conn,
                wire,
                project,
                body,
            } => {
                let request = match wire {
                    Wire::V1 => v1::decode(&body),
                    Wire::Compat => compat::decode(&body),
                };
                match request {
                    Ok(r) => {
                        if let Some(key) = gate_key(&r.command) {
                            if !self.admit(&project, &key, || payload.to_vec()) {
                                return;
                            }
                        }
                        self.run(conn, wire, &project, r)
                    }
                    Err(e) => tracing::warn!("lotus `{}`: forwarded request: {e}", self.entry),
                }
            }
            Post::Schema {
                project,
                typename,
                schema,
            } => self.install_schema(&project, &typename, schema),
            Post::Interest {
                project,
                channel,
                core,
                add,
                resume,
            } => {
                if self.admit(&project, &format!("c\0{channel}"), || payload.to_vec()) {
                    self.interest(&project, &channel, core, add, resume)
                }
            }
            Post::Deliver {
                project,
                channel,
                epoch,
                id,
                msg,
            } => self.deliver(&project, &channel, epoch, id, msg),
            Post::Replay {
                project,
                channel,
                conn,
                history,
            } => self.replay(&project, &channel, conn, history),
            Post::Deleted { project, channel } => self.deleted(&project, &channel),
            Post::Out { conn, frame } => self.write_frame(conn, frame),
            Post::Timer {
                project,
                state,
                name,
                generation,
            } => self.fire_timer(&project, &state, &name, generation),
            Post::Flush => self.flush(),
            Post::Stored(stored) => self.stored(stored),
            Post::Login {
                project,
                node,
                conn,
                add,
            } => self.holder(&project, &node, conn, add),
            Post::Kick { conn } => self.kick(conn),
        }
    }

    // ---- schemas -----------------------------------------------------------------------

    fn sandbox(&self, project: &str) -> Result<Rc<Sandbox>, Failure> {
        let mut projects = self.projects.borrow_mut();
        let p = projects.entry(project.to_string()).or_default();
        if let Some(sb) = &p.sandbox {
            return Ok(sb.clone());
        }
        let sb =
            Rc::new(Sandbox::new(&self.lua).map_err(|e| {
                Failure::new("overloaded", format!("cannot build the sandbox: {e}"))
            })?);
        p.sandbox = Some(sb.clone());
        Ok(sb)
    }

    fn compile(&self, project: &str, schema: &Value) -> Result<Compiled, Failure> {
        let sandbox = self.sandbox(project)?;
        let table = match to_lua(&self.lua, schema) {
            Ok(LuaValue::Table(t)) => t,
            _ => return Err(Failure::new("bad_frame", "the schema is not a table")),
        };
        sandbox
            .compile_schema(&self.lua, &table)
            .map_err(|CompileError { handler, message }| Failure {
                code: "compile_error",
                detail: map([
                    ("handler", Value::from(handler)),
                    ("message", Value::from(message)),
                ]),
            })
    }

    /// `register`: every handler must compile here first; then the store keeps the schema,
    /// and its acknowledgement (`register_done`) lets every core learn it and the client hear.
    fn register(
        &self,
        conn: u64,
        wire: Wire,
        rid: u64,
        project: &str,
        schema: Value,
    ) -> Result<(), Failure> {
        let typename = wire::field(&schema, "typename")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.compile(project, &schema)?;
        // Hold this connection's next frames until every core knows the schema.
        if let Some(id) = ConnId::from_raw(conn) {
            if let Some(s) = self.sessions.borrow_mut().get_mut(&id) {
                s.held = Some(Default::default());
            }
        }
        self.store.send(Cmd::Schema {
            waiter: Waiter {
                core: self.core,
                conn,
                wire,
                rid,
            },
            project: project.to_string(),
            typename,
            schema,
        });
        Ok(())
    }

    fn register_done(&self, project: &str, typename: &str, schema: Value) -> Value {
        let typename = typename.to_string();
        let hash = content_hash(&super::value::encode(&schema));
        let post = Post::Schema {
            project: project.to_string(),
            typename: typename.clone(),
            schema,
        };
        for core in 0..self.cores {
            if core == self.core {
                if let Post::Schema { schema, .. } = &post {
                    self.install_schema(project, &typename, schema.clone());
                }
            } else {
                self.send(core, &post);
            }
        }
        map([
            ("typename", Value::from(typename)),
            ("hash", Value::from(format!("{hash:016x}"))),
        ])
    }

    fn install_schema(&self, project: &str, typename: &str, schema: Value) {
        let hash = content_hash(&super::value::encode(&schema));
        let mut projects = self.projects.borrow_mut();
        projects
            .entry(project.to_string())
            .or_default()
            .schemas
            .insert(
                typename.to_string(),
                Rc::new(Schema {
                    value: schema,
                    hash,
                    compiled: RefCell::new(None),
                }),
            );
    }

    fn schema_list(&self, project: &str) -> Value {
        let projects = self.projects.borrow();
        let mut list: Vec<(String, u64)> = projects
            .get(project)
            .map(|p| p.schemas.iter().map(|(t, s)| (t.clone(), s.hash)).collect())
            .unwrap_or_default();
        list.sort();
        Value::Array(
            list.into_iter()
                .map(|(t, h)| Value::Array(vec![Value::from(t), Value::from(format!("{h:016x}"))]))
                .collect(),
        )
    }

    fn compiled(&self, project: &str, schema: &Rc<Schema>) -> Result<Rc<Compiled>, Failure> {
        if let Some(c) = schema.compiled.borrow().as_ref() {
            return Ok(c.clone());
        }
        let c = Rc::new(self.compile(project, &schema.value)?);
        *schema.compiled.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    // ---- states ------------------------------------------------------------------------

    fn init_state(
        &self,
        project: &str,
        typename: &str,
        statename: &str,
        value: Option<Value>,
        strict: bool,
    ) -> Result<Value, Failure> {
        let schema = {
            let projects = self.projects.borrow();
            let p = projects.get(project);
            if let Some(existing) = p.and_then(|p| p.states.get(statename)) {
                if strict || existing.typename != typename {
                    return Err(Failure {
                        code: "state_exists",
                        detail: map([
                            (
                                "message",
                                Value::from(format!(
                                    "state `{statename}` exists (type `{}`)",
                                    existing.typename
                                )),
                            ),
                            ("type", Value::from(existing.typename.as_str())),
                        ]),
                    });
                }
                return Ok(map([("created", Value::from(false))]));
            }
            if p.map_or(0, |p| p.states.len()) >= self.max_local_states {
                return Err(Failure::new(
                    "overloaded",
                    format!(
                        "project `{project}` holds its share of `max_states` ({}) on this core",
                        self.max_local_states
                    ),
                ));
            }
            p.and_then(|p| p.schemas.get(typename))
                .cloned()
                .ok_or_else(|| {
                    Failure::new(
                        "unknown_type",
                        format!("no schema `{typename}` is registered"),
                    )
                })?
        };
        let init = value.or_else(|| wire::field(&schema.value, "init").cloned());
        let table = match init.as_ref().map(|v| to_lua(&self.lua, v)) {
            None => self.lua.create_table().map_err(lua_failure)?,
            Some(Ok(LuaValue::Table(t))) => t,
            Some(Ok(_)) => {
                return Err(Failure::new("bad_frame", "a state's value must be a table"))
            }
            Some(Err(e)) => return Err(lua_failure(e)),
        };
        self.projects
            .borrow_mut()
            .entry(project.to_string())
            .or_default()
            .states
            .insert(
                statename.to_string(),
                State {
                    typename: typename.to_string(),
                    schema,
                    table: self.lua.create_registry_value(table).map_err(lua_failure)?,
                    ctx: None,
                    timers: HashMap::new(),
                    exiting: false,
                    // Above any revision an earlier state of this name was stored with (its
                    // delete may not have reached the store yet): the Redis fence would
                    // otherwise refuse the new state's writes.
                    rev: first_rev(),
                },
            );
        Ok(map([("created", Value::from(true))]))
    }

    fn state_table(&self, project: &str, statename: &str) -> Result<Table, Failure> {
        self.projects
            .borrow()
            .get(project)
            .and_then(|p| p.states.get(statename))
            .map(|s| {
                self.lua
                    .registry_value::<Table>(&s.table)
                    .map_err(lua_failure)
            })
            .ok_or_else(|| Failure::new("state_not_found", format!("no state `{statename}`")))?
    }

    /// Walks `keys` from `table`: the table holding the last key (`None` past a missing or
    /// non-table step, with the depth where it stopped).
    fn walk(&self, table: &Table, keys: &[Value]) -> Result<Table, Failure> {
        let mut t = table.clone();
        for (depth, k) in keys.iter().enumerate() {
            let key = to_lua(&self.lua, k).map_err(lua_failure)?;
            match t.raw_get::<LuaValue>(key).map_err(lua_failure)? {
                LuaValue::Table(next) => t = next,
                _ => {
                    return Err(Failure {
                        code: "path_missing",
                        detail: map([
                            (
                                "message",
                                Value::from(format!("no table at path step {}", depth + 1)),
                            ),
                            ("depth", Value::from(depth as u64 + 1)),
                        ]),
                    })
                }
            }
        }
        Ok(t)
    }

    /// `update_state`: an empty path replaces the whole state; otherwise the last key of the
    /// path is assigned (`nil` removes it). Missing intermediate tables are `path_missing`.
    fn update_state(
        &self,
        project: &str,
        statename: &str,
        keys: &[Value],
        value: &Value,
    ) -> Result<Value, Failure> {
        let table = self.state_table(project, statename)?;
        let v = to_lua(&self.lua, value).map_err(lua_failure)?;
        match keys.split_last() {
            None => {
                let LuaValue::Table(new) = v else {
                    return Err(Failure::new(
                        "bad_frame",
                        "replacing a whole state needs a table",
                    ));
                };
                if let Some(s) = self
                    .projects
                    .borrow_mut()
                    .get_mut(project)
                    .and_then(|p| p.states.get_mut(statename))
                {
                    s.table = self.lua.create_registry_value(new).map_err(lua_failure)?;
                }
            }
            Some((last, path)) => {
                let parent = self.walk(&table, path)?;
                let key = to_lua(&self.lua, last).map_err(lua_failure)?;
                if key.is_nil() {
                    return Err(Failure::new("bad_frame", "a path key cannot be nil"));
                }
                parent.raw_set(key, v).map_err(lua_failure)?;
            }
        }
        Ok(Value::Nil)
    }

    fn get(&self, project: &str, statename: &str, keys: &[Value]) -> Result<Value, Failure> {
        let table = self.state_table(project, statename)?;
        let v = match keys.split_last() {
            None => LuaValue::Table(table),
            Some((last, path)) => {
                let parent = self.walk(&table, path)?;
                parent
                    .raw_get::<LuaValue>(to_lua(&self.lua, last).map_err(lua_failure)?)
                    .map_err(lua_failure)?
            }
        };
        from_lua(&v).map_err(|e| Failure::new("bad_frame", e))
    }

    /// Runs handler `funcname` of state `statename`: its return values.
    fn execute(
        &self,
        project: &str,
        statename: &str,
        funcname: &str,
        params: &[Value],
    ) -> Result<Vec<Value>, Failure> {
        let (schema, table, typename) = {
            let projects = self.projects.borrow();
            let s = projects
                .get(project)
                .and_then(|p| p.states.get(statename))
                .ok_or_else(|| {
                    Failure::new("state_not_found", format!("no state `{statename}`"))
                })?;
            let table = self
                .lua
                .registry_value::<Table>(&s.table)
                .map_err(lua_failure)?;
            (s.schema.clone(), table, s.typename.clone())
        };
        let compiled = self.compiled(project, &schema)?;
        let Some((_, f)) = compiled.handlers.iter().find(|(n, _)| n == funcname) else {
            return Err(Failure::new(
                "unknown_handler",
                format!("type `{typename}` has no handler `{funcname}`"),
            ));
        };
        let f = f.clone();
        let ctx = self.ctx(project, statename).map_err(lua_failure)?;
        let mut args = vec![LuaValue::Table(ctx), LuaValue::Table(table)];
        for p in params {
            args.push(to_lua(&self.lua, p).map_err(lua_failure)?);
        }
        let result = self.call(&f, MultiValue::from_iter(args));
        self.finish_exit(project, statename);
        let values = result.map_err(|message| {
            tracing::warn!(
                "lotus `{}`: {project}/{statename}: handler `{funcname}` failed: {message}",
                self.entry
            );
            Failure::new("handler_error", message)
        })?;
        values
            .iter()
            .map(from_lua)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::new("handler_error", format!("return value: {e}")))
    }

    /// Calls a handler or callback; a Lua error becomes its message with the traceback.
    fn call(&self, f: &Function, args: MultiValue) -> Result<MultiValue, String> {
        f.call::<MultiValue>(args).map_err(|e| match e {
            mlua::Error::CallbackError { cause, traceback } => format!("{cause}\n{traceback}"),
            other => other.to_string(),
        })
    }

    /// `ctx.exit()` during the call: the state goes once its handler returned.
    fn finish_exit(&self, project: &str, statename: &str) {
        let mut projects = self.projects.borrow_mut();
        if let Some(p) = projects.get_mut(project) {
            if p.states.get(statename).is_some_and(|s| s.exiting) {
                p.states.remove(statename);
            }
        }
    }

    // ---- ctx ---------------------------------------------------------------------------

    /// The state's `ctx` (spec §7), made once per state.
    fn ctx(&self, project: &str, statename: &str) -> mlua::Result<Table> {
        if let Some(ctx) = self
            .projects
            .borrow()
            .get(project)
            .and_then(|p| p.states.get(statename))
            .and_then(|s| s.ctx.as_ref().map(|k| self.lua.registry_value::<Table>(k)))
        {
            return ctx;
        }
        let lua = &self.lua;
        let ctx = lua.create_table()?;
        let who = format!("{project}/{statename}");
        for (name, level) in [("log", "info"), ("warn", "warn"), ("error", "error")] {
            let who = who.clone();
            ctx.raw_set(
                name,
                lua.create_function(move |_, args: Variadic<LuaValue>| {
                    let text: Vec<String> = args
                        .iter()
                        .map(|v| v.to_string().unwrap_or_else(|_| v.type_name().to_string()))
                        .collect();
                    let text = text.join(" ");
                    match level {
                        "info" => tracing::info!("lotus {who}: {text}"),
                        "warn" => tracing::warn!("lotus {who}: {text}"),
                        _ => tracing::error!("lotus {who}: {text}"),
                    }
                    Ok(())
                })?,
            )?;
        }
        let me = self.me.clone();
        let (p, s) = (project.to_string(), statename.to_string());
        ctx.raw_set(
            "exit",
            lua.create_function(move |_, ()| {
                if let Some(server) = me.upgrade() {
                    if let Some(st) = server
                        .projects
                        .borrow_mut()
                        .get_mut(&p)
                        .and_then(|x| x.states.get_mut(&s))
                    {
                        st.exiting = true;
                        st.timers.clear();
                    }
                }
                Ok(())
            })?,
        )?;
        let me = self.me.clone();
        let (p, s) = (project.to_string(), statename.to_string());
        ctx.raw_set(
            "save",
            lua.create_function(move |_, ()| {
                // Written when the handler returns (with everything it changed), and its
                // caller's reply waits for the store's answer.
                if let Some(server) = me.upgrade() {
                    if let Some(x) = server.projects.borrow_mut().get_mut(&p) {
                        x.save_now.insert(s.clone());
                    }
                }
                Ok(())
            })?,
        )?;
        let me = self.me.clone();
        let p = project.to_string();
        ctx.raw_set(
            "initstate",
            lua.create_function(
                move |lua, (typename, statename, value): (String, String, LuaValue)| {
                    let server = me
                        .upgrade()
                        .ok_or_else(|| mlua::Error::runtime("lotus stopped"))?;
                    let mut args = vec![
                        ("typename", Value::from(typename)),
                        ("statename", Value::from(statename.as_str())),
                    ];
                    if !value.is_nil() {
                        args.push(("value", from_lua(&value).map_err(mlua::Error::runtime)?));
                    }
                    server.ask(&p, &statename, "init_state", args);
                    server.proxy(lua, &p, &statename)
                },
            )?,
        )?;
        let me = self.me.clone();
        let p = project.to_string();
        ctx.raw_set(
            "updatestate",
            lua.create_function(move |lua, args: Variadic<LuaValue>| {
                let server = me
                    .upgrade()
                    .ok_or_else(|| mlua::Error::runtime("lotus stopped"))?;
                let (statename, keys, value) = split_update(&args)?;
                server.ask(
                    &p,
                    &statename,
                    "update_state",
                    vec![
                        ("statename", Value::from(statename.as_str())),
                        ("keys", Value::Array(keys)),
                        ("value", value),
                    ],
                );
                server.proxy(lua, &p, &statename)
            })?,
        )?;
        let me = self.me.clone();
        let p = project.to_string();
        ctx.raw_set(
            "state",
            lua.create_function(move |lua, name: String| {
                let server = me
                    .upgrade()
                    .ok_or_else(|| mlua::Error::runtime("lotus stopped"))?;
                server.proxy(lua, &p, &name)
            })?,
        )?;
        let me = self.me.clone();
        let p = project.to_string();
        ctx.raw_set(
            "publish",
            lua.create_function(move |_, (channel, args): (String, Variadic<LuaValue>)| {
                let server = me
                    .upgrade()
                    .ok_or_else(|| mlua::Error::runtime("lotus stopped"))?;
                let msg = args
                    .iter()
                    .map(from_lua)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(mlua::Error::runtime)?;
                let owner = server.channel_owner(&p, &channel);
                let post = Post::Req {
                    conn: 0,
                    wire: Wire::V1,
                    project: p.clone(),
                    body: v1_body(
                        "publish",
                        map([
                            ("channel", Value::from(channel.as_str())),
                            ("args", Value::Array(msg)),
                        ]),
                    ),
                };
                server.send(owner, &post);
                Ok(())
            })?,
        )?;
        for (name, once) in [("timeout", true), ("interval", false)] {
            let me = self.me.clone();
            let (p, s) = (project.to_string(), statename.to_string());
            ctx.raw_set(
                name,
                lua.create_function(move |_, (timer, ms, callback): (String, f64, String)| {
                    let server = me
                        .upgrade()
                        .ok_or_else(|| mlua::Error::runtime("lotus stopped"))?;
                    server.set_timer(&p, &s, &timer, ms, &callback, once)
                })?,
            )?;
        }
        let me = self.me.clone();
        let (p, s) = (project.to_string(), statename.to_string());
        ctx.raw_set(
            "querytimer",
            lua.create_function(move |lua, timer: String| {
                let server = me
                    .upgrade()
                    .ok_or_else(|| mlua::Error::runtime("lotus stopped"))?;
                let projects = server.projects.borrow();
                let Some(t) = projects
                    .get(&p)
                    .and_then(|x| x.states.get(&s))
                    .and_then(|st| st.timers.get(&timer))
                else {
                    return Ok(LuaValue::Nil);
                };
                let out = lua.create_table()?;
                out.raw_set("name", timer.as_str())?;
                out.raw_set("starttime", t.start_ms as f64)?;
                out.raw_set("delay", t.delay_ms as f64)?;
                out.raw_set("count", t.count as f64)?;
                out.raw_set("callback", t.callback.as_str())?;
                out.raw_set("once", t.once)?;
                Ok(LuaValue::Table(out))
            })?,
        )?;
        let me = self.me.clone();
        let (p, s) = (project.to_string(), statename.to_string());
        ctx.raw_set(
            "killtimer",
            lua.create_function(move |_, timer: String| {
                let server = me
                    .upgrade()
                    .ok_or_else(|| mlua::Error::runtime("lotus stopped"))?;
                let removed = server
                    .projects
                    .borrow_mut()
                    .get_mut(&p)
                    .and_then(|x| x.states.get_mut(&s))
                    .and_then(|st| st.timers.remove(&timer))
                    .is_some();
                Ok(removed)
            })?,
        )?;
        if let Some(st) = self
            .projects
            .borrow_mut()
            .get_mut(project)
            .and_then(|p| p.states.get_mut(statename))
        {
            st.ctx = Some(self.lua.create_registry_value(ctx.clone())?);
        }
        Ok(ctx)
    }

    /// Posts a handler's request about state `statename` to its owner (even this core: a
    /// handler is never re-entered).
    fn ask(&self, project: &str, statename: &str, name: &str, args: Vec<(&str, Value)>) {
        let owner = self.state_owner(project, statename);
        let args = Value::Map(args.into_iter().map(|(k, v)| (Value::from(k), v)).collect());
        self.send(
            owner,
            &Post::Req {
                conn: 0,
                wire: Wire::V1,
                project: project.to_string(),
                body: v1_body(name, args),
            },
        );
    }

    /// A proxy for state `name`: `proxy.fn(...)` posts an `execute_state`.
    fn proxy(&self, lua: &Lua, project: &str, name: &str) -> mlua::Result<Table> {
        let proxy = lua.create_table()?;
        proxy.raw_set("name", name)?;
        let meta = lua.create_table()?;
        let me = self.me.clone();
        let (p, n) = (project.to_string(), name.to_string());
        meta.raw_set(
            "__index",
            lua.create_function(move |lua, (_, funcname): (LuaValue, String)| {
                let me = me.clone();
                let (p, n) = (p.clone(), n.clone());
                lua.create_function(move |_, args: Variadic<LuaValue>| {
                    let server = me
                        .upgrade()
                        .ok_or_else(|| mlua::Error::runtime("lotus stopped"))?;
                    let params = args
                        .iter()
                        .map(from_lua)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(mlua::Error::runtime)?;
                    server.ask(
                        &p,
                        &n,
                        "execute_state",
                        vec![
                            ("statename", Value::from(n.as_str())),
                            ("funcname", Value::from(funcname.as_str())),
                            ("params", Value::Array(params)),
                        ],
                    );
                    Ok(())
                })
            })?,
        )?;
        proxy.set_metatable(Some(meta))?;
        Ok(proxy)
    }

    // ---- timers ------------------------------------------------------------------------

    fn set_timer(
        &self,
        project: &str,
        statename: &str,
        name: &str,
        ms: f64,
        callback: &str,
        once: bool,
    ) -> mlua::Result<()> {
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(mlua::Error::runtime(
                "a timer's time must be a non-negative number of msec",
            ));
        }
        let generation = self.next_timer.get();
        self.next_timer.set(generation + 1);
        let delay_ms = ms as u64;
        {
            let mut projects = self.projects.borrow_mut();
            let Some(st) = projects
                .get_mut(project)
                .and_then(|p| p.states.get_mut(statename))
            else {
                return Err(mlua::Error::runtime("the state is gone"));
            };
            st.timers.insert(
                name.to_string(),
                Timer {
                    generation,
                    delay_ms,
                    callback: callback.to_string(),
                    once,
                    count: 0,
                    start_ms: now_ms(),
                },
            );
        }
        self.schedule(project, statename, name, generation, delay_ms);
        Ok(())
    }

    fn schedule(&self, project: &str, statename: &str, name: &str, generation: u64, delay_ms: u64) {
        let Some(rt) = Self::core_rt() else { return };
        let post = Post::Timer {
            project: project.to_string(),
            state: statename.to_string(),
            name: name.to_string(),
            generation,
        };
        rt.post_later(
            Duration::from_millis(delay_ms),
            PostKind::Lotus,
            post.encode().into(),
        );
    }

    /// A timer is due: its callback runs like a handler (an error is logged; an interval goes
    /// on, a timeout is removed either way).
    fn fire_timer(&self, project: &str, statename: &str, name: &str, generation: u64) {
        let (callback, once, delay, schema, table) = {
            let mut projects = self.projects.borrow_mut();
            let Some(st) = projects
                .get_mut(project)
                .and_then(|p| p.states.get_mut(statename))
            else {
                return;
            };
            let Some(t) = st
                .timers
                .get_mut(name)
                .filter(|t| t.generation == generation)
            else {
                return;
            };
            t.count += 1;
            let out = (
                t.callback.clone(),
                t.once,
                t.delay_ms,
                st.schema.clone(),
                self.lua.registry_value::<Table>(&st.table),
            );
            if t.once {
                st.timers.remove(name);
            }
            out
        };
        if !once {
            self.schedule(project, statename, name, generation, delay.max(1));
        }
        let run = || -> Result<(), String> {
            let compiled = self
                .compiled(project, &schema)
                .map_err(|f| f.detail.to_string())?;
            let f = compiled
                .callbacks
                .iter()
                .find(|(n, _)| *n == callback)
                .map(|(_, f)| f.clone())
                .ok_or_else(|| format!("no callback `{callback}`"))?;
            let ctx = self.ctx(project, statename).map_err(|e| e.to_string())?;
            let table = table.clone().map_err(|e| e.to_string())?;
            let timer = self.lua.create_table().map_err(|e| e.to_string())?;
            let _ = timer.raw_set("name", name);
            let _ = timer.raw_set("callback", callback.as_str());
            let _ = timer.raw_set("delay", delay as f64);
            let _ = timer.raw_set("once", once);
            let args = MultiValue::from_iter([
                LuaValue::Table(ctx),
                LuaValue::Table(table),
                LuaValue::Table(timer),
            ]);
            self.call(&f, args).map(|_| ())
        };
        if let Err(e) = run() {
            tracing::warn!(
                "lotus `{}`: {project}/{statename}: timer `{name}` failed: {e}",
                self.entry
            );
        }
        self.finish_exit(project, statename);
        if self.take_save(project, statename) {
            self.save(project, statename, None);
        } else {
            self.mark_dirty(project, statename);
        }
    }

    // ---- channels ----------------------------------------------------------------------

    fn publish(&self, project: &str, channel: &str, msg: Value) -> Result<Value, Failure> {
        let (epoch, id, cores) = {
            let mut projects = self.projects.borrow_mut();
            let p = projects.entry(project.to_string()).or_default();
            let owned = p
                .channels
                .entry(channel.to_string())
                .or_insert_with(|| self.new_channel());
            let id = owned.history.publish(msg.clone());
            self.store.send(Cmd::Append {
                project: project.to_string(),
                channel: channel.to_string(),
                epoch: owned.history.epoch(),
                id,
                msg: super::value::encode(&msg),
            });
            (
                owned.history.epoch(),
                id,
                owned.cores.iter().copied().collect::<Vec<_>>(),
            )
        };
        for core in cores {
            if core == self.core {
                self.deliver(project, channel, epoch, id, msg.clone());
            } else {
                self.send(
                    core,
                    &Post::Deliver {
                        project: project.to_string(),
                        channel: channel.to_string(),
                        epoch,
                        id,
                        msg: msg.clone(),
                    },
                );
            }
        }
        Ok(map([
            ("id", Value::from(id)),
            ("epoch", Value::from(epoch)),
        ]))
    }

    fn new_channel(&self) -> Owned {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Owned {
            history: Channel::new(epoch, self.cfg.history),
            cores: HashSet::new(),
        }
    }

    fn history(
        &self,
        project: &str,
        channel: &str,
        query: Query,
    ) -> Result<History<Value>, Failure> {
        let projects = self.projects.borrow();
        let owned = projects
            .get(project)
            .and_then(|p| p.channels.get(channel))
            .ok_or_else(|| {
                Failure::new(
                    "channel_not_found",
                    format!("channel `{channel}` has never been used"),
                )
            })?;
        Ok(owned.history.history(query))
    }

    fn delete_channel(&self, project: &str, channel: &str) -> Result<Value, Failure> {
        let owned = self
            .projects
            .borrow_mut()
            .get_mut(project)
            .and_then(|p| p.channels.remove(channel));
        self.store.send(Cmd::DeleteChannel {
            project: project.to_string(),
            channel: channel.to_string(),
        });
        if let Some(owned) = owned {
            for core in owned.cores {
                if core == self.core {
                    self.deleted(project, channel);
                } else {
                    self.send(
                        core,
                        &Post::Deleted {
                            project: project.to_string(),
                            channel: channel.to_string(),
                        },
                    );
                }
            }
        }
        Ok(Value::Nil)
    }

    /// `subscribe` on the connection's core: registered here at once; the owner hears of
    /// this core's first subscriber, and of every resume.
    fn subscribe(
        &self,
        conn: u64,
        wire: Wire,
        project: &str,
        channel: &str,
        from: Option<u64>,
    ) -> Result<Value, Failure> {
        let Some(id) = ConnId::from_raw(conn) else {
            return Err(Failure::new("bad_frame", "subscribe needs a connection"));
        };
        let fresh = {
            let mut sessions = self.sessions.borrow_mut();
            let Some(s) = sessions.get_mut(&id) else {
                return Err(Failure::new("bad_frame", "subscribe needs a connection"));
            };
            s.subs.insert(channel.to_string(), from.is_none()).is_none()
        };
        let first_here = {
            let mut projects = self.projects.borrow_mut();
            let local = projects
                .entry(project.to_string())
                .or_default()
                .local
                .entry(channel.to_string())
                .or_default();
            let first = local.is_empty();
            if fresh {
                local.push(id);
            }
            first
        };
        if first_here || from.is_some() {
            let post = Post::Interest {
                project: project.to_string(),
                channel: channel.to_string(),
                core: self.core,
                add: true,
                resume: from.map(|f| (conn, wire, f)),
            };
            let owner = self.channel_owner(project, channel);
            if owner == self.core {
                let key = format!("c\0{channel}");
                if self.admit(project, &key, || post.encode()) {
                    if let Post::Interest { resume, .. } = post {
                        self.interest(project, channel, self.core, true, resume);
                    }
                }
            } else {
                self.send(owner, &post);
            }
        }
        Ok(Value::Nil)
    }

    fn drop_local(&self, project: &str, channel: &str, conn: ConnId) {
        let last = {
            let mut projects = self.projects.borrow_mut();
            let Some(p) = projects.get_mut(project) else {
                return;
            };
            let Some(local) = p.local.get_mut(channel) else {
                return;
            };
            local.retain(|c| *c != conn);
            let last = local.is_empty();
            if last {
                p.local.remove(channel);
            }
            last
        };
        if last {
            let owner = self.channel_owner(project, channel);
            let post = Post::Interest {
                project: project.to_string(),
                channel: channel.to_string(),
                core: self.core,
                add: false,
                resume: None,
            };
            if owner == self.core {
                let key = format!("c\0{channel}");
                if self.admit(project, &key, || post.encode()) {
                    self.interest(project, channel, self.core, false, None);
                }
            } else {
                self.send(owner, &post);
            }
        }
    }

    /// On the channel's owner: core `core` gained or lost its subscribers; a resume gets
    /// its replay now, before any later delivery.
    fn interest(
        &self,
        project: &str,
        channel: &str,
        core: usize,
        add: bool,
        resume: Option<(u64, Wire, u64)>,
    ) {
        let replay = {
            let mut projects = self.projects.borrow_mut();
            let p = projects.entry(project.to_string()).or_default();
            if !add {
                if let Some(owned) = p.channels.get_mut(channel) {
                    owned.cores.remove(&core);
                }
                return;
            }
            let owned = p
                .channels
                .entry(channel.to_string())
                .or_insert_with(|| self.new_channel());
            owned.cores.insert(core);
            resume.map(|(conn, _, from)| {
                (
                    conn,
                    owned.history.history(Query::From {
                        id: from,
                        limit: self.cfg.history,
                    }),
                )
            })
        };
        if let Some((conn, history)) = replay {
            let post = Post::Replay {
                project: project.to_string(),
                channel: channel.to_string(),
                conn,
                history,
            };
            if core == self.core {
                self.post(&post.encode());
            } else {
                self.send(core, &post);
            }
        }
    }

    /// A channel message for this core's subscribers: encoded once per wire.
    fn deliver(&self, project: &str, channel: &str, epoch: u64, id: u64, msg: Value) {
        let targets: Vec<(ConnId, Wire)> = {
            let projects = self.projects.borrow();
            let Some(local) = projects.get(project).and_then(|p| p.local.get(channel)) else {
                return;
            };
            let sessions = self.sessions.borrow();
            local
                .iter()
                .filter_map(|c| {
                    let s = sessions.get(c)?;
                    s.subs
                        .get(channel)
                        .copied()
                        .filter(|live| *live)
                        .map(|_| (*c, s.wire))
                })
                .collect()
        };
        let out = Outgoing::ChannelMessage {
            channel: channel.to_string(),
            epoch,
            id,
            msg,
        };
        let mut frames: [Option<Option<Vec<u8>>>; 2] = [None, None];
        let Some(rt) = Self::core_rt() else { return };
        for (conn, wire) in targets {
            let slot = &mut frames[wire as usize];
            let frame = slot.get_or_insert_with(|| Self::encode(wire, &out));
            if let (Some(frame), Some(c)) = (frame.as_ref(), rt.conn(conn)) {
                let _ = c.append(frame);
            }
        }
    }

    /// The replay of a resume, for one connection here: the truncation notice, the retained
    /// messages from its id, then it is live.
    fn replay(&self, _project: &str, channel: &str, conn: u64, history: History<Value>) {
        let Some(id) = ConnId::from_raw(conn) else {
            return;
        };
        let wire = {
            let mut sessions = self.sessions.borrow_mut();
            let Some(s) = sessions.get_mut(&id) else {
                return;
            };
            match s.subs.get_mut(channel) {
                Some(live) => *live = true,
                None => return,
            }
            s.wire
        };
        if history.truncated {
            self.write(
                conn,
                wire,
                &Outgoing::ChannelTruncated {
                    channel: channel.to_string(),
                    epoch: history.epoch,
                    first_id: history.first_id,
                },
            );
        }
        for (mid, msg) in history.items {
            self.write(
                conn,
                wire,
                &Outgoing::ChannelMessage {
                    channel: channel.to_string(),
                    epoch: history.epoch,
                    id: mid,
                    msg,
                },
            );
        }
    }

    /// The channel was deleted: this core's subscribers are told and dropped.
    fn deleted(&self, project: &str, channel: &str) {
        let local = self
            .projects
            .borrow_mut()
            .get_mut(project)
            .and_then(|p| p.local.remove(channel))
            .unwrap_or_default();
        for conn in local {
            let wire = {
                let mut sessions = self.sessions.borrow_mut();
                let Some(s) = sessions.get_mut(&conn) else {
                    continue;
                };
                s.subs.remove(channel);
                s.wire
            };
            self.write(
                conn.raw(),
                wire,
                &Outgoing::ChannelDeleted {
                    channel: channel.to_string(),
                },
            );
        }
    }
}

/// What a request needs loaded on its owner before it runs: `s\0state` or `c\0channel`.
fn gate_key(command: &Command) -> Option<String> {
    match command {
        Command::InitState { statename, .. }
        | Command::UpdateState { statename, .. }
        | Command::Execute { statename, .. }
        | Command::Get { statename, .. } => Some(format!("s\0{statename}")),
        Command::Publish { channel, .. }
        | Command::DeleteChannel { channel }
        | Command::ChannelHistory { channel, .. } => Some(format!("c\0{channel}")),
        _ => None,
    }
}

/// A v1 request body (no header) for a request a handler makes.
fn v1_body(name: &str, args: Value) -> Vec<u8> {
    v1::encode_request(0, name, args)[4..].to_vec()
}

fn lua_failure(e: mlua::Error) -> Failure {
    Failure::new("bad_frame", e.to_string())
}

/// `(statename, k1, ..., kn, v)`: the path and the value of an update.
fn split_update(args: &[LuaValue]) -> mlua::Result<(String, Vec<Value>, Value)> {
    if args.len() < 2 {
        return Err(mlua::Error::runtime(
            "updatestate(statename, k1, ..., v) needs a name and a value",
        ));
    }
    let name = match &args[0] {
        LuaValue::String(s) => s.to_str()?.to_string(),
        other => {
            return Err(mlua::Error::runtime(format!(
                "a state name is a string, not a {}",
                other.type_name()
            )))
        }
    };
    let value = from_lua(&args[args.len() - 1]).map_err(mlua::Error::runtime)?;
    let keys = args[1..args.len() - 1]
        .iter()
        .map(from_lua)
        .collect::<Result<Vec<_>, _>>()
        .map_err(mlua::Error::runtime)?;
    Ok((name, keys, value))
}
