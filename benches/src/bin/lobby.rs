//! The lobby example's benchmark (issue #13), both halves in one run:
//!
//! 1. **What validation costs per packet.** Each lobby packet is decoded from its wire bytes
//!    into a Lua table by the engine's decoder and handed to a Lua function, in the engine's
//!    LuaJIT: once to `function (t) return t end` (the bare decoded table, what a handler
//!    gets without a schema) and once to the generated `packets.decode` of
//!    engine/lua/examples/lobby/lobby_packets.lua (checked, defaults filled). Interleaved,
//!    best of 5 rounds; the difference is what the schema check costs.
//! 2. **The lobby under load.** `stage -c engine/lua/examples/lobby/stage.json` in a fresh
//!    directory (a link to the repository's `engine/`, so the leaderboard starts empty), then
//!    `stage-loadtest` with the example's Lua bots and with the built-in Rust `lobby`
//!    scenario, at 50 and 1000 bots: round trips/s, p50/p99 and errors from its JSON summary.
//!
//! Usage: target/release/lobby [SECONDS per load run (10)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use mlua::{Function, Lua, Table, Value};
use stage_engine::script::bson::{self, DecodeOptions, EncodeOptions};

const CODECS: &str = include_str!("../../../engine/lua/examples/lobby/lobby_packets.lua");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_path_buf()
}

/// The packets measured: (name, Lua constructor of the `v` table, iterations per round).
const PACKETS: &[(&str, &str, u32)] = &[
    (
        "login",
        r#"return { message = "login", name = "bot-123" }"#,
        200_000,
    ),
    (
        "create_room (default filled)",
        r#"return { message = "create_room", room = "r42" }"#,
        200_000,
    ),
    (
        "chat (60 bytes of text)",
        r#"return { message = "chat", text = string.rep("hello, ", 8) .. "ready?" }"#,
        200_000,
    ),
    (
        "score",
        r#"return { message = "score", points = 57 }"#,
        200_000,
    ),
    (
        "rooms (250 rooms, a bot's check)",
        r#"local r = {} for i = 1, 250 do r[i] = { name = "r" .. i, size = 4, members = i % 5 } end
           return { message = "rooms", rooms = r }"#,
        2_000,
    ),
];

/// mlua's errors are neither Send nor Sync; anyhow wants both.
fn l<T, E: std::fmt::Display>(r: Result<T, E>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

fn frame(lua: &Lua, ctor: &str) -> anyhow::Result<Vec<u8>> {
    let t: Table = l(lua.load(ctor).eval())?;
    let mut out = BytesMut::new();
    l(bson::encode_wrapped(
        lua,
        &Value::Table(t),
        &mut out,
        &EncodeOptions::default(),
    ))?;
    Ok(out.to_vec())
}

/// Nanoseconds per packet of decoding `frame` and calling `f` on the table, `n` times.
fn time(lua: &Lua, frame: &[u8], f: &Function, n: u32) -> anyhow::Result<f64> {
    let opts = DecodeOptions::default();
    let t0 = Instant::now();
    for _ in 0..n {
        let v = l(bson::decode_first(lua, frame, &opts))?;
        let out: Value = l(f.call(v))?;
        black_box(out);
    }
    Ok(t0.elapsed().as_nanos() as f64 / f64::from(n))
}

fn validation() -> anyhow::Result<()> {
    let lua = Lua::new();
    let packets: Table = l(lua.load(CODECS).set_name("lobby_packets.lua").eval())?;
    let decode: Function = l(packets.get("decode"))?;
    let bare: Function = l(lua.load("return function (t) return t end").eval())?;
    println!(
        "| packet | wire bytes | bare table ns | decode + validate ns | validation ns | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, ctor, n) in PACKETS {
        let f = frame(&lua, ctor)?;
        // The generated decoder must accept it (a refused packet would be measured short).
        let v = l(bson::decode_first(&lua, &f, &DecodeOptions::default()))?;
        let (ok, err): (Value, Value) = l(decode.call(v))?;
        if ok.is_nil() {
            bail!("{name}: the schema refused the benchmark's packet: {err:?}");
        }
        let (mut best_bare, mut best_checked) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            best_bare = best_bare.min(time(&lua, &f, &bare, *n)?);
            best_checked = best_checked.min(time(&lua, &f, &decode, *n)?);
        }
        println!(
            "| {name} | {} | {best_bare:.0} | {best_checked:.0} | {:.0} | {:.2} |",
            f.len(),
            best_checked - best_bare,
            best_checked / best_bare
        );
    }
    Ok(())
}

/// The example running in a fresh directory; killed on drop.
struct Lobby {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Lobby {
    fn start() -> anyhow::Result<Lobby> {
        let dir = tempfile::tempdir()?;
        std::os::unix::fs::symlink(workspace().join("engine"), dir.path().join("engine"))?;
        let child = Command::new(stage_benches::sibling_binary("stage")?)
            .args(["-c", "engine/lua/examples/lobby/stage.json"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stage.log"))?)
            .spawn()
            .context("starting stage")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect("127.0.0.1:8090").is_err() {
            if Instant::now() > deadline {
                bail!("the lobby did not listen on 127.0.0.1:8090");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Lobby { child, _dir: dir })
    }
}

impl Drop for Lobby {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load(scenario: &str, bots: usize, seconds: u64) -> anyhow::Result<()> {
    let json = tempfile::NamedTempFile::new()?;
    let args = [
        "--target".to_string(),
        "127.0.0.1:8090".into(),
        "--scenario".into(),
        scenario.into(),
        "--connections".into(),
        bots.to_string(),
        "--warmup".into(),
        "2s".into(),
        "--duration".into(),
        format!("{seconds}s"),
        "--quiet".into(),
        "--json".into(),
        json.path().display().to_string(),
    ];
    let out = Command::new(stage_benches::sibling_binary("stage-loadtest")?)
        .args(&args)
        .current_dir(workspace())
        .output()?;
    if !json.path().metadata().is_ok_and(|m| m.len() > 0) {
        bail!(
            "stage-loadtest {}: no summary\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json.path())?)?;
    let window = s["measured_s"].as_f64().unwrap_or(f64::NAN);
    let rts = s["latency_us"]["count"].as_f64().unwrap_or(f64::NAN);
    let us = |k: &str| s["latency_us"][k].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let name = if scenario == "lobby" {
        "Rust `lobby`"
    } else {
        "Lua bots.lua"
    };
    println!(
        "| {name} | {bots} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
        rts / window,
        s["received"].as_f64().unwrap_or(f64::NAN) / window,
        us("p50"),
        us("p99"),
        us("max"),
        s["errors_total"],
        s["disconnects"]
            .as_object()
            .map_or(0, |d| d.values().filter_map(|v| v.as_u64()).sum::<u64>()),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    println!("## Validation per packet (decode from the wire + handler call, LuaJIT)\n");
    validation()?;
    println!(
        "\n## The lobby example under stage-loadtest ({seconds} s measured after 2 s warmup)\n"
    );
    println!("| bots | count | round trips/s | messages/s received | p50 ms | p99 ms | max ms | errors | disconnects |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let _lobby = Lobby::start()?;
    for bots in [50, 1000] {
        for scenario in ["engine/lua/examples/lobby/bots.lua", "lobby"] {
            load(scenario, bots, seconds)?;
        }
    }
    Ok(())
}
