//! The `stage` command line: run a node (`stage -c FILE`, `stage -c -`, or with no `-c` the
//! embedded default that serves the seed's example on port 8081), or validate a configuration
//! and compile its scripts (`stage --check`). Exit codes: 0 fine, 1 scripts do not compile
//! or the runtime failed to start, 2 the configuration (or command line) is wrong.
//!
//! When more than one `#startup` process runs Lua stages, this process becomes the
//! [`supervisor`] and each process is a child started as `stage --child N --parent PID
//! --run-dir DIR -c DIR/config.json` (hidden options), which runs only the Lua stages of
//! process entry N.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::config::{self, Config, ConfigSource, ModuleKind, ModuleRef};
use crate::node::peers::{PeerSettings, Peers};
use crate::node::{affinity, runtime, watchdog, Node};
use crate::script::host::{LuaSettings, LuaStage, ServiceKind, ServiceStage};
use crate::script::loader::{Embedded, Lookup, ScriptLoader, BUILTIN_ROOT};
use crate::service::http::HttpConfig;
use crate::service::index::IndexConfig;
use crate::service::route::RouteConfig;
use crate::service::ticket::TicketConfig;
use crate::supervisor;

/// The configuration used when no `-c` is given: the seed's v1 example, served from scripts
/// compiled into the binary so a fresh checkout needs nothing else.
const DEFAULT_CONFIG: &str = r##"{
    "#startup": [ ["lua.so+stage"] ],
    "lua.so": {
        "%package": [ "@builtin/v1" ],
        "lua.so+stage": "start"
    }
}"##;

static EMBEDDED: Embedded = &[
    ("v1/start.lua", include_str!("../lua/examples/v1/start.lua")),
    (
        "v1/packet.lua",
        include_str!("../lua/examples/v1/packet.lua"),
    ),
    // `"%package": ["@builtin/lib", ...]` makes `stage.require("index")` find the index.so helper.
    ("lib/index.lua", include_str!("../lua/lib/index.lua")),
    // ... and `stage.require("curl")` the curl.so helper.
    ("lib/curl.lua", include_str!("../lua/lib/curl.lua")),
];

#[derive(Parser, Debug)]
#[command(
    name = "stage",
    version,
    about = "STAGE: a LuaJIT-first, thread-per-core game server"
)]
struct Args {
    /// Configuration: JSON file(s) separated by ':' (the first file defining a key wins);
    /// '-' reads it from standard input. Without -c, the embedded example runs on port 8081.
    #[arg(short = 'c', long = "config", value_name = "FILE[:FILE...]")]
    config: Option<String>,
    /// Validate the configuration and compile every script, print all errors, then exit.
    #[arg(long)]
    check: bool,
    /// Log filter, e.g. `info`, `debug`, `warn,lua=debug` (default: $STAGE_LOG, else info).
    #[arg(short = 'l', long = "log", value_name = "FILTER")]
    log: Option<String>,
    /// Scale-down file (default `<program>.stop`, deleted at start): while it exists, the
    /// processes of a multi-process node stop announcing their stages, so traffic drains away.
    #[arg(short = 's', long = "suspend", value_name = "FILE")]
    suspend: Option<std::path::PathBuf>,
    /// Arguments for the scripts (`arg[1..]`), after `--`.
    #[arg(last = true)]
    args: Vec<String>,
    /// Internal: run process N of a multi-process node (started by the supervisor).
    #[arg(long, hide = true, value_name = "N", requires_all = ["parent", "run_dir"])]
    child: Option<u32>,
    /// Internal: the supervisor's pid (a child dies with it).
    #[arg(long, hide = true, value_name = "PID", requires = "child")]
    parent: Option<u32>,
    /// Internal: the node's runtime directory (the children's sockets).
    #[arg(long = "run-dir", hide = true, value_name = "DIR", requires = "child")]
    run_dir: Option<std::path::PathBuf>,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(parent) = args.parent {
        supervisor::bind_to_parent(parent);
    }
    let log_filter = args
        .log
        .clone()
        .or_else(|| std::env::var("STAGE_LOG").ok())
        .unwrap_or_else(|| "info".into());
    init_logging(&log_filter);
    let sources = match &args.config {
        None => vec![ConfigSource {
            name: "<embedded>".into(),
            text: DEFAULT_CONFIG.into(),
        }],
        Some(spec) => match config::read_sources(spec) {
            Ok(sources) => sources,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        },
    };
    let config = match config::load(sources) {
        Ok(config) => config,
        Err(errors) => {
            for err in &errors {
                eprintln!("error: {err}");
            }
            return ExitCode::from(2);
        }
    };
    let program = std::env::args().next().unwrap_or_else(|| "stage".into());
    let suspend = args
        .suspend
        .clone()
        .unwrap_or_else(|| format!("{program}.stop").into());
    if args.child.is_none() && !args.check && suspend.exists() {
        // Spec: deleted at start, so a node never starts drained by a stale file.
        match std::fs::remove_file(&suspend) {
            Ok(()) => tracing::info!("removed the suspend file {}", suspend.display()),
            Err(err) => tracing::warn!(
                "cannot remove the suspend file {}: {err}",
                suspend.display()
            ),
        }
    }
    if args.child.is_none() && !args.check && config.multi_process() {
        for key in config.inactive_keys() {
            tracing::info!("config {key} is not active in this build");
        }
        return supervisor::run(
            &config,
            supervisor::ChildArgs {
                program,
                log_filter,
                script_args: args.args.clone(),
                suspend,
            },
        );
    }
    let modules = match args.child {
        None => config.startup.modules().collect(),
        Some(n) => match config.lua_processes().into_iter().find(|(p, _)| *p == n) {
            Some((_, mods)) => mods.iter().collect(),
            None => {
                eprintln!("error: #startup has no Lua process {n}");
                return ExitCode::from(2);
            }
        },
    };
    let mut script_args = vec![program];
    script_args.extend(args.args.iter().cloned());
    let cpus = match affinity::allowed_cpus() {
        Ok(cpus) => affinity::choose_cpus(&cpus, config.threads.cores),
        Err(err) => {
            eprintln!("error: cannot read the CPU affinity mask: {err}");
            return ExitCode::from(1);
        }
    };
    let settings = match lua_settings(&config, modules, cpus.len(), script_args) {
        Ok(settings) => Arc::new(settings),
        Err(errors) => {
            for err in &errors {
                eprintln!("error: {err}");
            }
            return ExitCode::from(2);
        }
    };
    if args.check {
        return check(&settings);
    }
    let peers = match (args.child, &args.run_dir, args.parent) {
        (Some(me), Some(dir), Some(supervisor)) => {
            let settings = PeerSettings {
                me,
                processes: config.lua_processes().iter().map(|(n, _)| *n).collect(),
                dir: dir.clone(),
                supervisor,
                notify: Duration::from_millis(config.router.notify_ms),
                expiry: Duration::from_millis(config.router.expiry_ms),
                suspend: Some(suspend),
            };
            match Peers::new(settings).and_then(|p| p.bind().map(|()| p)) {
                Ok(peers) => Some(Arc::new(peers)),
                Err(err) => {
                    eprintln!("error: process {me}: cannot open a datagram socket: {err}");
                    return ExitCode::from(1);
                }
            }
        }
        _ => {
            // The supervisor already said it for the whole node.
            for key in config.inactive_keys() {
                tracing::info!("config {key} is not active in this build");
            }
            None
        }
    };
    let alive = match (&args.run_dir, args.child) {
        (Some(dir), Some(n)) => Some(watchdog::alive_file(dir, n)),
        _ => None,
    };
    match run(cpus, settings, peers, alive) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|err| {
        eprintln!("warning: bad log filter `{filter}` ({err}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The Lua stages among `modules` (all of `#startup` in a single-process node, one process
/// entry in a child), each run once in this process on core `i % cores`.
fn lua_settings(
    config: &Config,
    modules: Vec<&ModuleRef>,
    cores: usize,
    args: Vec<String>,
) -> Result<LuaSettings, Vec<String>> {
    let mut stages: Vec<LuaStage> = Vec::new();
    let mut first = None;
    let mut errors = Vec::new();
    let hosted: Vec<&ModuleRef> = modules.clone();
    for module in modules
        .into_iter()
        .filter(|m| matches!(m.kind, ModuleKind::Lua))
    {
        if stages.iter().any(|s| s.entry == module.entry) {
            tracing::info!(
                "`{}` is listed more than once; it runs once per process",
                module.entry
            );
            continue;
        }
        let stage = match config.lua_stage(module) {
            Ok(stage) => stage,
            Err(err) => {
                errors.push(err.to_string());
                continue;
            }
        };
        let Some(main_script) = stage.main_script.clone() else {
            tracing::warn!(
                "`{}` names no main script; it has no handlers",
                module.entry
            );
            continue;
        };
        stages.push(LuaStage {
            id: module.stage_id.clone().unwrap_or_default(),
            entry: module.entry.clone(),
            main_script,
            block_json: simd_json::to_string(&stage.block).unwrap_or_else(|_| "{}".into()),
            main_core: stages.len() % cores,
        });
        first.get_or_insert(stage);
    }
    // Service stages come after the Lua stages (their directory indexes follow), and their
    // main cores continue the same rotation.
    let mut services: Vec<ServiceStage> = Vec::new();
    for module in &hosted {
        if services.iter().any(|s| s.entry == module.entry) {
            continue;
        }
        // services.md §0.1: without `+suffix` the sign is the service's default name.
        let (sign, kind) = match module.kind {
            ModuleKind::Index => (
                "index",
                ServiceKind::Index(index_config(config.module_block(module))),
            ),
            ModuleKind::Ticket => (
                "ticket",
                ServiceKind::Ticket(TicketConfig::from_config(config, module)),
            ),
            ModuleKind::Route => (
                "route",
                ServiceKind::Route(RouteConfig::from_config(config, module)),
            ),
            ModuleKind::Curl => (
                "curl",
                ServiceKind::Http(HttpConfig::from_config(config, module)),
            ),
            _ => continue,
        };
        services.push(ServiceStage {
            id: module.stage_id.clone().unwrap_or_else(|| sign.into()),
            entry: module.entry.clone(),
            main_core: (stages.len() + services.len()) % cores,
            kind,
            ticket_tracked: Default::default(),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let Some(first) = first else {
        if services.is_empty() {
            tracing::warn!("#startup has no Lua stage with a main script: nothing will run");
        }
        return Ok(LuaSettings {
            package: Vec::new(),
            preload: Vec::new(),
            reflush: Duration::from_secs(1),
            ffi: true,
            memory: None,
            stages,
            services,
            args,
            embedded: EMBEDDED,
        });
    };
    Ok(LuaSettings {
        package: first.package,
        preload: first.preload,
        reflush: Duration::from_millis(first.reflush_ms),
        ffi: first.ffi,
        memory: first.memory_mib.map(|mib| (mib as usize) << 20),
        stages,
        services,
        args,
        embedded: EMBEDDED,
    })
}

/// services.md §2.1: `"dir/"` or `["dir/", max_key, nelem]` (the element count sized the
/// original's pages; this engine has none, so it is accepted and ignored). No block at all:
/// `index/` in the working directory, as in the original's shipped configuration.
fn index_config(block: Option<&simd_json::OwnedValue>) -> IndexConfig {
    use simd_json::prelude::*;
    let mut cfg = IndexConfig::new("index/");
    match block {
        Some(v) if v.as_str().is_some() => cfg.path = v.as_str().unwrap_or_default().into(),
        Some(v) if v.as_array().is_some() => {
            let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
            if let Some(p) = items.first().and_then(|p| p.as_str()) {
                cfg.path = p.into();
            }
            if let Some(n) = items.get(1).and_then(|n| n.as_u64()) {
                cfg.max_key = n as usize;
            }
        }
        // This build's object form (checked by `config::modules`).
        Some(v) if v.is_object() => {
            if let Some(p) = v.get("path").and_then(|p| p.as_str()) {
                cfg.path = p.into();
            }
            if let Some(n) = v.get("keysize").and_then(|n| n.as_u64()) {
                cfg.max_key = n as usize;
            }
            if let Some(ms) = v.get("sync").and_then(|s| s.as_u64()) {
                cfg.sync = crate::service::index::SyncPolicy::Interval(Duration::from_millis(ms));
            }
        }
        _ => {}
    }
    cfg
}

/// `--check`: compiles the main scripts, preload scripts and every script in the package
/// directories, printing each error. Nothing runs.
fn check(settings: &LuaSettings) -> ExitCode {
    let lua = mlua::Lua::new();
    let loader = ScriptLoader::new(settings.package.clone(), Duration::ZERO, settings.embedded);
    let mut errors = Vec::new();
    for stage in &settings.stages {
        match loader.load(&lua, &stage.main_script) {
            Ok(Lookup::Found(_)) => {}
            Ok(Lookup::NotFound(path)) => errors.push(format!(
                "main script `{}` of `{}` not found in %package (looked for {path}.lua)",
                stage.main_script, stage.entry
            )),
            Err(err) => errors.push(err.to_string()),
        }
    }
    let mut files = Vec::new();
    for entry in &settings.package {
        if entry.prefix.starts_with(BUILTIN_ROOT) {
            continue;
        }
        let dir = if entry.prefix.is_empty() {
            "."
        } else {
            entry.prefix.as_str()
        };
        // The current directory may hold anything: only its own scripts, not its subtrees.
        lua_files(Path::new(dir), !entry.prefix.is_empty(), &mut files);
    }
    for entry in &settings.preload {
        lua_files(Path::new(entry), true, &mut files);
    }
    files.sort();
    files.dedup();
    for file in &files {
        let result = std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|src| {
                lua.load(&src[..])
                    .set_name(format!("@{}", file.display()))
                    .into_function()
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
        if let Err(err) = result {
            errors.push(err);
        }
    }
    if errors.is_empty() {
        println!(
            "configuration OK: {} Lua stage(s), {} script(s) compiled",
            settings.stages.len(),
            files.len()
        );
        ExitCode::SUCCESS
    } else {
        for err in &errors {
            eprintln!("error: {err}");
        }
        ExitCode::from(1)
    }
}

fn lua_files(path: &Path, recursive: bool, out: &mut Vec<std::path::PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
        return;
    }
    let Ok(dir) = std::fs::read_dir(path) else {
        return;
    };
    for entry in dir.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if recursive {
                lua_files(&p, true, out);
            }
        } else if p.extension().is_some_and(|e| e == "lua") {
            out.push(p);
        }
    }
}

/// Runs the node until SIGINT/SIGTERM (graceful) or `stage.exit()`. A second signal during
/// the graceful shutdown exits at once.
fn run(
    cpus: Vec<usize>,
    settings: Arc<LuaSettings>,
    peers: Option<Arc<Peers>>,
    alive: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    block_shutdown_signals();
    match &peers {
        Some(p) => tracing::info!(cores = cpus.len(), ?cpus, "starting STAGE process {}", p.me),
        None => tracing::info!(cores = cpus.len(), ?cpus, "starting STAGE"),
    }
    let node = Node::new(cpus, settings, peers);
    let handles = runtime::start(node.clone())?;
    watchdog::start(node.clone(), alive);
    let signals = node.clone();
    std::thread::Builder::new()
        .name("stage-signals".into())
        .spawn(move || {
            let first = wait_shutdown_signal();
            tracing::info!("received signal {first}: shutting down");
            signals.shutdown();
            let second = wait_shutdown_signal();
            tracing::warn!("received signal {second} during shutdown: exiting now");
            std::process::exit(1);
        })?;
    for handle in handles {
        if handle.join().is_err() {
            tracing::error!("a core thread panicked");
        }
    }
    tracing::info!("STAGE stopped");
    Ok(())
}

fn shutdown_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the shutdown signals in this thread before the cores start, so every thread
/// inherits the mask and only the signal thread (in `sigwait`) ever receives them.
fn block_shutdown_signals() {
    let set = shutdown_sigset();
    // SAFETY: plain libc call on a valid, initialised sigset.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn wait_shutdown_signal() -> i32 {
    let set = shutdown_sigset();
    let mut sig = 0;
    // SAFETY: plain libc call; the signals are blocked in every thread.
    unsafe {
        libc::sigwait(&set, &mut sig);
    }
    sig
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::index::SyncPolicy;

    fn block(json: &str) -> simd_json::OwnedValue {
        simd_json::to_owned_value(&mut json.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn index_blocks_in_every_form() {
        let cfg = index_config(Some(&block(r#""score/""#)));
        assert_eq!(
            (cfg.path.as_str(), cfg.sync),
            ("score/", SyncPolicy::Always)
        );
        let cfg = index_config(Some(&block(r#"["rank/", 64, 512]"#)));
        assert_eq!((cfg.path.as_str(), cfg.max_key), ("rank/", 64));
        let cfg = index_config(Some(&block(
            r#"{"path": "p/", "keysize": 32, "sync": 250}"#,
        )));
        assert_eq!((cfg.path.as_str(), cfg.max_key), ("p/", 32));
        assert_eq!(cfg.sync, SyncPolicy::Interval(Duration::from_millis(250)));
        let cfg = index_config(Some(&block(r#"{"sync": "always"}"#)));
        assert_eq!(
            (cfg.path.as_str(), cfg.sync),
            ("index/", SyncPolicy::Always)
        );
        assert_eq!(index_config(None).path, "index/");
    }
}
