//! The thread-per-core runtime. A [`Node`] is the process-wide part (the plan, the inboxes
//! of all cores, listeners shared by every core, peers, locks, the shutdown flag); each core
//! is one glommio `LocalExecutor` pinned to one CPU of the process's affinity mask, owning
//! its connections, its timers, its service shards and one script host
//! ([`runtime::Core`]). Cores talk only through their inboxes ([`mailbox`]); nothing a core
//! touches per packet is shared.
//!
//! This layer knows no Lua: it drives its script host through [`host::ScriptHost`] and
//! reaches sockets through `net`, which in turn knows nothing of cores.

pub mod affinity;
pub mod blocking;
pub mod budget;
pub mod envelope;
pub mod host;
pub mod index_snapshot;
pub mod index_sync;
pub mod lock_service;
pub mod locks;
pub mod mailbox;
pub mod members;
pub mod outbox;
pub mod overrides;
pub mod peers;
pub mod post;
pub mod preflight;
pub mod reload;
pub mod retry;
pub mod runtime;
pub mod shared;
pub mod stages;
pub mod stats;
pub mod threads;
pub mod timed;
pub mod watchdog;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::net::admission::Gate;
use crate::net::id::{listener_id, ConnId};
use crate::net::listener::Endpoint;
use crate::net::url::BrokerUrl;
use crate::plan::{Plan, ServiceKind, StageKind};

/// Messages dropped because a core's inbox was full or closed ([`Node::log_dropped`]): the
/// log line's rate limit, and its total for the metrics.
pub static DROPPED: crate::net::ratelog::RateLog = crate::net::ratelog::RateLog::new();

/// How many undelivered messages a core's inbox holds before senders get an error.
pub const INBOX_CAPACITY: usize = 65_536;

/// How long a graceful shutdown waits for connections to flush and run their close
/// callbacks before the cores stop.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The bound on a whole graceful stop: a process still running this long after the shutdown
/// signal (a core stuck in a C call, an index snapshot that never ends) exits at once, and
/// the supervisor SIGKILLs a child that is still there.
pub const STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// Messages one core (or the signal thread) sends to another.
pub enum CoreMsg {
    /// Start accepting on a listener that a script opened on another core.
    Listen(Arc<ListenerShared>),
    /// Stop accepting on a listener.
    Unlisten(u64),
    /// Close a connection owned by the receiving core.
    Close { id: ConnId, errno: i32 },
    /// Append already-encoded output to a connection owned by the receiving core; `document`
    /// when it is a committed table's BSON, which the owner seals if the socket encrypts.
    Commit {
        id: ConnId,
        data: Bytes,
        document: bool,
    },
    /// A message for the receiving core's script host (routed stage messages, timers set
    /// from other cores, submitted jobs): `kind` says which, `payload` is BSON.
    Post {
        kind: post::PostKind,
        payload: Bytes,
    },
    /// Switch to a new version of the scripts (`reload::Batch`): installed between two
    /// messages, then acknowledged to the reloader.
    Reload(Arc<reload::Batch>),
    /// The admin endpoint's scrape: answer with this core's figures (`stats`).
    Snapshot(tokio::sync::oneshot::Sender<stats::CoreSnapshot>),
    /// Graceful shutdown: stop accepting, close connections (running close callbacks), exit.
    Shutdown,
}

/// A listener as every core sees it: its address and the callbacks and defaults new
/// connections inherit, kept as bytecode because each core re-creates them in its own state.
pub struct ListenerShared {
    pub id: u64,
    /// The stage whose script opened the listener: its connections' callbacks run as that
    /// stage (`stage.signal` from a receive callback has that stage as sender).
    pub stage: Option<usize>,
    pub url: BrokerUrl,
    pub addr: SocketAddr,
    pub props: Mutex<ListenerProps>,
    /// The listener's connection limits and counters, shared by the cores of this process.
    pub gate: Arc<Gate>,
}

impl ListenerShared {
    /// How metrics and the status page name it: scheme and the address it is bound to.
    pub fn label(&self) -> String {
        let scheme = match self.url.scheme {
            crate::net::url::Scheme::Tcp => "tcp",
            crate::net::url::Scheme::Udp => "udp",
            crate::net::url::Scheme::Ws => "ws",
        };
        // lotus.so's listeners are TCP with its own framings.
        let scheme = match self.url.frame.framing {
            crate::codec::framing::Framing::Be32 => "lotus",
            crate::codec::framing::Framing::Be16 => "lotus-compat",
            _ => scheme,
        };
        format!("{scheme}://{}", self.addr)
    }

    /// What each core's accept (or UDP receive) loop needs of it.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            id: self.id,
            addr: self.addr,
            frame: self.url.frame,
            gate: self.gate.clone(),
            websocket: (self.url.scheme == crate::net::url::Scheme::Ws)
                .then(|| Arc::from(self.url.path.as_str())),
        }
    }
}

/// What a connection inherits from its listener at accept time (spec/stage.md §4.3). The
/// version changes on every write so cores know when to re-create their cached callbacks.
#[derive(Clone, Default)]
pub struct ListenerProps {
    pub version: u64,
    pub accept: Vec<u8>,
    pub receive: Option<Vec<u8>>,
    pub close: Option<Vec<u8>>,
    /// Idle timeout in msec (`None` = never).
    pub expire: Option<u64>,
    /// Output flush interval in msec (0 = as soon as the core gets to it).
    pub commit: u64,
    /// `listener.crypto`: the key its connections start with.
    pub crypto: Option<Arc<crate::codec::crypto::Crypto>>,
}

/// The process-wide part of the runtime.
pub struct Node {
    pub cpus: Vec<usize>,
    /// What this process runs (stages, services, how Lua states are built).
    pub plan: Arc<Plan>,
    /// This process's number in `#startup` (`process.stage`): 1 in a single-process node.
    pub process: u32,
    /// The other processes of a multi-process node; `None` in a single-process node.
    pub peers: Option<Arc<peers::Peers>>,
    pub stages: stages::StageDirectory,
    /// Round-robin cursor for `stage.submit(0, ...)` jobs.
    next_core: std::sync::atomic::AtomicUsize,
    /// Messages that found no receiver (logged at debug, counted here).
    pub unrouted: AtomicU64,
    locks: Mutex<locks::LockTable>,
    pub shared: shared::SharedState,
    inboxes: Mutex<Vec<mailbox::Mailbox<CoreMsg>>>,
    listeners: Mutex<HashMap<u64, Arc<ListenerShared>>>,
    next_listener: AtomicU64,
    shutting_down: AtomicBool,
    /// Whether this process announces itself (suspend file, overload): one gate for the
    /// heartbeats to the node's other processes and to the cluster, so a change is decided
    /// and logged once.
    gate: Mutex<Option<peers::Gate>>,
    /// Every core's last beat, read by the watchdog thread.
    pub pulses: watchdog::Pulses,
    /// The CPU budget of the Lua callbacks of every core (`%cpu`).
    pub budget: budget::Budget,
    /// `process["%NAME"]` / `process["$NAME"]` assignments.
    pub overrides: overrides::Overrides,
    /// The HTTP agent of each curl.so stage, by stage index: created here, before the cores
    /// start (the first one initialises libcurl, which sets environment variables), and
    /// shared by every core.
    pub http: HashMap<usize, crate::service::http::HttpAgent>,
    /// The sync and open threads of each index.so stage, by stage index (`index_sync`):
    /// every file operation of its indexes runs there, never on a core.
    pub index_sync: HashMap<usize, index_sync::IndexThreads>,
    /// When this process started (uptime on the status page).
    pub started: std::time::Instant,
}

/// One agent per curl.so stage (directory index = Lua stages first, then services).
fn http_agents(plan: &Plan) -> HashMap<usize, crate::service::http::HttpAgent> {
    let mut agents = HashMap::new();
    for (j, service) in plan.services.iter().enumerate() {
        if let ServiceKind::Http(cfg) = &service.kind {
            match crate::service::http::HttpAgent::new(cfg.clone()) {
                Ok(agent) => {
                    agents.insert(plan.stages.len() + j, agent);
                }
                Err(err) => tracing::error!(stage = %service.entry, "{err}; its requests fail"),
            }
        }
    }
    agents
}

impl Node {
    pub fn new(cpus: Vec<usize>, plan: Arc<Plan>, peers: Option<Arc<peers::Peers>>) -> Arc<Node> {
        blocking::set_policy(plan.blocking);
        blocking::count_lookups();
        // Lua stages first, so a Lua stage's directory index is its index in `plan.stages`.
        let stages = stages::StageDirectory::new(
            plan.stages
                .iter()
                .map(|s| {
                    let (id, entry) = (s.id.clone(), s.entry.clone());
                    (id, entry, s.main_core, StageKind::Lua)
                })
                .chain(plan.services.iter().map(|s| {
                    let (id, entry) = (s.id.clone(), s.entry.clone());
                    (id, entry, s.main_core, s.kind.stage_kind())
                })),
        );
        Arc::new_cyclic(|me| Node {
            index_sync: index_sync::start(&plan, me.clone()),
            pulses: watchdog::Pulses::new(cpus.len()),
            budget: budget::Budget::new(plan.cpu_ms, cpus.len()),
            overrides: overrides::Overrides::default(),
            http: http_agents(&plan),
            cpus,
            plan,
            process: peers.as_ref().map_or(1, |p| p.me),
            peers,
            stages,
            next_core: std::sync::atomic::AtomicUsize::new(0),
            unrouted: AtomicU64::new(0),
            locks: Mutex::new(locks::LockTable::default()),
            shared: shared::SharedState::default(),
            inboxes: Mutex::new(Vec::new()),
            listeners: Mutex::new(HashMap::new()),
            next_listener: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            gate: Mutex::new(None),
            started: std::time::Instant::now(),
        })
    }

    pub fn cores(&self) -> usize {
        self.cpus.len()
    }

    pub(crate) fn set_inboxes(&self, inboxes: Vec<mailbox::Mailbox<CoreMsg>>) {
        *self.inboxes.lock().unwrap() = inboxes;
    }

    /// Sends to one core's inbox. Errors name the overloaded core so logs say where.
    pub fn send(&self, core: usize, msg: CoreMsg) -> Result<(), mailbox::SendError> {
        let inbox = self
            .inboxes
            .lock()
            .unwrap()
            .get(core)
            .cloned()
            .ok_or(mailbox::SendError::Closed)?;
        inbox.send(msg, INBOX_CAPACITY)
    }

    /// Messages waiting in all cores' inboxes.
    pub fn queued(&self) -> usize {
        self.inboxes
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.queued())
            .sum()
    }

    /// Messages waiting in each core's inbox, by core.
    pub fn inbox_depths(&self) -> Vec<usize> {
        self.inboxes
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.queued())
            .collect()
    }

    /// Asks every core for its figures (`CoreMsg::Snapshot`); one receiver per core, `None`
    /// where the message could not be queued. The caller waits on them with a timeout, so a
    /// stuck core costs a scrape its figures, never the scrape.
    pub fn ask_snapshots(
        &self,
    ) -> Vec<Option<tokio::sync::oneshot::Receiver<stats::CoreSnapshot>>> {
        self.ask_every_core(CoreMsg::Snapshot)
    }

    /// THE reload trigger (`POST /reload`): asks the process's reloader (`script::reload`,
    /// installed through [`reload::set_requester`]) to scan now; `done` gets what came of it
    /// (every core switched together, nothing changed, or refused). `false` when this
    /// process has no reloader (a supervisor).
    pub fn request_reload(&self, done: Box<dyn FnOnce(reload::Outcome) + Send>) -> bool {
        reload::request(done)
    }

    fn ask_every_core<T>(
        &self,
        msg: impl Fn(tokio::sync::oneshot::Sender<T>) -> CoreMsg,
    ) -> Vec<Option<tokio::sync::oneshot::Receiver<T>>> {
        (0..self.cores())
            .map(|core| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.send(core, msg(tx)).ok().map(|()| rx)
            })
            .collect()
    }

    /// The core for the next unrestricted job: round-robin over all cores.
    pub fn next_core(&self) -> usize {
        self.next_core.fetch_add(1, Ordering::Relaxed) % self.cores()
    }

    pub fn locks(&self) -> std::sync::MutexGuard<'_, locks::LockTable> {
        self.locks.lock().unwrap()
    }

    pub fn next_listener_id(&self) -> u64 {
        listener_id(self.next_listener.fetch_add(1, Ordering::Relaxed))
    }

    pub fn add_listener(&self, listener: Arc<ListenerShared>) {
        self.listeners.lock().unwrap().insert(listener.id, listener);
    }

    pub fn listener(&self, id: u64) -> Option<Arc<ListenerShared>> {
        self.listeners.lock().unwrap().get(&id).cloned()
    }

    /// Every listener open now, by id.
    pub fn listeners(&self) -> Vec<Arc<ListenerShared>> {
        let mut all: Vec<_> = self.listeners.lock().unwrap().values().cloned().collect();
        all.sort_by_key(|l| l.id);
        all
    }

    pub fn remove_listener(&self, id: u64) -> Option<Arc<ListenerShared>> {
        self.listeners.lock().unwrap().remove(&id)
    }

    /// Counts a message that found no receiver and says so at debug level.
    pub fn count_unrouted(&self, what: &str) {
        let n = self.unrouted.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(unrouted = n, "no receiver for {what}; message dropped");
    }

    /// `stage.exit()`: stops the whole node. In a child of a multi-process node that means
    /// asking the supervisor, which stops every process gracefully (spec stage.md 3.10).
    pub fn exit(&self) {
        if let Some(peers) = &self.peers {
            // SAFETY: plain kill(2) on the supervisor's pid.
            if unsafe { libc::kill(peers.supervisor as i32, libc::SIGTERM) } == 0 {
                return;
            }
        }
        self.shutdown();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Whether this process should announce itself now (see [`peers::Gate`]); `who` and
    /// `suspend` name the process in the log the first time.
    pub fn announce(
        &self,
        who: impl FnOnce() -> String,
        suspend: Option<&std::path::Path>,
    ) -> bool {
        let queued = self.queued();
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        gate.get_or_insert_with(|| peers::Gate::new(who(), suspend.map(Into::into)))
            .open(queued)
    }

    /// Logs a message to a core that could not be queued (its inbox full or closed): at most
    /// one line per second for the process, with the count since the last line, because a
    /// core that is overloaded is sent to by every other core at once.
    pub fn log_dropped(&self, core: usize, err: &mailbox::SendError) {
        if self.is_shutting_down() {
            return;
        }
        if let Some(n) = DROPPED.hit() {
            tracing::warn!(
                core,
                "{n} message(s) dropped since the last line; latest: {err}"
            );
        }
    }

    /// Asks every core to shut down gracefully. Safe to call from any thread, more than once.
    pub fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        for core in 0..self.cores() {
            if let Err(err) = self.send(core, CoreMsg::Shutdown) {
                tracing::warn!(core, %err, "could not deliver shutdown");
            }
        }
    }
}
