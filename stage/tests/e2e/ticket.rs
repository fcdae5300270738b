//! `=ticket` wired to the router: Lua stages talk to a `=ticket+ticket` stage with
//! `stage.signal` as spec/services.md §3.3 shows — request, grant with `_TICKET`, extend and
//! release from inside (or after) the granted callback, feedback, queueing and refusal,
//! run-time categories, `=cat` broadcast, the cancel notice when a lease runs out (with no
//! traffic: the service's own timer), fairness under 100 concurrent requesters, and a ticket
//! process of a multi-process node. Behaviour is asserted, never speed.
//!
//! The handlers log what reaches them (`GRANT`, `FB`, `CANCEL` lines); the tests wait for
//! and read those lines: they are the results under test, not readiness.

use crate::harness::*;

/// Lua stages `game` (start.lua) and `other` (other.lua) and the ticket stage, whose
/// configuration creates `odbc` (10 slots, queueing) and `solo` (1 slot, queueing).
fn ticket_config() -> String {
    r##"{ "#startup": [["lua.so+game", "lua.so+other", "=ticket+ticket"]],
          "lua.so": { "%package": ["."], "%reflush": 0, "game": "start", "other": "other" },
          "=ticket+ticket": [100000, {"odbc": 10, "solo": 1}] }"##
        .to_string()
}

/// Handlers shared by the tests (globals: handlers see no upvalues): the feedback and the
/// cancel notice are logged.
const PRELUDE: &str = r#"
stage.waitfor("fb", function (key, r) logger.info("FB " .. key .. " " .. tostring(r)) end)
stage.waitfor("ticket:@", function (op, map)
  for id, cb in pairs(map) do logger.info("CANCEL " .. op .. " " .. cb .. " " .. id) end
end)
"#;

fn listen_last(script: &str) -> String {
    format!(
        "{PRELUDE}\n{script}\n
         broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
           return function (s, data) return {{ ok = true }} end
         end)"
    )
}

fn start(game: &str, other: &str) -> Server {
    Server::start(
        &ticket_config(),
        &[
            ("start.lua", &listen_last(game)),
            ("other.lua", &format!("{PRELUDE}\n{other}")),
        ],
    )
}

fn pos(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("missing `{needle}`; log:\n{log}"))
}

#[test]
fn request_grant_extend_release_and_the_queue() {
    // `solo` has one slot: `b` waits while `a` holds it. `a` extends its lease to 5 s inside
    // the granted callback, so at 1.5 s (past the default 1 s) it still holds it and nothing
    // was cancelled; its release hands the slot to `b` at once. `b` releases by returning 0
    // (a granted handler's return value reaches its lease), which lets `c` in.
    let game = r#"
      stage.waitfor("a", function (v)
        logger.info("GRANT a " .. v .. " " .. tostring(_TICKET))
        held_a = _TICKET
        stage.signal(nil, 5000)
      end)
      stage.waitfor("b", function (v)
        logger.info("GRANT b " .. v)
        stage.signal("ticket:solo=c", "z")
        return 0
      end)
      stage.waitfor("c", function (v) logger.info("GRANT c " .. v .. " " .. tostring(_TICKET)) return 0 end)
      stage.signal("ticket:solo=a?fb", "x")
      stage.signal("ticket:solo=b?fb", "y")
      stage.addtask(1500, function ()
        logger.info("CHECK outside: " .. tostring(_TICKET))
        stage.signal("ticket:" .. held_a, 0)
        return 0
      end)
    "#;
    let server = start(game, "");
    server.wait_log("GRANT c z ");
    let log = server.log();
    assert!(log.contains("FB ticket:solo=a?fb @"), "{log}");
    assert!(log.contains("FB ticket:solo=b?fb @"), "{log}");
    assert!(log.contains("GRANT a x @"), "{log}");
    // `_TICKET` is set only inside the granted callback.
    assert!(log.contains("CHECK outside: nil"), "{log}");
    assert!(pos(&log, "CHECK outside") < pos(&log, "GRANT b y"), "{log}");
    assert!(pos(&log, "GRANT b y") < pos(&log, "GRANT c z"), "{log}");
    assert!(!log.contains("CANCEL"), "{log}");
}

#[test]
fn an_expired_lease_is_cancelled_and_its_slot_passes_on() {
    // Nobody releases `hold`: after its 1 s lease the service's timer (no traffic at all)
    // revokes it, tells the owner, and grants the waiter.
    let game = r#"
      stage.waitfor("hold", function () logger.info("GRANT hold " .. _TICKET) end)
      stage.waitfor("next", function () logger.info("GRANT next") return 0 end)
      stage.signal("ticket:solo=hold", 1)
      stage.signal("ticket:solo=next", 2)
    "#;
    let server = start(game, "");
    server.wait_log("GRANT next");
    let log = server.log();
    let lease = log
        .split("GRANT hold ")
        .nth(1)
        .and_then(|rest| rest.get(..17))
        .unwrap_or_else(|| panic!("no grant; log:\n{log}"))
        .to_string();
    assert!(
        log.contains(&format!("CANCEL cancel hold {lease}")),
        "{log}"
    );
    assert!(
        pos(&log, "CANCEL cancel hold") < pos(&log, "GRANT next"),
        "{log}"
    );
}

#[test]
fn refusal_run_time_categories_and_broadcast() {
    // `room` is created at run time with a negative limit: two slots, then refusal (no queue).
    // The broadcast reaches each distinct requester once, even holding two tickets.
    let game = r#"
      stage.waitfor("in", function (n) logger.info("IN " .. n) stage.signal(nil, 60000) end)
      stage.waitfor("ticket:room", function (v) logger.info("BC game " .. v) end)
      stage.signal("ticket:@room", -2)
      for n = 1, 3 do stage.signal("ticket:room=in?fb", n) end
      stage.signal("ticket:nosuch=in?fb", 9)
      stage.signal("ticket:=room", "hello")
      stage.signal("ticket:@room2", { 1 })
      stage.signal("ticket:room2=in?fb2", 4)
      stage.waitfor("fb2", function (key, r) logger.info("FB2 " .. tostring(r)) end)
    "#;
    let server = start(game, "");
    server.wait_log("FB2 ");
    server.wait_log("BC game hello");
    // Categories may live on different cores (one shard per core): no order between them.
    server.wait_log("FB ticket:nosuch=in?fb false");
    let log = server.log();
    assert_eq!(log.matches("FB ticket:room=in?fb @").count(), 2, "{log}");
    assert_eq!(
        log.matches("FB ticket:room=in?fb false").count(),
        1,
        "{log}"
    );
    assert!(log.contains("FB ticket:nosuch=in?fb false"), "{log}");
    assert!(log.contains("IN 1") && log.contains("IN 2"), "{log}");
    assert!(!log.contains("IN 3"), "{log}");
    assert!(log.contains("IN 4"), "{log}");
    assert!(log.contains("FB2 @"), "{log}");
    assert_eq!(log.matches("BC game hello").count(), 1, "{log}");
}

#[test]
fn a_hundred_requesters_never_hold_more_than_ten_slots() {
    // Two stages (two main cores) ask 50 times each for `odbc` (10 slots). Each grant holds
    // its slot for a little while on a timer, counting holders in the shared store, and
    // decrements before it releases.
    let requester = r#"
      stage.waitfor("work", function (n)
        local now = __("held", function (h) return (h or 0) + 1 end)
        __("max", function (m) if (m or 0) < now then return now end return m end)
        stage.addtask(20, function (t)
          __("held", function (h) return h - 1 end)
          stage.signal("ticket:" .. t, 0)
          local served = __("served", function (s) return (s or 0) + 1 end)
          if served == 100 then logger.info("SERVED " .. served .. " MAX " .. __.max) end
          return 0
        end, _TICKET)
      end)
      for n = 1, 50 do stage.signal("ticket:odbc=work", n) end
    "#;
    let server = start(requester, requester);
    server.wait_log("SERVED 100 MAX ");
    let log = server.log();
    let max: i64 = log
        .split("SERVED 100 MAX ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no maximum; log:\n{log}"));
    assert!((1..=10).contains(&max), "max held {max}; log:\n{log}");
    assert!(!log.contains("CANCEL"), "{log}");
}

#[test]
fn a_ticket_process_of_a_multi_process_node_grants_other_processes() {
    // Process 2 hosts only the ticket stage: the request, the grant and the release (the
    // granted handler's return value) cross processes.
    let config = r##"{ "#startup": [["lua.so+game"], ["=ticket+ticket"]],
          "lua.so": { "%package": ["."], "%reflush": 0, "game": "start" },
          "=ticket+ticket": [100, {"solo": 1}] }"##;
    let script = r#"
      stage.waitfor("mp", function (n)
        logger.info("MP " .. n .. " " .. tostring(_TICKET))
        if n == 1 then stage.signal("ticket:solo=mp", 2) end
        return 0
      end)
      -- Until the ticket process's first heartbeat arrives, the message has no receiver.
      stage.addtask(100, function ()
        if asked then return 0 end
        stage.signal("ticket:solo=mp?fbm", 1)
      end)
      stage.waitfor("fbm", function (key, r) asked = true end)
    "#;
    let server = Server::start(config, &[("start.lua", &listen_last(script))]);
    server.wait_log("MP 2 @");
    let log = server.log();
    assert!(log.contains("MP 1 @"), "{log}");
}

/// The `FB2 <key> <cb>=<result> ...` line of a batch feedback (entries sorted, `""` as `ud`).
const BATCH_FEEDBACK: &str = r#"
  stage.waitfor("fbb", function (key, map)
    local parts = {}
    for cb, r in pairs(map) do
      parts[#parts + 1] = (cb == "" and "ud" or cb) .. "=" .. (r == false and "false" or tostring(r):sub(1, 1))
    end
    table.sort(parts)
    logger.info("FBB " .. key .. " " .. table.concat(parts, " "))
  end)
"#;

#[test]
fn a_batch_request_grants_queues_or_refuses_each_entry_and_feeds_back_once() {
    // spec §3.3: `ticket:<cat>?fb` ← { cb = value, [""] = userdata }. In `pair` (two slots,
    // refusing) the entries `a`, `b` (sorted) are granted and `c` refused; in `solo` (one slot,
    // queueing) `q1` is granted and `q2` queued, then granted when `q1` releases. Each batch
    // gets one feedback `(request_key, { cb = "@id" | false, [""] = userdata })`; a batch
    // without `?fb` gets none.
    let game = format!(
        r#"{BATCH_FEEDBACK}
      stage.waitfor("a", function (v) logger.info("GRANT a " .. v .. " " .. _TICKET) stage.signal(nil, 60000) end)
      stage.waitfor("b", function (v) logger.info("GRANT b " .. v .. " " .. _TICKET) stage.signal(nil, 60000) end)
      stage.waitfor("c", function (v) logger.info("GRANT c " .. v) end)
      stage.waitfor("q1", function (v) logger.info("GRANT q1 " .. v) return 0 end)
      stage.waitfor("q2", function (v) logger.info("GRANT q2 " .. v) return 0 end)
      stage.waitfor("n1", function (v) logger.info("GRANT n1 " .. v) return 0 end)
      stage.signal("ticket:@pair", -2)
      stage.signal("ticket:pair?fbb", {{ a = "x", b = "y", c = "z", [""] = "ud" }})
      stage.signal("ticket:solo?fbb", {{ q1 = "one", q2 = "two" }})
      stage.signal("ticket:nosuch?fbb", {{ n1 = "none", [""] = 7 }})
      stage.signal("ticket:odbc", {{ n1 = "quiet" }})
    "#
    );
    let server = start(&game, "");
    server.wait_log("GRANT q2 two");
    server.wait_log("GRANT n1 quiet");
    server.wait_log("FBB ticket:nosuch?fbb ");
    let log = server.log();
    assert!(
        log.contains("FBB ticket:pair?fbb a=@ b=@ c=false ud=u"),
        "{log}"
    );
    // `q2` is queued: accepted, with a lease id.
    assert!(log.contains("FBB ticket:solo?fbb q1=@ q2=@"), "{log}");
    assert!(log.contains("FBB ticket:nosuch?fbb n1=false ud=7"), "{log}");
    assert!(
        log.contains("GRANT a x @") && log.contains("GRANT b y @"),
        "{log}"
    );
    assert!(!log.contains("GRANT c"), "{log}");
    assert!(!log.contains("GRANT n1 none"), "{log}");
    assert!(
        pos(&log, "GRANT q1 one") < pos(&log, "GRANT q2 two"),
        "{log}"
    );
    // One feedback per batch, none for the batch without `?fbb`.
    assert_eq!(log.matches("FBB ").count(), 3, "{log}");
    assert!(!log.contains("CANCEL"), "{log}");
}

#[test]
fn a_category_closes_after_its_close_ms_and_resizing_frees_waiters() {
    // `ticket:@shut` ← {2, close_ms}: two holders (extended to a minute) and one waiter. When
    // the category closes the waiter is cancelled (notice), the holders keep their leases, and
    // a request after the close is refused. `ticket:@grow` 1 → 2 grants its waiter at once.
    let game = r#"
      stage.waitfor("h", function (n) logger.info("HOLD " .. n) stage.signal(nil, 60000) end)
      stage.waitfor("w", function (n) logger.info("WAITER GRANTED " .. n) end)
      stage.waitfor("late", function (n) logger.info("LATE GRANTED " .. n) end)
      stage.waitfor("ticket:@", function (op, map)
        for id, cb in pairs(map) do
          logger.info("CANCEL " .. op .. " " .. cb .. " " .. id)
          if cb == "w" then stage.signal("ticket:shut=late?fb", 4) end
        end
      end)
      stage.signal("ticket:@shut", { 2, 1500 })
      stage.signal("ticket:shut=h?fb", 1)
      stage.signal("ticket:shut=h?fb", 2)
      stage.signal("ticket:shut=w?fb", 3)

      stage.waitfor("g", function (n)
        logger.info("GROW GRANT " .. n)
        stage.signal(nil, 60000)
      end)
      stage.waitfor("fbg", function (key, r)
        -- The second request is queued: now make room for it.
        if key == "ticket:grow=g?fbg" then stage.signal("ticket:@grow", 2) end
      end)
      stage.signal("ticket:@grow", 1)
      stage.signal("ticket:grow=g", 1)
      stage.signal("ticket:grow=g?fbg", 2)
    "#;
    let server = start(game, "");
    server.wait_log("FB ticket:shut=late?fb ");
    server.wait_log("GROW GRANT 2");
    let log = server.log();
    assert!(log.contains("HOLD 1") && log.contains("HOLD 2"), "{log}");
    assert_eq!(log.matches("FB ticket:shut=h?fb @").count(), 2, "{log}");
    // The waiter was accepted (queued) and cancelled by the close, never granted.
    assert!(log.contains("FB ticket:shut=w?fb @"), "{log}");
    assert!(log.contains("CANCEL cancel w @"), "{log}");
    assert!(!log.contains("WAITER GRANTED"), "{log}");
    // Holders keep their leases.
    assert!(!log.contains("CANCEL cancel h "), "{log}");
    assert!(log.contains("FB ticket:shut=late?fb false"), "{log}");
    assert!(!log.contains("LATE GRANTED"), "{log}");
    assert_eq!(log.matches("GROW GRANT").count(), 2, "{log}");
}

#[test]
fn the_queue_capacity_refuses_requests_beyond_it() {
    // `[3, {"one": 1}]`: at most 3 requests held or waiting in the whole service. Of five
    // requests to the 1-slot category, one is granted, two wait, and the last two are refused
    // (feedback `false`); when the holder releases, the first waiter is granted.
    let config = r##"{ "#startup": [["lua.so+game", "=ticket+ticket"]],
          "lua.so": { "%package": ["."], "%reflush": 0, "game": "start" },
          "=ticket+ticket": [3, {"one": 1}] }"##;
    let game = r#"
      stage.waitfor("held", function (n)
        logger.info("GRANT " .. n)
        if n == 1 then
          stage.addtask(200, function (t) stage.signal("ticket:" .. t, 0) return -1 end, _TICKET)
          return 5000
        end
      end)
      for n = 1, 5 do stage.signal("ticket:one=held?fb" .. n, n) end
      for n = 1, 5 do
        stage.waitfor("fb" .. n, function (key, r) logger.info("FEEDBACK " .. key .. " " .. tostring(r)) end)
      end
    "#;
    let server = Server::start(config, &[("start.lua", &listen_last(game))]);
    server.wait_log("GRANT 2");
    let log = server.log();
    for n in 1..=3 {
        assert!(
            log.contains(&format!("FEEDBACK ticket:one=held?fb{n} @")),
            "{log}"
        );
    }
    for n in 4..=5 {
        assert!(
            log.contains(&format!("FEEDBACK ticket:one=held?fb{n} false")),
            "{log}"
        );
    }
    assert!(pos(&log, "GRANT 1") < pos(&log, "GRANT 2"));
    assert!(
        !log.contains("GRANT 4") && !log.contains("GRANT 5"),
        "{log}"
    );
}

#[test]
fn categories_on_different_cores_keep_their_leases_apart() {
    use stage_engine::service::shard::{lease_owner, owner_of_name};
    use stage_engine::service::ticket::LeaseId;
    // Each category lives on the core its name hashes to (one ticket shard per core). Two
    // one-slot categories on different cores: the first holder of each extends its lease
    // from the granted callback, then releases it from a timer; the extension and the
    // release must reach the shard that issued the lease (no cancel at 1 s, and the waiter
    // is granted only after the release).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let name_on = |core: usize| {
        (0..1000)
            .map(|i| format!("room{i}"))
            .find(|n| owner_of_name(n, cores) == core % cores)
            .unwrap()
    };
    let (a, b) = (name_on(0), name_on(1));
    let game = format!(
        r#"
      stage.waitfor("first", function (cat)
        logger.info("FIRST " .. cat .. " " .. _TICKET)
        stage.signal(nil, 5000)
        stage.addtask(1500, function (t, c)
          logger.info("RELEASE " .. c)
          stage.signal("ticket:" .. t, 0)
          return 0
        end, _TICKET, cat)
      end)
      stage.waitfor("second", function (cat) logger.info("SECOND " .. cat) return 0 end)
      for _, cat in ipairs({{ "{a}", "{b}" }}) do
        stage.signal("ticket:@" .. cat, 1)
        stage.signal("ticket:" .. cat .. "=first", cat)
        stage.signal("ticket:" .. cat .. "=second", cat)
      end
    "#
    );
    let server = start(&game, "");
    server.wait_log(&format!("SECOND {a}"));
    server.wait_log(&format!("SECOND {b}"));
    let log = server.log();
    assert!(!log.contains("CANCEL"), "{log}");
    for (cat, core) in [(&a, 0), (&b, 1)] {
        assert!(
            pos(&log, &format!("RELEASE {cat}")) < pos(&log, &format!("SECOND {cat}")),
            "{log}"
        );
        let lease = log
            .split(&format!("FIRST {cat} "))
            .nth(1)
            .and_then(|r| LeaseId::parse(&r[..17]))
            .unwrap_or_else(|| panic!("no lease for {cat}; log:\n{log}"));
        assert_eq!(lease_owner(lease, cores), core % cores, "{log}");
    }
}

#[test]
fn withdrawal_shrinking_and_closing_with_limit_zero() {
    // `shr` (2 slots) is held twice; w1 and w2 wait. w1 withdraws with its lease id from the
    // feedback (`@<lease>` ← 0 on a waiting request). The category shrinks to 1 slot: the
    // holders keep their leases, and after the first release the slot is not handed on (one
    // is still held); after the second, w2 gets it. A limit of 0 closes the category: the
    // waiter w3 is cancelled at once and a later request is refused.
    let game = r#"
      held = {}
      stage.waitfor("hold", function (n) held[n] = _TICKET stage.signal(nil, 60000) end)
      stage.waitfor("w", function (n) logger.info("GRANT w" .. n) stage.signal(nil, 60000) end)
      stage.waitfor("wfb", function (key, r)
        logger.info("WFB " .. key .. " " .. tostring(r))
        if key:find("=w?wfb", 1, true) and r and not withdrawn then
          withdrawn = true
          stage.signal("ticket:" .. r, 0)
        end
      end)
      stage.signal("ticket:@shr", 2)
      stage.signal("ticket:shr=hold", 1)
      stage.signal("ticket:shr=hold", 2)
      stage.signal("ticket:shr=w?wfb", 1)
      stage.signal("ticket:shr=w", 2)
      step = 0
      stage.addtask(300, function ()
        step = step + 1
        if step == 1 then logger.info("SHRINK") stage.signal("ticket:@shr", 1)
        elseif step == 2 then logger.info("REL1") stage.signal("ticket:" .. held[1], 0)
        elseif step == 3 then logger.info("REL2") stage.signal("ticket:" .. held[2], 0)
        elseif step == 4 then stage.signal("ticket:shr=w", 3)
        elseif step == 5 then logger.info("CLOSE") stage.signal("ticket:@shr", 0)
        elseif step == 6 then stage.signal("ticket:shr=w?wfb", 4) return 0 end
        return 300
      end)
    "#;
    let server = start(game, "");
    server.wait_log("WFB ticket:shr=w?wfb false");
    let log = server.log();
    assert!(!log.contains("GRANT w1"), "w1 withdrew: {log}");
    assert!(pos(&log, "REL2") < pos(&log, "GRANT w2"), "{log}");
    assert!(pos(&log, "SHRINK") < pos(&log, "REL1"), "{log}");
    assert!(!log.contains("GRANT w3"), "{log}");
    assert!(pos(&log, "CLOSE") < pos(&log, "CANCEL cancel w "), "{log}");
    assert_eq!(
        log.matches("CANCEL").count(),
        1,
        "only w3 is cancelled: {log}"
    );
}
