//! The ticket service as one state machine (spec services.md §3.4, "a single actor per ticket
//! service"): categories, requests, lease deadlines. Every call first runs what is due at
//! `now`, so results do not depend on how often the owner ticks.
//!
//! Unlike the original, which re-polled waiters every ~1 s, a freed slot (release, expiry,
//! resize) goes to the oldest waiter of its category in the same call: FIFO, no latency
//! (spec open question 13 allows it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::category::Category;
use super::command::{Outcome, Refusal, TicketCommand, TicketMessage, TicketOutput};
use super::config::TicketConfig;
use super::parse::LeaseId;
use crate::service::shard::{category_owner, Shard, FIRST_LEASE};
use crate::service::{reply_key, Payload, Requester};

/// Spec §3.1: a grant holds its slot for 1 s unless extended.
pub const LEASE: Duration = Duration::from_millis(1000);

/// A request, waiting (`until` = None) or holding a slot until `until`.
#[derive(Debug)]
struct Request {
    category: String,
    callback: String,
    from: Requester,
    value: Payload,
    until: Option<Instant>,
}

#[derive(Debug)]
pub struct TicketService {
    sign: String,
    capacity: usize,
    /// Requests tracked by every shard of this service: the capacity is service-wide (spec
    /// §3.2), so the shards count against one atomic counter (a counter, not a lock).
    tracked: Arc<AtomicUsize>,
    shard: Shard,
    categories: BTreeMap<String, Category>,
    requests: HashMap<LeaseId, Request>,
    /// Held leases by expiry; ties broken by id, so expiry order is deterministic.
    leases: BTreeSet<(Instant, LeaseId)>,
    /// Categories with a `close_ms`, by closing time.
    closing: BTreeSet<(Instant, String)>,
    /// Ids are sequential per shard and step by the shard count, so an id names its shard
    /// (`shard::lease_owner`); starting high keeps their 16-digit text form from looking
    /// like a short category name.
    next_id: u64,
}

/// The outputs of one call. Cancel notices are gathered per owner and sent as one map each
/// (spec §3.4: notifications are batched per destination).
#[derive(Default)]
struct Out {
    msgs: Vec<TicketOutput>,
    cancels: BTreeMap<Requester, Vec<(LeaseId, String)>>,
}

impl Out {
    fn finish(self) -> Vec<TicketOutput> {
        let mut v: Vec<TicketOutput> = self
            .cancels
            .into_iter()
            .map(|(to, leases)| TicketOutput {
                key: notice_key(&to.sign, "ticket:@"),
                to,
                message: TicketMessage::Cancel { leases },
            })
            .collect();
        v.extend(self.msgs);
        v
    }
}

/// `"<their_sign>:ticket:..."` (spec §3.3): the sign is always prepended, although the rest
/// contains a `:`.
fn notice_key(sign: &str, rest: &str) -> String {
    if sign.is_empty() {
        rest.to_string()
    } else {
        format!("{sign}:{rest}")
    }
}

impl TicketService {
    /// A service with the categories of its configuration (spec §3.2: no expiry), in one
    /// instance.
    pub fn new(sign: impl Into<String>, config: &TicketConfig) -> TicketService {
        Self::sharded(sign, config, Shard::ONE, Arc::new(AtomicUsize::new(0)))
    }

    /// Shard `shard` of a service: it holds the configured categories it owns
    /// (`shard::category_owner`) and issues lease ids of its own; `tracked` is shared by all
    /// shards.
    pub fn sharded(
        sign: impl Into<String>,
        config: &TicketConfig,
        shard: Shard,
        tracked: Arc<AtomicUsize>,
    ) -> TicketService {
        let mut s = TicketService {
            sign: sign.into(),
            capacity: config.capacity,
            tracked,
            shard,
            categories: BTreeMap::new(),
            requests: HashMap::new(),
            leases: BTreeSet::new(),
            closing: BTreeSet::new(),
            next_id: FIRST_LEASE + shard.index as u64,
        };
        for (name, limit) in &config.categories {
            if category_owner(name, shard.count) == shard.index {
                s.categories.insert(name.clone(), Category::new(*limit));
            }
        }
        s
    }

    /// Takes one place of the service-wide capacity, or says it is full. (An associated
    /// function: the caller holds a category borrowed.)
    fn take_place(tracked: &AtomicUsize, capacity: usize) -> bool {
        tracked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_ok()
    }

    /// The service's own sign (`ticket` by default), the prefix of its keys.
    pub fn sign(&self) -> &str {
        &self.sign
    }

    /// For an `@<name>` key: the live request it names, if any. Otherwise the key addresses a
    /// category (create / resize).
    pub fn resolve_at(&self, name: &str) -> Option<LeaseId> {
        LeaseId::from_name(name).filter(|id| self.requests.contains_key(id))
    }

    /// Leases currently held in `category` (0 if there is no such category).
    pub fn held(&self, category: &str) -> usize {
        self.categories.get(category).map_or(0, |c| c.held)
    }

    /// Requests waiting in `category`.
    pub fn waiting(&self, category: &str) -> usize {
        self.categories.get(category).map_or(0, |c| c.queue.len())
    }

    /// Requests waiting and leases held over every category of this shard (for metrics).
    pub fn totals(&self) -> (usize, usize) {
        self.categories
            .values()
            .fold((0, 0), |(w, h), c| (w + c.queue.len(), h + c.held))
    }

    /// Requests this shard tracks over its categories (the capacity counts every shard's:
    /// see `tracked` in the struct).
    pub fn tracked(&self) -> usize {
        self.requests.len()
    }

    /// Whether `category` exists and takes requests.
    pub fn is_open(&self, category: &str) -> bool {
        self.categories.get(category).is_some_and(|c| !c.closed)
    }

    /// One message from `from`.
    pub fn handle(
        &mut self,
        now: Instant,
        from: Requester,
        cmd: TicketCommand,
    ) -> Vec<TicketOutput> {
        let mut out = Out::default();
        self.run_due(now, &mut out);
        match cmd {
            TicketCommand::Configure {
                category,
                limit,
                close_after,
            } => self.configure(now, category, limit, close_after, &mut out),
            TicketCommand::Request {
                category,
                callback,
                feedback,
                request_key,
                value,
            } => {
                let result = self.request(now, &from, &category, callback, value, &mut out);
                if let Some(fb) = feedback {
                    out.msgs.push(TicketOutput {
                        key: reply_key(&from.sign, &fb),
                        to: from,
                        message: TicketMessage::Feedback {
                            request_key,
                            result,
                        },
                    });
                }
            }
            TicketCommand::Batch {
                category,
                feedback,
                request_key,
                entries,
                userdata,
            } => {
                let results: Vec<(String, Outcome)> = entries
                    .into_iter()
                    .map(|(cb, value)| {
                        let r = self.request(now, &from, &category, cb.clone(), value, &mut out);
                        (cb, r)
                    })
                    .collect();
                if let Some(fb) = feedback {
                    out.msgs.push(TicketOutput {
                        key: reply_key(&from.sign, &fb),
                        to: from,
                        message: TicketMessage::BatchFeedback {
                            request_key,
                            results,
                            userdata,
                        },
                    });
                }
            }
            TicketCommand::Broadcast { category, value } => {
                self.broadcast(&category, value, &mut out)
            }
            TicketCommand::Lease { lease, ms } => self.lease(now, lease, ms, &mut out),
        }
        out.finish()
    }

    /// Runs what is due: lease expiry and category closing.
    pub fn tick(&mut self, now: Instant) -> Vec<TicketOutput> {
        let mut out = Out::default();
        self.run_due(now, &mut out);
        out.finish()
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let lease = self.leases.first().map(|(t, _)| *t);
        let close = self.closing.first().map(|(t, _)| *t);
        match (lease, close) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Due events in time order, so a slot freed by an expiry can be taken by a waiter before
    /// a later event looks at the category.
    fn run_due(&mut self, now: Instant, out: &mut Out) {
        loop {
            let lease = self.leases.first().copied().filter(|(t, _)| *t <= now);
            let close = self.closing.first().map(|(t, _)| *t).filter(|t| *t <= now);
            match (lease, close) {
                (Some((t, id)), c) if c.is_none_or(|c| t <= c) => {
                    // Spec §3.4: an expired lease is revoked and its owner told ("cancel").
                    if let Some(req) = self.remove(id) {
                        out.cancels
                            .entry(req.from.clone())
                            .or_default()
                            .push((id, req.callback.clone()));
                        self.slot_back(now, &req.category, out);
                    }
                }
                (_, Some(_)) => {
                    let Some((_, name)) = self.closing.pop_first() else {
                        break;
                    };
                    if let Some(cat) = self.categories.get_mut(&name) {
                        cat.close_at = None;
                    }
                    self.close(&name, out);
                }
                _ => break,
            }
        }
    }

    /// `@<cat>` ← `(limit, close_ms)` (spec §3.3). Growing grants waiters at once; shrinking
    /// leaves granted leases alone. A limit of 0 closes the category.
    fn configure(
        &mut self,
        now: Instant,
        name: String,
        limit: i64,
        close_after: Option<Duration>,
        out: &mut Out,
    ) {
        let cat = self
            .categories
            .entry(name.clone())
            .or_insert_with(|| Category::new(limit));
        cat.limit = limit;
        if let Some(at) = cat.close_at.take() {
            self.closing.remove(&(at, name.clone()));
        }
        cat.close_at = close_after.map(|d| now + d);
        if let Some(at) = cat.close_at {
            self.closing.insert((at, name.clone()));
        }
        if limit == 0 {
            self.close(&name, out);
        } else {
            cat.closed = false;
            self.pump(now, &name, out);
        }
    }

    /// Spec §3.4 "a new request checks immediately": grant, queue (limit > 0) or refuse.
    fn request(
        &mut self,
        now: Instant,
        from: &Requester,
        category: &str,
        callback: String,
        value: Payload,
        out: &mut Out,
    ) -> Outcome {
        let cat = self
            .categories
            .get_mut(category)
            .filter(|c| !c.closed)
            .ok_or(Refusal::UnknownCategory)?;
        // Earlier waiters go first even if a slot is free (FIFO).
        let grant_now = cat.queue.is_empty() && cat.has_free();
        if !grant_now && !cat.queues() {
            return Err(Refusal::CategoryFull);
        }
        if !Self::take_place(&self.tracked, self.capacity) {
            return Err(Refusal::QueueFull);
        }
        let id = LeaseId(self.next_id);
        self.next_id += self.shard.count as u64;
        cat.members.insert(id);
        if grant_now {
            cat.held += 1;
        } else {
            cat.queue.push_back(id);
        }
        self.requests.insert(
            id,
            Request {
                category: category.to_string(),
                callback,
                from: from.clone(),
                value,
                until: None,
            },
        );
        if grant_now {
            self.grant(now, id, out);
        }
        Ok(id)
    }

    /// Starts the 1 s lease of `id` (its slot is already counted) and sends the grant.
    fn grant(&mut self, now: Instant, id: LeaseId, out: &mut Out) {
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        let until = now + LEASE;
        req.until = Some(until);
        self.leases.insert((until, id));
        out.msgs.push(TicketOutput {
            to: req.from.clone(),
            key: reply_key(&req.from.sign, &req.callback),
            message: TicketMessage::Grant {
                lease: id,
                reply_to: format!("{}:{id}", self.sign),
                value: req.value.clone(),
            },
        });
    }

    /// `@<lease>` ← ms (spec §3.3). Unknown ids (already expired, say) are ignored.
    fn lease(&mut self, now: Instant, id: LeaseId, ms: i64, out: &mut Out) {
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        match req.until {
            Some(until) if ms > 0 => {
                self.leases.remove(&(until, id));
                let until = now + Duration::from_millis(ms.unsigned_abs());
                req.until = Some(until);
                self.leases.insert((until, id));
            }
            // Released by its holder: no cancel notice (the holder asked); the slot goes on.
            Some(_) => {
                if let Some(req) = self.remove(id) {
                    self.slot_back(now, &req.category, out);
                }
            }
            // A waiter withdrawing its request.
            None if ms <= 0 => {
                if let Some(req) = self.remove(id) {
                    self.pump(now, &req.category, out);
                }
            }
            None => {}
        }
    }

    /// `=<cat>`: once to every distinct requester waiting on or holding a ticket of `<cat>`.
    fn broadcast(&self, category: &str, value: Payload, out: &mut Out) {
        let Some(cat) = self.categories.get(category) else {
            return;
        };
        let to: BTreeSet<&Requester> = cat
            .members
            .iter()
            .filter_map(|id| self.requests.get(id).map(|r| &r.from))
            .collect();
        let key = format!("ticket:{category}");
        for r in to {
            out.msgs.push(TicketOutput {
                to: r.clone(),
                key: notice_key(&r.sign, &key),
                message: TicketMessage::Broadcast {
                    value: value.clone(),
                },
            });
        }
    }

    /// Stops taking requests; waiters are cancelled (with notice), holders keep their lease
    /// until it ends, then the category goes.
    fn close(&mut self, name: &str, out: &mut Out) {
        let Some(cat) = self.categories.get_mut(name) else {
            return;
        };
        cat.closed = true;
        let waiters: Vec<LeaseId> = cat.queue.drain(..).collect();
        for id in waiters {
            if let Some(req) = self.remove(id) {
                out.cancels
                    .entry(req.from)
                    .or_default()
                    .push((id, req.callback));
            }
        }
        self.drop_if_finished(name);
    }

    /// A held slot came back (release or expiry): hand it to the next waiter at once.
    fn slot_back(&mut self, now: Instant, category: &str, out: &mut Out) {
        if let Some(cat) = self.categories.get_mut(category) {
            cat.held = cat.held.saturating_sub(1);
        }
        self.pump(now, category, out);
    }

    /// Grants free slots to waiters, oldest first.
    fn pump(&mut self, now: Instant, category: &str, out: &mut Out) {
        loop {
            let Some(cat) = self.categories.get_mut(category) else {
                return;
            };
            if !cat.has_free() {
                break;
            }
            let Some(id) = cat.queue.pop_front() else {
                break;
            };
            cat.held += 1;
            self.grant(now, id, out);
        }
        self.drop_if_finished(category);
    }

    fn drop_if_finished(&mut self, name: &str) {
        if self.categories.get(name).is_some_and(Category::finished) {
            if let Some(cat) = self.categories.remove(name) {
                if let Some(at) = cat.close_at {
                    self.closing.remove(&(at, name.to_string()));
                }
            }
        }
    }

    /// Forgets a request: its lease deadline, membership and queue place (not its slot).
    fn remove(&mut self, id: LeaseId) -> Option<Request> {
        let req = self.requests.remove(&id)?;
        self.tracked.fetch_sub(1, Ordering::AcqRel);
        match req.until {
            Some(until) => {
                self.leases.remove(&(until, id));
            }
            None => {
                if let Some(cat) = self.categories.get_mut(&req.category) {
                    cat.queue.retain(|q| *q != id);
                }
            }
        }
        if let Some(cat) = self.categories.get_mut(&req.category) {
            cat.members.remove(&id);
        }
        Some(req)
    }
}
