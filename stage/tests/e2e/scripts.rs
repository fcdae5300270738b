//! Script behaviour users rely on: errors cost nothing but the call, idle sockets expire,
//! package files reload without a restart, callbacks lose their upvalues when they cross
//! into another core, the sandbox holds, connections spread over cores, joins work.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use crate::harness::*;

#[test]
fn a_lua_error_in_a_receive_callback_is_logged_and_costs_nothing_else() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 if data.message == 'boom' then error('kaboom in handler') end
                 return data
               end
             end)",
        )],
    );
    let mut bad = server.connect();
    let mut good = server.connect();
    bad.write_all(&message("boom", &[])).unwrap();
    server.wait_log("kaboom in handler");
    assert!(server.log().contains("stack traceback"), "{}", server.log());
    for client in [&mut good, &mut bad] {
        client.write_all(&message("ok", &[])).unwrap();
        assert_eq!(
            read_reply(client).get("message").and_then(Bson::as_str),
            Some("ok")
        );
    }
}

#[test]
fn an_idle_socket_is_closed_after_expire_with_etimedout() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "local l = broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function () return true end)
             l.expire = 300
             l.close = function (s, errno) logger.info('closed errno ' .. errno) end",
        )],
    );
    let mut client = server.connect();
    assert!(is_closed(&mut client));
    // The close callback logs the errno it got: ETIMEDOUT is what is asserted.
    server.wait_log(&format!("closed errno {}", libc::ETIMEDOUT));
}

#[test]
fn an_edited_package_file_is_picked_up_without_a_restart() {
    let server = Server::start(
        &config(""),
        &[
            (
                "start.lua",
                "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
                   return function (s, data)
                     return stage.load('packet+' .. data.message, function (f) return f(s, data) end)
                   end
                 end)",
            ),
            ("packet.lua", "return { version = function () return { v = 1 } end }"),
        ],
    );
    let mut client = server.connect();
    client.write_all(&message("version", &[])).unwrap();
    assert_eq!(
        read_reply(&mut client).get("v").and_then(Bson::as_i64),
        Some(1)
    );
    std::fs::write(
        server.path("packet.lua"),
        "return { version = function () return { v = 2 } end }",
    )
    .unwrap();
    // The reloader thread notices it within `%reflush` (0 here: its shortest period) and
    // switches the cores (`e2e::reload` tests that they switch together).
    let version = |reply: &Bson| reply.get("v").and_then(Bson::as_i64);
    let reply = server.wait_reply("the edited script answers", &message("version", &[]), |r| {
        version(r) == Some(2)
    });
    assert_eq!(version(&reply), Some(2));
}

#[test]
fn callbacks_are_recreated_without_upvalues_and_the_sandbox_holds() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "local secret = 'upvalue'
             broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 return {
                   upvalue = tostring(secret),
                   ffi = tostring((pcall(require, 'ffi'))),
                   jit = type(jit),
                   getinfo = type(debug.getinfo),
                   bytecode = tostring(load(string.dump(function () end)) ~= nil),
                   text = tostring(load('return 1')()),
                 }
               end
             end)",
        )],
    );
    let mut client = server.connect();
    client.write_all(&message("x", &[])).unwrap();
    let reply = read_reply(&mut client);
    let field = |k: &str| reply.get(k).and_then(Bson::as_str).map(str::to_string);
    assert_eq!(field("upvalue").as_deref(), Some("nil"));
    assert_eq!(field("ffi").as_deref(), Some("false"));
    assert_eq!(field("jit").as_deref(), Some("nil"));
    assert_eq!(field("getinfo").as_deref(), Some("nil"));
    assert_eq!(field("bytecode").as_deref(), Some("false"));
    assert_eq!(field("text").as_deref(), Some("1"));
}

#[test]
fn connections_spread_over_every_core() {
    // One core per CPU of the affinity mask (`#threads` says so explicitly): every core
    // accepts on the port (SO_REUSEPORT), so enough connections reach each of them. Socket
    // ids carry their owning core in the low byte.
    let cores = affinity_cpus();
    if cores < 2 {
        println!("skipped: connections cannot spread over cores on a one-CPU machine");
        return;
    }
    let server = Server::start(
        &format!(
            r##"{{ "#threads": {cores}, "#startup": [["lua.so+stage"]],
                  "lua.so": {{ "%package": ["."], "%reflush": 0, "lua.so+stage": "start" }} }}"##
        ),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data) return { id = s.id } end
             end)",
        )],
    );
    let every: HashSet<i64> = (0..cores as i64).collect();
    let mut owners = HashSet::new();
    // The kernel hashes each connection to one core's listener; the other cores start
    // listening a moment after the port first accepts. Connect until every core has
    // answered (or the time is up: the assertion below then names the missing ones).
    poll(READY, || {
        let mut client = server.connect();
        client.write_all(&message("id", &[])).unwrap();
        let id = read_reply(&mut client)
            .get("id")
            .and_then(Bson::as_i64)
            .unwrap();
        owners.insert(id & 0xFF);
        every.is_subset(&owners).then_some(())
    });
    assert_eq!(owners, every, "owner cores of the connections");
}

#[test]
fn join_connects_out_and_both_sides_talk() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?text=1k,1k', function ()
               return function (s, line) return 'pong ' .. line end
             end)
             local c = broker.join('tcp://127.0.0.1:PORT?text=1k,1k', function (s, peer)
               logger.info('joined ' .. broker.ntoa(peer))
               s.commit('ping\\n')
             end)
             c.receive = function (s, line) logger.info('client got ' .. line) end",
        )],
    );
    // Both ends of the joined connection are in the script: the connect callback and the
    // outgoing socket's receive callback log what they saw.
    server.wait_log("joined 127.0.0.1:");
    server.wait_log("client got pong ping");
}

#[test]
fn a_failed_join_runs_the_close_callback_with_the_error() {
    let closed = free_port();
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            &format!(
                "broker.ready('tcp://127.0.0.1:PORT', function () return true end)
                 local c = broker.join('tcp://127.0.0.1:{closed}', function () logger.info('unexpected') end, 500)
                 c.close = function (s, errno) logger.info('join failed errno ' .. errno) end"
            ),
        )],
    );
    // The close callback of the failed join logs the errno it got.
    server.wait_log(&format!("join failed errno {}", libc::ECONNREFUSED));
}

#[test]
fn the_idle_function_is_rescheduled_by_its_return_value() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT', function () return true end)
             count = 0
             return function ()
               count = count + 1
               logger.info('idle call ' .. count)
               if count < 3 then return 50 end
               return 0
             end",
        )],
    );
    // The idle function logs each call: their number is what is asserted.
    server.wait_log("idle call 3");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!server.log().contains("idle call 4"), "{}", server.log());
}

#[test]
fn unsupported_calls_fail_with_a_clear_error_not_a_crash() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 local ok, err = pcall(function () s.crypto = { ZLIB = 'secret key' } end)
                 local ok2, err2 = pcall(broker.join, 'udp://127.0.0.1:1', function () end)
                 return { crypto = tostring(err), udp = tostring(err2) }
               end
             end)",
        )],
    );
    let mut client = server.connect();
    client.write_all(&message("x", &[])).unwrap();
    let reply = read_reply(&mut client);
    let crypto = reply.get("crypto").and_then(Bson::as_str).unwrap();
    assert!(crypto.contains("unknown cipher `ZLIB`"), "{crypto}");
    let udp = reply.get("udp").and_then(Bson::as_str).unwrap();
    assert!(udp.contains("Unsupported type"), "{udp}");
}

#[test]
fn socket_objects_expose_their_fields_and_keep_user_data() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function (s, addr)
               s.player = { name = 'bob' }
               return function (s, data)
                 s('hits', function (old) return (old or 0) + 1 end)
                 local ok = pcall(function () s.id = 5 end)
                 return {
                   same_id = s.id == s[0],
                   peer = broker.ntoa(s[1]),
                   ['local'] = broker.ntoa(s[-1]),
                   errno = s.errno,
                   player = s.player.name,
                   hits = s.hits,
                   id_read_only = not ok,
                   found = broker.f(s.id) == s,
                 }
               end
             end)",
        )],
    );
    let mut client = server.connect();
    for hits in 1..=2 {
        client.write_all(&message("x", &[])).unwrap();
        let reply = read_reply(&mut client);
        assert_eq!(reply.get("same_id"), Some(&Bson::Bool(true)));
        let peer = client.local_addr().unwrap().to_string();
        assert_eq!(
            reply.get("peer").and_then(Bson::as_str),
            Some(peer.as_str())
        );
        let local = format!("127.0.0.1:{}", server.port);
        assert_eq!(
            reply.get("local").and_then(Bson::as_str),
            Some(local.as_str())
        );
        assert_eq!(reply.get("errno").and_then(Bson::as_i64), Some(0));
        assert_eq!(reply.get("player").and_then(Bson::as_str), Some("bob"));
        assert_eq!(reply.get("hits").and_then(Bson::as_i64), Some(hits));
        assert_eq!(reply.get("id_read_only"), Some(&Bson::Bool(true)));
        assert_eq!(reply.get("found"), Some(&Bson::Bool(true)));
    }
}

#[test]
fn the_peer_address_reaches_the_accept_callback_and_outlives_the_connection() {
    // An open connection's socket object does not hold its peer (it is asked for on first
    // use, BENCHMARKS.md "Memory per idle connection"); the close callback must still see
    // it, and a later client must be able to read what it saw. One core, so every client
    // meets the same Lua state; callbacks travel as bytecode, so what they share is in `__`.
    let server = Server::start(
        r##"{ "#threads": 1, "#startup": [["lua.so+stage"]],
              "lua.so": { "%package": ["."], "%reflush": 0, "lua.so+stage": "start" } }"##,
        &[(
            "start.lua",
            "local l = broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function (s, addr)
               __.accepted = broker.ntoa(addr)
               return function (s, data)
                 return { accepted = __.accepted, closed = __.closed or '' }
               end
             end)
             l.close = function (s) __.closed = broker.ntoa(s[1]) end",
        )],
    );
    let first = server.connect();
    let first_addr = first.local_addr().unwrap().to_string();
    drop(first);
    // The close callback runs when the server sees the end; ask until it has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut client = server.connect();
        client.write_all(&message("x", &[])).unwrap();
        let reply = read_reply(&mut client);
        let mine = client.local_addr().unwrap().to_string();
        assert_eq!(
            reply.get("accepted").and_then(Bson::as_str),
            Some(mine.as_str())
        );
        let closed = reply.get("closed").and_then(Bson::as_str).unwrap();
        if !closed.is_empty() {
            assert_eq!(closed, first_addr);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the close callback never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn an_accept_callback_returning_false_rejects_the_client() {
    // The listener echoes every packet, so a client that slipped past the accept callback
    // would get its frame back; a rejected one gets nothing, then the close.
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "local l = broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function (s, addr)
               return false
             end)
             l.receive = function (s, data) return data end",
        )],
    );
    let mut client = server.connect();
    client.write_all(&message("x", &[])).unwrap();
    let reply = read_until_closed(&mut client).expect("the server never closed the connection");
    assert!(reply.is_empty(), "a rejected client got {reply:?}");
}

#[test]
fn preload_scripts_run_in_every_core_and_require_loads_once_with_fail_over() {
    let server = Server::start(
        r##"{ "#startup": [["lua.so+stage"]],
              "lua.so": { "%preload": "preload", "%package": ["package", "rollback"],
                          "%reflush": 0, "lua.so+stage": "start" } }"##,
        &[
            (
                "preload/helpers.lua",
                "function greet(who) return 'hello ' .. who end",
            ),
            (
                "package/start.lua",
                "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
                   return function (s, data)
                     local a = stage.require('counter')
                     local b = stage.require('counter')
                     return stage.load('fallback+value', function (v, info)
                       return { greet = greet('bob'), same = a == b, v = v, position = info[1] }
                     end)
                   end
                 end)",
            ),
            ("package/counter.lua", "return {}"),
            ("package/fallback.lua", "return { value = ("),
            (
                "rollback/fallback.lua",
                "return { value = 'from rollback' }",
            ),
        ],
    );
    let mut client = server.connect();
    client.write_all(&message("x", &[])).unwrap();
    let reply = read_reply(&mut client);
    assert_eq!(reply.get("greet").and_then(Bson::as_str), Some("hello bob"));
    assert_eq!(reply.get("same"), Some(&Bson::Bool(true)));
    assert_eq!(reply.get("v").and_then(Bson::as_str), Some("from rollback"));
    assert_eq!(reply.get("position").and_then(Bson::as_i64), Some(1));
}

#[test]
fn broker_close_by_id_closes_a_socket_owned_by_any_core() {
    // Two cores: the `killer` connection's receive callback (run by the core that owns it)
    // closes, by id, a `victim` owned by the other core.
    if affinity_cpus() < 2 {
        println!("skipped: cannot close a socket across cores on a one-CPU machine");
        return;
    }
    let server = Server::start(
        r##"{ "#threads": 2, "#startup": [["lua.so+stage"]],
              "lua.so": { "%package": ["."], "%reflush": 0, "lua.so+stage": "start" } }"##,
        &[(
            "start.lua",
            "local l = broker.ready('tcp://127.0.0.1:PORT?text=1k,1k', function () return true end)
             l.receive = function (s, line)
               local id = tonumber(line)
               if id then broker.close(id) return 'closing ' .. id .. '\\n' end
               return s.id .. '\\n'
             end",
        )],
    );
    use std::io::{BufRead, BufReader};
    // Opens a connection and asks for its socket id.
    let open = || {
        let mut conn = BufReader::new(server.connect());
        conn.get_mut().write_all(b"who\n").unwrap();
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        let id: u64 = line.trim().parse().unwrap();
        (id, conn)
    };
    let (killer_id, mut killer) = open();
    let killer_core = killer_id & 0xFF;
    // The kernel hashes each connection to one core's listener: open victims until one
    // lands on the other core (the others are dropped).
    let (id, mut victim) = server.wait_for(
        &format!("a connection lands on another core than {killer_core}"),
        || {
            let (id, victim) = open();
            (id & 0xFF != killer_core).then_some((id, victim))
        },
    );
    assert_ne!(id & 0xFF, killer_core);
    killer
        .get_mut()
        .write_all(format!("{id}\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    killer.read_line(&mut line).unwrap();
    assert_eq!(line, format!("closing {id}\n"));
    assert!(is_closed(victim.get_mut()), "the victim is still open");
}

#[test]
fn a_core_stuck_in_lua_is_reported_and_so_is_its_recovery() {
    // A single-process node has no supervisor to restart it: the watchdog says which core
    // stalled and when it runs again. (Without a CPU budget: with one, the loop would be
    // interrupted before the watchdog calls the core stalled.)
    let script = r#"
        stage.addtask(300, function ()
          logger.info("busy")
          local t = os.clock()
          while os.clock() - t < 1.6 do end
          logger.info("done")
          return 0
        end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data) return { ok = true } end
        end)
    "#;
    let server = Server::start(&config(r#", "%cpu": 0"#), &[("start.lua", script)]);
    // The watchdog's stall and recovery reports are the behaviour under test.
    server.wait_log("done");
    server.wait_log("is running again");
    let log = server.log();
    let stalled = log
        .lines()
        .find(|l| l.contains("has not returned to its event loop"))
        .unwrap_or_else(|| panic!("no stall reported; log:\n{log}"));
    assert!(stalled.contains("watchdog: core "), "{stalled}");
    // It says what the thread was doing: in user space (the Lua loop), in no system call.
    assert!(stalled.contains("syscall=none"), "{stalled}");
    assert!(
        log.find("busy").unwrap() < log.find("has not returned").unwrap(),
        "{log}"
    );
}

#[test]
fn the_same_error_repeated_is_logged_once_a_second_with_a_count() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 if data.message == 'boom' then error('same kaboom') end
                 return data
               end
             end)",
        )],
    );
    let mut client = server.connect();
    for _ in 0..50 {
        client.write_all(&message("boom", &[])).unwrap();
    }
    // Still served, in order, after the failures.
    client.write_all(&message("ok", &[])).unwrap();
    assert_eq!(
        read_reply(&mut client)
            .get("message")
            .and_then(Bson::as_str),
        Some("ok")
    );
    assert_eq!(
        server.log().matches("same kaboom").count(),
        1,
        "{}",
        server.log()
    );
    std::thread::sleep(Duration::from_millis(1100));
    client.write_all(&message("boom", &[])).unwrap();
    server.wait_log("the same error 49 more time(s)");
    assert_eq!(
        server.log().matches("same kaboom").count(),
        2,
        "{}",
        server.log()
    );
}

#[test]
fn a_second_server_on_a_taken_port_is_warned() {
    let script = "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function () return true end)";
    let first = Server::start(&config(""), &[("start.lua", script)]);
    assert!(
        !first.log().contains("already listening"),
        "{}",
        first.log()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stage.json"), config("")).unwrap();
    std::fs::write(
        dir.path().join("start.lua"),
        script.replace("PORT", &first.port.to_string()),
    )
    .unwrap();
    let second = Server::spawn(
        dir,
        first.port,
        &["-c", "stage.json", "-s", "stage.stop"],
        None,
    );
    second.wait_log(&format!(
        "another program is already listening on 127.0.0.1:{}",
        first.port
    ));
}

#[test]
fn a_script_past_its_memory_limit_fails_that_call_only() {
    // `%memory`: 8 MiB for the scripts of each Lua state. A callback that builds a 64 MiB
    // string fails with "not enough memory"; the connection and the server go on.
    let server = Server::start(
        &config(", \"%memory\": 8"),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 if data.message == 'hog' then
                   local t = {}
                   for i = 1, 64 do t[i] = string.rep(tostring(i), 1024 * 1024) end
                   return { size = #t }
                 end
                 return data
               end
             end)",
        )],
    );
    let mut client = server.connect();
    client.write_all(&message("hog", &[])).unwrap();
    server.wait_log("not enough memory");
    client.write_all(&message("ok", &[])).unwrap();
    assert_eq!(
        read_reply(&mut client)
            .get("message")
            .and_then(Bson::as_str),
        Some("ok")
    );
}

#[test]
fn the_platform_modules_are_requireable_in_preload_and_odbc_raises_when_called_on_a_core() {
    // The original platform's preloads begin with `odbc = require('odbc')`; a named proxy
    // (`{"actor", ...}`) is what its scripts build next.
    let server = Server::start(
        r##"{ "#startup": [["lua.so+stage"]],
              "lua.so": { "%preload": "preload", "%package": ["package"],
                          "%reflush": 0, "lua.so+stage": "start" } }"##,
        &[
            (
                "preload/platform.lua",
                "odbc = require('odbc')
                 local modules = {}
                 for _, name in ipairs({ 'broker', 'logger', 'odbc', 'bundle', 'stage' }) do
                   modules[#modules + 1] = name .. '=' .. type(require(name))
                 end
                 preloaded = table.concat(modules, ',')",
            ),
            (
                "package/start.lua",
                "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
                   return function (s, data)
                     local ok, err = pcall(odbc.new, 'DSN=nowhere')
                     local t = {}
                     local actor = stage.proxy(t, { 'actor', hp = function () end })
                     actor.hp = 3
                     return { preloaded = preloaded, same = require('odbc') == odbc, ok = ok,
                              err = tostring(err),
                              proxy = tostring(actor) == 'actor:[' .. tostring(t) .. ']',
                              hp = t.hp }
                   end
                 end)",
            ),
        ],
    );
    let mut client = server.connect();
    client.write_all(&message("x", &[])).unwrap();
    let reply = read_reply(&mut client);
    assert_eq!(
        reply.get("preloaded").and_then(Bson::as_str),
        Some("broker=table,logger=table,odbc=table,bundle=table,stage=table"),
        "{reply:?}"
    );
    assert_eq!(reply.get("same"), Some(&Bson::Bool(true)));
    assert_eq!(reply.get("ok"), Some(&Bson::Bool(false)));
    let err = reply.get("err").and_then(Bson::as_str).unwrap_or_default();
    assert!(err.contains("ODBC calls block"), "{err}");
    assert_eq!(reply.get("proxy"), Some(&Bson::Bool(true)), "{reply:?}");
    assert_eq!(reply.get("hp").and_then(Bson::as_i64), Some(3));
}
