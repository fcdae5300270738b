//! The WebSocket task below the binary: the upgrade (right path, wrong path, not an upgrade),
//! the mapping between messages and frames both ways (packet, text), ping/pong, the close
//! handshake from either side and the input limit, on a real glommio executor with the
//! [`Recorder`] as owner. The client is tungstenite's blocking client on a std thread (an
//! independent peer: it does its own masking and handshake), joined without blocking the
//! executor.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use super::admission::{Gate, Limits};
use super::id::listener_id;
use super::listener::{self, Endpoint};
use super::testing::*;
use super::ws::first_message;
use crate::codec::framing::{FrameSpec, Framing};
use crate::notify::Notify;

/// Starts a `ws://127.0.0.1:PORT/ws` accept loop for `events`.
fn listen_ws(events: &Rc<Recorder>, frame: FrameSpec, limits: Limits) -> Server {
    let socket = listener::bind("127.0.0.1:0".parse().unwrap()).expect("bind a loopback port");
    let addr = socket.local_addr().expect("the listener's address");
    let stop = Notify::default();
    let endpoint = Endpoint {
        id: listener_id(1),
        addr,
        frame,
        gate: Gate::new(listener_id(1), limits),
        websocket: Some(Arc::from("/ws")),
    };
    glommio::spawn_local(listener::accept_loop(
        events.clone(),
        endpoint,
        Some(socket),
        stop.clone(),
    ))
    .detach();
    Server { addr, stop }
}

fn text_spec(input: usize, output: usize) -> FrameSpec {
    FrameSpec {
        framing: Framing::Text,
        input,
        output,
    }
}

type Client = WebSocket<TcpStream>;

/// Runs `talk` on a std thread with a WebSocket client connected to `addr` at `path`.
fn client<T: Send + 'static>(
    addr: SocketAddr,
    path: &str,
    talk: impl FnOnce(&mut Client) -> T + Send + 'static,
) -> JoinHandle<T> {
    let url = format!("ws://{addr}{path}");
    std::thread::spawn(move || {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
        talk(&mut ws)
    })
}

/// Runs `talk` on a std thread with a plain TCP connection to `addr`.
fn raw_client<T: Send + 'static>(
    addr: SocketAddr,
    talk: impl FnOnce(&mut TcpStream) -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        talk(&mut stream)
    })
}

/// Waits for a client thread without blocking the executor the server runs on.
async fn join<T>(handle: JoinHandle<T>) -> T {
    within("the client thread", async {
        while !handle.is_finished() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The next data message, answering nothing (the client's own reads queue its pongs).
fn next_data(ws: &mut Client) -> Message {
    loop {
        match ws.read().expect("a message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// Reads until the server's close frame; returns its code.
fn close_code(ws: &mut Client) -> Option<CloseCode> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => continue,
            Err(err) => panic!("no close frame: {err}"),
        }
    }
}

#[test]
fn one_packet_frame_per_binary_message_both_ways() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen_ws(&events, packet_spec(64, 256), Limits::default());
        let frames = vec![packet(5, 1), packet(20, 2), packet(64, 3)];
        let sent = frames.clone();
        let got = join(client(server.addr, "/ws", move |ws| {
            for frame in &sent {
                ws.send(Message::binary(frame.clone())).unwrap();
            }
            let replies: Vec<Message> = (0..3).map(|_| next_data(ws)).collect();
            ws.close(None).unwrap();
            // The server answers the close: the handshake completes.
            while ws.read().is_ok() {}
            replies
        }))
        .await;
        let want: Vec<Message> = frames.iter().map(|f| Message::binary(f.clone())).collect();
        assert_eq!(got, want);
        let conn = events.first_conn().await;
        assert_eq!(events.frames_of(conn.id), frames);
        assert_eq!(events.closed_with(conn.id).await, 0);
        assert_eq!(events.closes_of(conn.id), [0]);
        server.stop.fire();
    });
}

#[test]
fn several_frames_in_one_message_are_cut_and_a_split_frame_closes() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen_ws(&events, packet_spec(64, 256), Limits::default());
        let (one, two) = (packet(10, 1), packet(12, 2));
        let both = [one.clone(), two.clone()].concat();
        let got = join(client(server.addr, "/ws", move |ws| {
            ws.send(Message::binary(both)).unwrap();
            let replies = vec![next_data(ws), next_data(ws)];
            // Half a frame in a message: bad input.
            ws.send(Message::binary(packet(20, 3)[..8].to_vec()))
                .unwrap();
            (replies, close_code(ws))
        }))
        .await;
        // Replies are one message per frame.
        assert_eq!(got.0, vec![Message::binary(one), Message::binary(two)]);
        assert_eq!(got.1, Some(CloseCode::Invalid));
        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, libc::EBADMSG);
        server.stop.fire();
    });
}

#[test]
fn text_messages_are_lines_and_replies_are_text_messages() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen_ws(&events, text_spec(64, 256), Limits::default());
        let got = join(client(server.addr, "/ws", |ws| {
            ws.send(Message::text("hello")).unwrap();
            let first = next_data(ws);
            ws.send(Message::text("a\nb\n")).unwrap();
            (first, next_data(ws), next_data(ws))
        }))
        .await;
        assert_eq!(
            got,
            (
                Message::text("hello\n"),
                Message::text("a\n"),
                Message::text("b\n")
            )
        );
        let conn = events.first_conn().await;
        assert_eq!(
            events.frames_of(conn.id),
            [b"hello\n".to_vec(), b"a\n".to_vec(), b"b\n".to_vec()]
        );
        server.stop.fire();
    });
}

#[test]
fn a_ping_is_answered_with_its_pong() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen_ws(&events, packet_spec(64, 256), Limits::default());
        let pong = join(client(server.addr, "/ws", |ws| {
            ws.send(Message::Ping(b"are you there".to_vec().into()))
                .unwrap();
            loop {
                if let Message::Pong(data) = ws.read().unwrap() {
                    return data.to_vec();
                }
            }
        }))
        .await;
        assert_eq!(pong, b"are you there");
        let conn = events.first_conn().await;
        assert!(events.frames_of(conn.id).is_empty());
        server.stop.fire();
    });
}

#[test]
fn a_message_longer_than_in_closes_with_1009() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen_ws(&events, packet_spec(64, 256), Limits::default());
        let code = join(client(server.addr, "/ws", |ws| {
            ws.send(Message::binary(packet(65, 1))).unwrap();
            close_code(ws)
        }))
        .await;
        assert_eq!(code, Some(CloseCode::Size));
        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, libc::EMSGSIZE);
        assert!(events.frames_of(conn.id).is_empty());
        server.stop.fire();
    });
}

#[test]
fn a_close_from_the_server_sends_a_close_frame_after_the_replies() {
    run_local(|| async {
        // The frame tagged 9 is answered, then the connection is closed (socket.close()).
        let events = Rc::new(Recorder::new().on_frame(|conn, frame| {
            conn.append(frame).map_err(|e| e.to_string())?;
            if frame[4] == 9 {
                conn.request_close(0);
            }
            Ok(())
        }));
        let server = listen_ws(&events, packet_spec(64, 256), Limits::default());
        let got = join(client(server.addr, "/ws", |ws| {
            ws.send(Message::binary(packet(8, 9))).unwrap();
            (next_data(ws), close_code(ws))
        }))
        .await;
        assert_eq!(
            got,
            (Message::binary(packet(8, 9)), Some(CloseCode::Normal))
        );
        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, 0);
        server.stop.fire();
    });
}

/// Sends `request` on a plain connection and returns the server's whole answer.
fn http_answer(addr: SocketAddr, request: String) -> JoinHandle<String> {
    raw_client(addr, move |stream| {
        // A server that drops the connection at once may make the write fail: the answer
        // (nothing) is what counts.
        let _ = stream.write_all(request.as_bytes());
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
}

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[test]
fn the_upgrade_answers_101_on_the_path_and_404_or_400_otherwise() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen_ws(&events, packet_spec(64, 256), Limits::default());
        let wrong = join(http_answer(server.addr, upgrade_request("/other"))).await;
        assert!(wrong.starts_with("HTTP/1.1 404 Not Found\r\n"), "{wrong}");
        let plain = join(http_answer(
            server.addr,
            "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        ))
        .await;
        assert!(plain.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{plain}");
        let huge = join(http_answer(
            server.addr,
            format!(
                "GET /ws HTTP/1.1\r\nX-Pad: {}\r\n",
                "a".repeat(super::ws::HANDSHAKE_MAX)
            ),
        ))
        .await;
        assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");
        // None of them reached the owner.
        assert!(events.seen().is_empty(), "{:?}", events.seen());
        // The right path: 101 with the RFC 6455 example's accept key.
        let right = raw_client(server.addr, |stream| {
            stream.write_all(upgrade_request("/ws").as_bytes()).unwrap();
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let right = join(right).await;
        assert!(right.starts_with("HTTP/1.1 101 "), "{right}");
        assert!(
            right.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "accept key: {right}"
        );
        events.first_conn().await;
        server.stop.fire();
    });
}

#[test]
fn maxconn_counts_websocket_connections() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let limits = Limits {
            maxconn: Some(1),
            ..Limits::default()
        };
        let server = listen_ws(&events, packet_spec(64, 256), limits);
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let first = client(server.addr, "/ws", move |ws| {
            ws.send(Message::binary(packet(5, 1))).unwrap();
            let reply = next_data(ws);
            let _ = wait.recv();
            reply
        });
        events.first_conn().await;
        // The second is closed before its upgrade is read: the client sees no 101.
        let second = join(http_answer(server.addr, upgrade_request("/ws"))).await;
        assert_eq!(second, "");
        done.send(()).unwrap();
        assert_eq!(join(first).await, Message::binary(packet(5, 1)));
        server.stop.fire();
    });
}

#[test]
fn output_is_cut_into_one_message_per_frame_or_line() {
    let two = [packet(5, 1), packet(9, 2)].concat();
    assert_eq!(first_message(Framing::Packet, &two), 5);
    assert_eq!(first_message(Framing::Packet, &two[5..]), 9);
    // Bytes a script committed as they are (not a frame): one message.
    assert_eq!(first_message(Framing::Packet, b"abc"), 3);
    assert_eq!(first_message(Framing::Packet, &[200, 0, 0, 0, 1, 2]), 6);
    assert_eq!(first_message(Framing::Text, b"a\nbc\n"), 2);
    assert_eq!(first_message(Framing::Text, b"tail"), 4);
    assert_eq!(first_message(Framing::Raw, b"a\nb"), 3);
}

#[test]
fn a_dribbled_message_or_upgrade_is_closed_at_the_deadline() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let limits = Limits {
            deadline_ms: 300,
            ..Limits::default()
        };
        let server = listen_ws(&events, packet_spec(64, 256), limits);
        // Upgraded, then the first two bytes of a message and nothing more.
        let dribbler = raw_client(server.addr, |stream| {
            stream.write_all(upgrade_request("/ws").as_bytes()).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            // Binary, final, masked, 5 bytes: the mask and payload never follow.
            stream.write_all(&[0x82, 0x85]).unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            rest
        });
        let rest = join(dribbler).await;
        // The server's close frame: 1001 (going away: timed out).
        assert_eq!(&rest[..4], &[0x88, rest[1], 0x03, 0xE9], "{rest:?}");
        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, libc::ETIMEDOUT);
        // Half an upgrade request: closed unanswered, and the owner never hears of it.
        let half = join(http_answer(server.addr, "GET /ws HTTP/1.1\r\nHost".into())).await;
        assert_eq!(half, "");
        assert_eq!(events.conns().len(), 1);
        server.stop.fire();
    });
}

#[test]
fn a_websocket_client_that_never_reads_is_closed_with_enobufs() {
    const OUT: usize = 64 << 10;
    run_local(|| async {
        // The first frame starts a task that commits for as long as the connection takes
        // it (a script pushing updates to a stalled player): the writes get stuck, the
        // backlog passes OUT, and the stuck write gives way.
        let events = Rc::new(Recorder::new().on_frame(move |conn, _| {
            let conn = conn.clone();
            glommio::spawn_local(async move {
                let chunk = packet(16 << 10, 7);
                while conn.append(&chunk).is_ok() {
                    futures_lite::future::yield_now().await;
                }
            })
            .detach();
            Ok(())
        }));
        let server = listen_ws(&events, packet_spec(64, OUT), Limits::default());
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let stalled = client(server.addr, "/ws", move |ws| {
            ws.send(Message::binary(packet(5, 1))).unwrap();
            // Read nothing until the server has given up on this client.
            let _ = wait.recv();
            // Then it finds its connection closed (after whatever had been sent).
            loop {
                match ws.read() {
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
        });
        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, libc::ENOBUFS);
        assert_eq!(events.closes_of(conn.id), [libc::ENOBUFS]);
        done.send(()).unwrap();
        join(stalled).await;
        server.stop.fire();
    });
}
