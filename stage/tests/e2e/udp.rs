//! UDP endpoints (spec/stage.md §4.2-4.3, 4.6): `broker.ready("udp://...", receive)` gets
//! every datagram with the sender's address, its return values go back to that address,
//! `socket.commit(v, addr)` sends later, `broker.signal(addr, table)` sends from nowhere in
//! particular, and a datagram that is not one message is dropped without harming the
//! endpoint. Real sockets on loopback.

use std::net::UdpSocket;
use std::time::Duration;

use crate::harness::*;

fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

fn recv(c: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let n = c.recv(&mut buf).expect("a datagram");
    buf[..n].to_vec()
}

/// Readiness of the endpoint on `port`: sends `probe` from a socket of its own until an
/// answer satisfies `answered` (a late answer reaches that socket, never the test's).
fn wait_udp_answers(server: &Server, port: u16, probe: &[u8], answered: impl Fn(&[u8]) -> bool) {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    server.wait_until(&format!("udp://127.0.0.1:{port} answers"), || {
        c.send_to(probe, ("127.0.0.1", port)).is_ok()
            && matches!(c.recv(&mut buf), Ok(n) if answered(&buf[..n]))
    });
}

#[test]
fn datagrams_reach_the_receive_callback_and_answers_go_back() {
    let up = free_port();
    let script = r#"
        udp = broker.ready('udp://127.0.0.1:@UDP@?packet=1k,1k', function (s, data, addr)
          if data.message == "later" then
            -- Answer from a timer, with socket.commit(v, addr), and once from nowhere.
            stage.addtask(50, function (id, a)
              broker.f(id).commit({ late = true }, a)
              broker.signal(a, { loose = 1 })
              broker.signal({ a, function (t, v) logger.info("GROUP SENT " .. v) end }, "raw!")
              return 0
            end, s.id, addr)
            return
          end
          return { echo = data.message, from = broker.ntoa(addr), sock = tostring(s) }
        end)
        logger.info("UDP " .. tostring(udp) .. " " .. broker.ntoa(udp[-1]))
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data) return { ok = true } end
        end)
    "#
    .replace("@UDP@", &up.to_string());
    let server = Server::start(&config(""), &[("start.lua", &script)]);
    wait_udp_answers(&server, up, &message("probe", &[]), |d| {
        parse_doc(d).get("v").and_then(|v| v.get("echo")) == Some(&Bson::str("probe"))
    });
    // The script logs the endpoint's `tostring` and local address: checked here.
    server.wait_log("UDP udp: ");
    assert!(
        server.log().contains(&format!("127.0.0.1:{up}")),
        "{}",
        server.log()
    );
    let c = client();
    let me = c.local_addr().unwrap();
    c.send_to(&message("hi", &[]), ("127.0.0.1", up)).unwrap();
    let reply = parse_doc(&recv(&c));
    let v = reply.get("v").expect("{v = ...}");
    assert_eq!(v.get("echo").and_then(Bson::as_str), Some("hi"));
    assert_eq!(
        v.get("from").and_then(Bson::as_str),
        Some(me.to_string().as_str())
    );
    assert!(v
        .get("sock")
        .and_then(Bson::as_str)
        .unwrap()
        .starts_with("udp: "));

    // Not one packet frame (the length says 99): dropped; the endpoint goes on.
    let mut bad = message("bad", &[]);
    bad[0] = 99;
    c.send_to(&bad, ("127.0.0.1", up)).unwrap();
    c.send_to(b"\x05\0\0\0\0", ("127.0.0.1", up)).unwrap(); // an empty document: no value
    c.send_to(&message("again", &[]), ("127.0.0.1", up))
        .unwrap();
    let v = parse_doc(&recv(&c)).get("v").cloned().unwrap();
    assert_eq!(v.get("echo").and_then(Bson::as_str), Some("again"));

    c.send_to(&message("later", &[]), ("127.0.0.1", up))
        .unwrap();
    let late = parse_doc(&recv(&c));
    assert_eq!(
        late.get("v").and_then(|v| v.get("late")).cloned(),
        Some(Bson::Bool(true))
    );
    // broker.signal(addr, table): the table itself, no {v = ...} wrapper.
    let loose = parse_doc(&recv(&c));
    assert_eq!(loose.get("loose").and_then(Bson::as_i64), Some(1));
    // A group send with an address: the string as it is.
    assert_eq!(recv(&c), b"raw!");
    // The group send's callback ran, with the value sent.
    server.wait_log("GROUP SENT raw!");
    let log = server.log();
    assert!(!log.contains("udp dispatch failed"), "{log}");
}

#[test]
fn raw_udp_echoes_bytes_and_a_closed_endpoint_stops() {
    let up = free_port();
    let script = r#"
        udp = broker.ready('udp://127.0.0.1:@UDP@', function (s, data, addr)
          if data == "close" then s.close() return end
          return "echo:" .. data
        end)
        broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
          return function (s, data) return { ok = true } end
        end)
    "#
    .replace("@UDP@", &up.to_string());
    let server = Server::start(&config(""), &[("start.lua", &script)]);
    wait_udp_answers(&server, up, b"probe", |d| d == b"echo:probe");
    let c = client();
    c.send_to(b"\x00\x01bytes", ("127.0.0.1", up)).unwrap();
    assert_eq!(recv(&c), b"echo:\x00\x01bytes");
    c.send_to(b"close", ("127.0.0.1", up)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.send_to(b"after", ("127.0.0.1", up)).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        c.recv(&mut buf).is_err(),
        "a closed endpoint still answered"
    );
}
