//! The supervisor of a multi-process node (spec services.md 6.1, stage.md 1.1). When more
//! than one `#startup` process runs Lua stages, the `stage` process runs no Lua itself: it
//! writes the merged configuration into a private runtime directory, then starts one child per
//! such process, in order (sleeping for the delay entries), by re-executing its own binary
//! with `--child N` (N = the process number, counting process entries only). It restarts a
//! child that ends, unless it lived less than a second ("TIME BREAK"), and slows down the
//! restarts of a child that keeps dying (`#restart`, see [`intensity`]); it exits when no child
//! is left. SIGINT/SIGTERM/SIGQUIT are forwarded as SIGTERM (graceful); a second one, or
//! children still running [`STOP_BOUND`] after the first, get SIGKILL. SIGHUP is forwarded
//! as is: each child reloads its scripts (`script::reload`). Children bind their life to the supervisor (`bind_to_parent`), so a SIGKILLed
//! supervisor takes them along.
//!
//! The watchdog (spec 6.1): each child writes the oldest beat of its cores into its
//! `alive-N` file in the runtime directory (`node::watchdog`); a child whose cores have not
//! beaten for 3.1 s (a Lua callback that never returns) is SIGKILLed, and restarted like
//! any child that died. Before the kill it logs what each of the child's threads is doing
//! ([`threads`]), the only trace of why the core stopped.
//!
//! Everything runs on the one thread that spawned the children: the signals (SIGCHLD
//! included) are blocked and taken with `sigtimedwait`, so there is no handler and no race
//! between reaping and restarting.

use std::collections::{HashMap, VecDeque};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::config::{Config, Restart, Startup, StartupEntry};
use crate::node::{threads, watchdog, STOP_BOUND};

pub mod intensity;
use intensity::History;

/// A child that ends sooner than this after its start is not restarted.
const TIME_BREAK: Duration = Duration::from_secs(1);

/// The file name of the configuration inside the runtime directory.
const CONFIG_FILE: &str = "config.json";

/// What to start, in order: one entry per Lua process, delays in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Delay(Duration),
    Start { n: u32, label: String },
}

/// The start plan of a multi-process configuration. Processes without a Lua stage are not
/// started (nothing in them runs in this build); they keep their number all the same.
pub fn plan(config: &Config) -> Vec<Step> {
    let Startup::Array(entries) = &config.startup else {
        return Vec::new();
    };
    let mut steps = Vec::new();
    let mut n = 0;
    for entry in entries {
        match entry {
            StartupEntry::Delay(ms) => steps.push(Step::Delay(Duration::from_millis(*ms))),
            StartupEntry::Process(mods) => {
                n += 1;
                let label: Vec<&str> = mods.iter().map(|m| m.entry.as_str()).collect();
                if mods.iter().any(|m| m.kind.is_hosted()) {
                    steps.push(Step::Start {
                        n,
                        label: label.join(", "),
                    });
                } else {
                    tracing::info!(
                        "#startup process {n} ({}) runs no stage of this build: not started (its modules are not active in this build)",
                        label.join(", ")
                    );
                }
            }
        }
    }
    steps
}

/// How a child learns its place: its number, the supervisor's pid and the runtime directory.
pub struct ChildArgs {
    /// `argv[0]` as the supervisor was started (scripts see it as `arg[0]`).
    pub program: String,
    pub log_filter: String,
    pub log_format: crate::logging::LogFormat,
    pub script_args: Vec<String>,
    /// The scale-down file the children watch (`-s`).
    pub suspend: PathBuf,
}

/// The private runtime directory of the node run by supervisor `pid`: under
/// `$XDG_RUNTIME_DIR` when set, else the temporary directory.
pub fn runtime_dir(pid: u32) -> PathBuf {
    runtime_base().join(format!("stage-{pid}"))
}

fn runtime_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// Runs the node until every child is gone. Exit code 0 after a requested shutdown, 1 when
/// the children died on their own or the shutdown had to be forced.
pub fn run(config: &Config, child: ChildArgs) -> ExitCode {
    let steps = plan(config);
    let me = std::process::id();
    remove_stale_dirs();
    let dir = runtime_dir(me);
    if let Err(err) = prepare_dir(&dir, &config.to_json()) {
        eprintln!(
            "error: cannot prepare the runtime directory {}: {err}",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
        return ExitCode::from(1);
    }
    let set = signal_set();
    // SAFETY: plain libc call on a valid, initialised sigset; this thread is the only one.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // The node's locks live here (spec stage.md 10.5: scoped to the node's router); bound
    // before any child starts, so no lock request finds nobody. Its thread inherits the
    // blocked signals.
    if let Err(err) = crate::node::lock_service::start(&dir) {
        eprintln!(
            "error: cannot start the node's lock service in {}: {err}",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
        return ExitCode::from(1);
    }
    tracing::info!(
        dir = %dir.display(),
        "STAGE supervisor: {} process(es) to start",
        steps.iter().filter(|s| matches!(s, Step::Start { .. })).count()
    );
    let mut sup = Supervisor {
        // Our own binary even if the file was replaced or deleted since we started.
        exe: PathBuf::from("/proc/self/exe"),
        dir: dir.clone(),
        me,
        child,
        children: HashMap::new(),
        pending: steps.into(),
        next_at: Instant::now(),
        restart: config.restart,
        histories: HashMap::new(),
        delayed: Vec::new(),
        stop_deadline: None,
        stopping: false,
        forced: false,
    };
    let code = sup.run(&set);
    let _ = std::fs::remove_dir_all(&dir);
    code
}

struct Running {
    n: u32,
    label: String,
    started: Instant,
    /// SIGKILLed by the watchdog (its cores stopped beating).
    stalled: bool,
}

struct Supervisor {
    exe: PathBuf,
    dir: PathBuf,
    me: u32,
    child: ChildArgs,
    children: HashMap<i32, Running>,
    pending: VecDeque<Step>,
    /// When the next pending step may run (after a delay entry).
    next_at: Instant,
    /// `#restart`: how many restarts per period before they are delayed.
    restart: Restart,
    /// Recent restarts of each process number.
    histories: HashMap<u32, History>,
    /// Restarts held back by the restart intensity: when, which process, its label.
    delayed: Vec<(Instant, u32, String)>,
    /// After a shutdown signal: when children still running get SIGKILL.
    stop_deadline: Option<Instant>,
    stopping: bool,
    forced: bool,
}

impl Supervisor {
    fn run(&mut self, set: &libc::sigset_t) -> ExitCode {
        loop {
            self.start_due();
            if self.children.is_empty()
                && self.delayed.is_empty()
                && (self.pending.is_empty() || self.stopping)
            {
                if self.stopping {
                    tracing::info!("every process has stopped: STAGE supervisor exits");
                    return if self.forced {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    };
                }
                tracing::error!(
                    "CRITICAL BREAK: no process is left running; STAGE supervisor exits"
                );
                return ExitCode::from(1);
            }
            // Woken at least every watchdog look, to check the children's alive files.
            let wait = match self.pending.front() {
                Some(_) if !self.stopping => self.next_at.saturating_duration_since(Instant::now()),
                _ => watchdog::LOOK,
            }
            .min(watchdog::LOOK);
            let wait = match self.delayed.iter().map(|d| d.0).min() {
                Some(due) => wait.min(due.saturating_duration_since(Instant::now())),
                None => wait,
            };
            match wait_signal(set, wait) {
                Some(libc::SIGCHLD) | None => {}
                // Each child reloads its own scripts (`script::reload`).
                Some(libc::SIGHUP) if !self.stopping => {
                    tracing::info!("received SIGHUP: asking every process to reload");
                    self.kill_all(libc::SIGHUP);
                }
                Some(libc::SIGHUP) => {}
                Some(sig) => self.on_shutdown_signal(sig),
            }
            self.reap();
            self.kill_stalled();
            self.kill_overdue_stop();
        }
    }

    /// A graceful stop is bounded: children still running [`STOP_BOUND`] after the shutdown
    /// signal (a core stuck in a C call, a close callback that never ends) are SIGKILLed.
    fn kill_overdue_stop(&mut self) {
        let Some(deadline) = self.stop_deadline else {
            return;
        };
        if self.forced || self.children.is_empty() || Instant::now() < deadline {
            return;
        }
        tracing::error!(
            "{} process(es) still running {} s after the shutdown signal: killing them",
            self.children.len(),
            STOP_BOUND.as_secs() + 2
        );
        self.forced = true;
        self.kill_all(libc::SIGKILL);
    }

    /// The watchdog (spec services.md §6.1): a child whose oldest core beat is older than
    /// 3.1 s is SIGKILLed; `reap` then restarts it like any child that died.
    fn kill_stalled(&mut self) {
        if self.stopping {
            return;
        }
        let now = watchdog::monotonic_ms();
        for (pid, child) in self.children.iter_mut() {
            if child.stalled {
                continue;
            }
            let Some(beat) = watchdog::read_alive(&watchdog::alive_file(&self.dir, child.n)) else {
                continue; // still booting: it has not beaten yet
            };
            if watchdog::overdue(beat, now) {
                // Read before the kill: afterwards there is nothing left to look at.
                tracing::error!(
                    "watchdog: process {} (pid {pid}) has had a core stalled for {:.1} s: killing it; its threads: {}",
                    child.n,
                    now.saturating_sub(beat) as f64 / 1000.0,
                    threads::describe(*pid)
                );
                child.stalled = true;
                // SAFETY: plain kill(2) on a child we have not reaped yet (its pid is still ours).
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
    }

    /// Runs the pending steps and the held-back restarts whose time has come.
    fn start_due(&mut self) {
        if self.stopping {
            self.delayed.clear();
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|d| d.0 <= now);
        self.delayed = later;
        for (_, n, label) in due {
            self.spawn(n, label);
        }
        while !self.stopping && Instant::now() >= self.next_at {
            match self.pending.pop_front() {
                None => return,
                Some(Step::Delay(d)) => self.next_at = Instant::now() + d,
                Some(Step::Start { n, label }) => self.spawn(n, label),
            }
        }
    }

    fn spawn(&mut self, n: u32, label: String) {
        // A previous run's beats must not get the new process killed while it boots.
        let _ = std::fs::remove_file(watchdog::alive_file(&self.dir, n));
        let mut cmd = Command::new(&self.exe);
        cmd.arg0(&self.child.program)
            .arg("--child")
            .arg(n.to_string())
            .arg("--parent")
            .arg(self.me.to_string())
            .arg("--run-dir")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join(CONFIG_FILE))
            .arg("-l")
            .arg(&self.child.log_filter)
            .arg("--log-format")
            .arg(self.child.log_format.as_arg())
            .arg("-s")
            .arg(&self.child.suspend)
            .arg("--")
            .args(&self.child.script_args)
            // The configuration may have come from our stdin: it is in the file now.
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C on the terminal reaches the supervisor only,
            // which forwards one SIGTERM (a second one would make the child skip its
            // graceful shutdown).
            .process_group(0);
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id() as i32;
                tracing::info!("started process {n} (pid {pid}): {label}");
                // Reaped with waitpid below; std's handle is not needed any more.
                drop(child);
                self.children.insert(
                    pid,
                    Running {
                        n,
                        label,
                        started: Instant::now(),
                        stalled: false,
                    },
                );
            }
            Err(err) => tracing::error!("cannot start process {n} ({label}): {err}"),
        }
    }

    fn on_shutdown_signal(&mut self, sig: i32) {
        if !self.stopping {
            tracing::info!(
                "received signal {sig}: stopping {} process(es)",
                self.children.len()
            );
            self.stopping = true;
            // The children bound their own stop by STOP_BOUND; this is for one that cannot.
            self.stop_deadline = Some(Instant::now() + STOP_BOUND + Duration::from_secs(2));
            self.pending.clear();
            self.delayed.clear();
            self.kill_all(libc::SIGTERM);
        } else {
            tracing::warn!("received signal {sig} during shutdown: killing every process");
            self.forced = true;
            self.kill_all(libc::SIGKILL);
        }
    }

    fn kill_all(&self, sig: i32) {
        for pid in self.children.keys() {
            // SAFETY: plain kill(2) on a child we have not reaped yet (its pid is still ours).
            unsafe { libc::kill(*pid, sig) };
        }
    }

    /// Collects every child that ended, logs why, and restarts it when it should be.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into our variable.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let Some(child) = self.children.remove(&pid) else {
                continue;
            };
            let lived = child.started.elapsed();
            let why = describe_status(status);
            let n = child.n;
            if self.stopping {
                tracing::info!("process {n} (pid {pid}) {why}");
            } else if lived < TIME_BREAK {
                tracing::warn!(
                    "TIME BREAK: process {n} (pid {pid}, {}) {why} {} ms after it started; it is not restarted",
                    child.label,
                    lived.as_millis()
                );
            } else {
                let history = self.histories.entry(n).or_default();
                let delay = history.restart_delay(self.restart, Instant::now());
                if delay.is_zero() {
                    tracing::warn!(
                        "process {n} (pid {pid}) {why} after {:.1} s; restarting it",
                        lived.as_secs_f64()
                    );
                    self.spawn(n, child.label);
                } else {
                    // Once per crash, and crashes are at least the delay apart: a bounded log.
                    tracing::error!(
                        "process {n} (pid {pid}) {why} after {:.1} s; it was restarted {} times in the last {} s (`#restart`: {} per {} s): restarting it in {} s",
                        lived.as_secs_f64(),
                        history.recent() - 1,
                        self.restart.period_s,
                        self.restart.intensity,
                        self.restart.period_s,
                        delay.as_secs()
                    );
                    self.delayed.push((Instant::now() + delay, n, child.label));
                }
            }
        }
    }
}

fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        format!("was killed by signal {sig} ({})", signal_name(sig))
    } else {
        format!("ended (status {status:#x})")
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "?",
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGCHLD,
            libc::SIGHUP,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// The next blocked signal of `set`, or `None` after `timeout` (or an interruption).
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: sigtimedwait reads the set and timeout we own; the info pointer may be null.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Creates the runtime directory (owner only) with the configuration file in it.
fn prepare_dir(dir: &Path, config_json: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(CONFIG_FILE))?;
    std::io::Write::write_all(&mut file, config_json.as_bytes())
}

/// Removes the runtime directories of our own supervisors that no longer run (a SIGKILLed
/// supervisor cannot clean up after itself).
fn remove_stale_dirs() {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(runtime_base()) else {
        return;
    };
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("stage-"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid || pid <= 0 {
            continue;
        }
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Called first thing in a child: die with the supervisor. PR_SET_PDEATHSIG is set in the
/// child itself, then the parent is checked, so a supervisor that died in between (before
/// the setting took effect) is noticed too.
pub fn bind_to_parent(parent: u32) {
    // SAFETY: plain prctl/getppid calls.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() as u32 != parent {
            libc::_exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, ConfigSource};

    #[test]
    fn plan_starts_lua_processes_in_order_with_their_delays() {
        let c = load(vec![ConfigSource::new(
            "s.json",
            r##"{"#startup": [["lua.so+a"], 250, ["examples.so+c"], ["lua.so+b", "lua.so+c"]]}"##,
        )])
        .unwrap();
        assert_eq!(
            plan(&c),
            vec![
                Step::Start {
                    n: 1,
                    label: "lua.so+a".into()
                },
                Step::Delay(Duration::from_millis(250)),
                Step::Start {
                    n: 3,
                    label: "lua.so+b, lua.so+c".into()
                },
            ]
        );
    }

    #[test]
    fn statuses_read_as_sentences() {
        assert_eq!(describe_status(3 << 8), "exited with code 3");
        assert_eq!(describe_status(9), "was killed by signal 9 (SIGKILL)");
    }
}
