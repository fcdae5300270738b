//! Do slow readers cost the other clients of their core? Starts `stage` on one core (pinned
//! to CPU 0 with `taskset`) with a chat-like script: `subscribe` adds a connection to the
//! subscribers, `publish` commits a 4 KiB blob to every subscriber, anything else is echoed.
//! One normal client does echo round trips (32 bytes) the whole time and its round-trip times
//! are recorded in alternating phases: **quiet** (only it); **busy** (F clients that
//! subscribe, publish every 5 ms and read everything: the same kind of work for the core, no
//! slow reader); and **flood** (the same F clients, but they never read: their output piles up
//! until it passes `OUT` = 64 KiB and the server closes them with ENOBUFS; each then
//! reconnects and starts again). Prints p50/p99/p99.9 of each phase (medians over the rounds)
//! and the ratios.
//!
//! Usage: target/release/slow-reader [--pairs 3] [--seconds 3] [--flooders 16]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stage_benches::{free_port, sibling_binary};

const SCRIPT: &str = "
local l = broker.ready('tcp://127.0.0.1:PORT?packet=4k,64k', function ()
  return function (s, data)
    if data.message == 'subscribe' then
      __('subscribers', function (old) old = old or {}; old[tostring(s.id)] = true; return old end)
      return nil
    end
    if data.message == 'publish' then
      local blob = string.rep('x', 4096)
      for id in pairs(__.subscribers or {}) do broker.f(tonumber(id)).commit({ blob = blob }) end
      return nil
    end
    return data
  end
end)
l.close = function (s, errno)
  __('subscribers', function (old) if old then old[tostring(s.id)] = nil end; return old end)
end
";

/// `{"v": {"message": name, "p": pad}}` as BSON, padded to `len` bytes (or the least it
/// takes).
fn request(name: &str, len: usize) -> Vec<u8> {
    let bare = with_pad(name, "").len();
    with_pad(name, &"p".repeat(len.saturating_sub(bare)))
}

fn with_pad(name: &str, pad: &str) -> Vec<u8> {
    let mut inner = Vec::new();
    string_field(&mut inner, "message", name);
    string_field(&mut inner, "p", pad);
    let inner = document(inner);
    let mut outer = vec![0x03, b'v', 0];
    outer.extend_from_slice(&inner);
    document(outer)
}

fn string_field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(0x02);
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    out.extend_from_slice(&(value.len() as u32 + 1).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

fn document(body: Vec<u8>) -> Vec<u8> {
    let mut doc = ((body.len() + 5) as u32).to_le_bytes().to_vec();
    doc.extend_from_slice(&body);
    doc.push(0);
    doc
}

fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    buf.resize(u32::from_le_bytes(header) as usize - 4, 0);
    stream.read_exact(buf)
}

/// One publishing client, again and again until `stop`: connect, subscribe, publish every
/// 5 ms; with `drain` a second thread reads everything it is sent, without it nothing is
/// read. Counts the connections the server ended.
fn flooder(port: u16, drain: bool, stop: Arc<AtomicBool>, ended: Arc<AtomicU64>) {
    let subscribe = request("subscribe", 32);
    let publish = request("publish", 32);
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        if drain {
            if let Ok(mut r) = s.try_clone() {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        }
        if s.write_all(&subscribe).is_err() {
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            match s.write_all(&publish) {
                Ok(()) => std::thread::sleep(Duration::from_millis(5)),
                // Its own output has filled every buffer: stuck until the server ends it.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => {
                    ended.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        // Ends the drain thread's read too.
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
}

/// Round-trip times (us) of echo requests on `client` for `seconds`.
fn measure(client: &mut TcpStream, seconds: f64) -> anyhow::Result<Vec<f64>> {
    let req = request("echo", 32);
    let mut buf = Vec::new();
    let mut rtts = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        client.write_all(&req)?;
        read_frame(client, &mut buf)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(rtts)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Phase {
    p50: f64,
    p99: f64,
    p999: f64,
    rts: usize,
}

fn summarize(mut rtts: Vec<f64>) -> Phase {
    rtts.sort_by(|a, b| a.total_cmp(b));
    Phase {
        p50: percentile(&rtts, 0.50),
        p99: percentile(&rtts, 0.99),
        p999: percentile(&rtts, 0.999),
        rts: rtts.len(),
    }
}

fn arg(name: &str, default: f64) -> anyhow::Result<f64> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).context(name.to_string())?.parse()?),
        None => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let pairs = arg("--pairs", 3.0)? as usize;
    let seconds = arg("--seconds", 3.0)?;
    let flooders = arg("--flooders", 16.0)? as usize;
    let stage = sibling_binary("stage")?;
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("stage.json"),
        r##"{ "#threads": 1, "#startup": [["lua.so+bench"]], "lua.so": { "%package": ["."], "%reflush": 0, "lua.so+bench": "start" } }"##,
    )?;
    std::fs::write(
        dir.path().join("start.lua"),
        SCRIPT.replace("PORT", &port.to_string()),
    )?;
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg(&stage)
        .args(["-c", "stage.json", "-l", "warn"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("taskset (util-linux) runs the server on CPU 0")?;
    let started = Instant::now();
    let mut client = loop {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
            break c;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            bail!("stage did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    client.set_nodelay(true)?;
    // Warm up (JIT, buffers).
    measure(&mut client, 0.5)?;

    let mut quiet = Vec::new();
    let mut busy = Vec::new();
    let mut flood = Vec::new();
    let mut closed = 0;
    for _ in 0..pairs {
        quiet.push(summarize(measure(&mut client, seconds)?));
        for drain in [true, false] {
            let stop = Arc::new(AtomicBool::new(false));
            let ended = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..flooders)
                .map(|_| {
                    let (stop, ended) = (stop.clone(), ended.clone());
                    std::thread::spawn(move || flooder(port, drain, stop, ended))
                })
                .collect();
            // Let the publishers (and, not reading, their buffers) fill up before measuring.
            std::thread::sleep(Duration::from_millis(500));
            let phase = summarize(measure(&mut client, seconds)?);
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                let _ = t.join();
            }
            if drain {
                busy.push(phase);
            } else {
                flood.push(phase);
                closed += ended.load(Ordering::Relaxed);
            }
            // Let the server close what the phase left before the next one.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    let med = |phases: &[Phase], f: fn(&Phase) -> f64| median(phases.iter().map(f).collect());
    println!(
        "slow-reader: {pairs} rounds x {seconds} s, {flooders} publishing clients in the busy (reading) and flood (not reading) phases, stage on one core (CPU 0)"
    );
    println!("| phase | round trips/s | p50 us | p99 us | p99.9 us |");
    println!("|---|---|---|---|---|");
    for (name, phases) in [("quiet", &quiet), ("busy", &busy), ("flood", &flood)] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
            med(phases, |p| p.rts as f64) / seconds,
            med(phases, |p| p.p50),
            med(phases, |p| p.p99),
            med(phases, |p| p.p999),
        );
    }
    let p99 = |phases: &[Phase]| med(phases, |p| p.p99);
    println!(
        "p99 flood/quiet: {:.2}, flood/busy: {:.2}, busy/quiet: {:.2}; flood connections the server ended: {closed}",
        p99(&flood) / p99(&quiet),
        p99(&flood) / p99(&busy),
        p99(&busy) / p99(&quiet)
    );
    Ok(())
}
