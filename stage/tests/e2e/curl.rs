//! curl.so wired to the router: a Lua stage asks a `curl.so+agent` stage for HTTP requests
//! with `stage.signal` as spec/services.md §5.2 shows (a URL string or a request table, a
//! callback or none) and gets the reply table; the HTTP server is a small one in this test,
//! on loopback. Behaviour is asserted, never speed.
//!
//! The callbacks log the reply tables they get; the tests wait for and read those lines:
//! they are the results under test, not readiness.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;

/// Every request the server saw: its request line, headers and body, as text.
type Seen = Arc<Mutex<Vec<String>>>;

/// A loopback HTTP/1.1 server answering by path; returns its port.
fn http_server(seen: Seen) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || answer(stream, &seen));
        }
    });
    port
}

fn answer(stream: TcpStream, seen: &Seen) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    seen.lock()
        .unwrap()
        .push(format!("{head}\n{}", String::from_utf8_lossy(&body)));
    let (status, extra, ctype, content): (&str, &str, &str, Vec<u8>) = match path.as_str() {
        "/hello" => (
            "200 OK",
            "Set-Cookie: a=1; Path=/\r\n",
            "text/plain; charset=utf-8",
            b"hi there".to_vec(),
        ),
        "/form" => ("200 OK", "", "text/plain", body),
        "/bin" => ("200 OK", "", "application/octet-stream", vec![0, 1, 2, 255]),
        "/redirect" => (
            "302 Found",
            "Location: /hello\r\n",
            "text/plain",
            Vec::new(),
        ),
        "/slow" => {
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
        _ => ("404 Not Found", "", "text/plain", b"no".to_vec()),
    };
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        content.len()
    );
    let _ = out.write_all(&content);
}

#[test]
fn a_lua_stage_fetches_over_http_through_a_curl_stage() {
    let seen: Seen = Arc::default();
    let hp = http_server(seen.clone());
    let closed = free_port();
    let config = r##"{ "#startup": [["lua.so+game", "curl.so+agent"]],
          "lua.so": { "%package": ["."], "%reflush": 0, "game": "start" },
          "curl.so+agent": { "user-agent": "stage-test", "timeout": 3000 } }"##;
    let script = r#"
      stage.waitfor("got", function (r)
        logger.info("GOT " .. r.status .. " " .. r.data.type .. " " .. tostring(r.data.charset)
          .. " " .. r.data.content .. " " .. tostring(r.cookie and r.cookie[1]) .. " " .. r.data.length)
      end)
      stage.waitfor("posted", function (r) logger.info("POSTED " .. r.status .. " " .. r.data.content .. " " .. r.extra) end)
      stage.waitfor("bin", function (r) logger.info("BIN " .. #r.data.content .. " " .. r.data.content:byte(4)) end)
      stage.waitfor("redir", function (r) logger.info("REDIR " .. r.status .. " " .. tostring(r.effective_url)) end)
      stage.waitfor("slow", function (r) logger.info("SLOW " .. r.status .. " " .. r.data.result) end)
      stage.waitfor("refused", function (r) logger.info("REFUSED " .. r.status .. " " .. r.data.result .. " " .. r.url) end)
      stage.waitfor("bad", function (r) logger.info("BAD " .. r.status .. " " .. r.data.result .. " " .. r.data.message) end)
      stage.signal("agent:got", "http://127.0.0.1:HP/hello")
      stage.signal("agent:r1=posted", { url = "http://127.0.0.1:HP/form", data = { b = "x y", a = 1 },
                                        header = { ["X-Test"] = "yes" }, extra = "E1" })
      stage.signal("agent:bin", "http://127.0.0.1:HP/bin")
      stage.signal("agent:redir", "http://127.0.0.1:HP/redirect")
      stage.signal("agent:slow", { url = "http://127.0.0.1:HP/slow", timeout = 300 })
      stage.signal("agent:refused", "http://127.0.0.1:CLOSED/")
      stage.signal("agent:bad", { header = {} })
      stage.signal("agent:", "http://127.0.0.1:HP/fire")  -- no callback: runs, answers nobody
      broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
        return function (s, data) return { ok = true } end
      end)
    "#
    .replace("HP", &hp.to_string())
    .replace("CLOSED", &closed.to_string());
    let server = Server::start(config, &[("start.lua", &script)]);
    for needle in [
        "GOT ", "POSTED ", "BIN ", "REDIR ", "SLOW ", "REFUSED ", "BAD ",
    ] {
        server.wait_log(needle);
    }
    let log = server.log();
    for line in [
        "GOT 200 text/plain utf-8 hi there a=1; Path=/ 8",
        "POSTED 200 a=1&b=x%20y E1",
        "BIN 4 255",
        &format!("REDIR 200 http://127.0.0.1:{hp}/hello"),
        "SLOW 0 28",
        &format!("REFUSED 0 7 http://127.0.0.1:{closed}/"),
        "BAD 0 3 the request has no `url` string",
    ] {
        assert!(log.contains(line), "missing `{line}`; log:\n{log}");
    }
    server.wait_until(
        "the request without a callback reaches the HTTP server",
        || {
            seen.lock()
                .unwrap()
                .iter()
                .any(|r| r.starts_with("GET /fire"))
        },
    );
    let seen = seen.lock().unwrap();
    let form = seen
        .iter()
        .find(|r| r.starts_with("POST /form"))
        .expect("the form request");
    // Header names are case-insensitive (HTTP/1.1); the client sends them lower-cased.
    let form = form.to_ascii_lowercase();
    assert!(form.contains("x-test: yes"), "{form}");
    assert!(form.contains("user-agent: stage-test"), "{form}");
    assert!(
        form.contains("content-type: application/x-www-form-urlencoded"),
        "{form}"
    );
}

#[test]
fn the_curl_helper_builds_a_request_and_calls_back() {
    let seen: Seen = Arc::default();
    let hp = http_server(seen.clone());
    let config = r##"{ "#startup": [["lua.so+game", "curl.so"]],
          "lua.so": { "%package": [".", "@builtin/lib"], "%reflush": 0, "game": "start" } }"##;
    let script = r#"
      local CURL = stage.require("curl")
      CURL.New("curl", "http://127.0.0.1:HP/form", function (r)
        logger.info("HELPER " .. r.status .. " " .. r.data.content .. " " .. r.extra.id)
      end)
        :setHeader("X-Game", "lobby")
        :setPostField("user", "bob")
        :extra({ id = 7 })
        :commit()
      CURL.New("curl", "http://127.0.0.1:HP/quiet"):commit()
      broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
        return function (s, data) return { ok = true } end
      end)
    "#
    .replace("HP", &hp.to_string());
    let server = Server::start(config, &[("start.lua", &script)]);
    server.wait_log("HELPER ");
    let log = server.log();
    assert!(log.contains("HELPER 200 user=bob 7"), "{log}");
    // The one-shot reply id was removed once answered.
    assert!(!log.contains("(no handler)"), "{log}");
    server.wait_until(
        "the request without a callback reaches the HTTP server",
        || {
            seen.lock()
                .unwrap()
                .iter()
                .any(|r| r.starts_with("GET /quiet"))
        },
    );
    let seen = seen.lock().unwrap();
    let form = seen.iter().find(|r| r.starts_with("POST /form")).unwrap();
    assert!(
        form.to_ascii_lowercase().contains("x-game: lobby"),
        "{form}"
    );
}
