//! The original lotus wire (spec/lotus.md §3): a 2-byte big-endian body length, then JSON.
//! The first frame is the login `{account, password, name}`, answered by a bare text line
//! (`200 OK (token:DDDDDDDD), welcome to lotus\n` or `401 Unauthorized, <reason>\n`); every
//! later frame is `{"name": <command>, "params": {...}}` with the original's wire names, and
//! what the server sends is a JSON object with a `type` (`channel_message`, and our additions
//! `channel_history`, `channel_deleted`, `error`, and replies to requests that carry a `rid`).
//!
//! The original never replied; a compat client that puts `"rid": n` (n > 0) in a command's
//! params gets a reply, one that does not stays fire-and-forget (errors are then only logged).

use bytes::{Buf, Bytes, BytesMut};
use rmpv::Value;
use simd_json::{OwnedValue, StaticNode};

use super::{command, field, Command, Outgoing, Request, WireError};

/// The largest body a 2-byte length can announce.
pub const MAX_FRAME: usize = u16::MAX as usize;
/// How deep a frame's JSON may nest (as v1's MessagePack).
pub const MAX_DEPTH: usize = super::v1::MAX_DEPTH;

/// Cuts the next frame body off `buf` (`Ok(None)`: more bytes needed).
pub fn cut(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 2 {
        return None;
    }
    let len = (&buf[..2]).get_u16() as usize;
    if buf.len() < 2 + len {
        return None;
    }
    buf.advance(2);
    Some(buf.split_to(len).freeze())
}

/// Decodes a frame body as JSON into a MessagePack value.
pub fn json_value(body: &[u8]) -> Result<Value, WireError> {
    // simd-json parses in place, hence the copy (frames are at most 64 KiB).
    let mut text = body.to_vec();
    let json = simd_json::to_owned_value(&mut text)
        .map_err(|e| WireError::bad_frame(format!("not JSON: {e}")))?;
    from_json(&json, 0)
}

fn from_json(v: &OwnedValue, depth: usize) -> Result<Value, WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError::bad_frame(format!(
            "values nest deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(match v {
        OwnedValue::Static(StaticNode::Null) => Value::Nil,
        OwnedValue::Static(StaticNode::Bool(b)) => Value::from(*b),
        OwnedValue::Static(StaticNode::I64(i)) => Value::from(*i),
        OwnedValue::Static(StaticNode::U64(u)) => Value::from(*u),
        OwnedValue::Static(StaticNode::F64(f)) => Value::from(*f),
        OwnedValue::String(s) => Value::from(s.as_str()),
        OwnedValue::Array(a) => Value::Array(
            a.iter()
                .map(|x| from_json(x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        OwnedValue::Object(o) => {
            // Sorted keys: a JSON object is unordered, and a map built in hash order would
            // make the same frame decode differently from run to run.
            let mut entries: Vec<_> = o.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Map(
                entries
                    .into_iter()
                    .map(|(k, x)| Ok((Value::from(k.as_str()), from_json(x, depth + 1)?)))
                    .collect::<Result<_, WireError>>()?,
            )
        }
    })
}

/// The login frame `{account, password, name}`.
pub fn decode_login(body: &[u8]) -> Result<Command, WireError> {
    command("login", &json_value(body)?)
}

/// A command frame `{"name": ..., "params": {...}}`; `params.rid` asks for a reply.
pub fn decode(body: &[u8]) -> Result<Request, WireError> {
    let v = json_value(body)?;
    let name = match field(&v, "name") {
        Some(Value::String(s)) => s.as_str().unwrap_or_default().to_string(),
        _ => {
            return Err(WireError::bad_frame(
                "a frame is {\"name\": <command>, \"params\": {...}}",
            ))
        }
    };
    let params = field(&v, "params")
        .cloned()
        .unwrap_or(Value::Map(Vec::new()));
    let rid = field(&params, "rid").and_then(Value::as_u64).unwrap_or(0);
    let command = command(&name, &params).map_err(|mut e| {
        if e.code == "bad_frame" {
            e.message = format!("{name}: {}", e.message);
        }
        e
    })?;
    Ok(Request { rid, command })
}

/// The status line that answers a login (spec §3.2).
pub fn login_line(result: Result<u32, &str>) -> Vec<u8> {
    match result {
        Ok(token) => format!("200 OK (token:{token:08}), welcome to lotus\n").into_bytes(),
        Err(reason) => format!("401 Unauthorized, {reason}\n").into_bytes(),
    }
}

/// Encodes what the server sends as a 2-byte-length JSON frame. `None` when the JSON is
/// longer than a 2-byte length can carry (the caller reports `too_large`).
pub fn encode(out: &Outgoing) -> Option<Vec<u8>> {
    let mut body = out.body();
    if let (Some(rid), Value::Map(m)) = (out.rid(), &mut body) {
        m.push((Value::from("rid"), Value::from(rid)));
    }
    let json = simd_json::to_string(&to_json(&body)).ok()?;
    let len = u16::try_from(json.len()).ok()?;
    let mut frame = Vec::with_capacity(2 + json.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(json.as_bytes());
    Some(frame)
}

/// MessagePack to JSON: map keys become strings (JSON has no other), binary becomes a string
/// where it is UTF-8 and an array of bytes where it is not.
pub fn to_json(v: &Value) -> OwnedValue {
    match v {
        Value::Nil => OwnedValue::Static(StaticNode::Null),
        Value::Boolean(b) => OwnedValue::from(*b),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(x), _) => OwnedValue::from(x),
            (None, Some(x)) => OwnedValue::from(x),
            _ => OwnedValue::Static(StaticNode::Null),
        },
        Value::F32(f) => OwnedValue::from(f64::from(*f)),
        Value::F64(f) if f.is_finite() => OwnedValue::from(*f),
        // JSON has no NaN or infinity; null is what rxi json.lua's peers would accept.
        Value::F64(_) => OwnedValue::Static(StaticNode::Null),
        Value::String(s) => OwnedValue::from(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Value::Binary(b) => match std::str::from_utf8(b) {
            Ok(s) => OwnedValue::from(s.to_string()),
            Err(_) => OwnedValue::Array(Box::new(
                b.iter().map(|x| OwnedValue::from(u64::from(*x))).collect(),
            )),
        },
        Value::Array(a) => OwnedValue::Array(Box::new(a.iter().map(to_json).collect())),
        Value::Map(m) => {
            let mut o = simd_json::owned::Object::with_capacity(m.len());
            for (k, x) in m {
                let key = match k {
                    Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    other => other.to_string(),
                };
                o.insert(key, to_json(x));
            }
            OwnedValue::Object(Box::new(o))
        }
        Value::Ext(..) => OwnedValue::Static(StaticNode::Null),
    }
}
