//! A `redis-server` of a test's own: on a free loopback port, in a temporary directory, never
//! the machine's Redis on 6379; killed when dropped. Without a `redis-server` binary a test
//! prints one line and passes, unless `STAGE_REQUIRE_SERVICES=1` (CI), where that fails.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

use crate::harness::*;

pub struct RedisServer {
    child: Option<Child>,
    bin: &'static str,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Append-only file on, fsynced at every write: what it acknowledged survives a stop.
    durable: bool,
}

fn redis_bin() -> Option<&'static str> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

impl RedisServer {
    /// Starts one, or `None` (skip, one line printed) when none is installed. `durable`:
    /// `--appendonly yes --appendfsync always`, for a test that stops and restarts Redis;
    /// otherwise nothing is written to disk (`--save "" --appendonly no`).
    pub fn start(test: &str, durable: bool) -> Option<RedisServer> {
        let Some(bin) = redis_bin() else {
            if std::env::var("STAGE_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("{test}: redis-server is not installed (STAGE_REQUIRE_SERVICES=1)");
            }
            println!("skipped {test}: redis-server is not installed (apt install redis-server)");
            return None;
        };
        let mut r = RedisServer {
            child: None,
            bin,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            durable,
        };
        r.restart();
        Some(r)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again) on the same port and directory, and waits until it accepts.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running");
        let aof = if self.durable { "yes" } else { "no" };
        let child = Command::new(self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", aof, "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_port_open(self.port);
    }

    /// Stops it (SIGTERM: it finishes its append-only file) and waits until it has exited.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("redis-server is running");
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let _ = child.wait();
    }

    /// `redis-cli` against it: the reply's text (what an operator would see).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
