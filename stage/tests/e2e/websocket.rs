//! `broker.ready("ws://...")` from a WebSocket client's side (tungstenite's blocking client,
//! as a browser would talk): BSON frames echoed one per binary message (the reply bytes
//! checked), text framing over text messages, ping/pong, the close handshake reaching the
//! close callback, a wrong upgrade path refused with 404, an oversized message or a reader
//! that overflows `OUT` costing only its own connection, `maxconn` counting WebSocket
//! clients, `wss://` and WebSocket joins refused, and a shutdown that sends a close frame.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::harness::*;

/// A BSON echo on `/game`; `closes` answers with the errno of every close callback so far
/// (kept in the process-wide store `__`: callbacks are re-created on every core), `flood`
/// commits `n` replies of 500 bytes in one callback.
const ECHO: &str = "
local l = broker.ready('ws://127.0.0.1:PORT/game?packet=1k,2k&OPTIONS', function ()
  return function (s, data)
    if data.message == 'closes' then return { closes = __.closes or '' } end
    if data.message == 'flood' then
      for i = 1, data.n do s.commit({ pad = string.rep('x', 500) }) end
      return
    end
    return data
  end
end)
l.close = function (s, errno)
  __('closes', function (old) return (old or '') .. tostring(errno) .. ',' end)
end
";

type Client = WebSocket<TcpStream>;

fn echo_server(options: &str) -> Server {
    Server::start(
        &config(""),
        &[("start.lua", &ECHO.replace("OPTIONS", options))],
    )
}

/// A WebSocket client of `server` on `path`, or the error that refused it.
fn try_ws(server: &Server, path: &str) -> Result<Client, String> {
    let stream = server.connect();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let url = format!("ws://127.0.0.1:{}{path}", server.port);
    tungstenite::client(url.as_str(), stream)
        .map(|(ws, _)| ws)
        .map_err(|err| err.to_string())
}

fn ws(server: &Server) -> Client {
    try_ws(server, "/game").expect("websocket upgrade")
}

/// The next data message (pings and pongs skipped).
fn next_data(client: &mut Client) -> Message {
    loop {
        match client.read().expect("a message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// Reads until the server's close frame; returns its code.
fn close_code(client: &mut Client) -> Option<CloseCode> {
    loop {
        match client.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => continue,
            Err(err) => panic!("no close frame: {err}"),
        }
    }
}

/// `{"v": {"s": text}}`: echoed, the reply is the same bytes.
fn said(text: &str) -> Vec<u8> {
    doc(&[("v", Bson::Doc(vec![("s".into(), Bson::str(text))]))])
}

/// Whether `client` gets its frame echoed back.
fn echoes(client: &mut Client, text: &str) -> bool {
    if client.send(Message::binary(said(text))).is_err() {
        return false;
    }
    matches!(client.read(), Ok(Message::Binary(reply)) if reply[..] == said(text)[..])
}

/// The close-callback errnos the script has seen so far.
fn closes(server: &Server) -> Vec<i32> {
    let mut client = ws(server);
    client
        .send(Message::binary(message("closes", &[])))
        .unwrap();
    let Message::Binary(reply) = next_data(&mut client) else {
        panic!("a binary reply")
    };
    let v = parse_doc(&reply).get("v").cloned().unwrap();
    let list = v.get("closes").and_then(Bson::as_str).unwrap_or("");
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn bson_frames_are_echoed_one_per_binary_message() {
    let server = echo_server("");
    let mut client = ws(&server);
    for text in ["hello", "", &"long ".repeat(150)] {
        client.send(Message::binary(said(text))).unwrap();
        assert_eq!(next_data(&mut client), Message::binary(said(text)));
    }
    // Two frames in one message: two replies, one message each.
    client
        .send(Message::binary([said("a"), said("b")].concat()))
        .unwrap();
    assert_eq!(next_data(&mut client), Message::binary(said("a")));
    assert_eq!(next_data(&mut client), Message::binary(said("b")));
    // The same values as a TCP client gets: a table reply decodes as BSON with `v`.
    client
        .send(Message::binary(message("echo", &[("n", Bson::Int32(7))])))
        .unwrap();
    let Message::Binary(reply) = next_data(&mut client) else {
        panic!("a binary reply")
    };
    let v = parse_doc(&reply).get("v").cloned().unwrap();
    assert_eq!(v.get("n").and_then(Bson::as_i64), Some(7));
    assert_eq!(v.get("message").and_then(Bson::as_str), Some("echo"));
}

#[test]
fn text_framing_runs_over_text_messages() {
    let script = "
broker.ready('ws://127.0.0.1:PORT/chat?text=256,1k', function ()
  return function (s, line) return 'you said: ' .. line end
end)
";
    let server = Server::start(&config(""), &[("start.lua", script)]);
    let mut client = try_ws(&server, "/chat").unwrap();
    // A text message is one line: `data` ends with the newline a TCP client would send.
    client.send(Message::text("hi")).unwrap();
    assert_eq!(next_data(&mut client), Message::text("you said: hi\n"));
    client.send(Message::text("one\ntwo\n")).unwrap();
    assert_eq!(next_data(&mut client), Message::text("you said: one\n"));
    assert_eq!(next_data(&mut client), Message::text("you said: two\n"));
}

#[test]
fn a_ping_is_answered_with_a_pong() {
    let server = echo_server("");
    let mut client = ws(&server);
    client
        .send(Message::Ping(b"still there?".to_vec().into()))
        .unwrap();
    let pong = loop {
        if let Message::Pong(data) = client.read().unwrap() {
            break data;
        }
    };
    assert_eq!(&pong[..], b"still there?");
    assert!(echoes(&mut client, "after the ping"));
}

#[test]
fn the_close_handshake_runs_the_close_callback() {
    let server = echo_server("");
    let mut client = ws(&server);
    assert!(echoes(&mut client, "hi"));
    client.close(None).unwrap();
    // The server answers the close frame, then ends the connection.
    let answered = loop {
        match client.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break true,
            Err(_) => break false,
        }
    };
    assert!(answered, "the close frame was not answered");
    server.wait_until("the close callback ran with errno 0", || {
        closes(&server).contains(&0)
    });
}

#[test]
fn a_wrong_path_is_refused_with_404() {
    let server = echo_server("");
    let mut raw = server.connect();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(
        b"GET /lobby HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    // The client library sees the refusal too; the right path still works.
    let refused = try_ws(&server, "/").err().unwrap_or_default();
    assert!(refused.contains("404"), "{refused}");
    let mut kept = ws(&server);
    assert!(echoes(&mut kept, "still here"));
    // The refused upgrades never reached the script: no close callback for them.
    assert_eq!(closes(&server), Vec::<i32>::new());
}

#[test]
fn an_oversized_message_closes_only_its_connection() {
    let server = echo_server("");
    let mut other = ws(&server);
    let mut client = ws(&server);
    // 2 KiB: more than IN (1k), refused from its header, before it is buffered.
    client
        .send(Message::binary(said(&"x".repeat(2048))))
        .unwrap();
    assert_eq!(close_code(&mut client), Some(CloseCode::Size));
    assert!(echoes(&mut other, "unaffected"));
    server.wait_until("the close callback saw EMSGSIZE", || {
        closes(&server).contains(&libc::EMSGSIZE)
    });
}

#[test]
fn output_past_out_closes_with_enobufs_and_a_policy_close() {
    let server = echo_server("");
    let mut other = ws(&server);
    let mut client = ws(&server);
    // Ten replies of about 530 bytes committed in one callback: past OUT (2k).
    client
        .send(Message::binary(message("flood", &[("n", Bson::Int32(10))])))
        .unwrap();
    assert_eq!(close_code(&mut client), Some(CloseCode::Policy));
    assert!(echoes(&mut other, "unaffected"));
    server.wait_until("the close callback saw ENOBUFS", || {
        closes(&server).contains(&libc::ENOBUFS)
    });
}

#[test]
fn maxconn_counts_websocket_clients() {
    let server = echo_server("maxconn=2");
    // A place can stay taken for a moment after its client went away (the readiness probe):
    // retry until two clients are served.
    let mut held: Vec<Client> = Vec::new();
    while held.len() < 2 {
        let client = server.wait_for("a websocket client is served", || {
            let mut c = try_ws(&server, "/game").ok()?;
            echoes(&mut c, "in").then_some(c)
        });
        held.push(client);
    }
    // The third is closed before its upgrade is answered.
    assert!(
        try_ws(&server, "/game").is_err(),
        "a third client was served"
    );
    server.wait_log("new connection(s) closed at once: over maxconn=2");
    for client in held.iter_mut() {
        assert!(echoes(client, "still"));
    }
    // One leaves (close handshake): its place is free again.
    let mut gone = held.remove(0);
    gone.close(None).unwrap();
    while gone.read().is_ok() {}
    let mut again = server.wait_for("the freed place is taken", || {
        let mut c = try_ws(&server, "/game").ok()?;
        echoes(&mut c, "again").then_some(c)
    });
    assert!(echoes(&mut again, "served"));
}

#[test]
fn wss_and_a_websocket_join_are_refused() {
    let script = format!(
        "{ECHO}
local ok, err = pcall(broker.join, 'ws://127.0.0.1:1/x', function () end)
logger.info('join ws: ' .. tostring(ok) .. ' ' .. tostring(err))
logger.info('ready wss: ' .. tostring(broker.ready('wss://127.0.0.1:1/x', function () end)))
"
    );
    let server = Server::start(
        &config(""),
        &[("start.lua", &script.replace("OPTIONS", ""))],
    );
    server.wait_log("join ws: false");
    server.wait_log("Unsupported type (ws)");
    // EINVAL, with the reason in the log.
    server.wait_log(&format!("ready wss: {}", libc::EINVAL));
    server.wait_log("terminate TLS in a proxy");
    assert!(echoes(&mut ws(&server), "served"));
}

#[test]
fn a_shutdown_closes_websocket_clients_with_a_close_frame() {
    let mut server = echo_server("");
    let mut client = ws(&server);
    assert!(echoes(&mut client, "before"));
    server.signal(libc::SIGTERM);
    assert_eq!(close_code(&mut client), Some(CloseCode::Normal));
    assert!(server.wait_exit().success());
}
