//! lotus persistence (spec/lotus.md §6.6, §9.5): one store thread per lotus stage and node,
//! `lotus-store`, that does every file (or network) operation so a core never does I/O. Cores
//! hand it [`Cmd`]s through an unbounded channel (a send never blocks; the backlog is bounded
//! by what the cores produce between two flushes) and get its answers back in their inboxes
//! as lotus [`Post`]s (`Post::Stored`), handled in arrival order like every other post.
//!
//! The embedded default backend keeps files under the configured directory (`files`): one
//! file per schema and per state, written whole to a temporary file and renamed over the old
//! one (a reader never sees half a state), and one append-only log per channel. The thread
//! starts once per stage: the first core that boots starts it, the others share it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use rmpv::Value;

use super::files::Files;
use super::posts::{Post, Stored, Wire};
use crate::config::{LotusConfig, Store as StoreConfig};
use crate::node::post::PostKind;
use crate::node::{CoreMsg, Node};

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
            Box::new(super::files::Unavailable(format!(
                "the Redis store ({url}) is not built yet; use the embedded store"
            ))),
            format!("store `{url}`"),
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

fn deliver(node: &Node, core: usize, stored: Stored) {
    let payload = Post::Stored(stored).encode();
    let msg = CoreMsg::Post {
        kind: PostKind::Lotus,
        payload: payload.into(),
    };
    if let Err(err) = node.send(core, msg) {
        node.log_dropped(core, &err);
    }
}

/// The store thread: stored schemas go to every core first, then commands in order.
fn run(
    mut b: Box<dyn Backend + Send>,
    rx: mpsc::Receiver<Cmd>,
    node: Arc<Node>,
    entry: &str,
    what: &str,
) {
    match b.schemas() {
        Ok(list) => {
            for (project, typename, schema) in list {
                for core in 0..node.cores() {
                    let post = Post::Schema {
                        project: project.clone(),
                        typename: typename.clone(),
                        schema: schema.clone(),
                    };
                    let msg = CoreMsg::Post {
                        kind: PostKind::Lotus,
                        payload: post.encode().into(),
                    };
                    if let Err(err) = node.send(core, msg) {
                        node.log_dropped(core, &err);
                    }
                }
            }
        }
        Err(e) => tracing::error!("lotus `{entry}`: {what}: cannot read the schemas: {e}"),
    }
    while let Ok(cmd) = rx.recv() {
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
                for (project, name, e) in &failed {
                    tracing::warn!("lotus `{entry}`: {what}: state {project}/{name}: {e} (kept dirty, retried)");
                }
                let failed = failed.into_iter().map(|(p, n, _)| (p, n)).collect();
                deliver(&node, core, Stored::Flushed { failed });
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
        }
    }
}
