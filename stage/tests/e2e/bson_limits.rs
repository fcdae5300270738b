//! A client's BSON cannot take the server down: doubles with any NaN bit pattern arrive as
//! NaN (on the FFI path LuaJIT would otherwise take some patterns for tagged values), and a
//! document nested deeper than 64 levels or holding more than 1,048,576 elements closes its
//! own connection with EBADMSG while other clients are served. Each test runs on both
//! receive paths: the LuaJIT FFI decoder (the default) and the Lua C API one (`"%ffi": false`).

use std::io::Write;

use crate::harness::*;

/// `codec::bson_limits::MAX_DEPTH` and `MAX_ELEMENTS`, restated: the tests pin the numbers.
const MAX_DEPTH: usize = 64;
const MAX_ELEMENTS: usize = 1 << 20;

fn server(ffi: bool, packet: &str, script: &str) -> Server {
    Server::start(
        &config(&format!(r##", "%ffi": {ffi}"##)),
        &[(
            "start.lua",
            &format!(
                "local l = broker.ready('tcp://127.0.0.1:PORT?packet={packet}', function () return true end)
                 l.close = function (s, errno) logger.info('closed ' .. s.id .. ' errno ' .. errno) end
                 l.receive = {script}"
            ),
        )],
    )
}

/// A plain request any server of this module answers with `{pong = true}`.
fn ping_is_answered(server: &Server) {
    let mut other = server.connect();
    other.write_all(&doc(&[("v", Bson::str("ping"))])).unwrap();
    assert_eq!(read_reply(&mut other).get("pong"), Some(&Bson::Bool(true)));
}

/// Bit patterns of NaNs whose payloads look like LuaJIT type tags (GC64 and 32-bit layouts:
/// string, table, function, userdata at a made-up address), signalling and all-ones NaNs,
/// the canonical ones, and the two infinities (which must stay infinities).
const ODD_BITS: [u64; 12] = [
    0xFFFD_8000_0000_1000,
    0xFFFA_0000_0000_1000,
    0xFFFB_0000_DEAD_BEE0,
    0xFFFC_8000_0000_2000,
    0xFFFF_FFFB_0000_1000,
    0xFFFF_FFF4_0000_1000,
    0x7FF0_0000_0000_0001,
    0xFFFF_FFFF_FFFF_FFFF,
    0x7FF8_0000_0000_0000,
    0xFFF8_0000_0000_0000,
    0x7FF0_0000_0000_0000,
    0xFFF0_0000_0000_0000,
];

#[test]
fn doubles_with_any_nan_bits_arrive_as_nan_and_the_server_stays_up() {
    for ffi in [true, false] {
        let server = server(
            ffi,
            "64k,64k",
            "function (s, data)
               if data == 'ping' then return { pong = true } end
               local kinds = {}
               for i, x in ipairs(data.list) do
                 kinds[i] = type(x) .. ':' .. tostring(x ~= x) .. ':' .. tostring(x + 1 ~= x + 1)
               end
               local n = data.nested.deeper.x
               return { kinds = kinds, echo = data.list, nested = type(n) .. ':' .. tostring(n ~= n) }
             end",
        );
        let doubles: Vec<Bson> = ODD_BITS
            .iter()
            .map(|&b| Bson::Double(f64::from_bits(b)))
            .collect();
        let request = doc(&[(
            "v",
            Bson::Doc(vec![
                ("list".into(), Bson::Array(doubles)),
                (
                    "nested".into(),
                    Bson::Doc(vec![(
                        "deeper".into(),
                        Bson::Doc(vec![(
                            "x".into(),
                            Bson::Double(f64::from_bits(0xFFFD_8000_0000_1000)),
                        )]),
                    )]),
                ),
            ]),
        )]);
        // Several rounds: a forged value would crash the process at once or soon after (the
        // garbage collector walks it).
        for round in 0..20 {
            let mut client = server.connect();
            client.write_all(&request).unwrap();
            let reply = read_reply(&mut client);
            let Some(kinds) = reply.get("kinds").and_then(sequence) else {
                panic!("ffi={ffi} round {round}: {reply:?}");
            };
            let kinds: Vec<&str> = kinds.into_iter().filter_map(Bson::as_str).collect();
            let mut expected = vec!["number:true:true"; ODD_BITS.len() - 2];
            expected.extend(["number:false:false"; 2]);
            assert_eq!(kinds, expected, "ffi={ffi}");
            assert_eq!(
                reply.get("nested").and_then(Bson::as_str),
                Some("number:true"),
                "ffi={ffi}"
            );
            // What the script sends back: NaNs, and the infinities unchanged.
            let Some(echo) = reply.get("echo").and_then(sequence) else {
                panic!("ffi={ffi}: {reply:?}");
            };
            assert_eq!(echo.len(), ODD_BITS.len());
            for (got, bits) in echo.iter().zip(ODD_BITS) {
                match got {
                    Bson::Double(d) if f64::from_bits(bits).is_nan() => assert!(d.is_nan()),
                    Bson::Double(d) => assert_eq!(d.to_bits(), bits),
                    other => panic!("ffi={ffi}: {bits:#x} came back as {other:?}"),
                }
            }
        }
        ping_is_answered(&server);
    }
}

/// The items of a Lua sequence as the engine sends it (keys `#1`, `#2`, ... in order).
fn sequence(b: &Bson) -> Option<Vec<&Bson>> {
    let Bson::Doc(fields) = b else { return None };
    let in_order = fields
        .iter()
        .enumerate()
        .all(|(i, (k, _))| *k == format!("#{}", i + 1));
    in_order.then(|| fields.iter().map(|(_, v)| v).collect())
}

/// `levels` documents nested under `x`, the innermost holding `x = 1`.
fn nested(levels: usize) -> Bson {
    let mut v = Bson::Int32(1);
    for _ in 0..levels {
        v = Bson::Doc(vec![("x".into(), v)]);
    }
    v
}

const DEPTH_SCRIPT: &str = "function (s, data)
  if data == 'ping' then return { pong = true } end
  local d, t = 0, data
  while type(t) == 'table' do d, t = d + 1, t.x end
  return { depth = d }
end";

#[test]
fn a_document_nested_deeper_than_64_levels_closes_its_connection_only() {
    for ffi in [true, false] {
        let server = server(ffi, "64k,64k", DEPTH_SCRIPT);
        // The top-level document is level 1, `v` level 2: MAX_DEPTH - 1 levels under it fit.
        let mut fits = server.connect();
        fits.write_all(&doc(&[("v", nested(MAX_DEPTH - 1))]))
            .unwrap();
        assert_eq!(
            read_reply(&mut fits).get("depth").and_then(Bson::as_i64),
            Some((MAX_DEPTH - 1) as i64),
            "ffi={ffi}"
        );
        for levels in [MAX_DEPTH, 1000] {
            let mut deep = server.connect();
            deep.write_all(&doc(&[("v", nested(levels))])).unwrap();
            let got =
                read_until_closed(&mut deep).expect("the deep document's connection stayed open");
            assert!(
                got.is_empty(),
                "ffi={ffi}: a reply to {levels} levels: {got:?}"
            );
        }
        server.wait_log_count(&format!("errno {}", libc::EBADMSG), 2);
        server.wait_log("bson document(s) refused since the last report");
        // The connection that fit is still served, and so is a new one.
        fits.write_all(&doc(&[("v", Bson::str("ping"))])).unwrap();
        assert_eq!(read_reply(&mut fits).get("pong"), Some(&Bson::Bool(true)));
        ping_is_answered(&server);
    }
}

/// A document `{v = "count", "" = null, "" = null, ...}` with `extra` null elements after `v`
/// (two bytes each, so the frame stays small for a million elements).
fn many_elements(extra: usize) -> Vec<u8> {
    let mut body = vec![0x02, b'v', 0];
    body.extend_from_slice(&6i32.to_le_bytes());
    body.extend_from_slice(b"count\0");
    for _ in 0..extra {
        body.extend_from_slice(&[0x0A, 0]);
    }
    let mut out = ((body.len() + 5) as i32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out.push(0);
    out
}

#[test]
fn a_document_with_more_than_a_million_elements_closes_its_connection_only() {
    for ffi in [true, false] {
        let server = server(
            ffi,
            "4m,64k",
            "function (s, data)
               if data == 'ping' then return { pong = true } end
               return { got = data }
             end",
        );
        // `v` and MAX_ELEMENTS - 1 nulls: exactly the limit.
        let mut fits = server.connect();
        fits.write_all(&many_elements(MAX_ELEMENTS - 1)).unwrap();
        assert_eq!(
            read_reply(&mut fits).get("got").and_then(Bson::as_str),
            Some("count"),
            "ffi={ffi}"
        );
        let mut over = server.connect();
        over.write_all(&many_elements(MAX_ELEMENTS)).unwrap();
        let got = read_until_closed(&mut over).expect("the connection stayed open");
        assert!(got.is_empty(), "ffi={ffi}: a reply: {got:?}");
        server.wait_log(&format!("errno {}", libc::EBADMSG));
        server.wait_log("bson document(s) refused since the last report");
        ping_is_answered(&server);
    }
}
