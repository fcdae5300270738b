//! `=route` wired to the router: Lua stages talk to a `=route+route` stage with
//! `stage.signal` as spec/services.md §4 shows — subscribers register with `route:@` and
//! claim offers in their `route:@` handler with `stage.signal(nil, token)`; the first taker
//! gets the value, its handler's return value goes straight back to the publisher; nobody
//! taking an offer within 300 ms (the service's own timer, no traffic) calls the publisher's
//! `!fail_cb`; `*` reaches every subscriber; and the route stage may live in another process.
//! Behaviour is asserted, never speed.
//!
//! The handlers log what reaches them (`OFFER`, `GOT`, `RET`, `FAIL` lines); the tests wait
//! for and read those lines: they are the results under test, not readiness.

use crate::harness::*;

/// Lua stages `pub` (start.lua), `suba` and `subb` (sub.lua, named by `NAME`) and the route
/// stage.
fn route_config() -> String {
    r##"{ "#startup": [["lua.so+pub", "lua.so+suba", "lua.so+subb", "=route+route"]],
          "lua.so": { "%package": ["."], "%reflush": 0,
                      "pub": "start", "suba": "suba", "subb": "subb" } }"##
        .to_string()
}

/// A subscriber: `TOPICS` maps subscribe ids to the callback `got`; it claims every offer
/// unless `SHY`, logs what it gets and answers with its name. Then it tells `pub` it is ready.
fn subscriber(name: &str, topics: &str, shy: bool) -> String {
    format!(
        r#"
        NAME, SHY = "{name}", {shy}
        stage.waitfor("route:@", function (key, token)
          logger.info("OFFER " .. NAME .. " " .. key)
          if not SHY then stage.signal(nil, token) end
        end)
        stage.waitfor("got", function (key, v)
          logger.info("GOT " .. NAME .. " " .. key .. " " .. tostring(v))
          return "ack-" .. NAME .. "-" .. tostring(v)
        end)
        stage.signal("route:@", {topics})
        stage.addtask(5000, function () stage.signal("route:@", true) end) -- keep-alive
        stage.signal("pub:ready", NAME)
        "#
    )
}

fn listen_last(script: &str) -> String {
    format!(
        "{script}\n
         broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
           return function (s, data) return {{ ok = true }} end
         end)"
    )
}

fn start(publisher: &str, a: &str, b: &str) -> Server {
    Server::start(
        &route_config(),
        &[
            ("start.lua", &listen_last(publisher)),
            ("suba.lua", a),
            ("subb.lua", b),
        ],
    )
}

#[test]
fn the_first_taker_gets_it_and_its_answer_reaches_the_publisher() {
    // Both subscribers claim every offer; each value must reach exactly one of them, and the
    // taker's return value comes back to the publisher's `=ret` callback.
    let publisher = r#"
      stage.waitfor("ret", function (s) logger.info("RET " .. s) end)
      stage.waitfor("retry", function (key, v) stage.signal("route:login!retry=ret", v) end)
      stage.waitfor("ready", function ()
        ready = (ready or 0) + 1
        if ready < 2 then return end
        for n = 1, 5 do stage.signal("route:login!retry=ret", "v" .. n) end
      end)
    "#;
    let topics = r#"{ login = "got" }"#;
    let server = start(
        publisher,
        &subscriber("a", topics, false),
        &subscriber("b", topics, false),
    );
    server.wait_log_count("RET ack-", 5);
    let log = server.log();
    for n in 1..=5 {
        let got = log
            .matches(&format!(" route:login!retry=ret v{n} "))
            .count();
        assert_eq!(got, 1, "v{n} delivered {got} times; log:\n{log}");
        let ret = log.matches(&format!("-v{n} ")).count();
        assert_eq!(ret, 1, "v{n} answered {ret} times; log:\n{log}");
    }
    assert!(log.contains("OFFER a route:login!retry=ret"), "{log}");
    assert!(log.contains("OFFER b route:login!retry=ret"), "{log}");
}

#[test]
fn nobody_taking_it_calls_the_fail_callback() {
    // `b` is offered `quiet` but never claims: the offer times out and fails. `nosuch` has no
    // subscriber at all: it fails at once.
    let publisher = r#"
      stage.waitfor("nobody", function (key, v) logger.info("FAIL " .. key .. " " .. v) end)
      stage.waitfor("ready", function ()
        ready = (ready or 0) + 1
        if ready < 2 then return end
        stage.signal("route:quiet!nobody", "q")
        stage.signal("route:nosuch!nobody", "n")
      end)
    "#;
    let server = start(
        publisher,
        &subscriber("a", r#"{ other = "got" }"#, false),
        &subscriber("b", r#"{ quiet = "got" }"#, true),
    );
    server.wait_log("FAIL route:quiet!nobody q");
    server.wait_log("FAIL route:nosuch!nobody n");
    let log = server.log();
    assert!(log.contains("OFFER b route:quiet!nobody"), "{log}");
    assert!(!log.contains("GOT "), "{log}");
}

#[test]
fn a_broadcast_reaches_every_subscriber() {
    let publisher = r#"
      stage.waitfor("ready", function ()
        ready = (ready or 0) + 1
        if ready < 2 then return end
        stage.signal("route:*news", "extra")
      end)
    "#;
    let topics = r#"{ news = "got" }"#;
    let server = start(
        publisher,
        &subscriber("a", topics, false),
        &subscriber("b", topics, false),
    );
    server.wait_log("GOT a route:*news extra");
    server.wait_log("GOT b route:*news extra");
    // No offer for a broadcast.
    assert!(!server.log().contains("OFFER"), "{}", server.log());
}

#[test]
fn a_route_process_of_a_multi_process_node_connects_other_processes() {
    // Process 2 hosts only the route stage: subscription, offer, claim, delivery and the
    // answer to the publisher all cross processes. Until the route process's first heartbeat
    // arrives nothing reaches it, so the subscriber re-subscribes and the publisher retries.
    let config = r##"{ "#startup": [["lua.so+pub", "lua.so+suba"], ["=route+route"]],
          "lua.so": { "%package": ["."], "%reflush": 0, "pub": "start", "suba": "suba" } }"##;
    let sub = r#"
      stage.waitfor("route:@", function (key, token) stage.signal(nil, token) end)
      stage.waitfor("got", function (key, v) logger.info("GOT " .. key .. " " .. v) return "ack" end)
      stage.addtask(100, function () stage.signal("route:@", { mp = "got" }) end)
    "#;
    let publisher = r#"
      stage.waitfor("ret", function (s) done = true logger.info("RET " .. s) end)
      stage.addtask(150, function ()
        if done then return 0 end
        stage.signal("route:mp!miss=ret", "hello")
      end)
    "#;
    let server = Server::start(
        config,
        &[("start.lua", &listen_last(publisher)), ("suba.lua", sub)],
    );
    server.wait_log("RET ack");
    assert!(server.log().contains("GOT route:mp!miss=ret hello"));
}

/// A subscriber that is also the publisher: `STEPS[n]` changes its subscriptions, then it
/// publishes `route:topic!nobody=ret` itself (both messages take the same path to the route
/// stage, so the change is in place first) and, once the outcome (delivery or failure) is
/// known, goes on with the next step. It claims every offer and answers `ack-<value>`.
fn stepped_subscriber(steps: &str, last: usize) -> String {
    format!(
        r#"
        stage.waitfor("route:@", function (key, token) stage.signal(nil, token) end)
        stage.waitfor("got", function (key, v)
          logger.info("GOT " .. key .. " " .. tostring(v))
          return "ack-" .. tostring(v)
        end)
        STEPS, LAST = {steps}, {last}
        stage.waitfor("step", function (n)
          if n > 0 then STEPS[n]() end
          stage.signal("route:topic!nobody=ret", "s" .. n)
        end)
        stage.waitfor("outcome", function (what, v)
          local n = tonumber(v:match("s(%d+)$"))
          logger.info("STEP " .. n .. " " .. what)
          if n < LAST then stage.signal("suba:step", n + 1) else logger.info("STEPS DONE") end
        end)
        stage.waitfor("ret", function (v) stage.signal("suba:outcome", "delivered", v) end)
        stage.waitfor("nobody", function (key, v) stage.signal("suba:outcome", "failed", v) end)
        stage.signal("route:@", {{ topic = "got" }})
        stage.signal("suba:step", 0)
        "#
    )
}

#[test]
fn pausing_a_subscriber_and_switching_a_subscription() {
    // spec §4.2: `route:@ ms` pauses the whole subscriber (`0` resumes it), `{[id] = false}` /
    // `true` disable / enable one subscription, `{[id] = ms}` disables it for ms, and
    // `route:@ nil` removes everything. A skipped subscriber is not eligible: with nobody
    // else, the publication fails at once.
    let steps = r#"{
      function () stage.signal("route:@", 60000) end,
      function () stage.signal("route:@", 0) end,
      function () stage.signal("route:@", { topic = false }) end,
      function () stage.signal("route:@", { topic = true }) end,
      function () stage.signal("route:@", { topic = 60000 }) end,
      function () stage.signal("route:@", { topic = "got" }) end,
      function () stage.signal("route:@", true) end,
      function () stage.signal("route:@", nil) end,
    }"#;
    let server = start(
        "",
        &stepped_subscriber(steps, 8),
        &subscriber("b", r#"{ other = "got" }"#, false),
    );
    server.wait_log("STEPS DONE");
    let log = server.log();
    let expect = [
        "delivered", // subscribed
        "failed",    // paused for a minute
        "delivered", // resumed
        "failed",    // subscription disabled
        "delivered", // enabled
        "failed",    // disabled for a minute
        "delivered", // re-subscribed: enabled again
        "delivered", // keep-alive changes nothing
        "failed",    // everything removed
    ];
    for (n, what) in expect.iter().enumerate() {
        assert!(
            log.contains(&format!("STEP {n} {what}")),
            "step {n}; log:\n{log}"
        );
    }
}

#[test]
fn claims_limited_to_callbacks_and_the_dotted_prefix_fallback() {
    // `a` subscribes `zone.` and the callbacks `fa` → got, `fb` → got2; `b` subscribes
    // `zone.1`. `zone.1` goes to `b` only (exact match), `zone.2` and `zone.1.x` fall back
    // to `a`'s `zone.`; `nozone` has no subscriber at all. `a` claims with `token?got`: `fa`
    // is delivered, `fb` (callback got2) is taken but delivered to nobody and does not fail.
    // `quiet` (offered to `b`, who declines it) fails after its 300 ms, and offers fail in
    // order, so by then `fb` would have failed too had the filtered claim not taken it.
    let a = r#"
      stage.waitfor("route:@", function (key, token)
        logger.info("OFFER a " .. key)
        stage.signal(nil, token .. "?got")
        if key:find("fb") then stage.signal("pub:claimed") end
      end)
      stage.waitfor("got", function (key, v) logger.info("GOT a " .. key) return "ack-a-" .. v end)
      stage.waitfor("got2", function (key, v) logger.info("GOT2 a " .. key) return "ack-a2-" .. v end)
      stage.signal("route:@", { ["zone."] = "got", fa = "got", fb = "got2" })
      stage.addtask(5000, function () stage.signal("route:@", true) end)
      stage.signal("pub:ready", "a")
    "#;
    let b = r#"
      stage.waitfor("route:@", function (key, token)
        logger.info("OFFER b " .. key)
        if not key:find("quiet") then stage.signal(nil, token) end
      end)
      stage.waitfor("got", function (key, v) logger.info("GOT b " .. key) return "ack-b-" .. v end)
      stage.signal("route:@", { ["zone.1"] = "got", quiet = "got" })
      stage.addtask(5000, function () stage.signal("route:@", true) end)
      stage.signal("pub:ready", "b")
    "#;
    let publisher = r#"
      stage.waitfor("ret", function (s) logger.info("RET " .. s) end)
      stage.waitfor("nobody", function (key, v) logger.info("FAIL " .. key) end)
      stage.waitfor("ready", function ()
        ready = (ready or 0) + 1
        if ready < 2 then return end
        for _, t in ipairs({ "zone.1", "zone.2", "zone.1.x", "nozone", "fa", "fb" }) do
          stage.signal("route:" .. t .. "!nobody=ret", t)
        end
      end)
      -- `a` has answered the `fb` offer (its claim reached the route stage first).
      stage.waitfor("claimed", function () stage.signal("route:quiet!nobody=ret", "q") end)
    "#;
    let server = start(publisher, a, b);
    server.wait_log_count("RET ack-", 4);
    server.wait_log("FAIL route:nozone!nobody=ret");
    server.wait_log("FAIL route:quiet!nobody=ret");
    let log = server.log();
    assert!(log.contains("RET ack-b-zone.1"), "{log}");
    assert!(log.contains("RET ack-a-zone.2"), "{log}");
    assert!(log.contains("RET ack-a-zone.1.x"), "{log}");
    assert!(log.contains("RET ack-a-fa"), "{log}");
    assert!(!log.contains("OFFER a route:zone.1!"), "{log}");
    assert!(!log.contains("OFFER b route:zone.2"), "{log}");
    assert!(!log.contains("OFFER b route:zone.1.x"), "{log}");
    assert!(log.contains("OFFER a route:fb!nobody=ret"), "{log}");
    assert!(!log.contains("GOT2"), "{log}");
    assert!(!log.contains("FAIL route:fb"), "{log}");
    assert_eq!(log.matches("RET ack-").count(), 4, "{log}");
}

#[test]
fn a_silent_subscriber_is_dropped_after_the_keepalive() {
    // `{"keepalive": 1000}` (docs/config.md; 30 s by default). `a` keeps itself alive;
    // `b` does too until it has taken its first `lonely` message, then falls silent. The
    // publisher repeats `lonely` until it fails: `b` (its only subscriber) was dropped by the
    // service's own timer, while `a` still takes `ka`. Once dropped, `b`'s keep-alive does not
    // bring it back (only an object creates a subscriber).
    let config = r##"{ "#startup": [["lua.so+pub", "lua.so+suba", "lua.so+subb", "=route+route"]],
          "lua.so": { "%package": ["."], "%reflush": 0,
                      "pub": "start", "suba": "suba", "subb": "subb" },
          "=route+route": { "keepalive": 1000 } }"##;
    let a = r#"
      stage.waitfor("route:@", function (key, token) stage.signal(nil, token) end)
      stage.waitfor("got", function (key, v) logger.info("GOT a " .. v) return "a" end)
      stage.signal("route:@", { ka = "got" })
      stage.addtask(100, function () stage.signal("route:@", true) end)
      stage.signal("pub:ready")
    "#;
    let b = r#"
      stage.waitfor("route:@", function (key, token) stage.signal(nil, token) end)
      stage.waitfor("got", function (key, v) logger.info("GOT b " .. v) silent = true return "b" end)
      stage.waitfor("late", function () stage.signal("route:@", true) stage.signal("pub:relay") end)
      stage.signal("route:@", { lonely = "got" })
      stage.addtask(100, function ()
        if silent then return 0 end
        stage.signal("route:@", true)
      end)
      stage.signal("pub:ready")
    "#;
    let publisher = r#"
      stage.waitfor("ret", function (who) logger.info("RET " .. who) end)
      stage.waitfor("gone", function (key, v)
        if failed then return end
        failed = true
        logger.info("GONE " .. v)
        stage.signal("subb:late")
      end)
      -- `b`'s keep-alive has reached the route stage.
      stage.waitfor("relay", function ()
        stage.signal("route:lonely!gone2=ret", "again")
        stage.signal("route:ka!gone=ret", "still")
      end)
      stage.waitfor("gone2", function (key, v) logger.info("GONE2 " .. v) end)
      stage.waitfor("ready", function ()
        ready = (ready or 0) + 1
        if ready < 2 then return end
        stage.signal("route:lonely!gone=ret", "hello")
        stage.addtask(200, function ()
          if failed then return 0 end
          stage.signal("route:lonely!gone=ret", "first")
        end)
      end)
    "#;
    let server = Server::start(
        config,
        &[
            ("start.lua", &listen_last(publisher)),
            ("suba.lua", a),
            ("subb.lua", b),
        ],
    );
    server.wait_log("GOT a still");
    server.wait_log("GONE2 again");
    let log = server.log();
    assert!(log.contains("GOT b hello"), "{log}");
    assert!(log.contains("GONE first"), "{log}");
    assert!(!log.contains("GONE hello"), "{log}");
    assert!(!log.contains("GOT b again"), "{log}");
}

#[test]
fn target_lists_hints_and_removing_one_subscription() {
    // One publication names two targets: each is offered on its own, and the `?hot` hint
    // reaches the willingness check inside the original key. `b` removes its `gone`
    // subscription with an empty callback id (a Lua table cannot hold nil): a publication to
    // `gone` then has no subscriber and fails at once, while `b` still gets `sport`.
    let publisher = r#"
      stage.waitfor("nob", function (key, v) logger.info("FAIL " .. key .. " " .. v) end)
      stage.waitfor("ret", function (s) logger.info("RET " .. s) end)
      stage.waitfor("ready", function ()
        ready = (ready or 0) + 1
        if ready < 2 then return end
        stage.signal("route:news?hot=ret,sport!nob=ret", "V")
        stage.signal("route:gone!nob", "G")
      end)
    "#;
    let b = subscriber("b", r#"{ sport = "got", gone = "got" }"#, false).replace(
        r#"stage.signal("pub:ready", NAME)"#,
        r#"stage.signal("route:@", { gone = "" }) stage.signal("pub:ready", NAME)"#,
    );
    let server = start(
        publisher,
        &subscriber("a", r#"{ news = "got" }"#, false),
        &b,
    );
    let key = "route:news?hot=ret,sport!nob=ret";
    server.wait_log(&format!("GOT a {key} V"));
    server.wait_log(&format!("GOT b {key} V"));
    server.wait_log("FAIL route:gone!nob G");
    server.wait_log_count("RET ack-", 2);
    let log = server.log();
    assert!(log.contains(&format!("OFFER a {key}")), "{log}");
    assert!(
        log.contains("RET ack-a-V") && log.contains("RET ack-b-V"),
        "{log}"
    );
    assert!(!log.contains("OFFER b route:gone"), "{log}");
    assert!(!log.contains("FAIL route:news"), "{log}");
}
