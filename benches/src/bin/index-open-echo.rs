//! Does opening a big index stall its core? A one-core `stage` serves a packet echo while the
//! first request for an index of IDS entries (a log left by a SIGKILLed first run, so the
//! whole log is read and replayed) makes it open. The ids carry no value, so a million
//! records stay under the 64 MiB log that would trigger a snapshot (a `stage` from before
//! snapshots were built in slices encodes the image of a million ids in one go, inside the
//! `set` that crosses it, which runs past the 500 ms `%cpu` budget of the Lua callback that
//! asked: its reply is lost, which would stop the fill). The echo client is open-loop: one 32-byte
//! packet every 200 µs on one connection, each latency counted from when it was due to be
//! sent (so a stalled core shows in every packet that queued behind the stall, not in one).
//! The open is asked for 1 s into each 8 s run, on a second connection.
//!
//! Per round, interleaved: the echo with no open (`idle`), and with the open (`open`), for
//! the `stage` next to this binary and, when given, an older `stage` binary (BEFORE: e.g. one
//! built from a commit that opened indexes on the core). The figures are medians over rounds;
//! the ratios compare runs of this one command.
//!
//! With `--snapshot` first, the run measures a snapshot of that index instead: once the index
//! is open, the core's Lua rewrites the values of 4,000 of its ids (100 per `set`, 4 KB
//! each, the next `set` when the last is answered), which takes the log past the 64 MiB
//! that starts a snapshot of all IDS ids while the writes and the echo go on. Every run
//! starts from a copy of the same prepared files. A `stage` that builds the image in one
//! go on the core stalls the echo (and the `set` whose commit started it can run past the
//! `%cpu` budget and lose its reply, which stops the writes); one that builds it in slices
//! does not.
//!
//! Needs 2 CPUs (the server's core takes the first CPU of the mask).
//!
//! Usage: target/release/index-open-echo [--snapshot] [IDS (1000000)] [ROUNDS (3)] [BEFORE]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// One packet every INTERVAL, for RUN, the open asked for at OPEN_AT.
const INTERVAL: Duration = Duration::from_micros(200);
const RUN: Duration = Duration::from_secs(8);
const OPEN_AT: Duration = Duration::from_secs(1);
/// `--snapshot`: the open, then the writes and the snapshot, all inside the run.
const SNAPSHOT_RUN: Duration = Duration::from_secs(16);

const FILL: &str = r#"
N = 0
function fill()
  local t = {}
  for _ = 1, 2000 do
    N = N + 1
    t["u" .. N] = { i = N }
  end
  stage.signal("rank:set?big=fill", t)
end
stage.waitfor("fill", function ()
  if N < IDS then fill() else logger.info("FILLED " .. N) end
end)
fill()
"#;

const ECHO: &str = r#"
broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
  return function (s, data)
    if data.q then stage.signal("rank:total?big=total", 0) end
    return data
  end
end)
stage.waitfor("total", function (v) logger.warn("TOTAL " .. tostring(v)) end)
"#;

/// `--snapshot`: once the index answered, 40 `set`s of 100 values of 4 KB, one at a time.
const WRITES: &str = r#"
W = 0
PAD = string.rep("x", 4000)
function write()
  local t = {}
  for _ = 1, 100 do
    W = W + 1
    t["u" .. W] = { v = PAD }
  end
  stage.signal("rank:set?big=wrote", t)
end
stage.waitfor("total", function (v) logger.warn("TOTAL " .. tostring(v)) write() end)
stage.waitfor("wrote", function ()
  if W < 4000 then write() else logger.warn("WROTE " .. W) end
end)
"#;

/// `cpu`: the Lua callbacks' budget (`%cpu`, ms).
fn config(sync: &str, cpu: u32) -> String {
    format!(
        r##"{{ "#threads": 1,
              "#startup": [["lua.so+game", "index.so+rank"]],
              "lua.so": {{ "%package": ["."], "%cpu": {cpu}, "game": "start" }},
              "index.so+rank": {{ "path": "score/", "sync": {sync} }} }}"##
    )
}

fn spawn(bin: &Path, dir: &Path, level: &str) -> anyhow::Result<Child> {
    Ok(Command::new(bin)
        .args(["-c", "stage.json", "-l", level])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stage.log"))?)
        .spawn()?)
}

fn stop(mut child: Child) {
    // SIGKILL: nothing is written at exit, so every run reopens the same log.
    let _ = child.kill();
    let _ = child.wait();
}

/// Writes the index with the current `stage`, then kills it: `dir/score/big.log` holds IDS
/// records.
fn prepare(bin: &Path, dir: &Path, ids: usize) -> anyhow::Result<()> {
    // The largest budget: a set that grows the index's id map past ~900k ids rehashes it on
    // the core, which can run past the default 500 ms on a loaded machine (its reply would be
    // lost and the fill would stop).
    std::fs::write(dir.join("stage.json"), config("1000", 2000))?;
    std::fs::write(dir.join("start.lua"), FILL.replace("IDS", &ids.to_string()))?;
    let mut child = spawn(bin, dir, "info")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let log = std::fs::read_to_string(dir.join("stage.log")).unwrap_or_default();
        if log.contains("FILLED ") {
            break;
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            stop(child);
            bail!("the fill did not finish; log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(child);
    let len = std::fs::metadata(dir.join("score/big.log"))?.len();
    println!("index `big`: {ids} ids, log {:.1} MB", len as f64 / 1e6);
    Ok(())
}

/// `{"v": {"n": n}}` (int32), 4-byte length first as the packet framing wants.
fn frame(fields: &[(&str, i32)]) -> Vec<u8> {
    let mut inner = Vec::new();
    for (k, n) in fields {
        inner.push(0x10);
        inner.extend_from_slice(k.as_bytes());
        inner.push(0);
        inner.extend_from_slice(&n.to_le_bytes());
    }
    let inner_len = (inner.len() + 5) as i32;
    let mut v = inner_len.to_le_bytes().to_vec();
    v.extend_from_slice(&inner);
    v.push(0);
    let mut out = Vec::new();
    let total = (4 + 1 + 2 + v.len() + 1) as i32;
    out.extend_from_slice(&total.to_le_bytes());
    out.push(0x03);
    out.extend_from_slice(b"v\0");
    out.extend_from_slice(&v);
    out.push(0);
    out
}

/// The number `n` of an echoed frame (the server may re-encode it as int32, int64 or double).
fn number(frame: &[u8]) -> Option<i32> {
    let at = frame.windows(2).position(|w| w == b"n\0")?;
    let ty = *frame.get(at.checked_sub(1)?)?;
    let b = frame.get(at + 2..)?;
    match ty {
        0x10 => Some(i32::from_le_bytes(b.get(..4)?.try_into().ok()?)),
        0x12 => Some(i64::from_le_bytes(b.get(..8)?.try_into().ok()?) as i32),
        0x01 => Some(f64::from_le_bytes(b.get(..8)?.try_into().ok()?) as i32),
        _ => None,
    }
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    let len = u32::from_le_bytes(head) as usize;
    let mut f = head.to_vec();
    f.resize(len.max(4), 0);
    s.read_exact(&mut f[4..])?;
    Ok(f)
}

struct Figures {
    p50: f64,
    p99: f64,
    max: f64,
    echoes: usize,
}

/// One run: the open-loop echo's latencies (µs), asking for the index at OPEN_AT when `open`
/// (then, with `snapshot`, writing until the index snapshots).
fn run(bin: &Path, dir: &Path, open: bool, ids: usize, snapshot: bool) -> anyhow::Result<Figures> {
    let port = stage_benches::free_port()?;
    std::fs::write(dir.join("stage.json"), config("\"always\"", 500))?;
    let mut script = ECHO.replace("PORT", &port.to_string());
    if snapshot {
        // The prepared files again (the last run's snapshot emptied the log), and the writes
        // instead of the `total` line.
        restore(dir)?;
        script = script.replace(
            r#"stage.waitfor("total", function (v) logger.warn("TOTAL " .. tostring(v)) end)"#,
            WRITES,
        );
    }
    std::fs::write(dir.join("start.lua"), script)?;
    let run_for = if snapshot { SNAPSHOT_RUN } else { RUN };
    let mut child = spawn(bin, dir, "info")?;
    let result = (|| {
        stage_benches::wait_listening(port, &mut child)?;
        let mut echo = TcpStream::connect(("127.0.0.1", port))?;
        echo.set_nodelay(true)?;
        let mut ask = TcpStream::connect(("127.0.0.1", port))?;
        ask.set_nodelay(true)?;
        let mut reader = echo.try_clone()?;
        let (tx, rx) = mpsc::channel();
        let reading = std::thread::spawn(move || {
            while let Ok(f) = read_frame(&mut reader) {
                let Some(n) = number(&f) else { break };
                if tx.send((n, Instant::now())).is_err() || n < 0 {
                    break;
                }
            }
        });
        let start = Instant::now();
        let count = (run_for.as_micros() / INTERVAL.as_micros()) as i32;
        let mut due = Vec::with_capacity(count as usize);
        let mut asked = !open;
        for n in 0..count {
            let at = start + INTERVAL * n as u32;
            if !asked && at >= start + OPEN_AT {
                ask.write_all(&frame(&[("q", 1)]))?;
                asked = true;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            due.push(at);
            echo.write_all(&frame(&[("n", n)]))?;
        }
        // The last one says stop.
        echo.write_all(&frame(&[("n", -1)]))?;
        let mut lat = Vec::with_capacity(due.len());
        while let Ok((n, when)) = rx.recv_timeout(Duration::from_secs(30)) {
            if n < 0 {
                break;
            }
            lat.push(when.duration_since(due[n as usize]).as_secs_f64() * 1e6);
        }
        let _ = reading.join();
        if lat.len() != due.len() {
            // Said, not fatal: a loaded machine's round is still worth its other figures.
            println!("    (only {} of {} echoes came back)", lat.len(), due.len());
        }
        if open {
            // The open must have happened, with every id, for the run to count.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let log = std::fs::read_to_string(dir.join("stage.log")).unwrap_or_default();
                if let Some(line) = log.lines().find(|l| l.contains("index opened")) {
                    if !line.contains(&format!("ids={ids}")) {
                        bail!("not every id was read; log:\n{log}");
                    }
                    let ms = line.split("ms=").nth(1).and_then(|r| r.split(' ').next());
                    // Opened on the core, the open can run past the `%cpu` budget of the
                    // callback that asked for it, which then loses its answer.
                    std::thread::sleep(Duration::from_millis(200));
                    let log = std::fs::read_to_string(dir.join("stage.log")).unwrap_or_default();
                    let answer = if log.contains(&format!("TOTAL {ids}")) {
                        "answered"
                    } else if log.contains("CPU budget") {
                        "ran past the %cpu budget: the request got no answer"
                    } else {
                        "no answer yet"
                    };
                    println!("    (open took {} ms; {answer})", ms.unwrap_or("?"));
                    if snapshot {
                        println!("    ({})", snapshot_outcome(dir));
                    }
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the index never opened; log:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        Ok(Figures {
            p50: q(0.5),
            p99: q(0.99),
            max: q(1.0),
            echoes: lat.len(),
        })
    })();
    stop(child);
    result
}

/// Where the prepared index is kept between `--snapshot` runs.
const PRISTINE: &str = "score.pristine";

/// Puts the prepared index back in `score/`.
fn restore(dir: &Path) -> anyhow::Result<()> {
    let score = dir.join("score");
    let _ = std::fs::remove_dir_all(&score);
    std::fs::create_dir_all(&score)?;
    for f in std::fs::read_dir(dir.join(PRISTINE))? {
        let f = f?;
        std::fs::copy(f.path(), score.join(f.file_name()))?;
    }
    Ok(())
}

/// What came of a `--snapshot` run's writes and snapshot, from its log and files.
fn snapshot_outcome(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("stage.log")).unwrap_or_default();
    let snap = std::fs::metadata(dir.join("score/big.snap")).map_or(0, |m| m.len());
    let writes = if log.contains("WROTE 4000") {
        "every write answered".to_string()
    } else if log.contains("CPU budget") {
        "a write ran past the %cpu budget and lost its reply: the writes stopped".to_string()
    } else {
        "the writes did not finish".to_string()
    };
    let built = log
        .lines()
        .find(|l| l.contains("index snapshot built"))
        .map(|l| {
            let field = |k: &str| {
                l.split(&format!("{k}="))
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .unwrap_or("?")
                    .to_string()
            };
            format!(
                "built in {} slices over {} ms",
                field("slices"),
                field("ms")
            )
        })
        .unwrap_or_else(|| "built on the core in one go".into());
    format!("snapshot {:.1} MB, {built}; {writes}", snap as f64 / 1e6)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let snapshot = args.next_if(|a| a == "--snapshot").is_some();
    let ids: usize = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let before: Option<PathBuf> = args.next().map(PathBuf::from);
    let now = stage_benches::sibling_binary("stage")?;
    let dir = tempfile::tempdir()?;
    prepare(&now, dir.path(), ids).context("preparing the index")?;
    if snapshot {
        std::fs::rename(dir.path().join("score"), dir.path().join(PRISTINE))?;
    }
    let mut runs: Vec<(String, &Path, bool)> = vec![
        ("now    idle".into(), now.as_path(), false),
        ("now    open".into(), now.as_path(), true),
    ];
    if let Some(b) = &before {
        runs.push(("before idle".into(), b.as_path(), false));
        runs.push(("before open".into(), b.as_path(), true));
    }
    println!(
        "1-core stage: open-loop echo (1 conn, one packet every {} us for {} s; the index asked for at {} s{}); {rounds} rounds, medians",
        INTERVAL.as_micros(),
        if snapshot { SNAPSHOT_RUN } else { RUN }.as_secs(),
        OPEN_AT.as_secs(),
        if snapshot { ", then written until it snapshots" } else { "" }
    );
    let mut figures: Vec<Vec<Figures>> = runs.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (k, (label, bin, open)) in runs.iter().enumerate() {
            let f = run(bin, dir.path(), *open, ids, snapshot)?;
            println!(
                "round {round} {label}: p50 {:9.1} us  p99 {:9.1} us  max {:9.1} us  ({} echoes)",
                f.p50, f.p99, f.max, f.echoes
            );
            figures[k].push(f);
        }
    }
    let mut p99s = Vec::new();
    for ((label, _, _), fs) in runs.iter().zip(&figures) {
        let p50 = median(fs.iter().map(|f| f.p50).collect());
        let p99 = median(fs.iter().map(|f| f.p99).collect());
        let max = median(fs.iter().map(|f| f.max).collect());
        println!("{label}: p50 {p50:.1} us, p99 {p99:.1} us, max {max:.1} us");
        p99s.push(p99);
    }
    println!("ratio now open / now idle: p99 {:.2}", p99s[1] / p99s[0]);
    if before.is_some() {
        println!("ratio before open / now open: p99 {:.2}", p99s[3] / p99s[1]);
    }
    Ok(())
}
