//! `thread.new` runs blocking work on the pool, never on a core: signals and results come
//! back to the caller's handler in order, and clients keep being served meanwhile. Also the
//! `bundle` library as scripts reach it (`bundle.*` and `stage.*`).
//!
//! The first test's handler logs each value it gets from the thread: those lines are the
//! results under test.

use std::io::Write;
use std::time::Instant;

use crate::harness::*;

#[test]
fn thread_values_and_results_reach_the_waitfor_handler_in_order() {
    // spec/stage.md §11 idiom 4 (the §3.9 example).
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            r#"
            broker.ready('tcp://127.0.0.1:PORT', function () return true end)
            secret = "main-global"
            thread.new(function (a, b)
              thread.signal("progress", 50)
              thread.signal("sees", tostring(secret), type(thread.id), type(thread.tick))
              return a + b
            end, 2, 3).waitfor(function (tag, ...)
              logger.info("from worker: " .. tag .. " " .. table.concat({...}, " "))
            end, "T")
            local ok, err = pcall(thread.signal, 1)
            logger.info("outside a thread: " .. tostring(err))
            "#,
        )],
    );
    server.wait_log("from worker: T 5");
    let log = server.log();
    let progress = log
        .find("from worker: T progress 50")
        .expect("progress value");
    let sees = log
        .find("from worker: T sees nil number number")
        .expect("thread globals");
    let result = log.find("from worker: T 5").unwrap();
    assert!(progress < sees && sees < result, "{log}");
    assert!(
        log.contains("outside a thread: Thread is not in use"),
        "{log}"
    );
}

#[test]
fn a_thread_sleeping_one_second_does_not_delay_other_clients() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            r#"
            broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
              return function (s, data)
                if data.message == "slow" then
                  thread.new(function ()
                    os.execute("sleep 1")
                    return "slept"
                  end).waitfor(function (id, result)
                    broker.f(id).commit({ message = "slow", result = result })
                  end, s.id)
                  return nil
                end
                return data
              end
            end)
            "#,
        )],
    );
    let mut slow = server.connect();
    let mut fast = server.connect();
    let started = Instant::now();
    slow.write_all(&message("slow", &[])).unwrap();
    // Round trips on another connection while the thread sleeps: every one is answered.
    let mut answered = 0;
    for n in 0..20 {
        fast.write_all(&message("ping", &[("n", Bson::Int32(n))]))
            .unwrap();
        let reply = read_reply(&mut fast);
        assert_eq!(reply.get("n").and_then(Bson::as_i64), Some(n as i64));
        answered += 1;
    }
    // The thread is still sleeping: its reply has not been sent yet. (Had the sleep run on
    // a core, the fast client's replies would have waited for it, and so would this check.)
    slow.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let pending = slow.peek(&mut byte);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slow reply came before the fast client finished: {pending:?}"
    );
    slow.set_nonblocking(false).unwrap();
    let reply = read_reply(&mut slow);
    assert_eq!(reply.get("result").and_then(Bson::as_str), Some("slept"));
    assert_eq!(answered, 20);
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
}

#[test]
fn bundle_functions_are_reachable_as_bundle_and_stage() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 local r1, r2 = { [''] = 7 }, { [''] = 7 }
                 local doc = bundle.json('{\"a\": [1, 2, {\"b\": \"c\"}]}')
                 return {
                   json = stage.json({ x = 1 }),
                   nested = doc.a[3].b,
                   same_random = bundle.random(r1, 1, 1000) == stage.random(r2, 1, 1000),
                   bson = bundle.bson(bundle.bson({ k = 'v' })).k,
                 }
               end
             end)",
        )],
    );
    let mut client = server.connect();
    client.write_all(&message("x", &[])).unwrap();
    let reply = read_reply(&mut client);
    assert_eq!(reply.get("json").and_then(Bson::as_str), Some(r#"{"x":1}"#));
    assert_eq!(reply.get("nested").and_then(Bson::as_str), Some("c"));
    assert_eq!(reply.get("same_random"), Some(&Bson::Bool(true)));
    assert_eq!(reply.get("bson").and_then(Bson::as_str), Some("v"));
}
