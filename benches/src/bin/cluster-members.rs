//! What cluster membership costs with many members (docs/scaling.md), for two `stage`
//! binaries in one run (a baseline given on the command line, then this build's): for each
//! member count M, a nats-server of the run's own (with its monitoring port) and 10 nodes
//! (fewer when M < 10), each a multi-process node of M / 10 processes, so M cluster members
//! (a process of a node is the member `<node>.<process>`). Member k hosts its own stage id
//! `z<k>` and talks to one other member only: the one at the same place on the next node
//! (`z<k + M/10>`), the shape of zones that talk to their neighbours. Each member pings its
//! neighbour until the first answer (so every member has routed across nodes), then stays
//! idle; the tool then measures over SECONDS the messages and bytes the NATS server
//! delivered per second per member (`/varz` out_msgs / out_bytes: all of it membership, since
//! nothing else is sent), the CPU per member (every process of every node, supervisors
//! included) and the server's CPU.
//!
//! Usage: target/release/cluster-members BASELINE_STAGE [COUNTS (10,50,100)] [SECONDS (5)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stage_benches::{cpu_seconds, nats};

/// Nodes in a run (fewer when there are fewer members).
const NODES: usize = 10;

/// `pid` and every process whose parent it is (a multi-process node's children).
fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        // The command sits in parentheses and may hold spaces: fields after it.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Member k's script: answer pings, ping the neighbour every 200 ms until it answers once.
fn script(k: usize, neighbour: usize) -> String {
    format!(
        r#"
stage.waitfor("ping", function () return 1 end)
stage.waitfor("pong", function ()
  if not READY then READY = true; logger.info("READY z{k}") end
end)
stage.addtask(200, function ()
  if READY then return 0 end
  stage.signal("z{neighbour}:ping=pong")
end)
"#
    )
}

struct Sample {
    msgs: f64,
    bytes: f64,
    member_cpu_ms: f64,
    nats_cpu_ms: f64,
}

fn run(stage: &Path, nats_bin: &Path, members: usize, seconds: u64) -> anyhow::Result<Sample> {
    let dir = tempfile::tempdir()?;
    let nats = nats::Server::start(nats_bin, true)?;
    let (port, mon) = (nats.port, nats.monitor.context("monitor port")?);
    let nodes = NODES.min(members);
    let per_node = members / nodes;
    let members = nodes * per_node;
    let mut children = Vec::new();
    for i in 0..nodes {
        let mut startup = Vec::new();
        let mut scripts = Vec::new();
        for p in 0..per_node {
            let k = i * per_node + p;
            let neighbour = (k + per_node) % members;
            std::fs::write(dir.path().join(format!("z{k}.lua")), script(k, neighbour))?;
            startup.push(format!(r#"["lua.so+z{k}"]"#));
            scripts.push(format!(r#""z{k}": "z{k}""#));
        }
        let config = format!(
            r##"{{ "#threads": 1, "#router": [400, 100], "#node": "n{i}",
                  "#cluster": ["nats://127.0.0.1:{port}"],
                  "#startup": [{}],
                  "lua.so": {{ "%package": ["."], {} }} }}"##,
            startup.join(", "),
            scripts.join(", ")
        );
        let file = dir.path().join(format!("n{i}.json"));
        std::fs::write(&file, config)?;
        let log = dir.path().join(format!("n{i}.log"));
        let child = Command::new(stage)
            .args(["-c", &file.display().to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        children.push((nats::Kill(child), log));
    }
    // Every member has had an answer from its neighbour on the next node.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready: usize = children
            .iter()
            .map(|(_, log)| {
                std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .matches("READY z")
                    .count()
            })
            .sum();
        if ready >= members {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {members} members got an answer from their neighbour");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Late answers and the last pings land first.
    std::thread::sleep(Duration::from_secs(1));
    let pids: Vec<u32> = children
        .iter()
        .flat_map(|(k, _)| with_children(k.0.id()))
        .collect();
    let cpu = || pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let (m0, b0) = nats::varz(mon)?;
    let (c0, s0) = (cpu(), cpu_seconds(nats.pid()));
    std::thread::sleep(Duration::from_secs(seconds));
    let (m1, b1) = nats::varz(mon)?;
    let (c1, s1) = (cpu(), cpu_seconds(nats.pid()));
    let per = |x: f64| x / seconds as f64 / members as f64;
    Ok(Sample {
        msgs: per(m1 - m0),
        bytes: per(b1 - b0),
        member_cpu_ms: per(c1 - c0) * 1000.0,
        nats_cpu_ms: (s1 - s0) / seconds as f64 * 1000.0,
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let baseline = PathBuf::from(
        args.get(1)
            .context("usage: cluster-members BASELINE_STAGE [COUNTS] [SECONDS]")?,
    );
    let counts: Vec<usize> = args
        .get(2)
        .map_or("10,50,100", String::as_str)
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect();
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5);
    let stage = stage_benches::sibling_binary("stage")?;
    let nats_bin = nats::binary()?;
    println!(
        "heartbeat every 100 ms; {NODES} nodes of M/{NODES} processes; each member talks to one other; idle {seconds} s"
    );
    println!(
        "{:>7} {:>9} {:>17} {:>18} {:>19} {:>14}",
        "members",
        "binary",
        "msgs/s per member",
        "bytes/s per member",
        "CPU ms/s per member",
        "NATS CPU ms/s"
    );
    for m in counts {
        for (name, bin) in [("baseline", &baseline), ("this", &stage)] {
            let s = run(bin, &nats_bin, m, seconds)?;
            println!(
                "{:>7} {:>9} {:>17.1} {:>18.0} {:>19.2} {:>14.1}",
                m, name, s.msgs, s.bytes, s.member_cpu_ms, s.nats_cpu_ms
            );
        }
    }
    Ok(())
}
