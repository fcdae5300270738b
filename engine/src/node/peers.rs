//! The other processes of a multi-process node (spec stage.md 10.3, services.md 6.3): the
//! datagram socket each child owns in the node's runtime directory, the heartbeats that tell
//! every other child which stage ids this process hosts, and the registry built from theirs:
//! `process N -> (stage ids, last heard)`. A process is eligible for a stage id while its
//! last heartbeat is younger than `#router`'s expiry; `pick` rotates among the eligible
//! processes of a group (this process included when it hosts the group).
//!
//! There is no router process: every child keeps its own registry. A reader thread drains
//! the socket into the cores' inboxes (it never runs Lua, so the socket's short queue does
//! not overflow while a core is busy in a script); core 0 sends the heartbeats, so a process
//! whose core 0 is stuck ages out of routing. Any thread sends messages through a
//! non-blocking unbound socket: a full or missing peer costs an error value, never a
//! blocked core.
//!
//! Datagrams: `H` + process number (u32 LE) + stage ids separated by NUL; `M` + flags (1 =
//! every stage of the group in the receiving process) + group length (u8) + group + the
//! message's [`Envelope`] in its BSON form (`node::envelope` documents every key) without `t`,
//! since the sender cannot know the receiving stage's index. On arrival the envelope is
//! decoded (a malformed one is dropped and counted as unrouted), given `t` = the index of
//! each receiving stage here and encoded again: exactly the payload of a local `msg` post.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::envelope::{Envelope, EnvelopeError};
use super::members::Members;
use super::outbox::Outbox;
use super::runtime::Core;
use super::{CoreMsg, Node};

/// The largest datagram between processes (spec stage.md 1.1.5).
pub const MAX_DATAGRAM: usize = 65_000;

const HEARTBEAT: u8 = b'H';
const MESSAGE: u8 = b'M';
/// Message flag: deliver to every stage of the group in the receiving process.
const EVERY_STAGE: u8 = 1;

/// Where this process sits in the node.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    /// This process's number (its place among the process entries of `#startup`).
    pub me: u32,
    /// The numbers of every Lua process of the node, this one included.
    pub processes: Vec<u32>,
    /// The node's runtime directory (one socket per process in it).
    pub dir: PathBuf,
    /// The supervisor, which `stage.exit()` asks to stop the whole node.
    pub supervisor: u32,
    pub notify: Duration,
    pub expiry: Duration,
    /// The scale-down file (`-s`, spec services.md §6.1): while it exists, this process
    /// sends no heartbeats, so the others stop routing to it and its traffic drains away.
    pub suspend: Option<PathBuf>,
}

pub struct Peers {
    pub me: u32,
    pub supervisor: u32,
    suspend: Option<PathBuf>,
    others: Vec<u32>,
    dir: PathBuf,
    notify: Duration,
    sender: UnixDatagram,
    /// This process's own socket, bound by [`Peers::bind`] before any stage boots and taken
    /// by the reader thread once core 0 has booted: what arrives in between waits in it.
    receiver: Mutex<Option<UnixDatagram>>,
    /// Datagrams a busy receiver could not take at once (sent by the outbox thread).
    outbox: Outbox,
    registry: Members<u32>,
}

/// A decoded datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Heartbeat {
        n: u32,
        ids: Vec<&'a str>,
    },
    Message {
        every: bool,
        group: &'a str,
        doc: &'a [u8],
    },
    /// A node-wide lock granted by the supervisor (`lock_service`): the request's payload.
    LockGrant {
        payload: &'a [u8],
    },
}

impl Peers {
    pub fn new(settings: PeerSettings) -> std::io::Result<Peers> {
        let sender = UnixDatagram::unbound()?;
        sender.set_nonblocking(true)?;
        // Datagrams in flight are charged to the sender until read: room for bursts of
        // large messages (the kernel caps this at net.core.wmem_max).
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt reads the int we pass, on a socket we own.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sender),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Peers {
            me: settings.me,
            supervisor: settings.supervisor,
            suspend: settings.suspend,
            others: settings
                .processes
                .iter()
                .copied()
                .filter(|n| *n != settings.me)
                .collect(),
            dir: settings.dir,
            notify: settings.notify,
            sender,
            receiver: Mutex::new(None),
            outbox: Outbox::default(),
            registry: Members::new(settings.expiry),
        })
    }

    /// Every Lua process of the node, this one included, in number order.
    pub fn processes(&self) -> Vec<u32> {
        let mut all = self.others.clone();
        all.push(self.me);
        all.sort_unstable();
        all
    }

    /// The socket of process `n`.
    /// Binds this process's socket (`DIR/N.sock`). Done before the stages boot, so that a
    /// reply or a lock grant sent to a main script's early request finds the socket.
    pub fn bind(&self) -> std::io::Result<()> {
        let path = self.path(self.me);
        // A socket left by an earlier run of this process number (killed, restarted).
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        socket.set_read_timeout(Some(READ_POLL))?;
        *self.receiver.lock().unwrap() = Some(socket);
        Ok(())
    }

    pub fn path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{n}.sock"))
    }

    /// Sends one datagram to process `n` without waiting. A receiver whose queue is full
    /// gets it later through the outbox; a process that is down (ECONNREFUSED, ENOENT) or a
    /// full outbox (EAGAIN) come back as errors.
    pub fn send(&self, n: u32, frame: &[u8]) -> std::io::Result<()> {
        let path = self.path(n);
        if !self.outbox.is_pending(n) {
            match self.sender.send_to(frame, &path) {
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                other => return other.map(drop),
            }
        }
        self.outbox.push(n, path, frame)
    }

    /// A heartbeat from process `n` listing the stage ids it hosts.
    pub fn heard(&self, n: u32, ids: Vec<String>, now: Instant) {
        if n == self.me {
            return;
        }
        let list = ids.join(", ");
        if self.registry.heard(n, ids, now) {
            tracing::info!(
                "process {}: peer process {n} is up, hosting [{list}]",
                self.me
            );
        }
    }

    /// Logs the peers whose heartbeats stopped (they are no longer eligible anyway).
    pub fn sweep(&self, now: Instant) {
        for (n, silent) in self.registry.sweep(now) {
            tracing::info!(
                "process {}: peer process {n} is down (no heartbeat for {} ms)",
                self.me,
                silent.as_millis()
            );
        }
    }

    /// The other processes currently eligible for `group`, in number order.
    pub fn hosting(&self, group: &str, now: Instant) -> Vec<u32> {
        self.registry.hosting(group, now, &|_| true)
    }

    /// The next process (round-robin) among those eligible for `group`; this process is a
    /// candidate when `local` (it hosts the group). `None`: nobody.
    pub fn pick(&self, group: &str, local: bool, now: Instant) -> Option<u32> {
        self.registry
            .pick(group, local.then_some(self.me), now, &|_| true)
    }
}

pub fn heartbeat_frame(me: u32, ids: &[&str]) -> Vec<u8> {
    let mut out = vec![HEARTBEAT];
    out.extend_from_slice(&me.to_le_bytes());
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// A message datagram; `None` if the group name does not fit (stage ids are at most 40
/// bytes, so only a forged group can fail).
pub fn message_frame(group: &str, every: bool, doc: &[u8]) -> Option<Vec<u8>> {
    let len = u8::try_from(group.len()).ok()?;
    let mut out = Vec::with_capacity(3 + group.len() + doc.len());
    out.push(MESSAGE);
    out.push(if every { EVERY_STAGE } else { 0 });
    out.push(len);
    out.extend_from_slice(group.as_bytes());
    out.extend_from_slice(doc);
    Some(out)
}

pub fn decode(frame: &[u8]) -> Option<Frame<'_>> {
    match *frame.first()? {
        HEARTBEAT => {
            let n = u32::from_le_bytes(frame.get(1..5)?.try_into().ok()?);
            let rest = std::str::from_utf8(&frame[5..]).ok()?;
            let ids = rest.split('\0').filter(|s| !s.is_empty()).collect();
            Some(Frame::Heartbeat { n, ids })
        }
        MESSAGE => {
            let flags = *frame.get(1)?;
            let len = *frame.get(2)? as usize;
            let group = std::str::from_utf8(frame.get(3..3 + len)?).ok()?;
            Some(Frame::Message {
                every: flags & EVERY_STAGE != 0,
                group,
                doc: &frame[3 + len..],
            })
        }
        super::lock_service::GRANT => Some(Frame::LockGrant {
            payload: &frame[1..],
        }),
        _ => None,
    }
}

/// The local `msg` payload of a message that arrived from another process, for the stage
/// with directory index `index` here: its envelope with `t` set. Any `t` a sender wrote is
/// replaced: a stage index means nothing outside its own process.
pub fn for_local_stage(envelope: &mut Envelope, index: usize) -> Result<Vec<u8>, EnvelopeError> {
    let stage = u32::try_from(index).map_err(|_| EnvelopeError::OutOfRange {
        key: "t",
        value: index as i128,
    })?;
    envelope.stage = Some(stage);
    envelope.encode()
}

/// Called by core 0 of a child once its stages have booted: binds this process's socket,
/// starts the reader thread and core 0's heartbeat task.
pub fn start(core: &Rc<Core>, peers: Arc<Peers>) {
    let Some(socket) = peers.receiver.lock().unwrap().take() else {
        tracing::error!(
            "process {}: {} is not bound; other processes cannot reach this one",
            peers.me,
            peers.path(peers.me).display()
        );
        return;
    };
    let node = core.node.clone();
    let reader = std::thread::Builder::new()
        .name("stage-peers".into())
        .spawn(move || receive(node, socket));
    let node = core.node.clone();
    let outbox = std::thread::Builder::new()
        .name("stage-outbox".into())
        .spawn(move || {
            let Some(peers) = node.peers.clone() else {
                return;
            };
            peers.outbox.run(
                || node.is_shutting_down(),
                |n, err| node.count_unrouted(&format!("a message to process {n} ({err})")),
            );
        });
    if let Err(err) = reader.and(outbox) {
        tracing::error!(
            "process {}: cannot start the datagram threads: {err}",
            peers.me
        );
        return;
    }
    glommio::spawn_local(heartbeats(core.clone(), peers)).detach();
}

/// How often the reader looks up from its socket to notice a shutdown.
const READ_POLL: Duration = Duration::from_millis(200);

/// The reader thread: drains the socket into the cores' inboxes. A datagram socket queues
/// only a few datagrams (`net.unix.max_dgram_qlen`, 10 by default) before senders get
/// EAGAIN, so it is read by a thread that never runs Lua rather than by a core that may be
/// busy in a script.
/// A datagram reader's `recv` with a read timeout "fails" when nothing came in time: that is
/// its chance to look up (shutdown, due leases), not an error.
pub(crate) fn just_a_timeout(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

fn receive(node: Arc<Node>, socket: UnixDatagram) {
    let Some(peers) = node.peers.clone() else {
        return;
    };
    let mut buf = vec![0u8; MAX_DATAGRAM + 1024];
    while !node.is_shutting_down() {
        match socket.recv(&mut buf) {
            Ok(len) => handle(&node, &peers, &buf[..len]),
            Err(err) if just_a_timeout(&err) => {}
            Err(err) => {
                tracing::warn!("process {}: datagram receive failed: {err}", peers.me);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let _ = std::fs::remove_file(peers.path(peers.me));
}

fn handle(node: &Node, peers: &Peers, frame: &[u8]) {
    match decode(frame) {
        Some(Frame::Heartbeat { n, ids }) => peers.heard(
            n,
            ids.into_iter().map(str::to_string).collect(),
            Instant::now(),
        ),
        Some(Frame::Message { every, group, doc }) => deliver(node, group, every, doc),
        // Any core can deliver it (the prelude posts it on to the stage's main core): the
        // first with room takes it. A lock waiter waits for it, so while every inbox is full
        // it is tried again, never dropped.
        Some(Frame::LockGrant { payload }) => {
            let payload = Bytes::copy_from_slice(payload);
            let kind = super::post::PostKind::LockGrant;
            super::retry::post_any(node, kind, payload, "a lock grant from another process");
        }
        None => tracing::debug!(
            "process {}: malformed datagram ({} bytes) dropped",
            peers.me,
            frame.len()
        ),
    }
}

/// Posts a message from another process (or, through `cluster`, another node) to the main
/// core of the stage(s) of `group` here, exactly as a local `stage.signal` from another core
/// would. The envelope is decoded once and encoded per receiving stage (only `t` differs).
pub(crate) fn deliver(node: &Node, group: &str, every: bool, doc: &[u8]) {
    match Envelope::decode(doc) {
        Ok(envelope) => deliver_decoded(node, group, every, envelope, false),
        Err(err) => node.count_unrouted(&format!(
            "a malformed message from another process for `{group}` ({err})"
        )),
    }
}

/// [`deliver`] of an envelope the caller decoded already. `on_core`: the caller is a task of
/// a core (the cluster's own subscription, `cluster::listen`), outside any callback, so a
/// message for a stage of this very core is handled at once instead of through its inbox
/// (`runtime::handle_here`).
pub(crate) fn deliver_decoded(
    node: &Node,
    group: &str,
    every: bool,
    mut envelope: Envelope,
    on_core: bool,
) {
    let mut delivered = false;
    for stage in node.stages.by_id(group) {
        let payload = match for_local_stage(&mut envelope, stage.index) {
            Ok(payload) => payload,
            Err(err) => {
                node.count_unrouted(&format!(
                    "a message from another process for `{group}` ({err})"
                ));
                return;
            }
        };
        delivered = true;
        let msg = CoreMsg::Post {
            kind: super::post::PostKind::Msg,
            payload: Bytes::from(payload),
        };
        let left = match on_core {
            true => super::runtime::handle_here(stage.main_core, msg),
            false => Some(msg),
        };
        if let Some(msg) = left {
            if let Err(err) = node.send(stage.main_core, msg) {
                node.log_dropped(stage.main_core, &err);
            }
        }
        if !every {
            break;
        }
    }
    if !delivered {
        node.count_unrouted(&format!(
            "a message from another process for `{group}` (no such stage here)"
        ));
    }
}

/// Overload protection (spec stage.md §1.4): a backlog of messages for this process's cores
/// that keeps growing over one heartbeat period stops the heartbeats, so the other processes
/// stop sending new work here; they resume once the backlog has drained. Lua timers keep
/// running (docs/compat.md): stopping game timers under load would hurt more than it helps.
#[derive(Default)]
struct Overload {
    last: usize,
    on: bool,
}

/// A backlog this long and growing is an overload; one this short is drained.
const OVERLOAD_BACKLOG: usize = 1024;
const DRAINED_BACKLOG: usize = 64;

impl Overload {
    /// The backlog now; `Some(state)` when the overload state changes.
    fn update(&mut self, queued: usize) -> Option<bool> {
        let growing = queued > self.last;
        self.last = queued;
        let next = if self.on {
            queued > DRAINED_BACKLOG
        } else {
            queued >= OVERLOAD_BACKLOG && growing
        };
        (next != self.on).then(|| {
            self.on = next;
            next
        })
    }
}

/// Whether this process should announce itself now: not while the suspend file (`-s`)
/// exists, not while overloaded. Shared by the heartbeats to the other processes of the node
/// and to the cluster (`cluster`), so both drop out of routing for the same reasons. Each
/// change is logged once, naming `who` ("process 2", "cluster member n1.2").
pub struct Gate {
    who: String,
    suspend: Option<PathBuf>,
    suspended: bool,
    overload: Overload,
}

impl Gate {
    pub fn new(who: String, suspend: Option<PathBuf>) -> Gate {
        Gate {
            who,
            suspend,
            suspended: false,
            overload: Overload::default(),
        }
    }

    /// Called once per heartbeat period with the messages queued for this process's cores.
    pub fn open(&mut self, queued: usize) -> bool {
        let who = &self.who;
        let suspend = self.suspend.as_ref().filter(|f| f.exists());
        if suspend.is_some() != self.suspended {
            self.suspended = suspend.is_some();
            match suspend {
                Some(f) => tracing::warn!(
                    "{who}: suspend file {} exists: no more heartbeats, traffic drains away",
                    f.display()
                ),
                None => tracing::info!("{who}: suspend file gone: heartbeats resume"),
            }
        }
        match self.overload.update(queued) {
            Some(true) => tracing::warn!(
                "{who}: overloaded ({queued} messages queued and growing): no heartbeats until they drain, so new work goes elsewhere"
            ),
            Some(false) => tracing::info!("{who}: backlog drained: heartbeats resume"),
            None => {}
        }
        !self.suspended && !self.overload.on
    }
}

async fn heartbeats(core: Rc<Core>, peers: Arc<Peers>) {
    let ids = core.node.stages.hosted_ids();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let frame = heartbeat_frame(peers.me, &ids);
    loop {
        peers.sweep(Instant::now());
        let open = core
            .node
            .announce(|| format!("process {}", peers.me), peers.suspend.as_deref());
        for n in peers.others.iter().filter(|_| open) {
            if let Err(err) = peers.send(*n, &frame) {
                tracing::trace!("heartbeat to process {n} not sent: {err}");
            }
        }
        let sleep = glommio::timer::sleep(peers.notify);
        futures_lite::future::or(sleep, core.stop.wait()).await;
        if core.stop.is_fired() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_growing_backlog_suspends_until_it_drains() {
        let mut o = Overload::default();
        assert_eq!(o.update(10), None);
        assert_eq!(o.update(2000), Some(true), "long and growing");
        assert_eq!(o.update(1500), None, "still long: stays suspended");
        assert_eq!(o.update(64), Some(false), "drained");
        assert_eq!(o.update(5000), Some(true));
        let mut o = Overload::default();
        o.update(3000);
        o.on = false;
        assert_eq!(
            o.update(2500),
            None,
            "long but shrinking is not an overload"
        );
    }

    fn peers(me: u32) -> Peers {
        Peers::new(PeerSettings {
            me,
            processes: vec![1, 2, 3],
            dir: std::env::temp_dir(),
            supervisor: 1,
            notify: Duration::from_millis(100),
            expiry: Duration::from_millis(500),
            suspend: None,
        })
        .unwrap()
    }

    #[test]
    fn frames_round_trip() {
        let h = heartbeat_frame(7, &["game", "lobby"]);
        assert_eq!(
            decode(&h),
            Some(Frame::Heartbeat {
                n: 7,
                ids: vec!["game", "lobby"]
            })
        );
        assert_eq!(
            decode(&heartbeat_frame(2, &[])),
            Some(Frame::Heartbeat { n: 2, ids: vec![] })
        );
        let m = message_frame("game", true, b"DOC").unwrap();
        assert_eq!(
            decode(&m),
            Some(Frame::Message {
                every: true,
                group: "game",
                doc: b"DOC"
            })
        );
        assert_eq!(decode(b"M\0\x09ab"), None);
        assert_eq!(decode(b"X"), None);
        assert_eq!(decode(b""), None);
        assert!(message_frame(&"x".repeat(300), false, b"").is_none());
    }

    #[test]
    fn an_arriving_message_gets_the_local_stage_index() {
        use crate::codec::document::{elements, Element, Writer};
        // `{i, r, rp, d, v}` as a sender in another process writes it.
        let mut v = Writer::default();
        v.int64("n", 0).unwrap();
        let v = v.finish().unwrap();
        let mut w = Writer::default();
        w.string("i", b"game:hello").unwrap();
        w.string("r", b"lobby").unwrap();
        w.int64("rp", 2).unwrap();
        w.double("d", 1e12 + 0.5).unwrap();
        w.document("v", &v).unwrap();
        let doc = w.finish().unwrap();

        let mut envelope = Envelope::decode(&doc).unwrap();
        let payload = for_local_stage(&mut envelope, 3).unwrap();
        let back = Envelope::decode(&payload).unwrap();
        assert_eq!(back.stage, Some(3));
        assert_eq!(back.id, "game:hello");
        assert_eq!(back.reply_stage.as_deref(), Some("lobby"));
        assert_eq!(back.reply_process, Some(2));
        assert_eq!(back.deadline_ms, Some(1e12 + 0.5));
        assert_eq!(back.values.as_deref(), Some(&v[..]));
        let t = elements(&payload)
            .unwrap()
            .map(Result::unwrap)
            .find(|(k, _)| *k == b"t");
        assert_eq!(t, Some((&b"t"[..], Element::Int64(3))));

        // The next stage of an `every` delivery gets its own index, not an extra `t`.
        let payload = for_local_stage(&mut envelope, 0).unwrap();
        assert_eq!(Envelope::decode(&payload).unwrap().stage, Some(0));
        // Bytes that are not an envelope are refused before anything is posted.
        assert!(Envelope::decode(&[6, 0, 0, 0, 0]).is_err());
        assert!(Envelope::decode(&[5, 0, 0, 0, 0]).is_err(), "no id");
    }

    #[test]
    fn pick_rotates_over_eligible_processes_and_forgets_silent_ones() {
        let p = peers(1);
        let t0 = Instant::now();
        assert_eq!(p.pick("game", false, t0), None);
        assert_eq!(p.pick("game", true, t0), Some(1));
        p.heard(2, vec!["game".into()], t0);
        p.heard(3, vec!["game".into(), "lobby".into()], t0);
        let picks: Vec<u32> = (0..4).map(|_| p.pick("game", false, t0).unwrap()).collect();
        assert_eq!(picks, vec![2, 3, 2, 3]);
        let with_me: Vec<u32> = (0..3).map(|_| p.pick("lobby", true, t0).unwrap()).collect();
        assert_eq!(with_me, vec![1, 3, 1]);
        assert_eq!(p.hosting("game", t0), vec![2, 3]);
        // Process 2 goes silent: after the expiry only 3 is left.
        let later = t0 + Duration::from_millis(600);
        p.heard(3, vec!["game".into()], later);
        assert_eq!(p.hosting("game", later), vec![3]);
        assert_eq!(p.pick("game", false, later), Some(3));
        assert_eq!(p.pick("lobby", false, later), None);
        // Its heartbeats resume: eligible again.
        p.heard(2, vec!["game".into()], later);
        assert_eq!(p.hosting("game", later), vec![2, 3]);
        // Our own heartbeat (never sent, but harmless) does not register us as a peer.
        p.heard(1, vec!["game".into()], later);
        assert_eq!(p.hosting("game", later), vec![2, 3]);
    }
}
