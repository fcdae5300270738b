//! Who hosts which stage ids, learned from heartbeats: the registry behind both the other
//! processes of a node (`node::peers`, keyed by process number) and the members of a cluster
//! (`cluster`, keyed by member name). A member is eligible for a stage id while its last
//! heartbeat is younger than `#router`'s expiry (spec stage.md 10.3); `pick` rotates among
//! the eligible ones of a group. Logging is the caller's: each names its members its own way.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Members<K> {
    expiry: Duration,
    inner: Mutex<Inner<K>>,
}

struct Inner<K> {
    members: HashMap<K, Member>,
    /// Round-robin position per stage id.
    cursors: HashMap<String, usize>,
}

struct Member {
    ids: Vec<String>,
    seen: Instant,
    /// Reported as up (so going down is reported once).
    up: bool,
}

impl<K: Clone + Ord + Hash> Members<K> {
    pub fn new(expiry: Duration) -> Members<K> {
        Members {
            expiry,
            inner: Mutex::new(Inner {
                members: HashMap::new(),
                cursors: HashMap::new(),
            }),
        }
    }

    /// A heartbeat from `key` listing the stage ids it hosts. True when `key` was not up
    /// before (new, or back after a silence), for the caller to log.
    pub fn heard(&self, key: K, ids: Vec<String>, now: Instant) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let member = inner.members.entry(key).or_insert_with(|| Member {
            ids: Vec::new(),
            seen: now,
            up: false,
        });
        let came_up = !member.up;
        member.up = true;
        member.seen = now;
        member.ids = ids;
        came_up
    }

    /// The members whose heartbeats stopped since the last sweep, with how long ago they
    /// were last heard (they are no longer eligible anyway; this is for the log).
    pub fn sweep(&self, now: Instant) -> Vec<(K, Duration)> {
        let mut inner = self.inner.lock().unwrap();
        let mut out = Vec::new();
        for (key, member) in inner.members.iter_mut() {
            let silent = now.duration_since(member.seen);
            if member.up && silent >= self.expiry {
                member.up = false;
                out.push((key.clone(), silent));
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn eligible(
        &self,
        inner: &Inner<K>,
        group: &str,
        now: Instant,
        keep: &dyn Fn(&K) -> bool,
    ) -> Vec<K> {
        let mut out: Vec<K> = inner
            .members
            .iter()
            .filter(|(k, m)| {
                now.duration_since(m.seen) < self.expiry
                    && m.ids.iter().any(|id| id == group)
                    && keep(k)
            })
            .map(|(k, _)| k.clone())
            .collect();
        out.sort_unstable();
        out
    }

    /// The members eligible for `group` that `keep` accepts, in key order.
    pub fn hosting(&self, group: &str, now: Instant, keep: &dyn Fn(&K) -> bool) -> Vec<K> {
        let inner = self.inner.lock().unwrap();
        self.eligible(&inner, group, now, keep)
    }

    /// The next member (round-robin) among those eligible for `group` that `keep` accepts,
    /// with `also` (the caller itself, when it hosts the group) as one more candidate.
    pub fn pick(
        &self,
        group: &str,
        also: Option<K>,
        now: Instant,
        keep: &dyn Fn(&K) -> bool,
    ) -> Option<K> {
        let mut inner = self.inner.lock().unwrap();
        let mut candidates = self.eligible(&inner, group, now, keep);
        if let Some(me) = also {
            candidates.push(me);
            candidates.sort_unstable();
        }
        match candidates.len() {
            0 => None,
            1 => candidates.pop(),
            len => {
                let cursor = inner.cursors.entry(group.to_string()).or_insert(0);
                let k = candidates.swap_remove(*cursor % len);
                *cursor = cursor.wrapping_add(1);
                Some(k)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_age_out_and_come_back() {
        let m: Members<String> = Members::new(Duration::from_millis(500));
        let t0 = Instant::now();
        assert!(m.heard("a.1".into(), vec!["game".into()], t0));
        assert!(
            !m.heard("a.1".into(), vec!["game".into()], t0),
            "already up"
        );
        assert!(m.heard("b.1".into(), vec!["game".into(), "lobby".into()], t0));
        let all = |_: &String| true;
        assert_eq!(m.hosting("game", t0, &all), vec!["a.1", "b.1"]);
        assert_eq!(
            m.hosting("game", t0, &|k: &String| !k.starts_with("a.")),
            vec!["b.1"]
        );
        let later = t0 + Duration::from_millis(600);
        m.heard("b.1".into(), vec!["game".into()], later);
        assert_eq!(
            m.sweep(later),
            vec![("a.1".to_string(), Duration::from_millis(600))]
        );
        assert!(m.sweep(later).is_empty(), "down is reported once");
        assert_eq!(m.hosting("game", later, &all), vec!["b.1"]);
        assert_eq!(
            m.pick("lobby", None, later, &all),
            None,
            "b.1 no longer hosts lobby"
        );
        assert!(m.heard("a.1".into(), vec!["game".into()], later), "back up");
        let picks: Vec<String> = (0..4)
            .map(|_| m.pick("game", None, later, &all).unwrap())
            .collect();
        assert_eq!(picks, vec!["a.1", "b.1", "a.1", "b.1"]);
    }
}
