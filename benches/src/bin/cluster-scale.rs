//! What cluster membership costs as nodes are added (docs/scaling.md): for each node count N,
//! a nats-server of the run's own (with its monitoring port) and N single-process `stage`
//! nodes, each hosting its own stage id and the shared id `game`, idle apart from the cluster's
//! heartbeats. Node 1 sends `game` a request every 20 ms until one is answered, so it
//! listens to `game`'s heartbeats (a member hears the heartbeats of the ids it sends to
//! only, engine/src/cluster). Once node 1 sees every other node, the tool measures over SECONDS: the
//! messages and bytes the NATS server delivered per second per node (`/varz` out_msgs /
//! out_bytes: what each node receives), and the CPU each node and the server spent per second.
//! Then node 1 sends REQS one-receiver requests to `game` (hosted by every other node) at a
//! steady pace, and the tool reports node 1's CPU per request: the routing cost as the member
//! table grows.
//!
//! Usage: target/release/cluster-scale [COUNTS (2,5,10)] [SECONDS (5)] [REQS (5000)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stage_benches::{cpu_seconds, nats};

const NODE: &str = r#"
stage.waitfor("echo", function (x) return x end)
"#;

/// Node 1 also sends: when the file `go` appears in its directory (the tool writes it after
/// the idle measurement) it paces REQS requests over about 2 s and logs `DONE` at the last
/// answer.
const SENDER: &str = r#"
stage.waitfor("echo", function (x) return x end)
stage.waitfor("ok", function ()
  GOT = (GOT or 0) + 1
  if GOT == N_REQS then logger.info("DONE") end
end)
stage.waitfor("warm", function () WARM = true end)
stage.addtask(20, function ()
  if not WARM then stage.signal("game:echo=warm") return end
  if SENT == nil then
    local f = io.open("go")
    if f == nil then return end
    f:close()
    SENT = 0
  end
  for _ = 1, N_REQS / 100 do
    SENT = SENT + 1
    stage.signal("game:echo=ok", SENT)
  end
  if SENT >= N_REQS then return 0 end
end)
"#;

struct Sample {
    nodes: usize,
    msgs_per_node: f64,
    bytes_per_node: f64,
    node_cpu_ms: f64,
    nats_cpu_ms: f64,
    route_us: f64,
}

fn run(
    stage: &Path,
    nats_bin: &Path,
    n: usize,
    seconds: u64,
    reqs: usize,
) -> anyhow::Result<Sample> {
    let dir = tempfile::tempdir()?;
    let nats = nats::Server::start(nats_bin, true)?;
    let (port, mon) = (nats.port, nats.monitor.context("monitor port")?);
    let mut nodes = Vec::new();
    for i in 1..=n {
        let script = if i == 1 {
            SENDER.replace("N_REQS", &reqs.to_string())
        } else {
            NODE.to_string()
        };
        std::fs::write(dir.path().join(format!("s{i}.lua")), script)?;
        // Node 1 hosts only its own id, so every `game` request leaves the node.
        let stages = if i == 1 {
            format!(r#""lua.so+s{i}""#)
        } else {
            format!(r#""lua.so+s{i}", "lua.so+game""#)
        };
        let config = format!(
            r##"{{ "#threads": 1, "#router": [400, 100], "#node": "n{i}",
                  "#cluster": ["nats://127.0.0.1:{port}"],
                  "#startup": [[{stages}]],
                  "lua.so": {{ "%package": ["."], "s{i}": "s{i}", "game": "s{i}" }} }}"##
        );
        let file = dir.path().join(format!("n{i}.json"));
        std::fs::write(&file, config)?;
        let log = dir.path().join(format!("n{i}.log"));
        let child = Command::new(stage)
            .args(["-c", &file.display().to_string(), "-s"])
            .arg(dir.path().join(format!("n{i}.stop")))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        nodes.push((nats::Kill(child), log));
    }
    // Node 1 sees every other node: n - 1 "is up" lines.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&nodes[0].1)
        .unwrap_or_default()
        .matches(" is up, hosting ")
        .count()
        < n - 1
    {
        if Instant::now() > deadline {
            bail!("node 1 did not see the {} other nodes", n - 1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pids: Vec<u32> = nodes.iter().map(|(k, _)| k.0.id()).collect();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let (m0, b0) = nats::varz(mon)?;
    let (c0, s0) = (cpu(&pids), cpu_seconds(nats.pid()));
    std::thread::sleep(Duration::from_secs(seconds));
    let (m1, b1) = nats::varz(mon)?;
    let (c1, s1) = (cpu(&pids), cpu_seconds(nats.pid()));
    let per = |x: f64| x / seconds as f64 / n as f64;

    // Routing: node 1's CPU per request while it sends `reqs` requests (minus its idle CPU).
    let sender = pids[0];
    let log = nodes[0].1.clone();
    let idle_per_s = (c1 - c0) / seconds as f64 / n as f64;
    let cpu0 = cpu_seconds(sender);
    let t0 = Instant::now();
    std::fs::write(dir.path().join("go"), "")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("DONE") {
            break;
        }
        if Instant::now() > deadline {
            bail!("node 1 did not finish its requests");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy = cpu_seconds(sender) - cpu0 - idle_per_s * t0.elapsed().as_secs_f64();
    Ok(Sample {
        nodes: n,
        msgs_per_node: per(m1 - m0),
        bytes_per_node: per(b1 - b0),
        node_cpu_ms: per(c1 - c0) * 1000.0,
        nats_cpu_ms: (s1 - s0) / seconds as f64 * 1000.0,
        route_us: busy / reqs as f64 * 1e6,
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let counts: Vec<usize> = args
        .get(1)
        .map_or("2,5,10", String::as_str)
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect();
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let reqs: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5000);
    let stage = stage_benches::sibling_binary("stage")?;
    let nats_bin = nats::binary()?;
    println!("heartbeat every 100 ms, expiry 760 ms; idle {seconds} s per count; {reqs} requests from node 1");
    println!(
        "{:>5} {:>14} {:>15} {:>16} {:>16} {:>16}",
        "nodes",
        "msgs/s per node",
        "bytes/s per node",
        "CPU ms/s per node",
        "NATS CPU ms/s",
        "route µs/req n1"
    );
    for n in counts {
        let s = run(&stage, &nats_bin, n, seconds, reqs)?;
        println!(
            "{:>5} {:>14.1} {:>15.0} {:>16.2} {:>16.2} {:>16.1}",
            s.nodes, s.msgs_per_node, s.bytes_per_node, s.node_cpu_ms, s.nats_cpu_ms, s.route_us
        );
    }
    Ok(())
}
