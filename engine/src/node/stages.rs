//! The stages of this process (Lua stages, then service stages such as index.so) and the Lua
//! stages' message handlers (`stage.waitfor`). A stage's
//! handler table is process-wide, as in the original (spec/stage.md §3.8): any core may
//! register, query or synchronously call (`":msg"`) a handler, while routed messages run on
//! the stage's main core. Handlers are kept as bytecode plus BSON-encoded stored arguments;
//! each core compiles a handler once per registration (the `serial` tells it when to reload).
//!
//! The lock is taken once per delivered message and per registration; neither is on the
//! packet path.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::plan::StageKind;

/// A registered handler: its code and stored arguments, both immutable once registered.
#[derive(Clone)]
pub struct Handler {
    /// Changes on every (re-)registration, so cores know when their compiled copy is stale.
    pub serial: u64,
    pub code: Arc<[u8]>,
    pub args: Option<Arc<[u8]>>,
}

/// One stage hosted by this process.
pub struct LocalStage {
    pub index: usize,
    pub kind: StageKind,
    /// The stage id other stages address (`"stage"` for `lua.so+stage`); empty if unnamed.
    pub id: String,
    pub entry: String,
    pub main_core: usize,
    handlers: Mutex<HashMap<String, Handler>>,
}

impl LocalStage {
    /// The core that handles message `id` (with or without the `"<id>:"` prefix) for this
    /// stage on a node of `cores` cores, sent from core `here`: the owning shard of a sharded
    /// service, `here` for curl.so, otherwise the main core. `None` for an index.so batch,
    /// whose keys each name their own index.
    pub fn core_for(&self, id: &str, cores: usize, here: Option<usize>) -> Option<usize> {
        use crate::service::shard;
        let key = id
            .strip_prefix(self.id.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
            .unwrap_or(id);
        match self.kind {
            StageKind::Index => shard::index_owner(key, cores),
            StageKind::Ticket => Some(shard::ticket_owner(key, cores)),
            StageKind::Lua | StageKind::Route | StageKind::Lotus => Some(self.main_core),
            // Any core serves a request; the router keeps it on the sender's core.
            StageKind::Http => Some(here.unwrap_or(self.main_core)),
        }
    }
}

/// All Lua stages of this process, plus the process-wide `stage.once` record.
pub struct StageDirectory {
    stages: Vec<LocalStage>,
    serial: AtomicU64,
    once: Mutex<HashSet<String>>,
}

impl StageDirectory {
    pub fn new(
        stages: impl IntoIterator<Item = (String, String, usize, StageKind)>,
    ) -> StageDirectory {
        StageDirectory {
            stages: stages
                .into_iter()
                .enumerate()
                .map(|(index, (id, entry, main_core, kind))| LocalStage {
                    index,
                    kind,
                    id,
                    entry,
                    main_core,
                    handlers: Mutex::new(HashMap::new()),
                })
                .collect(),
            serial: AtomicU64::new(1),
            once: Mutex::new(HashSet::new()),
        }
    }

    pub fn get(&self, index: usize) -> Option<&LocalStage> {
        self.stages.get(index)
    }

    /// The stages of this process serving stage id `id`.
    pub fn by_id<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a LocalStage> + 'a {
        self.stages
            .iter()
            .filter(move |s| !s.id.is_empty() && s.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &LocalStage> {
        self.stages.iter()
    }

    /// The stage ids this process hosts, sorted, once each: what its heartbeats announce.
    pub fn hosted_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .stages
            .iter()
            .filter(|s| !s.id.is_empty())
            .map(|s| s.id.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Ordering::Relaxed)
    }

    /// `stage.once(key, f)`: true the first time `key` is seen in this process.
    pub fn once(&self, key: &str) -> bool {
        self.once.lock().unwrap().insert(key.to_string())
    }

    /// `stage.once(key, nil)`: forget `key`.
    pub fn forget_once(&self, key: &str) {
        self.once.lock().unwrap().remove(key);
    }

    pub fn register(&self, stage: &LocalStage, id: &str, code: Vec<u8>, args: Option<Vec<u8>>) {
        let handler = Handler {
            serial: self.next_serial(),
            code: code.into(),
            args: args.map(Into::into),
        };
        stage
            .handlers
            .lock()
            .unwrap()
            .insert(id.to_string(), handler);
    }
}

impl LocalStage {
    /// Replaces only the stored arguments of an existing handler; false if there is none.
    pub fn set_args(&self, id: &str, args: Option<Vec<u8>>) -> bool {
        match self.handlers.lock().unwrap().get_mut(id) {
            Some(handler) => {
                handler.args = args.map(Into::into);
                true
            }
            None => false,
        }
    }

    pub fn remove(&self, id: &str) -> bool {
        self.handlers.lock().unwrap().remove(id).is_some()
    }

    pub fn get(&self, id: &str) -> Option<Handler> {
        self.handlers.lock().unwrap().get(id).cloned()
    }

    /// Every handler id with its stored arguments (for `stage.waitfor()`).
    pub fn list(&self) -> Vec<(String, Option<Arc<[u8]>>)> {
        let handlers = self.handlers.lock().unwrap();
        handlers
            .iter()
            .map(|(k, h)| (k.clone(), h.args.clone()))
            .collect()
    }

    /// The handler for message id `msg` (its `=ret` part already removed): the exact id, then
    /// ever shorter prefixes ending just after `.`, `:` or `?`, then the catch-all `"@"`.
    pub fn find(&self, msg: &str) -> Option<(String, Handler)> {
        let handlers = self.handlers.lock().unwrap();
        if let Some(h) = handlers.get(msg) {
            return Some((msg.to_string(), h.clone()));
        }
        for (cut, _) in msg
            .char_indices()
            .rev()
            .filter(|(_, c)| matches!(c, '.' | ':' | '?'))
        {
            let prefix = &msg[..=cut];
            if prefix.len() < msg.len() {
                if let Some(h) = handlers.get(prefix) {
                    return Some((prefix.to_string(), h.clone()));
                }
            }
        }
        handlers.get("@").map(|h| ("@".to_string(), h.clone()))
    }

    /// A random handler id of `len` (at least 4) characters not used by this stage.
    pub fn fresh_id(&self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let handlers = self.handlers.lock().unwrap();
        let mut seed = random_seed();
        loop {
            let id: String = (0..len.max(4))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ALPHABET[(seed % ALPHABET.len() as u64) as usize] as char
                })
                .collect();
            if !handlers.contains_key(&id) {
                return id;
            }
        }
    }
}

/// Seed for handler ids: unique enough per call (time, a counter, the thread).
fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    (nanos ^ n).rotate_left(17) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> StageDirectory {
        StageDirectory::new([(
            "game".to_string(),
            "lua.so+game".to_string(),
            0,
            StageKind::Lua,
        )])
    }

    #[test]
    fn matches_exact_then_prefixes_then_catch_all() {
        let d = dir();
        let s = d.get(0).unwrap();
        for id in ["group.msg.callback", "group.", "@", "a?"] {
            d.register(s, id, id.as_bytes().to_vec(), None);
        }
        assert_eq!(
            s.find("group.msg.callback").unwrap().0,
            "group.msg.callback"
        );
        assert_eq!(s.find("group.msg.other").unwrap().0, "group.");
        assert_eq!(s.find("a?x=1").unwrap().0, "a?");
        assert_eq!(s.find("zzz").unwrap().0, "@");
        assert!(s.remove("@"));
        assert!(s.find("zzz").is_none());
    }

    #[test]
    fn registration_changes_the_serial_and_args_can_be_replaced() {
        let d = dir();
        let s = d.get(0).unwrap();
        d.register(s, "x", vec![1], None);
        let first = s.get("x").unwrap().serial;
        d.register(s, "x", vec![2], Some(vec![9]));
        assert!(s.get("x").unwrap().serial > first);
        assert!(s.set_args("x", None));
        assert!(s.get("x").unwrap().args.is_none());
        assert!(!s.set_args("nope", None));
    }

    #[test]
    fn fresh_ids_are_unique_and_sized() {
        let d = dir();
        let s = d.get(0).unwrap();
        let a = s.fresh_id(16);
        assert_eq!(a.len(), 16);
        assert_eq!(s.fresh_id(2).len(), 4);
        d.register(s, &a, vec![], None);
        assert_ne!(s.fresh_id(16), a);
    }

    #[test]
    fn once_records_keys_per_process() {
        let d = dir();
        assert!(d.once("#1"));
        assert!(!d.once("#1"));
        d.forget_once("#1");
        assert!(d.once("#1"));
    }
}
