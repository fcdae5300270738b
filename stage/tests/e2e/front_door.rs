//! The front door of a listener, tried as an attacker or a broken client would: a connect
//! flood from one address (`perip`) and from many (`maxconn`), a client that dribbles a
//! frame (`deadline`), running out of descriptors (EMFILE), and a client that stops reading
//! while the server keeps committing to it (`OUT`, ENOBUFS). Each costs only the offending
//! connections: the others keep their replies, and the script's close callback sees why.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::*;

/// An echo listener with the options `OPTIONS`; `closes` answers with the errno of every
/// close callback so far, `,`-separated (what the script saw, reported to another client).
/// Callbacks are re-created from bytecode in each core's state, so they keep what they share
/// in the process-wide store `__`.
const ECHO: &str = "
local l = broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k&OPTIONS', function ()
  return function (s, data)
    if data.message == 'closes' then return { closes = __.closes or '' } end
    return data
  end
end)
l.close = function (s, errno)
  __('closes', function (old) return (old or '') .. tostring(errno) .. ',' end)
end
";

/// A configuration running one core (for clients that must share a core).
const ONE_CORE: &str = r##"{ "#threads": 1, "#startup": [["lua.so+stage"]],
    "lua.so": { "%package": ["."], "%reflush": 0, "lua.so+stage": "start" } }"##;

/// On every core: the limits are the listener's, shared by the cores of the process.
fn echo_server(options: &str) -> Server {
    Server::start(
        &config(""),
        &[("start.lua", &ECHO.replace("OPTIONS", options))],
    )
}

fn addr(server: &Server) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, server.port))
}

/// A connection to `to` from source address `from` (any 127.x.y.z is local on Linux).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect(&to.into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Whether `client` gets `n` echoed back (false when the server closed it instead).
fn echoes(client: &mut TcpStream, n: i32) -> bool {
    let request = message("echo", &[("n", Bson::Int32(n))]);
    if client.write_all(&request).is_err() {
        return false;
    }
    match read_frame(client) {
        Ok(frame) => {
            parse_doc(&frame)
                .get("v")
                .and_then(|v| v.get("n"))
                .and_then(Bson::as_i64)
                == Some(n as i64)
        }
        Err(_) => false,
    }
}

/// A connection from `from` that the server accepted and serves. A place can stay taken
/// for a moment after its client went away (until the server reads the end), so this
/// retries until a connection echoes.
fn admitted(server: &Server, from: Ipv4Addr) -> TcpStream {
    server.wait_for(&format!("a connection from {from} is served"), || {
        let mut client = connect_from(from, addr(server)).ok()?;
        echoes(&mut client, 1).then_some(client)
    })
}

/// The close-callback errnos the script has seen so far.
fn closes(server: &Server) -> Vec<i32> {
    let mut client = admitted(server, Ipv4Addr::new(127, 0, 0, 100));
    client.write_all(&message("closes", &[])).unwrap();
    let reply = read_reply(&mut client);
    let list = reply.get("closes").and_then(Bson::as_str).unwrap_or("");
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn perip_closes_the_fourth_connection_from_one_address_at_once() {
    let server = echo_server("perip=3");
    let local = Ipv4Addr::LOCALHOST;
    let mut three: Vec<TcpStream> = (0..3).map(|_| admitted(&server, local)).collect();
    // The fourth is accepted and closed at once: EOF before anything was sent.
    let mut fourth = connect_from(local, addr(&server)).unwrap();
    assert!(is_closed(&mut fourth), "the fourth connection was served");
    server.wait_log("new connection(s) closed at once: over perip=3");
    // Another address is not affected, and the first three still echo.
    let mut other = admitted(&server, Ipv4Addr::new(127, 0, 0, 2));
    assert!(echoes(&mut other, 5));
    for (i, client) in three.iter_mut().enumerate() {
        assert!(echoes(client, 10 + i as i32), "client {i} lost its service");
    }
    // One of them goes: its place is free again.
    drop(three.remove(0));
    let mut again = admitted(&server, local);
    assert!(echoes(&mut again, 20));
}

#[test]
fn maxconn_caps_the_listener_across_addresses() {
    let server = echo_server("maxconn=4");
    let from = |i: u8| Ipv4Addr::new(127, 0, 0, i);
    let mut held: Vec<TcpStream> = (2..=5).map(|i| admitted(&server, from(i))).collect();
    for i in 6..=9 {
        let mut refused = connect_from(from(i), addr(&server)).unwrap();
        assert!(
            is_closed(&mut refused),
            "a fifth connection from {} was served",
            from(i)
        );
    }
    server.wait_log("new connection(s) closed at once: over maxconn=4");
    for (i, client) in held.iter_mut().enumerate() {
        assert!(echoes(client, i as i32), "connection {i} lost its service");
    }
    drop(held.remove(0));
    let mut next = admitted(&server, from(9));
    assert!(echoes(&mut next, 9));
}

#[test]
fn a_client_that_dribbles_a_frame_is_closed_with_etimedout() {
    let server = echo_server("deadline=500");
    let mut fine = admitted(&server, Ipv4Addr::LOCALHOST);
    // One byte of a frame header, then nothing.
    let mut dribbler = connect_from(Ipv4Addr::LOCALHOST, addr(&server)).unwrap();
    dribbler.write_all(&[40]).unwrap();
    let start = Instant::now();
    assert!(is_closed(&mut dribbler), "the dribbler was not closed");
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "closed before its deadline"
    );
    // The script's close callback saw ETIMEDOUT, and the log counts it.
    server.wait_for("the close callback saw ETIMEDOUT", || {
        closes(&server).contains(&libc::ETIMEDOUT).then_some(())
    });
    server
        .wait_log("closed with ETIMEDOUT: a started frame was not complete within deadline=500 ms");
    assert!(echoes(&mut fine, 3), "the other client lost its service");
}

#[test]
fn bad_limits_make_broker_ready_fail_with_einval() {
    let script = "
local results = {}
for _, options in ipairs({ 'maxconn=0', 'perip=-1', 'deadline=soon', 'maxconn=',
                           'packet=1k,1k&perip=1.5' }) do
  local r = broker.ready('tcp://127.0.0.1:0?' .. options, function () end)
  results[#results + 1] = type(r) == 'number' and tostring(r) or 'listener'
end
__.results = table.concat(results, ',')
broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k&maxconn=1&perip=1&deadline=0', function ()
  return function () return { results = __.results } end
end)
";
    let server = Server::start(&config(""), &[("start.lua", script)]);
    let mut client = admitted_results(&server);
    client.write_all(&message("x", &[])).unwrap();
    let reply = read_reply(&mut client);
    let einval = libc::EINVAL.to_string();
    assert_eq!(
        reply.get("results").and_then(Bson::as_str),
        Some([einval.as_str(); 5].join(",").as_str())
    );
    server.wait_log("bad `maxconn=0` (expected a whole number of at least 1)");
    server.wait_log("bad `deadline=soon`");
}

/// A connection to a listener with `maxconn=1` (the readiness probe may still hold it).
fn admitted_results(server: &Server) -> TcpStream {
    server.wait_for("the listener serves", || {
        let mut client = connect_from(Ipv4Addr::LOCALHOST, addr(server)).ok()?;
        client.write_all(&message("x", &[])).ok()?;
        read_frame(&mut client).ok()?;
        Some(client)
    })
}

/// Lowers the open-files limit of a running process (prlimit(2) on another process).
fn set_nofile(pid: u32, limit: u64) {
    let new = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: plain prlimit(2) on our own child, with a valid struct and no old-limit out.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn running_out_of_descriptors_is_logged_and_survived() {
    let server = echo_server("deadline=0");
    let pid = server.child.as_ref().unwrap().id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    // Room for a few connections, then accept fails with EMFILE.
    set_nofile(pid, open + 4);
    let start = Instant::now();
    let flood: Vec<TcpStream> = (0..24)
        .filter_map(|_| connect_from(Ipv4Addr::LOCALHOST, addr(&server)).ok())
        .collect();
    server.wait_log("Too many open files");
    // Keep the descriptors exhausted for a while: the accept loop must back off and log
    // at most once a second, not spin and not flood the log.
    std::thread::sleep(Duration::from_millis(1500));
    let lines = server.log().matches("accept failed").count();
    let seconds = start.elapsed().as_secs() as usize;
    assert!(
        lines <= seconds + 2,
        "{lines} accept-failure lines in {seconds} s"
    );
    drop(flood);
    // Once the flood is gone the listener serves again.
    let mut client = admitted(&server, Ipv4Addr::LOCALHOST);
    assert!(echoes(&mut client, 4));
    assert!(server.child.as_ref().is_some());
}

/// A chat-like script: `subscribe` adds the socket to the subscribers, `publish` commits a
/// 16 KiB blob to every subscriber and answers the publisher with how many are left.
const PUBSUB: &str = "
local l = broker.ready('tcp://127.0.0.1:PORT?packet=1k,64k', function ()
  return function (s, data)
    if data.message == 'subscribe' then
      __('subscribers', function (old) old = old or {}; old[tostring(s.id)] = true; return old end)
      return { ok = true }
    end
    if data.message == 'closes' then return { closes = __.closes or '' } end
    local blob = string.rep('x', 16384)
    local n = 0
    for id in pairs(__.subscribers or {}) do
      broker.f(tonumber(id)).commit({ blob = blob })
      n = n + 1
    end
    return { n = data.n, subscribers = n }
  end
end)
l.close = function (s, errno)
  __('subscribers', function (old) if old then old[tostring(s.id)] = nil end; return old end)
  __('closes', function (old) return (old or '') .. tostring(errno) .. ',' end)
end
";

#[test]
fn a_client_that_stops_reading_is_closed_with_enobufs_and_others_keep_their_replies() {
    // One core, so the slow reader and the other client share it.
    let server = Server::start(ONE_CORE, &[("start.lua", PUBSUB)]);
    let mut slow = admitted_results(&server);
    slow.write_all(&message("subscribe", &[])).unwrap();
    // From here on `slow` reads nothing.
    let mut publisher = admitted_results(&server);
    let mut left = 1;
    let mut n = 0;
    // Each publish commits 16 KiB to the slow reader: once the kernel's buffers are full its
    // unsent output passes OUT (64 KiB) and it is closed. The bound only stops a broken
    // server from looping forever (loopback buffers hold a few MiB).
    while left > 0 && n < 100_000 {
        n += 1;
        publisher
            .write_all(&message("publish", &[("n", Bson::Int32(n))]))
            .unwrap();
        let reply = read_reply(&mut publisher);
        assert_eq!(reply.get("n").and_then(Bson::as_i64), Some(n as i64));
        left = reply.get("subscribers").and_then(Bson::as_i64).unwrap();
    }
    assert_eq!(left, 0, "the slow reader was never closed");
    assert!(
        closes(&server).contains(&libc::ENOBUFS),
        "close callbacks saw {:?}",
        closes(&server)
    );
    // The slow reader gets what the kernel held, then the end.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(read_until_closed(&mut slow).is_some(), "never closed");
    // And the publisher is still served.
    publisher
        .write_all(&message("publish", &[("n", Bson::Int32(-1))]))
        .unwrap();
    assert_eq!(
        read_reply(&mut publisher).get("n").and_then(Bson::as_i64),
        Some(-1)
    );
}
