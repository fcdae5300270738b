//! The index.so threads of this process, two per index.so stage, started with the node:
//! the sync thread (`service::index::sync`) and the open thread (`service::index::open`),
//! and the way they reach a core. A sync completion is a `PostKind::IndexDone` post
//! `{t = stage, u = upto, f = {index = why, ...}}` in the core's inbox, handled in arrival
//! order like every other post (the prelude hands it to `E.index_done`, which releases the
//! replies that waited for the sync). A finished open is in the shard's own channel; the
//! thread rings with a `PostKind::IndexOpen` post `{t = stage}` (the prelude calls
//! `E.index_opened`, which takes the index in and runs the requests that waited for it).
//!
//! **A full inbox never loses a post.** Requests and replies wait on the core for these
//! posts, and nothing else would ever release them, so a post that finds the core's inbox
//! full is tried again until the core takes it (`node::retry`). Meanwhile that thread does
//! nothing else: the other cores' completions of the stage wait behind it, which is the
//! back-pressure an overloaded core should put on its writers.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::mailbox::SendError;
use super::post::PostKind;
use super::retry::until_taken;
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

/// Posts `kind` with `payload` to core `core` until it takes it; the node is looked up at each
/// try, so a node that is gone ends the tries (and nothing is kept alive by them).
fn post(node: &Weak<Node>, core: usize, kind: PostKind, payload: Vec<u8>, what: &str) {
    let payload = bytes::Bytes::from(payload);
    let sent = until_taken(core, what, || {
        let node = node.upgrade().ok_or(SendError::Closed)?;
        let msg = CoreMsg::Post {
            kind,
            payload: payload.clone(),
        };
        node.send(core, msg)
    });
    if let (Err(err), Some(node)) = (sent, node.upgrade()) {
        node.log_dropped(core, &err);
    }
}

/// Tells core `core` that an open of stage `stage` is in its shard's channel.
fn ring(node: &Weak<Node>, stage: usize, core: usize) {
    let mut w = Writer::with_capacity(16);
    let payload = match w.int32("t", stage as i32).and_then(|()| w.finish()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("index open notice cannot be encoded: {e}");
            return;
        }
    };
    post(
        node,
        core,
        PostKind::IndexOpen,
        payload,
        "an index open notice",
    );
}

fn deliver(node: &Weak<Node>, stage: usize, core: usize, c: Completion) {
    let payload = match encode(stage, &c) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("index sync completion cannot be encoded: {e}");
            return;
        }
    };
    post(
        node,
        core,
        PostKind::IndexDone,
        payload,
        "an index sync completion",
    );
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

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::atomic::Ordering;
    use std::sync::{mpsc, Mutex};

    use super::*;
    use crate::node::mailbox;
    use crate::node::retry::testing::{poll, wait_for_a_retry};
    use crate::node::retry::RETRIES;
    use crate::service::index::{
        open, Answer, Command, IndexConfig, IndexService, Outcome, Reply, Request, Score, SetItem,
        SetResult, SyncPolicy, TierSel,
    };

    /// What the index threads post to the test's "core".
    enum Msg {
        /// Whatever else keeps the core's inbox full.
        Filler,
        Open,
        Done(Completion),
    }

    /// The open thread's notice and the sync thread's completion each find the core's inbox
    /// full: neither is dropped; each arrives once the core drains its inbox, and the request
    /// that waited for both (the first `set` of an index) is answered.
    #[test]
    fn posts_that_find_a_full_inbox_arrive_once_it_drains_and_the_request_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = IndexConfig::new(format!("{}/", dir.path().display()));
        cfg.sync = SyncPolicy::Always;
        // One slot: one queued message makes the inbox full.
        let (mailbox, inbox) = mailbox::channel::<Msg>(1).unwrap();
        let to = mailbox.clone();
        let notify = Box::new(move |core: usize, c: Completion| {
            let _ = until_taken(core, "a test completion", || {
                to.send(Msg::Done(c.clone()), 1)
            });
        });
        let to = mailbox.clone();
        let ring = Box::new(move |core: usize| {
            let _ = until_taken(core, "a test open notice", || to.send(Msg::Open, 1));
        });
        // The sync waits for the test's go, so the inbox can be filled before it completes.
        let (go, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let sync: crate::service::index::sync::SyncFn = Arc::new(move |f: &File| {
            let _ = gate.lock().unwrap().recv();
            f.sync_data()
        });
        let thread =
            crate::service::index::SyncThread::start_with("test", cfg.sync, sync, notify).unwrap();
        let opener =
            crate::service::index::OpenThread::start_with("test", Arc::new(open::load), ring)
                .unwrap();
        let mut svc = IndexService::new(cfg, 0, thread, opener);

        mailbox.send(Msg::Filler, 1).unwrap();
        let before = RETRIES.load(Ordering::Relaxed);
        let set = Request {
            index: "board".into(),
            tier: TierSel::Default,
            command: Command::Set(vec![SetItem {
                id: "p".into(),
                scores: Some(vec![Score::Int(7)]),
                ..SetItem::default()
            }]),
        };
        // Waits for the open: the open thread's notice meets the full inbox.
        assert_eq!(svc.execute(set, Some("cb".into()), 1), Outcome::Held);
        wait_for_a_retry(before);
        assert!(matches!(inbox.try_take(), Some(Msg::Filler)));
        let open_notice = poll("the open notice", || inbox.try_take());
        assert!(matches!(open_notice, Msg::Open));
        // The set runs, and waits for its sync; the inbox is full again when it completes.
        assert!(svc.opened().is_empty());
        mailbox.send(Msg::Filler, 1).unwrap();
        let before = RETRIES.load(Ordering::Relaxed);
        go.send(()).unwrap();
        wait_for_a_retry(before);
        assert!(matches!(inbox.try_take(), Some(Msg::Filler)));
        let Msg::Done(c) = poll("the completion", || inbox.try_take()) else {
            panic!("not a completion")
        };
        let released = svc.complete(c);
        assert_eq!(released.len(), 1);
        assert_eq!(
            (released[0].tag, released[0].callback.as_deref()),
            (1, Some("cb"))
        );
        assert_eq!(
            released[0].answer,
            Answer::One(Reply::Set(vec![("p".into(), SetResult::Rank(1))]))
        );
    }
}
