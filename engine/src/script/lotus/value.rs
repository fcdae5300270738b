//! Lua values <-> MessagePack values (`rmpv::Value`), the form lotus data takes between
//! cores, on the wire and in storage. A Lua table whose keys are exactly 1..n becomes an
//! array, any other table a map (an empty table a map: a state is a record); numbers with an
//! integral value that fits 53 bits become integers. Functions, userdata and threads cannot
//! leave the core (they would be code from a handler), nor can cycles or nesting deeper than
//! [`MAX_DEPTH`]: those are errors naming the path, not silent losses.

use mlua::{Lua, Table, Value as LuaValue};
use rmpv::Value;

/// The deepest nesting a value may have, as on the wires.
pub const MAX_DEPTH: usize = crate::service::lotus::wire::v1::MAX_DEPTH;

/// Converts a Lua value; the error says which part could not be converted.
pub fn from_lua(v: &LuaValue) -> Result<Value, String> {
    convert(v, 0, &mut Vec::new())
}

fn convert(v: &LuaValue, depth: usize, path: &mut Vec<String>) -> Result<Value, String> {
    let at = |path: &[String]| {
        if path.is_empty() {
            "the value".to_string()
        } else {
            format!("`{}`", path.join("."))
        }
    };
    Ok(match v {
        LuaValue::Nil => Value::Nil,
        LuaValue::Boolean(b) => Value::from(*b),
        LuaValue::Integer(i) => Value::from(*i),
        LuaValue::Number(n) => number(*n),
        LuaValue::String(s) => match s.to_str() {
            Ok(text) => Value::from(&*text),
            Err(_) => Value::Binary(s.as_bytes().to_vec()),
        },
        LuaValue::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(format!(
                    "{} nests deeper than {MAX_DEPTH} levels (or is a cycle)",
                    at(path)
                ));
            }
            table(t, depth, path)?
        }
        other => {
            return Err(format!(
                "{} is a {}, which cannot be stored or sent",
                at(path),
                other.type_name()
            ))
        }
    })
}

fn number(n: f64) -> Value {
    const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= LIMIT {
        Value::from(n as i64)
    } else {
        Value::from(n)
    }
}

fn table(t: &Table, depth: usize, path: &mut Vec<String>) -> Result<Value, String> {
    let len = t.raw_len();
    let mut count = 0usize;
    let mut entries = Vec::new();
    for pair in t.clone().pairs::<LuaValue, LuaValue>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        count += 1;
        entries.push((k, v));
    }
    if len > 0 && count == len {
        let mut items = vec![Value::Nil; len];
        for (k, v) in entries {
            let i = match k {
                LuaValue::Integer(i) => i as usize,
                LuaValue::Number(n) => n as usize,
                _ => unreachable!("a table with raw_len == pair count has only keys 1..n"),
            };
            path.push(i.to_string());
            items[i - 1] = convert(&v, depth + 1, path)?;
            path.pop();
        }
        return Ok(Value::Array(items));
    }
    let mut map = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let key = match &k {
            LuaValue::String(_)
            | LuaValue::Integer(_)
            | LuaValue::Number(_)
            | LuaValue::Boolean(_) => convert(&k, depth + 1, path)?,
            other => {
                return Err(format!(
                    "a table key is a {}, which cannot be stored or sent",
                    other.type_name()
                ))
            }
        };
        path.push(k.to_string().unwrap_or_default());
        let value = convert(&v, depth + 1, path)?;
        path.pop();
        map.push((key, value));
    }
    // Hash order differs from state to state: sort so equal tables encode equally.
    map.sort_by_cached_key(|(k, _)| key_order(k));
    Ok(Value::Map(map))
}

fn key_order(k: &Value) -> (u8, String) {
    match k {
        Value::Integer(i) => (
            0,
            format!("{:020}", i.as_i64().unwrap_or(0) as i128 + (1i128 << 64)),
        ),
        Value::String(s) => (1, s.as_str().unwrap_or_default().to_string()),
        other => (2, other.to_string()),
    }
}

/// Converts a MessagePack value into a new Lua value.
pub fn to_lua(lua: &Lua, v: &Value) -> mlua::Result<LuaValue> {
    Ok(match v {
        Value::Nil | Value::Ext(..) => LuaValue::Nil,
        Value::Boolean(b) => LuaValue::Boolean(*b),
        Value::Integer(i) => match i.as_i64() {
            Some(x) => LuaValue::Number(x as f64),
            None => LuaValue::Number(i.as_u64().unwrap_or(0) as f64),
        },
        Value::F32(f) => LuaValue::Number(f64::from(*f)),
        Value::F64(f) => LuaValue::Number(*f),
        Value::String(s) => LuaValue::String(lua.create_string(s.as_bytes())?),
        Value::Binary(b) => LuaValue::String(lua.create_string(b)?),
        Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, x) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, x)?)?;
            }
            LuaValue::Table(t)
        }
        Value::Map(entries) => {
            let t = lua.create_table_with_capacity(0, entries.len())?;
            for (k, x) in entries {
                let key = to_lua(lua, k)?;
                if !key.is_nil() {
                    t.raw_set(key, to_lua(lua, x)?)?;
                }
            }
            LuaValue::Table(t)
        }
    })
}

/// Encodes a value as MessagePack bytes (inter-core messages, storage).
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("writing to a Vec cannot fail");
    out
}

/// Decodes MessagePack bytes written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    let mut rd = bytes;
    rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH + 8).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(lua: &Lua, src: &str) -> (Value, LuaValue) {
        let v: LuaValue = lua.load(src).eval().unwrap();
        let m = from_lua(&v).unwrap();
        let back = to_lua(lua, &decode(&encode(&m)).unwrap()).unwrap();
        (m, back)
    }

    #[test]
    fn tables_become_arrays_or_maps() {
        let lua = Lua::new();
        let (m, _) = round_trip(&lua, "return {1, 'two', true}");
        assert_eq!(
            m,
            Value::Array(vec![Value::from(1), Value::from("two"), Value::from(true)])
        );
        let (m, back) = round_trip(&lua, "return {hp = 10, pos = {x = 1.5, y = -2}, [3] = 'c'}");
        assert_eq!(
            m.to_string(),
            r#"{3: "c", "hp": 10, "pos": {"x": 1.5, "y": -2}}"#
        );
        let t = back.as_table().unwrap();
        assert_eq!(t.get::<f64>("hp").unwrap(), 10.0);
        assert_eq!(t.get::<Table>("pos").unwrap().get::<f64>("x").unwrap(), 1.5);
        assert_eq!(t.get::<String>(3).unwrap(), "c");
        let (m, _) = round_trip(&lua, "return {}");
        assert_eq!(m, Value::Map(vec![]));
    }

    #[test]
    fn code_and_cycles_are_refused_with_the_path() {
        let lua = Lua::new();
        let v: LuaValue = lua.load("return {a = {f = print}}").eval().unwrap();
        assert_eq!(
            from_lua(&v).unwrap_err(),
            "`a.f` is a function, which cannot be stored or sent"
        );
        let v: LuaValue = lua
            .load("local t = {}; t.self = t; return t")
            .eval()
            .unwrap();
        assert!(from_lua(&v).unwrap_err().contains("deeper than 64"));
    }
}
