//! Behaviour tests of the ticket service (spec services.md §3), driven with explicit times.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::*;
use crate::service::{Payload, Requester};

fn ms(base: Instant, n: u64) -> Instant {
    base + Duration::from_millis(n)
}

fn service(capacity: usize, cats: &[(&str, i64)]) -> TicketService {
    let config = TicketConfig {
        capacity,
        categories: cats.iter().map(|(n, l)| (n.to_string(), *l)).collect(),
    };
    TicketService::new("ticket", &config)
}

fn who(i: usize) -> Requester {
    Requester::new(1, format!("s{i}"))
}

fn request(cat: &str, cb: &str, fb: Option<&str>) -> TicketCommand {
    TicketCommand::Request {
        category: cat.into(),
        callback: cb.into(),
        feedback: fb.map(str::to_string),
        request_key: format!("ticket:{cat}={cb}"),
        value: Payload::from_static(b"v"),
    }
}

fn lease(id: LeaseId, ms: i64) -> TicketCommand {
    TicketCommand::Lease { lease: id, ms }
}

/// The grants in `outs`: (to, lease).
fn grants(outs: &[TicketOutput]) -> Vec<(Requester, LeaseId)> {
    outs.iter()
        .filter_map(|o| match &o.message {
            TicketMessage::Grant { lease, .. } => Some((o.to.clone(), *lease)),
            _ => None,
        })
        .collect()
}

fn cancels(outs: &[TicketOutput]) -> Vec<(Requester, Vec<(LeaseId, String)>)> {
    outs.iter()
        .filter_map(|o| match &o.message {
            TicketMessage::Cancel { leases } => Some((o.to.clone(), leases.clone())),
            _ => None,
        })
        .collect()
}

fn feedback(outs: &[TicketOutput]) -> Vec<Outcome> {
    outs.iter()
        .filter_map(|o| match &o.message {
            TicketMessage::Feedback { result, .. } => Some(*result),
            _ => None,
        })
        .collect()
}

#[test]
fn grant_message_carries_key_reply_address_and_value() {
    let t = Instant::now();
    let mut s = service(100, &[("odbc", 10)]);
    let outs = s.handle(
        t,
        Requester::new(2, "game"),
        request("odbc", "login", Some("fb")),
    );
    assert_eq!(outs.len(), 2);
    let id = LeaseId(0x1000_0000_0000_0001);
    assert_eq!(outs[0].key, "game:login");
    assert_eq!(
        outs[0].message,
        TicketMessage::Grant {
            lease: id,
            reply_to: "ticket:@1000000000000001".into(),
            value: Payload::from_static(b"v"),
        }
    );
    assert_eq!(outs[1].key, "game:fb");
    assert_eq!(
        outs[1].message,
        TicketMessage::Feedback {
            request_key: "ticket:odbc=login".into(),
            result: Ok(id)
        }
    );
    // A callback naming its stage is not prefixed.
    let outs = s.handle(
        t,
        Requester::new(2, "game"),
        request("odbc", "lobby:in", None),
    );
    assert_eq!(outs[0].key, "lobby:in");
    assert_eq!(s.next_deadline(), Some(ms(t, 1000)));
}

/// 100 requesters on a 10-slot category: never more than 10 held, everybody served, grants in
/// request order. Holders release early, extend then release, or let the lease run out.
#[test]
fn fairness_100_requesters_10_slots() {
    #[derive(Debug)]
    enum Act {
        Ask(usize),
        Extend(usize),
        Release(usize),
    }
    let t = Instant::now();
    let mut s = service(100_000, &[("odbc", 10)]);
    let mut acts: BTreeMap<(Instant, usize), Act> = BTreeMap::new();
    let mut seq = 0;
    let mut plan = |acts: &mut BTreeMap<(Instant, usize), Act>, at: Instant, a: Act| {
        seq += 1;
        acts.insert((at, seq), a);
    };
    for i in 0..100 {
        plan(&mut acts, ms(t, i as u64), Act::Ask(i));
    }
    let mut held: BTreeMap<usize, LeaseId> = BTreeMap::new();
    let mut order = Vec::new();
    let mut expired = BTreeSet::new();
    let index = |r: &Requester| r.sign[1..].parse::<usize>().unwrap();
    for _step in 0..10_000 {
        let act_at = acts.first_key_value().map(|(k, _)| k.0);
        let due = s.next_deadline();
        let (now, outs) = match (act_at, due) {
            (None, None) => break,
            (Some(a), d) if d.is_none_or(|d| a < d) => {
                let (_, act) = acts.pop_first().unwrap();
                let outs = match act {
                    Act::Ask(i) => s.handle(a, who(i), request("odbc", "go", None)),
                    Act::Extend(i) => s.handle(a, who(i), lease(held[&i], 800)),
                    Act::Release(i) => {
                        let id = held.remove(&i).expect("released while held");
                        s.handle(a, who(i), lease(id, 0))
                    }
                };
                (a, outs)
            }
            (_, Some(d)) => (d, s.tick(d)),
            _ => unreachable!(),
        };
        for (to, leases) in cancels(&outs) {
            let i = index(&to);
            assert_eq!(i % 5, 0, "only the idle holders expire");
            assert_eq!(leases, vec![(held[&i], "go".to_string())]);
            held.remove(&i);
            expired.insert(i);
        }
        for (to, id) in grants(&outs) {
            let i = index(&to);
            order.push(i);
            held.insert(i, id);
            match i % 5 {
                0 => {} // never releases: the lease expires after 1000 ms
                1 => {
                    plan(&mut acts, now + Duration::from_millis(500), Act::Extend(i));
                    plan(
                        &mut acts,
                        now + Duration::from_millis(1100),
                        Act::Release(i),
                    );
                }
                _ => plan(
                    &mut acts,
                    now + Duration::from_millis(50 + (i as u64 * 37) % 400),
                    Act::Release(i),
                ),
            }
        }
        assert!(held.len() <= 10, "{} held at once", held.len());
        assert_eq!(s.held("odbc"), held.len());
    }
    assert_eq!(
        order,
        (0..100).collect::<Vec<_>>(),
        "FIFO grants, all served"
    );
    assert_eq!(expired, (0..100).filter(|i| i % 5 == 0).collect());
    assert!(held.is_empty());
    assert_eq!(s.tracked(), 0);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn lease_expires_after_1000_ms_and_the_slot_passes_at_once() {
    let t = Instant::now();
    let mut s = service(100, &[("one", 1)]);
    let a = grants(&s.handle(t, who(0), request("one", "cb", None)))[0].1;
    assert!(grants(&s.handle(ms(t, 5), who(1), request("one", "cb", None))).is_empty());
    assert_eq!(s.waiting("one"), 1);
    assert!(s.tick(ms(t, 999)).is_empty());
    let outs = s.tick(ms(t, 1000));
    assert_eq!(cancels(&outs), vec![(who(0), vec![(a, "cb".to_string())])]);
    assert_eq!(outs[0].key, "s0:ticket:@");
    let g = grants(&outs);
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].0, who(1));
    assert_eq!(s.held("one"), 1);
    assert_eq!(s.next_deadline(), Some(ms(t, 2000)));
}

#[test]
fn extend_moves_the_deadline() {
    let t = Instant::now();
    let mut s = service(100, &[("one", 1)]);
    let a = grants(&s.handle(t, who(0), request("one", "cb", None)))[0].1;
    assert!(s.handle(ms(t, 500), who(0), lease(a, 2000)).is_empty());
    assert_eq!(s.next_deadline(), Some(ms(t, 2500)));
    assert!(s.tick(ms(t, 1000)).is_empty());
    assert_eq!(s.held("one"), 1);
    assert_eq!(cancels(&s.tick(ms(t, 2500))).len(), 1);
    assert_eq!(s.held("one"), 0);
}

#[test]
fn release_passes_the_slot_immediately_without_a_notice() {
    let t = Instant::now();
    let mut s = service(100, &[("one", 1)]);
    let a = grants(&s.handle(t, who(0), request("one", "cb", None)))[0].1;
    s.handle(t, who(1), request("one", "cb", None));
    let outs = s.handle(ms(t, 10), who(0), lease(a, 0));
    assert!(cancels(&outs).is_empty());
    assert_eq!(grants(&outs)[0].0, who(1));
    assert_eq!(s.next_deadline(), Some(ms(t, 1010)));
    // A second release of the same lease is ignored.
    assert!(s.handle(ms(t, 20), who(0), lease(a, -1)).is_empty());
    assert_eq!(s.held("one"), 1);
}

#[test]
fn a_waiter_can_withdraw() {
    let t = Instant::now();
    let mut s = service(100, &[("one", 1)]);
    s.handle(t, who(0), request("one", "cb", None));
    let fb = feedback(&s.handle(t, who(1), request("one", "cb", Some("fb"))));
    let b = fb[0].unwrap();
    assert!(s.handle(t, who(1), lease(b, 0)).is_empty());
    assert_eq!(s.waiting("one"), 0);
    assert_eq!(s.tracked(), 1);
}

#[test]
fn negative_limit_refuses_instead_of_queueing() {
    let t = Instant::now();
    let mut s = service(100, &[("room", -2)]);
    for i in 0..2 {
        let outs = s.handle(t, who(i), request("room", "cb", Some("fb")));
        assert_eq!(grants(&outs).len(), 1);
        assert!(feedback(&outs)[0].is_ok());
    }
    let outs = s.handle(t, who(2), request("room", "cb", Some("fb")));
    assert!(grants(&outs).is_empty());
    assert_eq!(feedback(&outs), vec![Err(Refusal::CategoryFull)]);
    assert_eq!(s.waiting("room"), 0);
}

#[test]
fn queue_capacity_is_enforced() {
    let t = Instant::now();
    let mut s = service(3, &[("one", 1), ("two", 2)]);
    for i in 0..3 {
        let fb = feedback(&s.handle(t, who(i), request("one", "cb", Some("fb"))));
        assert!(fb[0].is_ok());
    }
    // Capacity counts holders and waiters over all categories.
    let outs = s.handle(t, who(3), request("two", "cb", Some("fb")));
    assert_eq!(feedback(&outs), vec![Err(Refusal::QueueFull)]);
    assert_eq!(s.tracked(), 3);
    // A lease ending makes room again.
    s.tick(ms(t, 1000));
    assert_eq!(s.tracked(), 2);
    assert!(feedback(&s.handle(ms(t, 1000), who(3), request("two", "cb", Some("fb"))))[0].is_ok());
}

#[test]
fn unknown_category_is_refused() {
    let t = Instant::now();
    let mut s = service(100, &[]);
    let outs = s.handle(t, who(0), request("nope", "cb", Some("fb")));
    assert_eq!(feedback(&outs), vec![Err(Refusal::UnknownCategory)]);
    // Without `?feedback` a refusal sends nothing.
    assert!(s.handle(t, who(0), request("nope", "cb", None)).is_empty());
}

#[test]
fn categories_from_config_and_at_run_time() {
    let t = Instant::now();
    let mut s = service(100, &[("odbc", 10)]);
    assert!(s.is_open("odbc"));
    assert!(!s.is_open("room1"));
    let create = TicketCommand::Configure {
        category: "room1".into(),
        limit: -2,
        close_after: Some(Duration::from_millis(60_000)),
    };
    assert!(s.handle(t, who(9), create).is_empty());
    assert!(s.is_open("room1"));
    let a = grants(&s.handle(t, who(0), request("room1", "cb", None)))[0].1;
    assert_eq!(s.next_deadline(), Some(ms(t, 1000)));
    s.handle(t, who(0), lease(a, 120_000));
    assert_eq!(s.next_deadline(), Some(ms(t, 60_000)));
    // Closed at 60 s: new requests are refused, the holder keeps its lease.
    assert!(s.tick(ms(t, 60_000)).is_empty());
    assert!(!s.is_open("room1"));
    let outs = s.handle(ms(t, 60_001), who(1), request("room1", "cb", Some("fb")));
    assert_eq!(feedback(&outs), vec![Err(Refusal::UnknownCategory)]);
    assert_eq!(s.held("room1"), 1);
    // The last lease ending removes the category.
    s.handle(ms(t, 60_002), who(0), lease(a, 0));
    assert_eq!(s.held("room1"), 0);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn resizing_grants_waiters_or_keeps_leases() {
    let t = Instant::now();
    let mut s = service(100, &[("c", 1)]);
    let a = grants(&s.handle(t, who(0), request("c", "cb", None)))[0].1;
    s.handle(t, who(1), request("c", "cb", None));
    s.handle(t, who(2), request("c", "cb", None));
    let grow = |limit| TicketCommand::Configure {
        category: "c".into(),
        limit,
        close_after: None,
    };
    let outs = s.handle(ms(t, 1), who(9), grow(3));
    assert_eq!(
        grants(&outs).into_iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![who(1), who(2)]
    );
    // Shrinking below the holders keeps their leases; freed slots vanish.
    s.handle(ms(t, 2), who(9), grow(1));
    assert_eq!(s.held("c"), 3);
    s.handle(ms(t, 3), who(3), request("c", "cb", None));
    assert!(grants(&s.handle(ms(t, 4), who(0), lease(a, 0))).is_empty());
    assert_eq!(s.held("c"), 2);
}

#[test]
fn closing_cancels_waiters() {
    let t = Instant::now();
    let mut s = service(100, &[("c", 1)]);
    s.handle(t, who(0), request("c", "cb", None));
    let b = feedback(&s.handle(t, who(1), request("c", "wait", Some("fb"))))[0].unwrap();
    let close = TicketCommand::Configure {
        category: "c".into(),
        limit: 0,
        close_after: None,
    };
    let outs = s.handle(ms(t, 1), who(9), close);
    assert_eq!(
        cancels(&outs),
        vec![(who(1), vec![(b, "wait".to_string())])]
    );
    assert_eq!(s.held("c"), 1);
}

#[test]
fn batch_request_and_feedback() {
    let t = Instant::now();
    let mut s = service(100, &[("room", -2)]);
    let cmd = TicketCommand::Batch {
        category: "room".into(),
        feedback: Some("fb".into()),
        request_key: "ticket:room?fb".into(),
        entries: ["a", "b", "c"]
            .iter()
            .map(|cb| (cb.to_string(), Payload::from_static(b"x")))
            .collect(),
        userdata: Some(Payload::from_static(b"u")),
    };
    let outs = s.handle(t, who(0), cmd);
    assert_eq!(grants(&outs).len(), 2);
    let fb = outs.last().unwrap();
    assert_eq!(fb.key, "s0:fb");
    let TicketMessage::BatchFeedback {
        request_key,
        results,
        userdata,
    } = &fb.message
    else {
        panic!("{fb:?}");
    };
    assert_eq!(request_key, "ticket:room?fb");
    assert_eq!(userdata.as_deref(), Some(&b"u"[..]));
    let names: Vec<&str> = results.iter().map(|(cb, _)| cb.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(results[0].1.is_ok() && results[1].1.is_ok());
    assert_eq!(results[2].1, Err(Refusal::CategoryFull));
}

#[test]
fn broadcast_reaches_each_distinct_holder_and_waiter_once() {
    let t = Instant::now();
    let mut s = service(100, &[("c", 1), ("other", 1)]);
    s.handle(t, who(0), request("c", "cb", None));
    s.handle(t, who(0), request("c", "cb2", None));
    s.handle(t, who(1), request("c", "cb", None));
    s.handle(t, who(2), request("other", "cb", None));
    let cmd = TicketCommand::Broadcast {
        category: "c".into(),
        value: Payload::from_static(b"hi"),
    };
    let outs = s.handle(t, who(7), cmd);
    let to: Vec<(Requester, &str)> = outs
        .iter()
        .map(|o| (o.to.clone(), o.key.as_str()))
        .collect();
    assert_eq!(to, vec![(who(0), "s0:ticket:c"), (who(1), "s1:ticket:c")]);
}

#[test]
fn at_names_resolve_to_live_leases_only() {
    let t = Instant::now();
    let mut s = service(100, &[("c", 1)]);
    let a = grants(&s.handle(t, who(0), request("c", "cb", None)))[0].1;
    let name = &a.to_string()[1..];
    assert_eq!(s.resolve_at(name), Some(a));
    assert_eq!(s.resolve_at("c"), None);
    s.handle(t, who(0), lease(a, 0));
    assert_eq!(s.resolve_at(name), None);
}

/// Two shards of one service, as two cores hold them (`service::shard`), with categories
/// `a` and `b` owned by different shards.
fn two_shards(capacity: usize) -> (TicketService, TicketService, String, String) {
    use crate::service::shard::{owner_of_name, Shard};
    let name_on = |k: usize| {
        (0..100)
            .map(|i| format!("cat{i}"))
            .find(|n| owner_of_name(n, 2) == k)
            .unwrap()
    };
    let (a, b) = (name_on(0), name_on(1));
    let config = TicketConfig {
        capacity,
        categories: vec![(a.clone(), 5), (b.clone(), 5)],
    };
    let tracked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let shard = |index| {
        TicketService::sharded(
            "ticket",
            &config,
            Shard { index, count: 2 },
            tracked.clone(),
        )
    };
    (shard(0), shard(1), a, b)
}

#[test]
fn shards_hold_only_their_categories_and_issue_their_own_lease_ids() {
    use crate::service::shard::lease_owner;
    let t = Instant::now();
    let (mut s0, mut s1, a, b) = two_shards(100);
    assert!(s0.is_open(&a) && !s0.is_open(&b));
    assert!(s1.is_open(&b) && !s1.is_open(&a));
    for _ in 0..3 {
        let g0 = grants(&s0.handle(t, who(0), request(&a, "cb", None)));
        let g1 = grants(&s1.handle(t, who(1), request(&b, "cb", None)));
        assert_eq!(lease_owner(g0[0].1, 2), 0);
        assert_eq!(lease_owner(g1[0].1, 2), 1);
    }
}

#[test]
fn the_capacity_is_shared_by_all_shards() {
    let t = Instant::now();
    let (mut s0, mut s1, a, b) = two_shards(3);
    assert!(feedback(&s0.handle(t, who(0), request(&a, "cb", Some("fb"))))[0].is_ok());
    assert!(feedback(&s1.handle(t, who(1), request(&b, "cb", Some("fb"))))[0].is_ok());
    assert!(feedback(&s1.handle(t, who(2), request(&b, "cb", Some("fb"))))[0].is_ok());
    let outs = s0.handle(t, who(3), request(&a, "cb", Some("fb")));
    assert_eq!(feedback(&outs), vec![Err(Refusal::QueueFull)]);
    // A lease ending on one shard makes room on the other.
    s1.tick(ms(t, 1000));
    assert!(feedback(&s0.handle(ms(t, 1000), who(3), request(&a, "cb", Some("fb"))))[0].is_ok());
}
