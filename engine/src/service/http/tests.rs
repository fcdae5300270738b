//! Loopback tests of the `curl.so` client: a hand-written HTTP/1.1 server on 127.0.0.1 (one
//! thread per connection, answering by path and recording what it was sent) and requests
//! driven to completion with `futures_lite::future::block_on`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future::block_on;

use super::*;

/// One request as the server read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Starts the server; its accept thread lives until the test process ends.
fn serve() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = Arc::clone(&log);
            thread::spawn(move || handle(stream, &log));
        }
    });
    Server { addr, seen }
}

fn handle(mut stream: TcpStream, log: &Mutex<Vec<Seen>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let Some(req) = read_request(&mut stream) else {
        return;
    };
    let path = req.path.clone();
    let answer = respond(&path);
    log.lock().unwrap().push(req);
    match answer {
        Some(bytes) => {
            let _ = stream.write_all(&bytes);
        }
        // "/silent", "/stall": hold the connection open, say nothing (more).
        None => {
            if path == "/stall" {
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst bytes";
                let _ = stream.write_all(head);
            }
            thread::sleep(Duration::from_secs(3));
        }
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, path) = (start.next()?.to_string(), start.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

/// The answer for a path; `None` = never answer.
fn respond(path: &str) -> Option<Vec<u8>> {
    let big = vec![b'x'; 1000];
    Some(match path {
        "/text" => answer(
            "200 OK",
            &[("Content-Type", "text/html; charset=utf-8")],
            "héllo".as_bytes(),
        ),
        "/echo" => answer("200 OK", &[("Content-Type", "text/plain")], b"ok"),
        "/redirect" => answer(
            "302 Found",
            &[("Location", "/echo"), ("Set-Cookie", "step=1")],
            b"moved",
        ),
        "/loop" => answer("302 Found", &[("Location", "/loop")], b""),
        "/away" => answer(
            "301 Moved",
            &[("Location", "ftp://files.invalid/x")],
            b"gone",
        ),
        "/cookies" => answer(
            "200 OK",
            &[("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2")],
            b"",
        ),
        "/binary" => answer(
            "200 OK",
            &[("Content-Type", "image/png")],
            &[0x89, b'P', b'N', b'G', 0, 1, 255],
        ),
        "/big" => answer("200 OK", &[("Content-Type", "text/plain")], &big),
        "/small" => answer("200 OK", &[("Content-Type", "text/plain")], &big[..100]),
        // No Content-Length: the body ends when the connection closes.
        "/stream" => [
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n".as_slice(),
            &big,
        ]
        .concat(),
        // Announces more than it sends, then closes.
        "/short" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\nfirst".to_vec()
        }
        "/silent" | "/stall" => return None,
        _ => answer("404 Not Found", &[], b"no such path"),
    })
}

fn answer(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    [out.as_bytes(), body].concat()
}

fn agent() -> HttpAgent {
    HttpAgent::new(HttpConfig::default()).unwrap()
}

fn run(agent: &HttpAgent, request: HttpRequest) -> HttpReply {
    block_on(agent.execute(request, None))
}

fn text(k: &str, v: &str) -> (String, FormValue) {
    (k.to_string(), FormValue::Text(v.to_string()))
}

#[test]
fn http_get_text_with_charset() {
    let server = serve();
    let url = server.url("/text");
    let reply = run(&agent(), HttpRequest::get(&url));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.url, url);
    assert_eq!(reply.effective_url.as_deref(), Some(url.as_str()));
    assert_eq!(reply.redirect_url, None);
    assert_eq!(reply.cookie, None);
    assert_eq!(reply.data.mime, "text/html");
    assert_eq!(
        reply.data.params,
        vec![("charset".to_string(), "utf-8".to_string())]
    );
    assert_eq!(reply.data.content, Bytes::from("héllo"));
    assert_eq!(reply.data.length, 6);
    assert_eq!((reply.data.result, reply.data.message.as_str()), (0, ""));
    assert!(reply.data.time > 0.0 && reply.data.time < 5.0);
    assert!(reply.data.bps > 0.0);
    assert!(reply.is_textual());
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/text")
    );
    assert_eq!(
        seen[0].header("user-agent"),
        Some(default_user_agent().as_str())
    );
}

#[test]
fn http_post_form_escapes_and_nests() {
    let server = serve();
    let nested = vec![
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "2".to_string()),
    ];
    let mut request = HttpRequest::get(server.url("/echo"));
    request.body = Some(Body::Form(vec![
        text("name", "a b&c=d/é"),
        ("k".to_string(), FormValue::Pairs(nested)),
    ]));
    let reply = run(&agent(), request);
    assert_eq!((reply.status, reply.data.result), (200, 0));
    assert_eq!(reply.data.content, Bytes::from("ok"));
    let seen = &server.seen()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(
        String::from_utf8(seen.body.clone()).unwrap(),
        "name=a%20b%26c%3Dd%2F%C3%A9&k=a-1,b-2"
    );
    assert_eq!(
        seen.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

#[test]
fn http_raw_post_body_and_custom_headers() {
    let server = serve();
    let raw = Bytes::from_static(&[0, 1, 2, b'\r', b'\n', 255]);
    let request = HttpRequest {
        url: server.url("/echo"),
        headers: vec![
            (
                "Content-Type".to_string(),
                "application/octet-stream".to_string(),
            ),
            ("X-Token".to_string(), "abc 123".to_string()),
            ("X-Two".to_string(), "2".to_string()),
        ],
        body: Some(Body::Raw(raw.clone())),
        timeout: None,
    };
    let reply = run(&agent(), request);
    assert_eq!((reply.status, reply.data.result), (200, 0));
    let seen = &server.seen()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, raw.to_vec());
    assert_eq!(
        seen.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(seen.header("x-token"), Some("abc 123"));
    assert_eq!(seen.header("x-two"), Some("2"));
}

#[test]
fn http_user_agent_from_config_and_request() {
    let server = serve();
    let mut raw = br#""game-agent/7""#.to_vec();
    let config = HttpConfig::from_value(&simd_json::to_owned_value(&mut raw).unwrap());
    let agent = HttpAgent::new(config).unwrap();
    assert_eq!(agent.config().user_agent, "game-agent/7");
    run(&agent, HttpRequest::get(server.url("/echo")));
    // A User-Agent among the request's headers wins over the configured one.
    let mut own = HttpRequest::get(server.url("/echo"));
    own.headers
        .push(("user-agent".to_string(), "mine/1".to_string()));
    run(&agent, own);
    let seen = server.seen();
    assert_eq!(seen[0].header("user-agent"), Some("game-agent/7"));
    assert_eq!(seen[1].header("user-agent"), Some("mine/1"));
    assert_eq!(
        seen[1]
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
            .count(),
        1
    );
}

#[test]
fn http_redirect_followed_keeping_post() {
    let server = serve();
    let mut request = HttpRequest::get(server.url("/redirect"));
    request.body = Some(Body::Form(vec![text("x", "1")]));
    let reply = run(&agent(), request);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.data.content, Bytes::from("ok"));
    assert_eq!(reply.url, server.url("/redirect"));
    assert_eq!(reply.effective_url, Some(server.url("/echo")));
    assert_eq!(reply.redirect_url, None);
    // The redirect's cookie is kept.
    assert_eq!(reply.cookie, Some(vec!["step=1".to_string()]));
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/redirect")
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("POST", "/echo")
    );
    assert_eq!(seen[1].body, b"x=1");
}

#[test]
fn http_too_many_redirects_and_unfollowed_scheme() {
    let server = serve();
    let agent = agent();
    let reply = run(&agent, HttpRequest::get(server.url("/loop")));
    assert_eq!(reply.status, 302);
    assert_eq!(reply.data.result, code::TOO_MANY_REDIRECTS);
    assert_eq!(reply.redirect_url, Some(server.url("/loop")));
    assert!(reply.data.message.contains("redirects"));
    assert_eq!(server.seen().len(), 1 + MAX_REDIRECTS as usize);

    let reply = run(&agent, HttpRequest::get(server.url("/away")));
    assert_eq!((reply.status, reply.data.result), (301, 0));
    assert_eq!(reply.redirect_url.as_deref(), Some("ftp://files.invalid/x"));
    assert_eq!(reply.effective_url, Some(server.url("/away")));
    assert_eq!(reply.data.content, Bytes::from("gone"));
}

#[test]
fn http_set_cookie_lines_collected() {
    let server = serve();
    let reply = run(&agent(), HttpRequest::get(server.url("/cookies")));
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.cookie,
        Some(vec!["a=1; Path=/".to_string(), "b=2".to_string()])
    );
    // No Content-Type at all: unknown, hence text.
    assert_eq!(reply.data.mime, "");
    assert!(reply.is_textual());
}

#[test]
fn http_connection_refused_is_result_7() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/x");
    let reply = run(&agent(), HttpRequest::get(&url));
    assert_eq!(reply.status, 0);
    assert_eq!(reply.data.result, code::COULDNT_CONNECT);
    assert!(!reply.data.message.is_empty());
    assert_eq!(reply.effective_url.as_deref(), Some(url.as_str()));
    assert!(reply.data.content.is_empty());
}

#[test]
fn http_silent_server_times_out_with_result_28() {
    let server = serve();
    let agent = agent();
    // The request's own timeout.
    let mut request = HttpRequest::get(server.url("/silent"));
    request.timeout = Some(Duration::from_millis(300));
    let reply = run(&agent, request);
    assert_eq!(
        (reply.status, reply.data.result),
        (0, code::OPERATION_TIMEDOUT)
    );
    assert!(
        reply.data.time >= 0.25 && reply.data.time < 2.0,
        "{}",
        reply.data.time
    );
    assert!(!reply.data.message.is_empty());
    // Headers and part of the body, then silence: the status came, the body did not.
    let mut request = HttpRequest::get(server.url("/stall"));
    request.timeout = Some(Duration::from_millis(300));
    let reply = run(&agent, request);
    assert_eq!(
        (reply.status, reply.data.result),
        (200, code::OPERATION_TIMEDOUT)
    );
    assert!(reply.data.content.is_empty());
    // The message deadline, with no timeout of the request's own.
    let request = HttpRequest::get(server.url("/silent"));
    let reply = block_on(agent.execute(request, Some(Duration::from_millis(300))));
    assert_eq!(
        (reply.status, reply.data.result),
        (0, code::OPERATION_TIMEDOUT)
    );
    assert!(reply.data.time < 2.0, "{}", reply.data.time);
}

/// A body cut short is an error (curl's PARTIAL_FILE), never a silently short body.
#[test]
fn http_truncated_body_is_partial_file() {
    let server = serve();
    let reply = run(&agent(), HttpRequest::get(server.url("/short")));
    assert_eq!((reply.status, reply.data.result), (200, code::PARTIAL_FILE));
    assert!(reply.data.content.is_empty());
    assert!(!reply.data.message.is_empty());
}

#[test]
fn http_binary_content_is_not_textual() {
    let server = serve();
    let reply = run(&agent(), HttpRequest::get(server.url("/binary")));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.data.mime, "image/png");
    assert!(!reply.is_textual());
    assert_eq!(
        reply.data.content,
        Bytes::from_static(&[0x89, b'P', b'N', b'G', 0, 1, 255])
    );
    assert_eq!(reply.data.length, 7);
}

#[test]
fn http_body_size_cap() {
    let server = serve();
    let agent = HttpAgent::new(HttpConfig {
        max_body: 100,
        ..HttpConfig::default()
    })
    .unwrap();
    // Announced by Content-Length, refused before reading.
    let reply = run(&agent, HttpRequest::get(server.url("/big")));
    assert_eq!(
        (reply.status, reply.data.result),
        (200, code::FILESIZE_EXCEEDED)
    );
    assert!(
        reply.data.message.contains("1000 bytes"),
        "{}",
        reply.data.message
    );
    assert!(reply.data.content.is_empty());
    assert_eq!(reply.data.length, 0);
    // Unannounced, found while reading.
    let reply = run(&agent, HttpRequest::get(server.url("/stream")));
    assert_eq!(
        (reply.status, reply.data.result),
        (200, code::FILESIZE_EXCEEDED)
    );
    assert!(
        reply.data.message.contains("100 bytes"),
        "{}",
        reply.data.message
    );
    assert!(reply.data.content.is_empty());
    // Exactly the cap is fine.
    let reply = run(&agent, HttpRequest::get(server.url("/small")));
    assert_eq!((reply.status, reply.data.result), (200, 0));
    assert_eq!(reply.data.length, 100);
}

#[test]
fn http_bad_requests_fail_before_sending() {
    let agent = agent();
    let reply = run(&agent, HttpRequest::get("not a url"));
    assert_eq!((reply.status, reply.data.result), (0, code::URL_MALFORMAT));
    assert_eq!(reply.effective_url, None);
    assert_eq!(reply.url, "not a url");
    let reply = run(&agent, HttpRequest::get("ftp://127.0.0.1/x"));
    assert_eq!(reply.data.result, code::UNSUPPORTED_PROTOCOL);
    let mut bad_header = HttpRequest::get("http://127.0.0.1:1/");
    bad_header
        .headers
        .push(("Bad Name".to_string(), "v".to_string()));
    let reply = run(&agent, bad_header);
    assert_eq!(reply.data.result, code::BAD_FUNCTION_ARGUMENT);
    assert!(reply.data.message.contains("Bad Name"));
}

/// What the agent is for: a glommio core polls the request, and goes on running its other
/// tasks (here, timers) while the request waits on the network.
#[test]
fn http_runs_on_a_glommio_core_without_blocking_it() {
    let server = serve();
    let agent = agent();
    let (silent, text) = (server.url("/silent"), server.url("/text"));
    let core = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let started = std::time::Instant::now();
            let mut request = HttpRequest::get(silent);
            request.timeout = Some(Duration::from_millis(1000));
            let pending = glommio::spawn_local(agent.execute(request, None));
            for _ in 0..5 {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            let ticked = started.elapsed();
            let slow = pending.await;
            let fast = agent.execute(HttpRequest::get(text), None).await;
            (ticked, slow, fast)
        })
        .unwrap();
    let (ticked, slow, fast) = core.join().unwrap();
    // Had polling the request blocked the core, the timers would have waited the full second.
    assert!(ticked < Duration::from_millis(700), "{ticked:?}");
    assert_eq!(slow.data.result, code::OPERATION_TIMEDOUT);
    assert!(slow.data.time >= 0.9, "{}", slow.data.time);
    assert_eq!((fast.status, fast.data.result), (200, 0));
    assert_eq!(fast.data.content, Bytes::from("héllo"));
}
