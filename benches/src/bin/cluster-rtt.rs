//! Request/reply between two stages on two nodes through NATS, against the same two stages
//! in two processes of one node (datagrams), in one run (issue #10's benchmark). Stage
//! `client` keeps WINDOW requests `server:echo` in flight and times each round trip in Lua
//! (`process.tick`); stage `server` answers with the value it got. Per run: a readiness
//! probe, a warm-up of WARM requests, one idle second, then TOTAL measured requests. The CPU
//! time the stage processes spent in the measured phase (utime + stime from /proc, read at
//! the idle second and after the last reply) divided by TOTAL is the CPU per request on the
//! node; the NATS server's own CPU is reported apart.
//!
//! Needs `nats-server` (Debian package). The variants alternate within each round, so both
//! see the same machine.
//!
//! Usage: target/release/cluster-rtt [TOTAL (20000)] [ROUNDS (2)] [WINDOWS (1,16)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use stage_benches::{cpu_seconds, nats};

const CLIENT: &str = r#"
-- Globals only: handlers and timers are re-created from bytecode and see no upvalues.
TOTAL, WINDOW, WARM = N_TOTAL, N_WINDOW, N_WARM
SENT, DONE, T, LAT, PHASE = 0, 0, {}, {}, "wait"
function send()
  SENT = SENT + 1
  T[SENT] = process.tick
  stage.signal("server:echo=ok", SENT)
end
function start(phase)
  PHASE, SENT, DONE, STARTED = phase, 0, 0, process.tick
  for _ = 1, WINDOW do send() end
end
stage.waitfor("ready", function ()
  if PHASE == "wait" then start("warm") end
end)
stage.waitfor("ok", function (seq)
  local t0 = T[seq]
  T[seq] = nil
  DONE = DONE + 1
  if PHASE == "run" then LAT[#LAT + 1] = process.tick - t0 end
  local limit = PHASE == "warm" and WARM or TOTAL
  if SENT < limit then send() end
  if DONE < limit then return end
  if PHASE == "warm" then
    logger.info("WARM")
    PHASE = "idle"
    stage.addtask(1000, function () start("run"); return 0 end)
    return
  end
  local ms = (process.tick - STARTED) * 1000
  table.sort(LAT)
  local function q(p) return LAT[math.min(#LAT, math.floor(#LAT * p) + 1)] * 1e6 end
  logger.info(string.format("DONE %.3f %.1f %.1f", ms, q(0.5), q(0.99)))
end)
-- Until the server is known (another process's or node's heartbeat), probe.
stage.addtask(200, function ()
  if PHASE ~= "wait" then return 0 end
  stage.signal("server:echo=ready", 0)
end)
"#;

const SERVER: &str = r#"stage.waitfor("echo", function (x) return x end)"#;

fn spawn(stage: &Path, dir: &Path, config: &str, log: &Path) -> anyhow::Result<nats::Kill> {
    let file = log.with_extension("json");
    std::fs::write(&file, config)?;
    let child = Command::new(stage)
        .args(["-c", &file.display().to_string(), "-s"])
        .arg(dir.join("stage.stop"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    Ok(nats::Kill(child))
}

/// Pids of the processes a node's log says its supervisor started.
fn started_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| l.split(" (pid ").nth(1))
        .filter_map(|r| r.split(')').next()?.parse().ok())
        .collect()
}

struct Outcome {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    nats_cpu_us: Option<f64>,
}

/// Waits for `WARM` then `DONE` in the client's log, reading the CPU of `pids()` at both.
fn measure(
    client_log: &Path,
    total: usize,
    pids: &dyn Fn() -> Vec<u32>,
    nats: Option<u32>,
) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let mut start: Option<(f64, f64)> = None;
    loop {
        let text = std::fs::read_to_string(client_log).unwrap_or_default();
        if start.is_none() && text.contains("WARM") {
            start = Some((cpu(&pids()), nats.map_or(0.0, cpu_seconds)));
        }
        if let (Some((c0, n0)), Some(done)) = (start, text.split("DONE ").nth(1)) {
            let (c1, n1) = (cpu(&pids()), nats.map_or(0.0, cpu_seconds));
            let nums: Vec<f64> = done
                .split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect();
            let [ms, p50, p99] = nums[..] else {
                bail!("bad DONE line: {done}");
            };
            let us_per = |seconds: f64| seconds * 1e6 / total as f64;
            return Ok(Outcome {
                per_second: total as f64 / (ms / 1000.0),
                p50_us: p50,
                p99_us: p99,
                cpu_us: us_per(c1 - c0),
                nats_cpu_us: nats.map(|_| us_per(n1 - n0)),
            });
        }
        if Instant::now() > deadline {
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!(
                "the run did not finish; end of the client's log:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_scripts(dir: &Path, total: usize, window: usize) -> anyhow::Result<()> {
    let client = CLIENT
        .replace("N_TOTAL", &total.to_string())
        .replace("N_WINDOW", &window.to_string())
        .replace("N_WARM", &(total / 5).max(100).to_string());
    std::fs::write(dir.join("client.lua"), client)?;
    std::fs::write(dir.join("server.lua"), SERVER)?;
    Ok(())
}

const LUA: &str = r##""lua.so": { "%package": ["."], "client": "client", "server": "server" }"##;

/// The two stages in two processes of one node.
fn processes(stage: &Path, total: usize, window: usize) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    write_scripts(dir.path(), total, window)?;
    let log = dir.path().join("node.log");
    let config = format!(
        r##"{{ "#threads": 1, "#router": [400, 100],
              "#startup": [["lua.so+client"], ["lua.so+server"]], {LUA} }}"##
    );
    let _node = spawn(stage, dir.path(), &config, &log)?;
    let read = || started_pids(&std::fs::read_to_string(&log).unwrap_or_default());
    measure(&log, total, &read, None)
}

/// The two stages on two nodes, through a NATS server of this run's own.
fn nodes(stage: &Path, nats_bin: &Path, total: usize, window: usize) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    write_scripts(dir.path(), total, window)?;
    let nats = nats::Server::start(nats_bin, false)?;
    let port = nats.port;
    let config = |node: &str, stage_id: &str| {
        format!(
            r##"{{ "#threads": 1, "#router": [400, 100], "#node": "{node}",
                  "#cluster": ["nats://127.0.0.1:{port}"],
                  "#startup": [["lua.so+{stage_id}"]], {LUA} }}"##
        )
    };
    let b_log = dir.path().join("b.log");
    let a_log = dir.path().join("a.log");
    let b = spawn(stage, dir.path(), &config("b", "server"), &b_log)?;
    let a = spawn(stage, dir.path(), &config("a", "client"), &a_log)?;
    let pids = [a.0.id(), b.0.id()];
    measure(&a_log, total, &|| pids.to_vec(), Some(nats.pid()))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let total: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let windows: Vec<usize> = args
        .get(3)
        .map_or("1,16", String::as_str)
        .split(',')
        .filter_map(|w| w.parse().ok())
        .collect();
    let stage = stage_benches::sibling_binary("stage")?;
    let nats_bin = nats::binary()?;
    println!(
        "{total} measured requests per run, one core per stage process, {rounds} round(s); CPU = both stage processes"
    );
    println!(
        "{:>5} {:>6} {:>14} {:>10} {:>8} {:>8} {:>12} {:>12}",
        "round", "window", "variant", "req/s", "p50 µs", "p99 µs", "CPU µs/req", "NATS µs/req"
    );
    for round in 1..=rounds {
        for &window in &windows {
            let runs = [
                ("2 processes", processes(&stage, total, window)?),
                ("2 nodes, NATS", nodes(&stage, &nats_bin, total, window)?),
            ];
            for (name, o) in &runs {
                println!(
                    "{round:>5} {window:>6} {name:>14} {:>10.0} {:>8.0} {:>8.0} {:>12.1} {:>12}",
                    o.per_second,
                    o.p50_us,
                    o.p99_us,
                    o.cpu_us,
                    o.nats_cpu_us.map_or("-".into(), |c| format!("{c:.1}"))
                );
            }
            let (p, n) = (&runs[0].1, &runs[1].1);
            println!(
                "{:>5} {window:>6} {:>14} {:>10.2} {:>8.2} {:>8.2} {:>12.2}",
                "",
                "ratio",
                n.per_second / p.per_second,
                n.p50_us / p.p50_us,
                n.p99_us / p.p99_us,
                n.cpu_us / p.cpu_us
            );
        }
    }
    Ok(())
}
