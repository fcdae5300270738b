//! `index.so`: persistent rankings (spec/services.md §2). Named indexes, opened lazily under a
//! path prefix; each holds ids with up to 4 tiers of scores and a user value, ranked per tier
//! with rank-of-id and id-at-rank in O(log n).
//!
//! [`IndexService`] is a plain state machine: the owner core hands it [`Request`]s (decoded
//! from `index:` messages) and sends back the [`Reply`]s. It is not thread-safe by design —
//! one owner serializes every request, which is the "one actor per index" reading of spec
//! §2.4 / open question 11 (stricter than the original's unordered thread pool).
//!
//! Files: `order` (score order), `tree` (counted B-tree; `slots`: its nodes' inline arrays),
//! `ranking` (one index in memory and the command semantics), `record` (persisted mutation
//! bytes), `store` (log, snapshot, durability rule), `snapshot` (a snapshot image built in
//! slices on the owner core), `sync` (the thread that writes and syncs them), `open` (the
//! thread that reads and replays an index's files), `command` (request/reply model and spec
//! parsing).
//!
//! The service never touches a file. An index is opened by the stage's open thread: the first
//! request naming it starts the open, and it and every request for that index arriving
//! meanwhile wait in the index's queue (their answers are held, like those waiting for a
//! sync) and run in arrival order once [`IndexService::opened`] takes the result in; a
//! failed open answers every waiting request null (spec §2.3), is logged once, and the next
//! request tries again. Mutations go to the stage's sync thread as jobs, and a reply that
//! must not go out before its log is on disk is held here until the thread's [`Completion`]
//! says so ([`IndexService::complete`]).
//!
//! A log past `snapshot_log_bytes` starts a snapshot build; the build encodes at most
//! `snapshot::SLICE_IDS` ids per call of [`IndexService::snapshot_step`], which the engine
//! calls from a task of the owner core, one slice per turn (`node::index_snapshot`), woken
//! through the hook given to [`IndexService::on_snapshot_slices`]. Requests keep running
//! between slices; the finished image goes to the sync thread as one job.

pub mod command;
pub mod open;
pub mod order;
pub mod ranking;
pub mod record;
mod slots;
pub mod snapshot;
pub mod store;
pub mod sync;
pub mod tree;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{mpsc, Arc};

pub use command::{
    batch_order, parse_batch_key, parse_spec, Command, GetResult, Kind, RangeFrom, RankedEntry,
    Reply, Request, SetItem, SetResult, SpecError, TierSel, TIERS,
};
pub use order::Score;
pub use store::SyncPolicy;

pub use open::{OpenResult, OpenThread};
use ranking::Ranking;
use store::{LogFiles, Store};
pub use sync::{Completion, Job, SyncThread, Work};

/// Configuration of one `index.so` stage (spec §2.1, plus the durability knobs).
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// Path prefix: files are `<path><name>.snap` / `.log` (prefix concatenation, as in the
    /// original, so keep the trailing `/`).
    pub path: String,
    /// Largest id or string score in bytes (the original's "maximum key size", default 128).
    pub max_key: usize,
    pub sync: SyncPolicy,
    /// Log size after which a snapshot is written and the log emptied.
    pub snapshot_log_bytes: u64,
}

impl IndexConfig {
    pub fn new(path: impl Into<String>) -> Self {
        IndexConfig {
            path: path.into(),
            max_key: 128,
            sync: SyncPolicy::Always,
            snapshot_log_bytes: 64 << 20,
        }
    }
}

struct Index {
    ranking: Ranking,
    store: Store,
    /// A snapshot image being built in slices, if any.
    build: Option<snapshot::Build>,
}

/// A request's answer: one reply (direct form) or the replies of a batch by key.
#[derive(Debug, PartialEq)]
pub enum Answer {
    One(Reply),
    Batch(Vec<(String, Reply)>),
}

/// What [`IndexService::execute`] gives back: the answer now, or later from
/// [`IndexService::complete`] (it waits for the sync of an earlier or its own mutation).
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Now(Released),
    Held,
}

/// An answer (now, or released by [`IndexService::complete`]), with what the caller gave to find its
/// way back (`tag`) and the reply id (`callback`).
#[derive(Debug, PartialEq)]
pub struct Released {
    pub tag: u64,
    pub callback: Option<String>,
    pub answer: Answer,
}

/// An answer waiting for the sync thread: it goes out once the job `after` is done.
struct Held {
    after: u64,
    /// The index each reply of the answer names (one, or one per batch key), so the replies
    /// of an index whose sync failed become null.
    names: Vec<String>,
    tag: u64,
    callback: Option<String>,
    answer: Answer,
}

/// What a request waiting for an open will run.
enum Deferred {
    One(Request),
    Batch(Vec<(String, Request)>),
}

/// A request waiting for an index to open (or behind one that is, in a queue it names).
struct Waiting {
    /// The indexes it is queued on (each once).
    names: Vec<String>,
    run: Deferred,
    tag: u64,
    callback: Option<String>,
}

pub struct IndexService {
    cfg: IndexConfig,
    open: HashMap<String, Index>,
    /// This shard's core: the sync thread's completions come back here.
    core: usize,
    sync: SyncThread,
    /// The last job handed to the sync thread, and the last one it reported done.
    sent: u64,
    done: u64,
    /// Answers waiting for a sync, in the order they were produced: they are released in
    /// that order, so a caller's replies never overtake each other.
    held: VecDeque<Held>,
    /// Indexes whose log could not be written or synced, with why: refused until restart.
    failed: HashMap<String, String>,
    /// The stage's open thread, and this shard's channel for its results.
    opener: OpenThread,
    opened_tx: mpsc::Sender<OpenResult>,
    opened_rx: mpsc::Receiver<OpenResult>,
    /// Indexes whose open is with the open thread.
    opening: HashSet<String>,
    /// Requests waiting for an open, by arrival number (see [`Self::defer`]).
    deferred: BTreeMap<u64, Waiting>,
    /// Per index, the arrival numbers of the requests waiting on it, in arrival order; an
    /// index with a queue runs nothing until its queue is empty.
    queues: HashMap<String, VecDeque<u64>>,
    arrivals: u64,
    /// Indexes whose open failed, with why, until the requests that waited on them have been
    /// answered (null); then forgotten, so the next request opens again.
    open_failed: HashMap<String, String>,
    /// Wakes the core's task that calls [`Self::snapshot_step`] while a build is unfinished.
    slicer: Option<Box<dyn Fn()>>,
    /// The ids a request changed, to log (kept to reuse its allocation: one per request).
    touched: Vec<Arc<str>>,
}

impl IndexService {
    /// A shard on core `core`, opening its indexes through `opener` and writing through
    /// `sync` (the stage's threads).
    pub fn new(cfg: IndexConfig, core: usize, sync: SyncThread, opener: OpenThread) -> Self {
        let (opened_tx, opened_rx) = mpsc::channel();
        IndexService {
            cfg,
            open: HashMap::new(),
            core,
            sync,
            sent: 0,
            done: 0,
            held: VecDeque::new(),
            failed: HashMap::new(),
            opener,
            opened_tx,
            opened_rx,
            opening: HashSet::new(),
            deferred: BTreeMap::new(),
            queues: HashMap::new(),
            arrivals: 0,
            open_failed: HashMap::new(),
            slicer: None,
            touched: Vec::new(),
        }
    }

    /// `wake` is called when a snapshot build is left unfinished: the caller then calls
    /// [`Self::snapshot_step`], one slice per core turn, until it returns false. Without it
    /// (tests) a build advances only when [`Self::snapshot_step`] is called.
    pub fn on_snapshot_slices(&mut self, wake: Box<dyn Fn()>) {
        self.slicer = Some(wake);
    }

    /// Runs one request in memory and hands its mutations to the sync thread. The answer
    /// comes now when nothing is waiting for a sync, else it is held (see [`Self::complete`]):
    /// a mutation's reply waits for its own sync, and every later reply waits behind it.
    /// A request naming an index that is not open yet (or one with requests waiting for its
    /// open) waits too, and runs from [`Self::opened`]. `callback` and `tag` come back with a
    /// held answer.
    pub fn execute(&mut self, req: Request, callback: Option<String>, tag: u64) -> Outcome {
        match self.defer(Deferred::One(req), callback, tag) {
            Ok(()) => Outcome::Held,
            Err((run, callback)) => self.run(run, callback, tag),
        }
    }

    /// Runs a batch given in execution order (see [`batch_order`]), committing once at the
    /// end; the replies keep their keys. It waits (as a whole) while any index it names
    /// waits for an open.
    pub fn execute_batch(
        &mut self,
        reqs: Vec<(String, Request)>,
        callback: Option<String>,
        tag: u64,
    ) -> Outcome {
        match self.defer(Deferred::Batch(reqs), callback, tag) {
            Ok(()) => Outcome::Held,
            Err((run, callback)) => self.run(run, callback, tag),
        }
    }

    /// Runs a request (every index it names is open, or cannot be: those answer null).
    fn run(&mut self, run: Deferred, callback: Option<String>, tag: u64) -> Outcome {
        match run {
            Deferred::One(req) => {
                let name = req.index.clone();
                let reply = self.apply(req);
                self.commit(std::slice::from_ref(&name), None);
                self.answer(Answer::One(reply), vec![name], callback, tag)
            }
            Deferred::Batch(reqs) => {
                let mut out = Vec::with_capacity(reqs.len());
                let mut names = Vec::with_capacity(reqs.len());
                for (key, req) in reqs {
                    let name = req.index.clone();
                    out.push((key, self.apply(req)));
                    names.push(name);
                }
                self.commit(&names, None);
                self.answer(Answer::Batch(out), names, callback, tag)
            }
        }
    }

    /// Whether `name` can run a request now: open, or known not to open (a failed open
    /// being answered, a broken log): those answer null without waiting.
    fn ready(&self, name: &str) -> bool {
        self.open.contains_key(name)
            || self.open_failed.contains_key(name)
            || self.failed.contains_key(name)
    }

    /// Queues a request that cannot run yet: one naming an index not open, or one with
    /// requests already waiting in its queue (so a later request never overtakes an earlier
    /// one for the same index). Starts the opens it needs. Gives the request back when it
    /// can run now.
    ///
    /// Queued requests go to the back of every queue they name, in one step, so all queues
    /// agree on the arrival order: the earliest waiting request is at the front of each of
    /// its queues, and [`Self::run_waiting`] never deadlocks.
    #[allow(clippy::result_large_err)]
    fn defer(
        &mut self,
        run: Deferred,
        callback: Option<String>,
        tag: u64,
    ) -> Result<(), (Deferred, Option<String>)> {
        let mut names: Vec<String> = Vec::new();
        let named: Vec<&String> = match &run {
            Deferred::One(req) => vec![&req.index],
            Deferred::Batch(reqs) => reqs.iter().map(|(_, r)| &r.index).collect(),
        };
        for name in named {
            // An invalid name or a broken log answers null, in any order: not queued.
            if names.contains(name) || !command::valid_name(name) || self.failed.contains_key(name)
            {
                continue;
            }
            names.push(name.clone());
        }
        let mut wait = false;
        let mut k = 0;
        while k < names.len() {
            let name = &names[k];
            if self.queues.contains_key(name) || self.opening.contains(name) {
                wait = true;
            } else if !self.open.contains_key(name) {
                if self.start_open(name) {
                    wait = true;
                } else {
                    // No open thread: answered null (logged by start_open), not queued.
                    names.remove(k);
                    continue;
                }
            }
            k += 1;
        }
        if !wait {
            return Err((run, callback));
        }
        self.arrivals += 1;
        let id = self.arrivals;
        for name in &names {
            self.queues.entry(name.clone()).or_default().push_back(id);
        }
        self.deferred.insert(
            id,
            Waiting {
                names,
                run,
                tag,
                callback,
            },
        );
        Ok(())
    }

    /// Hands the open of `name` to the open thread; false when the thread is gone.
    fn start_open(&mut self, name: &str) -> bool {
        let job = open::OpenJob {
            core: self.core,
            name: name.to_string(),
            base: format!("{}{name}", self.cfg.path),
            reply: self.opened_tx.clone(),
        };
        match self.opener.send(job) {
            Ok(()) => {
                self.opening.insert(name.to_string());
                true
            }
            Err(_) => {
                // Cannot happen while the process runs (the thread survives a failed or
                // panicking open and lives as long as its channel).
                tracing::error!("index {name}: cannot open: the index open thread is gone");
                false
            }
        }
    }

    /// Requests waiting for an open (not yet run), for tests and figures.
    pub fn waiting_open(&self) -> usize {
        self.deferred.len()
    }

    /// The open thread rang: takes in every finished open (an index now served, or a failure
    /// logged once), then runs the requests that waited and can run now, in arrival order.
    /// Returns their answers that go out now; the others are held behind a sync and come
    /// from [`Self::complete`] (with the tag given to [`Self::execute`] either way).
    pub fn opened(&mut self) -> Vec<Released> {
        while let Ok(r) = self.opened_rx.try_recv() {
            // Not asked for by this shard (cannot happen: one open per index at a time).
            if !self.opening.remove(&r.name) {
                continue;
            }
            match r.result {
                Ok(loaded) => {
                    // Once per index and run; under the core's span, so it shows the shard.
                    tracing::info!(
                        index = r.name.as_str(),
                        ids = loaded.ranking.ids(),
                        ms = loaded.took.as_millis() as u64,
                        waiting = self.queues.get(&r.name).map_or(0, VecDeque::len),
                        "index opened"
                    );
                    self.open.insert(
                        r.name,
                        Index {
                            ranking: loaded.ranking,
                            store: loaded.store,
                            build: None,
                        },
                    );
                }
                Err(why) => {
                    // Spec §2.3: an index that cannot be opened or created answers null.
                    // Logged once per failed open, not once per request.
                    let waiting = self.queues.get(&r.name).map_or(0, VecDeque::len);
                    tracing::error!(
                        "index {}{}: cannot open: {why}; the {waiting} request(s) waiting for \
                         it are answered null, the next request tries again",
                        self.cfg.path,
                        r.name
                    );
                    self.open_failed.insert(r.name, why);
                }
            }
        }
        let out = self.run_waiting();
        let queues = &self.queues;
        self.open_failed.retain(|name, _| queues.contains_key(name));
        out
    }

    /// Runs, in arrival order, every waiting request whose indexes are all ready and which
    /// is first in each of their queues. One pass is enough: running a request can only
    /// unblock later ones, which the pass reaches after it.
    fn run_waiting(&mut self) -> Vec<Released> {
        let mut out = Vec::new();
        let ids: Vec<u64> = self.deferred.keys().copied().collect();
        for id in ids {
            let runnable = self.deferred[&id]
                .names
                .iter()
                .all(|n| self.ready(n) && self.queues.get(n).and_then(|q| q.front()) == Some(&id));
            if !runnable {
                continue;
            }
            let Some(w) = self.deferred.remove(&id) else {
                continue;
            };
            for name in &w.names {
                if let Some(q) = self.queues.get_mut(name) {
                    q.pop_front();
                    if q.is_empty() {
                        self.queues.remove(name);
                    }
                }
            }
            if let Outcome::Now(r) = self.run(w.run, w.callback, w.tag) {
                out.push(r);
            }
        }
        out
    }

    /// An answer that needs no index (a request that did not parse), kept in order with the
    /// others: it waits behind the held ones, if any.
    pub fn pass(&mut self, answer: Answer, callback: Option<String>, tag: u64) -> Outcome {
        self.answer(answer, Vec::new(), callback, tag)
    }

    fn answer(
        &mut self,
        answer: Answer,
        names: Vec<String>,
        callback: Option<String>,
        tag: u64,
    ) -> Outcome {
        if self.sent == self.done {
            return Outcome::Now(Released {
                tag,
                callback,
                answer,
            });
        }
        self.held.push_back(Held {
            after: self.sent,
            names,
            tag,
            callback,
            answer,
        });
        Outcome::Held
    }

    /// Whether answers are waiting for the sync thread.
    pub fn waiting(&self) -> usize {
        self.held.len()
    }

    /// The sync thread reports its jobs up to `c.upto` done: marks the indexes that failed
    /// (refused from now on) and releases, in order, the answers that waited for those jobs;
    /// a reply naming a failed index is null.
    pub fn complete(&mut self, c: Completion) -> Vec<Released> {
        for (name, why) in c.failed {
            if self.failed.contains_key(&name) {
                continue;
            }
            tracing::error!(
                "index {name}: log write or sync failed ({why}); acknowledged data is safe, \
                 but this index refuses every request until the process restarts"
            );
            self.open.remove(&name);
            self.failed.insert(name, why);
        }
        self.done = self.done.max(c.upto);
        let mut out = Vec::new();
        while self.held.front().is_some_and(|h| h.after <= self.done) {
            let Some(mut h) = self.held.pop_front() else {
                break;
            };
            match &mut h.answer {
                Answer::One(reply) => {
                    if h.names.iter().any(|n| self.failed.contains_key(n)) {
                        *reply = Reply::Null;
                    }
                }
                Answer::Batch(replies) => {
                    for ((_, reply), name) in replies.iter_mut().zip(&h.names) {
                        if self.failed.contains_key(name) {
                            *reply = Reply::Null;
                        }
                    }
                }
            }
            out.push(Released {
                tag: h.tag,
                callback: h.callback,
                answer: h.answer,
            });
        }
        out
    }

    /// Applies a request in memory and queues its log records (not yet written).
    fn apply(&mut self, req: Request) -> Reply {
        let max_key = self.cfg.max_key;
        let Request {
            index,
            tier,
            command,
        } = req;
        let Some(ix) = self.open.get_mut(&index) else {
            return Reply::Null;
        };
        let r = &mut ix.ranking;
        let touched = &mut self.touched;
        touched.clear();
        let reply = match command {
            Command::Set(items) => Reply::Set(
                items
                    .into_iter()
                    .map(|mut item| {
                        let result = r.set(&mut item, tier, max_key, touched);
                        (item.id, result)
                    })
                    .collect(),
            ),
            Command::Del(ids) => Reply::Del(
                ids.into_iter()
                    .map(|id| {
                        let ok = r.del(&id, tier, touched);
                        (id, ok)
                    })
                    .collect(),
            ),
            Command::Get(ids) => Reply::Get(
                ids.into_iter()
                    .map(|id| {
                        let g = r.get(&id, tier);
                        (id, g)
                    })
                    .collect(),
            ),
            Command::Range { from, count } => match tier.single() {
                Some(t) => Reply::Entries(r.range(t, &from, count).unwrap_or_default()),
                None => Reply::Null,
            },
            Command::ForEach { start, count } => match tier.single() {
                // Spec §2.3: count 0 still returns one entry (kept for compatibility).
                Some(t) => {
                    Reply::Entries(r.entries_from(t, start.max(1) as u64, count.max(1) as u64))
                }
                None => Reply::Null,
            },
            // Open question 10: no tier counts ids, `/N` counts tier N's entries.
            Command::Total => Reply::Total(match tier {
                TierSel::One(n) => r.tier_len(n as usize - 1) as u64,
                TierSel::Default | TierSel::All => r.ids() as u64,
            }),
        };
        if let Some(build) = &mut ix.build {
            for id in touched.iter() {
                build.touched(id);
            }
        }
        for id in touched.drain(..) {
            match ix.ranking.entry(&id) {
                Some(e) => ix.store.push_put(&id, e),
                None => ix.store.push_remove(&id),
            }
        }
        reply
    }

    /// Hands the named indexes' queued records to the sync thread as one job (nothing to
    /// write, no job), and starts a snapshot build for a log that has grown too long: its
    /// first slice runs now (a small index is done at once), the rest from the slicer.
    fn commit(&mut self, names: &[String], done: Option<mpsc::Sender<()>>) {
        let limit = self.cfg.snapshot_log_bytes;
        let mut work = Vec::new();
        let mut started = false;
        for (n, name) in names.iter().enumerate() {
            if names[..n].contains(name) {
                continue;
            }
            let Some(ix) = self.open.get_mut(name) else {
                continue;
            };
            if let Some(records) = ix.store.take() {
                work.push((ix.store.files().clone(), Work::Append(records)));
            }
            if ix.store.log_len() >= limit && ix.build.is_none() {
                ix.build = Some(snapshot::Build::start(&mut ix.ranking));
                started = true;
            }
        }
        self.send(work, done);
        if started && self.snapshot_step() {
            if let Some(wake) = &self.slicer {
                wake();
            }
        }
    }

    /// Whether a snapshot build is unfinished.
    pub fn snapshotting(&self) -> bool {
        self.open.values().any(|ix| ix.build.is_some())
    }

    /// One slice of the unfinished snapshot builds: encodes at most `snapshot::SLICE_IDS`
    /// ids in all (and about `snapshot::SLICE_BYTES` per build), and hands every image it finishes to the sync thread (after every record
    /// logged so far, so the log is emptied with it). True while a build is unfinished.
    pub fn snapshot_step(&mut self) -> bool {
        let mut budget = snapshot::SLICE_IDS;
        let mut work = Vec::new();
        let mut left = false;
        for (name, ix) in self.open.iter_mut() {
            let Some(build) = &mut ix.build else {
                continue;
            };
            let before = build.encoded();
            let done = budget > 0 && build.step(&mut ix.ranking, budget, snapshot::SLICE_BYTES);
            budget = budget.saturating_sub(build.encoded() - before);
            if !done {
                left = true;
                continue;
            }
            let Some(build) = ix.build.take() else {
                continue;
            };
            let (slices, took) = (build.slices(), build.age());
            let image = build.finish(&mut ix.ranking);
            ix.store.snapshot_sent();
            // Once per snapshot (every `snapshot_log_bytes` of log), under the core's span.
            tracing::info!(
                index = name.as_str(),
                ids = ix.ranking.ids(),
                bytes = image.len(),
                slices,
                ms = took.as_millis() as u64,
                "index snapshot built"
            );
            work.push((ix.store.files().clone(), Work::Snapshot(image)));
        }
        self.send(work, None);
        left
    }

    fn send(&mut self, work: Vec<(Arc<LogFiles>, Work)>, done: Option<mpsc::Sender<()>>) {
        if work.is_empty() && done.is_none() {
            return;
        }
        let names: Vec<String> = work.iter().map(|(f, _)| f.name.clone()).collect();
        let job = Job {
            core: self.core,
            seq: self.sent + 1,
            work,
            done,
        };
        match self.sync.send(job) {
            Ok(()) => self.sent += 1,
            Err(_) => {
                // Cannot happen while the process runs (the thread lives as long as its
                // channel); if it does, nothing of these indexes is durable any more.
                let failed = names
                    .into_iter()
                    .map(|n| (n, "the index sync thread is gone".to_string()))
                    .collect();
                let released = self.complete(Completion {
                    upto: self.done,
                    failed,
                });
                debug_assert!(released.is_empty());
            }
        }
    }

    /// Snapshots every open index (at shutdown, so the next start reads no log), in one go:
    /// a build in progress is finished now. The files are written by the sync thread: the
    /// returned receiver hears when they are.
    pub fn snapshot_all(&mut self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        let mut work = Vec::new();
        for ix in self.open.values_mut() {
            if let Some(records) = ix.store.take() {
                work.push((ix.store.files().clone(), Work::Append(records)));
            }
            let build = match ix.build.take() {
                Some(build) => build,
                None => snapshot::Build::start(&mut ix.ranking),
            };
            let image = build.finish(&mut ix.ranking);
            ix.store.snapshot_sent();
            work.push((ix.store.files().clone(), Work::Snapshot(image)));
        }
        self.send(work, Some(tx));
        rx
    }
}

#[cfg(test)]
mod tests;
