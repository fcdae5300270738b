//! The FFI packet path and the classic Lua C API path (`"%ffi": false`) put the same bytes
//! on the wire for every broker call: the same commits, the same echoes of every BSON type a
//! client may send, the same socket fields.
//!
//! LuaJIT seeds its string hash per Lua state, so the order in which a table's string keys
//! are iterated (and therefore encoded) differs from one process to the next, whichever path
//! encodes it. Raw commits are compared byte for byte; BSON frames are compared with each
//! document's fields in key order, everything else (types, lengths, values) exact.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::*;

const SCRIPT: &str = r##"
broker.ready('tcp://127.0.0.1:PORT?packet=64k,64k', function ()
  return function (s, data)
    if data.message == "raw" then
      for _, v in ipairs({ "", "plain", "with\0nul", string.rep("x", 5000), 42, 1.5, true }) do
        s.commit(v)
      end
      return nil
    end
    if data.message ~= "tables" then return data end
    local values = {
      {},
      { message = "login", n = 1, f = 1.5, neg = -3, big = 2^60, huge = 2^70, t = true, no = false },
      { nested = { a = { b = { c = "d", list = { 1, 2, 3, "x" } } } } },
      { 1, 2, 3, [5] = 5, [0] = "zero", [-7] = "neg", k = "v", ["#odd"] = 1 },
      { nan = 0/0, inf = 1/0, ninf = -1/0, negzero = -0.0, tiny = 1e-300 },
      { ["typed@i"] = 5, ["when@D"] = 1700000000000, ["list@Ai"] = { 1, 2 } },
      { same = s[0] == s.id,
        peer = broker.ntoa(s[1]):match("^127%.0%.0%.1:%d+$") ~= nil,
        ["local"] = broker.ntoa(s[-1]) == "127.0.0.1:" .. PORT },
    }
    local counts = {}
    for i, v in ipairs(values) do counts[i] = s.commit(v) end
    s.commit({ counts = counts })
    return { done = true }
  end
end)
"##;

/// Bytes of the "raw" battery: "", "plain", "with\0nul", 5000 x, "42", "1.5", "true".
const RAW_LEN: usize = 5 + 8 + 5000 + 2 + 3 + 4;

/// A document with one element of every BSON type a client may send.
fn every_type() -> Vec<u8> {
    doc(&[(
        "v",
        Bson::Doc(vec![
            ("double".into(), Bson::Double(2.25)),
            ("string".into(), Bson::str("héllo")),
            (
                "doc".into(),
                Bson::Doc(vec![
                    ("#1".into(), Bson::str("one")),
                    ("#20".into(), Bson::Int32(20)),
                ]),
            ),
            (
                "array".into(),
                Bson::Array(vec![Bson::Int32(1), Bson::Null, Bson::str("three")]),
            ),
            ("binary".into(), Bson::Binary(0, vec![0, 1, 2, 255])),
            (
                "bytecode".into(),
                Bson::Binary(0x80, b"\x1bLJ not code".to_vec()),
            ),
            ("bool".into(), Bson::Bool(true)),
            ("null".into(), Bson::Null),
            ("int32".into(), Bson::Int32(-5)),
            ("int64".into(), Bson::Int64(1 << 40)),
            ("bigint".into(), Bson::Int64(i64::MAX)),
            ("#0".into(), Bson::str("not an index")),
            ("#007".into(), Bson::str("not an index either")),
        ]),
    )])
}

/// Runs the battery against a server with the given `%ffi`: returns the raw bytes of the
/// string/number commits, and every BSON frame (echoes of client documents, table commits).
fn wire(ffi: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
    let server = Server::start(
        &config(&format!(r##", "%ffi": {ffi}"##)),
        &[("start.lua", SCRIPT)],
    );
    let mut client = server.connect();
    client.write_all(&message("raw", &[])).unwrap();
    let mut raw = vec![0u8; RAW_LEN];
    client.read_exact(&mut raw).unwrap();
    client.write_all(&every_type()).unwrap();
    client
        .write_all(&message("echo", &[("n", Bson::Int32(1))]))
        .unwrap();
    client.write_all(&message("tables", &[])).unwrap();
    let mut frames = Vec::new();
    loop {
        let frame = read_frame(&mut client).expect("frame");
        let done = parse_doc(&frame)
            .get("v")
            .and_then(|v| v.get("done"))
            .is_some();
        frames.push(frame);
        if done {
            break;
        }
    }
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        client.read(&mut [0u8; 1]).is_err(),
        "unexpected extra bytes"
    );
    assert!(!server.log().contains("failed"), "{}", server.log());
    (raw, frames)
}

/// A document with its fields in key order, recursively (arrays keep their order); doubles
/// become their bit patterns so NaN compares equal to the same NaN.
fn sorted(b: Bson) -> Bson {
    match b {
        Bson::Double(f) => Bson::Str(format!("double bits {:016x}", f.to_bits()).into_bytes()),
        Bson::Doc(mut fields) => {
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Bson::Doc(fields.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Bson::Array(items) => Bson::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[test]
fn the_ffi_path_and_the_c_api_path_send_the_same_bytes() {
    let (fast_raw, fast_frames) = wire(true);
    let (classic_raw, classic_frames) = wire(false);
    assert_eq!(fast_raw, classic_raw, "raw commits differ");
    assert_eq!(fast_frames.len(), classic_frames.len());
    for (fast, classic) in fast_frames.iter().zip(&classic_frames) {
        assert_eq!(fast.len(), classic.len(), "frame lengths differ");
        assert_eq!(sorted(parse_doc(fast)), sorted(parse_doc(classic)));
    }
    // Socket fields through the FFI (`s[-1]`) and the engine agree.
    let fields = parse_doc(&fast_frames[fast_frames.len() - 3]);
    let v = fields.get("v").unwrap();
    for key in ["same", "peer", "local"] {
        assert_eq!(v.get(key), Some(&Bson::Bool(true)), "{key}: {fields:?}");
    }
}
