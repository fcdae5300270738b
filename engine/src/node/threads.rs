//! What a stalled core's thread is doing, read from `/proc`: by a process's watchdog when it
//! reports a core stalled ([`describe_thread`]), and by the supervisor for every thread of a
//! child just before its watchdog kills it ([`describe`]). A core that stops beating is
//! otherwise a mystery after the fact (the process may be gone); one line naming the thread's
//! state, the kernel function it sleeps in (`wchan`), the system call it is in and, when the
//! reader may see it (root), the top of its kernel stack tells a Lua loop (`syscall=none`)
//! from a lock wait (`futex`) from a disk or io_uring wait — what the next person
//! needs to fix it.
//!
//! Best effort by design: every file may be missing (the thread ended, no permission, a
//! kernel without the file); what cannot be read is left out, never an error.

use std::fmt::Write as _;
use std::path::PathBuf;

/// How many kernel stack frames to show per thread.
const STACK_FRAMES: usize = 4;

/// One line per thread of `pid`: `name (tid) state wchan=... syscall=... stack=a<b<c`.
/// Empty when the process is gone.
pub fn describe(pid: i32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    let mut tids: Vec<u32> = tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    let mut out = String::new();
    for tid in tids {
        if let Some(line) = describe_thread(pid, tid) {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&line);
        }
    }
    out
}

/// One thread of `pid`: `name (tid) state wchan=... syscall=... stack=a<b<c`; `None` when it
/// is gone.
pub fn describe_thread(pid: i32, tid: u32) -> Option<String> {
    let dir = PathBuf::from(format!("/proc/{pid}/task/{tid}"));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let name = read("comm")?.trim().to_string();
    let mut line = format!("{name} ({tid})");
    if let Some(state) = read("stat").as_deref().and_then(state_of) {
        let _ = write!(line, " {state}");
    }
    if let Some(wchan) = read("wchan").filter(|w| !w.is_empty() && w != "0") {
        let _ = write!(line, " wchan={wchan}");
    }
    if let Some(syscall) = read("syscall").as_deref().and_then(syscall_of) {
        let _ = write!(line, " syscall={syscall}");
    }
    if let Some(stack) = read("stack").as_deref().map(top_of_stack) {
        if !stack.is_empty() {
            let _ = write!(line, " stack={stack}");
        }
    }
    Some(line)
}

/// The one-letter state from `/proc/.../stat` (after the parenthesised name, which may hold
/// spaces and parentheses itself).
fn state_of(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The system call number from `/proc/.../syscall`, named when it is one a core waits in;
/// `none` when the thread is in user space (a Lua loop: the kernel says `running` while it is
/// on a CPU, `-1` when it was preempted there), `None` when unknown.
fn syscall_of(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    if first == "running" {
        return Some("none".into());
    }
    let nr: i64 = first.parse().ok()?;
    if nr < 0 {
        return Some("none".into());
    }
    Some(match syscall_name(nr) {
        Some(name) => name.to_string(),
        None => nr.to_string(),
    })
}

/// Names for the system calls a stalled core is usually found in.
fn syscall_name(nr: i64) -> Option<&'static str> {
    let known: &[(i64, &str)] = &[
        (libc::SYS_futex, "futex"),
        (libc::SYS_read, "read"),
        (libc::SYS_write, "write"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_fsync, "fsync"),
        (libc::SYS_fdatasync, "fdatasync"),
        (libc::SYS_msync, "msync"),
        (libc::SYS_mmap, "mmap"),
        (libc::SYS_munmap, "munmap"),
        (libc::SYS_io_uring_setup, "io_uring_setup"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
        (libc::SYS_io_uring_register, "io_uring_register"),
        (libc::SYS_epoll_wait, "epoll_wait"),
        (libc::SYS_nanosleep, "nanosleep"),
        (libc::SYS_clock_nanosleep, "clock_nanosleep"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_wait4, "wait4"),
    ];
    known.iter().find(|(n, _)| *n == nr).map(|(_, name)| *name)
}

/// `[<0>] io_uring_cancel_generic+0x1b1/0x2e0` lines -> `io_uring_cancel_generic<...`,
/// innermost first, [`STACK_FRAMES`] of them.
fn top_of_stack(stack: &str) -> String {
    stack
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|f| f.split('+').next().unwrap_or(f))
        .take(STACK_FRAMES)
        .collect::<Vec<_>>()
        .join("<")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_sleeping_thread_is_named_with_its_state_and_the_call_it_waits_in() {
        let (tx, rx) = channel::<()>();
        let (ready_tx, ready_rx) = channel();
        let sleeper = std::thread::Builder::new()
            .name("probe-waiter".into())
            .spawn(move || {
                ready_tx.send(()).unwrap();
                let _ = rx.recv(); // parks in futex until the test ends
            })
            .unwrap();
        ready_rx.recv().unwrap();
        // Give it time to reach the futex wait after saying it is ready.
        let pid = std::process::id() as i32;
        let line = (0..200)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                describe(pid)
            })
            .find(|d| {
                d.split("; ")
                    .any(|t| t.starts_with("probe-waiter") && t.contains("syscall=futex"))
            });
        drop(tx);
        sleeper.join().unwrap();
        let line = line.expect("the waiting thread is described as in futex");
        let waiter = line
            .split("; ")
            .find(|t| t.starts_with("probe-waiter"))
            .unwrap();
        assert!(waiter.contains(" S"), "{waiter}");
    }

    #[test]
    fn a_process_that_is_gone_is_described_as_nothing() {
        assert_eq!(describe(i32::MAX), "");
    }

    #[test]
    fn proc_text_is_parsed_without_trusting_its_shape() {
        assert_eq!(state_of("12 (a (b) c) S 1 2"), Some('S'));
        assert_eq!(state_of("garbage"), None);
        assert_eq!(syscall_of("running"), Some("none".into()));
        assert_eq!(syscall_of("-1 0x7ffd 0x5555"), Some("none".into()));
        assert_eq!(
            syscall_of(&format!("{} 0x1 0x2", libc::SYS_futex)),
            Some("futex".into())
        );
        assert_eq!(syscall_of("9999 0x1"), Some("9999".into()));
        assert_eq!(syscall_of(""), None);
        assert_eq!(
            top_of_stack(
                "[<0>] a+0x1/0x2\n[<0>] b+0x3/0x4\n[<0>] c+0/1\n[<0>] d+0/1\n[<0>] e+0/1\n"
            ),
            "a<b<c<d"
        );
    }
}
