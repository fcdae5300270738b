//! lotus wire v1 framing (spec/lotus.md §9.6), written here from the spec so the client does
//! not depend on the engine: a 4-byte big-endian body length, then one MessagePack array
//! `[kind, rid, name, args]`. The client sends kind 0 (request); the server answers kind 1
//! (`ok`, `name` = the command, `args` = its result) or kind 2 (`err`, `name` = the error
//! code, `args` = details) for each request with a non-zero rid, and pushes kind 3 (event,
//! `name` = the event type, `args` = its body).

use rmpv::Value;

pub const KIND_REQUEST: u64 = 0;
pub const KIND_OK: u64 = 1;
pub const KIND_ERR: u64 = 2;
pub const KIND_EVENT: u64 = 3;

/// How deep a received value may nest: a hostile or broken server must not exhaust the
/// decoder's stack.
const MAX_DEPTH: usize = 128;

/// One frame from the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: u64,
    pub rid: u64,
    pub name: String,
    pub args: Value,
}

/// The whole frame (header included) of request `name` with parameter map `args`.
pub fn encode_request(rid: u64, name: &str, args: Value) -> Vec<u8> {
    let v = Value::Array(vec![
        Value::from(KIND_REQUEST),
        Value::from(rid),
        Value::from(name),
        args,
    ]);
    let mut out = vec![0; 4];
    rmpv::encode::write_value(&mut out, &v).expect("writing to a Vec cannot fail");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// The body length a 4-byte header announces.
pub fn body_len(header: [u8; 4]) -> usize {
    u32::from_be_bytes(header) as usize
}

/// Decodes one frame body (without its header).
pub fn decode(body: &[u8]) -> Result<Frame, String> {
    let mut rd = body;
    let v = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| format!("not MessagePack: {e}"))?;
    if !rd.is_empty() {
        return Err(format!("{} bytes after the frame's value", rd.len()));
    }
    let Value::Array(items) = v else {
        return Err("a frame is an array [kind, rid, name, args]".into());
    };
    let [kind, rid, name, args] = <[Value; 4]>::try_from(items)
        .map_err(|v| format!("a frame has 4 elements, found {}", v.len()))?;
    Ok(Frame {
        kind: kind.as_u64().ok_or("kind is not an integer")?,
        rid: rid.as_u64().ok_or("rid is not an integer")?,
        name: name.as_str().ok_or("name is not a string")?.to_string(),
        args,
    })
}

/// `{k1 = v1, ...}` with string keys: a request's parameter map.
pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// The value under string key `key` of a map (`None` for a missing key or nil).
pub fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_nil()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_be32_length_and_a_four_element_array() {
        let f = encode_request(7, "ping", map([]));
        // fixarray(4), 0, 7, fixstr "ping", fixmap(0)
        assert_eq!(
            f,
            [0, 0, 0, 9, 0x94, 0, 7, 0xa4, b'p', b'i', b'n', b'g', 0x80]
        );
        assert_eq!(body_len(f[..4].try_into().unwrap()), f.len() - 4);
    }

    #[test]
    fn a_large_rid_and_nested_args_round_trip() {
        let args = map([("keys", Value::Array(vec!["a".into(), 3.into()]))]);
        let f = encode_request(u64::MAX, "get", args.clone());
        let d = decode(&f[4..]).unwrap();
        assert_eq!(
            d,
            Frame {
                kind: KIND_REQUEST,
                rid: u64::MAX,
                name: "get".into(),
                args
            }
        );
        assert_eq!(body_len(f[..4].try_into().unwrap()), f.len() - 4);
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        assert!(decode(&[]).unwrap_err().contains("MessagePack"));
        assert!(decode(&[0x94, 1]).unwrap_err().contains("MessagePack"));
        assert!(decode(&[0x01]).unwrap_err().contains("array"));
        assert!(decode(&[0x92, 1, 2]).unwrap_err().contains("4 elements"));
        assert!(decode(&[0x94, 1, 2, 0xa1, b'x', 0xc0, 0x00])
            .unwrap_err()
            .contains("after"));
        // 200 nested arrays exceed the depth limit instead of the stack.
        let mut deep = vec![0x94, 1, 0, 0xa1, b'x'];
        deep.extend(std::iter::repeat_n(0x91, 200));
        deep.push(0xc0);
        assert!(decode(&deep).is_err());
    }

    #[test]
    fn field_skips_nil_and_non_maps() {
        let m = map([("a", Value::Nil), ("b", 2.into())]);
        assert_eq!(field(&m, "a"), None);
        assert_eq!(field(&m, "b"), Some(&Value::from(2)));
        assert_eq!(field(&Value::from(1), "b"), None);
    }
}
