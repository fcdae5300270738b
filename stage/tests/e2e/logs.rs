//! Where log lines go: `--log-format json` writes one JSON object per line, and a stderr that
//! nobody reads (a full pipe) does not stall the cores that log.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// A text-framed echo stage that logs every line it gets.
fn logging_echo(port: u16, dir: &std::path::Path) {
    std::fs::write(dir.join("stage.json"), config("")).unwrap();
    std::fs::write(
        dir.join("start.lua"),
        format!(
            "broker.ready('tcp://127.0.0.1:{port}?text=4k,4k', function () return function (s, d)
               logger.info('got ' .. d)
               return 'echo ' .. d
             end end)"
        ),
    )
    .unwrap();
}

#[test]
fn json_log_lines_are_one_object_each_with_level_target_and_message() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    logging_echo(port, dir.path());
    let args = [
        "-c",
        "stage.json",
        "-s",
        "stage.stop",
        "--log-format",
        "json",
    ];
    let mut server = Server::spawn(dir, port, &args, None);
    server.wait_port();
    let mut client = server.connect();
    client.write_all(b"hello json\n").unwrap();
    let mut line = String::new();
    BufReader::new(&mut client).read_line(&mut line).unwrap();
    assert_eq!(line, "echo hello json\n");
    assert!(server.stop().success());

    let log = server.log();
    let mut from_lua = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nwhole log:\n{log}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["target"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        let message = v["fields"]["message"].as_str().unwrap();
        if v["fields"]["logger"] == "lua" && message == "got hello json\n" {
            from_lua += 1;
        }
    }
    assert_eq!(from_lua, 1, "the script's line, once:\n{log}");
}

#[test]
fn a_stderr_nobody_reads_does_not_stall_the_server() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    logging_echo(port, dir.path());
    // stderr is a pipe this test never reads: it fills after 64 KiB of log lines. A core
    // that wrote its log lines itself would block there, and the echoes below would stop.
    let mut child = Command::new(stage_bin())
        .args(["-c", "stage.json", "-s", "stage.stop", "-l", "debug"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_port_open(port);
    let mut client = try_connect(port).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let payload = "x".repeat(1000);
    // 1000 requests, each logged (about 1.1 KB a line, plus the engine's debug lines):
    // more than 15 times what the pipe holds.
    for n in 0..1000 {
        client
            .write_all(format!("{n} {payload}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("no echo for request {n} ({e}): the core stalled"));
        assert_eq!(line, format!("echo {n} {payload}\n"));
    }
    let _ = child.kill();
    let _ = child.wait();
}
