//! The generated Rust module (the golden `tests/golden/all_types_packets.rs`, compiled here as
//! a module): messages round-trip through encode -> frame -> decode, absent fields get their
//! defaults, frames are the engine's wire form, and bad values are refused with the same
//! paths and reasons as the generated Lua. (tests/props.rs compares it with the Lua at random.)

#[path = "golden/all_types_packets.rs"]
mod all_types;

use all_types::*;
use proptest::prelude::*;

fn moving() -> Move {
    Move {
        pos: Vec2 { x: 1.0, y: -2.5 },
        speed: 3.0,
        facing: Some(Color::Blue),
        path: vec![Vec2 { x: 0.0, y: 0.0 }, Vec2 { x: 5.5, y: 1000.0 }],
        grid: Some(vec![vec![1, -128], vec![], vec![127]]),
        items: vec![Item {
            id: 7,
            count: 99,
            color: None,
        }],
        end: Some(true),
    }
}

#[test]
fn messages_round_trip_through_the_wire_form() {
    let m = Message::Move(moving());
    let frame = m.encode();
    assert_eq!(
        u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize,
        frame.len()
    );
    assert_eq!(&frame[4..7], b"\x03v\x00", "the payload is under \"v\"");
    assert_eq!(Message::decode(&frame), Ok(m));
    let ok = Message::LoginOk(LoginOk {
        id: i64::MIN,
        color: Color::Red,
        motd: "héllo".into(),
    });
    assert_eq!(Message::decode(&ok.encode()), Ok(ok));
    assert_eq!(VERSION, 3);
}

#[test]
fn bad_values_are_refused_with_the_lua_paths_and_reasons() {
    let err = |frame: Vec<u8>| Message::decode(&frame).map(|_| ()).unwrap_err();
    let e = err(Login {
        name: "x".repeat(33),
        level: 1,
        tags: None,
        token: vec![],
        guest: false,
    }
    .encode());
    assert_eq!(
        (e.field.as_str(), e.reason.as_str()),
        ("name", "longer than 32 bytes")
    );
    let e = err(Login {
        name: "a".into(),
        level: 1,
        tags: Some(vec!["t".into(); 9]),
        token: vec![],
        guest: false,
    }
    .encode());
    assert_eq!(
        (e.field.as_str(), e.reason.as_str()),
        ("tags", "more than 8 elements")
    );
    let mut m = moving();
    m.path[1].y = 2000.0;
    let e = err(m.encode());
    assert_eq!(
        (e.field.as_str(), e.reason.as_str()),
        ("path[2].y", "above maximum 1000")
    );
    let mut m = moving();
    m.items[0].count = 0;
    let e = err(m.encode());
    assert_eq!(
        (e.field.as_str(), e.reason.as_str()),
        ("items[1].count", "below minimum 1")
    );
    let mut m = moving();
    m.path.clear();
    let e = err(m.encode());
    assert_eq!(
        (e.field.as_str(), e.reason.as_str()),
        ("path", "fewer than 1 elements")
    );
    let e = err(Moved {
        id: 1,
        pos: Vec2 {
            x: f32::NAN,
            y: 0.0,
        },
        small: 0,
        big: 0,
        ratio: 0.0,
    }
    .encode());
    assert_eq!(
        (e.field.as_str(), e.reason.as_str()),
        ("pos.x", "not finite")
    );
    let e = err(Moved {
        id: 1,
        pos: Vec2 { x: 0.0, y: 0.0 },
        small: 6,
        big: 0,
        ratio: 0.0,
    }
    .encode());
    assert_eq!(
        (e.field.as_str(), e.reason.as_str()),
        ("small", "above maximum 5")
    );
    let e = Message::decode(b"\x05\x00\x00\x00\x00").unwrap_err();
    assert_eq!(e.reason, "empty frame");
    let e = Message::decode(b"\x06\x00\x00\x00\x00").unwrap_err();
    assert_eq!(e.reason, "bad frame length");
}

proptest! {
    /// Hostile bytes never panic the decoder: random frames, and valid frames cut short or
    /// with one byte changed, give a message or an error.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        junk in proptest::collection::vec(any::<u8>(), 0..200),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let _ = Message::decode(&junk);
        let mut frame = Message::Move(moving()).encode();
        let _ = Message::decode(&frame[..cut.index(frame.len())]);
        let i = flip.index(frame.len());
        frame[i] = byte;
        let _ = Message::decode(&frame);
    }
}
