//! One core: a pinned glommio executor running one script host (a LuaJIT state), the accept
//! loops of every listener, the connection tasks it accepted, its inbox, the main scripts of
//! the Lua stages whose main core it is, and its shards of the service stages (index.so,
//! `=ticket`, `=route`): only this core's thread ever touches them. In a child of a
//! multi-process node, core 0 also owns the datagram socket to the other processes and sends
//! the heartbeats (`peers`). Everything here is `Rc`/`RefCell`: a core is one thread.
//!
//! The core is the owner `net` reports connection events to ([`ConnEvents`]) and it hands
//! them on to its [`ScriptHost`]; it never names Lua. After every call into the host it
//! starts the listeners the script opened meanwhile ([`Core::after_script`]).
//!
//! Invariants: a connection is read, written and closed only by the core that accepted (or
//! joined) it; the script host is entered only from this core's tasks, one call at a time,
//! and no `RefCell` borrow is held across such a call (scripts re-enter the core through the
//! natives in `script::natives`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::AsyncReadExt;
use glommio::{LocalExecutorBuilder, Placement};

use super::host::{HostFactory, ScriptHost};
use super::mailbox::{self, Inbox};
use super::post::PostKind;
use super::reload::Ack;
use super::stats::{Callback, CoreSnapshot, CoreStats};
use super::timed::{TimedService, TimedSlot};
use super::{CoreMsg, ListenerShared, Node, SHUTDOWN_GRACE};
use crate::codec::framing::Framing;
use crate::net::conn::Conn;
use crate::net::id::ConnId;
use crate::net::stats::IoStats;
use crate::net::{listener, udp, ConnEvents};
use crate::notify::Notify;
use crate::plan::{LuaStage, ServiceKind};
use crate::service::index::sync::SHUTDOWN_WAIT;
use crate::service::index::{IndexConfig, IndexService};
use crate::service::route::RouteService;
use crate::service::shard::Shard;
use crate::service::ticket::TicketService;

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
    /// The same core as a raw pointer, for the FFI functions: no refcount traffic per call.
    static CURRENT_RAW: Cell<*const Core> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with this thread's core, if it has one. For the hot FFI entry points.
pub fn with_current<R>(f: impl FnOnce(&Core) -> R) -> Option<R> {
    let ptr = CURRENT_RAW.with(Cell::get);
    // SAFETY: the pointer is set from a live `Rc<Core>` that CURRENT keeps alive, and it is
    // cleared in the same place CURRENT is; a core is only used by its own thread.
    unsafe { ptr.as_ref() }.map(f)
}

/// The core running on this thread (none while the core is still being built, e.g. during
/// `%preload`). Natives called from Lua use it to reach their core.
pub fn try_current() -> Option<Rc<Core>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Handles `msg` at once if this thread is core `core` (as its inbox would, without the
/// doorbell), else gives it back for the inbox. Only for a task of the core that runs outside
/// every callback (`peers::deliver_decoded`): the handler runs scripts.
pub fn handle_here(core: usize, msg: CoreMsg) -> Option<CoreMsg> {
    match try_current() {
        Some(current) if current.index == core => {
            current.handle(msg);
            None
        }
        _ => Some(msg),
    }
}

impl Core {
    /// Whether the core has booted and serves (connections, timers, its inbox).
    pub fn is_serving(&self) -> bool {
        self.serving.get()
    }
}

pub struct Core {
    pub index: usize,
    pub node: Arc<Node>,
    host: Box<dyn ScriptHost>,
    /// Looked up on every commit and close: hashed with `ahash` (already the ranking's
    /// hasher), not std's SipHash, whose DoS resistance buys nothing for ids this core hands
    /// out itself. Not a plain multiplicative hash either: every id of this core has the
    /// same low byte (the core), which such a hash would carry into the bucket index.
    conns: RefCell<HashMap<ConnId, Rc<Conn>, ahash::RandomState>>,
    /// The listeners this core accepts on, with the switch that stops its loop.
    listeners: RefCell<HashMap<u64, (Arc<ListenerShared>, Notify)>>,
    /// Listeners opened during the current Lua call; their accept loops start when the call
    /// returns, so `sp.expire = ...` right after `broker.ready` applies to the first client.
    pending_listens: RefCell<Vec<Arc<ListenerShared>>>,
    /// Sockets bound by `broker.ready` on this core (to report bind errors to the script at
    /// once), waiting for their accept loop.
    prebound: RefCell<HashMap<u64, glommio::net::TcpListener>>,
    next_seq: Cell<u64>,
    /// This core's shard of every index.so stage, by stage index. Core-local by design: every
    /// message for an index this shard owns comes to this core, so its requests are
    /// serialized here.
    indexes: RefCell<HashMap<usize, Rc<RefCell<IndexService>>>>,
    /// This core's shard of every `=ticket` stage, and the `=route` stages whose main core
    /// this is, by stage index, each with its tick timer (same reasoning: one owner core per
    /// category or route service, requests serialized here).
    timed: RefCell<HashMap<usize, Rc<RefCell<TimedSlot>>>>,
    /// This core's counters (connections, callbacks, service shards), read on a scrape.
    pub stats: CoreStats,
    pub stop: Notify,
    /// Set once the core's services and main scripts have booted and it reads its inbox.
    serving: Cell<bool>,
}

/// Spawns one pinned executor per CPU in `node.cpus`, each with the script host `hosts`
/// builds for it, and returns their join handles.
pub fn start(
    node: Arc<Node>,
    hosts: HostFactory,
) -> anyhow::Result<Vec<glommio::ExecutorJoinHandle<()>>> {
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..node.cores() {
        let (tx, rx) = mailbox::channel(super::INBOX_CAPACITY)?;
        inboxes.push(tx);
        receivers.push(rx);
    }
    node.set_inboxes(inboxes);
    let mut handles = Vec::new();
    for (index, inbox) in receivers.into_iter().enumerate() {
        let cpu = node.cpus[index];
        let node = node.clone();
        let hosts = hosts.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("stage-core-{index}"))
            .spawn(move || async move {
                let span = match node.peers {
                    Some(_) => tracing::info_span!("core", process = node.process, index, cpu),
                    None => tracing::info_span!("core", index, cpu),
                };
                let _enter = span.enter();
                if let Err(err) = run_core(index, node.clone(), &hosts, inbox).await {
                    tracing::error!("core {index} failed: {err:#}");
                    node.shutdown();
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start core {index} on CPU {cpu}: {e}"))?;
        handles.push(handle);
    }
    Ok(handles)
}

async fn run_core(
    index: usize,
    node: Arc<Node>,
    hosts: &HostFactory,
    inbox: Inbox<CoreMsg>,
) -> anyhow::Result<()> {
    let host = hosts(&node, index)?;
    let core = Rc::new(Core {
        index,
        node: node.clone(),
        host,
        conns: RefCell::new(HashMap::default()),
        listeners: RefCell::new(HashMap::new()),
        pending_listens: RefCell::new(Vec::new()),
        prebound: RefCell::new(HashMap::new()),
        next_seq: Cell::new(1),
        indexes: RefCell::new(HashMap::new()),
        timed: RefCell::new(HashMap::new()),
        stats: CoreStats::default(),
        stop: Notify::default(),
        serving: Cell::new(false),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(core.clone()));
    CURRENT_RAW.with(|c| c.set(Rc::as_ptr(&core)));

    // Services first: a Lua stage booting on this core may already send them messages.
    let lua_stages = node.plan.stages.len();
    // index.so and `=ticket` have a shard on every core (`service::shard`), `=route` lives
    // on its main core.
    let shard = Shard {
        index,
        count: node.cores(),
    };
    for (j, service) in node.plan.services.iter().enumerate() {
        if !service.kind.is_sharded() && service.main_core != index {
            continue;
        }
        match &service.kind {
            ServiceKind::Index(cfg) => core.start_index(lua_stages + j, &service.entry, cfg),
            ServiceKind::Ticket(cfg) => core.start_timed(
                lua_stages + j,
                &service.entry,
                TimedService::Ticket(TicketService::sharded(
                    service.id.clone(),
                    cfg,
                    shard,
                    service.ticket_tracked.clone(),
                )),
            ),
            ServiceKind::Route(cfg) => core.start_timed(
                lua_stages + j,
                &service.entry,
                TimedService::Route(RouteService::with_config(service.id.clone(), cfg)),
            ),
            // Stateless: every core serves it with the node's agent (`Node::http`).
            ServiceKind::Http(_) => {}
            // States and channels live in Lua: the script host runs them.
            ServiceKind::Lotus(_) => core.host.boot_service(lua_stages + j, service),
        }
    }
    // Main scripts run before the inbox is read: a message another core sends at boot waits
    // in the inbox until the handlers it is meant for exist. (glommio may run a newly
    // spawned task at once, so the order is made explicit here.)
    for (stage_index, stage) in node.plan.stages.iter().enumerate() {
        if stage.main_core == index {
            core.boot_stage(stage_index, stage);
        }
    }
    let inbox_core = core.clone();
    // `%spin`: after a burst of messages the core keeps looking at its inbox this long
    // before it waits for the doorbell (`mailbox::Inbox::run_spinning`).
    let spin = node.plan.spin;
    let inbox_task =
        glommio::spawn_local(inbox.run_spinning(spin, move |msg| inbox_core.handle(msg))).detach();
    // Booted: from now on the watchdog expects this core to beat (`node::watchdog`), and a
    // blocking call a script makes on it stalls clients (`node::blocking`).
    core.serving.set(true);
    glommio::spawn_local(beat(node.clone(), index, core.stop.clone())).detach();
    // Other processes learn about this one only now that core 0's stages have booted.
    if let Some(peers) = node.peers.clone().filter(|_| index == 0) {
        super::peers::start(&core, peers);
    }

    core.stop.wait().await;
    core.close_everything().await;
    core.host.stop();
    core.snapshot_indexes().await;
    inbox_task.cancel();
    CURRENT_RAW.with(|c| c.set(std::ptr::null()));
    CURRENT.with(|c| c.borrow_mut().take());
    Ok(())
}

/// Tells the watchdog this core still gets back to its event loop: beats once, then each
/// time the watchdog thread pings (not on a timer of its own: see `node::watchdog`).
async fn beat(node: Arc<Node>, index: usize, stop: Notify) {
    let ping = match node.pulses.listen(index) {
        Ok(socket) => socket,
        Err(err) => {
            tracing::error!("watchdog: cannot watch core {index}: {err}");
            return;
        }
    };
    // SAFETY: the fd comes from a live std socket whose ownership we give up here.
    let mut ping = unsafe { glommio::net::UnixStream::from_raw_fd(ping.into_raw_fd()) };
    let mut scratch = [0u8; 64];
    while !stop.is_fired() {
        node.pulses.beat(index);
        let read = async { Some(ping.read(&mut scratch).await) };
        let stopped = async {
            stop.wait().await;
            None
        };
        match futures_lite::future::or(read, stopped).await {
            Some(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

impl Core {
    /// A fresh id for a connection owned by this core.
    pub fn next_conn_id(&self) -> ConnId {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        ConnId::new(self.index, seq)
    }

    pub fn conn(&self, id: ConnId) -> Option<Rc<Conn>> {
        self.conns.borrow().get(&id).cloned()
    }

    pub fn add_conn(&self, conn: Rc<Conn>) {
        self.conns.borrow_mut().insert(conn.id, conn);
    }

    pub fn remove_conn(&self, id: ConnId) {
        self.conns.borrow_mut().remove(&id);
    }

    fn handle(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Listen(shared) => self.listen(shared),
            CoreMsg::Unlisten(id) => self.unlisten(id),
            CoreMsg::Close { id, errno } => {
                if let Some(conn) = self.conn(id) {
                    conn.request_close(errno);
                }
            }
            CoreMsg::Commit { id, data, document } => match self.conn(id) {
                Some(conn) => {
                    let appended = if document {
                        conn.commit_document(&data)
                    } else {
                        conn.append(&data)
                    };
                    if let Err(err) = appended {
                        tracing::warn!(
                            socket = id.raw(),
                            "commit from another core dropped: {err}"
                        );
                    }
                }
                None => tracing::debug!(socket = id.raw(), "commit for a closed socket dropped"),
            },
            CoreMsg::Post { kind, payload } => {
                self.time_callback(Callback::Message, || self.host.post(kind, &payload));
                self.after_script();
            }
            CoreMsg::Reload(batch) => {
                // Between two messages: no callback of this core is running, so every
                // callback from here on sees the new version (`node::reload`).
                self.host.reload(&batch);
                (batch.ack)(Ack {
                    version: batch.version,
                    core: self.index,
                    at: std::time::Instant::now(),
                });
            }
            // The asker may have given up waiting (a slow scrape): nobody to tell then.
            CoreMsg::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            CoreMsg::Shutdown => self.stop.fire(),
        }
    }

    /// Runs one call into the script host and adds its duration to the histogram.
    #[inline]
    fn time_callback<R>(&self, kind: Callback, f: impl FnOnce() -> R) -> R {
        let start = std::time::Instant::now();
        let result = f();
        self.stats.callback(kind, start.elapsed());
        result
    }

    /// This core's figures for a scrape: its counters, the gauges of its service shards and
    /// what its script host reports.
    pub fn snapshot(&self) -> CoreSnapshot {
        let mut services = self.stats.service_figures();
        for slot in self.timed.borrow().values() {
            match &slot.borrow().service {
                TimedService::Ticket(t) => {
                    let (waiting, held) = t.totals();
                    services.ticket_waiting += waiting as u64;
                    services.ticket_held += held as u64;
                }
                TimedService::Route(r) => services.route_pending += r.pending() as u64,
            }
        }
        CoreSnapshot {
            core: self.index,
            connections: self.conns.borrow().len(),
            listeners: self.stats.listener_figures(),
            joined: self.stats.joined.read(),
            callbacks: self.stats.callback_figures(),
            services,
            host: self.host.stats(),
        }
    }

    /// Posts to this core after `delay` (timers, job repetition, lock leases).
    pub fn post_later(self: &Rc<Self>, delay: Duration, kind: PostKind, payload: Bytes) {
        let core = self.clone();
        glommio::spawn_local(async move {
            futures_lite::future::yield_now().await;
            futures_lite::future::or(glommio::timer::sleep(delay), core.stop.wait()).await;
            if !core.stop.is_fired() {
                core.time_callback(Callback::Message, || core.host.post(kind, &payload));
                core.after_script();
            }
        })
        .detach();
    }

    /// Starts this core's accept loop for `shared`, once.
    pub fn listen(self: &Rc<Self>, shared: Arc<ListenerShared>) {
        if self.stop.is_fired() || self.listeners.borrow().contains_key(&shared.id) {
            return;
        }
        let stop = Notify::default();
        let endpoint = shared.endpoint();
        let udp = shared.url.scheme == crate::net::url::Scheme::Udp;
        self.listeners
            .borrow_mut()
            .insert(shared.id, (shared, stop.clone()));
        if udp {
            glommio::spawn_local(udp::serve(self.clone(), endpoint, stop)).detach();
        } else {
            let prebound = self.take_prebound(endpoint.id);
            glommio::spawn_local(listener::accept_loop(
                self.clone(),
                endpoint,
                prebound,
                stop,
            ))
            .detach();
        }
    }

    pub fn unlisten(&self, id: u64) {
        if let Some((_, stop)) = self.listeners.borrow_mut().remove(&id) {
            stop.fire();
        }
    }

    /// The stage that opened listener `id` (its callbacks run as that stage).
    fn listener_stage(&self, id: u64) -> Option<usize> {
        self.listeners
            .borrow()
            .get(&id)
            .and_then(|(shared, _)| shared.stage)
    }

    pub fn prebind(&self, id: u64, listener: glommio::net::TcpListener) {
        self.prebound.borrow_mut().insert(id, listener);
    }

    pub fn take_prebound(&self, id: u64) -> Option<glommio::net::TcpListener> {
        self.prebound.borrow_mut().remove(&id)
    }

    /// Queues a listener to start on every core once the current Lua call returns.
    pub fn defer_listen(&self, shared: Arc<ListenerShared>) {
        self.pending_listens.borrow_mut().push(shared);
    }

    /// Called after every call into the script host: starts, on every core, the listeners
    /// the script opened during the call.
    pub fn after_script(self: &Rc<Self>) {
        let pending = std::mem::take(&mut *self.pending_listens.borrow_mut());
        for shared in pending {
            for core in 0..self.node.cores() {
                if core == self.index {
                    self.listen(shared.clone());
                } else if let Err(err) = self.node.send(core, CoreMsg::Listen(shared.clone())) {
                    tracing::error!(core, listener = shared.id, "cannot start listener: {err}");
                }
            }
        }
    }

    /// Runs a Lua stage's main script on this core and schedules its idle function.
    fn boot_stage(self: &Rc<Self>, stage_index: usize, stage: &LuaStage) {
        tracing::info!(stage = %stage.entry, "starting main script `{}`", stage.main_script);
        let has_idle = self.host.boot(stage_index, stage);
        self.after_script();
        if has_idle {
            glommio::spawn_local(run_idle(self.clone(), stage_index)).detach();
        }
    }

    /// Opens an index.so stage's shard on this core, reading its indexes through the stage's
    /// open thread and writing through its sync thread (interval syncs and long-log
    /// snapshots happen there too: no tick on the core); a snapshot's image is built here,
    /// one slice per turn (`index_snapshot`).
    fn start_index(self: &Rc<Self>, stage: usize, entry: &str, cfg: &IndexConfig) {
        if self.index == 0 {
            tracing::info!(stage = %entry, path = %cfg.path, cores = self.node.cores(), "starting index service (one shard per core)");
        }
        let Some(threads) = super::index_sync::of(&self.node, stage) else {
            // Logged when a thread failed to start; without them nothing can be durable.
            return;
        };
        let service = Rc::new(RefCell::new(IndexService::new(
            cfg.clone(),
            self.index,
            threads.sync,
            threads.open,
        )));
        super::index_snapshot::start(&service);
        self.indexes.borrow_mut().insert(stage, service);
    }

    /// Creates a `=ticket` / `=route` stage's service on this core. Its timer is armed by the
    /// first call that gives it a deadline (`script::services::timed`).
    fn start_timed(&self, stage: usize, entry: &str, service: TimedService) {
        if self.index == 0 || matches!(service, TimedService::Route(_)) {
            tracing::info!(stage = %entry, "starting service");
        }
        let slot = Rc::new(RefCell::new(TimedSlot::new(service)));
        self.timed.borrow_mut().insert(stage, slot);
    }

    /// The `=ticket` / `=route` service of stage `stage`, when this core owns it.
    pub fn timed_service(&self, stage: usize) -> Option<Rc<RefCell<TimedSlot>>> {
        self.timed.borrow().get(&stage).cloned()
    }

    /// The index service of stage `stage`, when this core owns it.
    pub fn index_service(&self, stage: usize) -> Option<Rc<RefCell<IndexService>>> {
        self.indexes.borrow().get(&stage).cloned()
    }

    /// Graceful shutdown: snapshot every open index, so the next start reads no log. The
    /// sync thread writes the snapshots; the core waits for them without blocking (its inbox
    /// still runs), at most `SHUTDOWN_WAIT`.
    async fn snapshot_indexes(&self) {
        let services: Vec<(usize, Rc<RefCell<IndexService>>)> = self
            .indexes
            .borrow()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (stage, service) in services {
            let done = service.borrow_mut().snapshot_all();
            let deadline = std::time::Instant::now() + SHUTDOWN_WAIT;
            loop {
                match done.try_recv() {
                    Ok(()) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        tracing::error!(
                            stage,
                            "index snapshot at shutdown: the sync thread is gone"
                        );
                        break;
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                }
                if std::time::Instant::now() >= deadline {
                    tracing::error!(stage, "index snapshot at shutdown did not finish in time");
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    /// Graceful end: stop accepting, ask every connection to close (its close callback runs
    /// in its own task, after a last flush), and wait for them within the grace period.
    async fn close_everything(self: &Rc<Self>) {
        for (_, (_, stop)) in self.listeners.borrow_mut().drain() {
            stop.fire();
        }
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        for conn in &conns {
            conn.request_close(0);
        }
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.conns.borrow().is_empty() && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let left = self.conns.borrow().len();
        if left > 0 {
            tracing::warn!(
                left,
                "connections still open after the shutdown grace period"
            );
        }
    }
}

/// Calls a stage's idle function until it returns nothing or a number <= 0 (spec §3.10).
async fn run_idle(core: Rc<Core>, stage: usize) {
    loop {
        let next = core.time_callback(Callback::Idle, || core.host.idle(stage));
        core.after_script();
        let Some(ms) = next.filter(|ms| *ms > 0.0) else {
            return;
        };
        let sleep = glommio::timer::sleep(Duration::from_secs_f64(ms / 1000.0));
        futures_lite::future::or(sleep, core.stop.wait()).await;
        if core.stop.is_fired() {
            return;
        }
    }
}

/// `net` reports the events of this core's connections here; each goes to the script host,
/// then [`Core::after_script`] runs.
impl ConnEvents for Core {
    fn next_conn_id(&self) -> ConnId {
        Core::next_conn_id(self)
    }

    fn stats(&self, listener: Option<u64>) -> Rc<IoStats> {
        match listener {
            None => self.stats.joined.clone(),
            Some(id) => self.stats.listener(id, || {
                self.listeners
                    .borrow()
                    .get(&id)
                    .map(|(shared, _)| shared.label())
                    .unwrap_or_default()
            }),
        }
    }

    fn accepted(self: &Rc<Self>, listener: u64, conn: &Rc<Conn>) -> bool {
        let Some(shared) = self
            .listeners
            .borrow()
            .get(&listener)
            .map(|(s, _)| s.clone())
        else {
            return false;
        };
        {
            let props = shared.props.lock().unwrap();
            conn.expire_ms.set(props.expire);
            conn.commit_ms
                .set(u32::try_from(props.commit).unwrap_or(u32::MAX));
            conn.set_crypto(props.crypto.clone());
        }
        self.add_conn(conn.clone());
        let accepted = self.time_callback(Callback::Accept, || {
            self.host.accept(listener, shared.stage, conn)
        });
        self.after_script();
        if !accepted {
            self.remove_conn(conn.id);
        }
        accepted
    }

    fn connected(self: &Rc<Self>, conn: &Rc<Conn>) {
        self.time_callback(Callback::Connect, || self.host.connected(conn));
        self.after_script();
    }

    fn frame(self: &Rc<Self>, conn: &Rc<Conn>, frame: Bytes) -> Result<(), String> {
        let result = self.time_callback(Callback::Receive, || self.host.receive(conn, frame));
        self.after_script();
        result
    }

    fn closed(self: &Rc<Self>, conn: &Rc<Conn>, errno: i32) {
        self.remove_conn(conn.id);
        self.time_callback(Callback::Close, || self.host.close(conn, errno));
        self.after_script();
    }

    fn datagram(
        self: &Rc<Self>,
        endpoint: u64,
        message: &[u8],
        framing: Framing,
        from: SocketAddr,
    ) {
        let stage = self.listener_stage(endpoint);
        self.time_callback(Callback::Datagram, || {
            self.host.datagram(endpoint, stage, message, framing, from)
        });
        self.after_script();
    }
}
