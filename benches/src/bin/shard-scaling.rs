//! What sharding index.so over the cores buys, measured through the real server: two Lua
//! stages (one per core) each keep a window of `set` requests in flight against their own
//! indexes, and the run is timed from the first request to the last reply. The same load runs
//! twice per round, interleaved: once with every index owned by core 0 (what one service
//! core gives), once with the two stages' indexes on different cores (what the hash of the
//! name does with distinct names), arranged so that every request crosses cores in that run.
//! The ratio is spread / one-core throughput.
//!
//! Needs a machine with at least 2 CPUs (the server runs 2 cores). The index logs sync once a
//! second (`"sync": 1000`), so the figure is the engine's, not the disk's.
//!
//! Usage: target/release/shard-scaling [SETS_PER_STAGE (200000)] [WINDOW (64)] [ROUNDS (3)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::bail;
use stage_engine::service::shard::owner_of_name;

const CORES: usize = 2;

/// Each load stage sends `SETS` sets to its index, `WINDOW` at a time, then logs
/// `DONE <stage> <ms>`. Stage `a` runs on core 0, `b` on core 1.
const LOAD: &str = r#"
-- Globals only: handlers and timers are re-created from bytecode and see no upvalues.
ME, INDEX, TOTAL, WINDOW, SENT, DONE = NAME, INDEX_NAME, SETS, WINDOW_SIZE, 0, 0
function send()
  SENT = SENT + 1
  stage.signal("rank:set?" .. INDEX .. "=ok", { ["u" .. (SENT % 50000)] = { i = SENT } })
end
stage.waitfor("ok", function ()
  DONE = DONE + 1
  if SENT < TOTAL then send() end
  if DONE == TOTAL then
    logger.info("DONE " .. ME .. " " .. string.format("%.1f", (process.tick - STARTED) * 1000))
  end
end)
stage.addtask(300, function ()
  STARTED = process.tick
  for _ = 1, WINDOW do send() end
  return 0
end)
"#;

/// An index name owned by `core`.
fn name_on(core: usize, avoid: &str) -> String {
    (0..10_000)
        .map(|i| format!("board{i}"))
        .find(|n| owner_of_name(n, CORES) == core && n != avoid)
        .expect("a name")
}

/// One run: the sets per second over both stages.
fn run(stage: &PathBuf, indexes: [&str; 2], sets: usize, window: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        r##"{{ "#threads": {CORES},
              "#startup": [["lua.so+a", "lua.so+b", "index.so+rank"]],
              "lua.so": {{ "%package": ["."], "a": "a", "b": "b" }},
              "index.so+rank": {{ "path": "{}/", "sync": 1000 }} }}"##,
        dir.path().join("score").display()
    );
    std::fs::write(dir.path().join("stage.json"), config)?;
    for (name, index) in ["a", "b"].iter().zip(indexes) {
        let script = LOAD
            .replace("INDEX_NAME", &format!("{index:?}"))
            .replace("NAME", &format!("{name:?}"))
            .replace("SETS", &sets.to_string())
            .replace("WINDOW_SIZE", &window.to_string());
        std::fs::write(dir.path().join(format!("{name}.lua")), script)?;
    }
    let log = dir.path().join("stage.log");
    let mut child = Command::new(stage)
        .args(["-c", "stage.json", "-s", "stage.stop"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let times = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let times: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("DONE ").nth(1))
            .filter_map(|r| r.split_whitespace().nth(1)?.parse().ok())
            .collect();
        if times.len() == 2 {
            break times;
        }
        if std::time::Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!(
                "the run did not finish; end of its log:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let slowest_ms = times.iter().cloned().fold(0.0, f64::max);
    Ok((2 * sets) as f64 / (slowest_ms / 1000.0))
}

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (sets, window, rounds) = (arg(1, 200_000), arg(2, 64), arg(3, 3));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < CORES {
        bail!("needs {CORES} CPUs, this machine lets us use {cpus}");
    }
    let stage = stage_benches::sibling_binary("stage")?;
    // One core: both stages' indexes on core 0 (stage b's requests cross cores, a's do not).
    // Spread: a's index on core 1, b's on core 0, so every request crosses cores — the
    // comparison is against sharding, not in its favour.
    let (x, y) = (name_on(0, ""), name_on(1, ""));
    let x2 = name_on(0, &x);
    let one_core: [&str; 2] = [&x, &x2];
    let spread: [&str; 2] = [&y, &x];
    println!(
        "{sets} sets per stage, 2 stages (core 0, core 1), window {window}, {rounds} rounds, index logs synced every 1 s"
    );
    println!(
        "{:>6} {:>16} {:>16} {:>7}",
        "round", "one core sets/s", "spread sets/s", "ratio"
    );
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let one = run(&stage, one_core, sets, window)?;
        let two = run(&stage, spread, sets, window)?;
        ratios.push(two / one);
        println!("{round:>6} {one:>16.0} {two:>16.0} {:>7.2}", two / one);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio (spread / one core): {:.2}",
        ratios[ratios.len() / 2]
    );
    Ok(())
}
