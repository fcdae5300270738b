//! The index.so sync threads of this process (`service::index::sync`), one per index.so
//! stage, started with the node, and the way their completions reach a core: a
//! `PostKind::IndexDone` post `{t = stage, u = upto, f = {index = why, ...}}` in the core's
//! inbox, handled in arrival order like every other post (the prelude hands it to
//! `E.index_done`, which releases the replies that waited for the sync).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::post::PostKind;
use super::{CoreMsg, Node};
use crate::codec::document::{DocumentError, Writer};
use crate::plan::{Plan, ServiceKind};
use crate::service::index::{Completion, SyncThread};

/// One sync thread per index.so stage (directory index = Lua stages first, then services).
/// `node` is the node being built: a completion is delivered only while it lives.
pub fn start(plan: &Plan, node: Weak<Node>) -> HashMap<usize, SyncThread> {
    let mut threads = HashMap::new();
    for (j, service) in plan.services.iter().enumerate() {
        let ServiceKind::Index(cfg) = &service.kind else {
            continue;
        };
        let stage = plan.stages.len() + j;
        let node = node.clone();
        let notify = Box::new(move |core: usize, c: Completion| deliver(&node, stage, core, c));
        match SyncThread::start(&service.entry, cfg.sync, notify) {
            Ok(t) => {
                threads.insert(stage, t);
            }
            Err(e) => tracing::error!(
                stage = %service.entry,
                "cannot start the index sync thread: {e}; its indexes answer null"
            ),
        }
    }
    threads
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

/// The thread of stage `stage`, for a core starting its shard.
pub fn of(node: &Arc<Node>, stage: usize) -> Option<SyncThread> {
    node.index_sync.get(&stage).cloned()
}
