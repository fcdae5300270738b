//! Atomic reload: one `stage-reload` thread per process looks at the script files, and every
//! core of the process switches to a new version of them at a message boundary.
//!
//! **How.** Every `%reflush` msec (at least every [`MIN_POLL`]), and at once when asked
//! ([`request`] / [`request_with`]: the admin endpoint's `POST /reload`), the thread walks
//! the `%package` directories into the file image (`image`: it reads only the files whose
//! size or mtime changed; first loads on the cores read the image), re-resolves every script
//! name the process has loaded and compiles (syntax check, in its own Lua state) only the
//! files whose stamp changed. All of that happens on this thread, never on a core. If something changed, it
//! posts one [`Batch`] ("version N: these scripts") to every core's inbox. Each core
//! installs it between two messages (no callback is running then) and acknowledges; when
//! every core has, the version is committed ([`Library::commit`]) and the requesters hear
//! [`ReloadOutcome::Switched`]. One reload at a time: a change seen while one is in flight
//! waits for the next scan, so at most two versions are live.
//!
//! **What "atomic" means here.** Every core switches at its next message boundary after the
//! batch reaches its inbox: a callback that is running then finishes on the old version, and
//! nothing runs half old, half new. Between the first and the last core switching there is a
//! window in which cores serve different versions: each core first finishes the callback it
//! is in, the messages queued in its inbox before the batch (the inbox is FIFO) and whatever
//! ready work its executor schedules before the inbox task — normally one callback, more
//! when a core has a backlog. The window is measured every time (`window` in the outcome and
//! in the log line; on this project's shared 2-CPU test machine, 12 µs to 3.7 ms, see
//! docs/config.md). After the switch
//! completes, no two cores of the process serve different versions. A batch is all or
//! nothing: if any changed file does not compile, nothing switches (all cores keep the
//! running version, which keeps serving), the error is logged once per file version
//! (path and message) and every scan refuses again until the file is fixed or restored.
//!
//! **What reloads.** Script sources: every name loaded through `stage.load` (the chunk runs
//! again on every call, so the next call runs the new version) and `stage.require` (the
//! cached value of a changed module is dropped, so the next `stage.require` runs the new
//! version once, on every core), resolved through `%package` as at first load (a fail-over
//! copy takes over when the normal one disappears; the normal one wins again when it
//! reappears). **What does not:** functions that already exist — the main script (it ran at
//! boot), handlers registered with `stage.waitfor`, `addtask` timers, listener and socket
//! callbacks (all kept as bytecode of the version that created them), values a script
//! stored in tables, upvalues or `__`, and coroutines that are suspended (they resume in the
//! old code). The usual pattern, a receive callback that calls `stage.load("packet+" ..
//! data.message)`, therefore reloads; a handler written inline in the main script does not.
//! `%preload` scripts run once per state and never again. Pool threads (`thread.new`)
//! switch when the reload is committed, before their next job.

use std::collections::HashMap;
use std::fmt;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mlua::Lua;

use super::library::{Library, Verdict};
use super::loader::compile;
use crate::node::reload::{Ack, AckResult, Batch, BrokenFile, Resolution, Round, Stamp};
use crate::node::{CoreMsg, Node};

/// The shortest time between two scans (`%reflush` 0 means this), so a zero never spins.
pub const MIN_POLL: Duration = Duration::from_millis(10);

/// The file image is walked again no sooner than this many times the last walk's duration
/// after it: at most ~1% of a CPU however big the `%package` trees (a walk of 20 ms waits
/// 2 s; a scripts directory of a few hundred files walks in well under 1 ms, so every scan).
const WALK_SPACING: u32 = 100;

/// How often a reload in flight retries a core whose inbox was full.
const RETRY: Duration = Duration::from_millis(10);

/// The longest the thread sleeps without looking whether the process is stopping (a long
/// `%reflush` must not keep requests waiting for an answer after the cores are gone).
const STOP_CHECK: Duration = Duration::from_millis(250);

/// What a reload request came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Every core of the process switched to `version`, which changed `scripts` (script
    /// names as loaded). `window`: first to last core switching; `took`: from posting the
    /// batch to the last core switching.
    Switched {
        version: u64,
        scripts: Vec<String>,
        cores: usize,
        window: Duration,
        took: Duration,
    },
    /// No script changed since `version`, the running one.
    Unchanged { version: u64 },
    /// A changed file does not compile: nothing switched, `version` keeps running.
    /// `errors`: (path, compiler message) of each file that does not compile.
    Refused {
        version: u64,
        errors: Vec<(String, String)>,
    },
    /// This process has no reloader (it runs no Lua state: a supervisor) or is stopping.
    Unavailable,
}

impl fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadOutcome::Switched {
                version,
                scripts,
                cores,
                window,
                took,
            } => write!(
                f,
                "version {version}: {} switched on {cores} core(s) in {took:?} (first to last core: {window:?})",
                scripts.join(", ")
            ),
            ReloadOutcome::Unchanged { version } => {
                write!(f, "version {version}: no script changed")
            }
            ReloadOutcome::Refused { version, errors } => {
                write!(f, "refused, version {version} keeps running:")?;
                for (path, error) in errors {
                    write!(f, " `{path}` does not compile: {error};")?;
                }
                Ok(())
            }
            ReloadOutcome::Unavailable => write!(f, "no reloader in this process"),
        }
    }
}

impl ReloadOutcome {
    /// The node layer's view (`node::reload::Outcome`), for the admin endpoint.
    pub fn to_node(&self) -> crate::node::reload::Outcome {
        let mut out = crate::node::reload::Outcome {
            status: "unavailable",
            version: 0,
            changed: Vec::new(),
            errors: Vec::new(),
            cores: 0,
            window: Duration::ZERO,
            summary: self.to_string(),
        };
        match self {
            ReloadOutcome::Switched {
                version,
                scripts,
                cores,
                window,
                ..
            } => {
                out.status = "switched";
                out.version = *version;
                out.changed = scripts.clone();
                out.cores = *cores;
                out.window = *window;
            }
            ReloadOutcome::Unchanged { version } => {
                out.status = "unchanged";
                out.version = *version;
            }
            ReloadOutcome::Refused { version, errors } => {
                out.status = "refused";
                out.version = *version;
                out.errors = errors.clone();
            }
            ReloadOutcome::Unavailable => {}
        }
        out
    }
}

type Reply = Box<dyn FnOnce(ReloadOutcome) + Send>;

enum Command {
    Request(Reply),
    Ack(Ack),
}

struct Reloader {
    library: Arc<Library>,
    commands: Sender<Command>,
}

static RELOADER: OnceLock<Reloader> = OnceLock::new();

/// The process's script library, starting its reloader thread the first time (the first
/// Lua state of the process calls this; later calls return the same library).
pub fn start(node: &Arc<Node>) -> Arc<Library> {
    RELOADER
        .get_or_init(|| {
            let plan = &node.plan;
            let library = Library::new(plan.package.clone(), plan.reflush, plan.embedded);
            let (tx, rx) = channel();
            let (thread_node, thread_library, acks) = (node.clone(), library.clone(), tx.clone());
            let spawned = std::thread::Builder::new()
                .name("stage-reload".into())
                .spawn(move || run(thread_node, thread_library, rx, acks));
            if let Err(err) = spawned {
                // Requests then find the channel closed and answer `Unavailable`.
                tracing::error!("cannot start the reloader thread: {err}; scripts will not reload");
            }
            // The node layer's trigger (`POST /reload`) comes here.
            crate::node::reload::set_requester(Box::new(|done| {
                request_with(move |outcome| done(outcome.to_node()))
            }));
            Reloader {
                library,
                commands: tx,
            }
        })
        .library
        .clone()
}

/// The process's script library, if a Lua state has started it (`None` in a tool that runs
/// no node, such as `stage --check`).
pub fn library() -> Option<Arc<Library>> {
    RELOADER.get().map(|r| r.library.clone())
}

/// Asks this process for a reload now: the reloader scans the script files (off every core)
/// and, if some changed and all compile, switches every core to them. `done` runs once, on
/// the reloader thread, with the outcome: after every core has switched
/// ([`ReloadOutcome::Switched`]), or at once when nothing changed or a file does not compile.
/// Never blocks the caller; `done` must not block either (send it on a channel). A core
/// that does not get back to its inbox delays the answer, so a caller waits with a timeout.
pub fn request_with(done: impl FnOnce(ReloadOutcome) + Send + 'static) {
    let Some(reloader) = RELOADER.get() else {
        return done(ReloadOutcome::Unavailable);
    };
    if let Err(err) = reloader.commands.send(Command::Request(Box::new(done))) {
        if let Command::Request(done) = err.0 {
            done(ReloadOutcome::Unavailable);
        }
    }
}

/// [`request_with`] answering on a channel: `request().recv_timeout(..)` from a thread that
/// may block (an HTTP server's worker), never from a core.
pub fn request() -> Receiver<ReloadOutcome> {
    let (tx, rx) = channel();
    request_with(move |outcome| {
        let _ = tx.send(outcome);
    });
    rx
}

/// The scripts a process runs, for `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The committed version (1 = the scripts as first loaded).
    pub version: u64,
    /// Every script name loaded so far, sorted, with the path it resolves to (`None`: not
    /// found, or no copy compiles).
    pub scripts: Vec<(String, Option<String>)>,
}

/// This process's [`Status`]; `None` in a process without a reloader (a supervisor).
pub fn status() -> Option<Status> {
    let library = &RELOADER.get()?.library;
    let mut scripts: Vec<_> = library
        .snapshot()
        .into_iter()
        .map(|(name, r)| (name, r.found.as_ref().map(|s| s.path.clone())))
        .collect();
    scripts.sort();
    Some(Status {
        version: library.version(),
        scripts,
    })
}

/// The reloader thread: scans on its period or on request, runs one reload at a time.
fn run(node: Arc<Node>, library: Arc<Library>, commands: Receiver<Command>, acks: Sender<Command>) {
    let period = library.reflush.max(MIN_POLL);
    let mut watcher = Watcher::new();
    let mut next_scan = Instant::now() + period;
    let mut waiting: Vec<Reply> = Vec::new();
    let mut flight: Option<InFlight> = None;
    loop {
        if node.is_shutting_down() {
            let pending = flight.take().map(|f| f.replies).unwrap_or_default();
            for reply in pending.into_iter().chain(waiting) {
                reply(ReloadOutcome::Unavailable);
            }
            return;
        }
        let timeout = match &flight {
            Some(_) => RETRY,
            None if !waiting.is_empty() => Duration::ZERO,
            None => next_scan
                .saturating_duration_since(Instant::now())
                .min(STOP_CHECK),
        };
        match commands.recv_timeout(timeout) {
            Ok(Command::Request(reply)) => waiting.push(reply),
            Ok(Command::Ack(ack)) => {
                if let Some(f) = &mut flight {
                    if let AckResult::Complete(switch) = f.round.ack(ack) {
                        let f = flight.take().expect("in flight");
                        library.commit(f.round.version, &f.batch.scripts);
                        let outcome = ReloadOutcome::Switched {
                            version: switch.version,
                            scripts: f.batch.names(),
                            cores: switch.cores,
                            window: switch.window,
                            took: switch.took,
                        };
                        tracing::info!("reload {outcome}");
                        for reply in f.replies {
                            reply(outcome.clone());
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Some(f) = &mut flight {
            f.send(&node);
            continue;
        }
        if waiting.is_empty() && Instant::now() < next_scan {
            continue;
        }
        // Requests are answered by the first scan that starts after they arrived.
        let replies = std::mem::take(&mut waiting);
        next_scan = Instant::now() + period;
        let version = library.version();
        match watcher.scan(&library, !replies.is_empty()) {
            Scan::Unchanged => {
                for reply in replies {
                    reply(ReloadOutcome::Unchanged { version });
                }
            }
            Scan::Refused(broken) => {
                let errors: Vec<(String, String)> =
                    broken.into_iter().map(|b| (b.path, b.error)).collect();
                for reply in replies {
                    reply(ReloadOutcome::Refused {
                        version,
                        errors: errors.clone(),
                    });
                }
            }
            Scan::Changed(scripts) => {
                let next = version + 1;
                let sink = acks.clone();
                let batch = Arc::new(Batch {
                    version: next,
                    scripts,
                    // An unbounded channel: a core's acknowledgement never waits.
                    ack: Box::new(move |ack| {
                        let _ = sink.send(Command::Ack(ack));
                    }),
                });
                let mut f = InFlight {
                    round: Round::new(next, node.cores(), Instant::now()),
                    batch,
                    replies,
                };
                f.send(&node);
                flight = Some(f);
            }
        }
    }
}

/// The reload being installed by the cores.
struct InFlight {
    round: Round,
    batch: Arc<Batch>,
    /// Requests answered when it completes.
    replies: Vec<Reply>,
}

impl InFlight {
    /// Posts the batch to every core whose inbox has not taken it yet.
    fn send(&mut self, node: &Node) {
        for core in self.round.unsent() {
            match node.send(core, CoreMsg::Reload(self.batch.clone())) {
                Ok(()) => self.round.mark_sent(core),
                // Full: tried again in `RETRY`; the reload completes once it gets through.
                Err(err) => node.log_dropped(core, &err),
            }
        }
    }
}

/// What one scan found.
#[derive(Debug)]
enum Scan {
    Unchanged,
    /// Files that do not compile (newly broken since the running version): nothing switches.
    Refused(Vec<BrokenFile>),
    /// The names whose resolution changed, all compiling.
    Changed(Vec<(String, Arc<Resolution>)>),
}

/// The reloader's own Lua state (only compiles, never runs anything) and what it has
/// already judged.
struct Watcher {
    lua: Lua,
    /// Per path: the last version of a file seen broken, and its error. It is not read
    /// again until its stamp changes, and it is logged once.
    refused: HashMap<String, (Stamp, String)>,
    /// When the file image may be walked again (see [`WALK_SPACING`]).
    next_walk: Instant,
}

impl Watcher {
    fn new() -> Watcher {
        Watcher {
            lua: Lua::new(),
            refused: HashMap::new(),
            next_walk: Instant::now(),
        }
    }

    /// Re-resolves every loaded name. A file that does not compile and was not already
    /// passed over by the running version refuses the whole scan.
    fn scan(&mut self, library: &Library, asked: bool) -> Scan {
        // New and edited files reach the image (what first loads on the cores read) here: on
        // every scan for a small tree, spaced out for a big one, at once when asked.
        if asked || Instant::now() >= self.next_walk {
            let started = Instant::now();
            library.image.refresh();
            self.next_walk = Instant::now() + started.elapsed() * WALK_SPACING;
        }
        let mut changed = Vec::new();
        let mut refused: Vec<BrokenFile> = Vec::new();
        let lua = &self.lua;
        let known_broken = &self.refused;
        for (name, current) in library.snapshot() {
            let known = |path: &str, stamp: Stamp| -> Option<Verdict> {
                if let Some(source) = current
                    .found
                    .as_ref()
                    .filter(|s| s.path == path && s.stamp == stamp)
                {
                    return Some(Verdict::Compiles(source.clone()));
                }
                if let Some(b) = current
                    .broken
                    .iter()
                    .find(|b| b.path == path && b.stamp == stamp)
                {
                    return Some(Verdict::Broken(b.clone()));
                }
                known_broken
                    .get(path)
                    .filter(|(s, _)| *s == stamp)
                    .map(|(_, error)| {
                        Verdict::Broken(BrokenFile {
                            path: path.to_string(),
                            stamp,
                            error: error.clone(),
                        })
                    })
            };
            let next = library.resolve(
                &name,
                &mut |path, bytes| compile(lua, path, bytes).map(drop),
                &known,
                false,
            );
            let newly_broken: Vec<BrokenFile> = next
                .broken
                .iter()
                .filter(|b| !current.broken.contains(b))
                .cloned()
                .collect();
            if !newly_broken.is_empty() {
                for b in newly_broken {
                    if !refused.contains(&b) {
                        refused.push(b);
                    }
                }
            } else if !next.same_as(&current) {
                changed.push((name, Arc::new(next)));
            }
        }
        if !refused.is_empty() {
            for b in &refused {
                let seen = self
                    .refused
                    .get(&b.path)
                    .is_some_and(|(s, _)| *s == b.stamp);
                if !seen {
                    tracing::warn!(
                        "reload refused: `{}` does not compile: {}; every core keeps the running version",
                        b.path,
                        b.error
                    );
                    self.refused
                        .insert(b.path.clone(), (b.stamp, b.error.clone()));
                }
            }
            return Scan::Refused(refused);
        }
        if changed.is_empty() {
            Scan::Unchanged
        } else {
            changed.sort_by(|a, b| a.0.cmp(&b.0));
            Scan::Changed(changed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PackageEntry;
    use crate::script::loader::{Lookup, ScriptLoader};

    fn entry(position: u32, prefix: &std::path::Path) -> PackageEntry {
        PackageEntry {
            position,
            prefix: prefix.to_str().unwrap().to_string(),
        }
    }

    /// Writes through a rename, as an editor or a deploy does, so a scan never reads a
    /// half-written file; the content lengths in these tests differ, so the stamps do too.
    fn replace(path: &std::path::Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn value(loader: &ScriptLoader, lua: &Lua, name: &str) -> String {
        match loader.load(lua, name).unwrap() {
            Lookup::Found(l) => l.chunk.call::<String>(()).unwrap(),
            Lookup::NotFound(p) => format!("not found: {p}"),
        }
    }

    /// Installs a scan's changes as one core would, and commits them.
    fn switch(library: &Library, loader: &ScriptLoader, scripts: Vec<(String, Arc<Resolution>)>) {
        let version = library.version() + 1;
        let batch = Batch {
            version,
            scripts,
            ack: Box::new(|_| {}),
        };
        loader.install(&batch);
        library.commit(version, &batch.scripts);
    }

    #[test]
    fn a_scan_switches_changed_files_and_refuses_a_batch_with_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let (pkg, rollback) = (dir.path().join("package"), dir.path().join("rollback"));
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::create_dir_all(&rollback).unwrap();
        replace(&pkg.join("a.lua"), "return 'a1'");
        replace(&pkg.join("b.lua"), "return 'b1'");
        replace(&rollback.join("b.lua"), "return 'b from rollback'");
        let library = Library::new(
            vec![entry(0, &pkg), entry(1, &rollback)],
            Duration::ZERO,
            &[],
        );
        let lua = Lua::new();
        let core = ScriptLoader::new(library.clone());
        assert_eq!(value(&core, &lua, "a"), "a1");
        assert_eq!(value(&core, &lua, "b"), "b1");
        let mut watcher = Watcher::new();
        assert!(matches!(watcher.scan(&library, true), Scan::Unchanged));

        // One good change and one broken file: nothing switches, even though b has a
        // fail-over copy that compiles.
        replace(&pkg.join("a.lua"), "return 'a2, longer'");
        replace(&pkg.join("b.lua"), "return (");
        for _ in 0..2 {
            match watcher.scan(&library, true) {
                Scan::Refused(broken) => {
                    assert_eq!(broken.len(), 1);
                    assert!(broken[0].path.ends_with("package/b.lua"), "{broken:?}");
                    assert!(broken[0].error.contains("b.lua"), "{broken:?}");
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        assert_eq!(
            value(&core, &lua, "a"),
            "a1",
            "the running version serves on"
        );

        // Fixed: both switch together.
        replace(&pkg.join("b.lua"), "return 'b2, fixed'");
        let Scan::Changed(scripts) = watcher.scan(&library, true) else {
            panic!("expected a change");
        };
        let names: Vec<&str> = scripts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            value(&core, &lua, "a"),
            "a1",
            "nothing changes before the batch"
        );
        switch(&library, &core, scripts);
        assert_eq!(value(&core, &lua, "a"), "a2, longer");
        assert_eq!(value(&core, &lua, "b"), "b2, fixed");
        assert!(matches!(watcher.scan(&library, true), Scan::Unchanged));

        // The normal copy disappears: the fail-over copy takes over (position 1).
        std::fs::remove_file(pkg.join("b.lua")).unwrap();
        let Scan::Changed(scripts) = watcher.scan(&library, true) else {
            panic!("expected a change");
        };
        switch(&library, &core, scripts);
        assert_eq!(value(&core, &lua, "b"), "b from rollback");

        // A pool thread's state catches up with what was committed.
        let pool = ScriptLoader::new(library.clone());
        assert_eq!(value(&pool, &lua, "a"), "a2, longer");
        assert_eq!(pool.catch_up(), None);
        replace(&pkg.join("a.lua"), "return 'a3, even longer'");
        let Scan::Changed(scripts) = watcher.scan(&library, true) else {
            panic!("expected a change");
        };
        switch(&library, &core, scripts);
        assert_eq!(pool.catch_up(), Some(vec!["a".to_string()]));
        assert_eq!(value(&pool, &lua, "a"), "a3, even longer");
    }

    #[test]
    fn a_file_broken_at_first_load_does_not_block_later_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let (pkg, rollback) = (dir.path().join("package"), dir.path().join("rollback"));
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::create_dir_all(&rollback).unwrap();
        replace(&pkg.join("m.lua"), "return (");
        replace(&rollback.join("m.lua"), "return 'rollback'");
        replace(&pkg.join("other.lua"), "return 'o1'");
        let library = Library::new(
            vec![entry(0, &pkg), entry(1, &rollback)],
            Duration::ZERO,
            &[],
        );
        let lua = Lua::new();
        let core = ScriptLoader::new(library.clone());
        assert_eq!(value(&core, &lua, "m"), "rollback");
        assert_eq!(value(&core, &lua, "other"), "o1");
        let mut watcher = Watcher::new();
        replace(&pkg.join("other.lua"), "return 'o2, new'");
        let Scan::Changed(scripts) = watcher.scan(&library, true) else {
            panic!("the broken file the running version passed over must not refuse");
        };
        switch(&library, &core, scripts);
        assert_eq!(value(&core, &lua, "other"), "o2, new");
        // Fixing the normal copy brings it back at position 0.
        replace(&pkg.join("m.lua"), "return 'package again'");
        let Scan::Changed(scripts) = watcher.scan(&library, true) else {
            panic!("expected a change");
        };
        switch(&library, &core, scripts);
        assert_eq!(value(&core, &lua, "m"), "package again");
    }

    /// A node of two cores whose inboxes the test reads itself, playing the cores.
    fn node(dir: &std::path::Path) -> (Arc<Node>, Vec<crate::node::mailbox::Inbox<CoreMsg>>) {
        let plan = crate::plan::Plan {
            package: vec![entry(0, dir)],
            // Long: only requests scan in this test.
            reflush: Duration::from_secs(3600),
            ..crate::plan::Plan::empty()
        };
        let node = Node::new(vec![0, 1], Arc::new(plan), None);
        let (mut tx, mut rx) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (mailbox, inbox) = crate::node::mailbox::channel(16).unwrap();
            tx.push(mailbox);
            rx.push(inbox);
        }
        node.set_inboxes(tx);
        (node, rx)
    }

    fn take_batch(inbox: &crate::node::mailbox::Inbox<CoreMsg>) -> Arc<Batch> {
        let got = poll(|| match inbox.try_take() {
            Some(CoreMsg::Reload(batch)) => Some(batch),
            Some(_) => panic!("a message other than a reload batch"),
            None => None,
        });
        got.expect("the reload batch reaches every core's inbox")
    }

    fn poll<T>(mut probe: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(v) = probe() {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    #[test]
    fn a_request_is_answered_once_every_core_has_switched() {
        let dir = tempfile::tempdir().unwrap();
        replace(&dir.path().join("m.lua"), "return 'one'");
        let (node, inboxes) = node(dir.path());
        let library = Library::new(node.plan.package.clone(), node.plan.reflush, &[]);
        let lua = Lua::new();
        let cores = [
            ScriptLoader::new(library.clone()),
            ScriptLoader::new(library.clone()),
        ];
        for core in &cores {
            assert_eq!(value(core, &lua, "m"), "one");
        }
        let (tx, rx) = channel();
        let (thread_node, thread_library, acks) = (node.clone(), library.clone(), tx.clone());
        std::thread::spawn(move || run(thread_node, thread_library, rx, acks));
        // As `request_with`: a reloader that has stopped answers `Unavailable`.
        let ask = || {
            let (done, outcome) = channel();
            let reply: Reply = Box::new(move |o| {
                let _ = done.send(o);
            });
            if let Err(err) = tx.send(Command::Request(reply)) {
                if let Command::Request(reply) = err.0 {
                    reply(ReloadOutcome::Unavailable);
                }
            }
            outcome
        };

        replace(&dir.path().join("m.lua"), "return 'two, longer'");
        let outcome = ask();
        let batches: Vec<Arc<Batch>> = inboxes.iter().map(take_batch).collect();
        assert_eq!(batches[0].version, 2);
        assert_eq!(batches[0].names(), ["m"]);
        // Core 0 switches; core 1 has not yet: no answer, and nothing committed.
        cores[0].install(&batches[0]);
        (batches[0].ack)(Ack {
            version: 2,
            core: 0,
            at: Instant::now(),
        });
        assert_eq!(value(&cores[0], &lua, "m"), "two, longer");
        assert_eq!(value(&cores[1], &lua, "m"), "one");
        assert!(outcome.recv_timeout(Duration::from_millis(200)).is_err());
        assert_eq!(library.version(), 1);
        cores[1].install(&batches[1]);
        (batches[1].ack)(Ack {
            version: 2,
            core: 1,
            at: Instant::now(),
        });
        match outcome.recv_timeout(Duration::from_secs(10)).unwrap() {
            ReloadOutcome::Switched {
                version,
                scripts,
                cores,
                ..
            } => assert_eq!((version, scripts, cores), (2, vec!["m".to_string()], 2)),
            other => panic!("expected a switch, got {other:?}"),
        }
        assert_eq!(library.version(), 2);
        assert_eq!(value(&cores[1], &lua, "m"), "two, longer");

        // Nothing changed since: answered at once, no batch.
        assert_eq!(
            ask().recv_timeout(Duration::from_secs(10)).unwrap(),
            ReloadOutcome::Unchanged { version: 2 }
        );
        // Broken: refused, no batch, version 2 keeps running.
        replace(&dir.path().join("m.lua"), "return (");
        match ask().recv_timeout(Duration::from_secs(10)).unwrap() {
            ReloadOutcome::Refused { version, errors } => {
                assert_eq!(version, 2);
                assert_eq!(errors.len(), 1);
                assert!(errors[0].0.ends_with("m.lua"), "{errors:?}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(inboxes.iter().all(|i| i.try_take().is_none()));
        // Stopping answers what is still waiting.
        node.shutdown();
        replace(&dir.path().join("m.lua"), "return 'three, even longer'");
        let late = ask();
        assert_eq!(
            late.recv_timeout(Duration::from_secs(10)).unwrap(),
            ReloadOutcome::Unavailable
        );
    }

    #[test]
    fn outcomes_read_as_one_line() {
        let refused = ReloadOutcome::Refused {
            version: 3,
            errors: vec![("p/m.lua".into(), "syntax error: p/m.lua:1: oops".into())],
        };
        assert_eq!(
            refused.to_string(),
            "refused, version 3 keeps running: `p/m.lua` does not compile: syntax error: p/m.lua:1: oops;"
        );
    }
}
