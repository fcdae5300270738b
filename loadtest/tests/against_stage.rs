//! End to end against the real `stage` binary: start it on a free loopback port with a tiny
//! echo/login script, run the built-in `echo` and `login-then-echo` scenarios and a Lua bot
//! scenario through the `stage-loadtest` binary, and check the JSON summaries for exact
//! message counts and zero errors. Speed is deliberately not asserted (CI machines are shared).

mod common;

/// The server under test: a tiny echo/login script on a free port, in its own directory.
struct Server {
    inner: common::Server,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
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
        let inner = common::Server::spawn(&["-c", "stage.json"], dir.path(), port, dir.path());
        Server { inner, port, dir }
    }

    fn log(&self) -> String {
        self.inner.log()
    }
}

/// Runs `stage-loadtest` against the server and returns its JSON summary.
fn loadtest(server: &Server, args: &[&str]) -> serde_json::Value {
    let json = server.dir.path().join("summary.json");
    let _ = std::fs::remove_file(&json);
    let target = format!("127.0.0.1:{}", server.port);
    let mut all: Vec<String> = ["--target", &target, "--quiet", "--timeout", "10s", "--json"]
        .map(String::from)
        .into();
    all.push(json.to_str().unwrap().to_string());
    all.extend(args.iter().map(|a| a.to_string()));
    let out = common::run_loadtest(&all, server.dir.path());
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
    common::assert_clean(s);
    assert_eq!(s["received"], expected, "{s:#}");
    assert_eq!(s["sent"], expected, "{s:#}");
    assert_eq!(s["latency_us"]["count"], expected, "{s:#}");
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

    server.inner.stop_cleanly();
}
