//! lotus persistence (spec/lotus.md §6.6, §9.5): one store thread per lotus stage and node,
//! `lotus-store`, that does every file (or network) operation so a core never does I/O. Cores
//! hand it [`Cmd`]s through an unbounded channel (a send never blocks; the backlog is bounded
//! by what the cores produce between two flushes) and get its answers back in their inboxes
//! as lotus [`Post`]s (`Post::Stored`), handled in arrival order like every other post.
//!
//! Two backends: the embedded default keeps files under the configured directory (`files`):
//! one file per schema and per state, written whole to a temporary file and renamed over the
//! old one (a reader never sees half a state), and one append-only log per channel; `redis`
//! keeps them in Redis. The thread starts once per stage: the first core that boots starts
//! it, the others share it. At an orderly stop every core flushes its dirty states, then the
//! binary calls [`stop_all`], which waits (bounded) until each store has written them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rmpv::Value;

use super::files::Files;
use super::posts::{Post, Stored, Wire};
use super::redis::Redis;
use crate::config::{LotusConfig, Store as StoreConfig};
use crate::node::post::PostKind;
use crate::node::{retry, Node};

/// One state to write (`Some`) or delete (`None`) in a flush.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub project: String,
    pub name: String,
    pub write: Option<Record>,
}

/// A stored state.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub typename: String,
    pub schema_hash: u64,
    pub rev: u64,
    /// The state's table, MessagePack.
    pub data: Vec<u8>,
}

/// A channel's stored tail: `(epoch, last_id, newest items ascending by id)`.
pub type Tail = (u64, u64, Vec<(u64, Value)>);

/// Who waits for a register's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Waiter {
    pub core: usize,
    pub conn: u64,
    pub wire: Wire,
    pub rid: u64,
}

/// What a core asks of the store.
pub enum Cmd {
    Schema {
        waiter: Waiter,
        project: String,
        typename: String,
        schema: Value,
    },
    Flush {
        core: usize,
        items: Vec<Item>,
    },
    /// `ctx.save()`: one state written now, answered (`Stored::Saved`) once the store
    /// replied, so the handler's caller is acknowledged only after the write.
    Save {
        core: usize,
        token: u64,
        item: Item,
    },
    LoadState {
        core: usize,
        project: String,
        name: String,
    },
    LoadChannel {
        core: usize,
        project: String,
        channel: String,
    },
    Append {
        project: String,
        channel: String,
        epoch: u64,
        id: u64,
        msg: Vec<u8>,
    },
    DeleteChannel {
        project: String,
        channel: String,
    },
    /// The node stops (after every core's last flush): answer on `done` once everything
    /// sent before is written, then end the thread.
    Stop {
        done: mpsc::Sender<()>,
    },
}

/// A backend: what the store thread does with each command.
pub trait Backend {
    fn put_schema(&mut self, project: &str, typename: &str, schema: &Value) -> Result<(), String>;
    /// Every stored schema, `(project, typename, schema)`.
    fn schemas(&mut self) -> Result<Vec<(String, String, Value)>, String>;
    /// The states that failed, `(project, name, why)`; each stays dirty on its core.
    fn flush(&mut self, items: &[Item]) -> Vec<(String, String, String)>;
    /// The state and its type's schema.
    fn load_state(&mut self, project: &str, name: &str) -> Result<Option<(Record, Value)>, String>;
    /// `(epoch, last_id, newest items ascending)`.
    fn load_channel(&mut self, project: &str, channel: &str) -> Result<Option<Tail>, String>;
    fn append(
        &mut self,
        project: &str,
        channel: &str,
        epoch: u64,
        id: u64,
        msg: &[u8],
    ) -> Result<(), String>;
    fn delete_channel(&mut self, project: &str, channel: &str) -> Result<(), String>;
    /// Nothing to do for now (the command queue is empty, or a tick passed): retry what
    /// waits for a store that was down.
    fn idle(&mut self) {}
    /// The node stops: write what is still waiting, one last try; returns how many channel
    /// operations could not be written.
    fn stop(&mut self) -> usize {
        0
    }
}

/// A core's handle on its stage's store thread.
pub struct Store {
    /// `Sender` is `Sync`: cores send without a lock.
    tx: mpsc::Sender<Cmd>,
    /// What the store is, for error messages (`store files:lotus/`).
    pub what: String,
}

impl Store {
    /// Hands `cmd` to the store thread (never blocks).
    pub fn send(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_err() {
            tracing::error!("lotus {}: the store thread is gone", self.what);
        }
    }
}

fn stores() -> &'static Mutex<HashMap<String, Arc<Store>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<Store>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// The store of stage `entry`, its thread started by the first core that asks (at boot).
pub fn get_or_start(entry: &str, cfg: &LotusConfig, node: Arc<Node>) -> Arc<Store> {
    let mut all = stores().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = all.get(entry) {
        return s.clone();
    }
    let (tx, rx) = mpsc::channel();
    let (backend, what): (Box<dyn Backend + Send>, String) = match &cfg.store {
        StoreConfig::Files(dir) => (
            Box::new(Files::new(PathBuf::from(dir), cfg.history)),
            format!("store `{}`", dir.display()),
        ),
        StoreConfig::Redis(url) => (
            Box::new(Redis::new(url, entry, cfg.history)),
            format!("store `{}`", super::redis::redacted(url)),
        ),
    };
    let label = what.clone();
    let entry_name = entry.to_string();
    let spawned = std::thread::Builder::new()
        .name("lotus-store".into())
        .spawn(move || run(backend, rx, node, &entry_name, &label));
    if let Err(e) = spawned {
        tracing::error!("lotus `{entry}`: cannot start the store thread: {e}");
    }
    let store = Arc::new(Store { tx, what });
    all.insert(entry.to_string(), store.clone());
    store
}

/// Hands an answer to core `core`: a waiter there (a register, a save, a load, a flush's
/// dirty states) depends on it, so a full inbox is tried again (`node::retry`), never dropped.
fn deliver(node: &Node, core: usize, stored: Stored) {
    let payload = Post::Stored(stored).encode();
    retry::post(
        node,
        core,
        PostKind::Lotus,
        payload.into(),
        "a lotus store answer",
    );
}

/// How often the store thread wakes when no command comes, to retry what waits for a store
/// that was down (the schemas at boot, kept channel messages).
const TICK: Duration = Duration::from_millis(250);

/// Sends the stored schemas to every core; `false` when the store could not be read (logged
/// the first time, tried again later).
fn send_schemas(
    b: &mut dyn Backend,
    node: &Node,
    entry: &str,
    what: &str,
    logged: &mut bool,
) -> bool {
    match b.schemas() {
        Ok(list) => {
            for (project, typename, schema) in list {
                for core in 0..node.cores() {
                    let post = Post::Schema {
                        project: project.clone(),
                        typename: typename.clone(),
                        schema: schema.clone(),
                    };
                    // A core that missed it would not know the stored type: never dropped.
                    let payload = post.encode().into();
                    retry::post(
                        node,
                        core,
                        PostKind::Lotus,
                        payload,
                        "a lotus stored schema",
                    );
                }
            }
            if *logged {
                tracing::info!("lotus `{entry}`: {what}: the stored schemas are read");
            }
            true
        }
        Err(e) => {
            if !std::mem::replace(logged, true) {
                tracing::error!("lotus `{entry}`: {what}: cannot read the schemas: {e} (tried again until it can)");
            }
            false
        }
    }
}

/// The store thread: stored schemas go to every core first (before any register is
/// answered), then commands in order.
fn run(
    mut b: Box<dyn Backend + Send>,
    rx: mpsc::Receiver<Cmd>,
    node: Arc<Node>,
    entry: &str,
    what: &str,
) {
    let mut schema_error_logged = false;
    let mut schemas_read = send_schemas(&mut *b, &node, entry, what, &mut schema_error_logged);
    // Whether the last flush had failures (logged when it starts and when it ends, not per
    // flush: an outage would otherwise log every flush_ms).
    let mut flush_failing = false;
    loop {
        let cmd = match rx.try_recv() {
            Ok(cmd) => cmd,
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {
                b.idle();
                if !schemas_read {
                    schemas_read =
                        send_schemas(&mut *b, &node, entry, what, &mut schema_error_logged);
                }
                match rx.recv_timeout(TICK) {
                    Ok(cmd) => cmd,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        if !schemas_read {
            schemas_read = send_schemas(&mut *b, &node, entry, what, &mut schema_error_logged);
        }
        match cmd {
            Cmd::Schema {
                waiter,
                project,
                typename,
                schema,
            } => {
                let error = b.put_schema(&project, &typename, &schema).err().map(|e| {
                    tracing::warn!("lotus `{entry}`: {what}: schema `{typename}`: {e}");
                    format!("{what}: {e}")
                });
                deliver(
                    &node,
                    waiter.core,
                    Stored::Schema {
                        waiter,
                        project,
                        typename,
                        schema,
                        error,
                    },
                );
            }
            Cmd::Flush { core, items } => {
                let failed = b.flush(&items);
                match failed.first() {
                    Some((project, name, e)) if !flush_failing => {
                        flush_failing = true;
                        tracing::warn!(
                            "lotus `{entry}`: {what}: {} state(s) not written, e.g. {project}/{name}: {e} (kept dirty, retried at each flush; logged again when writes succeed)",
                            failed.len()
                        );
                    }
                    None if flush_failing => {
                        flush_failing = false;
                        tracing::info!("lotus `{entry}`: {what}: states are written again");
                    }
                    _ => {}
                }
                let failed = failed.into_iter().map(|(p, n, _)| (p, n)).collect();
                deliver(&node, core, Stored::Flushed { failed });
            }
            Cmd::Save { core, token, item } => {
                let error = b.flush(std::slice::from_ref(&item)).into_iter().next().map(
                    |(project, name, e)| {
                        tracing::warn!(
                            "lotus `{entry}`: {what}: ctx.save() of {project}/{name}: {e}"
                        );
                        format!("{what}: {e}")
                    },
                );
                deliver(
                    &node,
                    core,
                    Stored::Saved {
                        token,
                        project: item.project,
                        name: item.name,
                        error,
                    },
                );
            }
            Cmd::LoadState {
                core,
                project,
                name,
            } => {
                let (found, error) = match b.load_state(&project, &name) {
                    Ok(f) => (f, None),
                    Err(e) => (None, Some(format!("{what}: {e}"))),
                };
                deliver(
                    &node,
                    core,
                    Stored::State {
                        project,
                        name,
                        found,
                        error,
                    },
                );
            }
            Cmd::LoadChannel {
                core,
                project,
                channel,
            } => {
                let (found, error) = match b.load_channel(&project, &channel) {
                    Ok(f) => (f, None),
                    Err(e) => (None, Some(format!("{what}: {e}"))),
                };
                deliver(
                    &node,
                    core,
                    Stored::Channel {
                        project,
                        channel,
                        found,
                        error,
                    },
                );
            }
            Cmd::Append {
                project,
                channel,
                epoch,
                id,
                msg,
            } => {
                if let Err(e) = b.append(&project, &channel, epoch, id, &msg) {
                    tracing::warn!(
                        "lotus `{entry}`: {what}: channel {project}/{channel} id {id}: {e}"
                    );
                }
            }
            Cmd::DeleteChannel { project, channel } => {
                if let Err(e) = b.delete_channel(&project, &channel) {
                    tracing::warn!(
                        "lotus `{entry}`: {what}: deleting channel {project}/{channel}: {e}"
                    );
                }
            }
            Cmd::Stop { done } => {
                let left = b.stop();
                if left > 0 {
                    tracing::error!("lotus `{entry}`: {what}: stopping with {left} channel operation(s) not written (the store does not answer)");
                }
                if flush_failing {
                    tracing::error!("lotus `{entry}`: {what}: stopping while state writes fail: changes since the last written flush are lost");
                }
                let _ = done.send(());
                return;
            }
        }
    }
}

/// The node stops (every core has ended, after its last flush): each lotus store writes what
/// it was sent, within `bound` in all. Called once, by the binary, after the cores joined.
pub fn stop_all(bound: Duration) {
    let deadline = Instant::now() + bound;
    let all: Vec<(String, Arc<Store>)> = stores()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for (entry, store) in all {
        let (done, wait) = mpsc::channel();
        store.send(Cmd::Stop { done });
        let left = deadline.saturating_duration_since(Instant::now());
        if wait.recv_timeout(left).is_err() {
            tracing::error!("lotus `{entry}`: {}: not done writing within {} s of the stop; what it had not written is lost", store.what, bound.as_secs());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::node::mailbox;
    use crate::node::retry::testing::{poll, wait_for_a_retry};
    use crate::node::retry::RETRIES;
    use crate::node::CoreMsg;
    use crate::plan::Plan;

    /// A load answered while the core's inbox is full is not dropped: the store thread tries
    /// again and the answer arrives once the core drains what was queued before it.
    #[test]
    fn an_answer_that_finds_the_inbox_full_arrives_once_the_core_drains() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::new(vec![0], Arc::new(Plan::empty()), None);
        // One slot: one queued message makes the inbox full.
        let (mailbox, inbox) = mailbox::channel(1).unwrap();
        node.set_inboxes(vec![mailbox]);
        let filler = CoreMsg::Post {
            kind: PostKind::Msg,
            payload: bytes::Bytes::new(),
        };
        node.send(0, filler).unwrap();

        let before = RETRIES.load(Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let backend = Box::new(Files::new(dir.path().to_path_buf(), 1));
        let to = node.clone();
        let thread = std::thread::spawn(move || run(backend, rx, to, "test", "store test"));
        tx.send(Cmd::LoadState {
            core: 0,
            project: "p".into(),
            name: "s".into(),
        })
        .unwrap();
        wait_for_a_retry(before);

        let Some(CoreMsg::Post { kind, payload }) = inbox.try_take() else {
            panic!("the filler is not first in the inbox")
        };
        assert_eq!((kind, payload.len()), (PostKind::Msg, 0));
        let answer = poll("the store's answer", || inbox.try_take());
        let CoreMsg::Post { kind, payload } = answer else {
            panic!("not a post")
        };
        assert_eq!(kind, PostKind::Lotus);
        assert_eq!(
            Post::decode(&payload).unwrap(),
            Post::Stored(Stored::State {
                project: "p".into(),
                name: "s".into(),
                found: None,
                error: None,
            })
        );
        drop(tx);
        thread.join().unwrap();
    }
}
