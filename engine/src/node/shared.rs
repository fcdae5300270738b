//! Process-wide shared state (spec/stage.md §7): the `__` store with its numbered namespaces
//! (namespace 0 also holds the `_SANDBOX` "*NAME" variables), and the sandbox policies that
//! say which global names are shared and which are read-only. Values are kept encoded, so
//! every read is a fresh copy and no Lua value is ever shared between states.
//!
//! One lock guards the store: `__("k", fn)` runs `fn` while holding it, which is what makes
//! the update atomic across cores and pool threads. A thread that is inside such an update
//! and touches the store again gets an error instead of a deadlock.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Shared by every Lua state of the process.
    Shared,
    /// Shared and read-only (defined with `{["*NAME"] = value}`).
    ReadOnly,
}

/// Namespace number -> name -> encoded value.
type Spaces = HashMap<u32, HashMap<String, Arc<[u8]>>>;

#[derive(Default)]
pub struct SharedState {
    spaces: Mutex<Spaces>,
    policies: Mutex<HashMap<String, Policy>>,
    policy_version: AtomicU64,
}

thread_local! {
    static UPDATING: Cell<bool> = const { Cell::new(false) };
}

#[derive(Debug, thiserror::Error)]
#[error("the shared store cannot be used inside a __(name, fn) update function")]
pub struct Reentered;

/// The store, locked; dropping it unlocks.
pub struct Locked<'a> {
    spaces: MutexGuard<'a, Spaces>,
}

impl Locked<'_> {
    pub fn get(&self, space: u32, name: &str) -> Option<Arc<[u8]>> {
        self.spaces.get(&space)?.get(name).cloned()
    }

    pub fn set(&mut self, space: u32, name: &str, value: Option<Vec<u8>>) {
        match value {
            Some(v) => {
                self.spaces
                    .entry(space)
                    .or_default()
                    .insert(name.to_string(), v.into());
            }
            None => {
                if let Some(s) = self.spaces.get_mut(&space) {
                    s.remove(name);
                }
            }
        }
    }
}

impl SharedState {
    pub fn lock(&self) -> Result<Locked<'_>, Reentered> {
        if UPDATING.with(Cell::get) {
            return Err(Reentered);
        }
        let spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Locked { spaces })
    }

    /// Runs `update` with the store locked; any store access from inside it is refused.
    pub fn update<R>(&self, update: impl FnOnce(&mut Locked<'_>) -> R) -> Result<R, Reentered> {
        let mut locked = self.lock()?;
        UPDATING.with(|u| u.set(true));
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                UPDATING.with(|u| u.set(false));
            }
        }
        let _reset = Reset;
        Ok(update(&mut locked))
    }

    pub fn clear(&self, space: u32) -> Result<(), Reentered> {
        self.lock()?.spaces.remove(&space);
        Ok(())
    }

    pub fn names(&self, space: u32) -> Result<Vec<String>, Reentered> {
        let locked = self.lock()?;
        let mut names: Vec<String> = locked
            .spaces
            .get(&space)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        Ok(names)
    }

    pub fn policy(&self, name: &str) -> Option<Policy> {
        self.policies.lock().unwrap().get(name).copied()
    }

    pub fn set_policy(&self, name: &str, policy: Option<Policy>) {
        let mut policies = self.policies.lock().unwrap();
        match policy {
            Some(p) => policies.insert(name.to_string(), p),
            None => policies.remove(name),
        };
        self.policy_version.fetch_add(1, Ordering::Release);
    }

    /// Every policy, for a Lua state to cache until the version changes.
    pub fn policies(&self) -> (u64, Vec<(String, Policy)>) {
        let policies = self.policies.lock().unwrap();
        let version = self.policy_version.load(Ordering::Acquire);
        (
            version,
            policies.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        )
    }

    pub fn policy_version(&self) -> u64 {
        self.policy_version.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_by_namespace_and_refuses_reentry_during_updates() {
        let s = SharedState::default();
        s.lock().unwrap().set(0, "a", Some(vec![1]));
        s.lock().unwrap().set(1, "a", Some(vec![2]));
        assert_eq!(&*s.lock().unwrap().get(0, "a").unwrap(), &[1]);
        assert_eq!(&*s.lock().unwrap().get(1, "a").unwrap(), &[2]);
        let inner = s.update(|_| s.lock().is_err()).unwrap();
        assert!(inner, "a nested access must be refused");
        assert!(
            s.lock().is_ok(),
            "the store is usable again after the update"
        );
        s.clear(1).unwrap();
        assert!(s.lock().unwrap().get(1, "a").is_none());
        assert_eq!(s.names(0).unwrap(), vec!["a"]);
    }

    #[test]
    fn policies_bump_their_version() {
        let s = SharedState::default();
        let v = s.policy_version();
        s.set_policy("X", Some(Policy::ReadOnly));
        assert_eq!(s.policy("X"), Some(Policy::ReadOnly));
        assert!(s.policy_version() > v);
        s.set_policy("X", None);
        assert_eq!(s.policy("X"), None);
    }
}
