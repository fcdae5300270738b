//! The runner against small in-process servers on loopback: well-behaved echo servers for
//! every framing (including one that dribbles bytes to split frames), and misbehaving ones
//! (silent, garbage, bad BSON, hanging up) to check that each misbehaviour is counted under
//! the right error kind and disconnect reason, and that nothing panics or hangs.

use clap::Parser;
use stage_loadtest::cli::Args;
use stage_loadtest::report::Summary;
use stage_loadtest::runner;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy)]
enum Behaviour {
    /// Writes back every byte it reads (a valid echo for packet, text and raw).
    Echo,
    /// Echo, but one byte at a time with a pause: replies arrive split at every byte.
    Dribble,
    /// Reads and never answers.
    Silent,
    /// Answers anything with a packet header that declares a 3-byte frame.
    ShortFrame,
    /// Answers with a well-sized frame that is not BSON.
    BadBson,
    /// Echoes twice, then hangs up.
    HangUpAfterTwo,
}

/// Starts a server on an ephemeral loopback port; it lives until the test process ends.
fn serve(b: Behaviour) -> SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(handle(s, b));
            }
        });
    });
    addr
}

async fn handle(mut s: TcpStream, b: Behaviour) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut replies = 0;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let ok = match b {
            Behaviour::Echo => s.write_all(&buf[..n]).await.is_ok(),
            Behaviour::Dribble => {
                let mut ok = true;
                for byte in &buf[..n] {
                    ok &= s.write_all(&[*byte]).await.is_ok();
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                ok
            }
            Behaviour::Silent => true,
            Behaviour::ShortFrame => s.write_all(&[3, 0, 0, 0]).await.is_ok(),
            Behaviour::BadBson => s
                .write_all(&[8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
                .await
                .is_ok(),
            Behaviour::HangUpAfterTwo => {
                if replies == 2 {
                    return;
                }
                s.write_all(&buf[..n]).await.is_ok()
            }
        };
        replies += 1;
        if !ok {
            return;
        }
    }
}

fn run(addr: SocketAddr, extra: &[&str]) -> Summary {
    let target = addr.to_string();
    let mut argv = vec!["stage-loadtest", "--target", &target, "--quiet"];
    argv.extend_from_slice(extra);
    let plan = Args::try_parse_from(argv).unwrap().plan().unwrap();
    let totals = runner::run(&plan, |_| {}).unwrap();
    Summary::new(&plan, totals)
}

fn assert_clean(s: &Summary) {
    assert_eq!(s.errors_total, 0, "{}", s.human());
    assert!(s.disconnects.values().all(|n| *n == 0), "{}", s.human());
}

#[test]
fn packet_echo_counts_every_round_trip() {
    let s = run(
        serve(Behaviour::Echo),
        &["--connections", "4", "--messages", "25"],
    );
    assert_clean(&s);
    assert_eq!((s.sent, s.received), (100, 100));
    assert_eq!(s.latency_us.count, 100);
    assert_eq!(s.connected, 4);
}

#[test]
fn replies_split_at_every_byte() {
    let s = run(
        serve(Behaviour::Dribble),
        &[
            "--connections",
            "2",
            "--messages",
            "3",
            "--payload-size",
            "8",
        ],
    );
    assert_clean(&s);
    assert_eq!(s.received, 6);
}

#[test]
fn text_and_raw_echo() {
    let addr = serve(Behaviour::Echo);
    for framing in ["text", "raw"] {
        let s = run(
            addr,
            &[
                "--connections",
                "3",
                "--messages",
                "10",
                "--framing",
                framing,
                "--payload-size",
                "100",
            ],
        );
        assert_clean(&s);
        assert_eq!(s.received, 30, "{framing}");
    }
}

#[test]
fn login_then_echo_adds_one_round_trip() {
    let s = run(
        serve(Behaviour::Echo),
        &[
            "--connections",
            "2",
            "--messages",
            "5",
            "--scenario",
            "login-then-echo",
        ],
    );
    assert_clean(&s);
    assert_eq!(s.received, 12);
}

#[test]
fn silent_server_times_out() {
    let s = run(
        serve(Behaviour::Silent),
        &[
            "--connections",
            "3",
            "--messages",
            "5",
            "--timeout",
            "200ms",
        ],
    );
    assert_eq!(s.errors["timeout"], 3, "{}", s.human());
    assert_eq!(s.disconnects["timeout"], 3);
    assert_eq!(s.received, 0);
    assert!(
        s.error_samples[0].contains("no reply within"),
        "{:?}",
        s.error_samples
    );
}

#[test]
fn bad_frames_are_protocol_errors() {
    for b in [Behaviour::ShortFrame, Behaviour::BadBson] {
        let s = run(serve(b), &["--connections", "2", "--messages", "5"]);
        assert_eq!(s.errors["protocol"], 2, "{}", s.human());
        assert_eq!(s.disconnects["protocol error"], 2);
    }
}

#[test]
fn hang_up_is_an_eof_disconnect() {
    let s = run(
        serve(Behaviour::HangUpAfterTwo),
        &["--connections", "2", "--messages", "5"],
    );
    assert_eq!(s.received, 4, "{}", s.human());
    assert_eq!(s.errors["disconnect"], 2);
    assert_eq!(s.disconnects["eof"] + s.disconnects["reset"], 2);
}

#[test]
fn nobody_listening_is_connect_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = run(port, &["--connections", "3", "--messages", "1"]);
    assert_eq!(s.connected, 0);
    assert_eq!(s.connect_failures["refused"], 3, "{}", s.human());
    assert_eq!(s.errors["connect"], 3);
}

#[test]
fn duration_think_time_and_warmup() {
    let s = run(
        serve(Behaviour::Echo),
        &[
            "--connections",
            "2",
            "--duration",
            "600ms",
            "--warmup",
            "300ms",
            "--think-time",
            "50ms",
        ],
    );
    assert_clean(&s);
    assert!((0.55..1.0).contains(&s.measured_s), "{}", s.measured_s);
    assert!((0.85..1.3).contains(&s.elapsed_s), "{}", s.elapsed_s);
    // 50 ms between messages: at most ~12 per bot in the 600 ms measured.
    assert!(s.received > 0 && s.received <= 2 * 13, "{}", s.received);
}

#[test]
fn ramp_up_spreads_connections() {
    let s = run(
        serve(Behaviour::Echo),
        &["--connections", "4", "--messages", "1", "--ramp-up", "20"],
    );
    assert_clean(&s);
    // The 4th bot connects 3/20 s after the start.
    assert!(s.elapsed_s >= 0.15, "{}", s.elapsed_s);
}

fn script(code: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".lua").tempfile().unwrap();
    std::io::Write::write_all(&mut f, code.as_bytes()).unwrap();
    f
}

#[test]
fn lua_bot_over_text() {
    let f = script(
        r#"
        function on_connect(bot) bot.mark(); bot.send("hello " .. bot.id .. "\n") end
        function on_message(bot, line)
            assert(line == "hello " .. bot.id .. "\n", line)
            bot.mark(); bot.send(line)
        end"#,
    );
    let path = f.path().to_str().unwrap();
    let s = run(
        serve(Behaviour::Echo),
        &[
            "--connections",
            "3",
            "--messages",
            "7",
            "--framing",
            "text",
            "--scenario",
            path,
        ],
    );
    assert_clean(&s);
    assert_eq!(s.received, 21);
    assert_eq!(s.latency_us.count, 21);
}

#[test]
fn lua_errors_and_ticks() {
    // on_tick sends; the echo comes back to on_message, which fails on the second message.
    let f = script(
        r#"
        function on_connect(bot) bot.state.seen = 0 end
        function on_tick(bot) bot.send({message = "tick"}) end
        function on_message(bot, msg)
            bot.state.seen = bot.state.seen + 1
            if bot.state.seen == 2 then error("second message") end
        end"#,
    );
    let path = f.path().to_str().unwrap();
    let s = run(
        serve(Behaviour::Echo),
        &[
            "--connections",
            "2",
            "--duration",
            "5s",
            "--tick",
            "50ms",
            "--scenario",
            path,
        ],
    );
    assert_eq!(s.errors["script"], 2, "{}", s.human());
    assert_eq!(s.disconnects["script error"], 2);
    assert_eq!(s.received, 4);
    assert!(
        s.error_samples[0].contains("second message"),
        "{:?}",
        s.error_samples
    );
    // Every bot is gone, so the run ended well before its 5 s.
    assert!(s.elapsed_s < 2.0, "{}", s.elapsed_s);
}

#[test]
fn lua_mark_without_reply_times_out() {
    let f = script(
        r#"
        function on_connect(bot) bot.mark(); bot.send({message = "anyone?"}) end
        function on_message(bot, msg) end"#,
    );
    let path = f.path().to_str().unwrap();
    let s = run(
        serve(Behaviour::Silent),
        &[
            "--connections",
            "2",
            "--duration",
            "5s",
            "--timeout",
            "150ms",
            "--scenario",
            path,
        ],
    );
    assert_eq!(s.errors["timeout"], 2, "{}", s.human());
    assert!(s.elapsed_s < 2.0);
}
