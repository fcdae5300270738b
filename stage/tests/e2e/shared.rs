//! Process-wide shared state: `__` atomic updates from jobs on every core, `_SANDBOX`
//! shared and read-only globals seen by jobs and threads, numbered namespaces, `process`.
//!
//! The scripts log what they and their jobs and threads see; the tests wait for and read
//! those lines: they are the results under test, not readiness.

use std::io::Write;

use crate::harness::*;

#[test]
fn ten_thousand_concurrent_increments_end_at_exactly_ten_thousand() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            r#"
            broker.ready('tcp://127.0.0.1:PORT', function () return true end)
            for i = 1, 10000 do
              stage.submit(0, function ()
                __("n", function (old) return (old or 0) + 1 end)
              end)
            end
            stage.addtask(20, function ()
              if __.n == 10000 then logger.info("counter reached " .. __.n) return -1 end
            end)
            "#,
        )],
    );
    server.wait_log("counter reached 10000");
    // Jobs ran on every core (round-robin), so the updates really were concurrent.
    let log = server.log();
    assert!(!log.contains("failed"), "{log}");
}

#[test]
fn sandbox_names_are_shared_with_jobs_and_threads_and_read_only_names_stay_put() {
    // spec/stage.md §11 idiom 5, plus read-only values, functions and namespaces.
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            r#"
            broker.ready('tcp://127.0.0.1:PORT', function () return true end)
            _SANDBOX[""] = { "*X", "*hello", ["*LIMIT"] = 10 }
            X = 42
            hello = function (who) return "hello " .. who end
            local ok, err = pcall(function () LIMIT = 11 end)
            logger.info("assign read-only: " .. tostring(err))
            __[1].score = { top = 7 }
            stage.submit(0, function ()
              logger.info("job sees X=" .. tostring(X) .. " LIMIT=" .. tostring(LIMIT)
                .. " " .. hello("job") .. " score=" .. tostring(__[1].score.top))
              X = X + 1
            end)
            thread.new(function () return X, LIMIT end).waitfor(function (x, limit)
              logger.info("thread saw X=" .. tostring(x) .. " LIMIT=" .. tostring(limit))
            end)
            stage.addtask(100, function ()
              logger.info("main sees X=" .. tostring(X))
              return -1
            end)
            "#,
        )],
    );
    server.wait_log("job sees X=42 LIMIT=10 hello job score=7");
    server.wait_log("main sees X=43");
    server.wait_log("LIMIT=10");
    let log = server.log();
    assert!(log.contains("assign read-only: "), "{log}");
    assert!(log.contains("`LIMIT` is read only"), "{log}");
    assert!(log.contains("thread saw X="), "{log}");
}

#[test]
fn a_nested_store_access_inside_an_update_is_an_error_not_a_deadlock() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            r#"
            broker.ready('tcp://127.0.0.1:PORT', function () return true end)
            local ok, err = pcall(__, "a", function (old) return __.b end)
            logger.info("nested: " .. tostring(ok) .. " " .. tostring(err))
            __.after = "store still works"
            logger.info(__.after)
            "#,
        )],
    );
    server.wait_log("store still works");
    assert!(server.log().contains("nested: false"), "{}", server.log());
}

#[test]
fn the_process_object_describes_this_process() {
    let mut server = Server::start(
        &config(", \"custom\": \"from-config\""),
        &[(
            "start.lua",
            r#"
            broker.ready('tcp://127.0.0.1:PORT', function () return true end)
            logger.info("pid " .. process.id)
            logger.info("program " .. tostring(process.args[0] ~= nil) .. " stage " .. process.stage)
            logger.info("env " .. tostring(process["%STAGE_LOG"]))
            logger.info("config " .. tostring(process["$custom"]) .. " " .. tostring(process["$"]["%reflush"]))
            logger.info("tick " .. type(process.tick))
            process.title = "stage-test"
            "#,
        )],
    );
    let pid = server.child.as_ref().unwrap().id();
    server.wait_log(&format!("pid {pid}"));
    server.wait_log("program true stage 1");
    server.wait_log("env debug");
    server.wait_log("config from-config 0");
    server.wait_log("tick number");
    // The title is set right after the last line: give /proc until it shows it.
    let comm = || {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim()
            .to_string()
    };
    poll(READY, || (comm() == "stage-test").then_some(()));
    assert_eq!(comm(), "stage-test");
    assert!(server.stop().success());
}

#[test]
fn scripts_change_the_environment_and_config_they_read_through_process() {
    // Assignments made on the main core are seen by a receive callback on any core.
    let mut server = Server::start(
        &config(", \"custom\": \"from-config\""),
        &[(
            "start.lua",
            r#"
            process["%STAGE_TEST_GREETING"] = "hello"
            process["%STAGE_LOG"] = nil
            process["$custom"] = '{"level": 7}'
            process["$added"] = '[1, 2]'
            local ok, err = pcall(function () process["$bad"] = "{nope" end)
            logger.info("bad json: " .. tostring(ok) .. " " .. tostring(err))
            ok, err = pcall(function () process["$"] = "[1]" end)
            logger.info("bad block: " .. tostring(ok))
            ok, err = pcall(function () process.id = 1 end)
            logger.info("bad key: " .. tostring(ok))
            broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
              return function (s, data)
                return {
                  greeting = process["%STAGE_TEST_GREETING"],
                  log = process["%STAGE_LOG"] or "unset",
                  level = process["$custom"].level,
                  added = #process["$added"],
                }
              end
            end)
            "#,
        )],
    );
    server.wait_log("bad key: false");
    let log = server.log();
    assert!(log.contains("bad json: false"), "{log}");
    assert!(log.contains("not valid JSON"), "{log}");
    assert!(log.contains("bad block: false"), "{log}");
    for _ in 0..4 {
        let mut s = server.connect();
        s.write_all(&message("x", &[])).unwrap();
        let v = read_reply(&mut s);
        assert_eq!(v.get("greeting").and_then(Bson::as_str), Some("hello"));
        assert_eq!(v.get("log").and_then(Bson::as_str), Some("unset"));
        assert_eq!(v.get("level").and_then(Bson::as_i64), Some(7));
        assert_eq!(v.get("added").and_then(Bson::as_i64), Some(2));
    }
    assert!(server.stop().success());
}
