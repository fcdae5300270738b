//! lotus wire v1 (spec/lotus.md §9.6): a 4-byte big-endian body length, then a MessagePack
//! array `[kind, rid, name, args]`. Requests have kind 0 and a parameter map as `args`;
//! the server answers kind 1 (`ok`: `name` is the command, `args` its result) or kind 2
//! (`err`: `name` is the error code, `args` the details) for every request with a non-zero
//! `rid`, and pushes events as kind 3 (`name` is the event type, `args` its body).
//!
//! Login is an ordinary request (`login`) answered by an ordinary reply: unlike the compat
//! wire there is no bare status line.

use bytes::{Buf, Bytes, BytesMut};
use rmpv::Value;

use super::{command, Outgoing, Request, WireError};

pub const KIND_REQUEST: u64 = 0;
pub const KIND_OK: u64 = 1;
pub const KIND_ERR: u64 = 2;
pub const KIND_EVENT: u64 = 3;

/// The default largest frame body a v1 connection accepts (spec §9.6: 1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// How deep a request's values may nest; deeper is `bad_frame` (a hostile frame must not
/// exhaust the stack of the decoder or of the Lua that receives it).
pub const MAX_DEPTH: usize = 64;

/// Cuts the next frame body off `buf`: `Ok(None)` when more bytes are needed, an error when
/// the announced length exceeds `max` (checked before anything is buffered for it).
pub fn cut(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = (&buf[..4]).get_u32() as usize;
    if len > max {
        return Err(WireError {
            code: "too_large",
            message: format!("frame of {len} bytes exceeds the limit of {max} bytes (`max_frame`)"),
        });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Decodes one frame body into a request.
pub fn decode(body: &[u8]) -> Result<Request, WireError> {
    let mut rd = body;
    let value = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| WireError::bad_frame(format!("not MessagePack: {e}")))?;
    if !rd.is_empty() {
        return Err(WireError::bad_frame(format!(
            "{} bytes after the frame's value",
            rd.len()
        )));
    }
    let Value::Array(items) = value else {
        return Err(WireError::bad_frame(
            "a frame is an array [kind, rid, name, args]",
        ));
    };
    let [kind, rid, name, args] = <[Value; 4]>::try_from(items)
        .map_err(|v| WireError::bad_frame(format!("a frame has 4 elements, found {}", v.len())))?;
    if kind.as_u64() != Some(KIND_REQUEST) {
        return Err(WireError::bad_frame(
            "a client sends requests only (kind 0)",
        ));
    }
    let rid = rid
        .as_u64()
        .ok_or_else(|| WireError::bad_frame("rid must be a non-negative integer"))?;
    let name = name
        .as_str()
        .ok_or_else(|| WireError::bad_frame("the command name must be a string"))?;
    let command = command(name, &args).map_err(|mut e| {
        if e.code == "bad_frame" {
            e.message = format!("{name}: {}", e.message);
        }
        e
    })?;
    Ok(Request { rid, command })
}

/// Encodes one request (the client side: tests, the Rust client, bots).
pub fn encode_request(rid: u64, name: &str, args: Value) -> Vec<u8> {
    frame(&Value::Array(vec![
        Value::from(KIND_REQUEST),
        Value::from(rid),
        Value::from(name),
        args,
    ]))
}

/// Encodes what the server sends, header included.
pub fn encode(out: &Outgoing) -> Vec<u8> {
    let (kind, rid, name, args) = match out {
        Outgoing::Ok { rid, name, result } => (KIND_OK, *rid, name.as_str(), result.clone()),
        Outgoing::Err { rid, code, detail } => (KIND_ERR, *rid, code.as_str(), detail.clone()),
        Outgoing::ChannelHistory { rid, .. } => (KIND_OK, *rid, "channel_history", out.body()),
        Outgoing::ChannelMessage { .. } => (KIND_EVENT, 0, "channel_message", out.body()),
        Outgoing::ChannelDeleted { .. } => (KIND_EVENT, 0, "channel_deleted", out.body()),
        Outgoing::ChannelTruncated { .. } => (KIND_EVENT, 0, "channel_truncated", out.body()),
    };
    frame(&Value::Array(vec![
        Value::from(kind),
        Value::from(rid),
        Value::from(name),
        args,
    ]))
}

fn frame(v: &Value) -> Vec<u8> {
    let mut out = vec![0; 4];
    rmpv::encode::write_value(&mut out, v).expect("writing to a Vec cannot fail");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}
