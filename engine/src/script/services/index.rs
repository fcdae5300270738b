//! The native behind service stages (`E.index_call`): a routed message for an index.so stage
//! reaches the prelude's `P.posts.msg` on the service's main core like any stage message,
//! and the prelude hands it here. This module turns the message id and Lua values into
//! [`Request`]s (spec/services.md §2.3: direct form `CMD?INDEX[/TIER][=callback]`, batch
//! form `callback` with a table of `[#n.]CMD?INDEX[/TIER]` keys), runs them on the core's
//! [`IndexService`], and returns the reply id and value; the prelude sends the reply through
//! its usual `route`/reply path, so replies reach other cores and processes alike. An answer
//! that must wait for the index's open thread (the index is not open yet) or its sync thread
//! (a mutation's, or any answer behind one) is held by the service: `E.index_call` returns a
//! handle instead, the prelude keeps the request's envelope under it, and `E.index_opened`
//! (on the open thread's `index_open` post) and `E.index_done` (on the sync thread's
//! `index_done` post) return the released answers with their handles.
//!
//! Not on the packet path, so the mlua API is fine here. User values `v` are kept as BSON
//! (`{v = value}`, the wrapped form) and decoded back with the Lua state: a table, string or
//! number comes back as the same Lua value.

use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use mlua::{Lua, Table, Value};

use crate::node::stats::ServiceStats;
use crate::script::bson::{self, DecodeOptions, EncodeOptions};
use crate::script::natives::core;
use crate::service::index::{
    batch_order, parse_batch_key, parse_spec, Answer, Command, Completion, GetResult, Kind,
    Outcome, RangeFrom, RankedEntry, Released, Reply, Request, Score, SetItem, SetResult, TIERS,
};

pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set("index_call", lua.create_function(index_call)?)?;
    e.set("index_done", lua.create_function(index_done)?)?;
    e.set("index_opened", lua.create_function(index_opened)?)?;
    Ok(())
}

/// Stored values are data: functions are refused rather than persisted as bytecode.
const STORE_ENCODE: EncodeOptions = EncodeOptions {
    allow_functions: false,
};
const STORE_DECODE: DecodeOptions = DecodeOptions {
    load_functions: false,
};

thread_local! {
    /// Handles of held answers: the prelude keeps each held request's envelope under one.
    static NEXT_HANDLE: Cell<u64> = const { Cell::new(1) };
}

fn next_handle() -> u64 {
    NEXT_HANDLE.with(|n| {
        let h = n.get();
        n.set(h + 1);
        h
    })
}

/// `E.index_call(stage, id, values)` -> `reply_id, reply_value` (`reply_id` nil when no
/// reply is due: no callback given, spec §2.3 "The reply is sent only if `=callback` is
/// given"), or `false, handle` when the answer waits for the sync thread: it comes back from
/// `E.index_done` with that handle.
fn index_call(
    lua: &Lua,
    (stage, id, values): (usize, String, Option<Table>),
) -> mlua::Result<(Value, Value)> {
    let core = core()?;
    let service = core.index_service(stage).ok_or_else(|| {
        mlua::Error::runtime(format!("index stage #{stage} is not served on this core"))
    })?;
    let payload: Value = match &values {
        Some(t) => t.raw_get(1)?,
        None => Value::Nil,
    };
    let (head, callback) = match id.split_once('=') {
        Some((h, c)) => (h, Some(c).filter(|c| !c.is_empty())),
        None => (id.as_str(), None),
    };
    let callback = callback.map(str::to_string);
    let tag = next_handle();
    let (_, spec) = parse_batch_key(head);
    // Lua -> request first, then run (no borrow held while building Lua values, which is the
    // "no RefCell borrow across Lua" rule kept strictly).
    let outcome = match parse_spec(spec) {
        Ok((kind, index, tier)) => match command(lua, kind, &payload) {
            Ok(command) => {
                let req = Request {
                    index,
                    tier,
                    command,
                };
                ServiceStats::inc(&core.stats.services.index_ops, 1);
                service.borrow_mut().execute(req, callback, tag)
            }
            Err(e) => {
                tracing::warn!("index `{id}`: {e}");
                service
                    .borrow_mut()
                    .pass(Answer::One(Reply::Null), callback, tag)
            }
        },
        Err(e) if spec.contains('?') => {
            tracing::warn!("index `{id}`: {e}");
            service
                .borrow_mut()
                .pass(Answer::One(Reply::Null), callback, tag)
        }
        Err(_) => {
            // Batch form: the id is the callback, the payload a table of command keys.
            let callback = Some(callback.unwrap_or_else(|| head.to_string()));
            let Value::Table(batch) = payload else {
                tracing::warn!("index `{id}`: a batch needs a table of `CMD?INDEX` keys");
                let outcome = service
                    .borrow_mut()
                    .pass(Answer::One(Reply::Null), callback, tag);
                return answer_now(lua, outcome, tag);
            };
            let mut keys: Vec<String> = Vec::new();
            let mut payloads: Vec<Value> = Vec::new();
            for pair in batch.pairs::<Value, Value>() {
                let (k, v) = pair?;
                if let Value::String(k) = k {
                    keys.push(k.to_str()?.to_string());
                    payloads.push(v);
                }
            }
            let mut reqs = Vec::new();
            for i in batch_order(&keys) {
                let key = &keys[i];
                let built = parse_spec(parse_batch_key(key).1)
                    .map_err(|e| e.to_string())
                    .and_then(|(kind, index, tier)| {
                        Ok(Request {
                            index,
                            tier,
                            command: command(lua, kind, &payloads[i])?,
                        })
                    });
                match built {
                    Ok(req) => reqs.push((key.clone(), req)),
                    // The key stays out of the reply: its result is undefined (nil).
                    Err(e) => tracing::warn!("index `{id}` key `{key}`: {e}"),
                }
            }
            ServiceStats::inc(&core.stats.services.index_ops, reqs.len() as u64);
            service.borrow_mut().execute_batch(reqs, callback, tag)
        }
    };
    answer_now(lua, outcome, tag)
}

/// The Lua form of an outcome: `reply_id, value` (both nil when no reply is due) or
/// `false, handle`.
fn answer_now(lua: &Lua, outcome: Outcome, tag: u64) -> mlua::Result<(Value, Value)> {
    match outcome {
        Outcome::Held => Ok((Value::Boolean(false), Value::Number(tag as f64))),
        Outcome::Now(r) => match r.callback {
            Some(cb) => Ok((
                Value::String(lua.create_string(&cb)?),
                answer_value(lua, r.answer)?,
            )),
            None => Ok((Value::Nil, Value::Nil)),
        },
    }
}

fn answer_value(lua: &Lua, answer: Answer) -> mlua::Result<Value> {
    match answer {
        Answer::One(reply) => reply_value(lua, reply),
        Answer::Batch(replies) => {
            let out = lua.create_table()?;
            for (key, reply) in replies {
                out.raw_set(key, reply_value(lua, reply)?)?;
            }
            Ok(Value::Table(out))
        }
    }
}

/// `E.index_done(stage, upto, failed)` (the post `index_done` of a sync thread, `failed` a
/// table `{index = why}` or nil) -> `{ {h = handle, i = reply_id, v = value}, ... }`: the
/// answers now released, in the order they were produced.
fn index_done(
    lua: &Lua,
    (stage, upto, failed): (usize, f64, Option<Table>),
) -> mlua::Result<Table> {
    let core = core()?;
    let service = core.index_service(stage).ok_or_else(|| {
        mlua::Error::runtime(format!("index stage #{stage} is not served on this core"))
    })?;
    let mut c = Completion {
        upto: upto as u64,
        failed: Vec::new(),
    };
    if let Some(f) = failed {
        for pair in f.pairs::<String, String>() {
            c.failed.push(pair?);
        }
    }
    let released = service.borrow_mut().complete(c);
    released_table(lua, released)
}

/// `E.index_opened(stage)` (the post `index_open` of an open thread) -> the answers released
/// by the opens now finished, in the form of `E.index_done`.
fn index_opened(lua: &Lua, stage: usize) -> mlua::Result<Table> {
    let core = core()?;
    let service = core.index_service(stage).ok_or_else(|| {
        mlua::Error::runtime(format!("index stage #{stage} is not served on this core"))
    })?;
    let released = service.borrow_mut().opened();
    released_table(lua, released)
}

/// `{ {h = handle, i = reply_id, v = value}, ... }`.
fn released_table(lua: &Lua, released: Vec<Released>) -> mlua::Result<Table> {
    let out = lua.create_table_with_capacity(released.len(), 0)?;
    for (n, r) in released.into_iter().enumerate() {
        let t = lua.create_table_with_capacity(0, 3)?;
        t.raw_set("h", r.tag as f64)?;
        if let Some(cb) = r.callback {
            t.raw_set("i", cb)?;
            t.raw_set("v", answer_value(lua, r.answer)?)?;
        }
        out.raw_set(n + 1, t)?;
    }
    Ok(out)
}
// Lua -> request ------------------------------------------------------------------------------

fn command(lua: &Lua, kind: Kind, payload: &Value) -> Result<Command, String> {
    Ok(match kind {
        Kind::Set => {
            let Value::Table(t) = payload else {
                return Err("set needs a table { ID = { i = ..., I = ..., v = ... } }".into());
            };
            let mut items = Vec::new();
            for pair in t.clone().pairs::<Value, Value>() {
                let (k, v) = pair.map_err(|e| e.to_string())?;
                items.push(set_item(lua, id_text(&k)?, &v)?);
            }
            Command::Set(items)
        }
        Kind::Del => Command::Del(ids(payload)?),
        Kind::Get => Command::Get(ids(payload)?),
        Kind::Range => {
            let t = seq(payload, "range needs {score, count} or {ID, delta, count}")?;
            if t.len() >= 3 {
                Command::Range {
                    from: RangeFrom::Id {
                        id: id_text(&t[0])?,
                        delta: int(&t[1]).unwrap_or(0),
                    },
                    count: int(&t[2]).unwrap_or(0),
                }
            } else {
                let score = score(&t[0]).ok_or("range: the score must be a number or string")?;
                Command::Range {
                    from: RangeFrom::Score(score),
                    count: t.get(1).and_then(int).unwrap_or(0),
                }
            }
        }
        Kind::ForEach => {
            let t = seq(payload, "forEach needs {start_rank, count}")?;
            Command::ForEach {
                start: int(&t[0]).unwrap_or(1),
                count: t.get(1).and_then(int).unwrap_or(0),
            }
        }
        Kind::Total => Command::Total,
    })
}

fn set_item(lua: &Lua, id: String, v: &Value) -> Result<SetItem, String> {
    let mut item = SetItem {
        id,
        ..SetItem::default()
    };
    let Value::Table(t) = v else {
        return Ok(item);
    };
    let get = |k: &str| t.raw_get::<Value>(k).map_err(|e| e.to_string());
    item.scores = scores(&get("i")?);
    if let Value::Table(tiers) = get("I")? {
        for (n, slot) in item.tiers.iter_mut().enumerate().take(TIERS) {
            let x: Value = tiers.raw_get(n + 1).map_err(|e| e.to_string())?;
            *slot = scores(&x);
        }
    }
    let value = get("v")?;
    if !value.is_nil() {
        let mut out = BytesMut::new();
        match bson::encode_wrapped(lua, &value, &mut out, &STORE_ENCODE) {
            Ok(()) => item.v = Some(out.freeze()),
            Err(e) => return Err(format!("set `{}`: value v cannot be stored: {e}", item.id)),
        }
    }
    Ok(item)
}

/// `i` / one tier of `I`: a score or an array of scores.
fn scores(v: &Value) -> Option<Vec<Score>> {
    match v {
        Value::Table(t) => Some(
            t.clone()
                .sequence_values::<Value>()
                .filter_map(|x| x.ok().as_ref().and_then(score))
                .collect(),
        ),
        other => score(other).map(|s| vec![s]),
    }
}

/// Integers (and integral numbers: LuaJIT has only doubles) are integer scores; a fraction
/// is truncated, since the ranking has only int64 and string scores (spec §2.2).
fn score(v: &Value) -> Option<Score> {
    match v {
        Value::String(s) => Some(Score::str(s.as_bytes())),
        other => int(other).map(Score::Int),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::Number(n) if n.is_finite() => Some(n.trunc() as i64),
        Value::String(s) => s.to_str().ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// An id: a string, or a number in Lua's own text form (`7`, not `7.0`).
fn id_text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.to_string_lossy()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Number(n) if n.fract() == 0.0 && n.is_finite() => Ok((*n as i64).to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!(
            "an id must be a string or number, not {}",
            other.type_name()
        )),
    }
}

/// `"ID"` or `{ID, ...}`.
fn ids(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Table(t) => t
            .clone()
            .sequence_values::<Value>()
            .map(|x| id_text(&x.map_err(|e| e.to_string())?))
            .collect(),
        other => Ok(vec![id_text(other)?]),
    }
}

fn seq(v: &Value, what: &str) -> Result<Vec<Value>, String> {
    match v {
        Value::Table(t) => {
            let items: Vec<Value> = t
                .clone()
                .sequence_values::<Value>()
                .collect::<mlua::Result<_>>()
                .map_err(|e| e.to_string())?;
            if items.is_empty() {
                Err(what.into())
            } else {
                Ok(items)
            }
        }
        _ => Err(what.into()),
    }
}

// Reply -> Lua --------------------------------------------------------------------------------

fn reply_value(lua: &Lua, reply: Reply) -> mlua::Result<Value> {
    let t = lua.create_table()?;
    match reply {
        Reply::Null => return Ok(Value::Nil),
        Reply::Total(n) => return Ok(Value::Number(n as f64)),
        Reply::Set(items) => {
            for (id, r) in items {
                // `undefined` (an error) is simply absent.
                if let Some(d) = SetResult::d(r) {
                    t.raw_set(id, d)?;
                }
            }
        }
        Reply::Del(items) => {
            for (id, ok) in items {
                t.raw_set(id, ok)?;
            }
        }
        Reply::Get(items) => {
            for (id, g) in items {
                t.raw_set(id, get_value(lua, g)?)?;
            }
        }
        Reply::Entries(entries) => {
            // `"#<rank>"` keys: integer keys here, which the BSON codec writes as `#n`.
            for e in entries {
                let d = e.d;
                t.raw_set(d, entry_value(lua, e)?)?;
            }
        }
    }
    Ok(Value::Table(t))
}

fn get_value(lua: &Lua, g: GetResult) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    match g {
        GetResult::Unknown => {}
        GetResult::Tier { v, scores } => {
            t.raw_set("v", user_value(lua, v)?)?;
            let list = lua.create_table()?;
            for (n, (score, d)) in scores.into_iter().enumerate() {
                let e = lua.create_table()?;
                e.raw_set("i", score_value(lua, &score)?)?;
                e.raw_set("d", d)?;
                list.raw_set(n + 1, e)?;
            }
            t.raw_set("I", list)?;
        }
        GetResult::All { v, tiers } => {
            t.raw_set("v", user_value(lua, v)?)?;
            let list = lua.create_table()?;
            for (n, tier) in tiers.into_iter().enumerate() {
                // An empty tier is `undefined`: a hole at that position.
                if let Some(scores) = tier {
                    let s = lua.create_table()?;
                    for (k, score) in scores.iter().enumerate() {
                        s.raw_set(k + 1, score_value(lua, score)?)?;
                    }
                    list.raw_set(n + 1, s)?;
                }
            }
            t.raw_set("I", list)?;
        }
    }
    Ok(t)
}

fn entry_value(lua: &Lua, e: RankedEntry) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("i", score_value(lua, &e.i)?)?;
    t.raw_set("k", &*e.k)?;
    t.raw_set("v", user_value(lua, e.v)?)?;
    t.raw_set("d", e.d)?;
    Ok(t)
}

fn score_value(lua: &Lua, s: &Score) -> mlua::Result<Value> {
    Ok(match s {
        Score::Int(i) => Value::Number(*i as f64),
        Score::Str(b) => Value::String(lua.create_string(b)?),
    })
}

fn user_value(lua: &Lua, v: Option<Bytes>) -> mlua::Result<Value> {
    match v {
        None => Ok(Value::Nil),
        Some(bytes) => bson::decode_first(lua, &bytes, &STORE_DECODE)
            .map_err(|e| mlua::Error::runtime(format!("index: stored value unreadable: {e}"))),
    }
}
