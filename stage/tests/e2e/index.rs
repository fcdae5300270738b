//! index.so wired to the router: a Lua stage talks to an `index.so+rank` stage with
//! `stage.signal` exactly as spec/services.md §2.3 shows (direct and batch forms, every
//! command, reply shapes), through the `index.lua` helper, from receive callbacks on any
//! core, the acknowledged data survives a SIGKILL, and reopening a big index after a restart
//! leaves its core serving other connections meanwhile.
//!
//! A catch-all handler logs every reply (`R <callback> <value>`); the tests wait for the
//! last reply they expect and read the others from the log: the lines are the results
//! under test, not readiness.

use std::io::Write;
use std::time::Duration;

use crate::harness::*;

/// A Lua stage `game` (main script start.lua) and the index stage `rank` (data in score/).
fn index_config() -> String {
    r##"{ "#startup": [["lua.so+game", "index.so+rank"]],
          "lua.so": { "%package": [".", "@builtin/lib"], "%reflush": 0, "game": "start" },
          "index.so+rank": "score/" }"##
        .to_string()
}

/// `dump(v)`: a deterministic text form (sorted keys), and a catch-all handler that logs
/// every reply as `R <callback> <value>`. Globals, since handlers see no upvalues.
const PRELUDE: &str = r#"
function dump(v)
  if type(v) ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function (a, b) return tostring(a) < tostring(b) end)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = tostring(k) .. "=" .. dump(v[k]) end
  return "{" .. table.concat(out, ",") .. "}"
end
stage.waitfor("@", function (v) logger.info("R " .. _WAITFOR[0] .. " " .. dump(v)) end)
"#;

fn listen_last(script: &str) -> String {
    format!(
        "{PRELUDE}\n{script}\n
         broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
           return function (s, data) return {{ ok = true }} end
         end)"
    )
}

#[test]
fn every_command_answers_in_the_direct_form() {
    let script = r#"
      stage.signal("rank:set?board=s1", { bob = { i = 200 } })
      stage.signal("rank:set?board=s2", { alice = { i = 100, v = { name = "Alice", lv = 3 } } })
      stage.signal("rank:s?board=s3", { carol = { i = 100 } })        -- tie: newest first
      stage.signal("rank:s?board", { dave = { i = 50 } })             -- no callback: no reply
      stage.signal("rank:get?board=g1", "alice")
      stage.signal("rank:g?board=g2", { "carol", "nobody" })
      stage.signal("rank:r?board=r1", { 200, 10 })                    -- from a score
      stage.signal("rank:range?board=r2", { "alice", 1, 2 })          -- around an id
      stage.signal("rank:f?board=f1", { 2, 2 })
      stage.signal("rank:forEach?board=f2", { 4, 0 })                 -- count 0: one entry
      stage.signal("rank:t?board=t1", 0)
      stage.signal("rank:d?board/=d1", "bob")
      stage.signal("rank:del?board/=d2", { "bob", "nobody" })
      stage.signal("rank:total?board=t2", 0)
      -- tiers: I sets several, a tier selects one, `/` is all of them
      stage.signal("rank:set?multi/2=m1", { x = { I = { 5, "abc" } } })
      stage.signal("rank:get?multi/=m2", "x")
      stage.signal("rank:get?multi/2=m3", "x")
      stage.signal("rank:d?multi/1=m4", "x")
      stage.signal("rank:get?multi/=m5", "x")
      -- integer scores before string scores, strings descending; several scores per id
      stage.signal("rank:s?mixed", { a = { i = "zzz" } })
      stage.signal("rank:s?mixed", { b = { i = 1 } })
      stage.signal("rank:s?mixed", { c = { i = { "aaa", 7 } } })
      stage.signal("rank:f?mixed=x1", { 1, 10 })
      stage.signal("rank:s?mixed=x2", { b = { i = 1 } })               -- unchanged: 0
      stage.signal("rank:set?mixed/=x3", { b = { i = 1 } })            -- i with all tiers
      stage.signal("rank:bogus?mixed=x4", 1)                          -- unknown command
      stage.signal("rank:t?board=done", 0)
    "#;
    let server = Server::start(&index_config(), &[("start.lua", &listen_last(script))]);
    server.wait_log("R done ");
    let log = server.log();
    let expect = [
        "R s1 {bob=1}",
        "R s2 {alice=2}",
        "R s3 {carol=2}",
        "R g1 {alice={I={1={d=3,i=100}},v={lv=3,name=Alice}}}",
        "R g2 {carol={I={1={d=2,i=100}}},nobody={}}",
        "R r1 {1={d=1,i=200,k=bob},2={d=2,i=100,k=carol},3={d=3,i=100,k=alice,v={lv=3,name=Alice}},4={d=4,i=50,k=dave}}",
        "R r2 {2={d=2,i=100,k=carol},3={d=3,i=100,k=alice,v={lv=3,name=Alice}}}",
        "R f1 {2={d=2,i=100,k=carol},3={d=3,i=100,k=alice,v={lv=3,name=Alice}}}",
        "R f2 {4={d=4,i=50,k=dave}}",
        "R t1 4",
        "R d1 {bob=true}",
        "R d2 {bob=false,nobody=false}",
        "R t2 3",
        "R m1 {x=1}",
        "R m2 {x={I={1={1=5},2={1=abc}}}}",
        "R m3 {x={I={1={d=1,i=abc}}}}",
        "R m4 {x=true}",
        "R m5 {x={I={2={1=abc}}}}",
        "R x1 {1={d=1,i=7,k=c},2={d=2,i=1,k=b},3={d=3,i=zzz,k=a},4={d=4,i=aaa,k=c}}",
        "R x2 {b=0}",
        "R x3 {}",
        "R x4 nil",
    ];
    for line in expect {
        assert!(log.contains(line), "missing `{line}`; log:\n{log}");
    }
    // The set without a callback sent nothing back.
    assert_eq!(log.matches(" R ").count(), expect.len() + 1, "{log}");
}

#[test]
fn batches_keep_their_keys_and_order() {
    let script = r##"
      stage.signal("rank:b1", {
        ["#1.set?board"] = { eve = { i = 300 } },
        ["#2.set?board"] = { fay = { i = 300 } },
        ["#3.get?board"] = { "eve", "fay" },
        ["#4.total?board"] = 0,
        ["#5.bad?board"] = 0,
      })
      -- the multi-message form: every key is its own message with its own callback
      stage.signal("rank:", { ["#1.set?board=mm"] = { gus = { i = 1 } } })
      stage.signal("rank:t?board=done", 0)
    "##;
    let server = Server::start(&index_config(), &[("start.lua", &listen_last(script))]);
    server.wait_log("R done ");
    let log = server.log();
    for line in [
        "R b1 {#1.set?board={eve=1},#2.set?board={fay=1},#3.get?board={eve={I={1={d=2,i=300}}},fay={I={1={d=1,i=300}}}},#4.total?board=2}",
        "R mm {gus=3}",
        "R done 3",
    ] {
        assert!(log.contains(line), "missing `{line}`; log:\n{log}");
    }
}

#[test]
fn the_index_helper_batches_and_calls_back() {
    let script = r#"
      local INDEX = stage.require("index")
      local ix = INDEX.New("rank", "week")
      ix:set("ann", 10, { team = "red" }, function (d, id) logger.info("H set " .. id .. " " .. d) end)
      ix:set("ben", 20, nil, function (d, id) logger.info("H set " .. id .. " " .. d) end)
      ix:get({ "ann" }, function (r) logger.info("H get " .. dump(r)) end)
      ix:forEach(1, 5, function (r) logger.info("H each " .. dump(r)) end)
      ix:range("ann", 1, 2, function (r) logger.info("H range " .. dump(r)) end)
      ix:total(function (n) logger.info("H total " .. n) end)
      ix:commit()
      ix:delete("ann", function (ok, id) logger.info("H del " .. id .. " " .. tostring(ok)) end)
      ix:total(function (n) logger.info("H total2 " .. n) end)
      ix:commit()
    "#;
    let server = Server::start(&index_config(), &[("start.lua", &listen_last(script))]);
    server.wait_log("H total2 ");
    let log = server.log();
    for line in [
        "H set ann 1",
        "H set ben 1",
        "H get {ann={I={1={d=2,i=10}},v={team=red}}}",
        "H each {1={d=1,i=20,k=ben},2={d=2,i=10,k=ann,v={team=red}}}",
        "H range {1={d=1,i=20,k=ben},2={d=2,i=10,k=ann,v={team=red}}}",
        "H total 2",
        "H del ann true",
        "H total2 1",
    ] {
        assert!(log.contains(line), "missing `{line}`; log:\n{log}");
    }
    // The temporary reply ids were removed once answered.
    assert!(!log.contains("(no handler)"), "{log}");
}

#[test]
fn assigning_a_command_to_the_index_helper_sends_it() {
    let script = r#"
      local INDEX = stage.require("index")
      local ix = INDEX.New("rank", "assign", function (r, id) logger.info("A dflt " .. dump(r)) end)
      ix.set = { "ann", 10, { team = "red" }, function (d, id) logger.info("A set " .. id .. " " .. d) end }
      ix:set("ben", 20)                      -- collected: goes with the next assignment
      ix.get = "ann"                         -- one plain argument; the default callback
      ix.total = function (n) logger.info("A total " .. n) end
      local ok, err = pcall(function () ix.nosuch = 1 end)
      logger.info("A bad " .. tostring(err))
      ix.delete = { "ann", function (ok, id) logger.info("A del " .. id .. " " .. tostring(ok)) end }
      ix.total = { function (n) logger.info("A total2 " .. n) end }
    "#;
    let server = Server::start(&index_config(), &[("start.lua", &listen_last(script))]);
    server.wait_log("A total2 ");
    let log = server.log();
    for line in [
        "A set ann 1",
        "A dflt {ann={I={1={d=2,i=10}},v={team=red}}}",
        "A total 2",
        "A bad ",
        "`nosuch` cannot be assigned",
        "A del ann true",
        "A total2 1",
    ] {
        assert!(log.contains(line), "missing `{line}`; log:\n{log}");
    }
}

#[test]
fn receive_callbacks_on_any_core_reach_the_index() {
    let script = r#"
      stage.signal("rank:t?board=ready", 0)
    "#;
    let listener = format!(
        "{PRELUDE}\n{script}\n
         broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
           return function (s, data)
             stage.signal('rank:set?conn=c' .. data.n, {{ ['p' .. data.n] = {{ i = data.n }} }})
             return {{ ok = true }}
           end
         end)"
    );
    let server = Server::start(&index_config(), &[("start.lua", &listener)]);
    // Several connections: the kernel spreads them over the cores (SO_REUSEPORT).
    for n in 1..=8i64 {
        let mut client = server.connect();
        client
            .write_all(&doc(&[(
                "v",
                Bson::Doc(vec![("n".into(), Bson::Int64(n))]),
            )]))
            .unwrap();
        read_reply(&mut client);
    }
    server.wait_log_count("R c", 8);
    let log = server.log();
    for n in 1..=8 {
        assert!(log.contains(&format!("R c{n} {{p{n}=")), "{log}");
    }
}

#[test]
fn acknowledged_sets_survive_sigkill() {
    const N: usize = 40;
    let writer = format!(
        r#"
        for n = 1, {N} do
          stage.signal("rank:set?keep=ack", {{ ["id" .. n] = {{ i = n, v = {{ n = n }} }} }})
        end
        "#
    );
    let mut server = Server::start(&index_config(), &[("start.lua", &listen_last(&writer))]);
    // Acknowledged: every set was answered (the lines under test) before the SIGKILL.
    server.wait_log_count("R ack ", N);
    server.signal(libc::SIGKILL);
    server.wait_exit();

    let reader = format!(
        r#"
        local ids = {{}}
        for n = 1, {N} do ids[n] = "id" .. n end
        stage.waitfor("back", function (r)
          local found = 0
          for id, e in pairs(r) do
            if e.v and ("id" .. e.v.n) == id and e.I[1].i == e.v.n then found = found + 1 end
          end
          logger.info("FOUND " .. found)
        end)
        stage.signal("rank:get?keep=back", ids)
        "#
    );
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let port = server.port;
    std::fs::write(
        dir.path().join("start.lua"),
        listen_last(&reader).replace("PORT", &port.to_string()),
    )
    .unwrap();
    let mut again = Server::spawn(dir, port, &["-c", "stage.json"], None);
    again.wait_port();
    again.wait_log("FOUND ");
    let log = again.log();
    assert!(log.contains(&format!("FOUND {N}")), "{log}");
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn an_index_process_of_a_multi_process_node_answers_other_processes() {
    // Process 2 hosts only the index stage; the requests and the replies cross processes.
    // Messages from another process arrive at the stage's main core, which passes them to
    // the cores owning their indexes (one on each core here), a batch split between them.
    let (a, b) = (index_on(0), index_on(1));
    let config = r##"{ "#startup": [["lua.so+game"], ["index.so+rank"]],
          "lua.so": { "%package": ["."], "%reflush": 0, "game": "start" },
          "index.so+rank": "score/" }"##;
    let script = format!(
        r##"
      stage.waitfor("mp", function (v)
        got = true
        logger.info("MP " .. dump(v))
        stage.signal("rank:get?{b}=mp2", "y")
      end)
      stage.waitfor("mp2", function (v) logger.info("MP2 " .. dump(v)) end)
      -- Until the index process's first heartbeat arrives, the message has no receiver.
      stage.addtask(100, function ()
        if got then return 0 end
        stage.signal("rank:mp", {{
          ["#1.set?{a}"] = {{ x = {{ i = 1 }} }},
          ["#2.set?{b}"] = {{ y = {{ i = 2 }} }},
          ["#3.get?{a}"] = "nobody",
        }})
      end)
    "##
    );
    let server = Server::start(config, &[("start.lua", &listen_last(&script))]);
    server.wait_log("MP2 ");
    let log = server.log();
    // Resent until answered: a set may run more than once (unchanged: rank 0).
    let first = log.split("MP {").nth(1).unwrap_or_default();
    assert!(
        first.starts_with(&format!("#1.set?{a}={{x="))
            && first.contains(&format!("#3.get?{a}={{nobody={{}}}}")),
        "{log}"
    );
    assert!(first.contains(&format!("#2.set?{b}={{y=")), "{log}");
    assert!(log.contains("MP2 {y={I={1={d=1,i=2}}}}"), "{log}");
}

/// An index name owned by `core` (modulo the core count) on this machine.
fn index_on(core: usize) -> String {
    use stage_engine::service::shard::owner_of_name;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..1000)
        .map(|i| format!("board{i}"))
        .find(|n| owner_of_name(n, cores) == core % cores)
        .unwrap()
}

/// The server's core count, from its start-up line.
fn cores_of(log: &str) -> usize {
    log.split("cores=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no core count; log:\n{log}"))
}

/// The core whose span logged `index opened` for index `name`.
fn core_that_opened(log: &str, name: &str) -> usize {
    let line = log
        .lines()
        .find(|l| l.contains("index opened") && l.contains(&format!("index=\"{name}\"")))
        .unwrap_or_else(|| panic!("`{name}` never opened; log:\n{log}"));
    line.split("core{index=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no core in `{line}`"))
}

#[test]
fn indexes_live_on_the_core_their_name_hashes_to_and_batches_span_them() {
    use stage_engine::service::shard::owner_of_name;
    // Two indexes owned by different cores (on a 2-core node), then one batch over both:
    // one reply with every key, each part run by its owner.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (a, b) = (index_on(0), index_on(1));
    let script = format!(
        r##"
      stage.signal("rank:set?{a}=s1", {{ x = {{ i = 5 }} }})
      stage.signal("rank:set?{b}=s2", {{ y = {{ i = 7 }} }})
      stage.signal("rank:both", {{
        ["#1.set?{a}"] = {{ w = {{ i = 9 }} }},
        ["#2.set?{b}"] = {{ z = {{ i = 8 }} }},
        ["#3.total?{a}"] = 0,
        ["#4.get?{b}"] = {{ "y", "z" }},
        ["#5.bad?{a}"] = 0,
      }})
      stage.signal("rank:plain", {{ ["#1.total?{b}"] = 0 }})
    "##
    );
    let server = Server::start(&index_config(), &[("start.lua", &listen_last(&script))]);
    server.wait_log("R both ");
    server.wait_log("R plain ");
    let log = server.log();
    assert_eq!(
        cores_of(&log),
        cores,
        "the test assumes every CPU is a core"
    );
    let expect = format!(
        "R both {{#1.set?{a}={{w=1}},#2.set?{b}={{z=1}},#3.total?{a}=2,#4.get?{b}={{y={{I={{1={{d=2,i=7}}}}}},z={{I={{1={{d=1,i=8}}}}}}}}}}"
    );
    assert!(log.contains(&expect), "missing `{expect}`; log:\n{log}");
    assert!(log.contains("R plain {#1.total?"), "{log}");
    assert_eq!(log.matches("R both ").count(), 1, "one reply: {log}");
    assert_eq!(core_that_opened(&log, &a), owner_of_name(&a, cores));
    assert_eq!(core_that_opened(&log, &b), owner_of_name(&b, cores));
    if cores > 1 {
        assert_ne!(core_that_opened(&log, &a), core_that_opened(&log, &b));
    }
}

/// A one-core node with the index stage: `sync` is the index's durability.
fn one_core_config(sync: &str) -> String {
    format!(
        r##"{{ "#threads": 1,
              "#startup": [["lua.so+game", "index.so+rank"]],
              "lua.so": {{ "%package": ["."], "%reflush": 0, "game": "start" }},
              "index.so+rank": {{ "path": "score/", "sync": {sync} }} }}"##
    )
}

#[test]
fn a_big_index_reopens_off_the_core_while_it_keeps_echoing() {
    // First run: 200k ids written 2,000 per set (synced once a second: only the filling is
    // faster; an acknowledged set is written before its reply all the same), then SIGKILL, so
    // the restart has the whole log to read and replay (no shutdown snapshot).
    const IDS: usize = 200_000;
    let fill = format!(
        r#"
        N = 0
        function fill()
          local t = {{}}
          for _ = 1, 2000 do
            N = N + 1
            t["u" .. N] = {{ i = N, v = N }}
          end
          stage.signal("rank:set?big=fill", t)
        end
        stage.waitfor("fill", function ()
          if N < {IDS} then fill() else logger.info("FILLED " .. N) end
        end)
        fill()
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data) return data end
        end)
        "#
    );
    let mut server = Server::start(&one_core_config("1000"), &[("start.lua", &fill)]);
    let filled = poll(Duration::from_secs(120), || {
        server.log().contains("FILLED ").then_some(())
    });
    assert!(
        filled.is_some(),
        "the fill never ended; log:\n{}",
        server.log()
    );
    server.signal(libc::SIGKILL);
    server.wait_exit();
    let port = server.port;
    wait_port_refused(port);
    let log_bytes = std::fs::metadata(server.dir.path().join("score/big.log"))
        .unwrap()
        .len();
    assert!(log_bytes > 20 * IDS as u64, "a big log: {log_bytes} bytes");
    assert!(!server.dir.path().join("score/big.snap").exists());

    // Second run, default durability: connection `q` asks the index (its first request, so
    // the index opens now), while connection `e`, served by the same (only) core, echoes.
    let reader = r#"
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data)
            if data.q then
              stage.signal("rank:total?big=total", 0)
              stage.signal("rank:get?big=get", { "u1", "u123456", "u200000", "nobody" })
              return { asked = true }
            end
            if data.look then return { total = __.total, got = __.got } end
            return data
          end
        end)
        stage.waitfor("total", function (v) __.total = v end)
        stage.waitfor("get", function (v)
          __.got = "v=" .. v.u1.v .. " i=" .. v.u123456.I[1].i .. " d1=" .. v.u1.I[1].d
            .. " dlast=" .. v.u200000.I[1].d .. " nobody=" .. tostring(next(v.nobody))
        end)
    "#;
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    std::fs::write(dir.path().join("stage.json"), one_core_config("\"always\"")).unwrap();
    std::fs::write(
        dir.path().join("start.lua"),
        reader.replace("PORT", &port.to_string()),
    )
    .unwrap();
    let mut again = Server::spawn(dir, port, &["-c", "stage.json"], None);
    again.wait_port();
    let mut e = again.connect();
    let mut q = again.connect();
    q.write_all(&doc(&[(
        "v",
        Bson::Doc(vec![("q".into(), Bson::Bool(true))]),
    )]))
    .unwrap();
    assert!(read_reply(&mut q).get("asked").is_some());
    // Echoes on the other connection are answered (while the index opens, once it is open:
    // the test does not time them, only that each comes back right).
    let mut before_open = 0;
    for n in 0..500 {
        let frame = doc(&[("v", Bson::Doc(vec![("n".into(), Bson::Int32(n))]))]);
        e.write_all(&frame).unwrap();
        assert_eq!(
            read_reply(&mut e).get("n").and_then(Bson::as_i64),
            Some(n as i64)
        );
        if look(&mut q).get("total").is_none() {
            before_open += 1;
        }
    }
    // The index's answers, as the script got them, read back by a client.
    let answers = poll(Duration::from_secs(60), || {
        let v = look(&mut q);
        (v.get("total").is_some() && v.get("got").is_some()).then_some(v)
    })
    .expect("the index never answered");
    assert_eq!(
        answers.get("total").and_then(Bson::as_i64),
        Some(IDS as i64),
        "{answers:?}"
    );
    // Ranks count from the highest score: u200000 is first, u1 last.
    let expect = format!("v=1 i=123456 d1={IDS} dlast=1 nobody=nil");
    assert_eq!(
        answers.get("got").and_then(Bson::as_str),
        Some(expect.as_str()),
        "{answers:?}"
    );
    let log = again.log();
    assert!(
        log.contains("index opened") && log.contains(&format!("ids={IDS}")),
        "{log}"
    );
    println!("{before_open} of 500 echoes answered before the index answered");
}

/// What the reader script of the reopen test has got from the index so far (`total`, `got`).
fn look(q: &mut std::net::TcpStream) -> Bson {
    q.write_all(&doc(&[(
        "v",
        Bson::Doc(vec![("look".into(), Bson::Bool(true))]),
    )]))
    .unwrap();
    read_reply(q)
}

#[test]
fn an_open_notice_that_finds_the_inbox_full_still_gets_its_request_answered() {
    // First run: an index of 300k ids of four scores each, left as a log by a SIGKILL, so
    // that opening it takes the `index-open` thread a while (a replay of every record; with
    // one score each it took 1.6 s once inserts became one descent of the tier's tree, and
    // the notice could come before the flood below had filled the inbox).
    const IDS: usize = 300_000;
    let fill = format!(
        r#"
        N = 0
        function fill()
          local t = {{}}
          for _ = 1, 2000 do
            N = N + 1
            t["u" .. N] = {{ i = {{ N, -N, 2 * N, -2 * N }} }}
          end
          stage.signal("rank:set?big=fill", t)
        end
        stage.waitfor("fill", function ()
          if N < {IDS} then fill() else logger.info("FILLED " .. N) end
        end)
        fill()
        "#
    );
    let config = |sync: &str| {
        format!(
            r##"{{ "#threads": 1,
                  "#startup": [["lua.so+game", "index.so+rank"]],
                  "lua.so": {{ "%package": ["."], "%reflush": 0, "%cpu": 0, "game": "start" }},
                  "index.so+rank": {{ "path": "score/", "sync": {sync} }} }}"##
        )
    };
    let mut server = Server::start(&config("1000"), &[("start.lua", &listen_last(&fill))]);
    let filled = poll(Duration::from_secs(120), || {
        server.log_now().contains("FILLED ").then_some(())
    });
    assert!(
        filled.is_some(),
        "the fill never ended; log:\n{}",
        server.log()
    );
    server.signal(libc::SIGKILL);
    server.wait_exit();
    let port = server.port;
    wait_port_refused(port);

    // Second run, one core: the `total` asks for the index (the open starts), then a handler
    // fills the core's inbox past its 65,536 messages and keeps the core busy for 10 s, so the
    // open thread's notice finds the inbox full. It is retried, not dropped: once the core
    // drains its inbox the index is in and the `total` is answered.
    let reader = r#"
      stage.waitfor("noop", function () end)
      stage.waitfor("flood", function ()
        for n = 1, 70000 do stage.signal("game:noop", n) end
        logger.info("FLOODED")
        local t = os.clock()
        while os.clock() - t < 10 do end
      end)
      stage.signal("rank:total?big=total", 0)
      stage.signal("game:flood", 0)
    "#;
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    std::fs::write(dir.path().join("stage.json"), config("\"always\"")).unwrap();
    std::fs::write(
        dir.path().join("start.lua"),
        listen_last(reader).replace("PORT", &port.to_string()),
    )
    .unwrap();
    let mut again = Server::spawn(dir, port, &["-c", "stage.json"], None);
    again.wait_port();
    let answered = poll(Duration::from_secs(60), || {
        again.log_now().contains("R total ").then_some(())
    });
    let log = again.log();
    assert!(
        answered.is_some(),
        "the total was never answered; log:\n{log}"
    );
    assert!(log.contains(&format!("R total {IDS}")), "{log}");
    // The flood filled the inbox (some of it was dropped), and the notice was retried.
    assert!(log.contains("FLOODED") && log.contains("dropped"), "{log}");
    assert!(
        log.contains("an index open notice found core 0's inbox full"),
        "{log}"
    );
}

#[test]
fn a_snapshot_built_while_sets_continue_keeps_every_acknowledged_value_after_sigkill() {
    // A 16 KiB snapshot limit: the index snapshots every few batches, each snapshot built in
    // several slices (over 2,048 ids) while the writer's next batches run between them. The
    // server is SIGKILLed while it writes; every batch acknowledged before the kill must
    // read back after the restart.
    const BATCH: usize = 40;
    let config = r##"{ "#threads": 1,
          "#startup": [["lua.so+game", "index.so+rank"]],
          "lua.so": { "%package": ["."], "%reflush": 0, "game": "start" },
          "index.so+rank": { "path": "score/", "snapshot": 16384 } }"##;
    let writer = format!(
        r#"
        N = 0
        function batch()
          local t = {{}}
          for _ = 1, {BATCH} do
            N = N + 1
            t["id" .. N] = {{ i = N, v = {{ n = N }} }}
          end
          stage.signal("rank:set?big=ack", t)
        end
        stage.waitfor("ack", function ()
          logger.info("ACK " .. N .. " .")
          batch()
        end)
        batch()
        "#
    );
    let mut server = Server::start(config, &[("start.lua", &listen_last(&writer))]);
    // Several snapshots of at least two slices, then the kill, in the middle of the writes.
    let sliced = |log: &str| {
        log.lines()
            .filter(|l| l.contains("index snapshot built"))
            .filter_map(|l| {
                l.split("slices=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .filter(|s| *s >= 2)
            .count()
    };
    let ready = poll(Duration::from_secs(120), || {
        (sliced(&server.log_now()) >= 3).then_some(())
    });
    assert!(
        ready.is_some(),
        "no sliced snapshots; log:\n{}",
        server.log()
    );
    server.signal(libc::SIGKILL);
    server.wait_exit();
    let log = server.log();
    let acked: usize = log
        .lines()
        .filter_map(|l| l.split("ACK ").nth(1)?.split(' ').next()?.parse().ok())
        .max()
        .unwrap();
    assert!(acked > 2048, "{acked} ids acknowledged");
    assert!(server.dir.path().join("score/big.snap").exists());

    let reader = format!(
        r#"
        FOUND, LEFT = 0, 0
        stage.waitfor("back", function (r)
          for id, e in pairs(r) do
            if e.v and ("id" .. e.v.n) == id and e.I[1].i == e.v.n then FOUND = FOUND + 1 end
          end
          LEFT = LEFT - 1
          if LEFT == 0 then logger.info("FOUND " .. FOUND .. " .") end
        end)
        for first = 1, {acked}, 1000 do
          local ids = {{}}
          for n = first, math.min(first + 999, {acked}) do ids[#ids + 1] = "id" .. n end
          LEFT = LEFT + 1
          stage.signal("rank:get?big=back", ids)
        end
        "#
    );
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let port = server.port;
    std::fs::write(
        dir.path().join("start.lua"),
        listen_last(&reader).replace("PORT", &port.to_string()),
    )
    .unwrap();
    let mut again = Server::spawn(dir, port, &["-c", "stage.json"], None);
    again.wait_port();
    let found = poll(Duration::from_secs(60), || {
        let log = again.log_now();
        let line = log.lines().find(|l| l.contains("FOUND "))?.to_string();
        line.split("FOUND ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse::<usize>()
            .ok()
    });
    assert_eq!(found, Some(acked), "log:\n{}", again.log());
}
