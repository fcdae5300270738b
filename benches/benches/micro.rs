//! Micro benchmarks of the pieces of one round trip: cutting frames, BSON decode/encode of a
//! typical login packet into/out of Lua, one call from Lua into the engine through the Lua C
//! API versus through an FFI function pointer, and one hop between two threads through a
//! core inbox, and picking a member for a stage id as the member table grows (the group
//! index against the full scan it replaced). Run with
//! `cargo bench -p stage-benches --bench micro`.

use std::ffi::c_void;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use mlua::{Function, Lua, LuaOptions, StdLib, Table, Value};
use stage_engine::codec::framing::{FrameSpec, Framing};
use stage_engine::script::bson::{self, DecodeOptions, EncodeOptions};

fn login_packet(lua: &Lua) -> Vec<u8> {
    let t: Table = lua
        .load(r#"return { message = "login", user = "bob", token = "0123456789abcdef", version = 3, device = { os = "android", build = 1042 } }"#)
        .eval()
        .unwrap();
    let mut out = BytesMut::new();
    bson::encode_wrapped(lua, &Value::Table(t), &mut out, &EncodeOptions::default()).unwrap();
    out.to_vec()
}

fn framing(c: &mut Criterion) {
    let lua = Lua::new();
    let frame = login_packet(&lua);
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 64)
        .collect();
    let spec = FrameSpec {
        framing: Framing::Packet,
        input: 4096,
        output: 10240,
    };
    c.bench_function("framing: cut 64 frames from one read", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&burst[..]);
            let mut n = 0;
            while let Some(f) = spec.next_frame(&mut buf).unwrap() {
                n += f.len();
            }
            black_box(n)
        })
    });
}

fn bson_codec(c: &mut Criterion) {
    let lua = Lua::new();
    let frame = login_packet(&lua);
    c.bench_function("bson: decode login packet into a Lua table", |b| {
        b.iter(|| black_box(bson::decode_first(&lua, &frame, &DecodeOptions::default()).unwrap()))
    });
    let value = bson::decode_first(&lua, &frame, &DecodeOptions::default()).unwrap();
    let mut out = BytesMut::with_capacity(4096);
    c.bench_function("bson: encode login table as {v = ...}", |b| {
        b.iter(|| {
            out.clear();
            bson::encode_wrapped(&lua, &value, &mut out, &EncodeOptions::default()).unwrap();
            black_box(out.len())
        })
    });
}

unsafe extern "C" fn add_one(_ctx: *mut c_void, id: u64, _data: *const u8, len: usize) -> i64 {
    (id as i64) + len as i64
}

/// Calls from a JIT-compiled Lua loop into Rust: an mlua function (Lua C API) versus an
/// `extern "C"` function pointer cast by LuaJIT's FFI. Reports the time per call.
fn dispatch(c: &mut Criterion) {
    // SAFETY: the ffi library is loaded on purpose to measure it.
    let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL, LuaOptions::default()) };
    let capi = lua
        .create_function(
            |_, (id, s): (u64, mlua::String)| Ok(id as i64 + s.as_bytes().len() as i64),
        )
        .unwrap();
    let via_capi: Function = lua
        .load("local f = ...; return function (n) local x = 0 for i = 1, n do x = x + f(i, 'abc') end return x end")
        .call(capi)
        .unwrap();
    let via_ffi: Function = lua
        .load(
            "local ptr = ...; local ffi = require('ffi')
             ffi.cdef[[typedef int64_t (*bench_commit_fn)(void *, uint64_t, const char *, size_t);]]
             local f = ffi.cast('bench_commit_fn', ptr)
             return function (n) local x = 0 for i = 1, n do x = x + tonumber(f(nil, i, 'abc', 3)) end return x end",
        )
        .call(Value::LightUserData(mlua::LightUserData(add_one as *mut c_void)))
        .unwrap();
    let mut group = c.benchmark_group("lua -> engine call");
    group.bench_function("Lua C API (mlua function), per 1000 calls", |b| {
        b.iter(|| black_box(via_capi.call::<i64>(1000).unwrap()))
    });
    group.bench_function("FFI function pointer, per 1000 calls", |b| {
        b.iter(|| black_box(via_ffi.call::<i64>(1000).unwrap()))
    });
    group.finish();
}

/// One message to a glommio core through its inbox and one back: two cross-core hops.
fn cross_core(c: &mut Criterion) {
    use stage_engine::node::mailbox;
    let (to_core, core_inbox) = mailbox::channel::<u64>(1024).unwrap();
    let (back, replies) = std::sync::mpsc::sync_channel::<u64>(1024);
    let _core = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            core_inbox.run(move |n| back.send(n).unwrap()).await;
        })
        .unwrap();
    c.bench_function("cross-core: inbox hop to a core and a reply back", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                to_core.send(i, 1024).unwrap();
                black_box(replies.recv().unwrap());
            }
            start.elapsed()
        })
    });
}

/// The member pick as it was before the group index: every member's id list scanned, the
/// candidates collected and sorted, per pick. Kept here as the baseline of `member_pick`.
struct ScanMembers {
    members: std::collections::HashMap<String, (Vec<String>, Instant)>,
    cursor: usize,
}

impl ScanMembers {
    fn pick(&mut self, group: &str, expiry: Duration, now: Instant) -> Option<String> {
        let mut c: Vec<String> = self
            .members
            .iter()
            .filter(|(_, (ids, seen))| {
                now.duration_since(*seen) < expiry && ids.iter().any(|id| id == group)
            })
            .map(|(k, _)| k.clone())
            .collect();
        c.sort_unstable();
        match c.len() {
            0 => None,
            1 => c.pop(),
            len => {
                self.cursor += 1;
                Some(c.swap_remove(self.cursor % len))
            }
        }
    }
}

/// One pick among M members (M = 10, 100, 1000), each hosting its own id, ten shared ids
/// and `game`: for `game` (every member eligible) and for one member's own id (one eligible).
fn member_pick(c: &mut Criterion) {
    use stage_engine::node::members::Members;
    let expiry = Duration::from_secs(3600);
    let mut group = c.benchmark_group("member pick");
    for m in [10usize, 100, 1000] {
        let now = Instant::now();
        let indexed: Members<String> = Members::new(expiry);
        let mut scan = ScanMembers {
            members: Default::default(),
            cursor: 0,
        };
        for i in 0..m {
            let mut ids: Vec<String> = (0..10).map(|j| format!("shared{j}")).collect();
            ids.push(format!("own{i}"));
            ids.push("game".into());
            indexed.heard(format!("node{i}.1"), ids.clone(), now);
            scan.members.insert(format!("node{i}.1"), (ids, now));
        }
        let all = |_: &String| true;
        for target in ["game", "own7"] {
            group.bench_function(format!("{m} members, {target}: group index"), |b| {
                b.iter(|| black_box(indexed.pick(target, None, now, &all)))
            });
            group.bench_function(format!("{m} members, {target}: full scan"), |b| {
                b.iter(|| black_box(scan.pick(target, expiry, now)))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = framing, bson_codec, dispatch, cross_core, member_pick
}
criterion_main!(micro);
