//! The index.so threads of this process, two per index.so stage, started with the node:
//! the sync thread (`service::index::sync`) and the open thread (`service::index::open`),
//! and the way they reach a core. A sync completion is a `PostKind::IndexDone` post
//! `{t = stage, u = upto, f = {index = why, ...}}` in the core's inbox, handled in arrival
//! order like every other post (the prelude hands it to `E.index_done`, which releases the
//! replies that waited for the sync). A finished open is in the shard's own channel; the
//! thread rings with a `PostKind::IndexOpen` post `{t = stage}` (the prelude calls
//! `E.index_opened`, which takes the index in and runs the requests that waited for it).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::post::PostKind;
use super::{CoreMsg, Node};
use crate::codec::document::{DocumentError, Writer};
use crate::plan::{Plan, ServiceKind};
use crate::service::index::{Completion, OpenThread, SyncThread};

/// The two threads of one index.so stage, shared by the cores of the process.
#[derive(Clone)]
pub struct IndexThreads {
    pub sync: SyncThread,
    pub open: OpenThread,
}

/// The threads of every index.so stage (directory index = Lua stages first, then services).
/// `node` is the node being built: a completion is delivered only while it lives.
pub fn start(plan: &Plan, node: Weak<Node>) -> HashMap<usize, IndexThreads> {
    let mut threads = HashMap::new();
    for (j, service) in plan.services.iter().enumerate() {
        let ServiceKind::Index(cfg) = &service.kind else {
            continue;
        };
        let stage = plan.stages.len() + j;
        let to = node.clone();
        let notify = Box::new(move |core: usize, c: Completion| deliver(&to, stage, core, c));
        let to = node.clone();
        let ring = Box::new(move |core: usize| ring(&to, stage, core));
        let started = SyncThread::start(&service.entry, cfg.sync, notify).and_then(|sync| {
            let open = OpenThread::start(&service.entry, ring)?;
            Ok(IndexThreads { sync, open })
        });
        match started {
            Ok(t) => {
                threads.insert(stage, t);
            }
            Err(e) => tracing::error!(
                stage = %service.entry,
                "cannot start the index sync or open thread: {e}; its indexes answer null"
            ),
        }
    }
    threads
}

/// Tells core `core` that an open of stage `stage` is in its shard's channel.
fn ring(node: &Weak<Node>, stage: usize, core: usize) {
    let Some(node) = node.upgrade() else {
        return;
    };
    let mut w = Writer::with_capacity(16);
    let payload = match w.int32("t", stage as i32).and_then(|()| w.finish()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("index open notice cannot be encoded: {e}");
            return;
        }
    };
    let msg = CoreMsg::Post {
        kind: PostKind::IndexOpen,
        payload: payload.into(),
    };
    if let Err(err) = node.send(core, msg) {
        node.log_dropped(core, &err);
    }
}

fn deliver(node: &Weak<Node>, stage: usize, core: usize, c: Completion) {
    let Some(node) = node.upgrade() else {
        return;
    };
    let payload = match encode(stage, &c) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("index sync completion cannot be encoded: {e}");
            return;
        }
    };
    let msg = CoreMsg::Post {
        kind: PostKind::IndexDone,
        payload: payload.into(),
    };
    if let Err(err) = node.send(core, msg) {
        node.log_dropped(core, &err);
    }
}

/// `{t = stage, u = upto, f = {name = why}}` (f only when something failed).
pub fn encode(stage: usize, c: &Completion) -> Result<Vec<u8>, DocumentError> {
    let mut w = Writer::with_capacity(32);
    w.int32("t", stage as i32)?;
    w.int64("u", c.upto as i64)?;
    if !c.failed.is_empty() {
        let mut f = Writer::default();
        for (name, why) in &c.failed {
            f.string(name, why.as_bytes())?;
        }
        w.document("f", &f.finish()?)?;
    }
    w.finish()
}

/// The threads of stage `stage`, for a core starting its shard.
pub fn of(node: &Arc<Node>, stage: usize) -> Option<IndexThreads> {
    node.index_sync.get(&stage).cloned()
}
