//! Unit tests of the configuration module: the seed's sample configuration, merging, every
//! error path, `%package` positions, Lua stage lookup and reading `-c` sources from files.

use std::path::PathBuf;

use simd_json::prelude::*;

use super::*;

/// The JSON of the start script in the original README (seeds/000_*.txt), verbatim.
const SEED: &str = r##"{
    "#services": {
        "tcp":["0.0.0.0:8081"]
    },
    "#license": [ "DATUMFLUX CORP.", "xxxxxxxxxxxxxxxxxxxxx"],
    "#router": [ 1500 ],
    "#cluster": [ ":eth0", 18081, "127.0.0.1:28081"],
    "#threads": [ 10, 10000 ],
    "#startup":[ 
        ["index.so+index"],
        ["=route+route"],
        ["=ticket+ticket"],
        ["curl.so+curl"],
        ["lua.so+stage"]
    ],

    "curl.so+agent": {
        "user-agent": "STAGE Agent/1.0",
        "verbose": 0,
        "timeout": 10000
    },

    "lua.so": {
        "%preload": "preload",
        "%package": [ "package", "rollback", "[0]lib", "[0]" ],
        "%odbc":  {
            "DF_DEVEL": {
                "DRIVER": "MySQL ODBC 8.0 Unicode Driver",
                "SERVER": "...",
                "DATABASE": "...",
                "USER": "...",
                "PASSWORD": "..."
            }
        },
        "lua.so+stage": "start"
    },
    "=ticket+ticket": [
        100000,
        {
            "odbc": 10
        }
    ],
    "index.so+rank": "score/"
}"##;

fn one(name: &str, text: &str) -> Vec<ConfigSource> {
    vec![ConfigSource::new(name, text)]
}

fn ok(text: &str) -> Config {
    match load(one("stage.json", text)) {
        Ok(c) => c,
        Err(errs) => panic!("unexpected errors: {:#?}", messages(&errs)),
    }
}

fn errors(text: &str) -> Vec<String> {
    match load(one("stage.json", text)) {
        Ok(_) => panic!("config unexpectedly accepted: {text}"),
        Err(errs) => messages(&errs),
    }
}

fn messages(errs: &[ConfigError]) -> Vec<String> {
    errs.iter().map(ToString::to_string).collect()
}

fn module(entry: &str) -> ModuleRef {
    ModuleRef::parse(entry).expect("valid module string")
}

fn pkg(position: u32, prefix: &str) -> PackageEntry {
    PackageEntry {
        position,
        prefix: prefix.to_string(),
    }
}

/// A config with the given extra top-level members and a one-Lua-stage `#startup`.
fn with_stage(members: &str) -> String {
    format!(r##"{{ "#startup": [["lua.so+stage"]] {members} }}"##)
}

#[test]
fn seed_sample_parses_with_every_field() {
    let c = ok(SEED);
    assert_eq!(
        c.services,
        Services {
            tcp: vec!["0.0.0.0:8081".into()],
            udp: vec![],
        }
    );
    assert!(c.license_present);
    assert_eq!(
        c.router,
        Router {
            sync_ms: Some(1500),
            expiry_ms: 2850,
            notify_ms: 1500,
        }
    );
    assert_eq!(
        c.cluster,
        vec![
            ClusterEntry::Advertise("eth0".into()),
            ClusterEntry::Listen(18081),
            ClusterEntry::Member("127.0.0.1:28081".into()),
        ]
    );
    assert_eq!(
        c.threads,
        Threads {
            cores: Some(10),
            objects: 10000,
        }
    );

    let Startup::Array(entries) = &c.startup else {
        panic!("#startup is an array: {:?}", c.startup);
    };
    let expected = [
        ("index.so+index", "index.so", "index", ModuleKind::Index),
        ("=route+route", "=route", "route", ModuleKind::Route),
        ("=ticket+ticket", "=ticket", "ticket", ModuleKind::Ticket),
        ("curl.so+curl", "curl.so", "curl", ModuleKind::Curl),
        ("lua.so+stage", "lua.so", "stage", ModuleKind::Lua),
    ];
    assert_eq!(entries.len(), expected.len());
    for (entry, (text, module, id, kind)) in entries.iter().zip(expected) {
        let want = ModuleRef {
            entry: text.into(),
            module: module.into(),
            stage_id: Some(id.into()),
            kind,
        };
        assert_eq!(entry, &StartupEntry::Process(vec![want]));
    }

    let lua = c.lua_stage(&module("lua.so+stage")).unwrap();
    assert_eq!(lua.preload, vec!["preload".to_string()]);
    assert_eq!(
        lua.package,
        vec![
            pkg(0, "package"),
            pkg(1, "rollback"),
            pkg(0, "lib"),
            pkg(0, "")
        ]
    );
    assert_eq!(lua.reflush_ms, DEFAULT_REFLUSH_MS);
    assert_eq!(lua.main_script.as_deref(), Some("start"));
    let odbc = lua.odbc.as_ref().expect("%odbc is set");
    assert_eq!(
        odbc["DF_DEVEL"]["DRIVER"].as_str(),
        Some("MySQL ODBC 8.0 Unicode Driver")
    );
    assert_eq!(lua.cluster, None);
    assert_eq!(lua.block["%preload"].as_str(), Some("preload"));
    assert_eq!(lua.block["lua.so+stage"].as_str(), Some("start"));

    // The raw document keeps every block for services looked up later.
    assert_eq!(c.raw["curl.so+agent"]["timeout"].as_u64(), Some(10000));
    assert_eq!(c.raw["index.so+rank"].as_str(), Some("score/"));
    assert_eq!(c.raw["=ticket+ticket"][1]["odbc"].as_u64(), Some(10));

    // The `index.so+index` process makes this a multi-process node, so `#router` is active.
    assert_eq!(c.inactive_keys(), vec!["#services", "#license", "#cluster"]);
}

#[test]
fn first_source_defining_a_key_wins() {
    let sources = vec![
        ConfigSource::new("a.json", r##"{"#threads": 4, "#router": [1000]}"##),
        ConfigSource::new(
            "b.json",
            r##"{"#threads": [8, 50], "#router": [2000, 700], "#startup": ["lua.so+x"], "lua.so": {"%reflush": 9}}"##,
        ),
        ConfigSource::new("c.json", r##"{"lua.so": {"%reflush": 1}}"##),
    ];
    let c = load(sources).unwrap();
    assert_eq!(
        c.threads,
        Threads {
            cores: Some(4),
            objects: DEFAULT_OBJECTS,
        }
    );
    assert_eq!(c.router.notify_ms, 1000);
    assert_eq!(c.router.expiry_ms, 1900);
    // Whole blocks are replaced, not merged key by key.
    assert_eq!(c.lua_stage(&module("lua.so+x")).unwrap().reflush_ms, 9);

    // An error names the file that defined the key, not just the first file.
    let errs = load(vec![
        ConfigSource::new("a.json", r##"{"#threads": "ten"}"##),
        ConfigSource::new(
            "b.json",
            r##"{"#threads": 2, "#router": "x", "#startup": ["lua.so"]}"##,
        ),
    ])
    .unwrap_err();
    assert_eq!(
        messages(&errs),
        vec![
            "config `a.json`: key `#threads`: expected an integer or an array [ncpu, nobjects], found string \"ten\"",
            "config `b.json`: key `#router`: expected an array [sync_ms, notify_ms] of positive integers, found string \"x\"",
        ]
    );
}

#[test]
fn error_paths_are_exact_and_all_are_collected() {
    let errs = errors(
        r##"{
        "#threads": ["ten", 0],
        "#startup": [["lua.so+stage"], 100, [5], "lua+x", ["lua.so+a:b"], {}],
        "#bogus": 1,
        "#services": {"tcp": ["localhost"], "sctp": []},
        "#router": [0, 300, 5],
        "#cluster": ["=nohost", 70000, ":", true],
        "lua.so": {"%package": ["ok", 7], "%reflush": -1, "%prelod": "x", "%odbc": {"A": 1}},
        "=ticket+ticket": [100, {"odbc": "ten"}],
        "curl.so+agent": {"user_agent": "x", "verbose": 2},
        "index.so+rank": ["dir/", "big"],
        "=foo+bar": 1,
        "mystery": {}
    }"##,
    );
    assert_eq!(
        errs,
        vec![
            "config `stage.json`: key `#threads[0]`: expected an integer (thread count, <= 0 for automatic), found string \"ten\"",
            "config `stage.json`: key `#threads[1]`: object pool size 0 is out of range: expected 1 to 4294967295",
            "config `stage.json`: key `#startup[2][0]`: expected a module string like \"lua.so+stage\", found integer 5",
            "config `stage.json`: key `#startup[3]`: `lua` is not a module: expected `NAME.so[@entry][+ID]`, `=route[+ID]` or `=ticket[+ID]`",
            "config `stage.json`: key `#startup[4][0]`: stage id `a:b` contains ':', which has a meaning in message targets",
            "config `stage.json`: key `#startup[5]`: expected a module string, an array of module strings or a delay in msec, found object",
            "config `stage.json`: key `#bogus`: unknown key (the `#` settings are #services, #license, #router, #restart, #cluster, #node, #admin, #threads, #startup)",
            "config `stage.json`: key `#services.tcp[0]`: `localhost` has no port: expected \"host:port\"",
            "config `stage.json`: key `#services.sctp`: unknown key: `#services` takes only `tcp` and `udp`",
            "config `stage.json`: key `#router`: expected at most 2 elements [sync_ms, notify_ms], found 3",
            "config `stage.json`: key `#router[0]`: 0 msec is out of range: expected 1 to 4294967295",
            "config `stage.json`: key `#cluster[0]`: `nohost` has no port: expected \"host:port\"",
            "config `stage.json`: key `#cluster[1]`: port 70000 is not a number from 0 to 65535",
            "config `stage.json`: key `#cluster[2]`: `:` must be followed by an interface name or IPv4 address",
            "config `stage.json`: key `#cluster[3]`: expected a listen port, \"host:port\", \":interface\", \"=host:port\", \"nats://host:port\" or an object of NATS files {ca, cert, key, nkey, creds}, found boolean true",
            "config `stage.json`: key `lua.so.%package[1]`: expected a string, found integer 7",
            "config `stage.json`: key `lua.so.%reflush`: -1 msec is out of range: expected 0 to 4294967295",
            "config `stage.json`: key `lua.so.%prelod`: unknown key (a Lua block knows %preload, %package, %reflush, %ffi, %memory, %cpu, %spin, %blocking, %odbc, %cluster)",
            "config `stage.json`: key `lua.so.%odbc.A`: expected an object of ODBC keywords or a raw connection string, found integer 1",
            "config `stage.json`: key `=ticket+ticket[1].odbc`: expected an integer (ticket limit; negative = refuse instead of queue), found string \"ten\"",
            "config `stage.json`: key `curl.so+agent.user_agent`: unknown key: a curl.so block takes `user-agent`, `verbose` and `timeout`",
            "config `stage.json`: key `curl.so+agent.verbose`: 2 is not 0 or 1",
            "config `stage.json`: key `index.so+rank[1]`: expected a positive integer, found string \"big\"",
            "config `stage.json`: key `=foo+bar`: unknown built-in module `=foo` (the built-ins are `=route` and `=ticket`)",
            "config `stage.json`: key `mystery`: unknown key: not a `#` setting, not a module block (`NAME.so...`, `=route...`, `=ticket...`) and not merged by any `lua.so+ID` array",
        ]
    );
}

#[test]
fn missing_startup_is_fatal() {
    let errs = load(vec![
        ConfigSource::new("a.json", r##"{"#threads": 2}"##),
        ConfigSource::new("b.json", "{}"),
    ])
    .unwrap_err();
    assert_eq!(
        messages(&errs),
        vec!["config `a.json:b.json`: `#startup` is required (it lists the stage processes to start, e.g. `\"#startup\": [[\"lua.so+stage\"]]`)"]
    );
    // ...but not on top of a file that could not be parsed (it may hold `#startup`).
    let errs = load(one("<stdin>", "{\"#threads\": 2,\n  \"#startup\" [1]}")).unwrap_err();
    assert_eq!(errs.len(), 1, "{:?}", messages(&errs));
    let ConfigError::Json {
        name, offset, line, ..
    } = &errs[0]
    else {
        panic!("expected a JSON error: {:?}", errs[0]);
    };
    assert_eq!((name.as_str(), *line), ("<stdin>", 2));
    assert!(*offset >= 16, "offset {offset} points into line 2");
    assert!(errs[0]
        .to_string()
        .starts_with("config `<stdin>`: invalid JSON at byte "));

    assert_eq!(
        messages(&load(one("x.json", "[1, 2]")).unwrap_err()),
        vec!["config `x.json`: the top level must be a JSON object, found array of 2 element(s)"]
    );
    // Nothing to start is as fatal as no `#startup` at all.
    assert_eq!(
        errors(r##"{"#startup": [100]}"##),
        vec!["config `stage.json`: key `#startup`: starts no stage process (only delays)"]
    );
}

#[test]
fn startup_forms() {
    let c = ok(
        r##"{"#startup": [100, "lua.so+a", ["luajit.so+b", "./x/examples.so@main+ex", "lua.so"]]}"##,
    );
    let Startup::Array(entries) = &c.startup else {
        panic!("array form");
    };
    assert_eq!(entries[0], StartupEntry::Delay(100));
    assert_eq!(entries[1], StartupEntry::Process(vec![module("lua.so+a")]));
    let StartupEntry::Process(mods) = &entries[2] else {
        panic!("process");
    };
    assert_eq!(mods[0].kind, ModuleKind::Lua);
    assert_eq!(mods[1].kind, ModuleKind::Plugin);
    assert_eq!(mods[1].library(), "./x/examples.so");
    assert_eq!(mods[1].symbol(), Some("main"));
    assert_eq!(mods[1].stage_id.as_deref(), Some("ex"));
    assert_eq!(mods[2].stage_id, None);

    // Not an array: single-process development mode.
    let c = ok(r##"{"#startup": "lua.so+dev"}"##);
    assert_eq!(c.startup, Startup::Single(vec![module("lua.so+dev")]));
    // The stage id is the text after the *last* `+`.
    assert_eq!(module("a+b.so+c").module, "a+b.so");
    assert_eq!(module("a+b.so+c").stage_id.as_deref(), Some("c"));
}

#[test]
fn services_router_cluster_threads_forms() {
    let c = ok(r##"{
        "#startup": ["lua.so+a"],
        "#services": {"tcp": ["0.0.0.0:8801", 8802, "[::]:9000", "9001", "host.lan:1"], "udp": "1.2.3.4:53"},
        "#router": [1500, 900],
        "#cluster": 18081,
        "#threads": 0
    }"##);
    assert_eq!(
        c.services.tcp,
        vec![
            "0.0.0.0:8801",
            "0.0.0.0:8802",
            "[::]:9000",
            "0.0.0.0:9001",
            "host.lan:1"
        ]
    );
    assert_eq!(c.services.udp, vec!["1.2.3.4:53"]);
    assert_eq!((c.router.expiry_ms, c.router.notify_ms), (2850, 900));
    assert_eq!(c.cluster, vec![ClusterEntry::Listen(18081)]);
    assert_eq!(c.threads.cores, None);
    assert_eq!(c.inactive_keys(), vec!["#services", "#router", "#cluster"]);

    let c =
        ok(r##"{"#startup": ["lua.so+a"], "#cluster": ["=10.0.0.1:18081"], "#threads": [-1]}"##);
    assert_eq!(
        c.cluster,
        vec![ClusterEntry::Backup("10.0.0.1:18081".into())]
    );
    assert_eq!(c.threads, Threads::default());

    // NATS servers join the cluster; the original's entries still parse beside them.
    let c = ok(r##"{"#startup": ["lua.so+a"], "#node": "eu-1_a",
        "#cluster": ["nats://127.0.0.1:4222", "tls://user:pw@nats.lan:4443", ":eth0", 18081]}"##);
    assert_eq!(
        c.cluster,
        vec![
            ClusterEntry::Nats("nats://127.0.0.1:4222".into()),
            ClusterEntry::Nats("tls://user:pw@nats.lan:4443".into()),
            ClusterEntry::Advertise("eth0".into()),
            ClusterEntry::Listen(18081),
        ]
    );
    assert_eq!(
        nats_servers(&c.cluster),
        vec!["nats://127.0.0.1:4222", "tls://user:pw@nats.lan:4443"]
    );
    assert!(c.clustered());
    assert_eq!(c.node.as_deref(), Some("eu-1_a"));
    assert!(c.inactive_keys().is_empty(), "{:?}", c.inactive_keys());
    let errs = errors(
        r##"{"#startup": ["lua.so+a"], "#node": "a.b",
        "#cluster": ["nats://", "nats://u:p@", "tls://:4222"]}"##,
    );
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(
        errs[0].contains("`#node`: `a.b`: a node name is"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains("`#cluster[0]`: `nats://`: expected"),
        "{errs:?}"
    );
    assert!(errors(r##"{"#startup": ["lua.so+a"], "#node": 7}"##)[0].contains("expected a string"));
    // Without NATS servers `#node` has nothing to name.
    let c = ok(r##"{"#startup": ["lua.so+a"], "#node": "n1"}"##);
    assert!(!c.clustered());
    assert_eq!(c.inactive_keys(), vec!["#node"]);

    // Absent `#router`: the window is 500 msec and the heartbeat 300 msec (open question 21).
    let c = ok(r##"{"#startup": ["lua.so+a"]}"##);
    assert_eq!(c.router, Router::default());
    assert_eq!((c.router.expiry_ms, c.router.notify_ms), (500, 300));
    assert!(!c.license_present);
    assert!(c.inactive_keys().is_empty());
}

#[test]
fn package_positions() {
    assert_eq!(PackageEntry::parse("[0]lib", 2), Ok(pkg(0, "lib")));
    assert_eq!(PackageEntry::parse("#2x", 0), Ok(pkg(2, "x")));
    assert_eq!(PackageEntry::parse("rollback", 1), Ok(pkg(1, "rollback")));
    assert_eq!(PackageEntry::parse("[0]", 3), Ok(pkg(0, "")));
    assert_eq!(
        PackageEntry::parse("scripts.zip:", 0),
        Ok(pkg(0, "scripts.zip:"))
    );
    // `#` without digits is just a directory name.
    assert_eq!(PackageEntry::parse("#dir", 1), Ok(pkg(1, "#dir")));
    assert!(PackageEntry::parse("[x]lib", 0).is_err());
    assert!(PackageEntry::parse("[0lib", 0).is_err());

    // A single string is one entry at position 0 (or its forced position).
    let c = ok(&with_stage(r##", "lua.so": {"%package": "[3]dir"}"##));
    assert_eq!(
        c.lua_stage(&module("lua.so+stage")).unwrap().package,
        vec![pkg(3, "dir")]
    );
    // Absent: the current directory at position 0.
    let c = ok(&with_stage(""));
    assert_eq!(
        c.lua_stage(&module("lua.so+stage")).unwrap().package,
        vec![pkg(0, "")]
    );

    assert_eq!(
        errors(&with_stage(r##", "lua.so": {"%package": ["a", "[y]b"]}"##)),
        vec!["config `stage.json`: key `lua.so.%package[1]`: `[y]b`: `[y]` must be a position number like `[0]`"]
    );
}

#[test]
fn lua_stage_lookup_order() {
    // The top-level `M+ID` object is merged over the module block `M`; the main script is then
    // `M+ID`, else `ID`, inside the merged block.
    let c = ok(&with_stage(
        r##", "lua.so": {"%preload": "a", "%reflush": 5, "stage": "by-id", "x": 1},
             "lua.so+stage": {"%preload": ["b", "c"], "x": 2, "%cluster": "tcp://[::]:1"}"##,
    ));
    let s = c.lua_stage(&module("lua.so+stage")).unwrap();
    assert_eq!(s.preload, vec!["b", "c"]);
    assert_eq!(s.reflush_ms, 5);
    assert_eq!(s.main_script.as_deref(), Some("by-id"));
    assert_eq!(s.block["x"].as_u64(), Some(2));
    assert_eq!(
        s.cluster.as_ref().and_then(|v| v.as_str()),
        Some("tcp://[::]:1")
    );
    assert_eq!(
        c.inactive_keys(),
        vec!["`lua.so+stage.%cluster` (script-level cluster)"]
    );

    // `"M+ID"` beats `"ID"` inside the block.
    let c = ok(&with_stage(
        r##", "lua.so": {"lua.so+stage": "full", "stage": "short"}"##,
    ));
    assert_eq!(
        c.lua_stage(&module("lua.so+stage"))
            .unwrap()
            .main_script
            .as_deref(),
        Some("full")
    );

    // String form: the main script; the module block still applies.
    let c = ok(&with_stage(
        r##", "lua.so": {"%reflush": 7, "lua.so+stage": "ignored"}, "lua.so+stage": "boot""##,
    ));
    let s = c.lua_stage(&module("lua.so+stage")).unwrap();
    assert_eq!(s.main_script.as_deref(), Some("boot"));
    assert_eq!(s.reflush_ms, 7);

    // No block at all: defaults, and no main script (a boot warning, not a config error).
    let c = ok(&with_stage(""));
    let s = c.lua_stage(&module("lua.so+stage")).unwrap();
    assert_eq!(s.main_script, None);
    assert_eq!(s.reflush_ms, DEFAULT_REFLUSH_MS);
    assert!(s.preload.is_empty());
    assert_eq!(s.odbc, None);

    // `luajit.so` has its own module block.
    let c = ok(
        r##"{"#startup": ["luajit.so+j"], "lua.so": {"%reflush": 1}, "luajit.so": {"j": "jit"}}"##,
    );
    let s = c.lua_stage(&module("luajit.so+j")).unwrap();
    assert_eq!(
        (s.main_script.as_deref(), s.reflush_ms),
        (Some("jit"), DEFAULT_REFLUSH_MS)
    );

    // Not a Lua module.
    assert_eq!(
        c.lua_stage(&module("index.so+rank"))
            .unwrap_err()
            .to_string(),
        "`index.so+rank` is not a Lua stage (only `lua.so` and `luajit.so` have Lua stage blocks)"
    );

    // A wrongly typed main-script entry is caught at load time, at the key as written.
    assert_eq!(
        errors(&with_stage(r##", "lua.so": {"stage": 5}"##)),
        vec![
            "config `stage.json`: key `lua.so.stage`: expected a main script name, found integer 5"
        ]
    );
}

#[test]
fn lua_stage_array_merges_named_blocks_and_files() {
    let dir = TempDir::new("array");
    let file = dir.write(
        "extra.json",
        r##"{"%reflush": 11, "%preload": "from-file"}"##,
    );
    let text = with_stage(&format!(
        r##", "common": {{"%preload": "c", "%reflush": 3, "stage": "main"}},
             "lua.so+stage": ["common", {{"%reflush": 7}}, {file:?}]"##,
        file = file.to_str().unwrap()
    ));
    let c = ok(&text);
    let s = c.lua_stage(&module("lua.so+stage")).unwrap();
    // Later elements override earlier ones.
    assert_eq!(s.preload, vec!["from-file"]);
    assert_eq!(s.reflush_ms, 11);
    assert_eq!(s.main_script.as_deref(), Some("main"));

    // Errors inside a merged file name the file; an unknown name is reported at the element.
    let bad = dir.write("bad.json", r##"{"%reflush": "soon"}"##);
    let text = with_stage(&format!(
        r##", "lua.so+stage": [{bad:?}, "nowhere"], "common": {{"%oops": 1}}"##,
        bad = bad.to_str().unwrap()
    ));
    assert_eq!(
        errors(&text),
        vec![
            format!(
                "config `{}`: key `%reflush`: expected an integer (msec), found string \"soon\"",
                bad.display()
            ),
            "config `stage.json`: key `lua.so+stage[1]`: `nowhere` is neither a top-level key nor a readable JSON file (No such file or directory)".to_string(),
            "config `stage.json`: key `common`: unknown key: not a `#` setting, not a module block (`NAME.so...`, `=route...`, `=ticket...`) and not merged by any `lua.so+ID` array".to_string(),
        ]
    );
}

#[test]
fn read_sources_splits_on_colon() {
    let dir = TempDir::new("read");
    let a = dir.write("a.json", r##"{"#startup": ["lua.so+a"], "#threads": 3}"##);
    let b = dir.write("b.json", r##"{"#threads": 5, "lua.so": {"a": "main"}}"##);
    let spec = format!("{}:{}", a.display(), b.display());
    let sources = read_sources(&spec).unwrap();
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0].name, a.display().to_string());
    assert_eq!(sources[1].name, b.display().to_string());
    assert!(sources[1].text.contains("\"main\""));
    let c = load(sources).unwrap();
    assert_eq!(c.threads.cores, Some(3));
    assert_eq!(
        c.lua_stage(&module("lua.so+a"))
            .unwrap()
            .main_script
            .as_deref(),
        Some("main")
    );

    // Empty segments are skipped; a missing file stops with its path.
    assert_eq!(
        read_sources(&format!("{}::", a.display())).unwrap().len(),
        1
    );
    let missing = dir.path.join("missing.json");
    assert_eq!(
        read_sources(&format!("{}:{}", a.display(), missing.display()))
            .unwrap_err()
            .to_string(),
        format!(
            "cannot read config `{}`: No such file or directory",
            missing.display()
        )
    );
    assert!(matches!(read_sources(":"), Err(ConfigError::NoSource)));
}

/// A scratch directory removed on drop (the engine crate has no `tempfile` dependency).
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("stage-config-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[test]
fn processes_are_numbered_by_process_entries_and_lua_ones_pick_the_mode() {
    let c = ok(r##"{
        "#router": [400, 100],
        "#startup": [["lua.so+a"], 500, ["examples.so+c"], ["lua.so+b", "lua.so+c"], "lua.so+a"]
    }"##);
    let numbers: Vec<(u32, Vec<&str>)> = c
        .startup
        .processes()
        .into_iter()
        .map(|(n, m)| (n, m.iter().map(|m| m.entry.as_str()).collect()))
        .collect();
    assert_eq!(
        numbers,
        vec![
            (1, vec!["lua.so+a"]),
            (2, vec!["examples.so+c"]),
            (3, vec!["lua.so+b", "lua.so+c"]),
            (4, vec!["lua.so+a"]),
        ]
    );
    let lua: Vec<u32> = c.lua_processes().iter().map(|(n, _)| *n).collect();
    assert_eq!(lua, vec![1, 3, 4]);
    assert!(c.multi_process());
    assert!(!c.inactive_keys().contains(&"#router".to_string()));

    // One Lua process (whatever else `#startup` lists) keeps the single-process node.
    let c = ok(r##"{"#router": [400], "#startup": [["lua.so+a"], ["examples.so+c"]]}"##);
    assert!(!c.multi_process());
    assert!(c.inactive_keys().contains(&"#router".to_string()));
    let c = ok(r##"{"#startup": "lua.so+a"}"##);
    assert_eq!(c.startup.processes().len(), 1);
    assert!(!c.multi_process());
}

#[test]
fn to_json_reproduces_the_merged_configuration() {
    let sources = vec![
        ConfigSource::new(
            "a.json",
            r##"{"#threads": 4, "lua.so": {"%package": ["x\"y"]}}"##,
        ),
        ConfigSource::new(
            "b.json",
            r##"{"#threads": 9, "#startup": [["lua.so+a"], ["lua.so+b"]], "lua.so+a": "start"}"##,
        ),
    ];
    let c = load(sources).unwrap();
    let again = load(vec![ConfigSource::new("child.json", c.to_json())]).unwrap();
    assert_eq!(again.raw, c.raw);
    assert_eq!(again.order, c.order);
    assert_eq!(again.threads.cores, Some(4));
}

#[test]
fn route_block_takes_only_a_keepalive() {
    let good = r##"{ "#startup": [["=route+route"]], "=route+route": {"keepalive": 500} }"##;
    ok(good);
    let bad = r##"{ "#startup": [["=route+route"]], "=route+route": {"keep_alive": 500} }"##;
    assert_eq!(errors(bad).len(), 1, "{:?}", errors(bad));
    let zero = r##"{ "#startup": [["=route+route"]], "=route": {"keepalive": 0} }"##;
    assert_eq!(errors(zero).len(), 1, "{:?}", errors(zero));
    let shape = r##"{ "#startup": [["=route+route"]], "=route+route": 500 }"##;
    assert_eq!(errors(shape).len(), 1, "{:?}", errors(shape));
}

#[test]
fn the_index_block_object_form_is_checked_key_by_key() {
    let errs = errors(
        r##"{
        "#startup": [["index.so+a", "index.so+b"]],
        "index.so+a": {"path": "a/", "keysize": 64, "sync": 1000, "snapshot": 1048576},
        "index.so+b": {"path": 1, "sync": "sometimes", "extra": true}
    }"##,
    );
    assert_eq!(
        errs,
        vec![
            "config `stage.json`: key `index.so+b.path`: expected a directory string, found integer 1",
            "config `stage.json`: key `index.so+b.sync`: expected \"always\" or a positive integer (msec), found string \"sometimes\"",
            "config `stage.json`: key `index.so+b.extra`: unknown key: an index.so block object takes `path`, `keysize`, `sync` and `snapshot`",
        ]
    );
    ok(r##"{"#startup": ["index.so+a"], "index.so+a": {"sync": "always"}}"##);
}

#[test]
fn default_node_names_are_subject_safe() {
    assert_eq!(
        default_node_name("web-01.eu.lan", 4242),
        "web-01_eu_lan-4242"
    );
    assert_eq!(default_node_name("", 7), "node-7");
    assert!(valid_node_name(&default_node_name(
        &"h".repeat(200),
        u32::MAX
    )));
    assert!(valid_node_name("A-z_09"));
    assert!(!valid_node_name(""));
    assert!(!valid_node_name("a b"));
    assert!(!valid_node_name("a*"));
    assert!(!valid_node_name(&"x".repeat(65)));
}

#[test]
fn restart_intensity_is_two_positive_integers_with_a_default() {
    let c = load(vec![ConfigSource::new(
        "s.json",
        r##"{"#startup": [["lua.so+a"], ["lua.so+b"]]}"##,
    )])
    .unwrap();
    assert_eq!(c.restart, crate::config::Restart::default());
    let c = load(vec![ConfigSource::new(
        "s.json",
        r##"{"#restart": [3, 20], "#startup": [["lua.so+a"], ["lua.so+b"]]}"##,
    )])
    .unwrap();
    assert_eq!((c.restart.intensity, c.restart.period_s), (3, 20));
    let errs = load(vec![ConfigSource::new(
        "s.json",
        r##"{"#restart": [0, "x"], "#startup": ["lua.so"]}"##,
    )])
    .unwrap_err();
    assert_eq!(
        messages(&errs),
        vec![
            "config `s.json`: key `#restart[0]`: 0 is out of range: expected 1 to 86400",
            "config `s.json`: key `#restart[1]`: expected a positive integer, found string \"x\"",
        ]
    );
    let errs = load(vec![ConfigSource::new(
        "s.json",
        r##"{"#restart": 5, "#startup": ["lua.so"]}"##,
    )])
    .unwrap_err();
    assert_eq!(
        messages(&errs),
        vec!["config `s.json`: key `#restart`: expected an array [intensity, period_s] of positive integers, found integer 5"]
    );
}

#[test]
fn an_object_in_cluster_names_the_nats_tls_and_auth_files() {
    let c = load(vec![ConfigSource::new(
        "s.json",
        r##"{"#startup": ["lua.so+a"], "#cluster": ["tls://n:4443", {"ca": "ca.pem", "cert": "c.pem", "key": "c.key", "nkey": "n.nk"}]}"##,
    )])
    .unwrap();
    assert_eq!(
        crate::config::nats_auth(&c.cluster),
        crate::config::NatsAuth {
            ca: Some("ca.pem".into()),
            cert: Some("c.pem".into()),
            key: Some("c.key".into()),
            nkey: Some("n.nk".into()),
            creds: None,
        }
    );
    let errs = load(vec![ConfigSource::new(
        "s.json",
        r##"{"#startup": ["lua.so+a"], "#cluster": ["nats://n:4222", {"cert": "c.pem", "nkey": 1, "creds": "x", "pass": "p"}]}"##,
    )])
    .unwrap_err();
    assert_eq!(
        messages(&errs),
        vec![
            "config `s.json`: key `#cluster[1]`: expected `nkey`: a file path, found integer 1",
            "config `s.json`: key `#cluster[1]`: unknown NATS option `pass` (expected ca, cert, key, nkey, creds)",
            "config `s.json`: key `#cluster[1]`: `cert` and `key` go together (the client certificate and its key)",
        ]
    );
}

#[test]
fn cpu_budget_is_msec_up_to_two_seconds_with_a_default() {
    let c = ok(&with_stage(""));
    let s = c.lua_stage(&module("lua.so+stage")).unwrap();
    assert_eq!(s.cpu_ms, crate::config::DEFAULT_CPU_MS);
    for (given, want) in [("0", 0), ("50", 50), ("2000", 2000)] {
        let c = ok(&with_stage(&format!(
            r##", "lua.so": {{"%cpu": {given}}}"##
        )));
        assert_eq!(c.lua_stage(&module("lua.so+stage")).unwrap().cpu_ms, want);
    }
    assert_eq!(
        errors(&with_stage(r##", "lua.so": {"%cpu": 2001}"##)),
        vec!["config `stage.json`: key `lua.so.%cpu`: 2001 ms is out of range: expected 0 (no budget) to 2000 (the budget must end a runaway callback well before the supervisor's 3.1 s kill)"]
    );
    assert_eq!(
        errors(&with_stage(r##", "lua.so": {"%cpu": -1}"##)),
        vec!["config `stage.json`: key `lua.so.%cpu`: -1 ms is out of range: expected 0 (no budget) to 2000 (the budget must end a runaway callback well before the supervisor's 3.1 s kill)"]
    );
    assert_eq!(
        errors(&with_stage(r##", "lua.so": {"%cpu": "fast"}"##)),
        vec!["config `stage.json`: key `lua.so.%cpu`: expected an integer (msec per Lua callback, 0 = no budget), found string \"fast\""]
    );
}

#[test]
fn blocking_refuses_by_default_and_counts_when_asked() {
    use crate::config::BlockingPolicy;
    let policy = |extra: &str| {
        ok(&with_stage(extra))
            .lua_stage(&module("lua.so+stage"))
            .unwrap()
            .blocking
    };
    assert_eq!(policy(""), BlockingPolicy::Refuse);
    assert_eq!(
        policy(r##", "lua.so": {"%blocking": "count"}"##),
        BlockingPolicy::Count
    );
    assert_eq!(
        policy(r##", "lua.so": {"%blocking": "refuse"}"##),
        BlockingPolicy::Refuse
    );
    assert_eq!(
        errors(&with_stage(r##", "lua.so": {"%blocking": "never"}"##)),
        vec!["config `stage.json`: key `lua.so.%blocking`: expected \"count\" or \"refuse\", found string \"never\""]
    );
}

#[test]
fn spin_is_microseconds_up_to_ten_milliseconds_and_off_by_default() {
    let c = ok(&with_stage(""));
    assert_eq!(c.lua_stage(&module("lua.so+stage")).unwrap().spin_us, 0);
    let c = ok(&with_stage(r##", "lua.so": {"%spin": 50}"##));
    assert_eq!(c.lua_stage(&module("lua.so+stage")).unwrap().spin_us, 50);
    assert_eq!(
        errors(&with_stage(r##", "lua.so": {"%spin": 10001}"##)),
        vec!["config `stage.json`: key `lua.so.%spin`: 10001 µs is out of range: expected 0 (park at once) to 10000"]
    );
    assert_eq!(
        errors(&with_stage(r##", "lua.so": {"%spin": true}"##)),
        vec!["config `stage.json`: key `lua.so.%spin`: expected an integer (µs a core polls before it parks, 0 = park at once), found boolean true"]
    );
}
