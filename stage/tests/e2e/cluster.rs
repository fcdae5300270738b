//! Nodes in a cluster through NATS (issue #10): each test starts its own `nats-server` on a
//! free loopback port and two `stage` nodes, A and B, as separate processes pointed at it.
//! A's stage `front` listens for a TCP client; the client's packets make it send messages
//! to stage `game` (hosted by B, or by both) and report what came back, so every assertion
//! is what a client of A sees. Without a `nats-server` binary the tests print one line and
//! pass, unless `STAGE_REQUIRE_SERVICES=1` (CI), where that is a failure.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use crate::harness::*;

/// A running `nats-server`, killed when dropped.
struct Nats {
    child: Child,
    port: u16,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_bin() -> Option<&'static str> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// Starts a NATS server of this test's own, or `None` (skip) when none is installed.
fn nats(test: &str) -> Option<Nats> {
    let Some(bin) = nats_bin() else {
        if std::env::var("STAGE_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("{test}: nats-server is not installed (STAGE_REQUIRE_SERVICES=1)");
        }
        println!("skipped {test}: nats-server is not installed");
        return None;
    };
    Some(nats_on(bin, free_port()))
}

/// A `nats-server` (binary `bin`) on `port`, accepting connections.
fn nats_on(bin: &str, port: u16) -> Nats {
    nats_with(bin, port, &[])
}

/// [`nats_on`] with more server arguments (`extra`, e.g. a monitoring port).
fn nats_with(bin: &str, port: u16, extra: &[&str]) -> Nats {
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let nats = Nats { child, port };
    wait_port_open(port);
    nats
}

/// A node named `name` in the cluster of `nats` running the Lua stages `stages` (one
/// process), with a fast heartbeat (100 ms) and expiry (760 ms).
fn node_config(nats: &Nats, name: &str, stages: &str) -> String {
    startup_config(nats, name, &format!("[[{stages}]]"))
}

/// A node named `name` with `#startup` = `startup` (several processes: a multi-process node).
fn startup_config(nats: &Nats, name: &str, startup: &str) -> String {
    format!(
        r##"{{ "#router": [400, 100], "#node": "{name}",
              "#cluster": ["nats://127.0.0.1:{port}"],
              "#startup": {startup},
              "lua.so": {{ "%package": ["."], "%reflush": 0, "front": "front", "game": "game" }} }}"##,
        port = nats.port
    )
}

/// Stage `game` on node `name`: `who` answers with the node's name. With `listen`, it also
/// takes the node's TCP port (a node without `front` needs one to be seen as ready).
fn game(name: &str, listen: bool) -> String {
    let listener = if listen {
        "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
           return function (s, data) return { node = NODE } end
         end)"
    } else {
        ""
    };
    format!(
        r#"NODE = "{name}"
           stage.waitfor("who", function () return NODE end)
           {listener}"#
    )
}

/// Stage `front` on A: each packet sends what its `message` says and answers with the
/// counts of answers so far, by answering node (`one_A`, `all_B`, ...), and the result of
/// timed request `k` (`t`).
const FRONT: &str = r#"
    -- A handler sees no upvalues (it is re-created from bytecode): the kind of answer is the
    -- id it was registered under.
    for _, kind in ipairs({ "one", "all", "plus" }) do
      stage.waitfor(kind, function (who)
        local key = _WAITFOR[-1] .. "_" .. who
        __[key] = (__[key] or 0) + 1
      end)
    end
    broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
      return function (s, data)
        local m = data.message
        if m == "one" then for _ = 1, 5 do stage.signal("game:who=one") end end
        if m == "all" then stage.signal("*game:who=all") end
        if m == "plus" then for _ = 1, 5 do stage.signal("+game:who=plus") end end
        if m == "timed" then
          -- The seed's request-with-timeout idiom, with a deadline on the request.
          local k = data.k
          local id = stage.waitfor(function (k, who)
            if _WAITFOR ~= nil then
              __["t" .. k] = "answered by " .. tostring(who)
              stage.waitfor(_WAITFOR[-1], nil)
            elseif who == "CANCEL" then
              __["t" .. k] = "timed out"
            end
          end, k)
          stage.addtask(700, function (id)
            local f, args = stage.waitfor(id)
            if f ~= nil then
              stage.call(f, args, "CANCEL")
              stage.waitfor(id, nil)
            end
          end, id)
          stage.signal({ "game:who=" .. id, 500 })
        end
        local out = { t = data.k and __["t" .. data.k] or nil }
        for _, kind in ipairs({ "one", "all", "plus" }) do
          for _, n in ipairs({ "A", "B" }) do out[kind .. "_" .. n] = __[kind .. "_" .. n] or 0 end
        end
        return out
      end
    end)
"#;

fn count(v: &Bson, key: &str) -> i64 {
    v.get(key)
        .and_then(Bson::as_i64)
        .unwrap_or_else(|| panic!("no `{key}` in {v:?}"))
}

/// Sends `message` (with `k`) to A until `ready` holds for the answer.
fn until(
    a: &Server,
    what: &str,
    message_name: &str,
    k: i64,
    ready: impl Fn(&Bson) -> bool,
) -> Bson {
    a.wait_reply(
        what,
        &message(message_name, &[("k", Bson::Int64(k))]),
        ready,
    )
}

#[test]
fn a_request_reaches_the_only_node_hosting_the_stage_and_the_reply_comes_back() {
    let Some(nats) = nats("cluster request/reply") else {
        return;
    };
    let b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game""#),
        &[("game.lua", &game("B", true))],
    );
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front""#),
        &[("front.lua", FRONT)],
    );
    // A hosts no `game`: one-receiver messages go to B, and B's answers come back to A.
    let v = until(&a, "A's requests are answered by B", "one", 0, |v| {
        count(v, "one_B") >= 10
    });
    assert_eq!(count(&v, "one_A"), 0, "{v:?}");
    // A timed request is answered within its deadline too.
    let v = until(&a, "a timed request is answered", "timed", 1, |v| {
        v.get("t").is_some()
    });
    assert_eq!(v.get("t").and_then(Bson::as_str), Some("answered by B"));
    assert!(a
        .log()
        .contains("cluster member A.1: member B.1 is up, hosting [game]"));
    drop(b);
}

/// The server's connections as its monitoring port lists them (`/connz?subs=1`): each one's
/// name, subscriptions and how many messages the server delivered on it.
fn connections(monitor: u16) -> Vec<(String, Vec<String>, u64)> {
    use std::io::Read;
    let mut http = std::net::TcpStream::connect(("127.0.0.1", monitor)).expect("monitoring port");
    http.write_all(b"GET /connz?subs=1 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json: serde_json::Value = serde_json::from_str(body).expect("connz JSON");
    json["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let subs = c["subscriptions_list"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            let name = c["name"].as_str().unwrap_or_default().to_string();
            (name, subs, c["out_msgs"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// With plain `nats://`, each core reads a subscription of its own: B's replies come back
/// on the asking core's subject, and once B has replied, A's requests go to the subject of
/// B's core too, so neither node's NATS thread hands them over.
#[test]
fn replies_and_requests_reach_the_cores_own_subscriptions() {
    let Some(bin) = nats_bin() else {
        let _ = nats("cluster core subscriptions");
        return;
    };
    let monitor = free_port();
    let nats = nats_with(bin, free_port(), &["-m", &monitor.to_string()]);
    wait_port_open(monitor);
    let _b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game""#),
        &[("game.lua", &game("B", true))],
    );
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front""#),
        &[("front.lua", FRONT)],
    );
    let delivered_on = |name: &str, subject: &str| {
        connections(monitor)
            .into_iter()
            .find(|(n, subs, _)| n == name && subs.iter().any(|s| s == subject))
            .map_or(0, |(_, _, out)| out)
    };
    // The cores subscribe once the nodes are connected; until then (and for the first
    // request to B) the member subjects carry everything, as before.
    let mut answered = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while delivered_on("A.1 (subscribe)", "stage.m.A.1.0") < 5
        || delivered_on("B.1 (subscribe)", "stage.m.B.1.0") < 5
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no core subscription carried the messages: {:?}",
            connections(monitor)
        );
        let v = until(&a, "A's requests are answered by B", "one", 0, |v| {
            count(v, "one_B") > answered
        });
        assert_eq!(count(&v, "one_A"), 0, "{v:?}");
        answered = count(&v, "one_B");
    }
}

#[test]
fn the_first_messages_to_another_nodes_stage_wait_for_its_hosts_instead_of_being_lost() {
    let Some(nats) = nats("cluster first message") else {
        return;
    };
    let _b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game""#),
        &[("game.lua", &game("B", true))],
    );
    let _c = Server::start(
        &node_config(&nats, "C", r#""lua.so+game""#),
        &[("game.lua", &game("C", true))],
    );
    // A sends one request and one `*` message, once: A has never sent to `game`, so it
    // does not know its hosts yet. Both wait for them and arrive; nothing is sent twice.
    let front = r#"
        stage.waitfor("one", function (who) __["one_" .. who] = (__["one_" .. who] or 0) + 1 end)
        stage.waitfor("all", function (who) __["all_" .. who] = (__["all_" .. who] or 0) + 1 end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data)
            if data.message == "go" and not __.sent then
              __.sent = true
              stage.signal("game:who=one")
              stage.signal("*game:who=all")
            end
            local out = {}
            for _, k in ipairs({ "one_B", "one_C", "all_B", "all_C" }) do out[k] = __[k] or 0 end
            return out
          end
        end)
    "#;
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front""#),
        &[("front.lua", front)],
    );
    // B and C are up (their own logs say so) before A sends anything.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let v = until(&a, "both messages are answered", "go", 0, |v| {
        count(v, "one_B") + count(v, "one_C") >= 1
            && count(v, "all_B") >= 1
            && count(v, "all_C") >= 1
    });
    // Late duplicates would show up by now.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let v2 = until(&a, "the counts again", "look", 0, |_| true);
    // Compared key by key: the replies may come from different cores, whose Lua states
    // order a table's keys differently.
    for k in ["one_B", "one_C", "all_B", "all_C"] {
        assert_eq!(count(&v, k), count(&v2, k), "{k}: {v:?} then {v2:?}");
    }
    assert_eq!(count(&v2, "one_B") + count(&v2, "one_C"), 1, "{v2:?}");
    assert_eq!(count(&v2, "all_B"), 1, "{v2:?}");
    assert_eq!(count(&v2, "all_C"), 1, "{v2:?}");
}

#[test]
fn every_instance_on_every_node_gets_a_star_message() {
    let Some(nats) = nats("cluster *") else {
        return;
    };
    let _b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game""#),
        &[("game.lua", &game("B", true))],
    );
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front", "lua.so+game""#),
        &[("front.lua", FRONT), ("game.lua", &game("A", false))],
    );
    until(
        &a,
        "`*game` reaches the game on A and on B",
        "all",
        0,
        |v| count(v, "all_A") >= 1 && count(v, "all_B") >= 1,
    );
}

#[test]
fn plus_goes_only_to_other_nodes_and_one_receiver_prefers_this_node() {
    let Some(nats) = nats("cluster +") else {
        return;
    };
    let _b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game""#),
        &[("game.lua", &game("B", true))],
    );
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front", "lua.so+game""#),
        &[("front.lua", FRONT), ("game.lua", &game("A", false))],
    );
    let v = until(&a, "`+game` reaches B", "plus", 0, |v| {
        count(v, "plus_B") >= 10
    });
    assert_eq!(count(&v, "plus_A"), 0, "`+` landed on this node: {v:?}");
    // B is known now; a one-receiver message still stays on A, which hosts `game` itself.
    let v = until(&a, "`game` is answered 20 times", "one", 0, |v| {
        count(v, "one_A") + count(v, "one_B") >= 20
    });
    assert_eq!(
        count(&v, "one_B"),
        0,
        "a one-receiver message left the node: {v:?}"
    );
    assert_eq!(count(&v, "plus_A"), 0, "{v:?}");
}

#[test]
fn a_request_to_a_killed_node_times_out_through_its_deadline() {
    let Some(nats) = nats("cluster kill -9") else {
        return;
    };
    let b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game""#),
        &[("game.lua", &game("B", true))],
    );
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front""#),
        &[("front.lua", FRONT)],
    );
    until(&a, "A's requests are answered by B", "one", 0, |v| {
        count(v, "one_B") >= 1
    });
    b.signal(libc::SIGKILL);
    // At once (B still looks alive: the server drops what goes to it) and after B aged out
    // (nobody is eligible: unrouted), the request fails through its deadline, and A keeps
    // answering its client meanwhile.
    for k in [1, 2] {
        let v = until(&a, "the timed request has a result", "timed", k, |v| {
            v.get("t").is_some()
        });
        assert_eq!(
            v.get("t").and_then(Bson::as_str),
            Some("timed out"),
            "{v:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(800));
    }
    a.wait_log("cluster member A.1: member B.1 is down");
    drop(b);

    // B comes back (same node name): routing to it resumes by itself.
    let _b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game""#),
        &[("game.lua", &game("B", true))],
    );
    let v = until(
        &a,
        "the restarted B answers a timed request",
        "timed",
        3,
        |v| v.get("t").and_then(Bson::as_str) == Some("answered by B"),
    );
    assert_eq!(count(&v, "one_A"), 0, "{v:?}");
    a.wait_log_count("cluster member A.1: member B.1 is up", 2);
}

#[test]
fn a_nats_restart_is_survived_and_logged_once() {
    let Some(nats) = nats("cluster NATS restart") else {
        return;
    };
    let port = nats.port;
    let _b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game""#),
        &[("game.lua", &game("B", true))],
    );
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front""#),
        &[("front.lua", FRONT)],
    );
    until(&a, "A's requests are answered by B", "one", 0, |v| {
        count(v, "one_B") >= 1
    });
    drop(nats);
    a.wait_log("cluster member A.1: lost the NATS connection");
    // The outage: A keeps serving its client; what it sends to B meanwhile is unrouted.
    // Counted from the first answer after the loss: B's answers to the probes `until` sent
    // before it (many when B booted slowly) may still be arriving until then.
    let mut client = a.connect();
    client.write_all(&message("one", &[])).unwrap();
    let before = read_reply(&mut client);
    let mut during = Bson::Null;
    for _ in 0..10 {
        client.write_all(&message("one", &[])).unwrap();
        during = read_reply(&mut client);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        count(&during, "one_B") <= count(&before, "one_B") + 5,
        "answers while NATS was down: {during:?}"
    );
    let _nats = nats_on(nats_bin().unwrap(), port);
    let after = until(&a, "B answers again after NATS is back", "one", 0, |v| {
        count(v, "one_B") > count(&during, "one_B")
    });
    assert_eq!(count(&after, "one_A"), 0, "{after:?}");
    let log = a.log();
    assert_eq!(
        log.matches("lost the NATS connection").count(),
        1,
        "the outage is logged once: {log}"
    );
    assert_eq!(log.matches("A.1: connected to NATS").count(), 2, "{log}");
    // Failed reconnect attempts are not warnings of their own.
    assert!(
        !log.contains("WARN stage_engine::cluster::client: cluster member A.1: NATS:"),
        "{log}"
    );
    // Messages sent during the outage were counted as unrouted, not queued for later.
    assert!(log.contains("(not connected to NATS)"), "{log}");
}

#[test]
fn an_index_on_another_node_answers_the_asking_node() {
    let Some(nats) = nats("cluster index.so") else {
        return;
    };
    let b_config = node_config(&nats, "B", r#""lua.so+game", "index.so+rank""#).replacen(
        '{',
        r#"{ "index.so+rank": "score/","#,
        1,
    );
    let _b = Server::start(&b_config, &[("game.lua", &game("B", true))]);
    // The direct form, and a batch naming several indexes, which B may split over its cores
    // and gather again before the one reply goes back to A.
    let front = r##"
        stage.waitfor("total", function (v) __.total = v end)
        stage.waitfor("batch", function (v) __.batch = v["#5.total?i1"] end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data)
            stage.signal("rank:t?board=total", 0)
            stage.signal("rank:batch", {
              ["#1.set?i1"] = { x = { i = 1 } },
              ["#2.set?i2"] = { y = { i = 2 } },
              ["#3.set?i3"] = { z = { i = 3 } },
              ["#4.set?i4"] = { w = { i = 4 } },
              ["#5.total?i1"] = 0,
            })
            return { total = __.total, batch = __.batch }
          end
        end)
    "##;
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front""#),
        &[("front.lua", front)],
    );
    let v = until(&a, "B's index answers A", "rank", 0, |v| {
        v.get("total").is_some() && v.get("batch").is_some()
    });
    assert_eq!(v.get("total").and_then(Bson::as_i64), Some(0), "{v:?}");
    assert_eq!(v.get("batch").and_then(Bson::as_i64), Some(1), "{v:?}");
}

#[test]
fn replies_reach_the_asking_process_of_a_multi_process_node() {
    let Some(nats) = nats("cluster multi-process") else {
        return;
    };
    let _b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game""#),
        &[("game.lua", &game("B", true))],
    );
    // A runs `front` in two processes sharing the port; each counts the answers it gets in
    // its own store, so an answer delivered to the other process would not show.
    // The answer also says which process of A served the client (`n`).
    let front = FRONT.replace("return out", "out.n = process.stage; return out");
    let a = Server::start(
        &startup_config(&nats, "A", r#"[["lua.so+front"], ["lua.so+front"]]"#),
        &[("front.lua", &front)],
    );
    let mut answered = std::collections::HashSet::new();
    a.wait_until("both processes of A get answers from B", || {
        let Ok(mut s) = try_connect(a.port) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if s.write_all(&message("one", &[])).is_err() {
            return false;
        }
        let Ok(frame) = read_frame(&mut s) else {
            return false;
        };
        let v = parse_doc(&frame).get("v").cloned().unwrap_or(Bson::Null);
        if let (Some(n), Some(b)) = (v.get("n").and_then(Bson::as_i64), v.get("one_B")) {
            if b.as_i64().unwrap_or(0) >= 1 {
                answered.insert(n);
            }
        }
        answered.len() == 2
    });
    let log = a.log();
    assert!(log.contains("this process is cluster member A.1"), "{log}");
    assert!(log.contains("this process is cluster member A.2"), "{log}");
}

#[test]
fn the_suspend_file_takes_a_node_out_of_cluster_routing() {
    let Some(nats) = nats("cluster suspend") else {
        return;
    };
    let b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game""#),
        &[("game.lua", &game("B", true))],
    );
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front""#),
        &[("front.lua", FRONT)],
    );
    until(&a, "A's requests are answered by B", "one", 0, |v| {
        count(v, "one_B") >= 1
    });
    std::fs::write(b.path("stage.stop"), "").unwrap();
    b.wait_log("cluster member B.1: suspend file");
    a.wait_log("cluster member A.1: member B.1 is down");
    // Drained: nothing reaches B any more (give late answers a moment to land first).
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut client = a.connect();
    client.write_all(&message("one", &[])).unwrap();
    let drained = count(&read_reply(&mut client), "one_B");
    for _ in 0..5 {
        client.write_all(&message("one", &[])).unwrap();
        read_reply(&mut client);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    client.write_all(&message("", &[])).unwrap();
    assert_eq!(count(&read_reply(&mut client), "one_B"), drained);
    // The file is gone: B announces itself again and gets work again.
    std::fs::remove_file(b.path("stage.stop")).unwrap();
    until(&a, "B gets work again", "one", 0, |v| {
        count(v, "one_B") > drained
    });
    b.wait_log("cluster member B.1: suspend file gone: heartbeats resume");
}

#[test]
fn the_shipped_two_node_example_pings_across_nodes() {
    let Some(nats) = nats("cluster example") else {
        return;
    };
    // The example's configurations name the usual NATS port; a first file that defines
    // `#cluster` points them at this test's own server instead (the first file wins).
    let dir = tempfile::tempdir().unwrap();
    let over = dir.path().join("nats.json");
    let url = format!(r##"{{ "#cluster": ["nats://127.0.0.1:{}"] }}"##, nats.port);
    std::fs::write(&over, url).unwrap();
    let over = over.display().to_string();
    let _b = Server::launch_in_repo(&[
        "-c",
        &format!("{over}:engine/lua/examples/cluster/node-b.json"),
    ]);
    let a = Server::launch_in_repo(&[
        "-c",
        &format!("{over}:engine/lua/examples/cluster/node-a.json"),
    ]);
    a.wait_log("answered ping");
    assert!(a
        .log()
        .contains("cluster member a.1: member b.1 is up, hosting [game]"));
}

/// A one-route HTTP server on loopback: every request gets `hi there` (a thread per
/// connection, as long as the test runs).
fn http_hello() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader};
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let mut out = stream;
                let _ = out.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhi there",
                );
            });
        }
    });
    port
}

#[test]
fn a_curl_stage_on_another_node_answers_the_asking_node() {
    let Some(nats) = nats("cluster curl.so") else {
        return;
    };
    let hp = http_hello();
    let b_config = node_config(&nats, "B", r#""lua.so+game", "curl.so+agent""#).replacen(
        '{',
        r#"{ "curl.so+agent": { "timeout": 3000 },"#,
        1,
    );
    let _b = Server::start(&b_config, &[("game.lua", &game("B", true))]);
    let front = r#"
        stage.waitfor("got", function (r) __.got = r.status .. " " .. r.data.content end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data)
            if __.got == nil then stage.signal("agent:got", "http://127.0.0.1:HP/hello") end
            return { got = __.got }
          end
        end)
    "#
    .replace("HP", &hp.to_string());
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front""#),
        &[("front.lua", &front)],
    );
    let v = until(&a, "B's curl stage answers A", "get", 0, |v| {
        v.get("got").is_some()
    });
    assert_eq!(v.get("got").and_then(Bson::as_str), Some("200 hi there"));
}

#[test]
fn a_ticket_stage_on_another_node_grants_extends_and_releases() {
    let Some(nats) = nats("cluster =ticket") else {
        return;
    };
    let b_config = node_config(&nats, "B", r#""lua.so+game", "=ticket+ticket""#).replacen(
        '{',
        r#"{ "=ticket+ticket": [100000, {"solo": 1}],"#,
        1,
    );
    let _b = Server::start(&b_config, &[("game.lua", &game("B", true))]);
    // `solo` has one slot. `a` is granted and extends its lease to 5 s from A (a reply that
    // crosses back to B); at 1.5 s, past the default 1 s lease, `b` still waits; then A
    // releases `a` by its lease id, and `b` is granted and released by its return value.
    let front = r#"
        stage.waitfor("one", function (who) __.seen = who end)
        stage.waitfor("a", function (v) __.a = v; HELD = _TICKET; stage.signal(nil, 5000) end)
        stage.waitfor("b", function (v) __.b = v; return 0 end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data)
            if data.message == "probe" and __.seen == nil then stage.signal("game:who=one") end
            if data.message == "go" then
              stage.signal("ticket:solo=a", "x")
              stage.signal("ticket:solo=b", "y")
              stage.addtask(1500, function ()
                __.b_at_1500 = __.b or "waiting"
                stage.signal("ticket:" .. HELD, 0)
                return 0
              end)
            end
            return { seen = __.seen, a = __.a, b = __.b, b_at_1500 = __.b_at_1500 }
          end
        end)
    "#;
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front""#),
        &[("front.lua", front)],
    );
    until(&a, "A knows B", "probe", 0, |v| v.get("seen").is_some());
    let mut client = a.connect();
    client.write_all(&message("go", &[])).unwrap();
    read_reply(&mut client);
    let v = until(&a, "both tickets were granted across nodes", "x", 0, |v| {
        v.get("b").is_some()
    });
    assert_eq!(v.get("a").and_then(Bson::as_str), Some("x"), "{v:?}");
    assert_eq!(v.get("b").and_then(Bson::as_str), Some("y"), "{v:?}");
    assert_eq!(
        v.get("b_at_1500").and_then(Bson::as_str),
        Some("waiting"),
        "the extension from A did not hold the slot: {v:?}"
    );
}

#[test]
fn a_route_stage_on_another_node_offers_delivers_and_returns_the_answer() {
    let Some(nats) = nats("cluster =route") else {
        return;
    };
    // B runs the route stage and the publisher (`game`); A's `front` subscribes. An offer
    // crosses to A, A's claim crosses back, the value crosses to A with the publisher as its
    // reply address, and A's answer crosses back to the publisher on B.
    let publisher = r#"
        stage.waitfor("ret", function (s) __.ret = s end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data)
            if data.message == "pub" and __.ret == nil then stage.signal("route:login=ret", "v1") end
            return { ret = __.ret }
          end
        end)
    "#;
    let b_config = node_config(&nats, "B", r#""lua.so+game", "=route+route""#);
    let b = Server::start(
        &b_config,
        &[("game.lua", &format!("{}\n{publisher}", game("B", false)))],
    );
    let front = r#"
        stage.waitfor("one", function (who) __.seen = who end)
        stage.waitfor("route:@", function (key, token) stage.signal(nil, token) end)
        stage.waitfor("got", function (key, v) __.got = v; return "ack-" .. tostring(v) end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data)
            if __.seen == nil then stage.signal("game:who=one")
            else stage.signal("route:@", { login = "got" }) end
            return { seen = __.seen, got = __.got }
          end
        end)
    "#;
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front""#),
        &[("front.lua", front)],
    );
    until(&a, "A knows B", "sub", 0, |v| v.get("seen").is_some());
    // Subscribe (again: the probe that saw B may have run before B was known), then publish
    // until the answer is back.
    until(&a, "A subscribed", "sub", 0, |_| true);
    let v = b.wait_reply(
        "the subscriber's answer reaches the publisher",
        &message("pub", &[]),
        |v| v.get("ret").is_some(),
    );
    assert_eq!(v.get("ret").and_then(Bson::as_str), Some("ack-v1"), "{v:?}");
    let v = until(&a, "A got the value", "sub", 0, |v| v.get("got").is_some());
    assert_eq!(v.get("got").and_then(Bson::as_str), Some("v1"), "{v:?}");
}

#[test]
fn two_nodes_with_one_name_are_reported() {
    let Some(nats) = nats("cluster name clash") else {
        return;
    };
    // One `#node` copied to two machines: both processes would take the member's messages.
    let first = Server::start(
        &node_config(&nats, "A", r#""lua.so+game""#),
        &[("game.lua", &game("A", true))],
    );
    let _second = Server::start(
        &node_config(&nats, "A", r#""lua.so+game""#),
        &[("game.lua", &game("A", true))],
    );
    first.wait_log("cluster member A.1: another process announces itself under this name");
}

#[test]
fn a_route_callback_naming_a_stage_of_another_node_reaches_it() {
    let Some(nats) = nats("cluster =route callback") else {
        return;
    };
    // A's `front` subscribes with the callback `lobby:got`; only A runs `lobby`. The route
    // stage on B finds no `lobby` on its node and sends the value to A's.
    let publisher = r#"
        stage.waitfor("ret", function (s) __.ret = s end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data)
            if data.message == "pub" and __.ret == nil then stage.signal("route:login=ret", "v2") end
            return { ret = __.ret }
          end
        end)
    "#;
    let b = Server::start(
        &node_config(&nats, "B", r#""lua.so+game", "=route+route""#),
        &[("game.lua", &format!("{}\n{publisher}", game("B", false)))],
    );
    let front = r#"
        stage.waitfor("one", function (who) __.seen = who end)
        stage.waitfor("route:@", function (key, token) stage.signal(nil, token) end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data)
            if __.seen == nil then stage.signal("game:who=one")
            else stage.signal("route:@", { login = "lobby:got" }) end
            return { seen = __.seen, got = __.got }
          end
        end)
    "#;
    let lobby =
        r#"stage.waitfor("got", function (key, v) __.got = v; return "lobby-" .. tostring(v) end)"#;
    let a = Server::start(
        &node_config(&nats, "A", r#""lua.so+front", "lua.so+lobby""#).replace(
            r#""front": "front""#,
            r#""front": "front", "lobby": "lobby""#,
        ),
        &[("front.lua", front), ("lobby.lua", lobby)],
    );
    until(&a, "A knows B", "sub", 0, |v| v.get("seen").is_some());
    until(&a, "A subscribed", "sub", 0, |_| true);
    let v = b.wait_reply(
        "lobby's answer reaches the publisher",
        &message("pub", &[]),
        |v| v.get("ret").is_some(),
    );
    assert_eq!(
        v.get("ret").and_then(Bson::as_str),
        Some("lobby-v2"),
        "{v:?}"
    );
    let v = until(&a, "lobby got the value", "sub", 0, |v| {
        v.get("got").is_some()
    });
    assert_eq!(v.get("got").and_then(Bson::as_str), Some("v2"), "{v:?}");
}

/// Runs `openssl` with `args` in `dir` (the test's certificate authority).
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA,
/// as PEM files `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key` in `dir`.
fn make_certificates(dir: &std::path::Path) {
    let key = |name: &str| {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        )
    };
    key("ca.key");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=stage test CA",
            "-days",
            "2",
            "-out",
            "ca.pem",
        ],
    );
    for (name, usage, san) in [
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ] {
        key(&format!("{name}.key"));
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN=stage test {name}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

#[test]
fn nodes_route_through_a_nats_server_that_requires_tls_and_client_certificates() {
    let Some(bin) = nats_bin() else {
        let _ = nats("cluster over TLS");
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    make_certificates(c);
    // The server verifies clients: a node must present a certificate signed by the CA.
    let (port, monitor) = (free_port(), free_port());
    let conf = c.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\ntls {{\n  cert_file: \"{d}/server.pem\"\n  key_file: \"{d}/server.key\"\n  ca_file: \"{d}/ca.pem\"\n  verify: true\n}}\n",
            d = c.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let nats = Nats { child, port };
    wait_port_open(port);
    let tls_config = |name: &str, stage: &str, with_cert: bool| {
        let cert = if with_cert {
            format!(
                r#", "cert": "{d}/client.pem", "key": "{d}/client.key""#,
                d = c.display()
            )
        } else {
            String::new()
        };
        format!(
            r##"{{ "#router": [400, 100], "#node": "{name}",
                  "#cluster": ["tls://127.0.0.1:{port}", {{ "ca": "{d}/ca.pem"{cert} }}],
                  "#startup": [["lua.so+{stage}"]],
                  "lua.so": {{ "%package": ["."], "%reflush": 0, "front": "front", "game": "game" }} }}"##,
            port = nats.port,
            d = c.display()
        )
    };
    let _b = Server::start(
        &tls_config("B", "game", true),
        &[("game.lua", &game("B", true))],
    );
    let a = Server::start(&tls_config("A", "front", true), &[("front.lua", FRONT)]);
    let v = until(
        &a,
        "A's requests are answered by B over TLS",
        "one",
        0,
        |v| count(v, "one_B") >= 5,
    );
    assert_eq!(count(&v, "one_A"), 0, "{v:?}");
    // Over TLS the cores neither publish nor subscribe themselves: everything goes through
    // each node's one async-nats connection.
    let names: Vec<String> = connections(monitor)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n == "A.1" || n == "B.1"), "{names:?}");
    // A node without a client certificate is refused by the server: it serves its own
    // clients, and its requests to `game` find nobody (counted as unrouted, never answered).
    let lone = Server::start(&tls_config("C", "front", false), &[("front.lua", FRONT)]);
    let mut client = lone.connect();
    for _ in 0..3 {
        client.write_all(&message("one", &[])).unwrap();
        let v = read_reply(&mut client);
        assert_eq!(count(&v, "one_B"), 0, "{v:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn a_node_authenticates_with_an_nkey_seed_file() {
    let Some(bin) = nats_bin() else {
        let _ = nats("cluster with NKey");
        return;
    };
    let user = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("node.nk");
    std::fs::write(&seed, format!("{}\n", user.seed().unwrap())).unwrap();
    let port = free_port();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\nauthorization {{ users = [ {{ nkey: {} }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let nats = Nats { child, port };
    wait_port_open(port);
    let config = |name: &str, stage: &str| {
        format!(
            r##"{{ "#router": [400, 100], "#node": "{name}",
                  "#cluster": ["nats://127.0.0.1:{port}", {{ "nkey": "{seed}" }}],
                  "#startup": [["lua.so+{stage}"]],
                  "lua.so": {{ "%package": ["."], "%reflush": 0, "front": "front", "game": "game" }} }}"##,
            port = nats.port,
            seed = seed.display()
        )
    };
    let _b = Server::start(&config("B", "game"), &[("game.lua", &game("B", true))]);
    let a = Server::start(&config("A", "front"), &[("front.lua", FRONT)]);
    until(
        &a,
        "A's requests are answered by B with NKeys",
        "one",
        0,
        |v| count(v, "one_B") >= 5,
    );
}
