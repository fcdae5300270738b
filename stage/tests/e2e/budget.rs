//! The CPU budget of a Lua callback (`%cpu`, issue #12): a callback that loops forever is
//! interrupted with a Lua error in that callback only, and its core goes on serving its other
//! connections and stages; `%cpu: 0` turns the budget off.

use std::io::Write;

use crate::harness::*;

/// One core, so that the runaway callback and the other clients share it.
fn one_core(extra: &str) -> String {
    format!(
        r##"{{ "#threads": 1, "#startup": [["lua.so+stage"]],
              "lua.so": {{ "%package": ["."], "%reflush": 0, "lua.so+stage": "start" {extra} }} }}"##
    )
}

fn reply_message(stream: &mut std::net::TcpStream) -> Option<String> {
    read_reply(stream)
        .get("message")
        .and_then(Bson::as_str)
        .map(String::from)
}

#[test]
fn a_runaway_receive_callback_is_interrupted_and_the_core_serves_on() {
    let server = Server::start(
        &one_core(""),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 if data.message == 'spin' then
                   logger.info('spinning')
                   while true do end
                 end
                 return data
               end
             end)",
        )],
    );
    let mut runaway = server.connect();
    let mut other = server.connect();
    other.write_all(&message("before", &[])).unwrap();
    assert_eq!(reply_message(&mut other).as_deref(), Some("before"));
    runaway.write_all(&message("spin", &[])).unwrap();
    server.wait_log("spinning");
    // Queued behind the loop on the same core: answered once the budget ends it.
    other.write_all(&message("during", &[])).unwrap();
    assert_eq!(reply_message(&mut other).as_deref(), Some("during"));
    // The interrupted callback committed nothing, like any failing callback, and its
    // connection stays open and served.
    runaway.write_all(&message("after", &[])).unwrap();
    assert_eq!(reply_message(&mut runaway).as_deref(), Some("after"));
    let log = server.log();
    let failed = log
        .lines()
        .find(|l| l.contains("receive callback failed"))
        .unwrap_or_else(|| panic!("no callback error logged; log:\n{log}"));
    assert!(
        failed.contains("start.lua:5: CPU budget of 500 ms exceeded"),
        "{failed}"
    );
    assert!(log.contains("stack traceback"), "{log}");
    assert!(
        log.contains("ran past its CPU budget of 500 ms (%cpu) and was interrupted"),
        "{log}"
    );
}

#[test]
fn a_runaway_timer_or_idle_function_is_interrupted_and_the_stage_answers() {
    let server = Server::start(
        &one_core(r#", "%cpu": 100"#),
        &[(
            "start.lua",
            "__.ticks, __.idles = 0, 0
             stage.addtask(50, function ()
               __.ticks = __.ticks + 1
               if __.ticks == 1 then
                 logger.info('timer spins')
                 local n = 0
                 while true do n = n + 1 end
               end
             end)
             broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 return { message = data.message, ticks = __.ticks, idles = __.idles }
               end
             end)
             return function ()
               __.idles = __.idles + 1
               if __.idles == 2 then
                 logger.info('idle spins')
                 while true do end
               end
               return 20
             end",
        )],
    );
    server.wait_log("timer spins");
    server.wait_log("idle spins");
    // Each failed like any callback that raises: logged under its name, with the location.
    server.wait_log("addtask function failed: start.lua:7: CPU budget of 100 ms exceeded");
    server.wait_log("idle function failed: start.lua:19: CPU budget of 100 ms exceeded");
    // The stage answers, and its timer keeps ticking; the idle function, like any idle
    // function that fails, is not called again.
    let v = server.wait_reply(
        "the stage answers and its timer ticks on",
        &message("ping", &[]),
        |v| v.get("ticks").and_then(Bson::as_i64) > Some(2),
    );
    assert_eq!(v.get("message").and_then(Bson::as_str), Some("ping"));
    assert_eq!(v.get("idles").and_then(Bson::as_i64), Some(2));
}

#[test]
fn cpu_zero_lets_a_long_callback_finish() {
    let server = Server::start(
        &one_core(r#", "%cpu": 0"#),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 local t = os.clock()
                 while os.clock() - t < 1.5 do end
                 return { message = 'finished' }
               end
             end)",
        )],
    );
    let mut client = server.connect();
    client.write_all(&message("long", &[])).unwrap();
    assert_eq!(reply_message(&mut client).as_deref(), Some("finished"));
    assert!(!server.log().contains("exceeded"), "{}", server.log());
}

#[test]
fn a_budget_above_two_seconds_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stage.json"), one_core(r#", "%cpu": 5000"#)).unwrap();
    std::fs::write(dir.path().join("start.lua"), "").unwrap();
    let (code, _, err) = run_stage(dir.path(), &["-c", "stage.json"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("key `lua.so.%cpu`: 5000 ms is out of range: expected 0 (no budget) to 2000"),
        "{err}"
    );
}
