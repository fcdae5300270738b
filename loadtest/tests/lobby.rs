//! The lobby example under load, as the README runs it: `stage -c
//! engine/lua/examples/lobby/stage.json` (port 8090), then 50 bots of the example's
//! `bots.lua` (Lua, checking every reply with the generated Lua codecs) and 50 of the built-in
//! `lobby` scenario (Rust, on the generated Rust types), each run ending with no error, no
//! failed connect and no disconnect. Afterwards a client reads the leaderboard: the bots'
//! scores are in it, best first. Speed is not asserted (BENCHMARKS.md measures it).

mod common;

use stage_loadtest::lobby_packets::{Leaderboard, Login, Message};
use std::io::{Read, Write};

const PORT: u16 = 8090;

/// The example's directory layout in a fresh working directory (a link to `engine/`), so
/// its relative paths resolve as written and its leaderboard starts empty.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        common::workspace().join("engine"),
        dir.path().join("engine"),
    )
    .unwrap();
    dir
}

fn bots(dir: &std::path::Path, server: &common::Server, scenario: &str) -> serde_json::Value {
    let json = dir.join(format!("{}.json", scenario.replace('/', "_")));
    let args: Vec<String> = [
        "--target",
        "127.0.0.1:8090",
        "--scenario",
        scenario,
        "--connections",
        "50",
        "--duration",
        "4s",
        "--timeout",
        "10s",
        "--error-max",
        "0",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]
    .map(String::from)
    .into();
    let out = common::run_loadtest(&args, dir);
    assert!(
        out.status.success(),
        "stage-loadtest --scenario {scenario} failed ({}):\n{}\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    common::assert_clean(&s);
    assert_eq!(s["connected"], 50, "{s:#}");
    s
}

fn read_message(stream: &mut std::net::TcpStream) -> Message {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut frame = len.to_vec();
    frame.resize(u32::from_le_bytes(len) as usize, 0);
    stream.read_exact(&mut frame[4..]).unwrap();
    Message::decode(&frame).unwrap()
}

#[test]
fn fifty_lua_bots_and_fifty_rust_bots_play_the_lobby_without_errors() {
    let dir = workdir();
    let mut server = common::Server::spawn(
        &["-c", "engine/lua/examples/lobby/stage.json"],
        dir.path(),
        PORT,
        dir.path(),
    );
    bots(dir.path(), &server, "engine/lua/examples/lobby/bots.lua");
    bots(dir.path(), &server, "lobby");

    // The bots' rounds ended in scores: the leaderboard holds bots, best first.
    let mut judge = std::net::TcpStream::connect(("127.0.0.1", PORT)).unwrap();
    judge
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    judge
        .write_all(
            &Login {
                name: "judge".into(),
            }
            .encode(),
        )
        .unwrap();
    assert!(matches!(read_message(&mut judge), Message::Welcome(_)));
    judge
        .write_all(&Leaderboard { count: 50 }.encode())
        .unwrap();
    let Message::Top(top) = read_message(&mut judge) else {
        panic!("no leaderboard")
    };
    assert!(!top.entries.is_empty(), "no bot scored:\n{}", server.log());
    assert!(top.entries.iter().all(|e| e.name.starts_with("bot-")));
    assert!(top
        .entries
        .windows(2)
        .all(|w| w[0].rank < w[1].rank && w[0].score >= w[1].score));
    drop(judge);
    server.stop_cleanly();
}
