//! The route service as one state machine (spec services.md §4): the subscriber table and the
//! pending offers. Every call first runs what is due at `now` (offers past 300 ms fail, silent
//! subscribers go), so results do not depend on how often the owner ticks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::command::{RouteCommand, RouteMessage, RouteOutput};
use super::config::RouteConfig;
use super::parse::{parse_claim, with_ret, OfferId, Target, Targets};
use super::subscribers::Table;
use crate::service::{reply_key, Payload, Requester};

/// Spec §4.3: an offer nobody claimed within this long fails.
pub const OFFER_TIMEOUT: Duration = Duration::from_millis(300);

/// A normal (non-broadcast) publication waiting for its first taker.
#[derive(Debug)]
struct Offer {
    deadline: Instant,
    publisher: Requester,
    key: String,
    value: Payload,
    fail: Option<String>,
    ret: Option<String>,
    /// Who was asked, with the callback of its matching subscription.
    candidates: BTreeMap<Requester, String>,
}

#[derive(Debug)]
pub struct RouteService {
    sign: String,
    table: Table,
    /// By id = creation order = deadline order (the timeout is fixed).
    offers: BTreeMap<OfferId, Offer>,
    next_offer: u64,
}

impl RouteService {
    pub fn new(sign: impl Into<String>) -> RouteService {
        RouteService::with_config(sign, &RouteConfig::default())
    }

    /// A service with the keep-alive of its `=route` block.
    pub fn with_config(sign: impl Into<String>, config: &RouteConfig) -> RouteService {
        RouteService {
            sign: sign.into(),
            table: Table::new(config.keepalive),
            offers: BTreeMap::new(),
            next_offer: 1,
        }
    }

    pub fn sign(&self) -> &str {
        &self.sign
    }

    /// Whether `who` has a subscriber record.
    pub fn is_subscriber(&self, who: &Requester) -> bool {
        self.table.contains(who)
    }

    /// Offers still waiting for a taker.
    pub fn pending(&self) -> usize {
        self.offers.len()
    }

    pub fn handle(&mut self, now: Instant, from: Requester, cmd: RouteCommand) -> Vec<RouteOutput> {
        let mut out = Vec::new();
        self.run_due(now, &mut out);
        match cmd {
            // Spec §4.2: only an object creates a record, and only for a sender with a sign.
            RouteCommand::Subscribe(changes) => {
                if !from.sign.is_empty() {
                    self.table.apply(now, &from, changes);
                }
            }
            RouteCommand::Pause(d) => {
                self.table.touch(now, &from);
                self.table.pause(now, &from, d);
            }
            RouteCommand::Unsubscribe => self.table.remove(&from),
            RouteCommand::KeepAlive => {
                self.table.touch(now, &from);
            }
            RouteCommand::Publish {
                key,
                targets,
                value,
            } => self.publish(now, &from, &key, targets, value, &mut out),
            RouteCommand::Claim { token } => self.claim(&from, &token, &mut out),
        }
        out
    }

    pub fn tick(&mut self, now: Instant) -> Vec<RouteOutput> {
        let mut out = Vec::new();
        self.run_due(now, &mut out);
        out
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let offer = self.offers.values().next().map(|o| o.deadline);
        match (offer, self.table.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn run_due(&mut self, now: Instant, out: &mut Vec<RouteOutput>) {
        while let Some(entry) = self.offers.first_entry() {
            if entry.get().deadline > now {
                break;
            }
            let o = entry.remove();
            fail(&o.publisher, o.fail.as_deref(), &o.key, &o.value, out);
        }
        self.table.expire(now);
    }

    /// Spec §4.3: each comma token is routed on its own.
    fn publish(
        &mut self,
        now: Instant,
        from: &Requester,
        key: &str,
        targets: Targets,
        value: Payload,
        out: &mut Vec<RouteOutput>,
    ) {
        for t in targets.list {
            let matched = self.table.matching(now, &t.id);
            if matched.is_empty() {
                // No eligible subscriber in the first place: fail at once.
                fail(from, t.fail.as_deref(), key, &value, out);
            } else if targets.broadcast {
                for (to, cb) in matched {
                    out.push(deliver(to, &cb, t.ret.as_deref(), from, key, &value));
                }
            } else {
                self.offer(now, from, key, t, &value, matched, out);
            }
        }
    }

    /// Asks every eligible subscriber process whether it takes the message.
    #[allow(clippy::too_many_arguments)]
    fn offer(
        &mut self,
        now: Instant,
        from: &Requester,
        key: &str,
        t: Target,
        value: &Payload,
        matched: Vec<(Requester, String)>,
        out: &mut Vec<RouteOutput>,
    ) {
        let id = OfferId(self.next_offer);
        self.next_offer += 1;
        let token = id.to_string();
        for (to, _) in &matched {
            out.push(RouteOutput {
                key: format!("{}:route:@", to.sign),
                to: to.clone(),
                message: RouteMessage::Offer {
                    original_key: key.to_string(),
                    token: token.clone(),
                    reply_to: format!("{}:=", self.sign),
                },
            });
        }
        self.offers.insert(
            id,
            Offer {
                deadline: now + OFFER_TIMEOUT,
                publisher: from.clone(),
                key: key.to_string(),
                value: value.clone(),
                fail: t.fail,
                ret: t.ret,
                candidates: matched.into_iter().collect(),
            },
        );
    }

    /// The first claim by a process that was asked wins; later, unknown or foreign claims are
    /// ignored.
    fn claim(&mut self, from: &Requester, token: &str, out: &mut Vec<RouteOutput>) {
        let Some((id, only)) = parse_claim(token) else {
            return;
        };
        if !self
            .offers
            .get(&id)
            .is_some_and(|o| o.candidates.contains_key(from))
        {
            return;
        }
        let Some(o) = self.offers.remove(&id) else {
            return;
        };
        let cb = &o.candidates[from];
        if only
            .as_ref()
            .is_none_or(|only| only.iter().any(|c| c == cb))
        {
            out.push(deliver(
                from.clone(),
                cb,
                o.ret.as_deref(),
                &o.publisher,
                &o.key,
                &o.value,
            ));
        }
    }
}

fn deliver(
    to: Requester,
    callback: &str,
    ret: Option<&str>,
    publisher: &Requester,
    key: &str,
    value: &Payload,
) -> RouteOutput {
    RouteOutput {
        key: reply_key(&to.sign, &with_ret(callback, ret)),
        to,
        message: RouteMessage::Deliver {
            original_key: key.to_string(),
            value: value.clone(),
            reply_to: publisher.clone(),
        },
    }
}

fn fail(
    publisher: &Requester,
    cb: Option<&str>,
    key: &str,
    value: &Payload,
    out: &mut Vec<RouteOutput>,
) {
    if let Some(cb) = cb {
        out.push(RouteOutput {
            to: publisher.clone(),
            key: reply_key(&publisher.sign, cb),
            message: RouteMessage::Fail {
                original_key: key.to_string(),
                value: value.clone(),
            },
        });
    }
}
