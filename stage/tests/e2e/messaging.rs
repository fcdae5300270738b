//! Messages between stages inside one process: the seed's request-with-timeout idiom (both
//! outcomes), the target grammar, handler matching and replies, timers, jobs, `stage.once`
//! and the ordered locks. Two stages on two cores exercise the cross-core path.
//!
//! The handlers, timers and jobs log what ran and with what; the tests wait for and read
//! those lines: they are the results under test. Readiness comes from round trips.

use std::io::Write;

use crate::harness::*;

/// Stages `a` (main script a.lua) and `b` (b.lua) in one process, one per core.
fn two_stages() -> String {
    r##"{ "#startup": [["lua.so+a", "lua.so+b"]],
          "lua.so": { "%package": ["."], "%reflush": 0, "a": "a", "b": "b" } }"##
        .to_string()
}

/// A packet listener in stage `a` that runs `body` (with `s`, `data`) for every packet.
fn listener(body: &str) -> String {
    format!(
        "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
           return function (s, data) {body} end
         end)"
    )
}

#[test]
fn the_seed_request_with_timeout_idiom_answers_in_time_or_cancels() {
    // The seed's "추가" example as written (with `..` for its `...` typo), started from a
    // receive callback; the responder answers only when asked to.
    let requester = listener(
        r#"
        local id = stage.waitfor(function (self, ...) -- register waitfor
           local args = {...}
           if _WAITFOR ~= nil then
              logger.info("answered " .. tostring(args[1]))
              stage.waitfor(_WAITFOR[-1], nil) -- unregister
           elseif args[1] == "CANCEL" then
              logger.info("cancelled " .. tostring(self))
           end
        end, { "request-context" })

        stage.addtask(100, function (id)
           local f, args = stage.waitfor(id)
           if f ~= nil then
              stage.call(f, args, "CANCEL")
              stage.waitfor(id, nil) -- unregister waitfor
           end
        end, id)

        stage.signal("request=" .. id, data.mode)
        return { id = id }
        "#,
    );
    let responder = r#"
        stage.waitfor("request", function (self, mode) -- register waitfor
           if mode == "answer" then return "pong" end
        end, { "responder-context" })
    "#;
    let server = Server::start(
        &config(""),
        &[("start.lua", &format!("{responder}\n{requester}"))],
    );
    let mut client = server.connect();
    client
        .write_all(&message("ask", &[("mode", Bson::str("answer"))]))
        .unwrap();
    read_reply(&mut client);
    server.wait_log("answered pong");
    client
        .write_all(&message("ask", &[("mode", Bson::str("silent"))]))
        .unwrap();
    read_reply(&mut client);
    server.wait_log("cancelled request-context");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = server.log();
    assert_eq!(log.matches("cancelled").count(), 1, "{log}");
    assert_eq!(log.matches("answered").count(), 1, "{log}");
}

#[test]
fn signals_route_between_stages_on_different_cores_with_replies() {
    let a = format!(
        "{}\n{}",
        r#"
        stage.waitfor("probed", function () __.b_ready = true end)
        stage.waitfor("got", function (...) logger.info("a got " .. table.concat({...}, ",")) end)
        stage.waitfor("named", function (v) logger.info("a named " .. tostring(v)) end)
        stage.waitfor("b:hello", function (v) logger.info("a heard from b " .. v) end)
        stage.waitfor("local", function (v) logger.info("a sync " .. v .. " " .. tostring(_WAITFOR[-1])) end)
        stage.waitfor("late", function () logger.info("a late") end)
        "#,
        listener(
            r#"
            if data.message == "probe" then             -- readiness: b has its handlers
              stage.signal("b:echo=probed", 1)
              return { ready = __.b_ready == true }
            end
            if data.message == "go" then
              stage.signal("b:echo=got", 1, 2, 3)       -- reply comes back as `got`
              stage.signal("b:double=named", 21)        -- handler's return value -> `named`
              stage.signal("b:group.x.y", "prefix")     -- prefix fallback on b
              stage.signal("b:nobody", "catch")          -- catch-all on b
              stage.signal("*b:all", "everyone")
              stage.signal(":local", "now")              -- synchronous, on this core
              stage.signal({"b:late=late", -100})        -- already past its deadline: dropped
              stage.signal("b:", { m1 = "multi-1", m2 = "multi-2" })
            end
            return { ok = true }
            "#,
        )
    );
    let b = r#"
        stage.signal("a+hello", "hi")   -- arrives at a as "b:hello"
        return {
          echo = function (...) return ... end,
          double = function (n) stage.signal(nil, n * 2) end,
          ["group."] = function (v) logger.info("b prefix " .. v .. " via " .. _WAITFOR[-1]) end,
          ["@"] = function (v) logger.info("b catch-all " .. tostring(v) .. " for " .. _WAITFOR[0]) end,
          all = function (v) logger.info("b all " .. v) end,
          m1 = function (v) logger.info("b " .. v) end,
          m2 = function (v) logger.info("b " .. v) end,
          late = function () logger.info("b late") return 1 end,
        }
    "#;
    let server = Server::start(&two_stages(), &[("a.lua", &a), ("b.lua", b)]);
    server.wait_reply("stage b answers stage a", &message("probe", &[]), |v| {
        v.get("ready") == Some(&Bson::Bool(true))
    });
    let mut client = server.connect();
    client.write_all(&message("go", &[])).unwrap();
    read_reply(&mut client);
    // The handlers log what reached them: these lines are the routing under test.
    for line in [
        "a heard from b hi",
        "a got 1,2,3",
        "a named 42",
        "b prefix prefix via group.",
        "b catch-all catch for nobody",
        "b all everyone",
        "a sync now local",
        "b multi-1",
        "b multi-2",
    ] {
        server.wait_log(line);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!server.log().contains("late"), "{}", server.log());
}

#[test]
fn addtask_repeats_reschedules_and_cancels() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            r#"
            broker.ready('tcp://127.0.0.1:PORT', function () return true end)
            n_repeat, n_once, n_stop = 0, 0, 0
            -- nil return with a positive delay: repeats every 50 ms
            local rep = stage.addtask(50, function () n_repeat = n_repeat + 1; logger.info("repeat " .. n_repeat) end)
            -- -1 stops after the first run
            stage.addtask(50, function () n_once = n_once + 1; logger.info("once " .. n_once); return -1 end)
            -- a returned number reschedules; a number <= 0 stops
            stage.addtask(function (limit)
              n_stop = n_stop + 1; logger.info("counted " .. n_stop)
              if n_stop < limit then return 20 end
              return 0
            end, 3)
            stage.addtask(180, function (handle)
              logger.info("cancel " .. tostring(stage.addtask(handle, nil)))
              logger.info("cancel again " .. tostring(stage.addtask(handle, nil)))
              return -1
            end, rep)
            "#,
        )],
    );
    server.wait_log("counted 3");
    server.wait_log("repeat 3");
    server.wait_log("cancel true");
    server.wait_log("cancel again false");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = server.log();
    assert!(!log.contains("once 2"), "{log}");
    assert!(!log.contains("counted 4"), "{log}");
    let repeats = log.matches("repeat ").count();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        server.log().matches("repeat ").count(),
        repeats,
        "still repeating after cancel"
    );
}

#[test]
fn submitted_jobs_with_one_id_run_in_order_and_numbers_rerun_them() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            &listener(
                r#"
                for i = 1, 50 do
                  stage.submit(7, function (n) logger.info("job " .. n .. " on ordered") end, i)
                end
                stage.submit(function (x) logger.info("free job " .. x) end, "x")
                stage.submit(0, function (t)
                  t.n = (t.n or 0) + 1
                  logger.info("rerun " .. t.n)
                  if t.n < 3 then return 10 end
                end, {})
                return { ok = true }
                "#,
            ),
        )],
    );
    let mut client = server.connect();
    client.write_all(&message("go", &[])).unwrap();
    read_reply(&mut client);
    server.wait_log("job 50 on ordered");
    server.wait_log("free job x");
    let log = server.log();
    let order: Vec<usize> = log
        .lines()
        .filter_map(|l| {
            l.split("job ")
                .nth(1)?
                .split(" on ordered")
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(order, (1..=50).collect::<Vec<_>>());
    // The job's arguments are a copy: each re-run starts from the submitted value.
    server.wait_log_count("rerun 1", 3);
}

#[test]
fn once_guards_setup_in_a_module_loaded_by_every_packet() {
    // spec/stage.md §11 idiom 6.
    let second = free_port();
    let server = Server::start(
        &config(""),
        &[
            (
                "start.lua",
                &listener("stage.load('setup') return { ok = true }"),
            ),
            (
                "setup.lua",
                &format!(
                    "stage.once('#1', function ()
                       logger.info('opening second listener')
                       broker.ready('tcp://127.0.0.1:{second}?text=1k,1k', function ()
                         return function (s, line) return 'second ' .. line end
                       end)
                     end)"
                ),
            ),
        ],
    );
    let mut client = server.connect();
    for _ in 0..5 {
        client.write_all(&message("x", &[])).unwrap();
        read_reply(&mut client);
    }
    server.wait_ready_port(second);
    let mut other = std::net::TcpStream::connect(("127.0.0.1", second)).unwrap();
    other.write_all(b"hi\n").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(other), &mut line).unwrap();
    assert_eq!(line, "second hi\n");
    assert_eq!(server.log().matches("opening second listener").count(), 1);
}

#[test]
fn ordered_locks_grant_one_holder_at_a_time() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            r#"
            broker.ready('tcp://127.0.0.1:PORT', function () return true end)
            stage.waitfor("first", function (v)
              logger.info("granted " .. v)
              stage.addtask(30, function () logger.info("release " .. "first"); stage.signal("<L.*"); return -1 end)
            end)
            stage.waitfor("second", function (v) logger.info("granted " .. v) end)
            stage.signal(">L.first", "A")
            stage.signal(">L.second", "B")
            "#,
        )],
    );
    server.wait_log("granted B");
    let log = server.log();
    let a = log.find("granted A").unwrap();
    let release = log.find("release first").unwrap();
    let b = log.find("granted B").unwrap();
    assert!(a < release && release < b, "{log}");
}

#[test]
fn a_core_draining_a_long_backlog_still_runs_its_timers() {
    // `a` (core 0) queues 20000 messages for `b` (core 1) at once; each takes `b` about
    // 50 µs, so the backlog lasts about a second. `b`'s 50 ms timer must keep ticking while
    // it drains: a core hands out turns between queued messages.
    let a = format!(
        r#"{}
        stage.addtask(200, function ()
          for i = 1, 20000 do stage.signal("b:work", i) end
          return 0
        end)"#,
        listener("return data")
    );
    let b = r#"
        stage.waitfor("work", function (i)
          if i == 1 then logger.info("FIRST") end
          local t = os.clock()
          while os.clock() - t < 0.00005 do end
          if i == 20000 then logger.info("LAST") end
        end)
        stage.addtask(50, function () logger.info("TICK") end)
    "#;
    let server = Server::start(&two_stages(), &[("a.lua", &a), ("b.lua", b)]);
    server.wait_log("LAST");
    let log = server.log();
    let (first, last) = (log.find("FIRST").unwrap(), log.find("LAST").unwrap());
    let ticks = log[first..last].matches("TICK").count();
    assert!(ticks >= 3, "{ticks} ticks while draining; log:\n{log}");
}
