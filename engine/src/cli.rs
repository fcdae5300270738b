//! The `stage` command line: run a node (`stage -c FILE`, `stage -c -`, or with no `-c` the
//! embedded default that serves the seed's example on port 8081), or validate a configuration
//! and compile its scripts (`stage --check`). Exit codes: 0 fine, 1 scripts do not compile
//! or the runtime failed to start, 2 the configuration (or command line) is wrong.
//!
//! When more than one `#startup` process runs Lua stages, this process becomes the
//! [`supervisor`] and each process is a child started as `stage --child N --parent PID
//! --run-dir DIR -c DIR/config.json` (hidden options), which runs only the Lua stages of
//! process entry N.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::admin;
use crate::config::{self, ConfigSource};
use crate::logging::{self, LogFormat};
use crate::node::peers::{PeerSettings, Peers};
use crate::node::{affinity, runtime, watchdog, Node, STOP_BOUND};
use crate::plan::{self, Plan};
use crate::script::{self, EMBEDDED};
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
    /// Read a password from standard input (one line), print its Argon2id hash for a lotus.so
    /// account's `password_hash`, then exit.
    #[arg(long = "hash-password")]
    hash_password: bool,
    /// Log filter, e.g. `info`, `debug`, `warn,lua=debug` (default: $STAGE_LOG, else info).
    #[arg(short = 'l', long = "log", value_name = "FILTER")]
    log: Option<String>,
    /// Log lines as text (default) or one JSON object per line (for log shippers).
    #[arg(
        long = "log-format",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
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

/// `--hash-password`: the PHC string for a lotus account, from the first line of stdin.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(err) = std::io::stdin().read_line(&mut line) {
        eprintln!("error: cannot read the password from standard input: {err}");
        return ExitCode::from(2);
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("error: empty password (type it on standard input, e.g. `stage --hash-password <<< 'secret'`)");
        return ExitCode::from(2);
    }
    match crate::service::lotus::password::hash(password) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

pub fn main() -> ExitCode {
    let code = run_command();
    // The log writer thread may still hold lines (the guard lives in a static, which is
    // never dropped): write them out before the process ends.
    logging::flush();
    code
}

fn run_command() -> ExitCode {
    let args = Args::parse();
    if args.hash_password {
        return hash_password();
    }
    if let Some(parent) = args.parent {
        supervisor::bind_to_parent(parent);
    }
    let log_filter = args
        .log
        .clone()
        .or_else(|| std::env::var("STAGE_LOG").ok())
        .unwrap_or_else(|| "info".into());
    logging::init(&log_filter, args.log_format);
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
        // Each child serves its admin endpoint on the configured port plus its number.
        if let Some(a) = &config.admin {
            let last = config
                .lua_processes()
                .iter()
                .map(|(n, _)| *n)
                .max()
                .unwrap_or(0);
            if admin::child_address(a.listen, last).is_none() {
                eprintln!("error: #admin: process {last} would serve on port {} + {last}, past 65535: choose a lower port", a.listen.port());
                return ExitCode::from(2);
            }
        }
        // The children would each fail the same way: say why once, before forking any.
        if let Err(err) = crate::node::preflight::check() {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
        return supervisor::run(
            &config,
            supervisor::ChildArgs {
                program,
                log_filter,
                log_format: args.log_format,
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
    let plan = match plan::build(&config, modules, cpus.len(), script_args, EMBEDDED) {
        Ok(plan) => Arc::new(plan),
        Err(errors) => {
            for err in &errors {
                eprintln!("error: {err}");
            }
            return ExitCode::from(2);
        }
    };
    if args.check {
        return script::check::check(&plan);
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
                suspend: Some(suspend.clone()),
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
    if config.clustered() {
        // Every process of the node agrees on the default name: the supervisor's pid.
        let node = config.node.clone().unwrap_or_else(|| {
            config::default_node_name(&hostname(), args.parent.unwrap_or(std::process::id()))
        });
        let member = crate::cluster::install(crate::cluster::ClusterSettings {
            servers: config::nats_servers(&config.cluster),
            auth: config::nats_auth(&config.cluster),
            node,
            process: args.child.unwrap_or(1),
            notify: Duration::from_millis(config.router.notify_ms),
            expiry: Duration::from_millis(config.router.expiry_ms),
            suspend: Some(suspend.clone()),
        });
        tracing::info!("this process is cluster member {}", member.me);
    }
    let alive = match (&args.run_dir, args.child) {
        (Some(dir), Some(n)) => Some(watchdog::alive_file(dir, n)),
        _ => None,
    };
    // Each process that runs stages serves its own endpoint: a child of a multi-process
    // node on the configured port plus its number (`admin::child_address`).
    let admin_listen = config.admin.as_ref().map(|a| match args.child {
        Some(n) => admin::child_address(a.listen, n),
        None => Some(a.listen),
    });
    if let Some(None) = admin_listen {
        eprintln!("error: #admin: the port of process {} (the configured port plus its number) is past 65535: choose a lower port", args.child.unwrap_or(0));
        return ExitCode::from(2);
    }
    let admin = config.admin.as_ref().map(|a| admin::Settings {
        base: a.listen,
        listen: admin_listen.flatten().unwrap_or(a.listen),
        token: a.token.clone(),
        node: config.node.clone().unwrap_or_else(|| {
            config::default_node_name(&hostname(), args.parent.unwrap_or(std::process::id()))
        }),
    });
    match run(cpus, plan, peers, alive, admin) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// This machine's host name (`gethostname`), for the default node name.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Runs the node until SIGINT/SIGTERM (graceful) or `stage.exit()`. A second signal during
/// the graceful shutdown exits at once.
fn run(
    cpus: Vec<usize>,
    plan: Arc<Plan>,
    peers: Option<Arc<Peers>>,
    alive: Option<std::path::PathBuf>,
    admin: Option<admin::Settings>,
) -> anyhow::Result<()> {
    block_shutdown_signals();
    match &peers {
        Some(p) => tracing::info!(cores = cpus.len(), ?cpus, "starting STAGE process {}", p.me),
        None => tracing::info!(cores = cpus.len(), ?cpus, "starting STAGE"),
    }
    crate::node::preflight::check()?;
    let node = Node::new(cpus, plan, peers);
    let handles = runtime::start(node.clone(), script::host::factory())?;
    crate::cluster::start(node.clone())?;
    if let Some(settings) = admin {
        if let Err(err) = admin::start(node.clone(), settings) {
            // The operator asked for the endpoint: stop rather than run without it.
            node.shutdown();
            for handle in handles {
                let _ = handle.join();
            }
            return Err(err.into());
        }
    }
    watchdog::start(node.clone(), alive);
    crate::node::budget::start(&node);
    let signals = node.clone();
    std::thread::Builder::new()
        .name("stage-signals".into())
        .spawn(move || {
            let first = loop {
                match wait_shutdown_signal() {
                    libc::SIGHUP => reload_on_signal(),
                    sig => break sig,
                }
            };
            tracing::info!("received signal {first}: shutting down");
            signals.shutdown();
            match wait_shutdown_signal_for(STOP_BOUND) {
                Some(second) => {
                    tracing::warn!("received signal {second} during shutdown: exiting now")
                }
                None => tracing::error!(
                    "the shutdown did not finish within {} s: exiting now",
                    STOP_BOUND.as_secs()
                ),
            }
            logging::flush();
            std::process::exit(1);
        })?;
    let mut panicked = 0;
    for handle in handles {
        if handle.join().is_err() {
            tracing::error!("a core thread panicked");
            panicked += 1;
        }
    }
    // Every core has handed its last lotus writes to the store threads: wait for them
    // (within the time left before the signal thread's STOP_BOUND exits the process).
    script::lotus::store::stop_all(LOTUS_STOP_BOUND);
    tracing::info!("STAGE stopped");
    // A failed status, so a supervisor (systemd's Restart=on-failure, `#restart`) sees it.
    if panicked > 0 {
        anyhow::bail!("{panicked} core thread(s) panicked (the log above says where)");
    }
    Ok(())
}

/// How long an orderly stop waits for lotus's stores to write the last flush (a part of
/// STOP_BOUND: the connections' grace period comes first).
const LOTUS_STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(4);

fn shutdown_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        // SIGHUP asks for a reload (`reload_on_signal`), as daemons commonly do.
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// SIGHUP: an operator asks for a reload of the scripts now (`script::reload`); the
/// outcome is logged when it is known (after every core has switched).
fn reload_on_signal() {
    tracing::info!("received SIGHUP: reloading the scripts");
    script::reload::request_with(|outcome| match outcome {
        script::reload::ReloadOutcome::Refused { .. } => {
            tracing::warn!("SIGHUP reload: {outcome}")
        }
        _ => tracing::info!("SIGHUP reload: {outcome}"),
    });
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

/// The next shutdown signal, or `None` when `timeout` passes first.
fn wait_shutdown_signal_for(timeout: std::time::Duration) -> Option<i32> {
    let set = shutdown_sigset();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: sigtimedwait reads the set and timeout we own; the info pointer may be null.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
        // A reload is no use while stopping.
        if sig > 0 && sig != libc::SIGHUP {
            return Some(sig);
        }
        // EINTR (a signal outside the set) waits again; EAGAIN is the timeout.
        if std::time::Instant::now() >= deadline {
            return None;
        }
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
