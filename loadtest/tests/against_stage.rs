//! End to end against the real `stage` binary: start it on a free loopback port with a tiny
//! echo/login script, run the built-in `echo` and `login-then-echo` scenarios and a Lua bot
//! scenario through the `stage-loadtest` binary, and check the JSON summaries for exact
//! message counts and zero errors. Speed is deliberately not asserted (CI machines are shared).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The workspace root (this crate lives in `<workspace>/loadtest`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtest/ has a parent")
        .to_path_buf()
}

/// The profile this test was built with, read from its own path (`target/<profile>/deps/..`).
fn own_profile() -> String {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .filter(|p| *p == "release" || *p == "debug")
        .unwrap_or("debug")
        .to_string()
}

/// `target/{release,debug}/stage`, the newest that exists; built with this test's profile
/// if neither does.
fn stage_binary() -> PathBuf {
    let ws = workspace();
    let mut target_dirs = vec![ws.join("target")];
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        target_dirs.insert(0, ws.join(dir)); // join keeps an absolute path as it is
    }
    let newest = target_dirs
        .iter()
        .flat_map(|t| ["release", "debug"].map(|p| t.join(p).join("stage")))
        .filter_map(|p| {
            let modified = p.metadata().ok()?.modified().ok()?;
            Some((modified, p))
        })
        .max_by_key(|(m, _): &(SystemTime, PathBuf)| *m);
    if let Some((_, path)) = newest {
        return path;
    }
    let profile = own_profile();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ws)
        .args(["build", "-p", "stage", "--bin", "stage"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .expect("running cargo build for the stage binary");
    assert!(
        status.success(),
        "`cargo build -p stage --bin stage` failed"
    );
    let path = target_dirs[0].join(&profile).join("stage");
    assert!(
        path.exists(),
        "no stage binary at {} even after building it; build it with `cargo build --release -p stage`",
        path.display()
    );
    path
}

/// A running `stage` process, stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let bin = stage_binary();
        // Ask the kernel for a free port, then hand it to stage (8081 may be taken by
        // other tests running in parallel).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("stage.json"),
            r##"{"#startup":[["lua.so+stage"]],"lua.so":{"%package":["."],"lua.so+stage":"start"}}"##,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("start.lua"),
            format!(
                r#"broker.ready("tcp://127.0.0.1:{port}?packet=4k,10k", function () return function (s, data) if data.message == "login" then return {{message="login", result="ok"}} end return data end end)"#
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("stage.log")).unwrap();
        let child = Command::new(&bin)
            .args(["-c", "stage.json"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut server = Server { child, port, dir };
        server.wait_ready();
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stage.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("stage exited early ({status}):\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "stage did not listen on {} within 30s:\n{}",
            self.port,
            self.log()
        );
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Runs `stage-loadtest` against the server and returns its JSON summary.
fn loadtest(server: &Server, args: &[&str]) -> serde_json::Value {
    let json = server.dir.path().join("summary.json");
    let _ = std::fs::remove_file(&json);
    let target = format!("127.0.0.1:{}", server.port);
    let out = Command::new(env!("CARGO_BIN_EXE_stage-loadtest"))
        .args(["--target", &target, "--quiet", "--timeout", "10s", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "stage-loadtest {args:?} failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        out.status,
        server.log()
    );
    let text = std::fs::read_to_string(&json).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_counts(s: &serde_json::Value, expected: u64) {
    assert_eq!(s["errors_total"], 0, "{s:#}");
    assert_eq!(s["connect_failures_total"], 0, "{s:#}");
    assert_eq!(s["received"], expected, "{s:#}");
    assert_eq!(s["sent"], expected, "{s:#}");
    assert_eq!(s["latency_us"]["count"], expected, "{s:#}");
    assert!(
        s["disconnects"]
            .as_object()
            .unwrap()
            .values()
            .all(|n| n == 0),
        "{s:#}"
    );
}

#[test]
fn scenarios_against_the_real_server() {
    let mut server = Server::start();

    let echo = loadtest(&server, &["--connections", "8", "--messages", "50"]);
    assert_counts(&echo, 8 * 50);
    assert_eq!(echo["connected"], 8);

    let login = loadtest(
        &server,
        &[
            "--connections",
            "8",
            "--messages",
            "20",
            "--scenario",
            "login-then-echo",
        ],
    );
    assert_counts(&login, 8 * 21); // the login round trip, then 20 echoes

    // A Lua bot that checks each echo and closes itself after 30 round trips; the duration
    // is only a bound.
    let script = server.dir.path().join("bots.lua");
    std::fs::write(
        &script,
        r#"
        function on_connect(bot)
            bot.state.n = 0
            bot.mark()
            bot.send({message = "ping", n = 0, who = "bot-" .. bot.id})
        end
        function on_message(bot, msg)
            if msg.n ~= bot.state.n or msg.who ~= "bot-" .. bot.id then
                error("unexpected reply n=" .. tostring(msg.n))
            end
            bot.state.n = bot.state.n + 1
            if bot.state.n == 30 then return bot.close() end
            bot.mark()
            bot.send({message = "ping", n = bot.state.n, who = msg.who})
        end
        "#,
    )
    .unwrap();
    let chart = server.dir.path().join("chart.svg");
    let lua = loadtest(
        &server,
        &[
            "--connections",
            "8",
            "--duration",
            "60s",
            "--scenario",
            script.to_str().unwrap(),
            "--chart",
            chart.to_str().unwrap(),
        ],
    );
    assert_counts(&lua, 8 * 30);
    assert!(lua["elapsed_s"].as_f64().unwrap() < 60.0);
    assert!(std::fs::read_to_string(&chart).unwrap().starts_with("<svg"));

    let status = server
        .stop()
        .expect("stage did not exit within 10s of SIGTERM");
    assert!(
        status.success(),
        "stage exited with {status}:\n{}",
        server.log()
    );
}
