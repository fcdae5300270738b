//! The `lotus` scenario against the real `stage` binary running the example config
//! (loadtest/examples/lotus.json: a lotus stage with the embedded store; only its port is
//! changed to a free one): every bot's calls are answered with its own count, no error, and
//! the room channels deliver exactly what the calls published. A wrong password ends the run
//! with login failures in the report (and exit code 2: nobody could connect), not a hang.

mod common;

/// The example config on a free port, in a fresh directory (its store starts empty).
fn start() -> (common::Server, tempfile::TempDir) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let example = common::workspace().join("loadtest/examples/lotus.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    config["lotus.so+lotus"]["listen"] = format!("127.0.0.1:{port}").into();
    std::fs::write(dir.path().join("stage.json"), config.to_string()).unwrap();
    let server = common::Server::spawn(&["-c", "stage.json"], dir.path(), port, dir.path());
    (server, dir)
}

/// Runs `stage-loadtest --scenario lotus ARGS`; returns the exit code and the JSON summary.
fn lotus(
    server: &common::Server,
    dir: &std::path::Path,
    args: &[&str],
) -> (i32, serde_json::Value) {
    let json = dir.join("summary.json");
    let _ = std::fs::remove_file(&json);
    let target = format!("127.0.0.1:{}", server.port);
    let mut all: Vec<String> = [
        "--target",
        &target,
        "--scenario",
        "lotus",
        "--quiet",
        "--json",
    ]
    .map(String::from)
    .into();
    all.push(json.to_str().unwrap().to_string());
    all.extend(args.iter().map(|a| a.to_string()));
    let out = common::run_loadtest(&all, dir);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "no summary ({}):\n{}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server.log()
        )
    });
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&text).unwrap(),
    )
}

#[test]
fn every_call_is_answered_and_every_room_message_delivered() {
    let (mut server, dir) = start();
    // 10 bots in rooms of 4: rooms of 4, 4 and 2 bots; 50 calls each.
    let (code, s) = lotus(
        &server,
        dir.path(),
        &[
            "--connections",
            "10",
            "--messages",
            "50",
            "--timeout",
            "10s",
        ],
    );
    assert_eq!(code, 0, "{s:#}\nserver log:\n{}", server.log());
    common::assert_clean(&s);
    assert_eq!(s["scenario"], "lotus");
    assert_eq!(s["connected"], 10, "{s:#}");
    assert_eq!(
        (s["sent"].as_u64(), s["received"].as_u64()),
        (Some(500), Some(500)),
        "{s:#}"
    );
    assert_eq!(s["latency_us"]["count"], 500, "{s:#}");
    let want = (16 + 16 + 4) * 50;
    assert_eq!(s["channel"]["expected"], want, "{s:#}");
    assert_eq!(s["channel"]["deliveries"], want, "{s:#}");
    assert_eq!(s["channel"]["missed"], 0, "{s:#}");

    // A second run on the same node, without rooms, for a while: its own names, no error.
    let (code, s) = lotus(
        &server,
        dir.path(),
        &[
            "--connections",
            "4",
            "--duration",
            "1s",
            "--lotus-room-size",
            "0",
        ],
    );
    assert_eq!(code, 0, "{s:#}\nserver log:\n{}", server.log());
    common::assert_clean(&s);
    assert!(s["received"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s.get("channel").is_none(), "{s:#}");
    server.stop_cleanly();
}

#[test]
fn a_wrong_password_is_reported_as_login_failures() {
    let (mut server, dir) = start();
    let (code, s) = lotus(
        &server,
        dir.path(),
        &[
            "--connections",
            "3",
            "--messages",
            "5",
            "--lotus-password",
            "wrong",
        ],
    );
    assert_eq!(code, 2, "nobody could connect: {s:#}");
    assert_eq!(s["connected"], 0, "{s:#}");
    assert_eq!(s["connect_failures"]["login"], 3, "{s:#}");
    assert_eq!(s["errors"]["connect"], 3, "{s:#}");
    assert_eq!(s["received"], 0, "{s:#}");
    let sample = s["error_samples"][0].as_str().unwrap();
    assert!(sample.contains("auth_failed"), "{sample}");
    server.stop_cleanly();
}
