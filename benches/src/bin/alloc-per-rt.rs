//! Bytes allocated per round trip of a 32-byte echo, through the real engine in this process
//! under a counting global allocator: the FFI packet path versus the classic Lua C API path.
//! LuaJIT allocates its own objects with its own allocator, so the Lua side is measured
//! separately: the echo script stops its collector for the measured window and reports
//! `collectgarbage("count")` before and after.
//!
//! Usage: target/release/alloc-per-rt [ROUND_TRIPS]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stage_engine::config::PackageEntry;
use stage_engine::node::{affinity, runtime, Node};
use stage_engine::plan::{LuaStage, Plan};
use stage_engine::script;

struct Counting;

static BYTES: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        COUNT.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        COUNT.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SCRIPT: &str = r#"
broker.ready("tcp://127.0.0.1:PORT?packet=4k,10k", function (socket, addr)
  return function (socket, data)
    if data.message == "gcstop" then
      collectgarbage("collect")
      collectgarbage("stop")
      return { kb = collectgarbage("count") }
    elseif data.message == "gcnow" then
      local kb = collectgarbage("count")
      collectgarbage("restart")
      return { kb = kb }
    end
    return data
  end
end)
"#;

/// `{"v": {"message": m, "data": <32 bytes>}}`
fn packet(message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in [("message", message.as_bytes()), ("data", &[b'x'; 32][..])] {
        body.push(0x02);
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(&((value.len() + 1) as i32).to_le_bytes());
        body.extend_from_slice(value);
        body.push(0);
    }
    let inner_len = (body.len() + 5) as i32;
    let mut inner = inner_len.to_le_bytes().to_vec();
    inner.extend_from_slice(&body);
    inner.push(0);
    let mut doc = Vec::new();
    doc.push(0x03);
    doc.extend_from_slice(b"v\0");
    doc.extend_from_slice(&inner);
    let len = (doc.len() + 5) as i32;
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&doc);
    out.push(0);
    out
}

fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).unwrap();
    let len = u32::from_le_bytes(header) as usize;
    buf.resize(len - 4, 0);
    s.read_exact(buf).unwrap();
}

/// The Lua heap in KiB from a `{"v": {"kb": n}}` reply (a double at the end of the frame).
fn kb_of(frame: &[u8]) -> f64 {
    let at = frame.windows(3).position(|w| w == b"kb\0").unwrap() + 3;
    f64::from_le_bytes(frame[at..at + 8].try_into().unwrap())
}

struct Result {
    bytes: f64,
    allocs: f64,
    lua_bytes: f64,
}

fn measure(ffi: bool, round_trips: u64) -> anyhow::Result<Result> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("stage-alloc-{}-{ffi}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("start.lua"),
        SCRIPT.replace("PORT", &port.to_string()),
    )?;
    let settings = Arc::new(Plan {
        package: vec![PackageEntry {
            position: 0,
            prefix: dir.to_string_lossy().into_owned(),
        }],
        services: Vec::new(),
        preload: Vec::new(),
        reflush: Duration::from_secs(1),
        ffi,
        memory: None,
        cpu_ms: 0,
        spin: Duration::ZERO,
        blocking: stage_engine::config::BlockingPolicy::Refuse,
        stages: vec![LuaStage {
            id: "echo".into(),
            entry: "lua.so+echo".into(),
            main_script: "start".into(),
            block_json: "{}".into(),
            main_core: 0,
        }],
        args: vec!["alloc-per-rt".into()],
        embedded: &[],
    });
    let cpu = affinity::allowed_cpus()?[0];
    let node = Node::new(vec![cpu], settings, None);
    let handles = runtime::start(node.clone(), script::host::factory())?;
    let mut client = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    client.set_nodelay(true)?;
    let echo = packet("echo");
    let mut buf = Vec::with_capacity(4096);
    for _ in 0..2000 {
        client.write_all(&echo)?;
        read_frame(&mut client, &mut buf);
    }
    client.write_all(&packet("gcstop"))?;
    read_frame(&mut client, &mut buf);
    let lua_before = kb_of(&buf);
    let (bytes0, count0) = (BYTES.load(Ordering::Relaxed), COUNT.load(Ordering::Relaxed));
    for _ in 0..round_trips {
        client.write_all(&echo)?;
        read_frame(&mut client, &mut buf);
    }
    let (bytes1, count1) = (BYTES.load(Ordering::Relaxed), COUNT.load(Ordering::Relaxed));
    client.write_all(&packet("gcnow"))?;
    read_frame(&mut client, &mut buf);
    let lua_after = kb_of(&buf);
    node.shutdown();
    for h in handles {
        let _ = h.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Result {
        bytes: (bytes1 - bytes0) as f64 / round_trips as f64,
        allocs: (count1 - count0) as f64 / round_trips as f64,
        lua_bytes: (lua_after - lua_before) * 1024.0 / round_trips as f64,
    })
}

fn main() -> anyhow::Result<()> {
    let round_trips: u64 = std::env::args().nth(1).map_or(Ok(20_000), |s| s.parse())?;
    println!("32-byte echo, {round_trips} round trips on one connection, one core");
    println!(
        "{:>20} | {:>14} | {:>12} | {:>24}",
        "path", "Rust bytes/rt", "Rust allocs/rt", "Lua heap growth bytes/rt"
    );
    for (name, ffi) in [("classic (C API)", false), ("FFI", true)] {
        let r = measure(ffi, round_trips)?;
        println!(
            "{:>20} | {:>14.1} | {:>12.2} | {:>24.1}",
            name, r.bytes, r.allocs, r.lua_bytes
        );
    }
    Ok(())
}
