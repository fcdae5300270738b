//! `odbc.cache` / `odbc.purge` (spec services.md §1.2): one process-wide cache of values by
//! name, shared by every Lua state of the process. Values are kept serialized (the engine's
//! BSON of the Lua value), so every read hands out a fresh copy and nobody mutates a shared
//! table (spec open question 9's reading). While a loader runs, its name holds a placeholder:
//! another caller that finds it runs its own loader and does not store the result (no
//! single-flight waiting, as in the original). The lock is never held while a loader runs.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

enum Entry {
    Loading,
    Value(Vec<u8>),
}

/// What a name holds now.
#[derive(Debug, PartialEq, Eq)]
pub enum Cached {
    Absent,
    Loading,
    Value(Vec<u8>),
}

static CACHE: LazyLock<Mutex<HashMap<String, Entry>>> = LazyLock::new(Default::default);

fn cache() -> MutexGuard<'static, HashMap<String, Entry>> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn get(name: &str) -> Cached {
    match cache().get(name) {
        None => Cached::Absent,
        Some(Entry::Loading) => Cached::Loading,
        Some(Entry::Value(v)) => Cached::Value(v.clone()),
    }
}

/// Puts the "loading" placeholder if the name is absent; false when something is there.
pub fn begin_load(name: &str) -> bool {
    let mut c = cache();
    if c.contains_key(name) {
        return false;
    }
    c.insert(name.to_string(), Entry::Loading);
    true
}

/// Ends a load: stores the value, or (`None`: the loader failed or gave nil) removes the
/// placeholder.
pub fn finish_load(name: &str, value: Option<Vec<u8>>) {
    let mut c = cache();
    match value {
        Some(v) => {
            c.insert(name.to_string(), Entry::Value(v));
        }
        None => {
            if matches!(c.get(name), Some(Entry::Loading)) {
                c.remove(name);
            }
        }
    }
}

/// Removes the given names (all of them when `None`, the spec's reading of a bare
/// `odbc.purge()`); returns the names actually removed, sorted.
pub fn purge(names: Option<&[String]>) -> Vec<String> {
    let mut c = cache();
    let mut removed: Vec<String> = match names {
        Some(names) => names
            .iter()
            .filter(|n| c.remove(n.as_str()).is_some())
            .cloned()
            .collect(),
        None => c.drain().map(|(k, _)| k).collect(),
    };
    removed.sort();
    removed.dedup();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_store_read_and_purge() {
        let n = "cache-test-a";
        assert_eq!(get(n), Cached::Absent);
        assert!(begin_load(n));
        assert!(!begin_load(n), "a second loader finds the placeholder");
        assert_eq!(get(n), Cached::Loading);
        finish_load(n, Some(b"v".to_vec()));
        assert_eq!(get(n), Cached::Value(b"v".to_vec()));
        assert_eq!(
            purge(Some(&[n.to_string(), "cache-test-none".into()])),
            vec![n]
        );
        assert_eq!(get(n), Cached::Absent);
    }

    #[test]
    fn a_failed_load_leaves_nothing_behind() {
        let n = "cache-test-b";
        assert!(begin_load(n));
        finish_load(n, None);
        assert_eq!(get(n), Cached::Absent);
    }
}
