//! The liveness watchdog (spec services.md §6.1 "Watchdog"). A core that never gets back to
//! its event loop — a C call that never returns, blocking work done on a core, a Lua loop
//! when `%cpu` is 0 — serves nobody: its connections hang, its stages' timers and handlers
//! stop. A Lua loop is normally ended by the CPU budget ([`super::budget`]); for what that
//! cannot reach the engine does what the original did: it notices, says so, and in a
//! multi-process node lets the supervisor kill and restart the process.
//!
//! Each core beats (stores the monotonic clock into its slot) from a small task; a core
//! whose beat is old has not run its loop since. A watchdog thread per process asks every
//! core to beat (one byte on the core's ping socket, [`Pulses::ping`]), looks at the beats
//! [`LOOK`] later, logs a stalled core (once, then every [`REPEAT`] while it lasts, and when
//! it recovers) and, in a child of a multi-process node, writes the oldest beat into the
//! child's `alive-N` file in the runtime directory. The supervisor reads those files and
//! SIGKILLs a child whose oldest beat is older than [`KILL_AFTER`] (3.1 s, the original's
//! figure); its restart path then starts it again. A core has no beat until its main scripts
//! have booted, so a slow boot is never killed.
//!
//! The clock is the watchdog thread's, not a timer on the core: while any glommio timer is
//! pending, every time the core goes to sleep its reactor arms a kernel timeout for it and
//! cancels it when the core wakes (two more `io_uring_enter` per sleep, about 8% of the CPU
//! time of a one-connection echo, issue #15 item 4). A read waiting on a socket costs a
//! sleeping core nothing.
//!
//! Times are `CLOCK_MONOTONIC` milliseconds, one clock for every process of the machine.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::Node;

/// How often the watchdog thread asks the cores to beat, and looks at their beats.
pub const LOOK: Duration = Duration::from_millis(250);
/// A core this late is reported as stalled.
pub const STALL: Duration = Duration::from_millis(1000);
/// While a stall lasts, it is reported again this often.
pub const REPEAT: Duration = Duration::from_secs(5);
/// The supervisor kills a child whose oldest core beat is this old.
pub const KILL_AFTER: Duration = Duration::from_millis(3100);
/// Written into the alive file by a process that is shutting down: do not watch it.
pub const NOT_WATCHED: u64 = u64::MAX;

/// Milliseconds of `CLOCK_MONOTONIC`, comparable between processes of one machine.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The last beat of every core (0 = not beating yet), and the sockets that ask them to beat.
pub struct Pulses {
    beats: Vec<AtomicU64>,
    /// The watchdog's end of each core's ping socket, once the core listens.
    pings: Vec<OnceLock<UnixStream>>,
    /// Each core's thread id (0 = not listening yet), to say what a stalled core is doing.
    tids: Vec<AtomicU32>,
}

impl Pulses {
    pub fn new(cores: usize) -> Pulses {
        Pulses {
            beats: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            pings: (0..cores).map(|_| OnceLock::new()).collect(),
            tids: (0..cores).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The socket `core` reads its pings from (non-blocking); the other end stays here for
    /// [`Pulses::ping`]. Once per core, on the core's own thread (its id is noted).
    pub fn listen(&self, core: usize) -> std::io::Result<UnixStream> {
        let slot = self
            .pings
            .get(core)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no such core"))?;
        let (writer, reader) = UnixStream::pair()?;
        // A full socket means pings are already waiting for the core: never block the thread.
        writer.set_nonblocking(true)?;
        reader.set_nonblocking(true)?;
        slot.set(writer).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the core already listens",
            )
        })?;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        self.tids[core].store(tid, Ordering::Relaxed);
        Ok(reader)
    }

    /// Asks every listening core to beat. A core that does not read leaves the bytes queued
    /// (and, after many looks, the socket full): its beat gets old, which is the point.
    pub fn ping(&self) {
        for writer in self.pings.iter().filter_map(OnceLock::get) {
            let _ = (&*writer).write(&[1]);
        }
    }

    /// What `core`'s thread is doing now, from `/proc` (empty if it is not known).
    pub fn describe(&self, core: usize) -> String {
        let tid = self.tids.get(core).map_or(0, |t| t.load(Ordering::Relaxed));
        if tid == 0 {
            return String::new();
        }
        super::threads::describe_thread(std::process::id() as i32, tid).unwrap_or_default()
    }

    pub fn beat(&self, core: usize) {
        if let Some(b) = self.beats.get(core) {
            b.store(monotonic_ms(), Ordering::Relaxed);
        }
    }

    /// The core with the oldest beat and that beat, among the cores that beat at all.
    pub fn oldest(&self) -> Option<(usize, u64)> {
        self.beats
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .enumerate()
            .filter(|&(_, at)| at != 0)
            .min_by_key(|&(_, at)| at)
    }
}

/// The file through which child `n` tells the supervisor how alive it is.
pub fn alive_file(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("alive-{n}"))
}

/// Reads an alive file: the oldest core beat of that child, if it has written one.
pub fn read_alive(path: &Path) -> Option<u64> {
    let mut buf = [0u8; 8];
    let file = File::open(path).ok()?;
    file.read_exact_at(&mut buf, 0).ok()?;
    Some(u64::from_le_bytes(buf))
}

/// Whether a child whose alive file says `beat` should be killed at `now`.
pub fn overdue(beat: u64, now: u64) -> bool {
    beat != NOT_WATCHED && now.saturating_sub(beat) > KILL_AFTER.as_millis() as u64
}

/// Starts the watchdog thread of this process (`alive`: the child's alive file).
pub fn start(node: Arc<Node>, alive: Option<PathBuf>) {
    let spawned = std::thread::Builder::new()
        .name("stage-watchdog".into())
        .spawn(move || watch(&node, alive.as_deref()));
    if let Err(err) = spawned {
        tracing::error!("cannot start the watchdog thread: {err}");
    }
}

/// What the watchdog said about a stall, so it is not repeated every look.
#[derive(Default)]
struct Reported {
    /// The stalled core and when it was last reported.
    stall: Option<(usize, u64)>,
}

fn watch(node: &Node, alive: Option<&Path>) {
    let file = alive.and_then(|path| match File::create(path) {
        Ok(f) => Some(f),
        Err(err) => {
            tracing::error!(
                "watchdog: cannot create {}: {err}; the supervisor cannot see this process stall",
                path.display()
            );
            None
        }
    });
    let mut reported = Reported::default();
    while !node.is_shutting_down() {
        node.pulses.ping();
        std::thread::sleep(LOOK);
        let now = monotonic_ms();
        let oldest = node.pulses.oldest();
        report(&mut reported, oldest, now, |core| {
            node.pulses.describe(core)
        });
        if let (Some(f), Some((_, beat))) = (&file, oldest) {
            let _ = f.write_all_at(&beat.to_le_bytes(), 0);
        }
    }
    if let Some(f) = &file {
        let _ = f.write_all_at(&NOT_WATCHED.to_le_bytes(), 0);
    }
}

/// Logs a stall when it starts (with what the core's thread is doing: `describe`), again
/// every [`REPEAT`] while it lasts, and when it ends.
fn report(
    reported: &mut Reported,
    oldest: Option<(usize, u64)>,
    now: u64,
    describe: impl Fn(usize) -> String,
) {
    let late = |beat: u64| Duration::from_millis(now.saturating_sub(beat));
    match (oldest, reported.stall) {
        (Some((core, beat)), stall) if late(beat) >= STALL => {
            let due = match stall {
                Some((c, at)) => c != core || now.saturating_sub(at) >= REPEAT.as_millis() as u64,
                None => true,
            };
            if due {
                tracing::error!(
                    "watchdog: core {core} has not returned to its event loop for {:.1} s \
                     (a Lua callback that does not return, or blocking work on a core?); its \
                     connections and stages get no service; its thread: {}",
                    late(beat).as_secs_f64(),
                    describe(core)
                );
                reported.stall = Some((core, now));
            }
        }
        (_, Some((core, _))) => {
            tracing::warn!("watchdog: core {core} is running again");
            reported.stall = None;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_beat_ignores_cores_that_never_beat() {
        let p = Pulses::new(3);
        assert_eq!(p.oldest(), None, "nobody beats during boot");
        p.beat(2);
        std::thread::sleep(Duration::from_millis(5));
        p.beat(0);
        assert_eq!(p.oldest().map(|(c, _)| c), Some(2));
        p.beat(9); // no such core: ignored
    }

    #[test]
    fn a_ping_reaches_each_listening_core_once_per_look() {
        let p = Pulses::new(2);
        let mut core0 = p.listen(0).unwrap();
        assert!(p.listen(0).is_err(), "a core listens once");
        assert!(p.listen(2).is_err(), "no such core");
        p.ping();
        p.ping();
        let mut buf = [0u8; 8];
        assert_eq!(std::io::Read::read(&mut core0, &mut buf).unwrap(), 2);
        let again = std::io::Read::read(&mut core0, &mut buf).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_child_is_overdue_after_3_1_s_unless_it_is_shutting_down() {
        assert!(!overdue(10_000, 13_100));
        assert!(overdue(10_000, 13_101));
        assert!(!overdue(NOT_WATCHED, u64::MAX - 1));
        assert!(
            !overdue(20_000, 10_000),
            "a beat from the future is not overdue"
        );
    }

    #[test]
    fn alive_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = alive_file(dir.path(), 3);
        assert_eq!(read_alive(&path), None);
        File::create(&path)
            .unwrap()
            .write_all_at(&1234u64.to_le_bytes(), 0)
            .unwrap();
        assert_eq!(read_alive(&path), Some(1234));
    }
}
