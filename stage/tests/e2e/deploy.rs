//! The deployment files (docs/deploy.md): a node runs under `deploy/seccomp-stage.json` — the
//! profile `docker run --security-opt seccomp=…` applies, loaded here without Docker by
//! `deploy/seccomp-run.py` — and serves what a game uses (packets, index.so with its durable
//! writes and snapshot, WebSocket, the admin endpoint, a graceful stop); under the same profile
//! without io_uring, as under Docker's default one, it stops at once with an error naming the
//! profile instead of running with dead cores.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tungstenite::Message;

use crate::harness::*;

fn profile() -> PathBuf {
    repo_root().join("deploy/seccomp-stage.json")
}

/// `python3 deploy/seccomp-run.py PROFILE --` when Debian's python3-seccomp is there.
fn loader_or_skip(test: &str, profile: &str) -> Option<Vec<String>> {
    let python = "/usr/bin/python3";
    let has_module = Command::new(python)
        .args(["-c", "import seccomp"])
        .status()
        .is_ok_and(|s| s.success());
    if has_module {
        let script = repo_root().join("deploy/seccomp-run.py");
        return Some(vec![
            python.into(),
            script.display().to_string(),
            profile.into(),
            "--".into(),
        ]);
    }
    if std::env::var("STAGE_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{test}: python3-seccomp is not installed (STAGE_REQUIRE_SERVICES=1)");
    }
    println!("skipped {test}: python3-seccomp is not installed (apt install python3-seccomp)");
    None
}

/// Packets: `echo` comes back; `set`/`get` go to index.so and its answer comes back through
/// the `got.<connection id>` handler. WebSocket on WSPORT echoes.
const SCRIPT: &str = r#"
broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
  return function (s, data)
    if data.set then
      stage.signal("rank:set?board=got." .. s.id, { [data.set] = { i = data.score } })
    elseif data.get then
      stage.signal("rank:get?board=got." .. s.id, data.get)
    else
      return { echo = data.echo }
    end
  end
end)
broker.ready('ws://127.0.0.1:WSPORT/game?packet=1k,1k', function ()
  return function (s, data) return data end
end)
return {
  ["got."] = function (answer)
    local id = tonumber(_WAITFOR[0]:match("^got%.(%d+)"))
    broker.signal({ id }, { answer = answer })
  end,
}
"#;

fn config(admin: u16) -> String {
    format!(
        r##"{{ "#startup": [["lua.so+stage", "index.so+rank"]], "#admin": "127.0.0.1:{admin}",
              "lua.so": {{ "%package": ["."], "%reflush": 0, "lua.so+stage": "start" }},
              "index.so+rank": "score/" }}"##
    )
}

/// A packet as clients send them: the table under `v`.
fn packet(fields: &[(&str, Bson)]) -> Vec<u8> {
    let fields = fields.iter().map(|(k, v)| (k.to_string(), v.clone()));
    doc(&[("v", Bson::Doc(fields.collect()))])
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to #admin");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.into(),
    )
}

#[test]
fn a_node_under_the_seccomp_profile_serves_and_stops_cleanly() {
    let profile = profile().display().to_string();
    let Some(loader) = loader_or_skip("deploy::a_node_under_the_seccomp_profile", &profile) else {
        return;
    };
    let loader: Vec<&str> = loader.iter().map(String::as_str).collect();
    let admin = free_port();
    let ws_port = free_port();
    let script = SCRIPT.replace("WSPORT", &ws_port.to_string());
    let mut server = Server::start_wrapped(&loader, &config(admin), &[("start.lua", &script)]);

    let mut client = server.connect();
    client
        .write_all(&packet(&[("echo", Bson::str("hi"))]))
        .unwrap();
    let reply = read_reply(&mut client);
    assert_eq!(
        reply.get("echo"),
        Some(&Bson::str("hi")),
        "{reply:?}\n{}",
        server.log()
    );

    // index.so: a durable set (log write + fdatasync) and the value read back.
    let set = packet(&[("set", Bson::str("bob")), ("score", Bson::Int32(200))]);
    client.write_all(&set).unwrap();
    let ranked = read_reply(&mut client);
    // index.so answers a set with `{ bob = rank }`.
    assert!(
        format!("{ranked:?}").contains("bob"),
        "set answered: {ranked:?}"
    );
    client
        .write_all(&packet(&[("get", Bson::str("bob"))]))
        .unwrap();
    let got = format!("{:?}", read_reply(&mut client));
    assert!(got.contains("200"), "get bob: {got}");

    let stream = TcpStream::connect(("127.0.0.1", ws_port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("ws://127.0.0.1:{ws_port}/game");
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("websocket upgrade");
    let sent = packet(&[("ws", Bson::str("yes"))]);
    ws.send(Message::binary(sent.clone())).unwrap();
    let echoed = loop {
        match ws.read().expect("a websocket message") {
            Message::Binary(data) => break data.to_vec(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(echoed, sent);

    let (code, metrics) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("stage_"), "a Prometheus scrape: {metrics}");

    // SIGTERM: close callbacks, the index snapshot (temporary file, fsync, rename) and exit 0.
    let status = server.stop();
    assert!(status.success(), "exit {status:?}; log:\n{}", server.log());
    let snapshot = server.path("score/board.snap");
    assert!(snapshot.exists(), "no snapshot at {}", snapshot.display());
}

#[test]
fn without_io_uring_a_node_stops_at_once_and_names_the_profile() {
    // Docker's default profile: everything ours allows except io_uring.
    let mut profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(profile()).unwrap()).unwrap();
    for group in profile["syscalls"].as_array_mut().unwrap() {
        let names = group["names"].as_array_mut().unwrap();
        names.retain(|n| !n.as_str().unwrap().starts_with("io_uring"));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-io-uring.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    let path = path.display().to_string();
    let Some(loader) = loader_or_skip("deploy::without_io_uring", &path) else {
        return;
    };
    let output = Command::new(&loader[0])
        .args(&loader[1..])
        .arg(stage_bin())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "it ran without io_uring: {stderr}"
    );
    assert!(
        stderr.contains("cannot set up io_uring")
            && stderr.contains("--security-opt seccomp=deploy/seccomp-stage.json"),
        "{stderr}"
    );
}

#[test]
fn a_memlock_limit_below_the_floor_is_refused_with_the_fix() {
    // 64 KiB: Docker's default memlock limit on many hosts.
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new("prlimit")
        .arg("--memlock=65536")
        .arg(stage_bin())
        .current_dir(dir.path())
        .output()
        .expect("prlimit (util-linux) runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("RLIMIT_MEMLOCK") && stderr.contains("--ulimit memlock"),
        "{stderr}"
    );
}
