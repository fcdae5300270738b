//! Atomic reload (engine/src/script/reload.rs): an edited script reaches every core of the
//! process together, as the replies of many connections spread over the cores show; a script
//! that does not compile is refused whole (every connection keeps the old version) and
//! logged once, and fixing it reloads; SIGHUP reloads at once (and, sent to a supervisor,
//! in every process) and logs the outcome after every core has switched.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::harness::*;

/// The cores the server runs (at most 4, so the test does not hog a shared machine).
fn cores() -> usize {
    affinity_cpus().min(4)
}

/// A server whose replies say which version of `version.lua` and of the `stage.require`d
/// `required.lua` served them, and the socket id (its low byte is the owning core).
fn server(cores: usize) -> Server {
    server_with(cores, 50)
}

fn server_with(cores: usize, reflush_ms: u64) -> Server {
    Server::start(
        &format!(
            r##"{{ "#threads": {cores}, "#startup": [["lua.so+stage"]],
                  "lua.so": {{ "%package": ["."], "%reflush": {reflush_ms}, "lua.so+stage": "start" }} }}"##
        ),
        &[
            (
                "start.lua",
                "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
                   return function (s, data)
                     return { v = stage.load('version'), r = stage.require('required').n, id = s.id }
                   end
                 end)",
            ),
            ("version.lua", "return 1"),
            ("required.lua", "return { n = 1 }"),
        ],
    )
}

/// Replaces a file through a rename, as a deploy or an editor does: the reloader never reads
/// it half written. (The new contents differ in length, so the change is seen even when two
/// writes fall in the same mtime tick.)
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Reply {
    v: i64,
    r: i64,
    core: i64,
}

fn ask(conn: &mut TcpStream) -> Reply {
    conn.write_all(&message("x", &[])).unwrap();
    let reply = read_reply(conn);
    let field = |k: &str| reply.get(k).and_then(Bson::as_i64);
    Reply {
        v: field("v").expect("v in the reply"),
        r: field("r").expect("r in the reply"),
        core: field("id").expect("id in the reply") & 0xFF,
    }
}

/// Opens connections until every core owns at least `per_core` of them (the kernel spreads
/// them over the cores' SO_REUSEPORT sockets; the other cores start listening a moment after
/// the port first accepts).
fn spread(server: &Server, cores: usize, per_core: usize) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    let mut owned: BTreeMap<i64, usize> = BTreeMap::new();
    server.wait_until(
        &format!("{per_core} connections on each of {cores} cores"),
        || {
            let mut conn = server.connect();
            let reply = ask(&mut conn);
            *owned.entry(reply.core).or_default() += 1;
            conns.push(conn);
            owned.len() == cores && owned.values().all(|&n| n >= per_core)
        },
    );
    conns
}

#[test]
fn every_core_switches_to_an_edited_script_together() {
    let cores = cores();
    if cores < 2 {
        println!("skipped: a reload across cores needs a machine with 2 CPUs or more");
        return;
    }
    let server = server(cores);
    let mut conns = spread(&server, cores, 4);
    for conn in &mut conns {
        let reply = ask(conn);
        assert_eq!((reply.v, reply.r), (1, 1));
    }
    replace(&server.path("version.lua"), "return 22");
    replace(&server.path("required.lua"), "return { n = 22 }");
    // Ask every connection in turn, one request at a time, until all answer the new
    // version. Once any reply shows it, every later reply must: the reloader posts the batch
    // to every core's inbox (and rings its doorbell) before the first core can switch, so a
    // request sent after a client has seen the new version reaches each core after the
    // batch did, and the idle core takes its inbox first.
    let mut first_new: Option<(usize, i64)> = None;
    let mut rounds = 0;
    server.wait_until("every connection answers version 22", || {
        rounds += 1;
        let mut all_new = true;
        for (i, conn) in conns.iter_mut().enumerate() {
            let reply = ask(conn);
            match (reply.v, first_new) {
                (22, None) => first_new = Some((i, reply.core)),
                (22, Some(_)) => {}
                (1, Some((j, core))) => panic!(
                    "connection {i} (core {}) still answered version 1 in round {rounds} after \
                     connection {j} (core {core}) had answered version 22",
                    reply.core
                ),
                (v, _) => assert_eq!(v, 1, "an unknown version"),
            }
            all_new &= reply.v == 22;
        }
        all_new
    });
    // The required module was run again on every core (it may have come in the same reload
    // or the next one: the two files were replaced one after the other).
    server.wait_until("every connection's required module is version 22", || {
        conns.iter_mut().all(|conn| ask(conn).r == 22)
    });
    let log = server.log();
    assert!(log.contains("reload version 2:"), "{log}");
}

#[test]
fn a_script_that_does_not_compile_is_refused_whole_and_the_old_version_serves_on() {
    let cores = cores();
    let server = server(cores);
    let mut conns = spread(&server, cores, 2);
    // The broken file first: no scan may see the good change alone.
    replace(&server.path("version.lua"), "return (");
    replace(&server.path("required.lua"), "return { n = 333 }");
    server.wait_log("does not compile");
    // Several more scans pass (`%reflush` 50 ms) while every connection keeps answering
    // with the running version: neither file switched.
    for _ in 0..6 {
        for conn in &mut conns {
            let reply = ask(conn);
            assert_eq!(
                (reply.v, reply.r),
                (1, 1),
                "core {} switched although version.lua does not compile",
                reply.core
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Fixed: both changes switch in one reload, on every core.
    replace(&server.path("version.lua"), "return 4444");
    server.wait_until("every connection answers the fixed version", || {
        let replies: Vec<Reply> = conns.iter_mut().map(ask).collect();
        for reply in &replies {
            if reply.v == 4444 {
                assert_eq!(reply.r, 333, "the held change comes with the fix");
            }
        }
        replies.iter().all(|r| r.v == 4444)
    });
    let log = server.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "logged once: {refusals:?}");
    assert!(
        refusals[0].contains("`version.lua` does not compile")
            && refusals[0].contains("version.lua:1:"),
        "the line names the file and the error: {}",
        refusals[0]
    );
    let cores_seen: BTreeSet<i64> = conns.iter_mut().map(|c| ask(c).core).collect();
    assert_eq!(cores_seen.len(), cores, "connections on every core");
}

#[test]
fn sighup_reloads_now_and_logs_the_outcome_once_every_core_has_switched() {
    // An hour between scans: only the signal can make this reload happen.
    let cores = cores();
    let server = server_with(cores, 3_600_000);
    let mut conns = spread(&server, cores, 1);
    replace(&server.path("version.lua"), "return 22");
    for conn in &mut conns {
        assert_eq!(ask(conn).v, 1, "no scan before the signal");
    }
    server.signal(libc::SIGHUP);
    server.wait_log("SIGHUP reload: version 2: version switched on");
    // The outcome is reported after every core switched: every connection has the new one.
    for conn in &mut conns {
        assert_eq!(ask(conn).v, 22);
    }
    // Nothing changed since: the next signal says so, and the server is still serving.
    server.signal(libc::SIGHUP);
    server.wait_log("SIGHUP reload: version 2: no script changed");
    assert_eq!(ask(&mut conns[0]).v, 22);
}

#[test]
fn sighup_to_the_supervisor_reloads_every_process() {
    // Two processes sharing the port; an hour between scans, so only the signal reloads.
    let server = Server::start(
        r##"{ "#router": [400, 100], "#startup": [["lua.so+stage"], ["lua.so+stage"]],
              "lua.so": { "%package": ["."], "%reflush": 3600000, "lua.so+stage": "start" } }"##,
        &[
            (
                "start.lua",
                "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
                   return function (s, data)
                     return { v = stage.load('version'), r = process.stage, id = s.id }
                   end
                 end)",
            ),
            ("version.lua", "return 1"),
        ],
    );
    // `r` is the process number here: connect until both processes answer.
    let mut conns: BTreeMap<i64, TcpStream> = BTreeMap::new();
    server.wait_until("both processes answer on the shared port", || {
        let mut conn = server.connect();
        let reply = ask(&mut conn);
        assert_eq!(reply.v, 1);
        conns.entry(reply.r).or_insert(conn);
        conns.len() == 2
    });
    replace(&server.path("version.lua"), "return 22");
    server.signal(libc::SIGHUP);
    server.wait_log("asking every process to reload");
    server.wait_log_count("SIGHUP reload: version 2: version switched on", 2);
    for (process, conn) in &mut conns {
        assert_eq!(ask(conn).v, 22, "process {process}");
    }
}
