//! Socket crypto as scripts see it (spec/stage.md §4.5-4.6): the Lua forms of a `crypto` key
//! (a string, a `{["ALGO/MODE/PADDING"] = key}` table, nil), and `broker.encrypt` /
//! `broker.decrypt`, which produce and open frames exactly as an encrypting socket does. The
//! ciphers and the frame layout are `codec::crypto`'s.

use std::sync::Arc;

use bytes::BytesMut;
use mlua::{Lua, MultiValue, Table, Value};

use super::bson::{self, DecodeOptions, EncodeOptions};
use super::natives::core;
use crate::codec::crypto::{self, Crypto};
use crate::codec::framing::ENCRYPTED_FLAG;
use crate::net::id::ConnId;

pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set("encrypt", lua.create_function(encrypt)?)?;
    e.set("decrypt", lua.create_function(decrypt)?)?;
    Ok(())
}

/// The key a `crypto` value names: `None` for nil (crypto off).
pub fn parse(what: &str, value: &Value) -> mlua::Result<Option<Arc<Crypto>>> {
    let fail = |msg: String| Err(mlua::Error::runtime(format!("{what}: {msg}")));
    match value {
        Value::Nil => Ok(None),
        Value::String(key) => Ok(Some(Arc::new(Crypto::from_key(&key.as_bytes())))),
        Value::Table(t) => {
            // The original takes the first string-keyed entry; a table with several would
            // depend on iteration order, so it is refused.
            let mut found = None;
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair?;
                let (Value::String(name), Value::String(key)) = (&k, &v) else {
                    return fail(format!(
                        "expected {{[\"ALGO/MODE/PADDING\"] = key}} with string name and key, got an entry {} => {}",
                        k.type_name(),
                        v.type_name()
                    ));
                };
                if found.is_some() {
                    return fail(
                        "give one {[\"ALGO/MODE/PADDING\"] = key} entry, not several".into(),
                    );
                }
                let name = name.to_str()?.to_string();
                match Crypto::from_spec(&name, &key.as_bytes()) {
                    Ok(c) => found = Some(Arc::new(c)),
                    Err(err) => return fail(err.to_string()),
                }
            }
            match found {
                Some(c) => Ok(Some(c)),
                None => fail(
                    "the table names no cipher (expected {[\"ALGO/MODE/PADDING\"] = key})".into(),
                ),
            }
        }
        other => fail(format!(
            "expected a key string, a {{[\"ALGO/MODE/PADDING\"] = key}} table or nil, got {}",
            other.type_name()
        )),
    }
}

/// The key `broker.encrypt/decrypt` use: the given key form, or the socket's (`id`, a
/// connection of this core or a listener) when the script passed a socket.
fn key_of(what: &str, key: &Value, socket: Option<(u64, bool)>) -> mlua::Result<Arc<Crypto>> {
    let found = match socket {
        None => parse(what, key)?,
        Some((id, true)) => core()?
            .node
            .listener(id)
            .and_then(|l| l.props.lock().unwrap().crypto.clone()),
        Some((id, false)) => {
            let core = core()?;
            match ConnId::from_raw(id) {
                Some(conn) if conn.owner() != core.index => {
                    return Err(mlua::Error::runtime(format!(
                        "{what}: socket {conn} belongs to core {}; use its key there",
                        conn.owner()
                    )))
                }
                Some(conn) => core.conn(conn).and_then(|c| c.crypto()),
                None => None,
            }
        }
    };
    found.ok_or_else(|| mlua::Error::runtime(format!("{what}: encryption settings are missing")))
}

/// `E.encrypt(key, socket_id, is_listener, v)`: the encrypted frame of `{"v": v}`.
fn encrypt(
    lua: &Lua,
    (key, id, listener, value): (Value, Option<u64>, bool, Value),
) -> mlua::Result<mlua::String> {
    let key = key_of("broker.encrypt", &key, id.map(|id| (id, listener)))?;
    let mut doc = BytesMut::new();
    bson::encode_wrapped(lua, &value, &mut doc, &EncodeOptions::default())
        .map_err(|e| mlua::Error::runtime(format!("broker.encrypt: {e}")))?;
    let mut frame = BytesMut::new();
    key.seal_frame(&doc, &mut frame)
        .map_err(|e| mlua::Error::runtime(format!("broker.encrypt: {e}")))?;
    lua.create_string(&frame[..])
}

/// `E.decrypt(key, socket_id, is_listener, bytes)`: the value of the frame's first element,
/// or the bytes themselves (and why) when they are not a frame that opens to BSON, as the
/// original returns them.
fn decrypt(
    lua: &Lua,
    (key, id, listener, bytes): (Value, Option<u64>, bool, mlua::String),
) -> mlua::Result<MultiValue> {
    let key = key_of("broker.decrypt", &key, id.map(|id| (id, listener)))?;
    let raw = bytes.as_bytes();
    let as_is = |why: String| (Value::String(bytes.clone()), why).into_lua_multi(lua);
    if raw.len() <= 4 {
        return as_is("too short for a frame".into());
    }
    let header = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let opened;
    let doc: &[u8] = if crypto::is_encrypted(&raw) {
        let len = (header & !ENCRYPTED_FLAG) as usize;
        let Some(frame) = raw.get(..len) else {
            return as_is(format!(
                "frame header says {len} bytes, {} given",
                raw.len()
            ));
        };
        opened = match key.open_frame(frame) {
            Ok(doc) => doc,
            Err(err) => return as_is(err.to_string()),
        };
        &opened
    } else {
        &raw
    };
    match bson::decode_first(lua, doc, &DecodeOptions::default()) {
        Ok(v) => v.into_lua_multi(lua),
        Err(err) => as_is(format!("not BSON: {err}")),
    }
}

use mlua::IntoLuaMulti;
