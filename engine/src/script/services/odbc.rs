//! The natives behind Lua's `odbc` (spec services.md §1.2), over `service::odbc`. ODBC calls
//! block, so they are served only in the blocking pool's Lua states (`thread.new`); the
//! prelude's `odbc.lua` refuses them on a core with a clear error and builds the adapter and
//! result-set objects (dot-called methods, as the spec's examples use them) over the handles
//! these natives hand out.
//!
//! Handles are thread-local: an adapter or result set belongs to the pool thread whose Lua
//! state made it. `E.odbc_release_all()` — run when a `thread.new` function ends — gives
//! every adapter still open back to the pool (committing an open transaction, as a release
//! does), so nothing leaks from a function that forgot `close()`.
//!
//! Not here yet: the editable rows tree with write-back (`apply`, §1.5) and OUTPUT
//! parameters. `rs.fetch` returns plain nested tables; `odbc.cache` keeps values serialized
//! (`service::odbc::cache`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

use bytes::BytesMut;
use mlua::{Lua, Table, Value as LuaValue};
use simd_json::OwnedValue;

use crate::script::bson::{self, DecodeOptions, EncodeOptions};
use crate::script::natives::node;
use crate::service::odbc::cache::{self, Cached};
use crate::service::odbc::{
    acquire, Adapter, ConnectionConfig, OdbcConfig, OdbcError, ResultSet, Value,
};

pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set("odbc_open", lua.create_function(odbc_open)?)?;
    e.set("odbc_execute", lua.create_function(odbc_execute)?)?;
    e.set("odbc_fetch", lua.create_function(odbc_fetch)?)?;
    e.set("odbc_columns", lua.create_function(odbc_columns)?)?;
    e.set("odbc_more", lua.create_function(odbc_more)?)?;
    e.set("odbc_tx", lua.create_function(odbc_tx)?)?;
    e.set("odbc_timeout", lua.create_function(odbc_timeout)?)?;
    e.set("odbc_close", lua.create_function(odbc_close)?)?;
    e.set("odbc_release_all", lua.create_function(odbc_release_all)?)?;
    e.set("odbc_cache_get", lua.create_function(odbc_cache_get)?)?;
    e.set(
        "odbc_cache_begin",
        lua.create_function(|_, n: String| Ok(cache::begin_load(&n)))?,
    )?;
    e.set("odbc_cache_finish", lua.create_function(odbc_cache_finish)?)?;
    e.set("odbc_purge", lua.create_function(odbc_purge)?)?;
    Ok(())
}

/// The result sets of one `execute` not read yet.
struct Pending {
    sets: VecDeque<ResultSet>,
    adapter: u64,
}

thread_local! {
    static ADAPTERS: RefCell<HashMap<u64, Adapter>> = RefCell::new(HashMap::new());
    static RESULTS: RefCell<HashMap<u64, Pending>> = RefCell::new(HashMap::new());
    static NEXT: Cell<u64> = const { Cell::new(1) };
}

fn next_handle() -> u64 {
    NEXT.with(|n| {
        let h = n.get();
        n.set(h + 1);
        h
    })
}

fn with_adapter<R>(h: u64, f: impl FnOnce(&mut Adapter) -> R) -> mlua::Result<R> {
    ADAPTERS.with(|a| match a.borrow_mut().get_mut(&h) {
        Some(adapter) => Ok(f(adapter)),
        None => Err(mlua::Error::runtime("odbc: this adapter is closed")),
    })
}

/// The stage's `%odbc` block (its merged configuration), parsed.
fn stage_config(lua: &Lua, stage: Option<usize>) -> mlua::Result<OdbcConfig> {
    let node = node(lua)?;
    let stages = &node.plan.stages;
    let block = stage
        .and_then(|s| stages.get(s))
        .or_else(|| stages.first())
        .map(|s| s.block_json.clone())
        .unwrap_or_default();
    let mut bytes = block.into_bytes();
    let parsed: OwnedValue = simd_json::to_owned_value(&mut bytes).unwrap_or_default();
    let odbc = simd_json::prelude::ValueObjectAccess::get(&parsed, "%odbc")
        .cloned()
        .unwrap_or_default();
    OdbcConfig::parse(&odbc).map_err(|e| mlua::Error::runtime(e.to_string()))
}

/// `E.odbc_open(stage, conn)` -> handle, label | nil, error text. A string is a `%odbc` name
/// or a raw connection string (pooled per thread); a table is an inline connection (its
/// function values already called by the prelude), never pooled.
fn odbc_open(
    lua: &Lua,
    (stage, conn): (Option<usize>, LuaValue),
) -> mlua::Result<(Option<u64>, String)> {
    let opened = match &conn {
        LuaValue::String(s) => {
            let key = s.to_string_lossy();
            let cfg = stage_config(lua, stage)?.resolve(&key);
            acquire(&key, &cfg).map(|a| (a, key))
        }
        LuaValue::Table(t) => {
            let mut obj = simd_json::owned::Object::default();
            for pair in t.pairs::<String, LuaValue>() {
                let (k, v) = pair?;
                let v = match v {
                    LuaValue::String(s) => OwnedValue::from(s.to_string_lossy()),
                    LuaValue::Integer(i) => OwnedValue::from(i),
                    LuaValue::Number(n) if n.fract() == 0.0 => OwnedValue::from(n as i64),
                    LuaValue::Number(n) => OwnedValue::from(n),
                    LuaValue::Boolean(b) => OwnedValue::from(b),
                    _ => continue,
                };
                obj.insert(k, v);
            }
            ConnectionConfig::inline(&OwnedValue::from(obj))
                .and_then(|cfg| Adapter::open(&cfg))
                .map(|a| (a, "(inline)".to_string()))
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "odbc.new: a connection is a name, a connection string or a table, not a {}",
                other.type_name()
            )))
        }
    };
    match opened {
        Ok((adapter, label)) => {
            let h = next_handle();
            ADAPTERS.with(|a| a.borrow_mut().insert(h, adapter));
            Ok((Some(h), label))
        }
        // Spec: a failed connection returns nothing, no Lua error; the diagnostics are logged.
        Err(err) => Ok((None, err.to_string())),
    }
}

/// `E.odbc_execute(adapter, sql, specs, params)` -> result handle | nil, error text.
fn odbc_execute(
    lua: &Lua,
    (h, sql, specs, params): (u64, String, Option<Table>, Option<Table>),
) -> mlua::Result<(Option<u64>, Option<String>)> {
    let specs: Vec<String> = match specs {
        Some(t) => t
            .sequence_values::<LuaValue>()
            .map(|v| {
                v.map(|v| match v {
                    LuaValue::String(s) => s.to_string_lossy(),
                    LuaValue::Integer(i) => i.to_string(),
                    LuaValue::Number(n) => (n as i64).to_string(),
                    _ => String::new(),
                })
            })
            .collect::<mlua::Result<_>>()?,
        None => Vec::new(),
    };
    let values = match params {
        Some(t) => {
            let n = t.raw_get::<Option<i64>>("n")?.unwrap_or(t.raw_len() as i64);
            (1..=n)
                .map(|i| to_value(lua, t.raw_get(i)?))
                .collect::<mlua::Result<Vec<_>>>()?
        }
        None => Vec::new(),
    };
    let spec_refs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let executed = with_adapter(h, |a| a.execute(&sql, &spec_refs, &values))?;
    crate::service::odbc::count_query(executed.is_ok());
    match executed {
        Ok(sets) => {
            let r = next_handle();
            RESULTS.with(|m| {
                m.borrow_mut().insert(
                    r,
                    Pending {
                        sets: sets.into(),
                        adapter: h,
                    },
                )
            });
            Ok((Some(r), None))
        }
        // Spec: a value that does not fit its placeholder's type is a Lua error.
        Err(err @ OdbcError::Conversion { .. }) => Err(mlua::Error::runtime(err.to_string())),
        Err(err) => Ok((None, Some(err.to_string()))),
    }
}

/// Lua -> parameter (spec §1.2 "Untyped params are inferred").
fn to_value(lua: &Lua, v: LuaValue) -> mlua::Result<Value> {
    Ok(match v {
        LuaValue::Nil => Value::Null,
        LuaValue::Boolean(b) => Value::Bool(b),
        LuaValue::Integer(i) => Value::Int(i),
        LuaValue::Number(n) if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 => {
            Value::Int(n as i64)
        }
        LuaValue::Number(n) => Value::Float(n),
        LuaValue::String(s) => Value::Text(s.as_bytes().to_vec()),
        LuaValue::Table(t) => {
            let mut out = BytesMut::new();
            bson::encode_document(lua, &t, &mut out, &EncodeOptions::default())
                .map_err(|e| mlua::Error::runtime(format!("odbc: a table parameter: {e}")))?;
            Value::Binary(out.to_vec())
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "This type is not supported ({})",
                other.type_name()
            )))
        }
    })
}

/// Cell -> Lua (spec §1.2 "Conversions"): a BINARY that is a whole BSON document becomes a
/// table, any other bytes a string.
fn to_lua(lua: &Lua, v: &Value) -> mlua::Result<LuaValue> {
    Ok(match v {
        Value::Null => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Int(i) => LuaValue::Number(*i as f64),
        Value::Float(f) => LuaValue::Number(*f),
        Value::Text(t) => LuaValue::String(lua.create_string(t)?),
        Value::Binary(b) => {
            let whole =
                b.len() >= 5 && u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize == b.len();
            let decoded = whole
                .then(|| bson::decode_document(lua, b, &DecodeOptions::default()).ok())
                .flatten();
            match decoded {
                Some(t) => LuaValue::Table(t),
                None => LuaValue::String(lua.create_string(b)?),
            }
        }
    })
}

/// `E.odbc_fetch(result, keys)` -> tree | 100 (no more result sets) | nil (no columns).
/// Keys nest the rows by those columns' values, in order; a key naming no column (`"$"` by
/// convention) numbers the rows 1, 2, ...; the first row of a key path wins; no keys: the
/// first row's column map.
fn odbc_fetch(lua: &Lua, (r, keys): (u64, Option<Vec<String>>)) -> mlua::Result<LuaValue> {
    let Some(set) = RESULTS.with(|m| m.borrow_mut().get_mut(&r).map(|p| p.sets.pop_front())) else {
        return Err(mlua::Error::runtime("odbc: this result set is closed"));
    };
    let Some(set) = set else {
        return Ok(LuaValue::Number(100.0)); // SQL_NO_DATA
    };
    if set.columns.is_empty() {
        return Ok(LuaValue::Nil);
    }
    let keys = keys.unwrap_or_default();
    let key_cols: Vec<Option<usize>> = keys
        .iter()
        .map(|k| set.columns.iter().position(|c| &c.label == k))
        .collect();
    let row_map = |row: &[Value]| -> mlua::Result<Table> {
        let t = lua.create_table()?;
        for (c, v) in set.columns.iter().zip(row) {
            t.raw_set(c.label.as_str(), to_lua(lua, v)?)?;
        }
        Ok(t)
    };
    if key_cols.is_empty() {
        return match set.rows.first() {
            Some(row) => Ok(LuaValue::Table(row_map(row)?)),
            None => Ok(LuaValue::Table(lua.create_table()?)),
        };
    }
    let root = lua.create_table()?;
    for (n, row) in set.rows.iter().enumerate() {
        let mut node = root.clone();
        for (depth, col) in key_cols.iter().enumerate() {
            let key = match col {
                Some(c) => to_lua(lua, &row[*c])?,
                None => LuaValue::Number((n + 1) as f64),
            };
            if key.is_nil() {
                break; // a NULL key has no place in the tree
            }
            let last = depth + 1 == key_cols.len();
            match node.raw_get::<LuaValue>(key.clone())? {
                LuaValue::Table(t) if !last => node = t,
                LuaValue::Nil if last => node.raw_set(key, row_map(row)?)?,
                LuaValue::Nil => {
                    let t = lua.create_table()?;
                    node.raw_set(key, t.clone())?;
                    node = t;
                }
                _ => break, // the first row of a key path wins
            }
        }
    }
    Ok(LuaValue::Table(root))
}

/// `E.odbc_more(result)`: another result set is waiting.
fn odbc_more(_: &Lua, r: u64) -> mlua::Result<bool> {
    Ok(RESULTS.with(|m| m.borrow().get(&r).is_some_and(|p| !p.sets.is_empty())))
}

/// `E.odbc_columns(result)` -> `{label = {length, sqltype, autoincrement, nullable, unsigned,
/// scale, precision}}` of the current result set, or nil when it has no columns.
fn odbc_columns(lua: &Lua, r: u64) -> mlua::Result<Option<Table>> {
    RESULTS.with(|m| {
        let m = m.borrow();
        let Some(set) = m.get(&r).and_then(|p| p.sets.front()) else {
            return Ok(None);
        };
        if set.columns.is_empty() {
            return Ok(None);
        }
        let out = lua.create_table()?;
        for c in &set.columns {
            let d = lua.create_table()?;
            d.raw_set("length", c.length)?;
            d.raw_set("sqltype", c.sql_type)?;
            d.raw_set("autoincrement", c.autoincrement)?;
            d.raw_set("nullable", c.nullable)?;
            d.raw_set("unsigned", c.unsigned)?;
            d.raw_set("scale", c.scale)?;
            d.raw_set("precision", c.precision)?;
            out.raw_set(c.label.as_str(), d)?;
        }
        Ok(Some(out))
    })
}

/// `E.odbc_tx(adapter, "begin" | "commit" | "rollback")` -> 0, or -1 (logged).
fn odbc_tx(_: &Lua, (h, op): (u64, String)) -> mlua::Result<i64> {
    let result = with_adapter(h, |a| match op.as_str() {
        "begin" => a.begin(),
        "commit" => a.commit(),
        _ => a.rollback(),
    })?;
    Ok(match result {
        Ok(()) => 0,
        Err(err) => {
            tracing::warn!("odbc {op}: {err}");
            -1
        }
    })
}

/// `E.odbc_timeout(adapter [, seconds])` -> the execute timeout (after setting it).
fn odbc_timeout(_: &Lua, (h, set): (u64, Option<u32>)) -> mlua::Result<u32> {
    with_adapter(h, |a| {
        if let Some(s) = set {
            a.execute_timeout = s;
        }
        a.execute_timeout
    })
}

/// `E.odbc_close(adapter)` -> 0, or -1: gives the connection back (pool or disconnect).
fn odbc_close(_: &Lua, h: u64) -> mlua::Result<i64> {
    RESULTS.with(|m| m.borrow_mut().retain(|_, p| p.adapter != h));
    let Some(adapter) = ADAPTERS.with(|a| a.borrow_mut().remove(&h)) else {
        return Ok(-1);
    };
    Ok(match adapter.close() {
        Ok(()) => 0,
        Err(err) => {
            tracing::warn!("odbc close: {err}");
            -1
        }
    })
}

/// `E.odbc_cache_get(name)` -> "value", bytes | "loading" | nil.
fn odbc_cache_get(lua: &Lua, name: String) -> mlua::Result<(LuaValue, LuaValue)> {
    Ok(match cache::get(&name) {
        Cached::Absent => (LuaValue::Nil, LuaValue::Nil),
        Cached::Loading => (
            LuaValue::String(lua.create_string("loading")?),
            LuaValue::Nil,
        ),
        Cached::Value(v) => (
            LuaValue::String(lua.create_string("value")?),
            LuaValue::String(lua.create_string(&v)?),
        ),
    })
}

/// `E.odbc_cache_finish(name, bytes|nil)`: the loader's (encoded) result, or nil: nothing.
fn odbc_cache_finish(_: &Lua, (name, v): (String, Option<mlua::String>)) -> mlua::Result<()> {
    cache::finish_load(&name, v.map(|s| s.as_bytes().to_vec()));
    Ok(())
}

/// `E.odbc_purge(names|nil)` -> the names removed.
fn odbc_purge(_: &Lua, names: Option<Vec<String>>) -> mlua::Result<Vec<String>> {
    Ok(cache::purge(names.as_deref()))
}

/// `E.odbc_release_all()`: the end of a `thread.new` function releases what it left open.
fn odbc_release_all(_: &Lua, (): ()) -> mlua::Result<()> {
    RESULTS.with(|m| m.borrow_mut().clear());
    let open: Vec<Adapter> = ADAPTERS.with(|a| a.borrow_mut().drain().map(|(_, v)| v).collect());
    for adapter in open {
        if let Err(err) = adapter.close() {
            tracing::warn!("odbc: releasing an adapter left open: {err}");
        }
    }
    Ok(())
}
