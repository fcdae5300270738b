//! The subscriber table of `=route` (spec services.md §4.2, §4.4): subscribers keyed by return
//! address, the index `subscribe_id → subscribers`, keep-alive expiry and eligibility.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::command::SubChange;
use super::parse::fallbacks;
use crate::service::Requester;

/// Spec §4.2: a subscriber silent this long is dropped with its subscriptions.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Subscription {
    callback: String,
    enabled: bool,
    /// Disabled until then (`{[id] = ms}`).
    enable_at: Option<Instant>,
}

#[derive(Debug)]
struct Subscriber {
    last_seen: Instant,
    paused_until: Option<Instant>,
    subs: BTreeMap<String, Subscription>,
}

#[derive(Debug)]
pub(super) struct Table {
    /// How long a silent subscriber is kept (KEEPALIVE unless configured).
    keepalive: Duration,
    subscribers: BTreeMap<Requester, Subscriber>,
    index: HashMap<String, BTreeSet<Requester>>,
    /// (last_seen + keepalive, who), for expiry in time order.
    stale: BTreeSet<(Instant, Requester)>,
}

impl Default for Table {
    fn default() -> Self {
        Table::new(KEEPALIVE)
    }
}

impl Table {
    pub fn new(keepalive: Duration) -> Table {
        Table {
            keepalive,
            subscribers: BTreeMap::new(),
            index: HashMap::new(),
            stale: BTreeSet::new(),
        }
    }

    /// Refreshes the keep-alive of a known subscriber (every `route:@` does); false if unknown.
    pub fn touch(&mut self, now: Instant, who: &Requester) -> bool {
        let Some(s) = self.subscribers.get_mut(who) else {
            return false;
        };
        self.stale
            .remove(&(s.last_seen + self.keepalive, who.clone()));
        s.last_seen = now;
        self.stale.insert((now + self.keepalive, who.clone()));
        true
    }

    /// An object message: creates the record if needed, then applies each change.
    pub fn apply(&mut self, now: Instant, who: &Requester, changes: Vec<(String, SubChange)>) {
        if !self.touch(now, who) {
            self.subscribers.insert(
                who.clone(),
                Subscriber {
                    last_seen: now,
                    paused_until: None,
                    subs: BTreeMap::new(),
                },
            );
            self.stale.insert((now + self.keepalive, who.clone()));
        }
        let Some(s) = self.subscribers.get_mut(who) else {
            return;
        };
        for (id, change) in changes {
            match change {
                SubChange::Add(callback) => {
                    self.index
                        .entry(id.clone())
                        .or_default()
                        .insert(who.clone());
                    let sub = Subscription {
                        callback,
                        enabled: true,
                        enable_at: None,
                    };
                    s.subs.insert(id, sub);
                }
                SubChange::Remove => {
                    if s.subs.remove(&id).is_some() {
                        unindex(&mut self.index, &id, who);
                    }
                }
                SubChange::Enable(on) => {
                    if let Some(sub) = s.subs.get_mut(&id) {
                        sub.enabled = on;
                        sub.enable_at = None;
                    }
                }
                SubChange::DisableFor(d) => {
                    if let Some(sub) = s.subs.get_mut(&id) {
                        sub.enabled = true;
                        sub.enable_at = Some(now + d);
                    }
                }
            }
        }
    }

    /// `route:@ ms`: the whole subscriber is skipped until now + ms. Spec open question 15:
    /// a pause is only a pause; the keep-alive clock is not disturbed by it.
    pub fn pause(&mut self, now: Instant, who: &Requester, d: Duration) {
        if let Some(s) = self.subscribers.get_mut(who) {
            s.paused_until = Some(now + d);
        }
    }

    /// Drops a subscriber and all its subscriptions.
    pub fn remove(&mut self, who: &Requester) {
        let Some(s) = self.subscribers.remove(who) else {
            return;
        };
        self.stale
            .remove(&(s.last_seen + self.keepalive, who.clone()));
        for id in s.subs.keys() {
            unindex(&mut self.index, id, who);
        }
    }

    /// Drops every subscriber silent for the keep-alive; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some((at, who)) = self.stale.first().cloned() {
            if at > now {
                break;
            }
            self.remove(&who);
            n += 1;
        }
        n
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.stale.first().map(|(t, _)| *t)
    }

    pub fn contains(&self, who: &Requester) -> bool {
        self.subscribers.contains_key(who)
    }

    /// Spec §4.3 matching: the eligible subscriptions of `id`, else of its dotted prefixes
    /// (the first level with anybody eligible). One (subscriber, callback) per subscriber.
    pub fn matching(&self, now: Instant, id: &str) -> Vec<(Requester, String)> {
        std::iter::once(id)
            .chain(fallbacks(id))
            .map(|id| self.eligible(now, id))
            .find(|m| !m.is_empty())
            .unwrap_or_default()
    }

    fn eligible(&self, now: Instant, id: &str) -> Vec<(Requester, String)> {
        let Some(who) = self.index.get(id) else {
            return Vec::new();
        };
        who.iter()
            .filter_map(|w| {
                let s = self.subscribers.get(w)?;
                if s.paused_until.is_some_and(|t| t > now) {
                    return None;
                }
                let sub = s.subs.get(id)?;
                let on = sub.enabled && sub.enable_at.is_none_or(|t| t <= now);
                on.then(|| (w.clone(), sub.callback.clone()))
            })
            .collect()
    }
}

fn unindex(index: &mut HashMap<String, BTreeSet<Requester>>, id: &str, who: &Requester) {
    if let Some(set) = index.get_mut(id) {
        set.remove(who);
        if set.is_empty() {
            index.remove(id);
        }
    }
}
