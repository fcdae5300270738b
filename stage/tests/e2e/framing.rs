//! `packet=IN,OUT` framing at its edges: frames split over many reads, many frames in one
//! read, exactly IN bytes and one more, impossible lengths, bad BSON. A bad frame costs only
//! its own connection: its close callback fires and every other client is still served.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

const ECHO: &str = "
local l = broker.ready('tcp://127.0.0.1:PORT?packet=64,1k', function ()
  return function (s, data) return data end
end)
l.close = function (s, errno) logger.info('closed socket ' .. s.id .. ' errno ' .. errno) end
";

fn echo_server() -> Server {
    Server::start(&config(""), &[("start.lua", ECHO)])
}

/// `{"v": {"s": "xxx..."}}` padded to exactly `len` bytes.
fn frame_of_len(len: usize) -> Vec<u8> {
    let base = doc(&[("v", Bson::Doc(vec![("s".into(), Bson::str(""))]))]).len();
    let frame = doc(&[(
        "v",
        Bson::Doc(vec![("s".into(), Bson::str(&"x".repeat(len - base)))]),
    )]);
    assert_eq!(frame.len(), len);
    frame
}

fn counter(n: i32) -> Vec<u8> {
    doc(&[("v", Bson::Doc(vec![("n".into(), Bson::Int32(n))]))])
}

fn assert_still_serving(server: &Server) {
    let mut other = server.connect();
    other.write_all(&counter(7)).unwrap();
    assert_eq!(
        read_reply(&mut other).get("n").and_then(Bson::as_i64),
        Some(7)
    );
}

#[test]
fn a_frame_split_across_many_reads_is_reassembled() {
    let server = echo_server();
    let mut client = server.connect();
    for byte in counter(42) {
        client.write_all(&[byte]).unwrap();
        client.flush().unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    assert_eq!(
        read_reply(&mut client).get("n").and_then(Bson::as_i64),
        Some(42)
    );
}

#[test]
fn many_frames_in_one_read_are_answered_in_order() {
    let server = echo_server();
    let mut client = server.connect();
    let burst: Vec<u8> = (0..200).flat_map(counter).collect();
    client.write_all(&burst).unwrap();
    for n in 0..200 {
        assert_eq!(
            read_reply(&mut client).get("n").and_then(Bson::as_i64),
            Some(n)
        );
    }
}

#[test]
fn a_frame_of_exactly_in_bytes_is_accepted() {
    let server = echo_server();
    let mut client = server.connect();
    client.write_all(&frame_of_len(64)).unwrap();
    let reply = read_reply(&mut client);
    assert_eq!(
        reply.get("s").and_then(Bson::as_str).map(str::len),
        Some(64 - 21)
    );
}

fn assert_closes_connection(bytes: &[u8], errno: i32) {
    let server = echo_server();
    let mut client = server.connect();
    client.write_all(bytes).unwrap();
    assert!(is_closed(&mut client), "connection stayed open");
    // The close callback logs the errno it got for the bad frame.
    server.wait_log(&format!("errno {errno}"));
    assert_still_serving(&server);
}

#[test]
fn a_frame_of_in_plus_one_bytes_closes_the_connection() {
    assert_closes_connection(&frame_of_len(65), libc::EMSGSIZE);
}

#[test]
fn impossible_lengths_close_the_connection() {
    assert_closes_connection(&0u32.to_le_bytes(), libc::EBADMSG);
    assert_closes_connection(&4u32.to_le_bytes(), libc::EBADMSG);
    assert_closes_connection(&0x7FFF_FFFFu32.to_le_bytes(), libc::EMSGSIZE);
}

#[test]
fn bad_bson_closes_the_connection() {
    // Right length, but the element type 0x77 does not exist and there is no terminator.
    let mut garbage = 12u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0x77, b'v', 0, 1, 2, 3, 4, 5]);
    assert_closes_connection(&garbage, libc::EBADMSG);
}

#[test]
fn a_function_sent_by_a_client_stays_a_string() {
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data) return { t = type(data.f) } end
             end)",
        )],
    );
    let mut client = server.connect();
    // A binary of the bytecode subtype: bytes from a peer must never be loaded as code.
    let bytecode = b"\x1bLJ\x02\x00garbage".to_vec();
    let frame = doc(&[(
        "v",
        Bson::Doc(vec![("f".into(), Bson::Binary(0x80, bytecode))]),
    )]);
    client.write_all(&frame).unwrap();
    assert_eq!(
        read_reply(&mut client).get("t").and_then(Bson::as_str),
        Some("string")
    );
}

#[test]
fn text_framing_answers_each_line_on_a_dual_stack_listener() {
    // spec/stage.md §11 idiom 2.
    let server = Server::start(
        &config(""),
        &[(
            "start.lua",
            "local port = broker.ready('tcp://[::]:PORT?text=2k,4k', function (s, a) return true end)
             port.receive = function (s, data) return 'HELLO\\n' end",
        )],
    );
    let mut client: TcpStream = server.connect();
    client.write_all(b"one\ntwo\nthr").unwrap();
    let mut got = vec![0u8; 12];
    std::io::Read::read_exact(&mut client, &mut got).unwrap();
    assert_eq!(&got, b"HELLO\nHELLO\n");
}
