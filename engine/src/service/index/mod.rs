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
//! snapshot, durability rule), `command` (request/reply model and spec parsing).

pub mod command;
pub mod order;
pub mod ranking;
pub mod record;
pub mod store;
pub mod tree;

use std::collections::HashMap;
use std::sync::Arc;

pub use command::{
    batch_order, parse_batch_key, parse_spec, Command, GetResult, Kind, RangeFrom, RankedEntry,
    Reply, Request, SetItem, SetResult, SpecError, TierSel, TIERS,
};
pub use order::Score;
pub use store::SyncPolicy;

use ranking::Ranking;
use store::Store;

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

pub struct IndexService {
    cfg: IndexConfig,
    open: HashMap<String, Index>,
}

impl IndexService {
    pub fn new(cfg: IndexConfig) -> Self {
        IndexService {
            cfg,
            open: HashMap::new(),
        }
    }

    fn index(&mut self, name: &str) -> Option<&mut Index> {
        if !self.open.contains_key(name) {
            if !command::valid_name(name) {
                return None;
            }
            let mut ranking = Ranking::new();
            let base = format!("{}{name}", self.cfg.path);
            match Store::open(&base, self.cfg.sync, |m| ranking.apply(m)) {
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

    /// Runs one request and makes its mutations durable (per the sync policy) before
    /// returning the reply.
    pub fn execute(&mut self, req: Request) -> Reply {
        let name = req.index.clone();
        let reply = self.apply(req);
        if self.commit(&name) {
            reply
        } else {
            Reply::Null
        }
    }

    /// Runs a batch given in execution order (see [`batch_order`]), committing once at the
    /// end; the replies keep their keys.
    pub fn execute_batch(&mut self, reqs: Vec<(String, Request)>) -> Vec<(String, Reply)> {
        let mut out = Vec::with_capacity(reqs.len());
        let mut names = Vec::new();
        for (key, req) in reqs {
            let name = req.index.clone();
            out.push((key, self.apply(req)));
            names.push(name);
        }
        let mut failed: Vec<String> = Vec::new();
        let mut done: Vec<&String> = Vec::new();
        for name in &names {
            if !done.contains(&name) {
                done.push(name);
                if !self.commit(name) {
                    failed.push(name.clone());
                }
            }
        }
        for ((_, reply), name) in out.iter_mut().zip(&names) {
            if failed.contains(name) {
                *reply = Reply::Null;
            }
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

    /// Writes (and syncs, per policy) the index's queued records; snapshots a long log. On a
    /// write error the index is closed, so the next request reloads what is really on disk.
    fn commit(&mut self, name: &str) -> bool {
        let limit = self.cfg.snapshot_log_bytes;
        let Some(ix) = self.open.get_mut(name) else {
            return true;
        };
        let mut r = ix.store.commit();
        if r.is_ok() && ix.store.log_len() >= limit {
            r = Self::snapshot_index(ix);
        }
        match r {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    "index {}: write failed, closing it: {e}",
                    ix.store.log_path().display()
                );
                self.open.remove(name);
                false
            }
        }
    }

    fn snapshot_index(ix: &mut Index) -> std::io::Result<()> {
        let r = &ix.ranking;
        ix.store.snapshot(r.next_seq(), r.ids(), r.entries())
    }

    /// Idle tick: interval syncs and snapshots of logs past the limit.
    pub fn idle(&mut self) {
        let limit = self.cfg.snapshot_log_bytes;
        let mut broken = Vec::new();
        for (name, ix) in self.open.iter_mut() {
            let mut r = ix.store.idle();
            if r.is_ok() && ix.store.log_len() >= limit {
                r = Self::snapshot_index(ix);
            }
            if let Err(e) = r {
                tracing::error!("index {name}: idle sync failed, closing it: {e}");
                broken.push(name.clone());
            }
        }
        for name in broken {
            self.open.remove(&name);
        }
    }

    /// Snapshots every open index now (e.g. at shutdown, so the next start reads no log).
    pub fn snapshot_all(&mut self) -> std::io::Result<()> {
        for ix in self.open.values_mut() {
            ix.store.commit()?;
            Self::snapshot_index(ix)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
