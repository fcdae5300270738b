//! The admin endpoint (`#admin`): a Prometheus scrape whose counters move by exactly the
//! traffic the test drives, `/status` as an operator reads it, the token rules, `POST
//! /reload` switching a changed script at once, and the console page rendered by headless
//! Chromium showing the live figures.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

/// One HTTP/1.1 exchange with the admin endpoint (`Connection: close`): status and body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to #admin");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// A scrape as `(name, sorted labels) -> value`.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

fn scrape(port: u16, token: Option<&str>) -> Samples {
    let (code, text) = http(port, "GET", "/metrics", token);
    assert_eq!(code, 200, "{text}");
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<(String, String)> = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once("=\"").unwrap();
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect();
        labels.sort();
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap(),
        };
        out.insert((name.to_string(), labels), value);
    }
    out
}

/// The sum of `name` over every sample whose labels include all of `with`.
fn total(samples: &Samples, name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, labels), _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// A Lua stage that echoes every frame, errors on `boom`, with the admin endpoint on
/// `admin` (a JSON value).
fn echo_server(admin: &str) -> Server {
    let config = format!(
        r##"{{ "#startup": [["lua.so+stage"]], "#node": "admin-test", "#admin": {admin},
             "lua.so": {{ "%package": ["."], "lua.so+stage": "start" }} }}"##
    );
    Server::start(
        &config,
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 if data.message == 'boom' then error('kaboom for the metrics') end
                 return data
               end
             end)",
        )],
    )
}

#[test]
fn a_scrape_counts_the_connections_frames_and_bytes_of_real_traffic() {
    let admin = free_port();
    let server = echo_server(&format!("\"127.0.0.1:{admin}\""));
    let listener = format!("tcp://127.0.0.1:{}", server.port);
    let on = [("listener", listener.as_str())];
    let before = scrape(admin, None);
    let figure = |s: &Samples, name: &str| total(s, name, &on);

    let mut clients: Vec<TcpStream> = (0..3).map(|_| server.connect()).collect();
    let (mut sent, mut received) = (0usize, 0usize);
    for (i, client) in clients.iter_mut().enumerate() {
        for n in 0..2 {
            let frame = message(
                &format!("hello-{i}-{n}"),
                &[("pad", Bson::str(&"x".repeat(i)))],
            );
            client.write_all(&frame).unwrap();
            sent += frame.len();
            let reply = read_frame(client).unwrap();
            received += reply.len();
        }
    }
    // A frame whose callback fails: one Lua error, no reply.
    clients[0].write_all(&message("boom", &[])).unwrap();
    sent += message("boom", &[]).len();
    server.wait_log("kaboom for the metrics");

    // The counters are read from the cores on each scrape; a write is counted when the core
    // sees it complete, which can be a moment after the client read it.
    let want = [
        ("stage_connections_accepted_total", 3.0),
        ("stage_connections_open", 3.0),
        ("stage_frames_in_total", 7.0),
        ("stage_frames_out_total", 6.0),
        ("stage_bytes_in_total", sent as f64),
        ("stage_bytes_out_total", received as f64),
    ];
    let mut last = Samples::new();
    let moved = poll(READY, || {
        last = scrape(admin, None);
        want.iter()
            .all(|(name, n)| {
                let base = if *name == "stage_connections_open" {
                    0.0
                } else {
                    figure(&before, name)
                };
                figure(&last, name) - base == *n
            })
            .then_some(())
    });
    if moved.is_none() {
        let got: Vec<String> = want
            .iter()
            .map(|(name, n)| {
                format!(
                    "{name}: +{} (want +{n})",
                    figure(&last, name) - figure(&before, name)
                )
            })
            .collect();
        panic!("the counters did not move as driven: {got:?}");
    }
    let errors =
        total(&last, "stage_lua_errors_total", &[]) - total(&before, "stage_lua_errors_total", &[]);
    assert_eq!(errors, 1.0, "one script error");
    let receives = |s: &Samples| {
        total(
            s,
            "stage_callback_duration_seconds_count",
            &[("kind", "receive")],
        )
    };
    assert_eq!(
        receives(&last) - receives(&before),
        7.0,
        "seven receive callbacks timed"
    );
    let inf = |s: &Samples| {
        total(
            s,
            "stage_callback_duration_seconds_bucket",
            &[("kind", "receive"), ("le", "+Inf")],
        )
    };
    assert_eq!(
        inf(&last),
        receives(&last),
        "the +Inf bucket holds every callback"
    );
    let cores = total(&last, "stage_core_up", &[]);
    assert!(
        cores >= 1.0 && cores == last.keys().filter(|(n, _)| n == "stage_core_up").count() as f64,
        "every core answered"
    );

    drop(clients);
    server.wait_until("the closed connections leave the open gauge", || {
        figure(&scrape(admin, None), "stage_connections_open") == 0.0
    });
}

#[test]
fn status_names_the_node_its_cores_stages_listeners_and_script_versions() {
    let admin = free_port();
    let server = echo_server(&format!("\"127.0.0.1:{admin}\""));
    let mut a = server.connect();
    let mut b = server.connect();
    for c in [&mut a, &mut b] {
        c.write_all(&message("hi", &[])).unwrap();
        read_frame(c).unwrap();
    }
    let status: serde_json::Value = server.wait_for("/status counts both connections", || {
        let (code, body) = http(admin, "GET", "/status", None);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (v["connections"] == 2).then_some(v)
    });
    assert_eq!(status["node"], "admin-test");
    assert_eq!(status["process"], 1);
    assert_eq!(status["pid"], server.child.as_ref().unwrap().id());
    assert!(status["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert!(status["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    let cores = status["cores"].as_array().unwrap();
    assert_eq!(cores.len(), affinity_cpus());
    let per_core: u64 = cores
        .iter()
        .map(|c| c["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(per_core, 2);
    assert!(cores
        .iter()
        .all(|c| c["answered"] == true && c["lua_memory"].as_u64().unwrap() > 0));
    let stage = &status["stages"][0];
    assert_eq!(
        (stage["id"].as_str(), stage["entry"].as_str()),
        (Some("stage"), Some("lua.so+stage"))
    );
    let listener = &status["listeners"][0];
    assert_eq!(
        listener["address"],
        format!("tcp://127.0.0.1:{}", server.port)
    );
    assert_eq!(listener["stage"], "stage");
    // The main script is a loaded script: its version is the file's size and hash.
    let scripts: Vec<&serde_json::Value> = cores
        .iter()
        .flat_map(|c| c["scripts"].as_array().unwrap())
        .collect();
    let start = scripts
        .iter()
        .find(|s| s["path"].as_str().unwrap().ends_with("start.lua"))
        .unwrap_or_else(|| panic!("start.lua among the scripts: {status:#}"));
    let len = std::fs::metadata(server.path("start.lua")).unwrap().len();
    assert_eq!(start["size"], len);
    assert_eq!(start["hash"].as_str().unwrap().len(), 16);
}

#[test]
fn beyond_loopback_a_token_is_required_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let open = r##"{ "#startup": [["lua.so+stage"]], "#admin": "0.0.0.0:9180",
                    "lua.so": { "%package": ["."], "lua.so+stage": "start" } }"##;
    std::fs::write(dir.path().join("stage.json"), open).unwrap();
    std::fs::write(dir.path().join("start.lua"), "").unwrap();
    let (code, _, stderr) = run_stage(dir.path(), &["-c", "stage.json"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("#admin") && stderr.contains("token"),
        "{stderr}"
    );

    let admin = free_port();
    let server = echo_server(&format!(
        r#"{{"listen": "127.0.0.1:{admin}", "token": "s3cret"}}"#
    ));
    for path in ["/metrics", "/status"] {
        assert_eq!(
            http(admin, "GET", path, None).0,
            401,
            "{path} without a token"
        );
        assert_eq!(
            http(admin, "GET", path, Some("wrong")).0,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            http(admin, "GET", path, Some("s3cret")).0,
            200,
            "{path} with the token"
        );
    }
    assert_eq!(http(admin, "POST", "/reload", None).0, 401);
    // The page holds no figures; it asks for them with the token.
    let (code, page) = http(admin, "GET", "/", None);
    assert_eq!(code, 200);
    assert!(page.contains("<title>STAGE admin</title>"));
    drop(server);
}

#[test]
fn post_reload_makes_every_core_serve_a_changed_script_at_once() {
    let admin = free_port();
    // Cached scripts are checked once an hour: only the reload can bring the edit in.
    let config = format!(
        r##"{{ "#startup": [["lua.so+stage"]], "#admin": "127.0.0.1:{admin}",
             "lua.so": {{ "%package": ["."], "%reflush": 3600000, "lua.so+stage": "start" }} }}"##
    );
    let server = Server::start(
        &config,
        &[
            (
                "start.lua",
                "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
                   return function (s, data)
                     return stage.load('packet+' .. data.message, function (f) return f(s, data) end)
                   end
                 end)",
            ),
            ("packet.lua", "return { version = function () return { v = 1 } end }"),
        ],
    );
    let version = |client: &mut TcpStream| {
        client.write_all(&message("version", &[])).unwrap();
        read_reply(client).get("v").and_then(Bson::as_i64)
    };
    // Several connections, so every core (the kernel spreads them) has the script cached.
    let mut clients: Vec<TcpStream> = (0..8).map(|_| server.connect()).collect();
    for c in clients.iter_mut() {
        assert_eq!(version(c), Some(1));
    }
    std::fs::write(
        server.path("packet.lua"),
        "return { version = function () return { v = 2 } end } -- edited",
    )
    .unwrap();
    for c in clients.iter_mut() {
        assert_eq!(
            version(c),
            Some(1),
            "without a reload the cached version serves on"
        );
    }
    let (code, body) = http(admin, "POST", "/reload", None);
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Every core switched before the reply: the reloader answers after the last one.
    assert_eq!(report["outcome"], "switched", "{report:#}");
    let changed = report["changed"].as_array().unwrap();
    assert!(
        changed.len() == 1 && changed[0].as_str().unwrap().starts_with("packet"),
        "{report:#}"
    );
    assert_eq!(
        report["cores"].as_u64(),
        Some(affinity_cpus() as u64),
        "{report:#}"
    );
    // Nothing changed since: the next request says so.
    let (_, body) = http(admin, "POST", "/reload", None);
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["outcome"], "unchanged", "{again:#}");
    for c in clients.iter_mut() {
        assert_eq!(
            version(c),
            Some(2),
            "after the reload every core serves the edit"
        );
    }
    assert_eq!(http(admin, "GET", "/reload", None).0, 405);
}

/// The `chromium` binary, or `None` after printing why the test is skipped (a failure under
/// `STAGE_REQUIRE_SERVICES=1`, where CI has installed it).
fn chromium_or_skip(test: &str) -> Option<&'static str> {
    for bin in ["chromium", "chromium-browser"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return Some(bin);
        }
    }
    if std::env::var("STAGE_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{test}: chromium is not installed (STAGE_REQUIRE_SERVICES=1)");
    }
    println!("skipped {test}: chromium is not installed (apt install chromium)");
    None
}

#[test]
fn the_console_page_shows_live_figures_in_headless_chromium() {
    let Some(chromium) =
        chromium_or_skip("the_console_page_shows_live_figures_in_headless_chromium")
    else {
        return;
    };
    let admin = free_port();
    let server = echo_server(&format!(
        r#"{{"listen": "127.0.0.1:{admin}", "token": "pagetoken"}}"#
    ));
    let mut clients: Vec<TcpStream> = (0..2).map(|_| server.connect()).collect();
    for c in clients.iter_mut() {
        for _ in 0..3 {
            c.write_all(&message("hi", &[])).unwrap();
            read_frame(c).unwrap();
        }
    }
    let token = Some("pagetoken");
    let expected = server.wait_for("the scrape shows the six frames", || {
        let s = scrape(admin, token);
        let frames = total(&s, "stage_frames_in_total", &[]);
        (frames >= 6.0 && total(&s, "stage_frames_out_total", &[]) == frames).then_some(s)
    });
    let accepted = total(&expected, "stage_connections_accepted_total", &[]);
    let frames = total(&expected, "stage_frames_in_total", &[]);

    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--virtual-time-budget=5000",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("http://127.0.0.1:{admin}/#token=pagetoken"),
        ])
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let shown = |id: &str| -> Option<String> {
        let at = dom.find(&format!("id=\"{id}\">"))? + id.len() + 6;
        Some(dom[at..].split('<').next()?.to_string())
    };
    assert_eq!(
        shown("accepted").as_deref(),
        Some(accepted.to_string().as_str()),
        "the page shows the accepted connections; DOM:\n{dom}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        shown("frames-in").as_deref(),
        Some(frames.to_string().as_str()),
        "{dom}"
    );
    assert_eq!(shown("open").as_deref(), Some("2"), "{dom}");
    assert!(
        shown("node").is_some_and(|n| n.starts_with("admin-test · process 1")),
        "{dom}"
    );
    // The tables are filled from /status: the listener and the main script.
    assert!(
        dom.contains(&format!("tcp://127.0.0.1:{}", server.port)),
        "{dom}"
    );
    assert!(dom.contains("start.lua"), "{dom}");
    assert!(dom.contains("live · updated"), "{dom}");
}

#[test]
fn in_a_multi_process_node_each_child_serves_its_own_endpoint_on_port_plus_n() {
    // Three free ports in a row, from below `free_port`'s range (which hands ports to the
    // other tests of this binary one by one, so base + 1 could be another test's).
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let base = (0..1000u16)
        .map(|i| 15_000 + ((std::process::id() as u16 % 1000) * 4 + i * 4) % 4000)
        .find(|&b| (b..=b + 2).all(free))
        .expect("three free ports in a row");
    let config = format!(
        r##"{{ "#router": [400, 100], "#startup": [["lua.so+a"], ["lua.so+b"]],
             "#admin": "127.0.0.1:{base}",
             "lua.so": {{ "%package": ["."], "a": "game", "b": "game" }} }}"##
    );
    let server = Server::start(
        &config,
        &[(
            "game.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data) return { n = process.stage } end
             end)",
        )],
    );
    for n in 1..=2u16 {
        let port = base + n;
        server.wait_ready_port(port);
        let (code, body) = http(port, "GET", "/status", None);
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["process"], n, "{status:#}");
        assert_ne!(
            status["pid"],
            server.child.as_ref().unwrap().id(),
            "a child, not the supervisor"
        );
        let processes = status["processes"].as_array().unwrap();
        let admins: Vec<&str> = processes
            .iter()
            .map(|p| p["admin"].as_str().unwrap())
            .collect();
        assert_eq!(
            admins,
            [
                format!("127.0.0.1:{}", base + 1),
                format!("127.0.0.1:{}", base + 2)
            ],
            "{status:#}"
        );
        let metrics = scrape(port, None);
        assert!(
            total(&metrics, "stage_up_seconds", &[("process", &n.to_string())]) > 0.0,
            "process {n}'s own figures"
        );
    }
    // The supervisor itself serves nothing on the configured port.
    assert!(TcpStream::connect(("127.0.0.1", base)).is_err());
}

#[test]
fn a_connection_closed_for_passing_out_is_counted_as_an_overflow() {
    let admin = free_port();
    let config = format!(
        r##"{{ "#startup": [["lua.so+stage"]], "#admin": "127.0.0.1:{admin}",
             "lua.so": {{ "%package": ["."], "lua.so+stage": "start" }} }}"##
    );
    // One callback commits 8 KB to a connection whose OUT is 4 KB: past OUT before any
    // flush, so the connection is closed with ENOBUFS.
    let server = Server::start(
        &config,
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,4k', function ()
               return function (s, data)
                 for i = 1, 8 do s.commit(string.rep('x', 1000)) end
               end
             end)",
        )],
    );
    let name = "stage_output_overflow_closes_total";
    let before = total(&scrape(admin, None), name, &[]);
    let mut client = server.connect();
    client.write_all(&message("flood", &[])).unwrap();
    assert!(is_closed(&mut client));
    server.wait_until("the overflow close is counted", || {
        total(&scrape(admin, None), name, &[]) == before + 1.0
    });
}

#[test]
fn service_counters_move_with_index_ticket_route_and_curl_traffic() {
    let admin = free_port();
    let config = format!(
        r##"{{ "#startup": [["lua.so+game", "index.so+rank", "=ticket+ticket", "=route+route", "curl.so+agent"]],
             "#admin": "127.0.0.1:{admin}",
             "lua.so": {{ "%package": ["."], "game": "start" }},
             "index.so+rank": "score/", "=ticket+ticket": [1000, {{"solo": 1}}] }}"##
    );
    // Each packet: two index commands (one direct `set`, one `get`), one ticket request
    // whose grant is released at once, one `=route` publication the stage itself (a
    // subscriber of `topic`) claims, one nobody subscribes to, and one curl.so request to a
    // closed port; the results are logged.
    let server = Server::start(
        &config,
        &[(
            "start.lua",
            r#"
            stage.waitfor("set", function () logger.info("INDEX SET") end)
            stage.waitfor("got", function () logger.info("INDEX GOT") end)
            stage.waitfor("granted", function () logger.info("TICKET GRANTED") return 0 end)
            stage.waitfor("route:@", function (key, token) stage.signal(nil, token) end)
            stage.waitfor("taken", function () logger.info("ROUTE TAKEN") end)
            stage.waitfor("nobody", function () logger.info("ROUTE FAILED") end)
            stage.signal("route:@", { topic = "taken" })
            stage.waitfor("fetched", function (r) logger.info("FETCHED " .. r.data.result) end)
            broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
              return function (s, data)
                stage.signal("rank:set?board=set", { bob = { i = 200 } })
                stage.signal("rank:get?board=got", "bob")
                stage.signal("ticket:solo=granted", "x")
                stage.signal("route:topic", "t")
                stage.signal("route:nosuch!nobody", "n")
                -- Nothing listens on port 1: curl's result 7 (connection refused).
                stage.signal("agent:fetched", "http://127.0.0.1:1/")
                return { ok = true }
              end
            end)"#,
        )],
    );
    let before = scrape(admin, None);
    let mut client = server.connect();
    for _ in 0..2 {
        client.write_all(&message("go", &[])).unwrap();
        read_frame(&mut client).unwrap();
    }
    server.wait_log_count("INDEX GOT", 2);
    server.wait_log_count("TICKET GRANTED", 2);
    server.wait_log_count("ROUTE TAKEN", 2);
    server.wait_log_count("ROUTE FAILED", 2);
    server.wait_log_count("FETCHED 7", 2);
    let moved = |s: &Samples, name: &str| total(s, name, &[]) - total(&before, name, &[]);
    let after = server.wait_for("the service counters move", || {
        let s = scrape(admin, None);
        (moved(&s, "stage_index_operations_total") == 4.0).then_some(s)
    });
    assert_eq!(moved(&after, "stage_ticket_grants_total"), 2.0);
    assert_eq!(moved(&after, "stage_ticket_refusals_total"), 0.0);
    assert_eq!(
        total(&after, "stage_ticket_held", &[]),
        0.0,
        "both leases released"
    );
    assert_eq!(moved(&after, "stage_route_offers_total"), 2.0);
    assert_eq!(moved(&after, "stage_route_claims_total"), 2.0);
    assert_eq!(moved(&after, "stage_route_failures_total"), 2.0);
    assert_eq!(total(&after, "stage_route_pending", &[]), 0.0);
    let refused = [("result", "curl_7")];
    assert_eq!(
        total(&after, "stage_http_requests_total", &refused)
            - total(&before, "stage_http_requests_total", &refused),
        2.0
    );
    // The stage messages went to one receiver each (`rank:`, `ticket:`): policy `one`.
    let routed = |s: &Samples| total(s, "stage_messages_routed_total", &[("policy", "one")]);
    assert!(routed(&after) - routed(&before) >= 6.0);
}

/// `stage_limit_hits_total{limit="blocking_on_core"}` as the admin endpoint on `admin` reports
/// it.
fn blocking_calls(admin: u16) -> f64 {
    total(
        &scrape(admin, None),
        "stage_limit_hits_total",
        &[("limit", "blocking_on_core")],
    )
}

/// Scripts and data files under `%package` come from the process's file image: a core loads
/// a script and reads a `.json` file there without a file system call (no blocking call is
/// counted), a script added while the node runs is found after the next scan, and (with
/// `%blocking: "count"`) a data file outside every `%package` directory is still read — each
/// read counted as a blocking call on a core, the first one logged.
#[test]
fn files_under_package_come_from_the_image_and_a_read_outside_is_counted() {
    let admin = free_port();
    let outside = tempfile::tempdir().unwrap();
    let prices = outside.path().join("prices.json");
    std::fs::write(&prices, r#"{"gem": 30}"#).unwrap();
    let config = format!(
        r##"{{ "#startup": [["lua.so+stage"]], "#admin": "127.0.0.1:{admin}",
             "lua.so": {{ "%package": ["."], "%reflush": 50, "%blocking": "count",
                          "lua.so+stage": "start" }} }}"##
    );
    let script = format!(
        "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
           return function (s, data)
             local m = data.message
             if m == 'items' then return {{ v = bundle.json('./data//items.json', {{'sword', 'damage'}}) }} end
             if m == 'added' then
               return stage.load('added', function (v) return {{ v = v or 'missing' }} end)
             end
             if m == 'outside' then return {{ v = bundle.json('{}', 'gem') }} end
           end
         end)",
        prices.display()
    );
    let server = Server::start(
        &config,
        &[
            ("start.lua", script.as_str()),
            ("data/items.json", r#"{"sword": {"damage": 12}}"#),
        ],
    );
    let blocking = || blocking_calls(admin);
    let ask = |name: &str| {
        let mut conn = server.connect();
        conn.write_all(&message(name, &[])).unwrap();
        read_reply(&mut conn).get("v").cloned()
    };

    assert_eq!(ask("items").and_then(|v| v.as_i64()), Some(12));
    assert_eq!(
        ask("added").as_ref().and_then(Bson::as_str),
        Some("missing")
    );
    assert_eq!(blocking(), 0.0, "nothing under %package is read on a core");

    // Written after the start: the next scan (`%reflush` 50 ms) walks it into the image.
    std::fs::write(server.path("added.lua"), "return 'added later'").unwrap();
    server.wait_reply("the added script", &message("added", &[]), |reply| {
        reply.get("v").and_then(Bson::as_str) == Some("added later")
    });
    assert_eq!(blocking(), 0.0);

    assert_eq!(ask("outside").and_then(|v| v.as_i64()), Some(30));
    assert_eq!(ask("outside").and_then(|v| v.as_i64()), Some(30));
    assert_eq!(blocking(), 2.0, "each read outside %package is counted");
    server.wait_log("blocks this core until it returns");
    assert_eq!(
        server
            .log()
            .matches("blocks this core until it returns")
            .count(),
        1,
        "logged once"
    );
}

/// `commit('sync', fn)` on a core: the `msync` runs off the core and `fn(true)` answers the
/// client once the row is on disk, counting no blocking call; with `%blocking: "count"`,
/// opening a view and `commit('sync')` without a callback wait on the core, and are counted.
#[test]
fn a_viewof_commit_with_a_callback_waits_off_the_core() {
    let admin = free_port();
    let config = format!(
        r##"{{ "#threads": 1, "#startup": [["lua.so+stage"]], "#admin": "127.0.0.1:{admin}",
             "lua.so": {{ "%package": ["."], "%reflush": 0, "%blocking": "count",
                          "lua.so+stage": "start" }} }}"##
    );
    let server = Server::start(
        &config,
        &[(
            "start.lua",
            "broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
               return function (s, data)
                 if data.message == 'open' then
                   SCORES = bundle.viewof({ 'scores.bin', 'i' }, 4)
                   return { ok = true }
                 end
                 if data.message == 'save' then
                   SCORES[1] = data.n
                   SCORES:commit('sync', function (ok, err)
                     s.commit({ ok = ok, err = err, n = SCORES[1] })
                   end)
                   return
                 end
                 SCORES[2] = data.n
                 SCORES:commit('sync')
                 return { ok = true, n = SCORES[2] }
               end
             end)",
        )],
    );
    let blocking = || blocking_calls(admin);
    let save = |name: &str, n: i32| {
        let mut conn = server.connect();
        conn.write_all(&message(name, &[("n", Bson::Int32(n))]))
            .unwrap();
        read_reply(&mut conn)
    };
    let on_disk = |row: usize| {
        let bytes = std::fs::read(server.path("scores.bin")).unwrap();
        i32::from_ne_bytes(bytes[row * 4..row * 4 + 4].try_into().unwrap())
    };

    assert_eq!(save("open", 0).get("ok"), Some(&Bson::Bool(true)));
    assert_eq!(
        blocking(),
        1.0,
        "opening a view on a serving core is counted"
    );
    let reply = save("save", 41);
    assert_eq!(reply.get("ok"), Some(&Bson::Bool(true)), "{reply:?}");
    assert_eq!(reply.get("n").and_then(Bson::as_i64), Some(41));
    assert_eq!(on_disk(0), 41);
    assert_eq!(
        blocking(),
        1.0,
        "a commit with a callback waits off the core"
    );

    let reply = save("save-waiting", 42);
    assert_eq!(reply.get("n").and_then(Bson::as_i64), Some(42));
    assert_eq!(on_disk(1), 42);
    assert_eq!(
        blocking(),
        2.0,
        "commit('sync') without a callback is counted"
    );
}

/// `%blocking` is `"refuse"` by default: what would make a serving core wait on the system
/// fails with an error that says what to do instead — a file outside the image, opening a view,
/// `commit('sync')` without a callback, a host-name lookup — each counted; the same calls
/// before the core serves (a `%preload` script, the main script: no client waits yet) and
/// `commit('sync', fn)` still work.
#[test]
fn blocking_calls_on_a_serving_core_are_refused_by_default() {
    let admin = free_port();
    let outside = tempfile::tempdir().unwrap();
    let prices = outside.path().join("prices.json");
    std::fs::write(&prices, r#"{"gem": 30}"#).unwrap();
    let config = format!(
        r##"{{ "#threads": 1, "#startup": [["lua.so+stage"]], "#admin": "127.0.0.1:{admin}",
             "lua.so": {{ "%package": ["."], "%reflush": 0, "%preload": ["pre/"],
                          "lua.so+stage": "start" }} }}"##
    );
    // Socket callbacks see `%preload` globals and `__`, not the main script's globals.
    let script = format!(
        "__.gem = bundle.json('{prices}', 'gem')
         broker.ready('tcp://127.0.0.1:PORT?packet=1k,1k', function ()
           return function (s, data)
             local m = data.message
             -- A raised error or a `nil, err` answer (broker.aton's way) both fail.
             local function try(f, ...)
               local ok, v, err = pcall(f, ...)
               if ok and v == nil then ok, v = false, err end
               return {{ ok = ok, err = not ok and tostring(v) or nil }}
             end
             if m == 'boot' then return {{ gem = __.gem }} end
             if m == 'json' then return try(bundle.json, '{prices}', 'gem') end
             if m == 'open' then return try(bundle.viewof, {{ 'other.bin', 'i' }}, 4) end
             if m == 'aton' then return try(broker.aton, 'localhost:80') end
             SCORES[1] = data.n
             if m == 'sync' then return try(SCORES.commit, SCORES, 'sync') end
             SCORES:commit('sync', function (ok) s.commit({{ ok = ok }}) end)
           end
         end)",
        prices = prices.display()
    );
    let server = Server::start(
        &config,
        &[
            ("start.lua", script.as_str()),
            (
                "pre/views.lua",
                "SCORES = bundle.viewof({ 'scores.bin', 'i' }, 4)",
            ),
        ],
    );
    let ask = |name: &str| {
        let mut conn = server.connect();
        conn.write_all(&message(name, &[("n", Bson::Int32(7))]))
            .unwrap();
        read_reply(&mut conn)
    };

    assert_eq!(
        ask("boot").get("gem").and_then(Bson::as_i64),
        Some(30),
        "read while the core booted"
    );
    for (call, what) in [
        ("json", "bundle.json of"),
        ("open", "bundle.viewof of"),
        ("sync", "commit('sync') of"),
        ("aton", "looking up \"localhost\""),
    ] {
        let reply = ask(call);
        assert_eq!(
            reply.get("ok"),
            Some(&Bson::Bool(false)),
            "{call}: {reply:?}"
        );
        let err = reply.get("err").and_then(Bson::as_str).unwrap_or_default();
        assert!(
            err.contains(what) && err.contains("%blocking is \"refuse\""),
            "{call}: {err}"
        );
    }
    assert!(
        !server.path("other.bin").exists(),
        "a refused view is never opened"
    );
    assert_eq!(blocking_calls(admin), 4.0, "each refusal is counted");

    let reply = ask("save");
    assert_eq!(reply.get("ok"), Some(&Bson::Bool(true)), "{reply:?}");
    let on_disk = std::fs::read(server.path("scores.bin")).unwrap();
    assert_eq!(i32::from_ne_bytes(on_disk[..4].try_into().unwrap()), 7);
    assert_eq!(
        blocking_calls(admin),
        4.0,
        "a commit with a callback waits off the core"
    );
}
