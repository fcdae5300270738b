//! Test harness for the end-to-end tests: start the real `stage` binary on loopback with a
//! configuration and scripts in a temporary directory, talk to it over real sockets with a
//! small independent BSON encoder/decoder, read its log, and stop it with signals.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Tests that must use the examples' fixed port 8081 take this lock (SO_REUSEPORT would
/// otherwise let two servers share the port and split the connections).
static PORT_8081: Mutex<()> = Mutex::new(());

pub fn lock_8081() -> MutexGuard<'static, ()> {
    PORT_8081.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn stage_bin() -> &'static str {
    env!("CARGO_BIN_EXE_stage")
}

/// The workspace root (the `stage` package sits one level below it): examples and
/// relative paths in test configurations are resolved from there.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("stage/ has a parent")
        .to_path_buf()
}

/// A port that was free a moment ago and that no other test of this binary was given.
///
/// Ports come from below the kernel's ephemeral range (32768 up), so no client connection
/// of a test can be sitting on one, and from a counter, so two tests never get the same
/// port. (Asking the kernel for port 0 could hand the same port to two tests in a row, and
/// SO_REUSEPORT would then let both servers bind it and split each other's connections.)
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static CALLS: AtomicU32 = AtomicU32::new(0);
    // Each test binary starts at its own offset, in case two run at once on the machine.
    let seed = std::process::id() % SPAN;
    loop {
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (seed + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    log: PathBuf,
}

/// A configuration with one Lua stage whose main script is `start.lua` in the work dir.
pub fn config(extra_module_keys: &str) -> String {
    format!(
        r##"{{ "#startup": [["lua.so+stage"]],
             "lua.so": {{ "%package": ["."], "%reflush": 0, "lua.so+stage": "start" {extra_module_keys} }} }}"##
    )
}

impl Server {
    /// Writes `files` into a fresh directory, replaces `PORT` in them with a free port,
    /// starts `stage -c stage.json` there and waits until the port accepts connections.
    pub fn start(config_json: &str, files: &[(&str, &str)]) -> Server {
        Server::start_wrapped(&[], config_json, files)
    }

    /// [`Server::start`] with the binary run through `wrapper` (a program and its first
    /// arguments, e.g. a sandbox loader): `wrapper... stage -c stage.json -s stage.stop`.
    pub fn start_wrapped(wrapper: &[&str], config_json: &str, files: &[(&str, &str)]) -> Server {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stage.json"), config_json).unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text.replace("PORT", &port.to_string())).unwrap();
        }
        // Each server watches its own scale-down file (the default, next to the binary, would
        // be shared by every test).
        let args = ["-c", "stage.json", "-s", "stage.stop"];
        let cwd = dir.path().to_path_buf();
        let mut server = Server::launch_with(wrapper, dir, &cwd, port, &args, None);
        server.wait_port();
        server
    }

    /// Starts the binary with `args` in `dir` (optionally feeding `stdin`), without waiting.
    pub fn spawn(dir: tempfile::TempDir, port: u16, args: &[&str], stdin: Option<&str>) -> Server {
        let cwd = dir.path().to_path_buf();
        Server::launch(dir, &cwd, port, args, stdin)
    }

    /// Runs the binary from the repository root with `args` (for the shipped examples).
    pub fn spawn_in_repo(args: &[&str], port: u16) -> Server {
        let mut server =
            Server::launch(tempfile::tempdir().unwrap(), &repo_root(), port, args, None);
        server.wait_port();
        server
    }

    /// Runs the binary from the repository root with `args`, without waiting for a port
    /// (for examples that listen on none).
    pub fn launch_in_repo(args: &[&str]) -> Server {
        Server::launch(tempfile::tempdir().unwrap(), &repo_root(), 0, args, None)
    }

    /// Starts `stage args` in `cwd`, logging (at debug) into `dir/stage.log`.
    fn launch(
        dir: tempfile::TempDir,
        cwd: &Path,
        port: u16,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Server {
        Server::launch_with(&[], dir, cwd, port, args, stdin)
    }

    /// [`Server::launch`] through `wrapper` (empty: the binary itself).
    fn launch_with(
        wrapper: &[&str],
        dir: tempfile::TempDir,
        cwd: &Path,
        port: u16,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Server {
        let log = dir.path().join("stage.log");
        let mut command = match wrapper.split_first() {
            Some((program, first)) => {
                let mut c = Command::new(program);
                c.args(first).arg(stage_bin());
                c
            }
            None => Command::new(stage_bin()),
        };
        let child = command
            .args(args)
            .current_dir(cwd)
            .env("STAGE_LOG", "debug")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start stage");
        let mut server = Server {
            child: Some(child),
            dir,
            port,
            log,
        };
        if let Some(text) = stdin {
            let mut pipe = server.child.as_mut().unwrap().stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).unwrap();
        }
        server
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits until the server's port accepts connections (panics with the log if the
    /// process exits first or after 20 s).
    pub fn wait_port(&mut self) {
        let port = self.port;
        let child = self.child.as_mut().unwrap();
        let mut exited = None;
        let up = poll(Duration::from_secs(20), || {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(true);
            }
            exited = child.try_wait().unwrap();
            exited.map(|_| false)
        });
        match (up, exited) {
            (Some(true), _) => {}
            (_, Some(status)) => panic!("stage exited early with {status}; log:\n{}", self.log()),
            _ => panic!(
                "stage did not listen on {port} in time; log:\n{}",
                self.log()
            ),
        }
    }

    /// Waits until `port` (another listener of this server) accepts connections.
    pub fn wait_ready_port(&self, port: u16) {
        self.wait_until(&format!("127.0.0.1:{port} accepts connections"), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Polls `cond` every 20 ms until it holds; after [`READY`] panics naming `what`, with
    /// the server's log.
    pub fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        self.wait_for(what, || cond().then_some(()))
    }

    /// Polls `probe` every 20 ms until it returns a value; after [`READY`] panics naming
    /// `what`, with the server's log.
    pub fn wait_for<T>(&self, what: &str, probe: impl FnMut() -> Option<T>) -> T {
        poll(READY, probe).unwrap_or_else(|| {
            panic!(
                "timed out after {} s waiting until {what}; log:\n{}",
                READY.as_secs(),
                self.log()
            )
        })
    }

    /// Sends `request` on a fresh connection, reads the reply's `v`, and repeats until
    /// `ready(&v)` holds (a request/reply round trip that shows, for instance, that a stage
    /// behind the listener has booted, or that a message reached another process); returns
    /// that reply.
    pub fn wait_reply(&self, what: &str, request: &[u8], ready: impl Fn(&Bson) -> bool) -> Bson {
        self.wait_for(what, || {
            let mut stream = try_connect(self.port).ok()?;
            // A probe that goes unanswered is retried, not waited for.
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            stream.write_all(request).ok()?;
            let frame = read_frame(&mut stream).ok()?;
            let v = parse_doc(&frame).get("v").cloned()?;
            ready(&v).then_some(v)
        })
    }

    pub fn connect(&self) -> TcpStream {
        try_connect(self.port).unwrap()
    }

    /// The log as written so far, once it has settled. The server writes its log from a
    /// thread of its own (engine/src/logging.rs), so a line logged before a reply was sent
    /// can reach the file just after the client got the reply: wait until the file has not
    /// grown for a moment (at most half a second) before reading it for good.
    pub fn log(&self) -> String {
        let mut text = self.log_now();
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(50));
            let again = self.log_now();
            if again.len() == text.len() {
                return again;
            }
            text = again;
        }
        text
    }

    /// The log as written this instant (for polling).
    pub fn log_now(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (panics with the log after 10 s).
    pub fn wait_log(&self, needle: &str) {
        self.wait_log_count(needle, 1)
    }

    pub fn wait_log_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log_now().matches(needle).count() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("log never showed {count}x `{needle}`; log:\n{}", self.log());
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("stage did not exit; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long readiness waits poll before they give up (generous: the machine is shared).
pub const READY: Duration = Duration::from_secs(10);

/// Calls `probe` every 20 ms until it returns a value or `timeout` has passed.
pub fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` every 20 ms until it holds; after [`READY`] panics naming `what` (for waits
/// that have no [`Server`] whose log would help).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    if poll(READY, || cond().then_some(())).is_none() {
        panic!("timed out after {} s waiting until {what}", READY.as_secs());
    }
}

/// Waits until a TCP connection to `port` on loopback succeeds.
/// Waits until nothing accepts on `port` any more (a killed node's sockets linger briefly).
pub fn wait_port_refused(port: u16) {
    wait_until(&format!("port {port} to refuse connections"), || {
        try_connect(port).is_err()
    });
}

pub fn wait_port_open(port: u16) {
    wait_until(&format!("127.0.0.1:{port} accepts connections"), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A loopback connection to `port` with a 10 s read timeout and no Nagle delay.
pub fn try_connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// How many CPUs this process may run on (its affinity mask): the server runs one core per
/// CPU of the mask at most.
pub fn affinity_cpus() -> usize {
    // SAFETY: sched_getaffinity fills the zeroed set we own; CPU_COUNT only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        libc::CPU_COUNT(&set).max(1) as usize
    }
}

/// Runs `stage` to completion with `args` in `dir`; returns (exit code, stdout, stderr).
pub fn run_stage(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(stage_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run stage");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// A minimal BSON encoder/decoder, written independently of the engine's codec so the tests
// check the engine against a second reading of the format.

#[derive(Debug, Clone, PartialEq)]
pub enum Bson {
    Double(f64),
    Str(Vec<u8>),
    Doc(Vec<(String, Bson)>),
    Array(Vec<Bson>),
    Binary(u8, Vec<u8>),
    Bool(bool),
    Null,
    Int32(i32),
    Int64(i64),
}

impl Bson {
    pub fn str(s: &str) -> Bson {
        Bson::Str(s.as_bytes().to_vec())
    }

    pub fn get(&self, key: &str) -> Option<&Bson> {
        match self {
            Bson::Doc(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Bson::Str(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Bson::Int32(n) => Some(*n as i64),
            Bson::Int64(n) => Some(*n),
            Bson::Double(d) => Some(*d as i64),
            _ => None,
        }
    }
}

pub fn doc(fields: &[(&str, Bson)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_doc(
        &mut out,
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    );
    out
}

fn write_doc(out: &mut Vec<u8>, fields: Vec<(String, Bson)>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for (key, value) in fields {
        let tag = match &value {
            Bson::Double(_) => 0x01,
            Bson::Str(_) => 0x02,
            Bson::Doc(_) => 0x03,
            Bson::Array(_) => 0x04,
            Bson::Binary(..) => 0x05,
            Bson::Bool(_) => 0x08,
            Bson::Null => 0x0A,
            Bson::Int32(_) => 0x10,
            Bson::Int64(_) => 0x12,
        };
        out.push(tag);
        out.extend_from_slice(key.as_bytes());
        out.push(0);
        match value {
            Bson::Double(d) => out.extend_from_slice(&d.to_le_bytes()),
            Bson::Str(s) => {
                out.extend_from_slice(&((s.len() + 1) as i32).to_le_bytes());
                out.extend_from_slice(&s);
                out.push(0);
            }
            Bson::Doc(f) => write_doc(out, f),
            Bson::Array(items) => write_doc(
                out,
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect(),
            ),
            Bson::Binary(sub, bytes) => {
                out.extend_from_slice(&(bytes.len() as i32).to_le_bytes());
                out.push(sub);
                out.extend_from_slice(&bytes);
            }
            Bson::Bool(b) => out.push(b as u8),
            Bson::Null => {}
            Bson::Int32(n) => out.extend_from_slice(&n.to_le_bytes()),
            Bson::Int64(n) => out.extend_from_slice(&n.to_le_bytes()),
        }
    }
    out.push(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Decodes one whole document (panics on malformed input: the server must not send any).
pub fn parse_doc(bytes: &[u8]) -> Bson {
    let len = i32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len(), "document length");
    let mut fields = Vec::new();
    let mut pos = 4;
    while bytes[pos] != 0 {
        let tag = bytes[pos];
        pos += 1;
        let end = pos + bytes[pos..].iter().position(|&b| b == 0).unwrap();
        let key = String::from_utf8(bytes[pos..end].to_vec()).unwrap();
        pos = end + 1;
        let read_i32 = |p: usize| i32::from_le_bytes(bytes[p..p + 4].try_into().unwrap());
        let value = match tag {
            0x01 => {
                pos += 8;
                Bson::Double(f64::from_le_bytes(bytes[pos - 8..pos].try_into().unwrap()))
            }
            0x02 => {
                let n = read_i32(pos) as usize;
                pos += 4 + n;
                Bson::Str(bytes[pos - n..pos - 1].to_vec())
            }
            0x03 | 0x04 => {
                let n = read_i32(pos) as usize;
                let inner = parse_doc(&bytes[pos..pos + n]);
                pos += n;
                match (tag, inner) {
                    (0x04, Bson::Doc(f)) => Bson::Array(f.into_iter().map(|(_, v)| v).collect()),
                    (_, inner) => inner,
                }
            }
            0x05 => {
                let n = read_i32(pos) as usize;
                let sub = bytes[pos + 4];
                pos += 5 + n;
                Bson::Binary(sub, bytes[pos - n..pos].to_vec())
            }
            0x08 => {
                pos += 1;
                Bson::Bool(bytes[pos - 1] != 0)
            }
            0x0A => Bson::Null,
            0x10 => {
                pos += 4;
                Bson::Int32(read_i32(pos - 4))
            }
            0x12 | 0x09 => {
                pos += 8;
                Bson::Int64(i64::from_le_bytes(bytes[pos - 8..pos].try_into().unwrap()))
            }
            other => panic!("unexpected BSON type {other:#x}"),
        };
        fields.push((key, value));
    }
    Bson::Doc(fields)
}

/// Reads one length-prefixed frame.
pub fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let len = u32::from_le_bytes(header) as usize;
    let mut frame = header.to_vec();
    frame.resize(len, 0);
    stream.read_exact(&mut frame[4..])?;
    Ok(frame)
}

/// Reads one frame and returns the value under `v` (what `socket.commit(table)` sends).
pub fn read_reply(stream: &mut TcpStream) -> Bson {
    let frame = read_frame(stream).expect("reply frame");
    let doc = parse_doc(&frame);
    doc.get("v")
        .cloned()
        .unwrap_or_else(|| panic!("reply without `v`: {doc:?}"))
}

/// Reads until the server closes the connection (EOF or reset): `Some(every byte that
/// arrived before)`, or `None` when the read timeout passed with the connection still open.
pub fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// True when the server closed the connection (EOF or reset) within the read timeout.
pub fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

pub fn message(name: &str, extra: &[(&str, Bson)]) -> Vec<u8> {
    let mut fields = vec![("message".to_string(), Bson::str(name))];
    fields.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    doc(&[("v", Bson::Doc(fields))])
}

/// Whether SQLite's ODBC driver is registered (`[SQLite3]` in odbcinst.ini). When it is not,
/// prints one line saying the test is skipped and what to install — or fails the test under
/// `STAGE_REQUIRE_SERVICES=1` (CI installs it, so a skip there would hide a broken setup).
pub fn sqlite_odbc_or_skip(test: &str) -> bool {
    let dir = std::env::var("ODBCSYSINI").unwrap_or_else(|_| "/etc".into());
    let ini = std::fs::read_to_string(Path::new(&dir).join("odbcinst.ini"));
    if ini.is_ok_and(|text| text.lines().any(|l| l.trim() == "[SQLite3]")) {
        return true;
    }
    if std::env::var("STAGE_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{test}: SQLite's ODBC driver is not installed (STAGE_REQUIRE_SERVICES=1)");
    }
    println!("skipped {test}: SQLite's ODBC driver is not installed (apt install libsqliteodbc)");
    false
}
