//! A nats-server of a benchmark run's own, for the cluster tools (`cluster-rtt`,
//! `cluster-scale`, `cluster-members`): finding the installed binary, starting it on a free
//! loopback port (with its HTTP monitoring port when the tool reads `/varz`), and children
//! that are stopped when the tool lets go of them.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child process sent SIGTERM (so a supervisor stops its own children) and reaped on drop.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// The Debian package's nats-server.
pub fn binary() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("nats-server is not installed (apt install nats-server)")
}

/// A running nats-server: its client port and, when asked for, its monitoring port.
pub struct Server {
    pub port: u16,
    pub monitor: Option<u16>,
    child: Kill,
}

impl Server {
    /// Starts `bin` on 127.0.0.1 and waits (up to 10 s) until it answers.
    pub fn start(bin: &std::path::Path, with_monitor: bool) -> anyhow::Result<Server> {
        let port = crate::free_port()?;
        let monitor = if with_monitor {
            Some(crate::free_port()?)
        } else {
            None
        };
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(m) = monitor {
            cmd.args(["-m", &m.to_string()]);
        }
        let child = Kill(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start nats-server")?,
        );
        let up = Instant::now() + Duration::from_secs(10);
        let ready = || match monitor {
            Some(m) => varz(m).is_ok(),
            None => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        while !ready() {
            if Instant::now() > up {
                bail!("nats-server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Server {
            port,
            monitor,
            child,
        })
    }

    /// The server's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// The NATS server's `/varz` counters on monitoring port `port`: (out_msgs, out_bytes).
pub fn varz(port: u16) -> anyhow::Result<(f64, f64)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let body = text.split("\r\n\r\n").nth(1).context("no body")?;
    let v: serde_json::Value = serde_json::from_str(body)?;
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok((n("out_msgs"), n("out_bytes")))
}
