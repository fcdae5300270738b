//! lotus.so (spec/lotus.md, issue #11) end to end: the real binary with a `lotus.so+lotus`
//! stage on two cores, clients on both wires — compat (2-byte big-endian length + JSON, the
//! bare login line) written with serde_json, v1 (4-byte big-endian length + MessagePack) with
//! rmpv — asserting the replies and deliveries a client sees: the seed's schema and handler,
//! every command, errors by code, handlers across cores, ctx timers and state-to-state calls,
//! channel ids, history, resume without gap or duplicate under concurrent publishers,
//! channel deletion, sandbox escapes and the slow-subscriber cap; persistence with the embedded
//! store: states, schemas, exits and channel history across `kill -9`, `max_state_bytes`,
//! `ctx.save()` acknowledged only once written; the same with the Redis store, Redis stopped
//! mid-run, and a "Redis" that never answers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rmpv::Value;
use serde_json::{json, Value as Json};

use crate::harness::*;
use crate::redis_server::RedisServer;

struct Lotus {
    server: Server,
    v1: u16,
    compat: u16,
}

/// Starts a node with a lotus stage (two cores where the machine has them) and `extra` keys
/// in its block.
fn start(extra: &str) -> Lotus {
    let (v1, compat) = (free_port(), free_port());
    let threads = affinity_cpus().min(2);
    let config = format!(
        r##"{{ "#threads": {threads}, "#startup": ["lotus.so+lotus"],
              "lotus.so+lotus": {{ "listen": "127.0.0.1:{v1}", "compat": "127.0.0.1:{compat}",
                 "accounts": {{ "account": {{ "password": "password", "project": "demo" }},
                               "other": {{ "password": "pw2", "project": "elsewhere" }} }} {extra} }} }}"##
    );
    start_config(&config, v1, compat)
}

/// Starts a node with `config` as its `stage.json` (in a fresh directory), listening on `v1`
/// and `compat`.
fn start_config(config: &str, v1: u16, compat: u16) -> Lotus {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stage.json"), config).unwrap();
    spawn(dir, v1, compat)
}

/// Starts `stage -c stage.json` in `dir` (whose configuration listens on `v1` and `compat`)
/// and waits until both wires accept connections: a first start, and a restart in the same
/// directory, are ready at the same point.
fn spawn(dir: tempfile::TempDir, v1: u16, compat: u16) -> Lotus {
    let mut server = Server::spawn(dir, compat, &["-c", "stage.json"], None);
    server.wait_port();
    server.wait_ready_port(v1);
    Lotus { server, v1, compat }
}

/// A node name no other client of this test process uses.
fn fresh_node() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "gate{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

// ---- the compat wire ----------------------------------------------------------------------

struct Compat(TcpStream);

impl Compat {
    fn connect(port: u16) -> Compat {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Compat(s)
    }

    fn send(&mut self, v: &Json) {
        let body = serde_json::to_vec(v).unwrap();
        let mut frame = (body.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.0.write_all(&frame).unwrap();
    }

    fn line(&mut self) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        while !out.ends_with(b"\n") {
            if self.0.read(&mut b).unwrap() == 0 {
                break;
            }
            out.push(b[0]);
        }
        String::from_utf8(out).unwrap()
    }

    fn recv(&mut self) -> Json {
        let mut h = [0u8; 2];
        self.0.read_exact(&mut h).unwrap();
        let mut body = vec![0; u16::from_be_bytes(h) as usize];
        self.0.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Logs in as a node of its own (a second login as the same node would kick this one).
    fn login(port: u16) -> Compat {
        Compat::login_as(port, &fresh_node())
    }

    fn login_as(port: u16, node: &str) -> Compat {
        let mut c = Compat::connect(port);
        c.send(&json!({"account": "account", "password": "password", "name": node}));
        let line = c.line();
        assert!(line.starts_with("200 OK (token:"), "{line}");
        c
    }

    fn cmd(&mut self, name: &str, params: Json) -> Json {
        self.send(&json!({"name": name, "params": params}));
        self.recv()
    }
}

/// The seed's client schema, as its README writes it.
fn seed_schema() -> Json {
    json!({
        "typename": "client",
        "unique": false,
        "init": {},
        "handlers": {
            "ping": "\n            function(ctx, client, params)\n                ctx.log(\"ping\")\n                -- push msg to channel\n                ctx.publish(\"client-socket-\" .. client.id, {name = \"pong\"})\n            end\n            "
        }
    })
}

#[test]
fn the_seed_client_example_runs_on_the_compat_wire() {
    let l = start("");
    let mut c = Compat::login(l.compat);
    let r = c.cmd("register", json!({"schema": seed_schema(), "rid": 1}));
    assert_eq!(
        (r["type"].as_str(), r["rid"].as_u64()),
        (Some("register"), Some(1)),
        "{r}"
    );
    let mut sub = Compat::login(l.compat);
    let r = sub.cmd(
        "subscribe",
        json!({"channel": "client-socket-100001", "rid": 2}),
    );
    assert_eq!(r["type"], "subscribe");
    // init (once; a second init is ignored), update, then the remote exec (no reply).
    for (value, created) in [(json!({"id": 100001}), true), (json!({"id": 5}), false)] {
        let r = c.cmd(
            "init_state",
            json!({"typename": "client", "statename": "c1", "value": value, "rid": 3}),
        );
        assert_eq!(r["result"]["created"], created, "{r}");
    }
    c.send(
        &json!({"name": "update_state", "params": {"statename": "c1", "keys": ["lv"], "value": 7}}),
    );
    c.send(&json!({"name": "execute_state", "params": {"statename": "c1", "funcname": "ping", "params": []}}));
    let m = sub.recv();
    assert_eq!(
        m,
        json!({"type": "channel_message", "channel": "client-socket-100001", "epoch": m["epoch"], "id": 1, "msg": [{"name": "pong"}]})
    );
    let r = c.cmd("get", json!({"statename": "c1", "keys": [], "rid": 4}));
    assert_eq!(r["result"], json!({"id": 100001, "lv": 7}));
    // Errors reach a compat client that asked with a rid.
    let r = c.cmd(
        "execute_state",
        json!({"statename": "c1", "funcname": "nope", "params": [], "rid": 5}),
    );
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("unknown_handler"))
    );
    let r = c.cmd("launch", json!({"rid": 6}));
    assert_eq!(r["code"], "unknown_command");
    l.server.wait_log("lotus demo/c1: ping");
}

/// spec §3.2 step 5: a second login as the same `project.node` closes the first connection
/// (no notice, as in the original), on either wire and whichever core each landed on; the
/// second connection works, and a login as another node of the project is left alone.
#[test]
fn a_second_login_as_the_same_node_closes_the_first() {
    let l = start("");
    let mut other = V1::login_as(l.v1, "bystander");
    for (first_wire, second_wire) in [("v1", "v1"), ("compat", "compat"), ("v1", "compat")] {
        let node = fresh_node();
        // Several pairs, so that first and second land on the same and on different cores.
        for _ in 0..4 {
            let mut first: Box<dyn FnMut() -> bool> = match first_wire {
                "v1" => {
                    let mut v = V1::login_as(l.v1, &node);
                    v.ok("ping", json!({}));
                    Box::new(move || is_closed(&mut v.0))
                }
                _ => {
                    let mut c = Compat::login_as(l.compat, &node);
                    assert_eq!(c.cmd("ping", json!({"rid": 1}))["type"], "ping");
                    Box::new(move || is_closed(&mut c.0))
                }
            };
            match second_wire {
                "v1" => {
                    let mut v = V1::login_as(l.v1, &node);
                    assert!(first(), "{first_wire} first login still open");
                    assert_eq!(v.ok("ping", json!({})).as_str(), Some("pong"));
                }
                _ => {
                    let mut c = Compat::login_as(l.compat, &node);
                    assert!(first(), "{first_wire} first login still open");
                    assert_eq!(c.cmd("ping", json!({"rid": 2}))["type"], "ping");
                }
            }
        }
    }
    assert_eq!(other.ok("ping", json!({})).as_str(), Some("pong"));
}

#[test]
fn a_wrong_password_gets_401_and_the_socket_closes() {
    let l = start("");
    let mut c = Compat::connect(l.compat);
    c.send(&json!({"account": "account", "password": "nope", "name": "gate"}));
    assert_eq!(c.line(), "401 Unauthorized, wrong password\n");
    assert!(is_closed(&mut c.0));
    let mut c = Compat::connect(l.compat);
    c.send(&json!({"account": "ghost", "password": "x", "name": "gate"}));
    assert_eq!(c.line(), "401 Unauthorized, account does not exist\n");
    let mut v = V1::connect(l.v1);
    let (code, _) = V1::err(v.request("get", json!({"statename": "x"})));
    assert_eq!(code, "auth_failed");
    assert!(is_closed(&mut v.0));
}

// ---- the v1 wire --------------------------------------------------------------------------

/// A v1 client: its socket, the last rid, and events that arrived while it waited for a reply.
struct V1(TcpStream, u64, std::collections::VecDeque<Value>);

fn mp(v: Json) -> Value {
    match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::from(b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64().unwrap()),
        },
        Json::String(s) => Value::from(s),
        Json::Array(a) => Value::Array(a.into_iter().map(mp).collect()),
        Json::Object(o) => Value::Map(
            o.into_iter()
                .map(|(k, v)| (Value::from(k), mp(v)))
                .collect(),
        ),
    }
}

impl V1 {
    fn connect(port: u16) -> V1 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        V1(s, 0, Default::default())
    }

    /// Logs in as a node of its own (a second login as the same node would kick this one).
    fn login(port: u16) -> V1 {
        V1::login_as(port, &fresh_node())
    }

    fn login_as(port: u16, node: &str) -> V1 {
        let mut v = V1::connect(port);
        let r = v.request(
            "login",
            json!({"account": "account", "password": "password", "name": node}),
        );
        assert_eq!(r[0].as_u64(), Some(1), "{r}");
        assert_eq!(
            r[3]["session"].as_str(),
            Some(format!("demo.{node}").as_str())
        );
        v
    }

    fn send_raw(&mut self, rid: u64, name: &str, args: Value) {
        self.0.write_all(&v1_frame(rid, name, args)).unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut h = [0u8; 4];
        self.0.read_exact(&mut h).unwrap();
        let mut body = vec![0; u32::from_be_bytes(h) as usize];
        self.0.read_exact(&mut body).unwrap();
        rmpv::decode::read_value(&mut &body[..]).unwrap()
    }

    /// Sends a request with a fresh rid; returns its reply (events in between are skipped).
    fn request(&mut self, name: &str, args: Json) -> Value {
        self.1 += 1;
        let rid = self.1;
        self.send_raw(rid, name, mp(args));
        loop {
            let r = self.recv();
            if r[1].as_u64() == Some(rid) || (r[0].as_u64() == Some(2) && r[1].as_u64() == Some(0))
            {
                return r;
            }
            if r[0].as_u64() == Some(3) {
                self.2.push_back(r);
            }
        }
    }

    fn ok(&mut self, name: &str, args: Json) -> Value {
        let r = self.request(name, args);
        assert_eq!(r[0].as_u64(), Some(1), "{name} failed: {r}");
        r[3].clone()
    }

    fn err(r: Value) -> (String, Value) {
        assert_eq!(r[0].as_u64(), Some(2), "expected an error, got {r}");
        (r[2].as_str().unwrap().to_string(), r[3].clone())
    }

    /// The next channel event.
    fn event(&mut self) -> Value {
        if let Some(e) = self.2.pop_front() {
            return e;
        }
        loop {
            let r = self.recv();
            if r[0].as_u64() == Some(3) {
                return r;
            }
        }
    }
}

/// One v1 request frame.
fn v1_frame(rid: u64, name: &str, args: Value) -> Vec<u8> {
    let mut body = Vec::new();
    let frame = Value::Array(vec![
        Value::from(0),
        Value::from(rid),
        Value::from(name),
        args,
    ]);
    rmpv::encode::write_value(&mut body, &frame).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn register(v: &mut V1, typename: &str, handlers: Json, callbacks: Json) -> Value {
    v.request(
        "register",
        json!({"schema": {"typename": typename, "handlers": handlers, "callbacks": callbacks}}),
    )
}

#[test]
fn every_state_command_answers_on_the_v1_wire() {
    let l = start("");
    let mut v = V1::login(l.v1);
    assert_eq!(v.ok("ping", json!({})).as_str(), Some("pong"));
    // One handler that does not compile refuses the whole schema, naming it.
    let (code, detail) = V1::err(register(
        &mut v,
        "player",
        json!({"ok": "function(ctx, s) end", "bad": "function(ctx, s) s.x = 1 // 2 end"}),
        json!({}),
    ));
    assert_eq!(
        (code.as_str(), detail["handler"].as_str()),
        ("compile_error", Some("handlers.bad"))
    );
    let (code, _) = V1::err(v.request(
        "init_state",
        json!({"typename": "player", "statename": "p"}),
    ));
    assert_eq!(code, "unknown_type");
    let r = register(
        &mut v,
        "player",
        json!({
            "hit": "function(ctx, s, n) s.hp = s.hp - n; return s.hp, 'ouch' end",
            "fail": "function(ctx, s) s.touched = true; error('no way') end"
        }),
        json!({}),
    );
    assert_eq!(r[0].as_u64(), Some(1), "{r}");
    let list = v.ok("schema_list", json!({}));
    assert_eq!(list[0][0].as_str(), Some("player"));
    // Several states spread over the cores; each answers from its owner.
    for i in 0..8 {
        let r = v.ok("init_state", json!({"typename": "player", "statename": format!("p{i}"), "value": {"hp": 100, "bag": {"gold": i}}}));
        assert_eq!(r["created"].as_bool(), Some(true));
    }
    let (code, detail) = V1::err(v.request(
        "init_state",
        json!({"typename": "player", "statename": "p1", "strict": true}),
    ));
    assert_eq!(
        (code.as_str(), detail["type"].as_str()),
        ("state_exists", Some("player"))
    );
    for i in 0..8 {
        let r = v.ok(
            "call",
            json!({"statename": format!("p{i}"), "funcname": "hit", "params": [i]}),
        );
        assert_eq!(r, mp(json!([100 - i, "ouch"])));
    }
    v.ok(
        "update_state",
        json!({"statename": "p3", "keys": ["bag", "gold"], "value": 42}),
    );
    assert_eq!(
        v.ok("get", json!({"statename": "p3", "keys": ["bag", "gold"]}))
            .as_i64(),
        Some(42)
    );
    let (code, detail) = V1::err(v.request(
        "update_state",
        json!({"statename": "p3", "keys": ["nope", "x"], "value": 1}),
    ));
    assert_eq!(
        (code.as_str(), detail["depth"].as_u64()),
        ("path_missing", Some(1))
    );
    // `nil` removes a key; an empty path replaces the whole state.
    v.ok(
        "update_state",
        json!({"statename": "p3", "keys": ["bag"], "value": null}),
    );
    assert_eq!(
        v.ok("get", json!({"statename": "p3", "keys": []})),
        mp(json!({"hp": 97}))
    );
    v.ok(
        "update_state",
        json!({"statename": "p3", "keys": [], "value": {"hp": 1}}),
    );
    assert_eq!(
        v.ok("get", json!({"statename": "p3", "keys": ["hp"]}))
            .as_i64(),
        Some(1)
    );
    // A handler error: its message comes back, mutations made before it stay (spec §5.4).
    let (code, detail) = V1::err(v.request("call", json!({"statename": "p0", "funcname": "fail"})));
    assert_eq!(code, "handler_error");
    assert!(
        detail["message"].as_str().unwrap().contains("no way"),
        "{detail}"
    );
    assert_eq!(
        v.ok("get", json!({"statename": "p0", "keys": ["touched"]}))
            .as_bool(),
        Some(true)
    );
    let (code, _) = V1::err(v.request("get", json!({"statename": "ghost"})));
    assert_eq!(code, "state_not_found");
    // A frame that is not MessagePack costs that request, not the connection.
    v.0.write_all(&[0, 0, 0, 1, 0xc1]).unwrap();
    let r = v.recv();
    assert_eq!((r[0].as_u64(), r[2].as_str()), (Some(2), Some("bad_frame")));
    assert_eq!(v.ok("ping", json!({})).as_str(), Some("pong"));
    // Another project never sees these names.
    let mut o = V1::connect(l.v1);
    let r = o.request(
        "login",
        json!({"account": "other", "password": "pw2", "name": "g"}),
    );
    assert_eq!(r[0].as_u64(), Some(1));
    let (code, _) = V1::err(o.request("get", json!({"statename": "p1"})));
    assert_eq!(code, "state_not_found");
}

#[test]
fn ctx_timers_and_state_to_state_calls_run_on_the_owner() {
    let l = start("");
    let mut v = V1::login(l.v1);
    let r = register(
        &mut v,
        "room",
        json!({
            "start": "function(ctx, s) ctx.interval('t', 20, 'tick'); ctx.timeout('once', 10, 'bell') end",
            "stop": "function(ctx, s) local t = ctx.querytimer('t'); ctx.killtimer('t'); return t and t.count, t and t.callback end",
            "poke": "function(ctx, s, who) ctx.state(who).add(5); ctx.updatestate(who, 'note', 'poked'); ctx.initstate('room', 'born', {n = 1}) end",
            "add": "function(ctx, s, n) s.n = (s.n or 0) + n end",
            "bye": "function(ctx, s) ctx.exit() end"
        }),
        json!({
            "tick": "function(ctx, s, t) s.ticks = (s.ticks or 0) + 1; ctx.publish('room-events', 'tick', s.ticks) end",
            "bell": "function(ctx, s, t) s.bell = t.name end"
        }),
    );
    assert_eq!(r[0].as_u64(), Some(1), "{r}");
    v.ok("subscribe", json!({"channel": "room-events"}));
    v.ok("init_state", json!({"typename": "room", "statename": "r1"}));
    v.ok("init_state", json!({"typename": "room", "statename": "r2"}));
    v.ok("call", json!({"statename": "r1", "funcname": "start"}));
    for n in 1..=3 {
        let e = v.event();
        assert_eq!(e[3]["msg"], mp(json!(["tick", n])), "{e}");
    }
    let r = v.ok("call", json!({"statename": "r1", "funcname": "stop"}));
    assert_eq!(r[1].as_str(), Some("tick"));
    assert!(r[0].as_u64().unwrap() >= 3, "{r}");
    assert_eq!(
        v.ok("get", json!({"statename": "r1", "keys": ["bell"]}))
            .as_str(),
        Some("once")
    );
    v.ok(
        "call",
        json!({"statename": "r1", "funcname": "poke", "params": ["r2"]}),
    );
    // The pokes are posted: wait until they land.
    let r2 = l.server.wait_for("r2 poked", || {
        let r = v.ok("get", json!({"statename": "r2", "keys": []}));
        (r["note"].as_str() == Some("poked")).then_some(r)
    });
    assert_eq!(r2["n"].as_i64(), Some(5));
    l.server.wait_until("born exists", || {
        v.request("get", json!({"statename": "born", "keys": ["n"]}))[3].as_i64() == Some(1)
    });
    v.ok("call", json!({"statename": "r2", "funcname": "bye"}));
    let (code, _) = V1::err(v.request("get", json!({"statename": "r2"})));
    assert_eq!(code, "state_not_found");
}

#[test]
fn sandbox_escapes_from_handler_strings_fail() {
    let l = start("");
    let mut v = V1::login(l.v1);
    let escapes = [
        ("req", "function() return require('io') end"),
        ("io", "function() return io.open('/etc/passwd') end"),
        (
            "exec",
            "function() return os.execute('touch /tmp/lotus-escaped') end",
        ),
        ("load", "function() return load('return 1') end"),
        ("ffi", "function() return ffi.C end"),
        ("dbg", "function() return debug.getinfo(1) end"),
        ("fenv", "function() return setfenv(1, {}) end"),
        ("meta", "function() return getmetatable('').__index end"),
        ("global", "function() leaked = 1 end"),
    ];
    let handlers: serde_json::Map<String, Json> = escapes
        .iter()
        .map(|(n, s)| (n.to_string(), json!(s)))
        .collect();
    let r = register(&mut v, "evil", Json::Object(handlers), json!({}));
    assert_eq!(r[0].as_u64(), Some(1), "{r}");
    v.ok("init_state", json!({"typename": "evil", "statename": "e"}));
    for (name, _) in escapes {
        let (code, detail) =
            V1::err(v.request("call", json!({"statename": "e", "funcname": name})));
        assert_eq!(code, "handler_error", "{name}: {detail}");
    }
    assert!(!std::path::Path::new("/tmp/lotus-escaped").exists());
    // Bytecode is not source: refused at register.
    let (code, _) = V1::err(register(
        &mut v,
        "bc",
        json!({"x": "\u{1b}LJ\u{2}"}),
        json!({}),
    ));
    assert_eq!(code, "compile_error");
}

#[test]
fn history_and_resume_keep_one_order_without_gaps_under_concurrent_publishers() {
    let l = start(r#", "history": 64"#);
    let mut sub = V1::login(l.v1);
    sub.ok("subscribe", json!({"channel": "chat"}));
    // Two publishers (on whichever cores accepted them), 100 messages each, at once.
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let port = l.v1;
            std::thread::spawn(move || {
                let mut v = V1::login(port);
                for i in 0..100 {
                    v.ok(
                        "publish",
                        json!({"channel": "chat", "msg": format!("{p}-{i}")}),
                    );
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let mut per_publisher = [0u64; 2];
    for id in 1..=200u64 {
        let e = sub.event();
        assert_eq!(e[3]["id"].as_u64(), Some(id), "{e}");
        let text = e[3]["msg"][0].as_str().unwrap().to_string();
        let (p, i) = text.split_once('-').unwrap();
        let p: usize = p.parse().unwrap();
        assert_eq!(
            i.parse::<u64>().unwrap(),
            per_publisher[p],
            "publisher {p} out of order"
        );
        per_publisher[p] += 1;
    }
    // History: the ring keeps 64.
    let h = sub.ok("channel_history", json!({"channel": "chat", "last": 3}));
    assert_eq!(
        (
            h["first_id"].as_u64(),
            h["last_id"].as_u64(),
            h["truncated"].as_bool()
        ),
        (Some(137), Some(200), Some(false))
    );
    let ids: Vec<_> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| it["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [198, 199, 200]);
    let h = sub.ok(
        "channel_history",
        json!({"channel": "chat", "from": {"id": 100}}),
    );
    assert_eq!(h["truncated"].as_bool(), Some(true));
    assert_eq!(h["items"][0]["id"].as_u64(), Some(137));
    let (code, _) = V1::err(sub.request("channel_history", json!({"channel": "never", "last": 1})));
    assert_eq!(code, "channel_not_found");

    // Resume while a publisher keeps going: replay from 190, then live, no gap, no duplicate.
    let port = l.v1;
    let publisher = std::thread::spawn(move || {
        let mut v = V1::login(port);
        for i in 0..100 {
            v.ok(
                "publish",
                json!({"channel": "chat", "msg": format!("late-{i}")}),
            );
        }
    });
    let mut late = V1::login(l.v1);
    late.ok("subscribe", json!({"channel": "chat", "from": {"id": 190}}));
    publisher.join().unwrap();
    for id in 190..=300u64 {
        let e = late.event();
        assert_eq!(e[3]["id"].as_u64(), Some(id), "{e}");
    }
    // Resuming from before the ring: told it is truncated, then the ring.
    let mut old = V1::login(l.v1);
    old.ok("subscribe", json!({"channel": "chat", "from": {"id": 1}}));
    let e = old.event();
    assert_eq!(
        (e[2].as_str(), e[3]["first_id"].as_u64()),
        (Some("channel_truncated"), Some(237))
    );
    assert_eq!(old.event()[3]["id"].as_u64(), Some(237));
}

#[test]
fn deleting_a_channel_tells_subscribers_and_a_new_epoch_starts_at_one() {
    let l = start("");
    let mut a = V1::login(l.v1);
    let mut c = Compat::login(l.compat);
    a.ok("subscribe", json!({"channel": "news"}));
    assert_eq!(
        c.cmd("subscribe", json!({"channel": "news", "rid": 1}))["type"],
        "subscribe"
    );
    let first = a.ok("publish", json!({"channel": "news", "msg": "one"}));
    assert_eq!(first["id"].as_u64(), Some(1));
    assert_eq!(a.event()[3]["msg"], mp(json!(["one"])));
    assert_eq!(c.recv()["msg"], json!(["one"]));
    a.ok("delete_channel", json!({"channel": "news"}));
    assert_eq!(a.event()[2].as_str(), Some("channel_deleted"));
    assert_eq!(
        c.recv(),
        json!({"type": "channel_deleted", "channel": "news"})
    );
    let again = a.ok("publish", json!({"channel": "news", "msg": "two"}));
    assert_eq!(again["id"].as_u64(), Some(1));
    assert_ne!(again["epoch"], first["epoch"]);
    // The old subscriptions are gone: nothing arrives; a new one gets what follows.
    a.ok("subscribe", json!({"channel": "news"}));
    a.ok("publish", json!({"channel": "news", "msg": "three"}));
    let e = a.event();
    assert_eq!(
        (e[3]["id"].as_u64(), e[3]["msg"].clone()),
        (Some(2), mp(json!(["three"])))
    );
}

#[test]
fn a_subscriber_that_stops_reading_is_dropped_and_the_publisher_goes_on() {
    let l = start(r#", "max_output": 262144"#);
    // A small receive buffer, so the kernel holds little of what the server sends it.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], l.v1)).into())
        .unwrap();
    let mut slow = V1(socket.into(), 0, Default::default());
    slow.0
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.ok(
        "login",
        json!({"account": "account", "password": "password", "name": "slow"}),
    );
    slow.ok("subscribe", json!({"channel": "firehose"}));
    let mut fast = V1::login(l.v1);
    fast.ok("subscribe", json!({"channel": "firehose"}));
    let mut p = V1::login(l.v1);
    let big = "x".repeat(16000);
    // The reading subscriber keeps up (it takes each message before the next is sent);
    // the other never reads, and its output passes the cap.
    for id in 1..=500u64 {
        p.ok("publish", json!({"channel": "firehose", "msg": big}));
        assert_eq!(fast.event()[3]["id"].as_u64(), Some(id));
    }
    assert!(
        read_until_closed(&mut slow.0).is_some(),
        "the slow subscriber was not closed"
    );
}

#[test]
fn an_account_with_a_password_hash_made_by_the_cli_logs_in() {
    let mut child = std::process::Command::new(stage_bin())
        .arg("--hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"open sesame\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    let l = start(&format!(
        r#", "accounts": {{ "gate": {{ "password_hash": "{phc}", "project": "p" }} }}"#
    ));
    let mut v = V1::connect(l.v1);
    let r = v.request(
        "login",
        json!({"account": "gate", "password": "open sesame", "name": "g1"}),
    );
    assert_eq!(r[3]["session"].as_str(), Some("p.g1"), "{r}");
    let mut c = Compat::connect(l.compat);
    c.send(&json!({"account": "gate", "password": "open sesame!", "name": "g2"}));
    assert_eq!(c.line(), "401 Unauthorized, wrong password\n");
}

// ---- the Lua client (`require("lotus")`) --------------------------------------------------

/// A node with a Lua stage running `start` and a lotus stage on `compat`.
fn start_with_script(script: &str) -> (Server, u16) {
    let compat = free_port();
    let threads = affinity_cpus().min(2);
    let config = format!(
        r##"{{ "#threads": {threads}, "#startup": [["lua.so+game", "lotus.so+lotus"]],
              "lua.so": {{ "%package": ["."], "%reflush": 0, "game": "start" }},
              "lotus.so+lotus": {{ "compat": "127.0.0.1:{compat}",
                 "accounts": {{ "account": {{ "password": "password", "project": "demo" }} }} }} }}"##
    );
    let script = script.replace("COMPAT", &compat.to_string());
    let server = Server::start(&config, &[("start.lua", &script)]);
    (server, compat)
}

#[test]
fn a_stage_script_runs_the_seeds_lotus_client_example() {
    let (server, _) = start_with_script(
        r#"
local lotus = require("lotus")
local client_schema = {
    typename = "client",
    unique = false,
    init = {},  -- optional
    handlers = {
        ping = [[
        function(ctx, client, params)
            ctx.log("ping")
            -- push msg to channel
            ctx.publish("client-socket-" .. client.id, {name = "pong"})
        end
        ]]
    }
}
-- connect to lotus server
lotus.connect("127.0.0.1", COMPAT)
lotus.login("account", "password", "gate")
lotus.register(client_schema)

local s = lotus.init("client", "c1", {id = 100001})
local channel = lotus.channel("client-socket-100001")
channel.subscribe(function (msg) logger.info("GOT " .. msg.name) end)
s.ping()
lotus.update("c1", "level", 3)
lotus.get("c1", {}, function (v, err) logger.info("STATE " .. tostring(v and v.id) .. " " .. tostring(v and v.level) .. " " .. tostring(err)) end)
lotus.call("c1", "nope", {}, function (v, err) logger.info("CALL " .. tostring(err)) end)
broker.ready('tcp://127.0.0.1:PORT', function () return true end)
"#,
    );
    server.wait_log("GOT pong");
    server.wait_log("STATE 100001 3 nil");
    server.wait_log("CALL unknown_handler");
}

// ---- persistence (spec §6.6, §9.5) ----------------------------------------------------------

/// `kill -9` the node and start it again in the same directory with the same configuration
/// (the embedded store's files, `lotus/`, are in that directory).
fn kill_and_restart(l: &mut Lotus) {
    l.server.signal(libc::SIGKILL);
    l.server.wait_exit();
    // A killed node's listening sockets go on accepting for a few ms after it is reaped (the
    // kernel drops the io_uring accepts' references to them asynchronously): a node started
    // at once would look ready through the dead node's socket, and its first clients would
    // then be refused. Wait until the ports refuse, as a supervisor's restart delay does.
    for port in [l.v1, l.compat] {
        wait_port_refused(port);
    }
    restart(l);
}

/// Starts the node again (it has exited) in the same directory with the same configuration.
fn restart(l: &mut Lotus) {
    let dir = std::mem::replace(&mut l.server.dir, tempfile::tempdir().unwrap());
    *l = spawn(dir, l.v1, l.compat);
}

/// What a restart must find: states and channels written before `kill -9`, by the store
/// named in `extra` (empty: the embedded default).
fn survives_kill_9(extra: &str) {
    let mut l = start(&format!(r#", "flush_ms": 50 {extra}"#));
    let mut v = V1::login(l.v1);
    let r = register(
        &mut v,
        "counter",
        json!({
            "add": "function(ctx, s, n) s.n = s.n + n; return s.n end",
            "bye": "function(ctx, s) ctx.exit() end"
        }),
        json!({}),
    );
    assert_eq!(r[0].as_u64(), Some(1), "{r}");
    // States on both cores (the shard rule spreads the names).
    for i in 0..6 {
        v.ok(
            "init_state",
            json!({"typename": "counter", "statename": format!("c{i}"), "value": {"n": i, "tags": {"a": [1, 2]}}}),
        );
        v.ok(
            "update_state",
            json!({"statename": format!("c{i}"), "keys": ["tags", "b"], "value": "x"}),
        );
        let r = v.ok(
            "call",
            json!({"statename": format!("c{i}"), "funcname": "add", "params": [10]}),
        );
        assert_eq!(r[0].as_i64(), Some(i + 10));
    }
    v.ok(
        "execute_state",
        json!({"statename": "c5", "funcname": "bye", "params": []}),
    );
    for i in 1..=3 {
        v.ok(
            "publish",
            json!({"channel": "chat", "msg": format!("m{i}")}),
        );
    }
    // Acknowledged more than flush_ms + margin before the kill.
    std::thread::sleep(Duration::from_millis(50 + 750));
    kill_and_restart(&mut l);

    let mut v = V1::login(l.v1);
    for i in 0..5 {
        let s = v.ok("get", json!({"statename": format!("c{i}"), "keys": []}));
        assert_eq!(s["n"].as_i64(), Some(i + 10), "c{i}: {s}");
        assert_eq!(s["tags"]["b"].as_str(), Some("x"), "c{i}: {s}");
        assert_eq!(s["tags"]["a"][1].as_i64(), Some(2), "c{i}: {s}");
    }
    // The state that exited is gone for good.
    let (code, _) = V1::err(v.request("get", json!({"statename": "c5", "keys": []})));
    assert_eq!(code, "state_not_found");
    // The schema came back too: handlers run and new states of the type can be made.
    let r = v.ok(
        "call",
        json!({"statename": "c0", "funcname": "add", "params": [1]}),
    );
    assert_eq!(r[0].as_i64(), Some(11));
    assert_eq!(
        v.ok("schema_list", json!({}))[0][0].as_str(),
        Some("counter")
    );
    let r = v.ok(
        "init_state",
        json!({"typename": "counter", "statename": "c1", "value": {"n": 0}}),
    );
    assert_eq!(
        r["created"].as_bool(),
        Some(false),
        "a stored state is not created again"
    );
    // Channel history survived; a resume replays from it and new ids continue after it.
    let h = v.ok("channel_history", json!({"channel": "chat", "last": 10}));
    let items: Vec<_> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| {
            (
                it["id"].as_u64().unwrap(),
                it["msg"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            (1, "m1".to_string()),
            (2, "m2".to_string()),
            (3, "m3".to_string())
        ]
    );
    let mut sub = V1::login(l.v1);
    sub.ok("subscribe", json!({"channel": "chat", "from": {"id": 2}}));
    v.ok("publish", json!({"channel": "chat", "msg": "m4"}));
    let got: Vec<_> = (0..3)
        .map(|_| {
            let e = sub.event();
            (
                e[3]["id"].as_u64().unwrap(),
                e[3]["msg"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (2, "m2".to_string()),
            (3, "m3".to_string()),
            (4, "m4".to_string())
        ]
    );
}

#[test]
fn the_embedded_store_keeps_states_schemas_and_history_across_kill_9() {
    survives_kill_9("");
}

/// `ctx.save()`: the reply to the handler that called it comes once the store wrote the state,
/// so a `kill -9` right after the reply (no flush in a minute) loses nothing of it; a state
/// changed without it is only dirty and is lost (which shows no flush wrote the first).
/// `redis`: stopped before a last save, whose caller then gets the store's error.
fn ctx_save_survives_kill_9_at_once(extra: &str, redis: Option<&mut RedisServer>) {
    let mut l = start(&format!(r#", "flush_ms": 60000 {extra}"#));
    let mut v = V1::login(l.v1);
    let r = register(
        &mut v,
        "counter",
        json!({
            "set": "function(ctx, s, n) s.n = n; ctx.save(); return s.n end",
            "bump": "function(ctx, s) s.n = s.n + 1; return s.n end",
            "bad": "function(ctx, s) s.n = -1; ctx.save(); error('after save') end"
        }),
        json!({}),
    );
    assert_eq!(r[0].as_u64(), Some(1), "{r}");
    // States on both cores (the shard rule spreads the names).
    for i in 0..4 {
        v.ok(
            "init_state",
            json!({"typename": "counter", "statename": format!("s{i}"), "value": {"n": 0}}),
        );
        let r = v.ok(
            "call",
            json!({"statename": format!("s{i}"), "funcname": "set", "params": [i + 40]}),
        );
        assert_eq!(r[0].as_i64(), Some(i + 40));
    }
    // execute_state waits for the write too; a handler that fails after ctx.save() gets its
    // own error, and what it changed is written all the same.
    v.ok(
        "execute_state",
        json!({"statename": "s3", "funcname": "set", "params": [7]}),
    );
    let (code, detail) = V1::err(v.request(
        "call",
        json!({"statename": "s2", "funcname": "bad", "params": []}),
    ));
    assert_eq!(code, "handler_error", "{detail}");
    // Changed after its save, without one: only dirty.
    assert_eq!(
        v.ok(
            "call",
            json!({"statename": "s0", "funcname": "bump", "params": []})
        )[0]
        .as_i64(),
        Some(41)
    );
    v.ok(
        "init_state",
        json!({"typename": "counter", "statename": "unsaved", "value": {"n": 1}}),
    );
    if let Some(r) = redis {
        r.stop();
        let (code, detail) = V1::err(v.request(
            "call",
            json!({"statename": "s1", "funcname": "set", "params": [99]}),
        ));
        assert_eq!(code, "overloaded");
        let detail = detail.to_string();
        assert!(detail.contains(&r.url()), "{detail}");
        r.restart();
    }
    kill_and_restart(&mut l);

    let mut v = V1::login(l.v1);
    let want = [(0, 40), (1, 41), (2, -1), (3, 7)];
    for (i, n) in want {
        let s = v.ok("get", json!({"statename": format!("s{i}"), "keys": ["n"]}));
        assert_eq!(s.as_i64(), Some(n), "s{i}");
    }
    let (code, _) = V1::err(v.request("get", json!({"statename": "unsaved", "keys": []})));
    assert_eq!(code, "state_not_found");
}

#[test]
fn ctx_save_is_written_to_the_embedded_store_before_the_reply() {
    ctx_save_survives_kill_9_at_once("", None);
}

#[test]
fn ctx_save_is_written_to_redis_before_the_reply() {
    let test = "lotus::ctx_save_is_written_to_redis_before_the_reply";
    let Some(mut r) = RedisServer::start(test, true) else {
        return;
    };
    let store = redis_store(&r);
    ctx_save_survives_kill_9_at_once(&store, Some(&mut r));
}

#[test]
fn a_state_over_max_state_bytes_is_served_but_not_stored_and_logged_once() {
    let mut l = start(r#", "flush_ms": 20, "max_state_bytes": 64"#);
    let mut v = V1::login(l.v1);
    let r = register(&mut v, "blob", json!({}), json!({}));
    assert_eq!(r[0].as_u64(), Some(1), "{r}");
    let big = "x".repeat(200);
    v.ok(
        "init_state",
        json!({"typename": "blob", "statename": "big", "value": {"s": big}}),
    );
    v.ok(
        "init_state",
        json!({"typename": "blob", "statename": "small", "value": {"s": "y"}}),
    );
    // Served from memory all the same.
    assert_eq!(
        v.ok("get", json!({"statename": "big", "keys": ["s"]}))
            .as_str(),
        Some(big.as_str())
    );
    l.server.wait_log("over max_state_bytes");
    // A second change of it: still one line for that state.
    v.ok(
        "update_state",
        json!({"statename": "big", "keys": ["t"], "value": 1}),
    );
    std::thread::sleep(Duration::from_millis(20 + 500));
    assert_eq!(l.server.log().matches("over max_state_bytes").count(), 1);
    kill_and_restart(&mut l);
    let mut v = V1::login(l.v1);
    let (code, _) = V1::err(v.request("get", json!({"statename": "big", "keys": []})));
    assert_eq!(code, "state_not_found");
    assert_eq!(
        v.ok("get", json!({"statename": "small", "keys": ["s"]}))
            .as_str(),
        Some("y")
    );
}

#[test]
fn requests_pipelined_behind_a_register_see_the_schema_on_every_core() {
    let l = start("");
    let mut v = V1::login(l.v1);
    // Register and eight inits (states spread over the cores) sent at once, before any reply:
    // the register waits for the store, and the inits must still find the schema.
    // One write, so the server reads them all at once.
    let schema = mp(json!({"schema": {"typename": "piped", "handlers": {}}}));
    let mut burst = v1_frame(100, "register", schema);
    for i in 0..8u64 {
        let args = mp(json!({"typename": "piped", "statename": format!("s{i}")}));
        burst.extend(v1_frame(101 + i, "init_state", args));
    }
    v.0.write_all(&burst).unwrap();
    let mut seen = 0;
    while seen < 9 {
        let r = v.recv();
        assert_eq!(r[0].as_u64(), Some(1), "a pipelined request failed: {r}");
        seen += 1;
    }
}

/// A core holds many more states than mlua has auxiliary stack slots (about 8000; a state's
/// table held as a Rust `Table` handle took one each, and the core panicked past that).
#[test]
fn one_core_holds_ten_thousand_states() {
    let (v1, compat) = (free_port(), free_port());
    let config = format!(
        r##"{{ "#threads": 1, "#startup": ["lotus.so+lotus"],
              "lotus.so+lotus": {{ "listen": "127.0.0.1:{v1}", "compat": "127.0.0.1:{compat}",
                 "flush_ms": 60000,
                 "accounts": {{ "account": {{ "password": "password", "project": "demo" }} }} }} }}"##
    );
    let Lotus { mut server, .. } = start_config(&config, v1, compat);
    let mut v = V1::login(v1);
    assert_eq!(
        register(
            &mut v,
            "many",
            json!({"hit": "function (ctx, s) s.n = (s.n or 0) + 1 return s.n end"}),
            json!({})
        )[0]
        .as_u64(),
        Some(1)
    );
    const N: u64 = 10_000;
    let mut burst = Vec::new();
    for i in 0..N {
        let args = mp(json!({"typename": "many", "statename": format!("s{i}"), "value": {"i": i}}));
        burst.extend(v1_frame(1000 + i, "init_state", args));
    }
    v.0.write_all(&burst).unwrap();
    for _ in 0..N {
        let r = v.recv();
        assert_eq!(r[0].as_u64(), Some(1), "an init_state failed: {r}");
    }
    // Every state is still there and its handler runs (its table and ctx come back).
    for i in [0, N / 2, N - 1] {
        let got = v.ok("get", json!({"statename": format!("s{i}"), "keys": []}));
        assert_eq!(got["i"].as_u64(), Some(i), "s{i}: {got}");
        let called = v.ok(
            "call",
            json!({"statename": format!("s{i}"), "funcname": "hit", "params": []}),
        );
        assert_eq!(called[0].as_u64(), Some(1), "s{i}: {called}");
    }
    assert!(
        server.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the node died"
    );
}

// ---- the Redis store ------------------------------------------------------------------------

/// `, "store": "redis://…"` for a lotus block.
fn redis_store(r: &RedisServer) -> String {
    format!(r#", "store": "{}""#, r.url())
}

#[test]
fn the_redis_store_keeps_states_schemas_and_history_across_kill_9() {
    let test = "lotus::the_redis_store_keeps_states_schemas_and_history_across_kill_9";
    let Some(r) = RedisServer::start(test, false) else {
        return;
    };
    survives_kill_9(&redis_store(&r));
}

/// SIGTERM long before `flush_ms` (a minute): the orderly stop writes every dirty state.
fn an_orderly_stop_writes_dirty_states(extra: &str) {
    let mut l = start(&format!(r#", "flush_ms": 60000 {extra}"#));
    let mut v = V1::login(l.v1);
    let r = register(&mut v, "counter", json!({}), json!({}));
    assert_eq!(r[0].as_u64(), Some(1), "{r}");
    for i in 0..4 {
        v.ok(
            "init_state",
            json!({"typename": "counter", "statename": format!("c{i}"), "value": {"n": i}}),
        );
        v.ok(
            "update_state",
            json!({"statename": format!("c{i}"), "keys": ["n"], "value": i + 100}),
        );
    }
    assert!(l.server.stop().success(), "{}", l.server.log());
    restart(&mut l);
    let mut v = V1::login(l.v1);
    for i in 0..4 {
        let s = v.ok("get", json!({"statename": format!("c{i}"), "keys": ["n"]}));
        assert_eq!(s.as_i64(), Some(i + 100), "c{i}");
    }
}

#[test]
fn an_orderly_stop_writes_dirty_states_to_the_embedded_store() {
    an_orderly_stop_writes_dirty_states("");
}

#[test]
fn an_orderly_stop_writes_dirty_states_to_redis() {
    let test = "lotus::an_orderly_stop_writes_dirty_states_to_redis";
    let Some(r) = RedisServer::start(test, false) else {
        return;
    };
    an_orderly_stop_writes_dirty_states(&redis_store(&r));
}

#[test]
fn redis_stopped_mid_run_fails_what_needs_it_and_loses_nothing_acknowledged() {
    let test = "lotus::redis_stopped_mid_run_fails_what_needs_it_and_loses_nothing_acknowledged";
    let Some(mut redis) = RedisServer::start(test, true) else {
        return;
    };
    let mut l = start(&format!(r#", "flush_ms": 50 {}"#, redis_store(&redis)));
    let mut v = V1::login(l.v1);
    let r = register(&mut v, "counter", json!({}), json!({}));
    assert_eq!(r[0].as_u64(), Some(1), "{r}");
    v.ok(
        "init_state",
        json!({"typename": "counter", "statename": "a", "value": {"n": 1}}),
    );
    v.ok("publish", json!({"channel": "chat", "msg": "m1"}));
    // The state is in Redis (what an operator sees there), at revision `rev`.
    let key = "lotus:lotus:demo:st:a";
    let rev = poll(READY, || {
        Some(redis.cli(&["HGET", key, "rev"])).filter(|r| !r.is_empty())
    })
    .expect("the state was never written to Redis");

    redis.stop();
    // Acknowledged while Redis is down: kept, written when it is back.
    v.ok(
        "update_state",
        json!({"statename": "a", "keys": ["n"], "value": 2}),
    );
    v.ok("publish", json!({"channel": "chat", "msg": "m2"}));
    // What needs Redis now fails with an error naming it, at once.
    let (code, detail) = V1::err(register(&mut v, "other", json!({}), json!({})));
    assert_eq!(code, "overloaded");
    let detail = detail.to_string();
    assert!(
        detail.contains(&redis.url()) && detail.contains("Redis is unreachable"),
        "{detail}"
    );
    let (code, detail) = V1::err(v.request("get", json!({"statename": "b", "keys": []})));
    assert_eq!(code, "overloaded", "{detail}");
    // The node keeps serving what it holds.
    assert_eq!(v.ok("ping", json!({})).as_str(), Some("pong"));
    assert_eq!(
        v.ok("get", json!({"statename": "a", "keys": ["n"]}))
            .as_i64(),
        Some(2)
    );

    redis.restart();
    // The dirty state and the kept message reach Redis once it answers.
    poll(READY, || {
        let written = redis.cli(&["HGET", key, "rev"]) != rev
            && redis.cli(&["XLEN", "lotus:lotus:demo:ch:chat"]) == "2";
        written.then_some(())
    })
    .expect("the state and the message were never written after Redis came back");
    // One outage, logged once (not per command or flush).
    let log = l.server.log();
    assert_eq!(log.matches("Redis is unreachable:").count(), 1, "{log}");
    assert_eq!(log.matches("state(s) not written").count(), 1, "{log}");
    v.ok("ping", json!({}));
    // Registers work again.
    let r = register(&mut v, "other", json!({}), json!({}));
    assert_eq!(r[0].as_u64(), Some(1), "{r}");

    kill_and_restart(&mut l);
    let mut v = V1::login(l.v1);
    assert_eq!(
        v.ok("get", json!({"statename": "a", "keys": ["n"]}))
            .as_i64(),
        Some(2)
    );
    let h = v.ok("channel_history", json!({"channel": "chat", "last": 10}));
    let items: Vec<_> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| {
            (
                it["id"].as_u64().unwrap(),
                it["msg"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(items, [(1, "m1".to_string()), (2, "m2".to_string())]);
}

/// A "Redis" that accepts connections and never answers (nor reads): what a hung Redis, or a
/// wrong port with something else listening, looks like to the store.
fn silent_redis() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The thread holds the connections open until the test process ends.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    port
}

#[test]
fn a_redis_that_never_answers_fails_what_needs_it_and_the_node_still_stops() {
    // A password and a database: the connection's setup sends AUTH and SELECT, whose
    // replies never come (the read that used to block the store thread for good).
    let port = silent_redis();
    let url = format!("redis://:pw@127.0.0.1:{port}/1");
    let mut l = start(&format!(r#", "store": "{url}""#));
    // The client's own read timeout (10 s, V1::connect) is the bound: a stuck store thread
    // would leave these requests unanswered and fail the test there.
    let mut v = V1::login(l.v1);
    let (code, detail) = V1::err(register(&mut v, "counter", json!({}), json!({})));
    assert_eq!(code, "overloaded", "{detail}");
    let detail = detail.to_string();
    assert!(
        detail.contains("Redis is unreachable") && detail.contains(&format!("127.0.0.1:{port}/1")),
        "{detail}"
    );
    assert!(
        !detail.contains(":pw@"),
        "the password reached a message: {detail}"
    );
    // A first load needs the store as well: a state's, a channel's (its history).
    let (code, detail) = V1::err(v.request("get", json!({"statename": "s", "keys": []})));
    assert_eq!(code, "overloaded", "{detail}");
    let (code, detail) = V1::err(v.request("publish", json!({"channel": "chat", "msg": "m"})));
    assert_eq!(code, "overloaded", "{detail}");
    // What needs no store goes on.
    assert_eq!(v.ok("ping", json!({})).as_str(), Some("pong"));
    // SIGTERM: the store's last try is bounded too, so the node exits, and cleanly.
    let status = l.server.stop();
    let log = l.server.log();
    assert!(status.success(), "{status}\n{log}");
    // The outage was logged once, not per attempt.
    assert_eq!(log.matches("Redis is unreachable:").count(), 1, "{log}");
}
