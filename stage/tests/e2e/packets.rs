//! packet-defs' generated Lua (the golden module of `packet-defs/tests/golden/`) running in
//! the real server's sandbox behind the seed's `stage.load("packet+" .. data.message, ...)`
//! idiom: valid packets from the wire (int32, int64, double, binary, BSON arrays) reach their
//! handler checked and with defaults filled, the reply is completed from the schema, and a
//! malformed packet gets the `bad_packet` answer naming the field while the connection lives
//! (or is closed, with `on_bad_packet = "close"`). The generated Rust (the bots' side) talks
//! to the same server: its frames are accepted as the engine's wire and the server's replies
//! decode into its types.

use std::io::Write;

use crate::harness::*;

#[path = "../../../packet-defs/tests/golden/all_types_packets.rs"]
mod all_types;

const MODULE: &str = include_str!("../../../packet-defs/tests/golden/all_types_packets.lua");

/// `MODE` is replaced by the on_bad_packet setting.
const START: &str = r#"
local l = broker.ready('tcp://127.0.0.1:PORT?packet=4k,16k', function ()
  return function (socket, data, addr)
    local packets = stage.require("all_types_packets")
    packets.on_bad_packet = "MODE"
    packets.receive(socket, data, addr)
  end
end)
l.close = function (s, errno) logger.info('closed socket errno ' .. errno) end
"#;

const HANDLERS: &str = r#"
return {
  login = function (socket, data)
    return { id = 7, motd = data.name .. ":" .. data.level .. ":" .. tostring(data.guest) .. ":" .. #data.token }
  end,
  move = function (socket, data)
    return { message = "moved", id = #data.path, pos = data.path[#data.path], small = -5, big = #data.items }
  end,
}
"#;

fn server(mode: &str) -> Server {
    Server::start(
        &config(""),
        &[
            ("start.lua", &START.replace("MODE", mode)),
            ("packet.lua", HANDLERS),
            ("all_types_packets.lua", MODULE),
        ],
    )
}

fn vec2(x: f64, y: Bson) -> Bson {
    Bson::Doc(vec![("x".into(), Bson::Double(x)), ("y".into(), y)])
}

fn assert_bad_packet(reply: &Bson, message: &str, field: &str, reason: &str) {
    let s = |k: &str| reply.get(k).and_then(Bson::as_str).map(str::to_string);
    assert_eq!(
        (s("message"), s("code"), s("for"), s("field"), s("reason")),
        (
            Some("error".into()),
            Some("bad_packet".into()),
            Some(message.into()),
            Some(field.into()),
            Some(reason.into())
        ),
        "{reply:?}"
    );
}

#[test]
fn valid_packets_reach_the_handler_checked_and_replies_are_completed() {
    let server = server("reply");
    let mut c = server.connect();
    c.write_all(&message(
        "login",
        &[
            ("name", Bson::str("bob")),
            ("token", Bson::Binary(0, vec![0, 255, 1])),
            ("junk", Bson::Int32(1)),
        ],
    ))
    .unwrap();
    let r = read_reply(&mut c);
    assert_eq!(r.get("message").and_then(Bson::as_str), Some("login_ok"));
    assert_eq!(r.get("id").and_then(Bson::as_i64), Some(7));
    assert_eq!(
        r.get("color").and_then(Bson::as_str),
        Some("green"),
        "default filled in the reply"
    );
    assert_eq!(
        r.get("motd").and_then(Bson::as_str),
        Some("bob:1:false:3"),
        "defaults filled in the request"
    );

    // Nested structs, a BSON array (0-based on the wire, 1-based in Lua), int32/int64/double.
    c.write_all(&message(
        "move",
        &[
            ("pos", vec2(1.0, Bson::Int32(2))),
            (
                "path",
                Bson::Array(vec![
                    vec2(0.0, Bson::Int64(0)),
                    vec2(5.5, Bson::Double(-6.0)),
                ]),
            ),
            (
                "items",
                Bson::Array(vec![Bson::Doc(vec![("id".into(), Bson::Int64(9))])]),
            ),
            (
                "grid",
                Bson::Array(vec![Bson::Array(vec![Bson::Int32(-128)])]),
            ),
        ],
    ))
    .unwrap();
    let r = read_reply(&mut c);
    assert_eq!(r.get("message").and_then(Bson::as_str), Some("moved"));
    assert_eq!(r.get("id").and_then(Bson::as_i64), Some(2));
    assert_eq!(r.get("big").and_then(Bson::as_i64), Some(1));
    let pos = r.get("pos").unwrap();
    assert_eq!(pos.get("x"), Some(&Bson::Double(5.5)));
    assert_eq!(pos.get("y").and_then(Bson::as_i64), Some(-6));
    assert_eq!(r.get("ratio"), Some(&Bson::Double(0.25)));
}

#[test]
fn a_malformed_packet_gets_bad_packet_and_the_connection_lives() {
    let server = server("reply");
    let mut c = server.connect();
    let cases: Vec<(Vec<u8>, &str, &str, &str)> = vec![
        (
            message(
                "login",
                &[("name", Bson::str("bob")), ("level", Bson::Int32(70000))],
            ),
            "login",
            "level",
            "above maximum 65535",
        ),
        (
            message(
                "login",
                &[("name", Bson::str("bob")), ("level", Bson::Double(1.5))],
            ),
            "login",
            "level",
            "not an integer",
        ),
        (message("login", &[]), "login", "name", "missing"),
        (
            message("login", &[("name", Bson::Str(vec![b'a', 0xff]))]),
            "login",
            "name",
            "invalid UTF-8",
        ),
        (
            message(
                "move",
                &[
                    ("pos", vec2(0.0, Bson::Int32(0))),
                    (
                        "path",
                        Bson::Array(vec![vec2(0.0, Bson::Int32(0)), vec2(0.0, Bson::str("up"))]),
                    ),
                ],
            ),
            "move",
            "path[2].y",
            "expected number",
        ),
        (
            message("login_ok", &[("id", Bson::Int32(1))]),
            "login_ok",
            "message",
            "not a client message",
        ),
        (
            message("teleport", &[]),
            "teleport",
            "message",
            "unknown message",
        ),
    ];
    for (packet, msg, field, reason) in cases {
        c.write_all(&packet).unwrap();
        assert_bad_packet(&read_reply(&mut c), msg, field, reason);
    }
    // The same connection is still served.
    c.write_all(&message("login", &[("name", Bson::str("amy"))]))
        .unwrap();
    assert_eq!(
        read_reply(&mut c).get("message").and_then(Bson::as_str),
        Some("login_ok")
    );
}

#[test]
fn on_bad_packet_close_answers_then_closes() {
    let server = server("close");
    let mut c = server.connect();
    c.write_all(&message("login", &[("name", Bson::Int32(5))]))
        .unwrap();
    let rest = read_until_closed(&mut c).expect("the server closes the connection");
    let reply = parse_doc(&rest);
    assert_bad_packet(reply.get("v").unwrap(), "login", "name", "expected string");
    server.wait_log("closed socket errno");
    // Other clients are unaffected.
    let mut other = server.connect();
    other
        .write_all(&message("login", &[("name", Bson::str("amy"))]))
        .unwrap();
    assert_eq!(
        read_reply(&mut other).get("message").and_then(Bson::as_str),
        Some("login_ok")
    );
}

#[test]
fn the_generated_rust_speaks_the_engine_wire_both_ways() {
    use all_types::{Color, Item, Message, Move, Vec2};
    let server = server("reply");
    let mut c = server.connect();
    let request = Move {
        pos: Vec2 { x: 1.0, y: 2.0 },
        speed: 12.5,
        facing: Some(Color::Red),
        path: vec![
            Vec2 { x: 0.0, y: 0.0 },
            Vec2 {
                x: -7.25,
                y: 1000.0,
            },
        ],
        grid: Some(vec![vec![1, 2, 3], vec![]]),
        items: vec![
            Item {
                id: 1,
                count: 2,
                color: None,
            },
            Item {
                id: 3,
                count: 4,
                color: Some(Color::Blue),
            },
        ],
        end: None,
    };
    c.write_all(&request.encode()).unwrap();
    let reply = Message::decode(&read_frame(&mut c).unwrap()).expect("the reply fits the schema");
    let Message::Moved(m) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((m.id, m.small, m.big, m.ratio), (2, -5, 2, 0.25));
    assert_eq!(
        m.pos,
        Vec2 {
            x: -7.25,
            y: 1000.0
        }
    );
    // A bot can send a bad packet on purpose (encode does not check): the server refuses it
    // by field and keeps the connection.
    let mut bad = request.clone();
    bad.items[1].count = 100;
    c.write_all(&bad.encode()).unwrap();
    assert_bad_packet(
        &read_reply(&mut c),
        "move",
        "items[2].count",
        "above maximum 99",
    );
    c.write_all(&request.encode()).unwrap();
    assert!(matches!(
        Message::decode(&read_frame(&mut c).unwrap()),
        Ok(Message::Moved(_))
    ));
}
