//! Natives behind `stage.signal` / `stage.waitfor` / `stage.addtask` / `stage.submit` /
//! `stage.once` and the ordered locks: the process-wide handler tables (`node::stages`), the
//! lock table (`node::locks`), posting prelude messages to a core now or later, and the
//! engine-internal BSON form of message values (functions travel as bytecode here — between
//! the engine's own contexts only, never to or from a client socket). In a multi-process
//! node, `pick_process` / `processes_of` / `send_process` reach the other processes through
//! `node::peers`; the decision which process gets a message stays in the prelude's `route`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mlua::{IntoLuaMulti, Lua, MultiValue, Table, Value};

use super::natives::{core, node};
use crate::node::locks::Grant;
use crate::node::peers::{self, Peers};
use crate::node::post::PostKind;
use crate::node::stages::LocalStage;
use crate::node::{retry, runtime};
use crate::script::bson::{self, DecodeOptions, EncodeOptions};

pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set(
        "cores",
        lua.create_function(|lua, ()| Ok(node(lua)?.cores()))?,
    )?;
    // The core running this state, or nil on a pool thread.
    e.set(
        "core",
        lua.create_function(|_, ()| Ok(runtime::try_current().map(|c| c.index)))?,
    )?;
    e.set(
        "next_core",
        lua.create_function(|lua, ()| Ok(node(lua)?.next_core()))?,
    )?;
    e.set("post", lua.create_function(post)?)?;
    e.set("thread_start", lua.create_function(thread_start)?)?;
    e.set(
        "thread_id",
        // SAFETY: gettid has no preconditions.
        lua.create_function(|_, ()| Ok(unsafe { libc::gettid() }))?,
    )?;
    e.set(
        "tick",
        lua.create_function(|_, ()| Ok(monotonic_seconds()))?,
    )?;
    e.set("later", lua.create_function(later)?)?;
    e.set("encode", lua.create_function(encode)?)?;
    e.set("decode", lua.create_function(decode)?)?;
    e.set("wall_ms", lua.create_function(|_, ()| Ok(wall_ms()))?)?;
    e.set("stage_info", lua.create_function(stage_info)?)?;
    e.set("stage_core", lua.create_function(stage_core)?)?;
    e.set("stage_by_id", lua.create_function(stage_by_id)?)?;
    e.set("unrouted", lua.create_function(unrouted)?)?;
    e.set("process_info", lua.create_function(process_info)?)?;
    e.set("pick_process", lua.create_function(pick_process)?)?;
    e.set("processes_of", lua.create_function(processes_of)?)?;
    e.set("send_process", lua.create_function(send_process)?)?;
    e.set("waitfor_set", lua.create_function(waitfor_set)?)?;
    e.set("waitfor_args", lua.create_function(waitfor_args)?)?;
    e.set("waitfor_del", lua.create_function(waitfor_del)?)?;
    e.set("waitfor_get", lua.create_function(waitfor_get)?)?;
    e.set("waitfor_find", lua.create_function(waitfor_find)?)?;
    e.set("waitfor_list", lua.create_function(waitfor_list)?)?;
    e.set("waitfor_fresh", lua.create_function(waitfor_fresh)?)?;
    e.set(
        "once",
        lua.create_function(|lua, key: String| Ok(node(lua)?.stages.once(&key)))?,
    )?;
    e.set(
        "once_forget",
        lua.create_function(|lua, key: String| {
            node(lua)?.stages.forget_once(&key);
            Ok(())
        })?,
    )?;
    e.set("lock_acquire", lua.create_function(lock_acquire)?)?;
    e.set("lock_extend", lua.create_function(lock_extend)?)?;
    e.set("lock_release", lua.create_function(lock_release)?)?;
    e.set("lock_check", lua.create_function(lock_check)?)?;
    e.set("lock_remote", lua.create_function(lock_remote)?)?;
    Ok(())
}

/// Milliseconds since the epoch: message deadlines travel as absolute times (spec §12.20).
pub fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64)
}

/// Posts a prelude message to a core's inbox — this core's own too: one FIFO per core keeps
/// causal order (a message this core sent itself is handled before any later message that
/// another core sent in answer to something this core did afterwards). From a core a post
/// that finds the inbox full is dropped (stage messages are at most once, and a core never
/// waits); from a blocking-pool thread — `thread.new` results and `thread.signal` values,
/// which a callback waits for — it is tried again until the core takes it (`node::retry`).
fn post(lua: &Lua, (target, kind, payload): (usize, String, mlua::String)) -> mlua::Result<bool> {
    let kind = post_kind(&kind)?;
    let payload = Bytes::copy_from_slice(&payload.as_bytes());
    let node = node(lua)?;
    let what = "a post from a blocking-pool thread";
    Ok(retry::post(&node, target, kind, payload, what))
}

/// `thread.new`: queues the job on the blocking pool and returns its id.
fn thread_start(lua: &Lua, payload: mlua::String) -> mlua::Result<u64> {
    let node = node(lua)?;
    let pool = super::natives::pool(lua)?;
    let id = pool.next_id();
    let job = super::pool::ThreadJob {
        id,
        payload: payload.as_bytes().to_vec(),
    };
    pool.run(&node, job)
        .map_err(|e| mlua::Error::runtime(format!("thread.new: {e}")))?;
    Ok(id)
}

/// Seconds on the monotonic clock (`thread.tick`, `process.tick`).
pub fn monotonic_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The post kind the prelude names; any other name is a bug in the prelude.
fn post_kind(name: &str) -> mlua::Result<PostKind> {
    PostKind::from_name(name)
        .ok_or_else(|| mlua::Error::runtime(format!("unknown post kind `{name}`")))
}

fn later(_: &Lua, (ms, kind, payload): (f64, String, mlua::String)) -> mlua::Result<()> {
    let kind = post_kind(&kind)?;
    let delay = Duration::from_secs_f64(ms.max(0.0) / 1000.0);
    core()?.post_later(delay, kind, Bytes::copy_from_slice(&payload.as_bytes()));
    Ok(())
}

pub(crate) const INTERNAL_ENCODE: EncodeOptions = EncodeOptions {
    allow_functions: true,
};
pub(crate) const INTERNAL_DECODE: DecodeOptions = DecodeOptions {
    load_functions: true,
};

fn encode(lua: &Lua, table: Table) -> mlua::Result<mlua::String> {
    let mut out = BytesMut::new();
    bson::encode_document(lua, &table, &mut out, &INTERNAL_ENCODE)
        .map_err(|e| mlua::Error::runtime(format!("cannot send this value: {e}")))?;
    lua.create_string(&out[..])
}

fn decode(lua: &Lua, data: mlua::String) -> mlua::Result<Table> {
    bson::decode_document(lua, &data.as_bytes(), &INTERNAL_DECODE)
        .map_err(|e| mlua::Error::runtime(format!("corrupt internal message: {e}")))
}

fn with_stage<R>(lua: &Lua, index: usize, f: impl FnOnce(&LocalStage) -> R) -> mlua::Result<R> {
    let node = node(lua)?;
    let stage = node
        .stages
        .get(index)
        .ok_or_else(|| mlua::Error::runtime(format!("no stage #{index} in this process")))?;
    Ok(f(stage))
}

/// `E.stage_info(index)` -> id, main core, and the service it runs (nil for a Lua stage).
fn stage_info(lua: &Lua, index: usize) -> mlua::Result<(String, usize, Option<&'static str>)> {
    with_stage(lua, index, |s| {
        (s.id.clone(), s.main_core, s.kind.service_name())
    })
}

/// `E.stage_core(index, id)` -> the core message `id` for stage `index` goes to (a sharded
/// service's owning shard, else the main core), or nil for an index.so batch.
fn stage_core(lua: &Lua, (index, id): (usize, mlua::String)) -> mlua::Result<Option<usize>> {
    let cores = node(lua)?.cores();
    let here = runtime::try_current().map(|c| c.index);
    with_stage(lua, index, |s| {
        s.core_for(&id.to_string_lossy(), cores, here)
    })
}

fn stage_by_id(lua: &Lua, id: String) -> mlua::Result<Vec<usize>> {
    Ok(node(lua)?.stages.by_id(&id).map(|s| s.index).collect())
}

fn unrouted(lua: &Lua, what: String) -> mlua::Result<()> {
    node(lua)?.count_unrouted(&format!("`{what}`"));
    Ok(())
}

/// `E.process_info()` -> this process's number, and whether other processes exist.
fn process_info(lua: &Lua, (): ()) -> mlua::Result<(u32, bool)> {
    let node = node(lua)?;
    Ok((node.process, node.peers.is_some()))
}

fn peers(lua: &Lua) -> mlua::Result<Arc<Peers>> {
    node(lua)?
        .peers
        .clone()
        .ok_or_else(|| mlua::Error::runtime("this process has no peer processes"))
}

/// `E.pick_process(group, hosted_here)` -> the process that gets the next one-receiver
/// message for `group` (this process's own number = deliver here), or nil: nobody.
fn pick_process(lua: &Lua, (group, local): (String, bool)) -> mlua::Result<Option<u32>> {
    Ok(peers(lua)?.pick(&group, local, Instant::now()))
}

/// `E.processes_of(group)` -> the other processes eligible for `group` (for `*`).
fn processes_of(lua: &Lua, group: String) -> mlua::Result<Vec<u32>> {
    Ok(peers(lua)?.hosting(&group, Instant::now()))
}

/// `E.send_process(n, group, every, payload)`: one datagram to process `n`, for the first
/// (or `every`) stage of `group` there. Too large for a datagram: a Lua error (spec 1.1.5).
/// Not deliverable now (queue full, process down): counted as unrouted, returns false.
fn send_process(
    lua: &Lua,
    (n, group, every, payload): (u32, String, bool, mlua::String),
) -> mlua::Result<bool> {
    let peers = peers(lua)?;
    let frame = peers::message_frame(&group, every, &payload.as_bytes())
        .ok_or_else(|| mlua::Error::runtime(format!("bad stage id `{group}`")))?;
    if frame.len() > peers::MAX_DATAGRAM {
        return Err(mlua::Error::runtime(format!(
            "stage.signal: the message is {} bytes, more than the {} bytes a datagram between processes can carry (EMSGSIZE)",
            frame.len(),
            peers::MAX_DATAGRAM
        )));
    }
    match peers.send(n, &frame) {
        Ok(()) => Ok(true),
        Err(err) => {
            node(lua)?.count_unrouted(&format!("`{group}` in process {n} ({err})"));
            Ok(false)
        }
    }
}

fn bytes_of(v: &Option<mlua::String>) -> Option<Vec<u8>> {
    v.as_ref().map(|s| s.as_bytes().to_vec())
}

fn waitfor_set(
    lua: &Lua,
    (stage, id, code, args): (usize, String, mlua::String, Option<mlua::String>),
) -> mlua::Result<()> {
    let node = node(lua)?;
    let Some(s) = node.stages.get(stage) else {
        return Err(mlua::Error::runtime(format!(
            "no stage #{stage} in this process"
        )));
    };
    node.stages
        .register(s, &id, code.as_bytes().to_vec(), bytes_of(&args));
    Ok(())
}

fn waitfor_args(
    lua: &Lua,
    (stage, id, args): (usize, String, Option<mlua::String>),
) -> mlua::Result<bool> {
    with_stage(lua, stage, |s| s.set_args(&id, bytes_of(&args)))
}

fn waitfor_del(lua: &Lua, (stage, id): (usize, String)) -> mlua::Result<bool> {
    with_stage(lua, stage, |s| s.remove(&id))
}

fn handler_values(
    lua: &Lua,
    handler: Option<(String, crate::node::stages::Handler)>,
) -> mlua::Result<MultiValue> {
    match handler {
        None => Value::Nil.into_lua_multi(lua),
        Some((matched, h)) => {
            let args = match &h.args {
                Some(a) => Value::String(lua.create_string(&a[..])?),
                None => Value::Nil,
            };
            (matched, h.serial, lua.create_string(&h.code[..])?, args).into_lua_multi(lua)
        }
    }
}

fn waitfor_get(lua: &Lua, (stage, id): (usize, String)) -> mlua::Result<MultiValue> {
    let found = with_stage(lua, stage, |s| s.get(&id).map(|h| (id.clone(), h)))?;
    handler_values(lua, found)
}

fn waitfor_find(lua: &Lua, (stage, msg): (usize, String)) -> mlua::Result<MultiValue> {
    let found = with_stage(lua, stage, |s| s.find(&msg))?;
    handler_values(lua, found)
}

fn waitfor_list(lua: &Lua, stage: usize) -> mlua::Result<Table> {
    let list = with_stage(lua, stage, |s| s.list())?;
    let out = lua.create_table()?;
    for (id, args) in list {
        match args {
            Some(a) => out.set(id, lua.create_string(&a[..])?)?,
            None => out.set(id, false)?,
        }
    }
    Ok(out)
}

fn waitfor_fresh(lua: &Lua, (stage, len): (usize, usize)) -> mlua::Result<String> {
    with_stage(lua, stage, |s| s.fresh_id(len))
}

fn grant_values(lua: &Lua, grant: Option<Grant>) -> mlua::Result<MultiValue> {
    match grant {
        None => Value::Nil.into_lua_multi(lua),
        Some(g) => (
            lua.create_string(&g.payload)?,
            g.generation,
            g.lease.as_millis() as f64,
        )
            .into_lua_multi(lua),
    }
}

fn lock_acquire(lua: &Lua, (key, payload): (String, mlua::String)) -> mlua::Result<MultiValue> {
    let grant = node(lua)?
        .locks()
        .acquire(&key, payload.as_bytes().to_vec());
    grant_values(lua, grant)
}

fn lock_extend(lua: &Lua, (key, ms): (String, f64)) -> mlua::Result<MultiValue> {
    let by = Duration::from_secs_f64(ms.max(0.0) / 1000.0);
    match node(lua)?.locks().extend(&key, by) {
        Some((generation, left)) => (generation, left.as_millis() as f64).into_lua_multi(lua),
        None => Value::Nil.into_lua_multi(lua),
    }
}

fn lock_release(lua: &Lua, key: String) -> mlua::Result<MultiValue> {
    let grant = node(lua)?.locks().release(&key);
    grant_values(lua, grant)
}

/// `E.lock_remote(op, key, arg)`: a lock operation of a multi-process node, sent to the
/// supervisor's lock service (`node::lock_service`): `">"` with the request payload, `">>"`
/// with milliseconds, `"<"`. The grant comes back as a `lock_grant` post.
fn lock_remote(lua: &Lua, (op, key, arg): (String, String, Value)) -> mlua::Result<()> {
    use crate::node::lock_service::{encode, LockOp, ROUTER};
    let peers = peers(lua)?;
    let payload;
    let lock_op = match op.as_str() {
        ">" => {
            payload = match &arg {
                Value::String(s) => s.as_bytes().to_vec(),
                _ => return Err(mlua::Error::runtime("lock request without a payload")),
            };
            LockOp::Acquire {
                key: &key,
                from: peers.me,
                payload: &payload,
            }
        }
        ">>" => LockOp::Extend {
            key: &key,
            ms: match arg {
                Value::Integer(i) => i.clamp(0, u32::MAX.into()) as u32,
                Value::Number(n) if n.is_finite() => n.clamp(0.0, u32::MAX as f64) as u32,
                _ => 0,
            },
        },
        _ => LockOp::Release { key: &key },
    };
    let frame = encode(&lock_op)
        .ok_or_else(|| mlua::Error::runtime(format!("lock name too long: {key}")))?;
    peers
        .send(ROUTER, &frame)
        .map_err(|e| mlua::Error::runtime(format!("lock `{key}`: the node's lock service: {e}")))
}

/// `"grant", payload, generation, lease` / `"later", ms` / nil.
fn lock_check(lua: &Lua, (key, generation): (String, u64)) -> mlua::Result<MultiValue> {
    let result = node(lua)?.locks().check(&key, generation);
    match result {
        Ok(None) => Value::Nil.into_lua_multi(lua),
        Ok(Some(g)) => {
            let mut values = grant_values(lua, Some(g))?;
            values.push_front(Value::String(lua.create_string("grant")?));
            Ok(values)
        }
        Err(left) => ("later", left.as_millis() as f64).into_lua_multi(lua),
    }
}

/// The prelude and `node::envelope` agree on the message between stages: tables shaped like
/// the ones `messaging.lua` builds for `P.posts.msg` (and for `M` datagrams), encoded by the
/// engine's Lua codec exactly as `E.encode` does, decode to the expected [`Envelope`]; and
/// what `Envelope::encode` writes decodes in Lua (as `E.decode` does) to an equal table.
///
/// [`Envelope`]: crate::node::envelope::Envelope
#[cfg(test)]
mod envelope_agreement {
    use super::*;
    use crate::node::envelope::{Envelope, EnvelopeError};

    /// `P.pack` of the prelude, and deep equality as a script sees it (functions, which come
    /// back re-created from bytecode, are equal when they answer the same).
    const HELPERS: &str = r##"
        pack = function(...) return { n = select("#", ...), ... } end
        deq = function(a, b)
            if type(a) ~= type(b) then return false end
            if type(a) == "function" then return a(41) == b(41) end
            if type(a) ~= "table" then return a == b end
            for k, v in pairs(a) do if not deq(v, b[k]) then return false end end
            for k in pairs(b) do if a[k] == nil then return false end end
            return true
        end
    "##;

    fn lua() -> Lua {
        let lua = Lua::new();
        lua.load(HELPERS).exec().unwrap();
        lua
    }

    /// `E.encode(t)`.
    fn encode_table(lua: &Lua, t: &Table) -> Vec<u8> {
        let mut out = BytesMut::new();
        bson::encode_document(lua, t, &mut out, &INTERNAL_ENCODE).unwrap();
        out.to_vec()
    }

    fn deep_eq(lua: &Lua, a: Value, b: Value) -> bool {
        let deq: mlua::Function = lua.globals().get("deq").unwrap();
        deq.call((a, b)).unwrap()
    }

    /// The message the Lua expression `src` builds, through the Lua codec into an envelope
    /// that must equal `expected` (whose `values` are checked against `v` in Lua instead),
    /// and back.
    fn agree(lua: &Lua, src: &str, expected: Envelope) {
        let table: Table = lua.load(src).eval().unwrap();
        let envelope =
            Envelope::decode(&encode_table(lua, &table)).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(
            Envelope {
                values: None,
                ..envelope.clone()
            },
            expected,
            "{src}"
        );

        // `v` stays the bytes of the values as the Lua codec wrote them.
        let v: Value = table.raw_get("v").unwrap();
        match &envelope.values {
            None => assert!(v.is_nil(), "{src}: v lost"),
            Some(bytes) => {
                let back = bson::decode_document(lua, bytes, &INTERNAL_DECODE).unwrap();
                assert!(deep_eq(lua, v, Value::Table(back)), "{src}: v changed");
            }
        }

        // Rust's encoding is what `E.decode` turns into the same table.
        let bytes = envelope.encode().unwrap();
        let back = bson::decode_document(lua, &bytes, &INTERNAL_DECODE).unwrap();
        assert!(
            deep_eq(lua, Value::Table(table), Value::Table(back)),
            "{src}: the table does not survive Envelope::encode"
        );
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope, "{src}");
    }

    #[test]
    fn a_request_with_a_reply_stage() {
        // post_local / post_to_stage: a `stage.signal("game:hello=back", ...)` from `lobby`.
        agree(
            &lua(),
            r##"return { t = 2, i = "game:hello=back", r = "lobby", v = pack("x", 1, 2.5) }"##,
            Envelope {
                stage: Some(2),
                reply_stage: Some("lobby".into()),
                ..Envelope::new("game:hello=back")
            },
        );
    }

    #[test]
    fn a_request_from_another_process_with_a_deadline() {
        let lua = lua();
        // route_processes: no `t` (the receiver adds it), the sender's process in `rp`, and
        // values with nils in their places and a nested table.
        agree(
            &lua,
            r##"return { i = "game:move", r = "lobby", rp = 2, d = 1700000000000 + 1500,
                        v = pack(nil, { pos = { 1, 2, nil, 4 }, name = "p1", [10] = true }, nil) }"##,
            Envelope {
                reply_stage: Some("lobby".into()),
                reply_process: Some(2),
                deadline_ms: Some(1_700_000_001_500.0),
                ..Envelope::new("game:move")
            },
        );
        // route_cluster: a request to a member of another node names the asking member.
        agree(
            &lua,
            r##"return { i = "game:move=back", r = "lobby", rp = 2, rn = "eu-1.2",
                        d = 1700000000000 + 1500, v = pack("x") }"##,
            Envelope {
                reply_stage: Some("lobby".into()),
                reply_process: Some(2),
                reply_node: Some("eu-1.2".into()),
                deadline_ms: Some(1_700_000_001_500.0),
                ..Envelope::new("game:move=back")
            },
        );
        // A fractional deadline travels as a double.
        agree(
            &lua,
            r##"return { t = 0, i = "game:move", d = 1700000000000.25, v = pack() }"##,
            Envelope {
                stage: Some(0),
                deadline_ms: Some(1_700_000_000_000.25),
                ..Envelope::new("game:move")
            },
        );
    }

    #[test]
    fn replies_name_their_sender_in_f_and_fp() {
        let lua = lua();
        // send_reply to another process.
        agree(
            &lua,
            r##"return { i = "back", v = pack(true, "ok"), f = "game", fp = 3 }"##,
            Envelope {
                from_stage: Some("game".into()),
                from_process: Some(3),
                ..Envelope::new("back")
            },
        );
        // send_reply here, with a function among the values (bytecode, kept opaque).
        agree(
            &lua,
            r##"return { t = 1, i = "back", f = "game",
                        v = pack(function(a) return a + 1 end, nil, "z") }"##,
            Envelope {
                stage: Some(1),
                from_stage: Some("game".into()),
                ..Envelope::new("back")
            },
        );
    }

    #[test]
    fn a_batch_part_and_a_ticket_grant() {
        let lua = lua();
        // split_batch: one part of an index.so batch split over cores, reply due.
        agree(
            &lua,
            r##"return { t = 4, i = "index:#1.set?scores=done", d = 1700000000000, b = true,
                        g = 7, gc = 1,
                        v = { n = 1, { ["#1.set?a"] = { k = "x", v = 3 }, ["#2.get?b"] = {} } } }"##,
            Envelope {
                stage: Some(4),
                deadline_ms: Some(1_700_000_000_000.0),
                split: true,
                gather: Some(7),
                gather_core: Some(1),
                ..Envelope::new("index:#1.set?scores=done")
            },
        );
        // send_service_output: a `=ticket` grant with its lease and reply address.
        agree(
            &lua,
            r##"return { t = 0, i = "game:@=granted", r = "ticket", rp = 1, k = "17",
                        v = pack("17", { seat = 3 }) }"##,
            Envelope {
                stage: Some(0),
                reply_stage: Some("ticket".into()),
                reply_process: Some(1),
                ticket: Some("17".into()),
                ..Envelope::new("game:@=granted")
            },
        );
    }

    /// A field the prelude might start to send without the envelope knowing it is refused,
    /// not dropped on the way.
    #[test]
    fn a_key_the_envelope_does_not_know_is_refused() {
        let lua = lua();
        let table: Table = lua
            .load(r##"return { t = 1, i = "game:x", x = "new" }"##)
            .eval()
            .unwrap();
        assert_eq!(
            Envelope::decode(&encode_table(&lua, &table)),
            Err(EnvelopeError::UnknownKey { key: "x".into() })
        );
    }
}
