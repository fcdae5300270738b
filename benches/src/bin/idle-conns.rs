//! Resident memory per idle connection: start `stage` (release build next to this binary)
//! with a `packet=4k,10k` listener, open N connections that send nothing, and divide the
//! server's RSS growth by N. The target of issue #4 is at most 4 KiB per idle connection.
//!
//! Usage: target/release/idle-conns [N]   (default 10000; raises RLIMIT_NOFILE as needed)

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

fn raise_nofile(n: u64) {
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain setrlimit on a valid struct; failure only limits N.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(10_000), |s| s.parse())?;
    raise_nofile((n as u64) * 2 + 1024);
    let exe = std::env::current_exe()?;
    let stage = exe.parent().context("bin dir")?.join("stage");
    if !stage.exists() {
        bail!(
            "{} not found: cargo build --release --workspace",
            stage.display()
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("stage-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("stage.json"),
        r##"{ "#startup": [["lua.so+idle"]], "lua.so": { "%package": ["."], "idle": "start" } }"##,
    )?;
    std::fs::write(
        dir.join("start.lua"),
        format!("broker.ready('tcp://127.0.0.1:{port}?packet=4k,10k', function () return function (s, d) return d end end)\n"),
    )?;
    let mut child = Command::new(&stage)
        .args(["-c", "stage.json", "-l", "warn"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = stage_benches::rss_kib(child.id())?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => conns.push(s),
            Err(e) => bail!("connection {i}: {e}"),
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = stage_benches::rss_kib(child.id())?;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{n} idle connections: server RSS {before} KiB -> {after} KiB, {:.2} KiB per connection",
        (after.saturating_sub(before)) as f64 / n as f64
    );
    Ok(())
}
