//! The cluster: stages on different machines reach each other through NATS (DESIGN.md
//! principle 7; spec stage.md §10, services.md §6.3–6.5 describe the original's UDP cluster,
//! whose routing semantics this keeps). Each process of a node that runs stages is one
//! member, named `<node>.<process number>`. Messages to a member go to its own subject
//! `stage.m.<member>` as the same `M` frame a datagram to another process carries
//! (`node::peers::message_frame`), and are delivered on arrival exactly as those are
//! (`node::peers::deliver`).
//!
//! Membership is per stage id, so that what a member hears does not grow with the size of
//! the cluster (docs/scaling.md): every `#router` notify period a member publishes one
//! heartbeat per stage id it hosts on `stage.hb.<id>` (its name and run), and it subscribes
//! to `stage.hb.<id>` only for the ids it sends to, from the first message on. A member is
//! eligible for an id while its last heartbeat there is younger than the `#router` expiry
//! (`node::members`, as inside a node). Until the heartbeats of an id have been listened to
//! for one notify period (every live host has sent one by then), who hosts it is not known:
//! messages to it are held ([`MAX_HELD`] at most) and routed as usual at the end of that
//! period. So the first message of a process to an id waits up to one period; every later
//! one is routed at once from the member table.
//!
//! The NATS client (async-nats, on tokio) runs on one dedicated thread, `stage-nats`
//! (`client`): it receives what comes to the member's subject and the heartbeats, and cores
//! never wait on the network. A core publishes a message itself on a publish-only connection
//! (`direct`: one non-blocking write, as a datagram to another process) where the servers
//! allow it and it is open; otherwise it hands the message to a bounded channel with
//! `try_send`. There, each core also reads a subscription of its own (`listen`), and a
//! message for a stage whose core named itself goes to that core (`hints`), skipping the
//! thread on arrival too. A full channel or a lost connection makes
//! the message unrouted (at most once: nothing is queued across an outage, nothing is sent
//! twice). Which member gets a
//! message is decided in the prelude's `route`, with the natives of `script::cluster`.

mod client;
mod direct;
mod hints;
mod listen;
mod proto;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::node::affinity;
use crate::node::envelope::Envelope;
use crate::node::members::Members;
use crate::node::peers::{self, Frame};
use crate::node::{runtime, Node};

/// A stage id's heartbeats go to this plus the id ([`heartbeat_subject`]); members that send
/// to the id subscribe.
pub const HEARTBEAT_PREFIX: &str = "stage.hb.";
/// A member's run, published on this plus its name every [`IDENTITY_PERIODS`] notify
/// periods, and subscribed to by that member only: a run that is not its own means another
/// process took the same name.
pub const IDENTITY_PREFIX: &str = "stage.me.";
/// How many notify periods apart a member publishes its identity.
const IDENTITY_PERIODS: u32 = 10;
/// The most stage ids a process listens to the heartbeats of (one subscription each). A
/// message to a new id past it is unrouted (counted, logged once): only a script that makes
/// up stage ids reaches it.
pub const MAX_WATCHED: usize = 4096;
/// The most messages a process holds while it learns who hosts their stage ids (one notify
/// period); past it, a message is unrouted (counted, logged once).
pub const MAX_HELD: usize = 4096;
/// A member's own inbox subject is this plus its name.
pub const MEMBER_SUBJECT_PREFIX: &str = "stage.m.";
/// Messages waiting for the NATS thread; past this, a message is unrouted, never a blocked
/// core.
const OUTGOING_CAPACITY: usize = 8192;
/// The largest message frame sent: NATS servers refuse payloads past their `max_payload`,
/// 1 MiB by default.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What this process needs to join the cluster (from `#cluster`, `#node`, `#router`, `-s`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `nats://` / `tls://` URLs, credentials included (the failover list).
    pub servers: Vec<String>,
    /// TLS and authentication files for the NATS connection.
    pub auth: crate::config::NatsAuth,
    /// This node's name (`#node`, or `<host>-<pid>`).
    pub node: String,
    /// This process's number in the node.
    pub process: u32,
    pub notify: Duration,
    pub expiry: Duration,
    /// The suspend file: while it exists, no heartbeats (as inside a node).
    pub suspend: Option<PathBuf>,
}

/// What the cores hand to the NATS thread.
enum Outgoing {
    /// One NATS message; `reply` names the sending core's own subject (`listen`).
    Publish {
        subject: String,
        reply: Option<String>,
        payload: Bytes,
    },
    /// Start listening to the heartbeats of this stage id, and route the messages held for
    /// it one notify period later (`Cluster::release`).
    Watch(String),
}

/// Who hosts an id, as far as this member knows.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    Member(String),
    /// Nobody eligible.
    Nobody,
    /// Not known yet: its heartbeats are not listened to, or not for one period yet. Hold the
    /// message (`Cluster::hold`).
    Learning,
}

/// The stage ids whose heartbeats this member listens to.
#[derive(Default)]
struct Watched {
    ids: HashMap<String, Watch>,
    /// Messages held, over every id.
    held: usize,
}

#[derive(Default)]
struct Watch {
    /// Listened to for one period: the member table knows its hosts.
    settled: bool,
    /// Messages sent while it was not: (every, message frame).
    held: Vec<(bool, Bytes)>,
}

pub struct Cluster {
    /// This member's name, `<node>.<process>`.
    pub me: String,
    /// `<node>.`: the members of this node, reached through `node::peers` instead.
    own_node: String,
    settings: ClusterSettings,
    members: Members<String>,
    outgoing: mpsc::Sender<Outgoing>,
    /// Taken by the NATS thread when it starts.
    receiver: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// Connected to a NATS server now (set by the client's connection events).
    connected: AtomicBool,
    /// The process is stopping: the connection's end is not an outage to report.
    stopping: AtomicBool,
    /// The cores' own publish-only connection, where the servers allow one (`direct`).
    direct: Option<direct::Direct>,
    /// The cores subscribed to their own subject now (`listen`), one bit per core.
    listening: AtomicU64,
    /// Which core of another member gets a message for one of its stages (`hints`).
    hints: hints::Hints,
    /// This process's run (pid and start time), sent with every heartbeat: a heartbeat with
    /// our member name from another run means another process uses the same `#node`.
    instance: String,
    /// That clash was logged (once).
    clash: AtomicBool,
    /// The run last heard from each member: a new run may host other ids.
    runs: Mutex<HashMap<String, String>>,
    watched: Mutex<Watched>,
    /// [`MAX_WATCHED`] / [`MAX_HELD`] was reached (logged once each).
    watched_full: AtomicBool,
    held_full: AtomicBool,
}

/// The process's cluster, set once before the cores boot (the prelude asks for it as it
/// loads). A process-wide value rather than a field of `Node` because the cluster sits above
/// the node layer (engine/tests/layers.rs): the node cannot name it.
static CLUSTER: OnceLock<Arc<Cluster>> = OnceLock::new();

/// This process's cluster, if it joined one.
pub fn get() -> Option<&'static Arc<Cluster>> {
    CLUSTER.get()
}

/// Creates this process's cluster membership (no network yet: `start` connects). Called
/// before the cores boot; a second call keeps the first.
pub fn install(settings: ClusterSettings) -> Arc<Cluster> {
    CLUSTER
        .get_or_init(|| Arc::new(Cluster::new(settings)))
        .clone()
}

/// Starts the NATS thread for the installed cluster, once the cores' inboxes exist (it
/// delivers into them).
pub fn start(node: Arc<Node>) -> std::io::Result<()> {
    let Some(cluster) = get().cloned() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("stage-nats".into())
        .spawn(move || {
            // Every cross-node message wakes this thread and then a core (or a core, then
            // this thread): on the cores' CPUs those are wake-ups on the same CPU, as for the
            // datagram reader of `node::peers`, which inherits core 0's. Left to float, it
            // lands on another CPU and each hand-over costs an interrupt between CPUs:
            // BENCHMARKS.md "Between nodes through NATS" measured the difference.
            if let Err(err) = affinity::pin_current_thread(&node.cpus) {
                tracing::warn!(
                    "cluster member {}: the NATS thread stays off the cores' CPUs {:?}: {err}",
                    cluster.me,
                    node.cpus
                );
            }
            client::run(node, cluster)
        })
        .map(drop)
}

/// Starts core `core`'s own subscription (`listen`), if the cores of this process publish
/// to NATS themselves. Called on the core, inside its executor, as it starts.
pub fn start_core(node: Arc<Node>, core: usize) {
    listen::start(node, core)
}

impl Cluster {
    fn new(settings: ClusterSettings) -> Cluster {
        let (outgoing, receiver) = mpsc::channel(OUTGOING_CAPACITY);
        let publish_only = direct::usable(&settings).then(direct::Direct::default);
        Cluster {
            me: member_name(&settings.node, settings.process),
            own_node: format!("{}.", settings.node),
            members: Members::new(settings.expiry),
            settings,
            outgoing,
            receiver: Mutex::new(Some(receiver)),
            connected: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            direct: publish_only,
            listening: AtomicU64::new(0),
            hints: hints::Hints::default(),
            instance: format!(
                "{}-{:x}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
            clash: AtomicBool::new(false),
            runs: Mutex::new(HashMap::new()),
            watched: Mutex::new(Watched::default()),
            watched_full: AtomicBool::new(false),
            held_full: AtomicBool::new(false),
        }
    }

    fn of_other_node(&self, member: &str) -> bool {
        !member.starts_with(&self.own_node)
    }

    fn settled(&self, group: &str) -> bool {
        let watched = self.watched.lock().unwrap();
        watched.ids.get(group).is_some_and(|w| w.settled)
    }

    /// The next member of another node (round-robin) eligible for `group`.
    pub fn pick(&self, group: &str) -> Pick {
        if !self.settled(group) {
            return Pick::Learning;
        }
        match self.pick_known(group) {
            Some(member) => Pick::Member(member),
            None => Pick::Nobody,
        }
    }

    fn pick_known(&self, group: &str) -> Option<String> {
        self.members
            .pick(group, None, Instant::now(), &|m| self.of_other_node(m))
    }

    /// Every member of another node eligible for `group`, in name order; `None` while who
    /// hosts it is being learned (hold the message).
    pub fn members_of(&self, group: &str) -> Option<Vec<String>> {
        self.settled(group).then(|| self.hosting(group))
    }

    fn hosting(&self, group: &str) -> Vec<String> {
        self.members
            .hosting(group, Instant::now(), &|m| self.of_other_node(m))
    }

    /// Hands a message for the first (or `every`) stage of `group` in `member` to the NATS
    /// thread. Never waits: `Err` says why it was not sent (the caller counts it unrouted).
    pub fn send(&self, member: &str, group: &str, every: bool, doc: &[u8]) -> Result<(), String> {
        if !self.connected.load(Ordering::Acquire) {
            return Err("not connected to NATS".into());
        }
        self.publish(member, group, frame(group, every, doc)?)
    }

    /// Publishes a message frame for stage `group` of `member`: to the core of `member` that
    /// last named itself for that stage, else to the member (`hints`); naming the sending
    /// core if it listens on its own subject.
    fn publish(&self, member: &str, group: &str, frame: Bytes) -> Result<(), String> {
        if !self.connected.load(Ordering::Acquire) {
            return Err("not connected to NATS".into());
        }
        let subject = self.hints.subject(member, group);
        let reply = self.own_subject();
        if let Some(direct) = &self.direct {
            if direct.publish(&subject, reply.as_deref(), &frame)? {
                return Ok(());
            }
        }
        self.hand_over(Outgoing::Publish {
            subject,
            reply,
            payload: frame,
        })
    }

    /// The subject of the calling core, if it is a core subscribed to it now.
    fn own_subject(&self) -> Option<String> {
        let core = runtime::with_current(|c| c.index)?;
        let listening = self.listening.load(Ordering::Acquire);
        (core < listen::MAX_CORES && listening & (1 << core) != 0)
            .then(|| hints::core_subject(&self.me, core))
    }

    fn set_listening(&self, core: usize, on: bool) {
        match on {
            true => self.listening.fetch_or(1 << core, Ordering::AcqRel),
            false => self.listening.fetch_and(!(1 << core), Ordering::AcqRel),
        };
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A message for this member arrived, through the NATS thread or (`on_core`) a core's
    /// own subscription, naming the sending core's subject `reply` if it has one: delivered
    /// to its stage(s), after noting where the sender's stage listens (`hints`).
    fn received(&self, node: &Node, payload: &[u8], reply: Option<&str>, on_core: bool) {
        let malformed = |why: &str| {
            node.count_unrouted(&format!(
                "a malformed message from another node ({} bytes{why}) for cluster member {}",
                payload.len(),
                self.me
            ))
        };
        let Some(Frame::Message { every, group, doc }) = peers::decode(payload) else {
            return malformed("");
        };
        let envelope = match Envelope::decode(doc) {
            Ok(envelope) => envelope,
            Err(err) => return malformed(&format!(", {err}")),
        };
        // A request names the stage its replies go to, a reply the stage that sent it.
        let sender = envelope
            .reply_stage
            .as_ref()
            .or(envelope.from_stage.as_ref());
        if let (Some(member), Some(stage)) = (&envelope.reply_node, sender) {
            self.hints.heard(member, stage, reply);
        }
        peers::deliver_decoded(node, group, every, envelope, on_core);
    }

    fn hand_over(&self, out: Outgoing) -> Result<(), String> {
        self.outgoing.try_send(out).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => "the NATS thread's queue is full".into(),
            mpsc::error::TrySendError::Closed(_) => "the NATS thread stopped".into(),
        })
    }

    /// A message for `group` (every eligible member, or one) whose hosts are not known yet
    /// ([`Pick::Learning`]): held until they are, then routed as `route` would have
    /// (`release`). The first message to an id starts listening to its heartbeats. Never
    /// waits: `Err` says why it was not held (the caller counts it unrouted).
    pub fn hold(&self, group: &str, every: bool, doc: &[u8]) -> Result<(), String> {
        if !self.connected.load(Ordering::Acquire) {
            return Err("not connected to NATS".into());
        }
        let frame = frame(group, every, doc)?;
        let mut watched = self.watched.lock().unwrap();
        let count = watched.ids.len();
        let held = watched.held;
        match watched.ids.get_mut(group) {
            // Learned since the caller asked: route it now.
            Some(watch) if watch.settled => {
                drop(watched);
                self.dispatch(group, every, frame)
            }
            Some(watch) => {
                if held >= MAX_HELD {
                    return Err(self.too_many_held());
                }
                watch.held.push((every, frame));
                watched.held += 1;
                Ok(())
            }
            None => {
                if count >= MAX_WATCHED {
                    return Err(self.too_many_watched());
                }
                if held >= MAX_HELD {
                    return Err(self.too_many_held());
                }
                self.hand_over(Outgoing::Watch(group.to_string()))?;
                watched.ids.insert(
                    group.to_string(),
                    Watch {
                        settled: false,
                        held: vec![(every, frame)],
                    },
                );
                watched.held += 1;
                Ok(())
            }
        }
    }

    /// [`MAX_HELD`] reached: why a message is unrouted, logged the first time.
    fn too_many_held(&self) -> String {
        let why = format!(
            "{MAX_HELD} messages already held while their stage ids' hosts are learned (cluster::MAX_HELD)"
        );
        self.log_limit(&self.held_full, &why);
        why
    }

    /// [`MAX_WATCHED`] reached: why a message is unrouted, logged the first time.
    fn too_many_watched(&self) -> String {
        let why = format!(
            "the heartbeats of {MAX_WATCHED} stage ids already listened to (cluster::MAX_WATCHED)"
        );
        self.log_limit(&self.watched_full, &why);
        why
    }

    fn log_limit(&self, logged: &AtomicBool, why: &str) {
        if !logged.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "cluster member {}: {why}; messages past it are unrouted (logged once)",
                self.me
            );
        }
    }

    /// Routes a message as `route` does once the hosts of `group` are known.
    fn dispatch(&self, group: &str, every: bool, frame: Bytes) -> Result<(), String> {
        if every {
            let members = self.hosting(group);
            if members.is_empty() {
                return Err("no member of another node hosts it".into());
            }
            for member in members {
                self.publish(&member, group, frame.clone())?;
            }
            return Ok(());
        }
        match self.pick_known(group) {
            Some(member) => self.publish(&member, group, frame),
            None => Err("no member of another node hosts it".into()),
        }
    }

    /// The heartbeats of `group` have been listened to for one period: from now on its
    /// messages are routed at once, and those held meanwhile are routed now, in the order
    /// they were sent (under the lock, so no later message overtakes them). Returns why each
    /// one that could not be routed was not.
    fn release(&self, group: &str) -> Vec<String> {
        let mut watched = self.watched.lock().unwrap();
        let Some(watch) = watched.ids.get_mut(group) else {
            return Vec::new();
        };
        watch.settled = true;
        let held = std::mem::take(&mut watch.held);
        watched.held -= held.len();
        held.into_iter()
            .filter_map(|(every, frame)| self.dispatch(group, every, frame).err())
            .collect()
    }

    /// This member's heartbeat for stage id `id`.
    fn heartbeat(&self, id: &str) -> Vec<u8> {
        heartbeat_frame(&self.me, &self.instance, &[id.to_string()])
    }

    /// This member's identity (its run, no ids).
    fn identity(&self) -> Vec<u8> {
        heartbeat_frame(&self.me, &self.instance, &[])
    }

    /// A heartbeat arrived (our own comes back too, as does our identity: ignored unless it
    /// is another run's).
    fn heard(&self, frame: &[u8], now: Instant) {
        let Some(Heartbeat {
            member,
            instance,
            ids,
        }) = decode_heartbeat(frame)
        else {
            tracing::debug!(
                "cluster: malformed heartbeat ({} bytes) dropped",
                frame.len()
            );
            return;
        };
        if member == self.me {
            // Two processes with one member name share its inbox subject: each would get
            // the other's messages. Most likely one `#node` copied to two machines.
            if instance != self.instance && !self.clash.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    "cluster member {}: another process announces itself under this name (the same `#node` on two nodes?); both receive its messages",
                    self.me
                );
            }
            return;
        }
        if ids.is_empty() {
            return;
        }
        let list = ids.join(", ");
        let mut reset = {
            let mut runs = self.runs.lock().unwrap();
            match runs.get_mut(member) {
                Some(run) if run == instance => false,
                Some(run) => {
                    *run = instance.to_string();
                    true
                }
                None => {
                    runs.insert(member.to_string(), instance.to_string());
                    true
                }
            }
        };
        let mut came_up = false;
        for id in ids {
            came_up |= self.members.heard_id(member.to_string(), id, reset, now);
            reset = false;
        }
        if came_up {
            tracing::info!(
                "cluster member {}: member {member} is up, hosting [{list}]",
                self.me
            );
        }
    }

    fn sweep(&self, now: Instant) {
        for (member, silent) in self.members.sweep(now) {
            tracing::info!(
                "cluster member {}: member {member} is down (no heartbeat for {} ms)",
                self.me,
                silent.as_millis()
            );
        }
    }
}

/// `<node>.<process>`: the node name holds no `.`, so the process number is always the part
/// after the last one.
pub fn member_name(node: &str, process: u32) -> String {
    format!("{node}.{process}")
}

/// A message frame for `group`, within what a NATS message carries.
fn frame(group: &str, every: bool, doc: &[u8]) -> Result<Bytes, String> {
    let frame =
        peers::message_frame(group, every, doc).ok_or_else(|| format!("bad stage id `{group}`"))?;
    if frame.len() > MAX_PAYLOAD {
        return Err(format!(
            "{} bytes, more than the {MAX_PAYLOAD} a NATS message carries",
            frame.len()
        ));
    }
    Ok(Bytes::from(frame))
}

/// The subject of stage id `id`'s heartbeats. An id that is not a plain NATS subject token
/// (letters, digits, `_`, `-`, `=`) is written in hex after a `~`, which no plain id has.
pub fn heartbeat_subject(id: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=');
    if !id.is_empty() && id.bytes().all(plain) {
        return format!("{HEARTBEAT_PREFIX}{id}");
    }
    let mut out = format!("{HEARTBEAT_PREFIX}~");
    for b in id.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A decoded heartbeat.
#[derive(Debug, PartialEq, Eq)]
pub struct Heartbeat<'a> {
    pub member: &'a str,
    /// The sending process's run (see `Cluster::instance`).
    pub instance: &'a str,
    pub ids: Vec<&'a str>,
}

/// A heartbeat: the member's name, its run, then each hosted stage id, NUL-separated.
pub fn heartbeat_frame(member: &str, instance: &str, ids: &[String]) -> Vec<u8> {
    let mut out = member.as_bytes().to_vec();
    out.push(0);
    out.extend_from_slice(instance.as_bytes());
    for id in ids {
        out.push(0);
        out.extend_from_slice(id.as_bytes());
    }
    out
}

pub fn decode_heartbeat(frame: &[u8]) -> Option<Heartbeat<'_>> {
    let text = std::str::from_utf8(frame).ok()?;
    let mut parts = text.split('\0');
    let member = parts.next().filter(|m| !m.is_empty())?;
    let instance = parts.next().filter(|i| !i.is_empty())?;
    Some(Heartbeat {
        member,
        instance,
        ids: parts.filter(|s| !s.is_empty()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(node: &str, process: u32) -> Cluster {
        Cluster::new(ClusterSettings {
            servers: vec!["nats://127.0.0.1:1".into()],
            auth: Default::default(),
            node: node.into(),
            process,
            notify: Duration::from_millis(100),
            expiry: Duration::from_millis(500),
            suspend: None,
        })
    }

    fn hb(member: &str, ids: &[&str]) -> Vec<u8> {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        heartbeat_frame(member, "other-run", &ids)
    }

    #[test]
    fn heartbeat_frames_round_trip() {
        let f = heartbeat_frame("eu-1.2", "7-1f", &["game".into(), "lobby".into()]);
        assert_eq!(
            decode_heartbeat(&f),
            Some(Heartbeat {
                member: "eu-1.2",
                instance: "7-1f",
                ids: vec!["game", "lobby"]
            })
        );
        assert_eq!(
            decode_heartbeat(&heartbeat_frame("n.1", "9-2", &[])),
            Some(Heartbeat {
                member: "n.1",
                instance: "9-2",
                ids: vec![]
            })
        );
        assert_eq!(decode_heartbeat(b""), None);
        assert_eq!(decode_heartbeat(b"n.1"), None, "no run");
        assert_eq!(decode_heartbeat(b"\0run\0game"), None, "no member name");
        assert_eq!(decode_heartbeat(&[0xff, 0, b'a']), None, "not UTF-8");
    }

    /// What the NATS thread was handed, in order: `(subject, frame)` or `("watch", id)`.
    fn handed(c: &Cluster) -> Vec<(String, Vec<u8>)> {
        let mut guard = c.receiver.lock().unwrap();
        let rx = guard.as_mut().unwrap();
        let mut out = Vec::new();
        while let Ok(next) = rx.try_recv() {
            out.push(match next {
                Outgoing::Publish {
                    subject, payload, ..
                } => (subject, payload.to_vec()),
                Outgoing::Watch(id) => ("watch".into(), id.into_bytes()),
            });
        }
        out
    }

    fn sent(subject: &str, group: &str, every: bool, doc: &[u8]) -> (String, Vec<u8>) {
        (
            subject.to_string(),
            peers::message_frame(group, every, doc).unwrap(),
        )
    }

    #[test]
    fn only_members_of_other_nodes_are_picked() {
        let c = cluster("a", 1);
        assert_eq!(c.me, "a.1");
        c.connected.store(true, Ordering::Release);
        c.hold("game", false, b"x").unwrap();
        c.hold("lobby", false, b"x").unwrap();
        c.hold("chat", false, b"x").unwrap();
        let now = Instant::now();
        c.heard(&c.heartbeat("game"), now);
        c.heard(&hb("a.2", &["game"]), now);
        c.heard(&hb("ab.1", &["game"]), now);
        c.heard(&hb("b.1", &["game", "lobby"]), now);
        c.heard(b"", now);
        for id in ["game", "lobby", "chat"] {
            c.release(id);
        }
        handed(&c);
        assert_eq!(
            c.members_of("game"),
            Some(vec!["ab.1".to_string(), "b.1".to_string()]),
            "not a.1 (me) nor a.2 (my node)"
        );
        let picks: Vec<Pick> = (0..4).map(|_| c.pick("game")).collect();
        let m = |s: &str| Pick::Member(s.to_string());
        // The held `game` message went to ab.1: the rotation goes on from there.
        assert_eq!(picks, vec![m("b.1"), m("ab.1"), m("b.1"), m("ab.1")]);
        assert_eq!(c.pick("lobby"), m("b.1"));
        assert_eq!(c.pick("chat"), Pick::Nobody);
        assert_eq!(c.pick("zone"), Pick::Learning, "never sent to");
        assert_eq!(c.members_of("zone"), None);
        assert!(
            !c.clash.load(Ordering::Acquire),
            "our own heartbeat is no clash"
        );
    }

    #[test]
    fn messages_wait_while_the_hosts_of_their_id_are_learned() {
        let c = cluster("a", 1);
        c.connected.store(true, Ordering::Release);
        assert_eq!(c.pick("game"), Pick::Learning);
        // The first message starts listening to `game`'s heartbeats; both are held.
        c.hold("game", false, b"one").unwrap();
        c.hold("game", true, b"all").unwrap();
        c.hold("nobody", false, b"lost").unwrap();
        assert_eq!(
            handed(&c),
            vec![
                ("watch".to_string(), b"game".to_vec()),
                ("watch".to_string(), b"nobody".to_vec())
            ]
        );
        let now = Instant::now();
        c.heard(&hb("b.1", &["game"]), now);
        c.heard(&hb("c.1", &["game"]), now);
        assert_eq!(
            c.pick("game"),
            Pick::Learning,
            "not listened to for a period yet"
        );
        // The period is over: the held messages go out in order, as `route` sends them.
        assert!(c.release("game").is_empty());
        assert_eq!(
            handed(&c),
            vec![
                sent("stage.m.b.1", "game", false, b"one"),
                sent("stage.m.b.1", "game", true, b"all"),
                sent("stage.m.c.1", "game", true, b"all"),
            ]
        );
        assert_eq!(
            c.release("nobody"),
            vec!["no member of another node hosts it"]
        );
        assert!(handed(&c).is_empty());
        assert_eq!(c.pick("nobody"), Pick::Nobody);
        assert_eq!(c.watched.lock().unwrap().held, 0);
        // Known now: a late `hold` (the caller asked before the release) is routed at once.
        c.hold("game", false, b"late").unwrap();
        assert_eq!(
            handed(&c),
            vec![sent("stage.m.c.1", "game", false, b"late")]
        );
    }

    /// A message for a stage whose core named itself goes to that core's subject; once the
    /// stage's messages name no core, back to the member's. Off a core (here, and the NATS
    /// thread's releases), a message names no core of its own.
    #[test]
    fn messages_go_to_the_core_a_stage_last_named_else_to_its_member() {
        let c = cluster("a", 1);
        c.connected.store(true, Ordering::Release);
        c.hints.heard("b.1", "game", Some("stage.m.b.1.2"));
        c.send("b.1", "game", false, b"one").unwrap();
        c.send("b.1", "lobby", false, b"two").unwrap();
        c.hints.heard("b.1", "game", None);
        c.send("b.1", "game", false, b"three").unwrap();
        assert_eq!(
            handed(&c),
            vec![
                sent("stage.m.b.1.2", "game", false, b"one"),
                sent("stage.m.b.1", "lobby", false, b"two"),
                sent("stage.m.b.1", "game", false, b"three"),
            ]
        );
        c.set_listening(0, true);
        assert_eq!(c.own_subject(), None, "not on a core");
        let mut guard = c.receiver.lock().unwrap();
        c.send("b.1", "game", false, b"four").unwrap();
        match guard.as_mut().unwrap().try_recv() {
            Ok(Outgoing::Publish { reply, .. }) => assert_eq!(reply, None),
            _ => panic!("not handed over"),
        }
    }

    #[test]
    fn a_new_run_of_a_member_replaces_what_it_hosted() {
        let c = cluster("a", 1);
        c.connected.store(true, Ordering::Release);
        for id in ["game", "lobby"] {
            c.hold(id, false, b"x").unwrap();
            c.release(id);
        }
        let now = Instant::now();
        c.heard(&heartbeat_frame("b.1", "run1", &["game".into()]), now);
        c.heard(&heartbeat_frame("b.1", "run1", &["lobby".into()]), now);
        assert_eq!(c.members_of("lobby"), Some(vec!["b.1".to_string()]));
        c.heard(&heartbeat_frame("b.1", "run2", &["game".into()]), now);
        assert_eq!(c.members_of("game"), Some(vec!["b.1".to_string()]));
        assert_eq!(
            c.members_of("lobby"),
            Some(vec![]),
            "the new run has not announced it"
        );
    }

    #[test]
    fn heartbeat_subjects_are_plain_tokens() {
        assert_eq!(heartbeat_subject("game"), "stage.hb.game");
        assert_eq!(heartbeat_subject("=route"), "stage.hb.=route");
        assert_eq!(heartbeat_subject("a.b"), "stage.hb.~612e62");
        assert_eq!(heartbeat_subject("a*"), "stage.hb.~612a");
        assert_eq!(heartbeat_subject(""), "stage.hb.~");
    }

    #[test]
    fn holding_has_limits() {
        let c = cluster("a", 1);
        assert_eq!(
            c.hold("game", false, b"x"),
            Err("not connected to NATS".into())
        );
        c.connected.store(true, Ordering::Release);
        for _ in 0..MAX_HELD {
            c.hold("game", false, b"x").unwrap();
        }
        assert!(c
            .hold("game", false, b"x")
            .unwrap_err()
            .contains("MAX_HELD"));
        assert!(c
            .hold("lobby", false, b"x")
            .unwrap_err()
            .contains("MAX_HELD"));
        c.release("game");
        let c = cluster("a", 1);
        c.connected.store(true, Ordering::Release);
        for i in 0..MAX_WATCHED {
            c.watched
                .lock()
                .unwrap()
                .ids
                .insert(format!("z{i}"), Watch::default());
        }
        assert!(c
            .hold("game", false, b"x")
            .unwrap_err()
            .contains("MAX_WATCHED"));
    }

    #[test]
    fn another_process_with_our_member_name_is_noticed() {
        let c = cluster("a", 1);
        c.heard(&c.identity(), Instant::now());
        assert!(!c.clash.load(Ordering::Acquire), "our own identity");
        c.heard(&heartbeat_frame("a.1", "other-run", &[]), Instant::now());
        assert!(c.clash.load(Ordering::Acquire), "another run's identity");
        let c = cluster("a", 1);
        c.heard(&hb("a.1", &["game"]), Instant::now());
        assert!(c.clash.load(Ordering::Acquire));
        assert!(c.hosting("game").is_empty(), "never a member of itself");
    }

    #[test]
    fn nothing_is_sent_while_disconnected_or_too_large() {
        let c = cluster("a", 1);
        assert_eq!(
            c.send("b.1", "game", false, b"doc"),
            Err("not connected to NATS".into())
        );
        c.connected.store(true, Ordering::Release);
        assert_eq!(c.send("b.1", "game", false, b"doc"), Ok(()));
        let big = vec![0u8; MAX_PAYLOAD];
        assert!(c
            .send("b.1", "game", false, &big)
            .unwrap_err()
            .contains("more than"));
        assert_eq!(handed(&c), vec![sent("stage.m.b.1", "game", false, b"doc")]);
        // A full queue costs an error, not a wait.
        for _ in 0..OUTGOING_CAPACITY {
            c.send("b.1", "game", false, b"doc").unwrap();
        }
        assert!(c
            .send("b.1", "game", false, b"doc")
            .unwrap_err()
            .contains("full"));
    }
}
