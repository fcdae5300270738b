//! Behaviour tests of the route service (spec services.md §4), driven with explicit times.

use std::time::{Duration, Instant};

use super::*;
use crate::service::{Payload, Requester};

fn ms(base: Instant, n: u64) -> Instant {
    base + Duration::from_millis(n)
}

fn who(sign: &str) -> Requester {
    Requester::new(1, sign)
}

fn sub(id: &str, cb: &str) -> RouteCommand {
    RouteCommand::Subscribe(vec![(id.into(), SubChange::Add(cb.into()))])
}

fn change(id: &str, c: SubChange) -> RouteCommand {
    RouteCommand::Subscribe(vec![(id.into(), c)])
}

fn publish(key: &str) -> RouteCommand {
    let RouteKey::Publish(targets) = parse_key(key.strip_prefix("route:").unwrap()).unwrap() else {
        panic!("{key} is not a publication");
    };
    RouteCommand::Publish {
        key: key.into(),
        targets,
        value: Payload::from_static(b"HELLO"),
    }
}

fn claim(token: &str) -> RouteCommand {
    RouteCommand::Claim {
        token: token.into(),
    }
}

/// The (to, token) of the willingness queries in `outs`.
fn offers(outs: &[RouteOutput]) -> Vec<(Requester, String)> {
    outs.iter()
        .filter_map(|o| match &o.message {
            RouteMessage::Offer { token, .. } => Some((o.to.clone(), token.clone())),
            _ => None,
        })
        .collect()
}

/// The (to, key) of the deliveries in `outs`.
fn delivered(outs: &[RouteOutput]) -> Vec<(Requester, String)> {
    outs.iter()
        .filter(|o| matches!(o.message, RouteMessage::Deliver { .. }))
        .map(|o| (o.to.clone(), o.key.clone()))
        .collect()
}

fn fails(outs: &[RouteOutput]) -> Vec<String> {
    outs.iter()
        .filter(|o| matches!(o.message, RouteMessage::Fail { .. }))
        .map(|o| o.key.clone())
        .collect()
}

#[test]
fn first_taker_wins_the_other_gets_nothing() {
    let t = Instant::now();
    let mut s = RouteService::new("route");
    s.handle(t, who("a"), sub("login", "onlogin"));
    s.handle(t, who("b"), sub("login", "onlogin=ret"));
    let outs = s.handle(ms(t, 1), who("p"), publish("route:login!fail=done"));
    let asked = offers(&outs);
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].0, who("a"));
    assert_eq!(asked[1].0, who("b"));
    assert_eq!(asked[0].1, asked[1].1, "one token per offer");
    assert_eq!(outs[0].key, "a:route:@");
    assert_eq!(
        outs[0].message,
        RouteMessage::Offer {
            original_key: "route:login!fail=done".into(),
            token: asked[0].1.clone(),
            reply_to: "route:=".into(),
        }
    );
    // b claims first: the message goes to b's subscription, reply address = the publisher.
    let outs = s.handle(ms(t, 5), who("b"), claim(&asked[0].1));
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].to, who("b"));
    assert_eq!(outs[0].key, "b:onlogin=done");
    assert_eq!(
        outs[0].message,
        RouteMessage::Deliver {
            original_key: "route:login!fail=done".into(),
            value: Payload::from_static(b"HELLO"),
            reply_to: who("p"),
        }
    );
    // a's later claim is ignored, and the offer does not fail afterwards.
    assert!(s.handle(ms(t, 6), who("a"), claim(&asked[0].1)).is_empty());
    assert!(s.tick(ms(t, 400)).is_empty());
    assert_eq!(s.pending(), 0);
}

#[test]
fn fail_callback_after_300_ms_without_a_taker() {
    let t = Instant::now();
    let mut s = RouteService::new("route");
    s.handle(t, who("a"), sub("login", "onlogin"));
    let outs = s.handle(t, who("p"), publish("route:login!r__fail"));
    assert_eq!(offers(&outs).len(), 1);
    assert_eq!(s.next_deadline(), Some(ms(t, 300)));
    assert!(s.tick(ms(t, 299)).is_empty());
    let outs = s.tick(ms(t, 300));
    assert_eq!(fails(&outs), ["p:r__fail"]);
    assert_eq!(outs[0].to, who("p"));
    assert_eq!(
        outs[0].message,
        RouteMessage::Fail {
            original_key: "route:login!r__fail".into(),
            value: Payload::from_static(b"HELLO"),
        }
    );
    // A claim after the timeout is ignored.
    let token = offers(&s.handle(ms(t, 301), who("p"), publish("route:login")))[0]
        .1
        .clone();
    assert!(s.handle(ms(t, 700), who("a"), claim(&token)).is_empty());
}

#[test]
fn no_eligible_subscriber_fails_at_once() {
    let t = Instant::now();
    let mut s = RouteService::new("route");
    let outs = s.handle(t, who("p"), publish("route:nobody!f"));
    assert_eq!(fails(&outs), ["p:f"]);
    // Without `!fail_cb` nothing is sent.
    assert!(s.handle(t, who("p"), publish("route:nobody")).is_empty());
    assert_eq!(s.pending(), 0);
}

#[test]
fn star_broadcast_reaches_every_subscriber() {
    let t = Instant::now();
    let mut s = RouteService::new("route");
    s.handle(t, who("a"), sub("news", "n1"));
    s.handle(t, who("b"), sub("news", "n2"));
    s.handle(t, who("c"), sub("news", "lobby:n3"));
    s.handle(t, who("d"), sub("other", "x"));
    let outs = s.handle(t, who("p"), publish("route:*news=r"));
    assert_eq!(
        delivered(&outs),
        vec![
            (who("a"), "a:n1=r".to_string()),
            (who("b"), "b:n2=r".to_string()),
            (who("c"), "lobby:n3=r".to_string()),
        ]
    );
    assert!(offers(&outs).is_empty());
    assert_eq!(s.pending(), 0);
}

#[test]
fn keepalive_expiry_removes_a_silent_subscriber() {
    let t = Instant::now();
    let mut s = RouteService::new("route");
    s.handle(t, who("a"), sub("x", "cb"));
    s.handle(t, who("b"), sub("x", "cb"));
    s.handle(ms(t, 20_000), who("b"), RouteCommand::KeepAlive);
    assert_eq!(s.next_deadline(), Some(ms(t, 30_000)));
    s.tick(ms(t, 30_000));
    assert!(!s.is_subscriber(&who("a")));
    assert!(s.is_subscriber(&who("b")));
    let asked = offers(&s.handle(ms(t, 30_001), who("p"), publish("route:x")));
    assert_eq!(
        asked.iter().map(|a| a.0.clone()).collect::<Vec<_>>(),
        [who("b")]
    );
    s.tick(ms(t, 50_000));
    assert!(!s.is_subscriber(&who("b")));
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn only_an_object_from_a_signed_sender_creates_a_subscriber() {
    let t = Instant::now();
    let mut s = RouteService::new("route");
    s.handle(t, who("a"), RouteCommand::KeepAlive);
    s.handle(t, who("a"), RouteCommand::Pause(Duration::from_millis(10)));
    assert!(!s.is_subscriber(&who("a")));
    s.handle(t, who(""), sub("x", "cb"));
    assert!(!s.is_subscriber(&who("")));
    s.handle(t, who("a"), RouteCommand::Subscribe(vec![]));
    assert!(s.is_subscriber(&who("a")));
    s.handle(t, who("a"), RouteCommand::Unsubscribe);
    assert!(!s.is_subscriber(&who("a")));
}

#[test]
fn pause_and_per_subscription_switches() {
    let t = Instant::now();
    let mut s = RouteService::new("route");
    let asked =
        |s: &mut RouteService, at| offers(&s.handle(at, who("p"), publish("route:x"))).len();
    s.handle(t, who("a"), sub("x", "cb"));
    s.handle(
        t,
        who("a"),
        RouteCommand::Pause(Duration::from_millis(1000)),
    );
    assert_eq!(asked(&mut s, ms(t, 999)), 0);
    assert_eq!(asked(&mut s, ms(t, 1000)), 1);
    s.handle(ms(t, 1000), who("a"), change("x", SubChange::Enable(false)));
    assert_eq!(asked(&mut s, ms(t, 1001)), 0);
    s.handle(ms(t, 1001), who("a"), change("x", SubChange::Enable(true)));
    assert_eq!(asked(&mut s, ms(t, 1002)), 1);
    s.handle(
        ms(t, 2000),
        who("a"),
        change("x", SubChange::DisableFor(Duration::from_millis(500))),
    );
    assert_eq!(asked(&mut s, ms(t, 2499)), 0);
    assert_eq!(asked(&mut s, ms(t, 2500)), 1);
    s.handle(ms(t, 2500), who("a"), change("x", SubChange::Remove));
    assert_eq!(asked(&mut s, ms(t, 2501)), 0);
    assert!(s.is_subscriber(&who("a")));
}

#[test]
fn dotted_prefix_fallback_only_without_an_exact_match() {
    let t = Instant::now();
    let mut s = RouteService::new("route");
    s.handle(t, who("a"), sub("zone.", "any"));
    s.handle(t, who("b"), sub("zone.1", "one"));
    let to = |outs: Vec<RouteOutput>| offers(&outs).into_iter().map(|o| o.0).collect::<Vec<_>>();
    assert_eq!(
        to(s.handle(t, who("p"), publish("route:zone.1"))),
        [who("b")]
    );
    assert_eq!(
        to(s.handle(t, who("p"), publish("route:zone.2?hint"))),
        [who("a")]
    );
}

#[test]
fn claims_from_strangers_are_ignored_and_filters_apply() {
    let t = Instant::now();
    let mut s = RouteService::new("route");
    s.handle(t, who("a"), sub("x", "cb"));
    let token = offers(&s.handle(t, who("p"), publish("route:x")))[0]
        .1
        .clone();
    assert!(s.handle(t, who("z"), claim(&token)).is_empty());
    assert_eq!(s.pending(), 1);
    // A filter naming none of the claimer's callbacks takes the offer but delivers nothing.
    assert!(s
        .handle(t, who("a"), claim(&format!("{token}?other")))
        .is_empty());
    assert_eq!(s.pending(), 0);
    let token = offers(&s.handle(t, who("p"), publish("route:x")))[0]
        .1
        .clone();
    let outs = s.handle(t, who("a"), claim(&format!("{token}?cb")));
    assert_eq!(delivered(&outs), vec![(who("a"), "a:cb".to_string())]);
}

#[test]
fn each_target_of_a_list_is_routed_on_its_own() {
    let t = Instant::now();
    let mut s = RouteService::new("route");
    s.handle(t, who("a"), sub("x", "cb"));
    let outs = s.handle(t, who("p"), publish("route:x,y!nobody"));
    assert_eq!(offers(&outs).len(), 1);
    assert_eq!(fails(&outs), ["p:nobody"]);
}
