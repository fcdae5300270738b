//! The Rust lotus client against the real `stage` binary with a `lotus.so` stage (built by
//! `cargo build --release -p stage`; found in the workspace's target/release): every API
//! call, the server's error codes as `Error::Server`, channel history and resume, and
//! reconnects — forced by the test hook, and by the server dropping a subscriber that stopped
//! reading — after which the subscription continues from its last id without a gap.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lotus_client::{
    ChannelEvent, Client, ClientConfig, Credentials, Error, Key, Query, Schema, SubOpts, Value,
};

/// The `stage` binary of this workspace (release build).
fn stage_bin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // A relative CARGO_TARGET_DIR is relative to the workspace root, not to this test's cwd.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/stage");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p stage` first",
        bin.display()
    );
    bin
}

/// A port that was free a moment ago, from a range of its own (the e2e tests use
/// 20000..32000) and a counter, so two tests never get the same one.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id() % 4000;
    loop {
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let port = (15_000 + (seed + n) % 4000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Node {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node with a lotus stage listening on a free port; `extra` adds keys to its block.
fn start(extra: &str) -> Node {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r##"{{ "#threads": 2, "#startup": ["lotus.so+lotus"],
              "lotus.so+lotus": {{ "listen": "127.0.0.1:{port}",
                 "accounts": {{ "bot": {{ "password": "secret", "project": "demo" }} }} {extra} }} }}"##
    );
    std::fs::write(dir.path().join("stage.json"), config).unwrap();
    let log = std::fs::File::create(dir.path().join("stage.log")).unwrap();
    let child = Command::new(stage_bin())
        .args(["-c", "stage.json"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the node never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    Node {
        child,
        addr: format!("127.0.0.1:{port}"),
        _dir: dir,
    }
}

fn creds(node: &str) -> Credentials {
    Credentials {
        account: "bot".into(),
        password: "secret".into(),
        node: node.into(),
    }
}

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

/// Closes `c`'s connection and waits until it is down (its backoff keeps it down a while).
async fn knock_out(c: &Client) {
    c.force_reconnect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.is_connected() {
        assert!(Instant::now() < deadline, "the connection never went down");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn msg(sub: &mut lotus_client::Subscription) -> (u64, Vec<Value>) {
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Some(ChannelEvent::Msg { id, payload, .. })) => (id, payload),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_auth_failed() {
    let node = start("");
    let mut c = creds("g");
    c.password = "nope".into();
    let e = Client::connect(&node.addr, c).await.err().unwrap();
    assert_eq!(e.code(), Some("auth_failed"), "{e}");
    assert!(e.to_string().contains("wrong password"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_call_works_and_errors_carry_the_server_code() {
    let node = start("");
    let c = Client::connect(&node.addr, creds("gate")).await.unwrap();
    c.ping().await.unwrap();
    let e = c
        .register(&Schema::new("bad").handler("broken", "function(ctx, s) s.x = end"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("compile_error"));
    let Error::Server { detail, .. } = &e else {
        unreachable!()
    };
    assert_eq!(detail["handler"].as_str(), Some("handlers.broken"));
    c.register(
        &Schema::new("player")
            .init(map(&[("hp", 100.into())]))
            .handler(
                "hit",
                "function(ctx, s, n) s.hp = s.hp - n; return s.hp, 'ouch' end",
            )
            .handler(
                "shout",
                "function(ctx, s, text) ctx.publish('shouts', s.name, text) end",
            )
            .handler("fail", "function(ctx, s) error('no way') end"),
    )
    .await
    .unwrap();
    let list = c.schema_list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].0, "player");
    let e = c.init("ghost", "g", Value::Nil).await.err().unwrap();
    assert_eq!(e.code(), Some("unknown_type"));
    // States on both cores: each answers from its owner.
    for i in 0..6 {
        let name = format!("p{i}");
        let p = c
            .init(
                "player",
                &name,
                map(&[("name", name.as_str().into()), ("hp", 100.into())]),
            )
            .await
            .unwrap();
        assert_eq!(
            p.call("hit", vec![i.into()]).await.unwrap(),
            vec![Value::from(100 - i), "ouch".into()]
        );
    }
    // Without a value a state starts from the schema's `init`; a second init is ignored.
    let fresh = c.init("player", "fresh", Value::Nil).await.unwrap();
    assert_eq!(fresh.get(&[]).await.unwrap(), map(&[("hp", 100.into())]));
    c.init("player", "fresh", map(&[("hp", 1.into())]))
        .await
        .unwrap();
    assert_eq!(fresh.get(&["hp".into()]).await.unwrap(), Value::from(100));
    let p = c.state("p2");
    c.update("p2", &["bag".into()], map(&[("gold", 1.into())]))
        .await
        .unwrap();
    p.update(&[Key::from("bag"), Key::from("gold")], 42.into())
        .await
        .unwrap();
    assert_eq!(
        c.get("p2", &["bag".into(), "gold".into()]).await.unwrap(),
        Value::from(42)
    );
    assert_eq!(p.get(&["hp".into()]).await.unwrap(), Value::from(98));
    let e = c
        .update("p2", &["nope".into(), "x".into()], 1.into())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("path_missing"));
    let e = p.call("fail", vec![]).await.unwrap_err();
    assert_eq!(e.code(), Some("handler_error"));
    assert!(e.to_string().contains("no way"), "{e}");
    assert_eq!(
        p.call("nope", vec![]).await.unwrap_err().code(),
        Some("unknown_handler")
    );
    assert_eq!(
        c.get("ghost", &[]).await.unwrap_err().code(),
        Some("state_not_found")
    );
    // exec has no reply: its effect shows on the channel its handler publishes to.
    let mut shouts = c
        .channel("shouts")
        .subscribe(SubOpts::default())
        .await
        .unwrap();
    p.exec("shout", vec!["hello".into()]).await.unwrap();
    assert_eq!(
        msg(&mut shouts).await,
        (1, vec!["p2".into(), "hello".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_publish_history_resume_and_delete() {
    let node = start(r#", "history": 16"#);
    let a = Client::connect(&node.addr, creds("a")).await.unwrap();
    let b = Client::connect(&node.addr, creds("b")).await.unwrap();
    let news = a.channel("news");
    let e = news.history(Query::Last(1)).await.unwrap_err();
    assert_eq!(e.code(), Some("channel_not_found"));
    let mut live = b
        .channel("news")
        .subscribe(SubOpts::default())
        .await
        .unwrap();
    assert!(matches!(
        b.channel("news").subscribe(SubOpts::default()).await,
        Err(Error::AlreadySubscribed(_))
    ));
    for i in 1..=20u64 {
        let p = news.publish(Value::from(format!("m{i}"))).await.unwrap();
        assert_eq!(p.id, i);
    }
    for i in 1..=20u64 {
        assert_eq!(msg(&mut live).await, (i, vec![format!("m{i}").into()]));
    }
    let h = news.history(Query::Last(3)).await.unwrap();
    assert_eq!((h.first_id, h.last_id, h.truncated), (5, 20, false));
    assert_eq!(
        h.items.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [18, 19, 20]
    );
    assert_eq!(h.items[0].1, vec![Value::from("m18")]);
    let h = news.history(Query::From(2)).await.unwrap();
    assert!(h.truncated);
    assert_eq!(h.items.first().map(|i| i.0), Some(5));
    // Resume: a replay from 18, then live.
    let c = Client::connect(&node.addr, creds("c")).await.unwrap();
    let mut resumed = c
        .channel("news")
        .subscribe(SubOpts { from: Some(18) })
        .await
        .unwrap();
    news.publish("m21".into()).await.unwrap();
    for i in 18..=21 {
        assert_eq!(msg(&mut resumed).await.0, i);
    }
    // From before the ring: told it is truncated, then the ring.
    let d = Client::connect(&node.addr, creds("d")).await.unwrap();
    let mut old = d
        .channel("news")
        .subscribe(SubOpts { from: Some(1) })
        .await
        .unwrap();
    assert_eq!(
        old.next().await,
        Some(ChannelEvent::Truncated { first_id: 6 })
    );
    assert_eq!(msg(&mut old).await.0, 6);
    // Delete: subscribers are told and their streams end.
    let first_epoch = news.history(Query::Last(1)).await.unwrap().epoch;
    news.delete().await.unwrap();
    assert_eq!(msg(&mut live).await.0, 21);
    assert_eq!(live.next().await, Some(ChannelEvent::Deleted));
    assert_eq!(live.next().await, None);
    let again = news.publish("fresh".into()).await.unwrap();
    assert_eq!(again.id, 1);
    assert_ne!(again.epoch, first_epoch);
    // A dropped subscription unsubscribes; a new one on the same client works.
    drop(resumed);
    let mut again_sub = c
        .channel("news")
        .subscribe(SubOpts::default())
        .await
        .unwrap();
    news.publish("after".into()).await.unwrap();
    assert_eq!(msg(&mut again_sub).await, (2, vec!["after".into()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_reconnect_logs_in_again_and_the_subscription_resumes_without_a_gap() {
    let node = start("");
    let cfg = ClientConfig {
        backoff_initial: Duration::from_millis(300),
        ..Default::default()
    };
    let sub = Client::connect_with(&node.addr, creds("sub"), cfg)
        .await
        .unwrap();
    let publ = Client::connect(&node.addr, creds("pub")).await.unwrap();
    let mut s = sub
        .channel("feed")
        .subscribe(SubOpts::default())
        .await
        .unwrap();
    let ch = publ.channel("feed");
    for i in 1..=5 {
        ch.publish(Value::from(i)).await.unwrap();
    }
    for i in 1..=5 {
        assert_eq!(msg(&mut s).await.0, i);
    }
    knock_out(&sub).await;
    // Published while the subscriber is away: the resume replays them.
    for i in 6..=30 {
        ch.publish(Value::from(i)).await.unwrap();
    }
    for i in 6..=30u64 {
        assert_eq!(msg(&mut s).await, (i, vec![Value::from(i)]));
    }
    assert_eq!(sub.reconnects(), 1);
    assert!(sub.is_connected());
    // The session works after the reconnect.
    sub.ping().await.unwrap();
    ch.publish(Value::from(31)).await.unwrap();
    assert_eq!(msg(&mut s).await.0, 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_received_nothing_yet_resumes_from_where_it_subscribed() {
    let node = start("");
    let cfg = ClientConfig {
        backoff_initial: Duration::from_millis(300),
        ..Default::default()
    };
    let sub = Client::connect_with(&node.addr, creds("sub"), cfg)
        .await
        .unwrap();
    let publ = Client::connect(&node.addr, creds("pub")).await.unwrap();
    let ch = publ.channel("quiet");
    ch.publish("before".into()).await.unwrap();
    let mut s = sub
        .channel("quiet")
        .subscribe(SubOpts::default())
        .await
        .unwrap();
    knock_out(&sub).await;
    for i in 2..=20u64 {
        ch.publish(Value::from(i)).await.unwrap();
    }
    for i in 2..=20u64 {
        assert_eq!(msg(&mut s).await, (i, vec![Value::from(i)]));
    }
    assert_eq!(sub.reconnects(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_dropped_at_the_servers_output_cap_resumes_from_its_last_id() {
    let node = start(r#", "max_output": 262144, "history": 1024"#);
    let cfg = ClientConfig {
        backoff_initial: Duration::from_millis(20),
        subscription_buffer: 4,
        recv_buffer: Some(4096),
        ..Default::default()
    };
    let sub = Client::connect_with(&node.addr, creds("slow"), cfg)
        .await
        .unwrap();
    let mut s = sub
        .channel("firehose")
        .subscribe(SubOpts::default())
        .await
        .unwrap();
    let publ = Client::connect(&node.addr, creds("pub")).await.unwrap();
    let ch = publ.channel("firehose");
    let big = "x".repeat(16000);
    // Nobody reads the subscription meanwhile: its buffer fills, the client stops reading
    // the socket, and the server's output for it passes the cap.
    for i in 1..=500u64 {
        let p = ch.publish(Value::from(format!("{i}:{big}"))).await.unwrap();
        assert_eq!(p.id, i);
    }
    for i in 1..=500u64 {
        let (id, payload) = msg(&mut s).await;
        assert_eq!(id, i);
        assert!(payload[0].as_str().unwrap().starts_with(&format!("{i}:")));
    }
    assert!(
        sub.reconnects() >= 1,
        "the server never dropped the subscriber"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_the_login_is_a_timeout_and_a_closed_port_an_io_error() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let cfg = ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let e = Client::connect_with(&addr, creds("g"), cfg.clone())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::Timeout(_)), "{e}");
    drop(silent);
    let e = Client::connect_with(&addr, creds("g"), cfg)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::Io(_)), "{e}");
}
