//! The end-to-end benchmark: in one run, for each (connections, payload) case, start
//! (a) `baseline-echo` — plain glommio, same framing, no Lua — and (b) `stage` running a Lua
//! echo (`return data`), alternately A B A B ..., load each with `stage-loadtest`, and report
//! round trips/s, p50/p99/p99.9 and, the figure that survives this noisy 2-core machine,
//! **server CPU time per round trip** (utime+stime of the server process over the run ÷
//! replies) as the ratio b/a. The server is pinned to one CPU and the load generator to
//! another, as the performance targets in issue #4 ask.
//!
//! A third server, `stage-capi`, is the same `stage` with `"%ffi": false` (the classic Lua C
//! API packet path), so one run also shows what the FFI path buys.
//!
//! With `--before PATH`, a fourth server joins the rotation: the `stage` binary at PATH (built
//! from an earlier commit, FFI path), so one run compares a change with what it replaced
//! (columns "before" and the ratio stage/before).
//!
//! Usage (after `cargo build --release --workspace`):
//!   target/release/e2e [--pairs 5] [--seconds 5] [--cases 64x64,1000x64,...] [--server-cpu 0] [--client-cpu 1] [--before PATH]
//! A case is CONNECTIONSxPAYLOAD. Default cases: 1x32 64x32 1000x32 1x1024 64x1024 1000x1024.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

struct Options {
    pairs: usize,
    seconds: u64,
    cases: Vec<(usize, usize)>,
    server_cpu: usize,
    client_cpu: usize,
    /// An earlier `stage` binary to compare with (`--before`).
    before: Option<PathBuf>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut o = Options {
        pairs: 5,
        seconds: 5,
        cases: vec![
            (1, 32),
            (64, 32),
            (1000, 32),
            (1, 1024),
            (64, 1024),
            (1000, 1024),
        ],
        server_cpu: 0,
        client_cpu: 1,
        before: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--pairs" => o.pairs = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--server-cpu" => o.server_cpu = value.parse()?,
            "--client-cpu" => o.client_cpu = value.parse()?,
            "--before" => o.before = Some(PathBuf::from(value)),
            "--cases" => {
                o.cases = value
                    .split(',')
                    .map(|c| {
                        let (n, p) = c.split_once('x').context("case is CONNECTIONSxPAYLOAD")?;
                        Ok((n.parse()?, p.parse()?))
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// One loadtest run against one server.
#[derive(Default, Clone, Copy)]
struct Sample {
    replies: u64,
    throughput: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu_s: f64,
    errors: u64,
}

impl Sample {
    fn cpu_per_rt_us(&self) -> f64 {
        self.cpu_s * 1e6 / self.replies.max(1) as f64
    }
}

fn start_server(which: &str, port: u16, o: &Options, dir: &Path) -> anyhow::Result<Child> {
    let cpu = o.server_cpu;
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpu.to_string());
    if which == "baseline" {
        cmd.arg(stage_benches::sibling_binary("baseline-echo")?)
            .arg(format!("127.0.0.1:{port}"));
    } else {
        std::fs::write(
            dir.join("stage.json"),
            format!(
                r##"{{ "#startup": [["lua.so+echo"]], "lua.so": {{ "%package": ["."], "%ffi": {}, "echo": "start" }} }}"##,
                which != "stage-capi"
            ),
        )?;
        std::fs::write(
            dir.join("start.lua"),
            format!(
                "broker.ready('tcp://127.0.0.1:{port}?packet=4k,10k', function (socket, addr)\n  return function (socket, data) return data end\nend)\n"
            ),
        )?;
        let binary = match (which, &o.before) {
            ("before", Some(path)) => path.clone(),
            _ => stage_benches::sibling_binary("stage")?,
        };
        cmd.arg(binary).args(["-c", "stage.json", "-l", "warn"]);
    }
    let mut child = cmd
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    stage_benches::wait_listening(port, &mut child)?;
    Ok(child)
}

fn run_load(
    port: u16,
    conns: usize,
    payload: usize,
    o: &Options,
) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("taskset")
        .arg("-c")
        .arg(o.client_cpu.to_string())
        .arg(stage_benches::sibling_binary("stage-loadtest")?)
        .args(["--target", &format!("127.0.0.1:{port}")])
        .args(["--connections", &conns.to_string()])
        .args(["--payload-size", &payload.to_string()])
        .args(["--duration", &format!("{}s", o.seconds)])
        .args(["--threads", "1", "--quiet", "--json", "-"])
        .output()?;
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("loadtest output: {}", String::from_utf8_lossy(&out.stderr)))
}

fn measure(which: &str, conns: usize, payload: usize, o: &Options) -> anyhow::Result<Sample> {
    let dir = std::env::temp_dir().join(format!("stage-e2e-{}-{which}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = stage_benches::free_port()?;
    let mut server = start_server(which, port, o, &dir)?;
    let pid = server.id();
    let before = stage_benches::cpu_seconds(pid);
    let report = run_load(port, conns, payload, o);
    let after = stage_benches::cpu_seconds(pid);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let r = report?;
    let f = |k: &str| r["latency_us"][k].as_f64().unwrap_or(0.0);
    Ok(Sample {
        replies: r["received"].as_u64().unwrap_or(0),
        throughput: r["throughput_msgs_per_s"].as_f64().unwrap_or(0.0),
        p50: f("p50"),
        p99: f("p99"),
        p999: f("p999"),
        cpu_s: after - before,
        errors: r["errors_total"].as_u64().unwrap_or(0),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let o = parse_options()?;
    println!(
        "server on CPU {}, load generator on CPU {}, {} A/B pairs of {} s per case; medians",
        o.server_cpu, o.client_cpu, o.pairs, o.seconds
    );
    println!(
        "{:>6} {:>7} | {:>10} | {:>10} {:>5} | {:>10} {:>5} | {:>23} | {:>23} | {:>8} | {:>8} {:>5} | {:>8} {:>5}",
        "conns", "payload", "base rt/s", "stage", "b/a", "capi", "c/a",
        "base p50/p99/p99.9 us", "stage p50/p99/p99.9 us",
        "base cpu", "stage", "b/a", "capi", "c/a"
    );
    for &(conns, payload) in &o.cases {
        let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..o.pairs {
            a.push(measure("baseline", conns, payload, &o)?);
            b.push(measure("stage", conns, payload, &o)?);
            c.push(measure("stage-capi", conns, payload, &o)?);
            if o.before.is_some() {
                d.push(measure("before", conns, payload, &o)?);
            }
        }
        let errors: u64 = a
            .iter()
            .chain(&b)
            .chain(&c)
            .chain(&d)
            .map(|s| s.errors)
            .sum();
        let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
        let (ta, tb, tc) = (
            m(&a, |s| s.throughput),
            m(&b, |s| s.throughput),
            m(&c, |s| s.throughput),
        );
        let cpu = Sample::cpu_per_rt_us;
        let (ca, cb, cc) = (m(&a, cpu), m(&b, cpu), m(&c, cpu));
        let lat = |v: &[Sample]| {
            format!(
                "{:.0}/{:.0}/{:.0}",
                m(v, |s| s.p50),
                m(v, |s| s.p99),
                m(v, |s| s.p999)
            )
        };
        let before = if d.is_empty() {
            String::new()
        } else {
            let (td, cd) = (m(&d, |s| s.throughput), m(&d, cpu));
            format!(
                " | before {:>8.0} rt/s {}us cpu {:>6.2}us; stage/before rt/s {:.2} cpu {:.2}",
                td,
                lat(&d),
                cd,
                tb / td,
                cb / cd
            )
        };
        println!(
            "{:>6} {:>7} | {:>10.0} | {:>10.0} {:>5.2} | {:>10.0} {:>5.2} | {:>23} | {:>23} | {:>6.2}us | {:>6.2}us {:>5.2} | {:>6.2}us {:>5.2}{}{}",
            conns, payload, ta, tb, tb / ta, tc, tc / ta, lat(&a), lat(&b), ca, cb, cb / ca, cc, cc / ca,
            before,
            if errors > 0 { format!("  ({errors} errors)") } else { String::new() }
        );
    }
    Ok(())
}
