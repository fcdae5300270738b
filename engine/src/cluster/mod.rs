//! The cluster: stages on different machines reach each other through NATS (DESIGN.md
//! principle 7; spec stage.md §10, services.md §6.3–6.5 describe the original's UDP cluster,
//! whose routing semantics this keeps). Each process of a node that runs stages is one
//! member, named `<node>.<process number>`. Every `#router` notify period a member publishes a
//! heartbeat on `stage.hb` (its name and the stage ids it hosts, as `node::peers` does inside a
//! node); every member keeps a registry `member -> (ids, last heard)` (`node::members`) and a
//! member is eligible while its last heartbeat is younger than the `#router` expiry. Messages
//! to a member go to its own subject `stage.m.<member>` as the same `M` frame a datagram to
//! another process carries (`node::peers::message_frame`), and are delivered on arrival
//! exactly as those are (`node::peers::deliver`).
//!
//! The NATS client (async-nats, on tokio) runs on one dedicated thread, `stage-nats`
//! (`client`): cores never touch the network. They hand outgoing messages to a bounded channel
//! with `try_send`; a full channel or a lost connection makes the message unrouted (at most
//! once: nothing is queued across an outage, nothing is sent twice). Which member gets a
//! message is decided in the prelude's `route`, with the natives of `script::cluster`.

mod client;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::node::affinity;
use crate::node::members::Members;
use crate::node::{peers, Node};

/// Where heartbeats go: every member subscribes.
pub const HEARTBEAT_SUBJECT: &str = "stage.hb";
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

/// One outgoing NATS message.
struct Outgoing {
    subject: String,
    payload: Bytes,
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
    /// This process's run (pid and start time), sent with every heartbeat: a heartbeat with
    /// our member name from another run means another process uses the same `#node`.
    instance: String,
    /// That clash was logged (once).
    clash: AtomicBool,
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

impl Cluster {
    fn new(settings: ClusterSettings) -> Cluster {
        let (outgoing, receiver) = mpsc::channel(OUTGOING_CAPACITY);
        Cluster {
            me: member_name(&settings.node, settings.process),
            own_node: format!("{}.", settings.node),
            members: Members::new(settings.expiry),
            settings,
            outgoing,
            receiver: Mutex::new(Some(receiver)),
            connected: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            instance: format!(
                "{}-{:x}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
            clash: AtomicBool::new(false),
        }
    }

    fn of_other_node(&self, member: &str) -> bool {
        !member.starts_with(&self.own_node)
    }

    /// The next member of another node (round-robin) eligible for `group`, or `None`.
    pub fn pick(&self, group: &str) -> Option<String> {
        self.members
            .pick(group, None, Instant::now(), &|m| self.of_other_node(m))
    }

    /// Every member of another node eligible for `group`, in name order.
    pub fn members_of(&self, group: &str) -> Vec<String> {
        self.members
            .hosting(group, Instant::now(), &|m| self.of_other_node(m))
    }

    /// Hands a message for the first (or `every`) stage of `group` in `member` to the NATS
    /// thread. Never waits: `Err` says why it was not sent (the caller counts it unrouted).
    pub fn send(&self, member: &str, group: &str, every: bool, doc: &[u8]) -> Result<(), String> {
        if !self.connected.load(Ordering::Acquire) {
            return Err("not connected to NATS".into());
        }
        let frame = peers::message_frame(group, every, doc)
            .ok_or_else(|| format!("bad stage id `{group}`"))?;
        if frame.len() > MAX_PAYLOAD {
            return Err(format!(
                "{} bytes, more than the {MAX_PAYLOAD} a NATS message carries",
                frame.len()
            ));
        }
        self.outgoing
            .try_send(Outgoing {
                subject: format!("{MEMBER_SUBJECT_PREFIX}{member}"),
                payload: Bytes::from(frame),
            })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => "the NATS thread's queue is full".into(),
                mpsc::error::TrySendError::Closed(_) => "the NATS thread stopped".into(),
            })
    }

    /// This member's heartbeat.
    fn heartbeat(&self, ids: &[String]) -> Vec<u8> {
        heartbeat_frame(&self.me, &self.instance, ids)
    }

    /// A heartbeat arrived (our own comes back too: ignored).
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
        let list = ids.join(", ");
        let ids = ids.into_iter().map(str::to_string).collect();
        if self.members.heard(member.to_string(), ids, now) {
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

    #[test]
    fn only_members_of_other_nodes_are_picked() {
        let c = cluster("a", 1);
        assert_eq!(c.me, "a.1");
        let now = Instant::now();
        c.heard(&c.heartbeat(&["game".into()]), now);
        c.heard(&hb("a.2", &["game"]), now);
        c.heard(&hb("ab.1", &["game"]), now);
        c.heard(&hb("b.1", &["game", "lobby"]), now);
        c.heard(b"", now);
        assert_eq!(
            c.members_of("game"),
            vec!["ab.1", "b.1"],
            "not a.1 (me) nor a.2 (my node)"
        );
        let picks: Vec<String> = (0..4).map(|_| c.pick("game").unwrap()).collect();
        assert_eq!(picks, vec!["ab.1", "b.1", "ab.1", "b.1"]);
        assert_eq!(c.pick("lobby").as_deref(), Some("b.1"));
        assert_eq!(c.pick("chat"), None);
        assert!(
            !c.clash.load(Ordering::Acquire),
            "our own heartbeat is no clash"
        );
    }

    #[test]
    fn another_process_with_our_member_name_is_noticed() {
        let c = cluster("a", 1);
        c.heard(&hb("a.1", &["game"]), Instant::now());
        assert!(c.clash.load(Ordering::Acquire));
        assert!(c.members_of("game").is_empty(), "never a member of itself");
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
        let mut rx = c.receiver.lock().unwrap().take().unwrap();
        let out = rx.try_recv().unwrap();
        assert_eq!(out.subject, "stage.m.b.1");
        assert_eq!(
            peers::decode(&out.payload),
            Some(peers::Frame::Message {
                every: false,
                group: "game",
                doc: b"doc"
            })
        );
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
