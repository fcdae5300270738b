//! Who hosts which stage ids, learned from heartbeats: the registry behind both the other
//! processes of a node (`node::peers`, keyed by process number) and the members of a cluster
//! (`cluster`, keyed by member name). A member is eligible for a stage id while its last
//! heartbeat is younger than `#router`'s expiry (spec stage.md 10.3); `pick` rotates among
//! the eligible ones of a group. Logging is the caller's: each names its members its own way.
//!
//! A pick runs for every message that may leave the process, so it reads only the members of
//! its group: an index group -> members (kept in key order, updated when a heartbeat's ids
//! change, which is rare: a heartbeat usually repeats the last one) replaces a scan of every
//! member's id list, and the round-robin choice walks that list twice (count, then take the
//! n-th) instead of collecting and sorting the candidates.

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
    /// The members whose last heartbeat listed each stage id, in key order (down members
    /// included: eligibility is decided by `seen` at the time of a pick, as for `members`).
    by_group: HashMap<String, Vec<K>>,
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
                by_group: HashMap::new(),
                cursors: HashMap::new(),
            }),
        }
    }

    /// A heartbeat from `key` listing the stage ids it hosts. True when `key` was not up
    /// before (new, or back after a silence), for the caller to log.
    pub fn heard(&self, key: K, ids: Vec<String>, now: Instant) -> bool {
        self.update(key, now, |old| (old != ids).then_some(ids))
    }

    /// A heartbeat from `key` about one stage id it hosts (the cluster's heartbeats are per
    /// stage id): `id` joins the ids `key` is known to host, which are forgotten first when
    /// `reset` (a new run of the member, which may host others). True when `key` was not up
    /// before.
    pub fn heard_id(&self, key: K, id: &str, reset: bool, now: Instant) -> bool {
        self.update(key, now, |old| {
            if reset && (old.len() != 1 || old[0] != id) {
                Some(vec![id.to_string()])
            } else if !old.iter().any(|i| i == id) {
                let mut ids = old.to_vec();
                ids.push(id.to_string());
                Some(ids)
            } else {
                None
            }
        })
    }

    /// Marks `key` heard now; `ids` says its new id list from the old one (`None`: unchanged).
    fn update(
        &self,
        key: K,
        now: Instant,
        ids: impl FnOnce(&[String]) -> Option<Vec<String>>,
    ) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let Inner {
            members, by_group, ..
        } = &mut *inner;
        let member = members.entry(key.clone()).or_insert_with(|| Member {
            ids: Vec::new(),
            seen: now,
            up: false,
        });
        let came_up = !member.up;
        member.up = true;
        member.seen = now;
        if let Some(ids) = ids(&member.ids) {
            for old in member.ids.iter().filter(|id| !ids.contains(id)) {
                if let Some(list) = by_group.get_mut(old) {
                    if let Ok(at) = list.binary_search(&key) {
                        list.remove(at);
                    }
                    if list.is_empty() {
                        by_group.remove(old);
                    }
                }
            }
            for new in ids.iter().filter(|id| !member.ids.contains(id)) {
                let list = by_group.entry(new.clone()).or_default();
                if let Err(at) = list.binary_search(&key) {
                    list.insert(at, key.clone());
                }
            }
            member.ids = ids;
        }
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

    /// The members listed for `group` whose heartbeat is fresh and that `keep` accepts, in
    /// key order.
    pub fn hosting(&self, group: &str, now: Instant, keep: &dyn Fn(&K) -> bool) -> Vec<K> {
        let inner = self.inner.lock().unwrap();
        let listed = inner.by_group.get(group).map_or(&[][..], |list| &list[..]);
        listed
            .iter()
            .filter(|k| {
                inner
                    .members
                    .get(*k)
                    .is_some_and(|m| now.duration_since(m.seen) < self.expiry)
                    && keep(k)
            })
            .cloned()
            .collect()
    }

    /// The next member (round-robin) among those eligible for `group` that `keep` accepts,
    /// with `also` (the caller itself, when it hosts the group) as one more candidate.
    ///
    /// The candidates are the group's list in key order with `also` in its place; the
    /// group's cursor is a position in that list. A pick takes the first eligible candidate
    /// from the cursor on and moves the cursor past it, so while the members stay the same,
    /// E picks in a row take each of the E eligible candidates once, and a pick costs one
    /// liveness check when every listed member is live (whatever the number of members).
    pub fn pick(
        &self,
        group: &str,
        also: Option<K>,
        now: Instant,
        keep: &dyn Fn(&K) -> bool,
    ) -> Option<K> {
        let mut inner = self.inner.lock().unwrap();
        let Inner {
            members,
            by_group,
            cursors,
        } = &mut *inner;
        let listed = by_group.get(group).map_or(&[][..], |list| &list[..]);
        let slots = listed.len() + usize::from(also.is_some());
        if slots == 0 {
            return None;
        }
        let also_at = also.as_ref().map(|me| listed.partition_point(|k| k < me));
        let start = cursors.get(group).copied().unwrap_or(0);
        for step in 0..slots {
            let slot = (start + step) % slots;
            let chosen = match also_at {
                Some(at) if at == slot => also.clone(),
                _ => {
                    let index = match also_at {
                        Some(at) if slot > at => slot - 1,
                        _ => slot,
                    };
                    let key = &listed[index];
                    let fresh = members
                        .get(key)
                        .is_some_and(|m| now.duration_since(m.seen) < self.expiry);
                    (fresh && keep(key)).then(|| key.clone())
                }
            };
            // With one slot there is no choice to rotate (the cursor stays where it is).
            if chosen.is_some() && slots > 1 {
                match cursors.get_mut(group) {
                    Some(cursor) => *cursor = slot + 1,
                    None => {
                        cursors.insert(group.to_string(), slot + 1);
                    }
                }
            }
            if chosen.is_some() {
                return chosen;
            }
        }
        None
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

    #[test]
    fn ids_heard_one_at_a_time_add_up_until_a_new_run() {
        let m: Members<String> = Members::new(Duration::from_millis(500));
        let t0 = Instant::now();
        let all = |_: &String| true;
        assert!(m.heard_id("b.1".into(), "game", true, t0));
        assert!(!m.heard_id("b.1".into(), "lobby", false, t0), "already up");
        assert!(!m.heard_id("b.1".into(), "game", false, t0));
        assert_eq!(m.hosting("game", t0, &all), vec!["b.1"]);
        assert_eq!(m.hosting("lobby", t0, &all), vec!["b.1"]);
        // A new run of b.1 that hosts only `zone`: what the old run hosted is forgotten.
        m.heard_id("b.1".into(), "zone", true, t0);
        assert_eq!(m.hosting("zone", t0, &all), vec!["b.1"]);
        assert!(m.hosting("game", t0, &all).is_empty());
        assert!(m.hosting("lobby", t0, &all).is_empty());
        // Silent past the expiry: no longer eligible, reported once, back when heard again.
        let later = t0 + Duration::from_millis(600);
        assert_eq!(m.pick("zone", None, later, &all), None);
        assert_eq!(m.sweep(later).len(), 1);
        assert!(m.heard_id("b.1".into(), "zone", false, later));
        assert_eq!(m.pick("zone", None, later, &all).as_deref(), Some("b.1"));
    }

    proptest::proptest! {
        /// Random heartbeats (members joining, changing and dropping ids, going silent) and
        /// picks with and without the caller as a candidate, checked against a full scan of
        /// the heartbeats: `hosting` lists exactly the eligible members; a pick is `None`
        /// exactly when nobody is eligible, is always an eligible candidate, and E picks in a
        /// row (E eligible candidates, nothing heard meanwhile) take each one once.
        #[test]
        fn the_group_index_agrees_with_a_full_scan(
            steps in proptest::collection::vec(
                (0u8..8, proptest::collection::vec(0usize..4, 0..4), 0u64..400, 0u8..3,
                 proptest::option::of(0u8..8)),
                1..150,
            )
        ) {
            const GROUPS: [&str; 4] = ["game", "lobby", "chat", "zone"];
            let expiry = Duration::from_millis(500);
            let indexed: Members<u8> = Members::new(expiry);
            let mut heard: std::collections::BTreeMap<u8, (Vec<String>, Instant)> =
                Default::default();
            let mut now = Instant::now();
            let odd = |k: &u8| k % 2 == 1;
            let any = |_: &u8| true;
            for (key, groups, advance_ms, action, also) in steps {
                now += Duration::from_millis(advance_ms);
                let ids: Vec<String> = groups.iter().map(|g| GROUPS[*g].to_string()).collect();
                if action == 0 {
                    indexed.heard(key, ids.clone(), now);
                    heard.insert(key, (ids, now));
                }
                let keep: &dyn Fn(&u8) -> bool = if action == 2 { &odd } else { &any };
                for group in GROUPS {
                    let hosts: Vec<u8> = heard
                        .iter()
                        .filter(|(k, (ids, seen))| {
                            now.duration_since(*seen) < expiry
                                && ids.iter().any(|i| i == group)
                                && keep(k)
                        })
                        .map(|(k, _)| *k)
                        .collect();
                    proptest::prop_assert_eq!(indexed.hosting(group, now, keep), hosts.clone());
                    let mut eligible = hosts;
                    eligible.extend(also);
                    eligible.sort_unstable();
                    let mut picks: Vec<u8> = (0..eligible.len())
                        .map(|_| indexed.pick(group, also, now, keep))
                        .collect::<Option<_>>()
                        .expect("a pick while someone is eligible");
                    picks.sort_unstable();
                    proptest::prop_assert_eq!(picks, eligible.clone());
                    if eligible.is_empty() {
                        proptest::prop_assert_eq!(indexed.pick(group, also, now, keep), None);
                    }
                }
            }
        }
    }
}
