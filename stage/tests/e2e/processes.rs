//! The multi-process node: a supervisor starting one child per `#startup` process, sharing
//! a port between processes, messages routed between processes (round-robin, `*`, replies
//! straight back to the requester, no receiver), restarts after a SIGKILL, the "TIME BREAK"
//! of a child that dies at once, and the graceful stop of the whole node.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

/// A short heartbeat (100 ms) and expiry (760 ms), so the processes find each other fast.
const ROUTER: &str = r##""#router": [400, 100]"##;

fn node_config(startup: &str) -> String {
    format!(
        r##"{{ {ROUTER}, "#startup": {startup},
              "lua.so": {{ "%package": ["."], "%reflush": 0, "game": "game", "lobby": "lobby",
                           "a": "a", "b": "b" }} }}"##
    )
}

/// A game stage that answers every packet with its process (`n`, `pid`) and the number of
/// `tick` messages this process has handled so far (`ticks`, kept in the process's shared
/// store: a restarted process starts again from 0).
const GAME: &str = r#"
    broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
      return function (s, data) return { n = process.stage, pid = process.id, ticks = __.ticks or 0 } end
    end)
"#;

/// The game stage's message handlers: each logs a run per routed message; `probe` answers
/// with the process number (readiness probes of the tests).
const GAME_HANDLERS: &str = r#"
    return {
      hit = function (i) logger.info("game hit " .. i .. " in process " .. process.stage); return process.stage end,
      all = function () logger.info("game all in process " .. process.stage) end,
      tick = function (i)
        logger.info("game tick " .. i .. " in process " .. process.stage)
        __("ticks", function (n) return (n or 0) + 1 end)
      end,
      probe = function () return process.stage end,
    }
"#;

fn game() -> String {
    format!("{GAME}\n{GAME_HANDLERS}")
}

/// The pid the supervisor logged for each start of process `n`, in order.
fn started_pids(log: &str, n: u32) -> Vec<i32> {
    let needle = format!("started process {n} (pid ");
    log.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &log[at + needle.len()..];
            rest[..rest.find(')')?].parse().ok()
        })
        .collect()
}

/// Sends one packet and returns the reply's `v`.
fn request(stream: &mut TcpStream) -> std::io::Result<Bson> {
    stream.write_all(&message("who", &[]))?;
    let frame = read_frame(stream)?;
    Ok(parse_doc(&frame).get("v").cloned().expect("reply"))
}

/// Sends one packet and returns the answering process: (`process.stage`, `process.id`).
fn ask(stream: &mut TcpStream) -> std::io::Result<(i64, i64)> {
    let v = request(stream)?;
    Ok((
        v.get("n").and_then(Bson::as_i64).expect("n"),
        v.get("pid").and_then(Bson::as_i64).expect("pid"),
    ))
}

/// A reply field as an integer (panics naming the field when it is missing).
fn int(v: &Bson, key: &str) -> i64 {
    v.get(key)
        .and_then(Bson::as_i64)
        .unwrap_or_else(|| panic!("no `{key}` in {v:?}"))
}

/// True when the reply's `key` is the boolean `true`.
fn yes(v: &Bson, key: &str) -> bool {
    v.get(key) == Some(&Bson::Bool(true))
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn wait_gone(pid: i32) {
    wait_until(&format!("process {pid} is gone"), || !alive(pid));
}

/// Connects until every process in `want` holds at least `per` connections; returns them
/// by process number (with the connections that reached other processes). Also the
/// readiness of a node whose processes share the port: each of them answers a client. (A
/// connection that fails while a process brings up its cores is not counted.)
fn connections_on(server: &Server, want: &[i64], per: usize) -> HashMap<i64, Vec<TcpStream>> {
    let mut out: HashMap<i64, Vec<TcpStream>> = HashMap::new();
    server.wait_until(
        &format!("processes {want:?} each answer {per} connection(s) on the shared port"),
        || {
            let mut s = server.connect();
            if let Ok((n, _)) = ask(&mut s) {
                out.entry(n).or_default().push(s);
            }
            want.iter()
                .all(|n| out.get(n).is_some_and(|v| v.len() >= per))
        },
    );
    out
}

#[test]
fn processes_share_one_port() {
    let server = Server::start(
        &node_config(r#"[["lua.so+game"], ["lua.so+game"]]"#),
        &[("game.lua", &game())],
    );
    drop(connections_on(&server, &[1, 2], 1));
    let mut seen = HashSet::new();
    let mut stages = HashSet::new();
    for _ in 0..40 {
        let (n, pid) = ask(&mut server.connect()).unwrap();
        seen.insert(pid);
        stages.insert(n);
    }
    assert_eq!(seen.len(), 2, "40 connections all reached one process");
    assert_eq!(stages, HashSet::from([1, 2]));
    let log = server.log();
    let mut pids: Vec<i64> = started_pids(&log, 1)
        .into_iter()
        .chain(started_pids(&log, 2))
        .map(i64::from)
        .collect();
    pids.sort();
    let mut seen: Vec<i64> = seen.into_iter().collect();
    seen.sort();
    assert_eq!(pids, seen, "{log}");
}

#[test]
fn messages_between_processes_round_robin_broadcast_and_reply_to_the_sender() {
    // lobby runs in processes 1 and 2 (only 1 listens); game in processes 2 and 3.
    let lobby = r#"
        stage.waitfor("ret", function (from)
          logger.info("lobby reply from " .. tostring(from) .. " in process " .. process.stage)
        end)
        stage.waitfor("probed", function (from) __["probed" .. from] = true end)
        if process.stage == 1 then
          broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
            return function (s, data)
              if data.message == "probe" then
                -- Readiness: two in a row reach both game processes once both are up.
                stage.signal("game:probe=probed")
                stage.signal("game:probe=probed")
                return { p2 = __.probed2 == true, p3 = __.probed3 == true }
              end
              if data.message == "go" then
                for i = 1, 100 do stage.signal("game:hit=ret", i) end
                stage.signal("*game:all")
                stage.signal("nobody:hello", 1)
                local ok, err = pcall(stage.signal, "game:big", string.rep("x", 70000))
                logger.info("big message refused: " .. tostring(not ok) .. " " .. tostring(err))
              end
              return { n = process.stage, pid = process.id }
            end
          end)
        end
    "#;
    let server = Server::start(
        &node_config(r#"[["lua.so+lobby"], ["lua.so+game", "lua.so+lobby"], ["lua.so+game"]]"#),
        &[("lobby.lua", lobby), ("game.lua", GAME_HANDLERS)],
    );
    server.wait_reply(
        "process 1's messages reach the game in processes 2 and 3",
        &message("probe", &[]),
        |v| yes(v, "p2") && yes(v, "p3"),
    );
    let mut client = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(&message("go", &[])).unwrap();
    read_reply(&mut client);
    // The handlers log each delivery: these lines are the routing under test.
    server.wait_log_count("lobby reply from", 100);
    server.wait_log_count("game all in process", 2);
    server.wait_log("big message refused: true");
    // The sender keeps working after a message nobody takes.
    client.write_all(&message("again", &[])).unwrap();
    assert_eq!(
        read_reply(&mut client).get("n").and_then(Bson::as_i64),
        Some(1)
    );
    let log = server.log();
    assert!(log.contains("no receiver for `nobody:"), "{log}");
    assert!(log.contains("65000"), "{log}");

    // One process per message, alternating between the two game processes; a burst of 100
    // is more than a datagram socket queues (the outbox takes the rest).
    let mut by_hit = HashMap::new();
    for line in log.lines() {
        if let Some(rest) = line.split("game hit ").nth(1) {
            let mut words = rest.split_whitespace();
            let i: u32 = words.next().unwrap().parse().unwrap();
            let n: u32 = words.nth(2).unwrap().parse().unwrap();
            assert!(by_hit.insert(i, n).is_none(), "hit {i} ran twice: {log}");
        }
    }
    assert_eq!(by_hit.len(), 100, "{log}");
    let odd: HashSet<u32> = (1..=100).step_by(2).map(|i| by_hit[&i]).collect();
    let even: HashSet<u32> = (2..=100).step_by(2).map(|i| by_hit[&i]).collect();
    assert_eq!(odd.len(), 1, "{by_hit:?}");
    assert_eq!(even.len(), 1, "{by_hit:?}");
    assert_eq!(
        odd.union(&even).copied().collect::<HashSet<_>>(),
        HashSet::from([2, 3])
    );
    // `*` reached both game processes once each.
    assert_eq!(log.matches("game all in process 2").count(), 1, "{log}");
    assert_eq!(log.matches("game all in process 3").count(), 1, "{log}");
    // Every reply came back to process 1, which asked, not to process 2 (also a lobby).
    assert!(!log.contains("lobby reply from 2 in process 2"), "{log}");
    assert!(!log.contains("lobby reply from 3 in process 2"), "{log}");
    assert_eq!(log.matches("lobby reply from 2 in process 1").count(), 50);
    assert_eq!(log.matches("lobby reply from 3 in process 1").count(), 50);
}

#[test]
fn a_killed_process_is_restarted_while_the_others_keep_answering() {
    // game in processes 1 and 2 (sharing the port); lobby in 3 broadcasts a tick every 50 ms.
    let lobby = r#"
        n = 0
        stage.addtask(50, function () n = n + 1; stage.signal("*game:tick", n) end)
    "#;
    let server = Server::start(
        &node_config(r#"[["lua.so+game"], ["lua.so+game"], ["lua.so+lobby"]]"#),
        &[("lobby.lua", lobby), ("game.lua", &game())],
    );
    // Ready: both game processes answer on the port, and process 3's ticks reach each.
    let mut ticked = HashSet::new();
    server.wait_until(
        "both game processes answer and have had a tick from process 3",
        || {
            if let Ok(v) = request(&mut server.connect()) {
                if int(&v, "ticks") > 0 {
                    ticked.insert(int(&v, "n"));
                }
            }
            ticked.len() == 2
        },
    );
    let log = server.log();
    let (p1, p2) = (started_pids(&log, 1)[0], started_pids(&log, 2)[0]);

    // Two clients on each game process, hammering until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let answered: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let mut threads = Vec::new();
    for (n, streams) in connections_on(&server, &[1, 2], 2) {
        for mut stream in streams {
            let (stop, answered, port) = (stop.clone(), answered.clone(), server.port);
            threads.push(std::thread::spawn(move || {
                let mut on = n;
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match ask(&mut stream) {
                        Ok((n, _)) => {
                            on = n;
                            answered[n as usize].fetch_add(1, Ordering::Relaxed);
                        }
                        // A client of the killed process reconnects (and lands anywhere).
                        Err(_) if on != 1 => {
                            std::thread::sleep(Duration::from_millis(10));
                            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                                stream = s;
                                on = 0;
                            }
                        }
                        Err(err) => {
                            failures.push(format!("process {on} did not answer: {err}"));
                            break;
                        }
                    }
                }
                failures
            }));
        }
    }
    // Under load for a while, and past the first second (an earlier death is a TIME BREAK).
    std::thread::sleep(Duration::from_millis(1200));
    let before = answered[1].load(Ordering::Relaxed);
    // SAFETY: plain kill(2) on a process of this test's node.
    unsafe { libc::kill(p2, libc::SIGKILL) };
    server.wait_log(&format!(
        "process 2 (pid {p2}) was killed by signal 9 (SIGKILL)"
    ));
    // The restart is under test, and its pid is only in the supervisor's report.
    server.wait_log_count("started process 2 (pid", 2);
    let p2_again = started_pids(&server.log(), 2)[1];
    assert_ne!(p2, p2_again);

    // The restarted process serves clients again...
    let pid = server.wait_for("the restarted process 2 answers", || {
        let v = request(&mut server.connect()).ok()?;
        (int(&v, "n") == 2).then(|| int(&v, "pid"))
    });
    assert_eq!(pid, p2_again as i64, "{}", server.log());
    // ...and receives routed messages again: its heartbeats reached process 3, whose ticks
    // reach the new process (its count starts from 0). (A probe connection that fails while
    // the new process brings up its cores is retried, as the hammering clients do.)
    server.wait_until("a tick reaches the restarted process 2", || {
        let Ok(v) = request(&mut server.connect()) else {
            return false;
        };
        int(&v, "n") == 2 && int(&v, "pid") == p2_again as i64 && int(&v, "ticks") > 0
    });
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(failures.is_empty(), "{failures:?}\n{}", server.log());
    assert!(answered[1].load(Ordering::Relaxed) > before);
    assert!(alive(p1));
    let log = server.log();
    assert!(log.contains("restarting it"), "{log}");
    assert_eq!(started_pids(&log, 1).len(), 1, "{log}");
}

#[test]
fn a_process_that_dies_at_once_is_not_restarted() {
    let a = "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function () return { n = process.stage, pid = process.id } end
             end)";
    let server = Server::start(
        &node_config(r#"[["lua.so+a"], ["lua.so+b"]]"#),
        &[("a.lua", a), ("b.lua", "os.exit(3)")],
    );
    server.wait_log("TIME BREAK: process 2");
    std::thread::sleep(Duration::from_millis(1500));
    let log = server.log();
    assert!(log.contains("exited with code 3"), "{log}");
    assert!(log.contains("it is not restarted"), "{log}");
    assert_eq!(started_pids(&log, 2).len(), 1, "{log}");
    // The other process runs on.
    assert_eq!(ask(&mut server.connect()).unwrap().0, 1);
}

#[test]
fn the_supervisor_exits_when_no_process_is_left() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stage.json"),
        node_config(r#"[["lua.so+b"], ["lua.so+b"]]"#),
    )
    .unwrap();
    std::fs::write(dir.path().join("b.lua"), "os.exit(0)").unwrap();
    let mut server = Server::spawn(dir, 0, &["-c", "stage.json"], None);
    let status = server.wait_exit();
    assert_ne!(status.code(), Some(0), "{}", server.log());
    assert!(server.log().contains("CRITICAL BREAK"), "{}", server.log());
}

#[test]
fn sigterm_stops_every_process_gracefully() {
    // The configuration comes from standard input: the children get it from the supervisor.
    let game = r#"
        local sp = broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function () return { n = process.stage, pid = process.id } end
        end)
        sp.close = function (s, errno) logger.info("close callback in process " .. process.stage) end
    "#;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("game.lua"),
        game.replace("PORT", &port.to_string()),
    )
    .unwrap();
    let config = node_config(r#"[["lua.so+game"], ["lua.so+game"]]"#);
    let mut server = Server::spawn(dir, port, &["-c", "-"], Some(&config));
    server.wait_port();
    let conns = connections_on(&server, &[1, 2], 1);
    let log = server.log();
    let pids = [started_pids(&log, 1)[0], started_pids(&log, 2)[0]];
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(log.contains("close callback in process 1"), "{log}");
    assert!(log.contains("close callback in process 2"), "{log}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the supervisor");
    }
    drop(conns);
}

#[test]
fn children_die_with_a_killed_supervisor() {
    let server = Server::start(
        &node_config(r#"[["lua.so+game"], ["lua.so+game"]]"#),
        &[("game.lua", &game())],
    );
    drop(connections_on(&server, &[1, 2], 1));
    let log = server.log();
    let pids = [started_pids(&log, 1)[0], started_pids(&log, 2)[0]];
    server.signal(libc::SIGKILL);
    for pid in pids {
        wait_gone(pid);
    }
}

#[test]
fn stage_exit_in_one_process_stops_the_whole_node() {
    let a = "stage.waitfor('pong', function () __.b = true end)
             broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 if data.message == 'exit' then stage.exit() end
                 if data.message == 'probe' then stage.signal('b:ping=pong') end
                 return { n = process.stage, pid = process.id, b = __.b == true }
               end
             end)";
    let b = "logger.info('b runs')
             return { ping = function () return true end }";
    let mut server = Server::start(
        &node_config(r#"[["lua.so+a"], ["lua.so+b"]]"#),
        &[("a.lua", a), ("b.lua", b)],
    );
    server.wait_reply(
        "process 1's messages reach stage b in process 2",
        &message("probe", &[]),
        |v| yes(v, "b"),
    );
    let mut client = server.connect();
    client.write_all(&message("exit", &[])).unwrap();
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(!log.contains("restarting"), "{log}");
    assert!(log.contains("every process has stopped"), "{log}");
}

#[test]
fn a_process_whose_core_never_returns_is_killed_and_restarted() {
    // The lobby (process 2) gets a message whose handler never returns: its core stops
    // beating, the supervisor's watchdog kills the process after 3.1 s and restarts it. The
    // handler hangs in a C call, out of the CPU budget's reach (a Lua loop would be
    // interrupted by it: budget::a_runaway_receive_callback_is_interrupted...).
    let lobby = r#"
        logger.info("lobby up in pid " .. process.id)
        stage.waitfor("hang", function () logger.info("hanging") os.execute("sleep 8") end)
    "#;
    let game = format!(
        r#"{GAME}
        stage.addtask(1500, function () stage.signal("lobby:hang") return 0 end)
    "#
    );
    let server = Server::start(
        &node_config(r#"[["lua.so+game"], ["lua.so+lobby"]]"#),
        &[("lobby.lua", lobby), ("game.lua", &game)],
    );
    // The stall under test: the hang reached the lobby, its core stopped beating, the
    // watchdog killed the process, and the restarted lobby ran its script again.
    server.wait_log("hanging");
    server.wait_log("has not returned to its event loop");
    server.wait_log("watchdog: process 2 (pid");
    server.wait_log_count("lobby up in pid", 2);
    let log = server.log();
    let pids = started_pids(&log, 2);
    assert_eq!(pids.len(), 2, "{log}");
    assert!(!alive(pids[0]), "{log}");
    assert!(log.contains("was killed by signal 9"), "{log}");
    assert_eq!(started_pids(&log, 1).len(), 1, "{log}");
    // Both reports say what the stalled thread was doing: waiting for `sleep` (os.execute).
    for report in [
        "has not returned to its event loop",
        "watchdog: process 2 (pid",
    ] {
        let line = log.lines().find(|l| l.contains(report)).unwrap();
        assert!(line.contains("syscall=wait4"), "{line}");
    }
}

#[test]
fn the_suspend_file_drains_a_node_and_its_removal_brings_it_back() {
    // The probe goes from the game (process 1) to the lobby (process 2), which sends a new
    // message back: both processes route to each other.
    let game = r#"
        stage.waitfor("pong", function () __.pong = true end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data)
            if data.message == "probe" then stage.signal("lobby:ping") end
            return { pong = __.pong == true }
          end
        end)
    "#;
    let lobby = r#"return { ping = function () stage.signal("game:pong") end }"#;
    let server = Server::start(
        &node_config(r#"[["lua.so+game"], ["lua.so+lobby"]]"#),
        &[("lobby.lua", lobby), ("game.lua", game)],
    );
    server.wait_reply(
        "messages go from process 1 to process 2 and back",
        &message("probe", &[]),
        |v| yes(v, "pong"),
    );
    std::fs::write(server.path("stage.stop"), "").unwrap();
    // Each process's report of its peer going down and up again is the behaviour under test.
    server.wait_log("process 1: peer process 2 is down");
    server.wait_log("process 2: peer process 1 is down");
    assert_eq!(server.log().matches("suspend file").count(), 2);
    std::fs::remove_file(server.path("stage.stop")).unwrap();
    server.wait_log_count("heartbeats resume", 2);
    server.wait_log_count("process 1: peer process 2 is up", 2);
    server.wait_log_count("process 2: peer process 1 is up", 2);
}

#[test]
fn a_lock_is_held_by_one_process_of_the_node_at_a_time() {
    // The game stage runs in processes 1 and 2; each takes lock `L` five times and holds it
    // for 30 ms (extended, so a slow machine cannot outlast the lease). The lock is the
    // node's (the supervisor holds it), so the holds never overlap: the log alternates
    // ENTER / LEAVE.
    let game = format!(
        r#"{GAME}
        stage.waitfor("locked", function (n)
          logger.info("ENTER " .. process.stage .. " " .. n)
          -- Hold it past the 100 ms lease even on a loaded machine (and test `>>`).
          stage.signal(">>L.x", 2000)
          stage.addtask(30, function (n)
            logger.info("LEAVE " .. process.stage .. " " .. n)
            stage.signal("<L.*")
            if n < 5 then stage.signal(">L.locked", n + 1) end
            return 0
          end, n)
        end)
        stage.signal(">L.locked", 1)
    "#
    );
    let server = Server::start(
        &node_config(r#"[["lua.so+game"], ["lua.so+game"]]"#),
        &[("game.lua", &game)],
    );
    // The holders log ENTER / LEAVE: their order is what is asserted.
    server.wait_log_count("LEAVE ", 10);
    let log = server.log();
    // Each process writes its lines from its own log thread, so two processes' lines can
    // reach the shared file out of order: order the events by their timestamps (the first
    // word of a line, RFC 3339 in UTC, so they sort as text).
    let mut timed: Vec<(&str, &str)> = log
        .lines()
        .filter_map(|l| {
            let kind = l
                .split_once("ENTER ")
                .map(|_| "ENTER")
                .or_else(|| l.split_once("LEAVE ").map(|_| "LEAVE"))?;
            Some((l.split_whitespace().next()?, kind))
        })
        .collect();
    timed.sort();
    let events: Vec<&str> = timed.into_iter().map(|(_, kind)| kind).collect();
    assert_eq!(events.len(), 20, "{log}");
    for pair in events.chunks(2) {
        assert_eq!(pair, ["ENTER", "LEAVE"], "overlapping holds; log:\n{log}");
    }
    for p in [1, 2] {
        assert_eq!(log.matches(&format!("ENTER {p} ")).count(), 5, "{log}");
    }
}

#[test]
fn an_overloaded_process_stops_its_heartbeats_until_it_drains() {
    // The game (process 1) sends the lobby (process 2) 40000 messages at once; each costs
    // the lobby about 50 µs, so its backlog grows past 1024: it stops heartbeating (process 1
    // sees it go down), drains, and comes back.
    let game = format!(
        r#"{GAME}
        stage.addtask(1500, function ()
          for i = 1, 40000 do stage.signal("lobby:work", i) end
          return 0
        end)
    "#
    );
    let lobby = r#"
        stage.waitfor("work", function (i)
          local t = os.clock()
          while os.clock() - t < 0.00005 do end
          if i == 40000 then logger.info("LOBBY DONE") end
        end)
    "#;
    let server = Server::start(
        &node_config(r#"[["lua.so+game"], ["lua.so+lobby"]]"#),
        &[("game.lua", &game), ("lobby.lua", lobby)],
    );
    // The overload report, the peer going down, the drain and the peer coming back up are
    // the behaviour under test.
    server.wait_log("process 2: overloaded (");
    server.wait_log("process 1: peer process 2 is down");
    server.wait_log("process 2: backlog drained: heartbeats resume");
    server.wait_log_count("process 1: peer process 2 is up", 2);
    let log = server.log();
    assert!(
        !log.contains("watchdog: process"),
        "no kill while draining: {log}"
    );
    assert_eq!(started_pids(&log, 2).len(), 1, "{log}");
}

#[test]
fn a_process_that_keeps_crashing_is_restarted_with_a_growing_delay() {
    // Process 2 dies 1.2 s after every start (past the TIME BREAK second, so it is restarted).
    // `#restart: [2, 60]`: two restarts come at once, the third waits 1 s, the fourth 2 s.
    let crash = r#"
        logger.info("crasher up in pid " .. process.id)
        stage.addtask(1200, function () os.exit(3) end)
    "#;
    let config = format!(
        r##"{{ {ROUTER}, "#restart": [2, 60], "#startup": [["lua.so+a"], ["lua.so+b"]],
              "lua.so": {{ "%package": ["."], "a": "a", "b": "b" }} }}"##
    );
    let a = "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function () return { n = process.stage, pid = process.id } end
             end)";
    let mut server = Server::start(&config, &[("a.lua", a), ("b.lua", crash)]);
    // The held-back restarts are what is under test; the supervisor's log is where they show.
    server.wait_log("restarting it in 1 s");
    server.wait_log("restarting it in 2 s");
    assert_eq!(started_pids(&server.log(), 2).len(), 4, "{}", server.log());
    // The 2 s are really waited: no fifth start during the next 1.5 s (the restart comes 2 s
    // after the line we just saw, however slow the machine is)...
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(started_pids(&server.log(), 2).len(), 4, "{}", server.log());
    // ... and then it comes.
    server.wait_log_count("crasher up in pid", 5);
    // Meanwhile process 1 serves its clients.
    assert_eq!(ask(&mut server.connect()).unwrap().0, 1);
    // A stop during a held-back restart ends the node cleanly, without starting it.
    server.wait_log("restarting it in 4 s");
    assert_eq!(server.stop().code(), Some(0), "{}", server.log());
    assert_eq!(started_pids(&server.log(), 2).len(), 5, "{}", server.log());
}
