//! The kinds of message a core's prelude handles (`CoreMsg::Post`): a closed set, each
//! handled in one place (`P.posts[<name>]` in the prelude). The payload of every kind is a
//! BSON document in the engine-internal form; the stage-to-stage message (`Msg`) is the one
//! documented envelope, [`super::envelope::Envelope`].

use std::fmt;

/// What a posted payload is; the prelude hook of the same [`PostKind::name`] handles it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PostKind {
    /// A message for a stage (`stage.signal`, replies, service outputs): an `Envelope`.
    Msg,
    /// One part of a split index.so batch coming back to the core that split it.
    Gather,
    /// `broker.signal` / `broker.submit` work for a socket owned by the receiving core.
    Inject,
    /// A `stage.submit` job.
    Job,
    /// A `stage.addtask` timer firing on the stage's main core.
    Task,
    /// A change to a timer (`addtask` handle operations) made on another core.
    TaskOp,
    /// A timer created on another core, for the stage's main core.
    AddTask,
    /// An ordered lock's lease check.
    Lease,
    /// An ordered lock granted to a stage of this process.
    LockGrant,
    /// `thread.signal` values or a `thread.new` function's results.
    Thread,
    /// A finished `thread.new` job, forgotten a moment after its last values.
    ThreadEnd,
    /// A `=ticket` / `=route` service's timer (lease expiry, offer timeouts).
    ServiceTick,
    /// A curl.so reply is ready on this core.
    HttpDone,
    /// An index.so sync thread wrote (and synced) this core's jobs up to a point.
    IndexDone,
    /// An index.so open thread finished an open of this core's shard (`{t = stage}`).
    IndexOpen,
    /// A `commit('sync', fn)` of a `bundle.viewof` buffer reached the disk (`{h, e}`).
    ViewofSynced,
    /// lotus work for this core (`script::lotus::posts`): handled by the engine, not the
    /// prelude.
    Lotus,
}

impl PostKind {
    /// Every kind, for tests and for listing.
    pub const ALL: [PostKind; 17] = [
        PostKind::Msg,
        PostKind::Gather,
        PostKind::Inject,
        PostKind::Job,
        PostKind::Task,
        PostKind::TaskOp,
        PostKind::AddTask,
        PostKind::Lease,
        PostKind::LockGrant,
        PostKind::Thread,
        PostKind::ThreadEnd,
        PostKind::ServiceTick,
        PostKind::HttpDone,
        PostKind::IndexDone,
        PostKind::IndexOpen,
        PostKind::ViewofSynced,
        PostKind::Lotus,
    ];

    /// The prelude's name for it (the key in `P.posts`).
    pub fn name(self) -> &'static str {
        match self {
            PostKind::Msg => "msg",
            PostKind::Gather => "gather",
            PostKind::Inject => "inject",
            PostKind::Job => "job",
            PostKind::Task => "task",
            PostKind::TaskOp => "taskop",
            PostKind::AddTask => "addtask",
            PostKind::Lease => "lease",
            PostKind::LockGrant => "lock_grant",
            PostKind::Thread => "thread",
            PostKind::ThreadEnd => "thread_end",
            PostKind::ServiceTick => "svc_tick",
            PostKind::HttpDone => "http_done",
            PostKind::IndexDone => "index_done",
            PostKind::IndexOpen => "index_open",
            PostKind::ViewofSynced => "viewof_synced",
            PostKind::Lotus => "lotus",
        }
    }

    /// The kind the prelude names `name`, if there is one.
    pub fn from_name(name: &str) -> Option<PostKind> {
        PostKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for PostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_name() {
        for kind in PostKind::ALL {
            assert_eq!(PostKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(PostKind::from_name("nonsense"), None);
    }
}
