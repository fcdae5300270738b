//! lotus.so against its baselines, each pair measured in one run of this binary (issue #11
//! item 7). It starts `stage` (the release build next to this binary) with a `lotus.so+lotus`
//! stage (v1 wire) and a `lua.so+echo` stage in the same node, and speaks both wires itself
//! with raw frames, so no client library is measured on either side.
//!
//! - `fanout`: one publisher, SUBS subscribers of one channel, every connection on loopback
//!   TCP — lotus (`publish` / `subscribe` on v1) against Redis pub/sub (`PUBLISH` /
//!   `SUBSCRIBE`, a redis-server this binary starts on a free port). The publisher keeps at
//!   most WINDOW messages undelivered (a message is delivered when every subscriber has it).
//!   Each message carries its send time; a subscriber's delivery latency is its arrival time
//!   minus that. All clients run on one tokio thread of this process.
//! - `exec`: `call` of a trivial handler on lotus (the state's `n` plus one, returned) against
//!   the engine's packet path without lotus: a STAGE script that calls a plain Lua function on
//!   each BSON message and returns its result. CONNS connections, WINDOW requests in flight on
//!   each, calls spread over 64 states.
//! - `states`: the node's RSS growth per idle state after `init_state` of N small states
//!   (`{id = i, hp = 100}`), against the same N tables built in a bare LuaJIT state
//!   (`collectgarbage("count")`) — the cost of a state beyond its Lua table.
//!
//! Usage: target/release/lotus-bench [all|fanout|exec|states]
//!        env: SUBS (1000) MSGS (500) FAN_WINDOW (8) CALLS (200000) CONNS (4) EXEC_WINDOW (32)
//!        STATES (6000; see BENCHMARKS.md for why not more)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rmpv::Value;
use stage_engine::service::lotus::wire::v1::encode_request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn raise_nofile(n: u64) {
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain setrlimit on a valid struct; failure only limits the connection count.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A child process killed when dropped, and the directory it runs in (removed after it).
struct Proc {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node under test: lotus on `v1`, the Lua echo on `echo`.
struct Node {
    proc: Proc,
    v1: u16,
    echo: u16,
}

const ECHO: &str = r#"
-- The baseline of `exec`: one plain Lua function call per message, through the packet path.
-- (A receive callback is re-created on its core without upvalues: the function and the
-- counters are that core's globals.)
broker.ready("tcp://127.0.0.1:PORT?packet=4k,10k", function ()
  return function (socket, data)
    if not ADD then
      STATES = {}
      ADD = function (s, n) s.n = (s.n or 0) + n return s.n end
    end
    local s = STATES[data.s]
    if not s then s = {} STATES[data.s] = s end
    return { n = ADD(s, data.n) }
  end
end)
"#;

fn start_node() -> anyhow::Result<Node> {
    let exe = std::env::current_exe()?;
    let stage = exe.parent().context("bin dir")?.join("stage");
    if !stage.exists() {
        bail!(
            "{} not found: cargo build --release --workspace",
            stage.display()
        );
    }
    let (v1, echo) = (free_port()?, free_port()?);
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("stage.json"),
        format!(
            r##"{{ "#threads": 2, "#startup": [["lua.so+echo", "lotus.so+lotus"]],
  "lua.so": {{ "%package": ["."], "%reflush": 0, "echo": "start" }},
  "lotus.so+lotus": {{ "listen": "127.0.0.1:{v1}", "max_states": 10000000,
     "accounts": {{ "bench": {{ "password": "pw", "project": "bench" }} }} }} }}"##
        ),
    )?;
    std::fs::write(
        dir.path().join("start.lua"),
        ECHO.replace("PORT", &echo.to_string()),
    )?;
    let child = Command::new(&stage)
        .args(["-c", "stage.json", "-l", "warn"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        // The node's warnings (a limit hit, a closed connection) explain a failed run.
        .stderr(Stdio::inherit())
        .spawn()?;
    let proc = Proc { child, _dir: dir };
    wait_port(v1)?;
    wait_port(echo)?;
    Ok(Node { proc, v1, echo })
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn login_args(node: &str) -> Value {
    map([
        ("account", Value::from("bench")),
        ("password", Value::from("pw")),
        ("name", Value::from(node)),
    ])
}

// ---- a blocking v1 client (setup, exec, states) ----------------------------------------------

struct V1(TcpStream, u64);

impl V1 {
    fn login(port: u16, node: &str) -> anyhow::Result<V1> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        let mut v = V1(s, 0);
        v.ok("login", login_args(node))?;
        Ok(v)
    }

    fn send(&mut self, rid: u64, name: &str, args: Value) -> anyhow::Result<()> {
        self.0.write_all(&encode_request(rid, name, args))?;
        Ok(())
    }

    fn recv(&mut self) -> anyhow::Result<Value> {
        let mut h = [0u8; 4];
        self.0.read_exact(&mut h)?;
        let mut body = vec![0; u32::from_be_bytes(h) as usize];
        self.0.read_exact(&mut body)?;
        Ok(rmpv::decode::read_value(&mut &body[..])?)
    }

    /// One request, waited for; an error reply is an error.
    fn ok(&mut self, name: &str, args: Value) -> anyhow::Result<Value> {
        self.1 += 1;
        let rid = self.1;
        self.send(rid, name, args)?;
        loop {
            let r = self.recv()?;
            if r[1].as_u64() == Some(rid) || r[0].as_u64() == Some(2) {
                if r[0].as_u64() != Some(1) {
                    bail!("{name}: {r}");
                }
                return Ok(r[3].clone());
            }
        }
    }
}

// ---- fanout --------------------------------------------------------------------------------

#[derive(Default)]
struct Fan {
    delivered: AtomicU64,
    /// Delivery latencies in microseconds, over all subscribers.
    latencies: std::cell::RefCell<Vec<u32>>,
    wake: tokio::sync::Notify,
}

impl Fan {
    fn record(&self, sent_ns: u64, base: Instant) {
        let now = base.elapsed().as_nanos() as u64;
        self.latencies
            .borrow_mut()
            .push((now.saturating_sub(sent_ns) / 1000) as u32);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Waits until at least `n` deliveries were recorded.
    async fn until(&self, n: u64) {
        while self.delivered.load(Ordering::Relaxed) < n {
            self.wake.notified().await;
        }
    }
}

struct Figures {
    per_s: f64,
    p50_us: u32,
    p99_us: u32,
}

fn figures(fan: &Fan, elapsed: Duration) -> Figures {
    let mut l = fan.latencies.borrow_mut();
    l.sort_unstable();
    let at = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    Figures {
        per_s: l.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

/// Reads v1 frames off a subscriber's socket; every `channel_message` event is a delivery.
async fn lotus_subscriber(
    mut s: tokio::net::TcpStream,
    fan: Rc<Fan>,
    base: Instant,
    expect: u64,
) -> anyhow::Result<()> {
    let mut got = 0;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    while got < expect {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("a lotus subscriber was closed after {got} messages");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while buf.len() - at >= 4 {
            let len = u32::from_be_bytes(buf[at..at + 4].try_into()?) as usize;
            if buf.len() - at - 4 < len {
                break;
            }
            let v = rmpv::decode::read_value(&mut &buf[at + 4..at + 4 + len])?;
            at += 4 + len;
            if v[0].as_u64() == Some(3) && v[2].as_str() == Some("channel_message") {
                let sent = field(&v[3], "msg").and_then(|m| m[0].as_u64()).unwrap_or(0);
                fan.record(sent, base);
                got += 1;
            }
        }
        buf.drain(..at);
    }
    Ok(())
}

/// Reads RESP off a Redis subscriber's socket: every `message` push is a delivery (the
/// payload is the send time in decimal).
async fn redis_subscriber(
    mut s: tokio::net::TcpStream,
    fan: Rc<Fan>,
    base: Instant,
    expect: u64,
) -> anyhow::Result<()> {
    let mut got = 0;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    while got < expect {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("a redis subscriber was closed after {got} messages");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        // `*3\r\n$7\r\nmessage\r\n$3\r\nfan\r\n$N\r\n<payload>\r\n`: the payload is the
        // last bulk string of a complete push.
        while let Some(end) = resp_push(&buf[at..]) {
            let push = &buf[at..at + end.0];
            if push.windows(7).any(|w| w == b"message") {
                let sent: u64 = std::str::from_utf8(&push[end.1..end.2])?.parse()?;
                fan.record(sent, base);
                got += 1;
            }
            at += end.0;
        }
        buf.drain(..at);
    }
    Ok(())
}

/// The length of the complete 3-element RESP array at the start of `b`, and where its last
/// bulk string's bytes start and end; `None` when more bytes are needed.
fn resp_push(b: &[u8]) -> Option<(usize, usize, usize)> {
    fn line(b: &[u8], at: usize) -> Option<(usize, usize)> {
        let end = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((at, end))
    }
    let (_, e) = line(b, 0)?; // *3
    let mut at = e + 2;
    let mut last = (0, 0);
    for _ in 0..3 {
        let (s, e) = line(b, at)?;
        let head = &b[s..e];
        at = e + 2;
        if head.first() == Some(&b':') {
            last = (s + 1, e);
            continue;
        }
        let len: usize = std::str::from_utf8(&head[1..]).ok()?.parse().ok()?;
        if b.len() < at + len + 2 {
            return None;
        }
        last = (at, at + len);
        at += len + 2;
    }
    Some((at, last.0, last.1))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn fanout_lotus(node: &Node, subs: usize, msgs: u64, window: u64) -> anyhow::Result<Figures> {
    let port = node.v1;
    // Subscribers log in and subscribe with blocking sockets, then go to tokio.
    let mut socks = Vec::with_capacity(subs);
    for i in 0..subs {
        let mut v = V1::login(port, &format!("sub{i}"))?;
        v.ok("subscribe", map([("channel", Value::from("fan"))]))?;
        v.0.set_nonblocking(true)?;
        socks.push(v.0);
    }
    let publisher = V1::login(port, "pub")?;
    publisher.0.set_nonblocking(true)?;
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let fan = Rc::new(Fan::default());
        let base = Instant::now();
        let mut tasks = Vec::new();
        for s in socks {
            let s = tokio::net::TcpStream::from_std(s)?;
            tasks.push(tokio::task::spawn_local(lotus_subscriber(
                s,
                fan.clone(),
                base,
                msgs,
            )));
        }
        let mut p = tokio::net::TcpStream::from_std(publisher.0)?;
        let started = Instant::now();
        for i in 0..msgs {
            fan.until((i + 1).saturating_sub(window) * subs as u64)
                .await;
            let sent = base.elapsed().as_nanos() as u64;
            let frame = encode_request(
                0,
                "publish",
                map([("channel", Value::from("fan")), ("msg", Value::from(sent))]),
            );
            p.write_all(&frame).await?;
        }
        fan.until(msgs * subs as u64).await;
        let elapsed = started.elapsed();
        for t in tasks {
            t.await??;
        }
        Ok(figures(&fan, elapsed))
    })
}

fn start_redis() -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "10000",
            "--client-output-buffer-limit",
            "pubsub 0 0 0",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server (apt-get install redis-server)")?;
    let proc = Proc { child, _dir: dir };
    wait_port(port)?;
    Ok((proc, port))
}

fn fanout_redis(port: u16, subs: usize, msgs: u64, window: u64) -> anyhow::Result<Figures> {
    let mut socks = Vec::with_capacity(subs);
    for _ in 0..subs {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$3\r\nfan\r\n")?;
        // The confirmation: *3 $9 subscribe $3 fan :1
        let mut got = Vec::new();
        let mut b = [0u8; 256];
        while resp_push(&got).is_none() {
            let n = s.read(&mut b)?;
            if n == 0 {
                bail!("redis closed a subscriber");
            }
            got.extend_from_slice(&b[..n]);
        }
        s.set_nonblocking(true)?;
        socks.push(s);
    }
    let publisher = TcpStream::connect(("127.0.0.1", port))?;
    publisher.set_nodelay(true)?;
    publisher.set_nonblocking(true)?;
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let fan = Rc::new(Fan::default());
        let base = Instant::now();
        let mut tasks = Vec::new();
        for s in socks {
            let s = tokio::net::TcpStream::from_std(s)?;
            tasks.push(tokio::task::spawn_local(redis_subscriber(
                s,
                fan.clone(),
                base,
                msgs,
            )));
        }
        let p = tokio::net::TcpStream::from_std(publisher)?;
        let (mut rd, mut wr) = p.into_split();
        // PUBLISH answers the receiver count; drained so the socket never fills.
        let drain = tokio::task::spawn_local(async move {
            let mut b = vec![0u8; 4096];
            while rd.read(&mut b).await.is_ok_and(|n| n > 0) {}
        });
        let started = Instant::now();
        for i in 0..msgs {
            fan.until((i + 1).saturating_sub(window) * subs as u64)
                .await;
            let sent = base.elapsed().as_nanos().to_string();
            let cmd = format!(
                "*3\r\n$7\r\nPUBLISH\r\n$3\r\nfan\r\n${}\r\n{sent}\r\n",
                sent.len()
            );
            wr.write_all(cmd.as_bytes()).await?;
        }
        fan.until(msgs * subs as u64).await;
        let elapsed = started.elapsed();
        for t in tasks {
            t.await??;
        }
        drain.abort();
        Ok(figures(&fan, elapsed))
    })
}

fn fanout(node: &Node) -> anyhow::Result<()> {
    let subs = env("SUBS", 1000);
    let msgs = env("MSGS", 500) as u64;
    let window = env("FAN_WINDOW", 8) as u64;
    raise_nofile(subs as u64 * 4 + 1024);
    let (_redis, redis_port) = start_redis()?;
    println!(
        "fanout: 1 publisher, {subs} subscribers, {msgs} messages, at most {window} undelivered"
    );
    let lotus = fanout_lotus(node, subs, msgs, window)?;
    let redis = fanout_redis(redis_port, subs, msgs, window)?;
    println!(
        "{:>26} | {:>14} | {:>10} | {:>10}",
        "", "deliveries/s", "p50", "p99"
    );
    for (name, f) in [("lotus (v1, 2 cores)", &lotus), ("redis pub/sub", &redis)] {
        println!(
            "{:>26} | {:>14.0} | {:>8}us | {:>8}us",
            name, f.per_s, f.p50_us, f.p99_us
        );
    }
    println!(
        "{:>26} | {:>14.2} | {:>10.2} | {:>10.2}",
        "ratio lotus / redis",
        lotus.per_s / redis.per_s,
        lotus.p50_us as f64 / redis.p50_us.max(1) as f64,
        lotus.p99_us as f64 / redis.p99_us.max(1) as f64
    );
    Ok(())
}

// ---- exec ----------------------------------------------------------------------------------

/// `{"v": {"s": "sNN", "n": 1}}`: one message for the echo script.
fn echo_request(state: usize) -> Vec<u8> {
    fn document(body: Vec<u8>) -> Vec<u8> {
        let mut doc = ((body.len() + 5) as u32).to_le_bytes().to_vec();
        doc.extend_from_slice(&body);
        doc.push(0);
        doc
    }
    let name = format!("s{state}");
    let mut inner = vec![0x02, b's', 0];
    inner.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    inner.extend_from_slice(name.as_bytes());
    inner.push(0);
    inner.extend_from_slice(&[0x10, b'n', 0]);
    inner.extend_from_slice(&1i32.to_le_bytes());
    let mut outer = vec![0x03, b'v', 0];
    outer.extend_from_slice(&document(inner));
    document(outer)
}

/// Runs CALLS requests over CONNS connections, WINDOW in flight on each; `frame(i)` is the
/// i-th request, `reply_len(header)` a reply's total length from its first 4 bytes.
fn pipelined(
    conns: Vec<TcpStream>,
    calls: usize,
    window: usize,
    frame: fn(usize) -> Vec<u8>,
    reply_len: fn([u8; 4]) -> usize,
) -> anyhow::Result<f64> {
    let per = calls / conns.len();
    let total = per * conns.len();
    let started = Instant::now();
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut s)| {
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut rd = s.try_clone()?;
                // A missing reply is an error, not a hang.
                rd.set_read_timeout(Some(Duration::from_secs(60)))?;
                // One token per reply read: the writer never has more than `window`
                // requests unanswered, and writes all it may send in one go.
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                let reader = std::thread::spawn(move || -> anyhow::Result<()> {
                    let mut body = vec![0u8; 1 << 16];
                    for _ in 0..per {
                        let mut h = [0u8; 4];
                        rd.read_exact(&mut h)?;
                        rd.read_exact(&mut body[..reply_len(h) - 4])?;
                        let _ = tx.send(());
                    }
                    Ok(())
                });
                let (mut credit, mut sent) = (window, 0);
                let mut out = Vec::new();
                while sent < per {
                    if credit == 0 {
                        rx.recv()?;
                        credit = 1 + rx.try_iter().count();
                    }
                    let k = credit.min(per - sent);
                    out.clear();
                    for i in sent..sent + k {
                        out.extend_from_slice(&frame(c * per + i));
                    }
                    s.write_all(&out)?;
                    credit -= k;
                    sent += k;
                }
                reader.join().expect("reader")?;
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread")?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn lotus_call(i: usize) -> Vec<u8> {
    encode_request(
        i as u64 + 1,
        "call",
        map([
            ("statename", Value::from(format!("s{}", i % 64))),
            ("funcname", Value::from("add")),
            ("params", Value::Array(vec![Value::from(1)])),
        ]),
    )
}

fn exec(node: &Node) -> anyhow::Result<()> {
    let calls = env("CALLS", 200_000);
    let conns = env("CONNS", 4).max(1);
    let window = env("EXEC_WINDOW", 32).max(1);
    let mut setup = V1::login(node.v1, "setup")?;
    setup.ok(
        "register",
        map([(
            "schema",
            map([
                ("typename", Value::from("counter")),
                (
                    "handlers",
                    map([(
                        "add",
                        Value::from("function(ctx, s, n) s.n = (s.n or 0) + n return s.n end"),
                    )]),
                ),
            ]),
        )]),
    )?;
    for i in 0..64 {
        setup.ok(
            "init_state",
            map([
                ("typename", Value::from("counter")),
                ("statename", Value::from(format!("s{i}"))),
            ]),
        )?;
    }
    let mut lotus_conns = Vec::new();
    for c in 0..conns {
        lotus_conns.push(V1::login(node.v1, &format!("exec{c}"))?.0);
    }
    println!("exec: {calls} calls, {conns} connections, {window} in flight each, 64 states");
    let lotus = pipelined(lotus_conns, calls, window, lotus_call, |h| {
        u32::from_be_bytes(h) as usize + 4
    })?;
    // Connected now: an idle packet connection is closed after the listener's deadline.
    let mut echo_conns = Vec::new();
    for _ in 0..conns {
        let s = TcpStream::connect(("127.0.0.1", node.echo))?;
        s.set_nodelay(true)?;
        echo_conns.push(s);
    }
    let echo = pipelined(
        echo_conns,
        calls,
        window,
        |i| echo_request(i % 64),
        |h| u32::from_le_bytes(h) as usize,
    )?;
    // The handler really ran: the 64 counters add up to the calls made.
    let mut total = 0;
    for i in 0..64 {
        let v = setup.ok(
            "get",
            map([
                ("statename", Value::from(format!("s{i}"))),
                ("keys", Value::Array(vec![Value::from("n")])),
            ]),
        )?;
        total += v.as_u64().unwrap_or(0);
    }
    let per = calls / conns * conns;
    if total != per as u64 {
        bail!("the lotus counters add up to {total}, not {per}");
    }
    println!("{:>44} | {:>12}", "", "calls/s");
    println!(
        "{:>44} | {:>12.0}",
        "lotus v1 `call` (handler on the owner core)", lotus
    );
    println!(
        "{:>44} | {:>12.0}",
        "lua.so echo calling a Lua function", echo
    );
    println!("{:>44} | {:>12.2}", "ratio lotus / echo", lotus / echo);
    Ok(())
}

// ---- states --------------------------------------------------------------------------------

fn states(node: &Node) -> anyhow::Result<()> {
    let n = env("STATES", 6_000);
    let mut v = V1::login(node.v1, "states")?;
    v.ok(
        "register",
        map([(
            "schema",
            map([
                ("typename", Value::from("idle")),
                (
                    "handlers",
                    map([("noop", Value::from("function(ctx, s) end"))]),
                ),
            ]),
        )]),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let before = stage_benches::rss_kib(node.proc.child.id())?;
    // Pipelined: every init carries a rid and every reply is read, so all states exist when
    // the last reply is in.
    let mut rd = v.0.try_clone()?;
    let reader = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut body = vec![0u8; 1 << 16];
        for _ in 0..n {
            let mut h = [0u8; 4];
            rd.read_exact(&mut h)?;
            let len = u32::from_be_bytes(h) as usize;
            rd.read_exact(&mut body[..len])?;
            let r = rmpv::decode::read_value(&mut &body[..len])?;
            if r[0].as_u64() != Some(1) {
                bail!("init_state: {r}");
            }
        }
        Ok(())
    });
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(&encode_request(
            i as u64 + 1,
            "init_state",
            map([
                ("typename", Value::from("idle")),
                ("statename", Value::from(format!("idle{i}"))),
                (
                    "value",
                    map([("id", Value::from(i)), ("hp", Value::from(100))]),
                ),
            ]),
        ));
        if out.len() >= 64 << 10 {
            v.0.write_all(&out)?;
            out.clear();
        }
    }
    v.0.write_all(&out)?;
    reader.join().expect("reader")?;
    // Past a few flushes (`flush_ms` 200), so the write-behind has nothing left to hold.
    std::thread::sleep(Duration::from_secs(2));
    let after = stage_benches::rss_kib(node.proc.child.id())?;
    let lotus = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    let lua = mlua::Lua::new();
    let bare: f64 = lua
        .load(
            r#"
            local n = ...
            collectgarbage("collect")
            local before = collectgarbage("count")
            local t = {}
            for i = 0, n - 1 do t["idle" .. i] = { id = i, hp = 100 } end
            collectgarbage("collect")
            return (collectgarbage("count") - before) * 1024 / n
            "#,
        )
        .call(n)
        .map_err(|e| anyhow::anyhow!("the bare LuaJIT baseline: {e}"))?;
    println!("states: {n} idle states `{{id = i, hp = 100}}`");
    println!("{:>44} | {:>14}", "", "bytes/state");
    println!(
        "{:>44} | {:>14.0}",
        format!("lotus node RSS ({before} -> {after} KiB)"),
        lotus
    );
    println!(
        "{:>44} | {:>14.0}",
        "the same tables in a bare LuaJIT", bare
    );
    println!(
        "{:>44} | {:>14.2}",
        "ratio lotus / bare table",
        lotus / bare
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // One node per part, so one part's states or subscribers do not weigh on the next.
    if matches!(mode.as_str(), "all" | "fanout") {
        fanout(&start_node()?)?;
    }
    if matches!(mode.as_str(), "all" | "exec") {
        exec(&start_node()?)?;
    }
    if matches!(mode.as_str(), "all" | "states") {
        states(&start_node()?)?;
    }
    if !matches!(mode.as_str(), "all" | "fanout" | "exec" | "states") {
        bail!("mode: all, fanout, exec or states");
    }
    Ok(())
}
