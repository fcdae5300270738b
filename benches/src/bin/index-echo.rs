//! Does a durable index slow down everything else on its core? A one-core `stage` serves a
//! packet echo (1 connection, 32-byte payloads, `stage-loadtest` on the other CPU, ping-pong)
//! while the same core owns an index.so index taking writes at a fixed rate from a timer on
//! that core: every PERIOD ms one `set` of IDS ids, answered through a callback. The same run
//! is made with the index's default durability (`"sync": "always"`: a reply waits for its
//! `fdatasync`) and with the index synced once a second (`"sync": 1000`): the same CPU work on
//! the core, no sync wait. Rounds interleave the two; the ratio is the median echo p99 with
//! `always` over the median with `1000`. Before index.so synced on its sync thread, the
//! fdatasync ran on the core and stalled its echo for the length of a disk flush.
//!
//! Needs 2 CPUs (server core on the first CPU of the mask, load generator on the second).
//!
//! Usage: target/release/index-echo [SECONDS (10)] [ROUNDS (3)] [PERIOD_MS (5)] [IDS (20)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

const SCRIPT: &str = r#"
broker.ready('tcp://127.0.0.1:PORT?packet=4k,10k', function (socket, addr)
  return function (socket, data) return data end
end)
-- Globals only: timers and handlers are re-created from bytecode and see no upvalues.
N, ACKED = 0, 0
stage.waitfor("ok", function () ACKED = ACKED + 1 end)
stage.addtask(PERIOD, function ()
  local t = {}
  for _ = 1, IDS do
    N = N + 1
    t["u" .. (N % 100000)] = { i = N }
  end
  stage.signal("rank:set?board=ok", t)
end)
"#;

struct Options {
    seconds: u64,
    rounds: usize,
    period: u64,
    ids: usize,
}

/// One run: the echo's p50 and p99 (µs) and how many echoes were answered.
fn run(sync: &str, o: &Options, dir: &Path) -> anyhow::Result<(f64, f64, u64)> {
    let port = stage_benches::free_port()?;
    let config = format!(
        r##"{{ "#threads": 1,
              "#startup": [["lua.so+echo", "index.so+rank"]],
              "lua.so": {{ "%package": ["."], "echo": "start" }},
              "index.so+rank": {{ "path": "{}/", "sync": {sync} }} }}"##,
        dir.join(format!("index-{}", sync.trim_matches('"')))
            .display()
    );
    std::fs::write(dir.join("stage.json"), config)?;
    let script = SCRIPT
        .replace("PORT", &port.to_string())
        .replace("PERIOD", &o.period.to_string())
        .replace("IDS", &o.ids.to_string());
    std::fs::write(dir.join("start.lua"), script)?;
    let mut server = Command::new(stage_benches::sibling_binary("stage")?)
        .args(["-c", "stage.json", "-l", "warn"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| {
        stage_benches::wait_listening(port, &mut server)?;
        // Let the write load reach its steady state first.
        std::thread::sleep(Duration::from_millis(500));
        let cpus = bench_cpus();
        let out = Command::new("taskset")
            .arg("-c")
            .arg(cpus.1.to_string())
            .arg(stage_benches::sibling_binary("stage-loadtest")?)
            .args(["--target", &format!("127.0.0.1:{port}")])
            .args(["--connections", "1", "--payload-size", "32"])
            .args(["--duration", &format!("{}s", o.seconds)])
            .args(["--threads", "1", "--quiet", "--json", "-"])
            .output()?;
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!("loadtest output: {}", String::from_utf8_lossy(&out.stderr))
        })?;
        let f = |k: &str| r["latency_us"][k].as_f64().unwrap_or(0.0);
        Ok((f("p50"), f("p99"), r["received"].as_u64().unwrap_or(0)))
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// The CPUs of this process's mask: the server takes the first (its one core), the load
/// generator the second.
fn bench_cpus() -> (usize, usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } == 0;
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| ok && unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    (
        cpus.first().copied().unwrap_or(0),
        cpus.get(1).copied().unwrap_or(1),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut next =
        |d: u64| -> anyhow::Result<u64> { Ok(args.next().map_or(Ok(d), |s| s.parse())?) };
    let o = Options {
        seconds: next(10)?,
        rounds: next(3)? as usize,
        period: next(5)?,
        ids: next(20)? as usize,
    };
    println!(
        "1-core stage: echo (1 conn, 32 B) + index writes ({} ids every {} ms); {} rounds of {} s, medians",
        o.ids, o.period, o.rounds, o.seconds
    );
    let dir = tempfile::tempdir()?;
    let (mut always, mut relaxed) = (Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        for (sync, into) in [("\"always\"", &mut always), ("1000", &mut relaxed)] {
            let (p50, p99, n) = run(sync, &o, dir.path())?;
            println!("round {round} sync {sync:>8}: echo p50 {p50:8.1} us  p99 {p99:8.1} us  ({n} echoes)");
            into.push((p50, p99));
        }
    }
    let p = |v: &[(f64, f64)], i: usize| {
        median(v.iter().map(|x| if i == 0 { x.0 } else { x.1 }).collect())
    };
    let (a50, a99, r50, r99) = (p(&always, 0), p(&always, 1), p(&relaxed, 0), p(&relaxed, 1));
    println!("sync always: p50 {a50:.1} us, p99 {a99:.1} us");
    println!("sync 1000  : p50 {r50:.1} us, p99 {r99:.1} us");
    println!(
        "ratio always / 1000: p50 {:.2}, p99 {:.2}",
        a50 / r50,
        a99 / r99
    );
    Ok(())
}
