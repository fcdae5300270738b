//! `=route` wired to the router: Lua stages talk to a `=route+route` stage with
//! `stage.signal` as spec/services.md §4 shows — subscribers register with `route:@` and
//! claim offers in their `route:@` handler with `stage.signal(nil, token)`; the first taker
//! gets the value, its handler's return value goes straight back to the publisher; nobody
//! taking an offer within 300 ms (the service's own timer, no traffic) calls the publisher's
//! `!fail_cb`; `*` reaches every subscriber; and the route stage may live in another process.
//! Behaviour is asserted, never speed.

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
