//! What does WebSocket cost against TCP? Starts one `stage` on one core (pinned to CPU 0 with
//! `taskset`) whose script opens two echo listeners with the same `packet=4k,10k` framing and
//! the same `return data` callback: `tcp://` and `ws:///bench`. Then, alternating TCP and
//! WebSocket phases (T W T W ...), C client threads (blocking; tungstenite's client for the
//! WebSocket phases) do request/reply round trips with a 32-byte BSON document for S seconds.
//! Per phase: round trips per second and the server's CPU time (utime+stime) per round trip;
//! printed as medians over the pairs, with the WebSocket/TCP ratios.
//!
//! Usage: target/release/ws-vs-tcp [--pairs 3] [--seconds 3] [--conns 16]
//! (run the tool itself on the other CPU: `taskset -c 1 target/release/ws-vs-tcp`)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stage_benches::{cpu_seconds, free_port, sibling_binary};
use tungstenite::Message;

const SCRIPT: &str = "
local echo = function () return function (s, data) return data end end
broker.ready('tcp://127.0.0.1:TCP?packet=4k,10k', echo)
broker.ready('ws://127.0.0.1:WS/bench?packet=4k,10k', echo)
";

const CONFIG: &str = r##"{ "#threads": 1, "#startup": [["lua.so+bench"]],
  "lua.so": { "%package": ["."], "%reflush": 0, "lua.so+bench": "start" } }"##;

/// `{"v": {"s": "xxxxxxxxxx"}}`: 32 bytes of BSON, echoed back byte for byte.
fn request() -> Vec<u8> {
    let mut inner = vec![0x02, b's', 0];
    inner.extend_from_slice(&11u32.to_le_bytes());
    inner.extend_from_slice(b"xxxxxxxxxx\0");
    let inner = document(inner);
    let mut outer = vec![0x03, b'v', 0];
    outer.extend_from_slice(&inner);
    document(outer)
}

fn document(body: Vec<u8>) -> Vec<u8> {
    let mut doc = ((body.len() + 5) as u32).to_le_bytes().to_vec();
    doc.extend_from_slice(&body);
    doc.push(0);
    doc
}

struct Options {
    pairs: usize,
    seconds: u64,
    conns: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        pairs: 3,
        seconds: 3,
        conns: 16,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).context("an option without a value")?;
        match pair[0].as_str() {
            "--pairs" => o.pairs = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--conns" => o.conns = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// One client's round trips until `stop`: over TCP (`ws == None`) or WebSocket.
fn client(port: u16, ws: bool, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    let req = request();
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).unwrap();
    if ws {
        let url = format!("ws://127.0.0.1:{port}/bench");
        let (mut socket, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
        while !stop.load(Ordering::Relaxed) {
            socket.send(Message::binary(req.clone())).expect("send");
            match socket.read().expect("reply") {
                Message::Binary(reply) if reply[..] == req[..] => {}
                other => panic!("unexpected reply {other:?}"),
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
        let _ = socket.close(None);
    } else {
        let mut stream = stream;
        let mut reply = vec![0u8; req.len()];
        while !stop.load(Ordering::Relaxed) {
            stream.write_all(&req).expect("send");
            stream.read_exact(&mut reply).expect("reply");
            assert_eq!(reply, req);
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Round trips per second and server CPU microseconds per round trip of one phase.
fn phase(server: &Child, port: u16, ws: bool, o: &Options) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..o.conns)
        .map(|_| {
            let (stop, count) = (stop.clone(), count.clone());
            std::thread::spawn(move || client(port, ws, stop, count))
        })
        .collect();
    // Let every client connect before the clock starts.
    std::thread::sleep(Duration::from_millis(300));
    let (start, cpu0, rt0) = (
        Instant::now(),
        cpu_seconds(server.id()),
        count.load(Ordering::Relaxed),
    );
    std::thread::sleep(Duration::from_secs(o.seconds));
    let (secs, cpu, rts) = (
        start.elapsed().as_secs_f64(),
        cpu_seconds(server.id()) - cpu0,
        (count.load(Ordering::Relaxed) - rt0) as f64,
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a client thread failed");
    }
    (rts / secs, cpu * 1e6 / rts.max(1.0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let (tcp, ws) = (free_port()?, free_port()?);
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("stage.json"), CONFIG)?;
    let script = SCRIPT
        .replace("TCP", &tcp.to_string())
        .replace("WS", &ws.to_string());
    std::fs::write(dir.path().join("start.lua"), script)?;
    let mut server = Command::new("taskset")
        .args(["-c", "0"])
        .arg(sibling_binary("stage")?)
        .args(["-c", "stage.json", "-l", "warn"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start stage under taskset")?;
    let up = Instant::now();
    while TcpStream::connect(("127.0.0.1", ws)).is_err() {
        if up.elapsed() > Duration::from_secs(20) {
            let _ = server.kill();
            bail!("stage did not listen in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut t_rate, mut t_cpu, mut w_rate, mut w_cpu) = (vec![], vec![], vec![], vec![]);
    for pair in 0..o.pairs {
        let (rate, cpu) = phase(&server, tcp, false, &o);
        t_rate.push(rate);
        t_cpu.push(cpu);
        let (rate, cpu) = phase(&server, ws, true, &o);
        w_rate.push(rate);
        w_cpu.push(cpu);
        eprintln!(
            "pair {}: tcp {:.0} rt/s {:.2} us/rt, ws {:.0} rt/s {:.2} us/rt",
            pair + 1,
            t_rate[pair],
            t_cpu[pair],
            w_rate[pair],
            w_cpu[pair]
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    let (tr, tc, wr, wc) = (median(t_rate), median(t_cpu), median(w_rate), median(w_cpu));
    println!("| conns | tcp rt/s | ws rt/s (ws/tcp) | tcp cpu/rt | ws cpu/rt (ws/tcp) |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {tr:.0} | {wr:.0} ({:.2}) | {tc:.2} us | {wc:.2} us ({:.2}) |",
        o.conns,
        wr / tr,
        wc / tc
    );
    Ok(())
}
