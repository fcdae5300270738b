//! `index.so`: persistent rankings (spec/services.md §2). Named indexes, opened lazily under a
//! path prefix; each holds ids with up to 4 tiers of scores and a user value, ranked per tier
//! with rank-of-id and id-at-rank in O(log n).
//!
//! [`IndexService`] is a plain state machine: the owner core hands it [`Request`]s (decoded
//! from `index:` messages) and sends back the [`Reply`]s. It is not thread-safe by design —
//! one owner serializes every request, which is the "one actor per index" reading of spec
//! §2.4 / open question 11 (stricter than the original's unordered thread pool).
//!
//! Files: `order` (score order), `tree` (order-statistic treap), `ranking` (one index in
//! memory and the command semantics), `record` (persisted mutation bytes), `store` (log,
//! snapshot, durability rule), `sync` (the thread that writes and syncs them), `command`
//! (request/reply model and spec parsing).
//!
//! The service never touches a file after an index is opened: its mutations go to the
//! stage's sync thread as jobs, and a reply that must not go out before its log is on disk
//! is held here until the thread's [`Completion`] says so ([`IndexService::complete`]).

pub mod command;
pub mod order;
pub mod ranking;
pub mod record;
pub mod store;
pub mod sync;
pub mod tree;

use std::collections::{HashMap, VecDeque};
use std::sync::{mpsc, Arc};

pub use command::{
    batch_order, parse_batch_key, parse_spec, Command, GetResult, Kind, RangeFrom, RankedEntry,
    Reply, Request, SetItem, SetResult, SpecError, TierSel, TIERS,
};
pub use order::Score;
pub use store::SyncPolicy;

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
}

impl IndexService {
    /// A shard on core `core`, writing through `sync` (the stage's sync thread).
    pub fn new(cfg: IndexConfig, core: usize, sync: SyncThread) -> Self {
        IndexService {
            cfg,
            open: HashMap::new(),
            core,
            sync,
            sent: 0,
            done: 0,
            held: VecDeque::new(),
            failed: HashMap::new(),
        }
    }

    fn index(&mut self, name: &str) -> Option<&mut Index> {
        if !self.open.contains_key(name) {
            if !command::valid_name(name) || self.failed.contains_key(name) {
                return None;
            }
            let mut ranking = Ranking::new();
            let base = format!("{}{name}", self.cfg.path);
            match Store::open(&base, name, |m| ranking.apply(m)) {
                Ok(opened) => {
                    ranking.bump_seq(opened.next_seq);
                    // Once per index and run; under the core's span, so it shows the shard.
                    tracing::info!(index = name, ids = ranking.ids(), "index opened");
                    self.open.insert(
                        name.to_string(),
                        Index {
                            ranking,
                            store: opened.store,
                        },
                    );
                }
                Err(e) => {
                    // Spec §2.3: an index that cannot be opened or created answers null.
                    tracing::error!("index {base}: cannot open: {e}");
                    return None;
                }
            }
        }
        self.open.get_mut(name)
    }

    /// Runs one request in memory and hands its mutations to the sync thread. The answer
    /// comes now when nothing is waiting for a sync, else it is held (see [`Self::complete`]):
    /// a mutation's reply waits for its own sync, and every later reply waits behind it.
    /// `callback` and `tag` come back with a held answer.
    pub fn execute(&mut self, req: Request, callback: Option<String>, tag: u64) -> Outcome {
        let name = req.index.clone();
        let reply = self.apply(req);
        self.commit(std::slice::from_ref(&name), None);
        self.answer(Answer::One(reply), vec![name], callback, tag)
    }

    /// Runs a batch given in execution order (see [`batch_order`]), committing once at the
    /// end; the replies keep their keys.
    pub fn execute_batch(
        &mut self,
        reqs: Vec<(String, Request)>,
        callback: Option<String>,
        tag: u64,
    ) -> Outcome {
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
        let Some(ix) = self.index(&index) else {
            return Reply::Null;
        };
        let r = &mut ix.ranking;
        let mut touched: Vec<Arc<str>> = Vec::new();
        let reply = match command {
            Command::Set(items) => Reply::Set(
                items
                    .into_iter()
                    .map(|item| {
                        let id = item.id.clone();
                        (id, r.set(item, tier, max_key, &mut touched))
                    })
                    .collect(),
            ),
            Command::Del(ids) => Reply::Del(
                ids.into_iter()
                    .map(|id| {
                        let ok = r.del(&id, tier, &mut touched);
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
        for id in touched {
            match ix.ranking.entry(&id) {
                Some(e) => ix.store.push_put(&id, e),
                None => ix.store.push_remove(&id),
            }
        }
        reply
    }

    /// Hands the named indexes' queued records (and a snapshot of a long log) to the sync
    /// thread as one job. Nothing to write, no job.
    fn commit(&mut self, names: &[String], done: Option<mpsc::Sender<()>>) {
        let limit = self.cfg.snapshot_log_bytes;
        let mut work = Vec::new();
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
            if ix.store.log_len() >= limit {
                let image = Self::snapshot_image(ix);
                work.push((ix.store.files().clone(), Work::Snapshot(image)));
            }
        }
        self.send(work, done);
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

    fn snapshot_image(ix: &mut Index) -> Vec<u8> {
        let r = &ix.ranking;
        ix.store.snapshot_image(r.next_seq(), r.ids(), r.entries())
    }

    /// Snapshots every open index (at shutdown, so the next start reads no log). The files
    /// are written by the sync thread: the returned receiver hears when they are.
    pub fn snapshot_all(&mut self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        let mut work = Vec::new();
        for ix in self.open.values_mut() {
            if let Some(records) = ix.store.take() {
                work.push((ix.store.files().clone(), Work::Append(records)));
            }
            let image = Self::snapshot_image(ix);
            work.push((ix.store.files().clone(), Work::Snapshot(image)));
        }
        self.send(work, Some(tx));
        rx
    }
}

#[cfg(test)]
mod tests;
