//! Support code for STAGE's benchmarks. The crate's binaries are the measuring tools:
//! `baseline-echo`, the plain glommio echo server (same framing as `stage`, no Lua) that
//! every end-to-end figure is a ratio against, and `e2e`, the interleaved comparison. Shared
//! here: finding the workspace's other binaries, a process's CPU time, a free port, waiting
//! for a started server to listen, and a nats-server of a run's own (`nats`).

use std::path::PathBuf;

pub mod nats;

/// Another binary of this workspace's release build, found next to the running one (the
/// measuring tools start `stage` and `baseline-echo` themselves).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("the running binary has no directory"))?
        .join(name);
    if !path.exists() {
        anyhow::bail!(
            "{} not found: run `cargo build --release --workspace` first",
            path.display()
        );
    }
    Ok(path)
}

/// CPU time (user + system, all threads) process `pid` has used so far, in seconds; 0 once
/// it is gone. Read from `/proc/PID/stat` (proc(5): utime and stime are fields 14 and 15,
/// counted after the command name, which may itself hold spaces and parentheses).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // `fields[0]` is the state, field 3.
    let at = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (at(14) + at(15)) as f64 / hz
}

/// Waits (up to 20 s) until a server the tool started listens on loopback `port`; an error
/// if it exits first or never listens.
pub fn wait_listening(port: u16, child: &mut std::process::Child) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("server exited early: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    anyhow::bail!("server did not listen on {port}")
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    use anyhow::Context;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}
