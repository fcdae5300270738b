//! Both wires: requests decode into the same commands, bad frames name what is wrong, and
//! what the server sends has the shapes of spec/lotus.md §3.4, §6.5 and §9.6.

use bytes::BytesMut;
use rmpv::Value;

use super::{compat, map, v1, Command, Outgoing};
use crate::service::lotus::channel::{Channel, Query};

fn compat_frame(json: &str) -> Vec<u8> {
    let mut f = (json.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(json.as_bytes());
    f
}

#[test]
fn compat_frames_are_cut_on_their_two_byte_length() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&compat_frame(r#"{"name":"ping"}"#));
    buf.extend_from_slice(&compat_frame("{}")[..3]);
    assert_eq!(&compat::cut(&mut buf).unwrap()[..], br#"{"name":"ping"}"#);
    assert_eq!(compat::cut(&mut buf), None);
    buf.extend_from_slice(b"}");
    assert_eq!(&compat::cut(&mut buf).unwrap()[..], b"{}");
    assert!(buf.is_empty());
}

#[test]
fn compat_commands_use_the_original_wire_names() {
    let r = compat::decode(
        br#"{"name":"update_state","params":{"statename":"alice","keys":["hp"],"value":90}}"#,
    )
    .unwrap();
    assert_eq!(r.rid, 0);
    assert_eq!(
        r.command,
        Command::UpdateState {
            statename: "alice".into(),
            keys: vec![Value::from("hp")],
            value: Value::from(90),
        }
    );
    let r = compat::decode(
        br#"{"name":"execute_state","params":{"statename":"w","funcname":"ping","params":[],"rid":4}}"#,
    )
    .unwrap();
    assert_eq!(r.rid, 4);
    assert!(
        matches!(r.command, Command::Execute { reply: false, ref params, .. } if params.is_empty())
    );
    let r = compat::decode(br#"{"name":"subscribe","params":{"channel":"chat","from":{"id":7}}}"#)
        .unwrap();
    assert_eq!(
        r.command,
        Command::Subscribe {
            channel: "chat".into(),
            from: Some(7)
        }
    );
    let r = compat::decode(br#"{"name":"channel_history","params":{"channel":"chat","last":5}}"#)
        .unwrap();
    assert_eq!(
        r.command,
        Command::ChannelHistory {
            channel: "chat".into(),
            query: Query::Last(5)
        }
    );
}

#[test]
fn compat_login_is_the_first_frame_and_is_answered_by_a_line() {
    let login = compat::decode_login(br#"{"account":"a","password":"p","name":"gate1"}"#).unwrap();
    assert_eq!(
        login,
        Command::Login {
            account: "a".into(),
            password: "p".into(),
            node: "gate1".into()
        }
    );
    assert_eq!(
        compat::login_line(Ok(42)),
        b"200 OK (token:00000042), welcome to lotus\n"
    );
    assert_eq!(
        compat::login_line(Err("wrong password")),
        b"401 Unauthorized, wrong password\n"
    );
    let err = compat::decode_login(br#"{"account":"a"}"#).unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        ("bad_frame", "`password` is missing")
    );
}

#[test]
fn bad_requests_name_what_is_wrong() {
    let e = compat::decode(b"{not json").unwrap_err();
    assert_eq!(e.code, "bad_frame");
    let e = compat::decode(br#"{"name":"launch","params":{}}"#).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        ("unknown_command", "unknown command `launch`")
    );
    let e = compat::decode(br#"{"name":"init_state","params":{"typename":1,"statename":"x"}}"#)
        .unwrap_err();
    assert_eq!(
        e.message,
        "init_state: `typename` must be a string, found number"
    );
    let e = compat::decode(br#"{"name":"channel_history","params":{"channel":"c"}}"#).unwrap_err();
    assert_eq!(
        e.message,
        "channel_history: channel_history takes exactly one of `last` and `from`"
    );
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let e = compat::decode(
        format!(r#"{{"name":"publish","params":{{"channel":"c","msg":{deep}}}}}"#).as_bytes(),
    )
    .unwrap_err();
    assert!(e.message.contains("nest deeper than 64"), "{}", e.message);
}

#[test]
fn v1_requests_round_trip() {
    let frame = v1::encode_request(
        9,
        "call",
        map([
            ("statename", Value::from("room1")),
            ("funcname", Value::from("join")),
            (
                "params",
                Value::Array(vec![Value::from("bob"), Value::from(3)]),
            ),
        ]),
    );
    let mut buf = BytesMut::from(&frame[..]);
    let body = v1::cut(&mut buf, v1::DEFAULT_MAX_FRAME).unwrap().unwrap();
    assert!(buf.is_empty());
    let r = v1::decode(&body).unwrap();
    assert_eq!(r.rid, 9);
    assert_eq!(
        r.command,
        Command::Execute {
            statename: "room1".into(),
            funcname: "join".into(),
            params: vec![Value::from("bob"), Value::from(3)],
            reply: true,
        }
    );
}

#[test]
fn v1_refuses_oversized_and_malformed_frames() {
    let mut buf = BytesMut::from(&[0u8, 0x20, 0, 1][..]);
    let e = v1::cut(&mut buf, 1024).unwrap_err();
    assert_eq!(e.code, "too_large");
    assert_eq!(v1::decode(&[0xc1]).unwrap_err().code, "bad_frame");
    let two = v1::encode_request(1, "ping", Value::Nil);
    assert_eq!(
        v1::decode(&[&two[4..], &[0xc0][..]].concat())
            .unwrap_err()
            .message,
        "1 bytes after the frame's value"
    );
    let mut deep = vec![0x91u8; 200];
    deep.push(0xc0);
    assert_eq!(v1::decode(&deep).unwrap_err().code, "bad_frame");
}

fn v1_value(frame: &[u8]) -> Value {
    let mut rd = &frame[4..];
    rmpv::decode::read_value(&mut rd).unwrap()
}

#[test]
fn replies_and_events_have_the_spec_shapes() {
    let mut ch = Channel::new(5, 2);
    for m in ["a", "b", "c"] {
        ch.publish(Value::from(m));
    }
    let out = Outgoing::ChannelHistory {
        rid: 3,
        channel: "chat".into(),
        history: ch.history(Query::From { id: 1, limit: 10 }),
    };
    let json = compat::encode(&out).unwrap();
    assert_eq!(
        std::str::from_utf8(&json[2..]).unwrap(),
        r#"{"type":"channel_history","rid":3,"channel":"chat","epoch":5,"first_id":2,"last_id":3,"truncated":true,"items":[{"id":2,"msg":"b"},{"id":3,"msg":"c"}]}"#
    );
    let v = v1_value(&v1::encode(&out));
    assert_eq!(v[0].as_u64(), Some(v1::KIND_OK));
    assert_eq!(v[1].as_u64(), Some(3));
    assert_eq!(v[3]["last_id"].as_u64(), Some(3));

    let msg = Outgoing::ChannelMessage {
        channel: "chat".into(),
        epoch: 5,
        id: 4,
        msg: Value::Array(vec![Value::from("hi")]),
    };
    let json = compat::encode(&msg).unwrap();
    assert_eq!(
        std::str::from_utf8(&json[2..]).unwrap(),
        r#"{"type":"channel_message","channel":"chat","epoch":5,"id":4,"msg":["hi"]}"#
    );
    let v = v1_value(&v1::encode(&msg));
    assert_eq!(
        (v[0].as_u64(), v[2].as_str()),
        (Some(v1::KIND_EVENT), Some("channel_message"))
    );
    assert_eq!(v[3]["msg"][0].as_str(), Some("hi"));

    let err = Outgoing::Err {
        rid: 8,
        code: "unknown_handler".into(),
        detail: map([("message", Value::from("no handler `x`"))]),
    };
    let v = v1_value(&v1::encode(&err));
    assert_eq!(
        (v[0].as_u64(), v[1].as_u64(), v[2].as_str()),
        (Some(v1::KIND_ERR), Some(8), Some("unknown_handler"))
    );
}

#[test]
fn a_compat_frame_too_long_for_two_bytes_is_refused() {
    let big = Outgoing::ChannelMessage {
        channel: "c".into(),
        epoch: 1,
        id: 1,
        msg: Value::from("x".repeat(70_000)),
    };
    assert_eq!(compat::encode(&big), None);
}
