#![allow(dead_code)] // each test binary that includes this module uses a part of it
//! What the load tester's end-to-end tests share: finding (or building) the real `stage`
//! binary, running it until the test ends, and running `stage-loadtest` against it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The workspace root (this crate lives in `<workspace>/loadtest`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtest/ has a parent")
        .to_path_buf()
}

/// The profile this test was built with, read from its own path (`target/<profile>/deps/..`).
fn own_profile() -> String {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .filter(|p| *p == "release" || *p == "debug")
        .unwrap_or("debug")
        .to_string()
}

/// `target/{release,debug}/stage`, the newest that exists; built with this test's profile
/// if neither does.
pub fn stage_binary() -> PathBuf {
    let ws = workspace();
    let mut target_dirs = vec![ws.join("target")];
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        target_dirs.insert(0, ws.join(dir)); // join keeps an absolute path as it is
    }
    let newest = target_dirs
        .iter()
        .flat_map(|t| ["release", "debug"].map(|p| t.join(p).join("stage")))
        .filter_map(|p| {
            let modified = p.metadata().ok()?.modified().ok()?;
            Some((modified, p))
        })
        .max_by_key(|(m, _): &(SystemTime, PathBuf)| *m);
    if let Some((_, path)) = newest {
        return path;
    }
    let profile = own_profile();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ws)
        .args(["build", "-p", "stage", "--bin", "stage"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .expect("running cargo build for the stage binary");
    assert!(
        status.success(),
        "`cargo build -p stage --bin stage` failed"
    );
    let path = target_dirs[0].join(&profile).join("stage");
    assert!(
        path.exists(),
        "no stage binary at {} even after building it; build it with `cargo build --release -p stage`",
        path.display()
    );
    path
}

/// A running `stage` process, stopped with SIGTERM when dropped. Its output goes to
/// `stage.log` in `log_dir`.
pub struct Server {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Server {
    /// Starts `stage ARGS` in `cwd` and waits until it accepts connections on `port`.
    pub fn spawn(args: &[&str], cwd: &Path, port: u16, log_dir: &Path) -> Server {
        let bin = stage_binary();
        let log = log_dir.join("stage.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&bin)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut server = Server { child, port, log };
        server.wait_ready();
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("stage exited early ({status}):\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "stage did not listen on {} within 30s:\n{}",
            self.port,
            self.log()
        );
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Stops the server and asserts it exited 0 within the bound.
    pub fn stop_cleanly(&mut self) {
        let status = self
            .stop()
            .expect("stage did not exit within 10s of SIGTERM");
        assert!(
            status.success(),
            "stage exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Runs `stage-loadtest ARGS` (in `cwd`) and returns its exit status, stdout and stderr.
pub fn run_loadtest(args: &[String], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stage-loadtest"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Asserts a JSON summary shows no error, no failed connect and no disconnect.
pub fn assert_clean(s: &serde_json::Value) {
    assert_eq!(s["errors_total"], 0, "{s:#}");
    assert_eq!(s["connect_failures_total"], 0, "{s:#}");
    assert!(
        s["disconnects"]
            .as_object()
            .unwrap()
            .values()
            .all(|n| n == 0),
        "{s:#}"
    );
}
