//! The command line: `--check`, configuration on standard input, exit codes, signals.

use crate::harness::*;

#[test]
fn check_accepts_the_shipped_examples() {
    for config in [
        "engine/lua/examples/v1/stage.json",
        "engine/lua/examples/hello/stage.json",
        "engine/lua/examples/lobby/stage.json",
    ] {
        let (code, out, err) = run_stage(&repo_root(), &["--check", "-c", config]);
        assert_eq!(code, 0, "{config}: {out}{err}");
        assert!(out.contains("configuration OK"), "{out}");
    }
}

#[test]
fn check_names_every_wrong_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.json"),
        r##"{ "#threads": "ten", "#startup": [["lua.so+stage"]],
             "lua.so": { "%package": 5, "lua.so+stage": "start" } }"##,
    )
    .unwrap();
    let (code, _, err) = run_stage(dir.path(), &["--check", "-c", "bad.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("#threads"), "{err}");
    assert!(err.contains("%package"), "{err}");
}

#[test]
fn malformed_json_exits_2_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.json"), "{ \"#startup\": [ }").unwrap();
    let (code, _, err) = run_stage(dir.path(), &["-c", "bad.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.json"), "{err}");
}

#[test]
fn check_reports_scripts_that_do_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stage.json"), config("")).unwrap();
    std::fs::write(dir.path().join("start.lua"), "return 1").unwrap();
    std::fs::write(
        dir.path().join("packet.lua"),
        "return { login = function( }",
    )
    .unwrap();
    let (code, _, err) = run_stage(dir.path(), &["--check", "-c", "stage.json"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("packet.lua"), "{err}");
}

#[test]
fn configuration_can_come_from_standard_input() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("start.lua"),
        format!(
            "broker.ready('tcp://127.0.0.1:{port}?text=1k,1k', function () return function (s, d) return 'echo ' .. d end end)"
        ),
    )
    .unwrap();
    let mut server = Server::spawn(dir, port, &["-c", "-"], Some(&config("")));
    server.wait_port();
    let mut client = server.connect();
    use std::io::{BufRead, BufReader, Write};
    client.write_all(b"ping\n").unwrap();
    let mut line = String::new();
    BufReader::new(&mut client).read_line(&mut line).unwrap();
    assert_eq!(line, "echo ping\n");
    assert!(server.stop().success());
}

#[test]
fn sigterm_runs_close_callbacks_and_exits_0() {
    let mut server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "local l = broker.ready('tcp://127.0.0.1:PORT?text=1k,1k', function ()
               return function (s, line)
                 served = served or {}  -- a global of the core's state (callbacks run on any core)
                 served[s.id] = true
                 return line
               end
             end)
             l.close = function (s, errno)
               if served and served[s.id] then logger.info('closed at shutdown ' .. errno) end
             end",
        )],
    );
    // Two clients, each served once (so both are accepted) before the signal.
    let clients: Vec<_> = (0..2)
        .map(|_| {
            use std::io::{BufRead, BufReader, Write};
            let mut client = BufReader::new(server.connect());
            client.get_mut().write_all(b"hi\n").unwrap();
            let mut line = String::new();
            client.read_line(&mut line).unwrap();
            assert_eq!(line, "hi\n");
            client
        })
        .collect();
    assert!(server.stop().success(), "{}", server.log());
    drop(clients);
    // (The harness's readiness probe also connected and closed, maybe only noticed after the
    // signal: the script logs the close of the connections it served, the two clients.)
    let log = server.log();
    let after_signal = log.split("received signal").nth(1).unwrap_or_default();
    assert_eq!(
        after_signal.matches("closed at shutdown 0").count(),
        2,
        "{log}"
    );
    assert!(server.log().contains("STAGE stopped"));
}

#[test]
fn cores_follow_the_affinity_mask() {
    // `taskset -c 1 stage ...`: one core, pinned to CPU 1, and no thread outside the mask.
    if affinity_cpus() < 2 {
        println!("skipped: pinning to CPU 1 needs a second CPU");
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stage.json"), config("")).unwrap();
    std::fs::write(
        dir.path().join("start.lua"),
        format!("broker.ready('tcp://127.0.0.1:{port}', function () return true end)"),
    )
    .unwrap();
    let log = dir.path().join("stage.log");
    let mut child = std::process::Command::new("taskset")
        .args(["-c", "1", stage_bin(), "-c", "stage.json"])
        .current_dir(dir.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_port_open(port);
    let pid = child.id();
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(allowed, "1", "a thread may run outside the mask");
        threads += 1;
    }
    assert!(threads >= 2);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("cores=1 cpus=[1]"), "{text}");
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_shutdown_that_cannot_finish_is_bounded() {
    // The close callback never returns, so the graceful stop cannot finish: the process
    // exits on its own STOP_BOUND (10 s) after the signal, with status 1, instead of hanging
    // until someone sends a second signal. (No CPU budget, which would end the loop.)
    let mut server = Server::start(
        &config(r#", "%cpu": 0"#),
        &[(
            "start.lua",
            "local l = broker.ready('tcp://127.0.0.1:PORT?text=1k,1k', function ()
               return function (s, line) armed = true return line end
             end)
             -- (Only a served client hangs: the harness's readiness probe closes first.)
             l.close = function (s, errno)
               if not armed then return end
               logger.info('stuck in close')
               local t = os.time() while os.time() < t + 60 do end
             end",
        )],
    );
    use std::io::{BufRead, BufReader, Write};
    let mut client = BufReader::new(server.connect());
    client.get_mut().write_all(b"hi\n").unwrap();
    let mut line = String::new();
    client.read_line(&mut line).unwrap();
    assert_eq!(line, "hi\n");
    server.signal(libc::SIGTERM);
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", server.log());
    assert!(
        server.log().contains("did not finish within 10 s"),
        "{}",
        server.log()
    );
}
