//! The binary's contract with scripts and CI: `--help` documents every flag, usage errors
//! and "nobody could connect" exit 2, a violated threshold exits 1 and says which, and
//! `--json -` leaves stdout as pure JSON.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stage-loadtest"))
        .args(args)
        .output()
        .unwrap()
}

/// A byte-echo server on a thread (a valid echo for every framing).
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn help_lists_every_flag() {
    let out = loadtest(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--target",
        "--connections",
        "--ramp-up",
        "--duration",
        "--messages",
        "--think-time",
        "--framing",
        "--scenario",
        "--payload-size",
        "--json",
        "--chart",
        "--p99-max",
        "--p50-max",
        "--error-max",
        "--min-throughput",
        "--warmup",
        "--quiet",
        "--timeout",
        "Exit codes",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--connections", "4"][..],
        &["--target", "127.0.0.1:1", "--duration", "5"],
        &[
            "--target",
            "127.0.0.1:1",
            "--duration",
            "1s",
            "--messages",
            "2",
        ],
        &["--target", "127.0.0.1:1", "--scenario", "missing.lua"],
        &["--target", "127.0.0.1:1", "--chart", "x.png"],
    ] {
        let out = loadtest(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} explains itself");
    }
}

#[test]
fn nobody_connecting_exits_2() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = loadtest(&[
        "--target",
        &closed.to_string(),
        "--connections",
        "2",
        "--messages",
        "1",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no bot could connect"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("refused 2"), "{stdout}");
}

#[test]
fn violated_threshold_exits_1_and_says_which() {
    let addr = echo_server().to_string();
    let out = loadtest(&[
        "--target",
        &addr,
        "--connections",
        "2",
        "--messages",
        "5",
        "--quiet",
        "--min-throughput",
        "1e15",
        "--error-max",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("threshold violated: --min-throughput"),
        "{stderr}"
    );
    assert!(!stderr.contains("violated: --error-max"), "{stderr}");
}

#[test]
fn json_on_stdout_is_pure_json() {
    let addr = echo_server().to_string();
    let out = loadtest(&[
        "--target",
        &addr,
        "--connections",
        "2",
        "--messages",
        "5",
        "--json",
        "-",
        "--error-max",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["received"], 10);
    assert_eq!(v["thresholds"][0]["ok"], true);
    // The human summary went to stderr instead.
    assert!(String::from_utf8_lossy(&out.stderr).contains("throughput"));
}
