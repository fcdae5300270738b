//! Node-wide ordered locks for a multi-process node (spec/stage.md §10.5: the scope of a lock
//! is "the router of this node"). The supervisor plays the router: it binds `DIR/0.sock`
//! before starting any child and runs one thread holding the node's [`LockTable`]. A child's
//! `>L.cb`, `>>L.ms` and `<L.*` become datagrams to it; a grant goes back to the requesting
//! process as a `G` datagram carrying the request's payload, which that process delivers to
//! its stage like a local grant. Leases are kept here, so a holder that dies or forgets
//! loses the lock after 100 ms and the next waiter gets it. A single-process node keeps its
//! locks in the process (`Node::locks`) and never uses this.
//!
//! Datagram (child → supervisor): `K`, op (`>` acquire, `+` extend, `<` release), key length
//! (u16 LE), key, then for acquire the requesting process (u32 LE) and the payload, for
//! extend the milliseconds (u32 LE).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::locks::{Grant, LockTable};

/// The lock service's number among the node's sockets (`DIR/0.sock`; `process.stage` 0 is
/// the router in the original).
pub const ROUTER: u32 = 0;
const LOCK: u8 = b'K';
/// The grant datagram (supervisor → child): `G` then the request's payload.
pub const GRANT: u8 = b'G';

/// A lock operation as it travels to the supervisor.
#[derive(Debug, PartialEq, Eq)]
pub enum LockOp<'a> {
    Acquire {
        key: &'a str,
        from: u32,
        payload: &'a [u8],
    },
    Extend {
        key: &'a str,
        ms: u32,
    },
    Release {
        key: &'a str,
    },
}

pub fn encode(op: &LockOp) -> Option<Vec<u8>> {
    let (tag, key) = match op {
        LockOp::Acquire { key, .. } => (b'>', key),
        LockOp::Extend { key, .. } => (b'+', key),
        LockOp::Release { key } => (b'<', key),
    };
    let len = u16::try_from(key.len()).ok()?;
    let mut out = vec![LOCK, tag];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    match op {
        LockOp::Acquire { from, payload, .. } => {
            out.extend_from_slice(&from.to_le_bytes());
            out.extend_from_slice(payload);
        }
        LockOp::Extend { ms, .. } => out.extend_from_slice(&ms.to_le_bytes()),
        LockOp::Release { .. } => {}
    }
    Some(out)
}

pub fn decode(frame: &[u8]) -> Option<LockOp<'_>> {
    if *frame.first()? != LOCK {
        return None;
    }
    let tag = *frame.get(1)?;
    let len = u16::from_le_bytes(frame.get(2..4)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(frame.get(4..4 + len)?).ok()?;
    let rest = &frame[4 + len..];
    let u32_at = |b: &[u8]| Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?));
    match tag {
        b'>' => Some(LockOp::Acquire {
            key,
            from: u32_at(rest)?,
            payload: &rest[4..],
        }),
        b'+' => Some(LockOp::Extend {
            key,
            ms: u32_at(rest)?,
        }),
        b'<' => Some(LockOp::Release { key }),
        _ => None,
    }
}

/// Binds `DIR/0.sock` and starts the lock thread (the supervisor, before any child).
pub fn start(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!("{ROUTER}.sock"));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path)?;
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("stage-locks".into())
        .spawn(move || serve(socket, dir))?;
    Ok(())
}

/// The stored form of a request: the requesting process, then its payload.
fn stored(from: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = from.to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

struct Service {
    table: LockTable,
    /// Lease checks by due time: (when, key, generation).
    checks: BinaryHeap<Reverse<(Instant, String, u64)>>,
    socket: UnixDatagram,
    dir: PathBuf,
}

impl Service {
    fn handle(&mut self, op: LockOp) {
        match op {
            LockOp::Acquire { key, from, payload } => {
                let grant = self.table.acquire(key, stored(from, payload));
                self.granted(key, grant);
            }
            LockOp::Extend { key, ms } => {
                if let Some((generation, left)) =
                    self.table.extend(key, Duration::from_millis(ms.into()))
                {
                    self.checks.push(Reverse((
                        Instant::now() + left,
                        key.to_string(),
                        generation,
                    )));
                }
            }
            LockOp::Release { key } => {
                let grant = self.table.release(key);
                self.granted(key, grant);
            }
        }
    }

    /// Sends a grant to its process and schedules its lease check.
    fn granted(&mut self, key: &str, grant: Option<Grant>) {
        let Some(g) = grant else { return };
        self.checks.push(Reverse((
            Instant::now() + g.lease,
            key.to_string(),
            g.generation,
        )));
        let Some((from, payload)) = g.payload.split_first_chunk::<4>() else {
            return;
        };
        let from = u32::from_le_bytes(*from);
        let mut frame = vec![GRANT];
        frame.extend_from_slice(payload);
        let path = self.dir.join(format!("{from}.sock"));
        if let Err(err) = self.socket.send_to(&frame, &path) {
            // A process that is gone loses its turn when the lease runs out.
            tracing::debug!(lock = key, "lock grant to process {from} not sent: {err}");
        }
    }

    /// Runs the lease checks that are due; returns how long until the next one.
    fn run_checks(&mut self) -> Duration {
        loop {
            let Some(Reverse((at, _, _))) = self.checks.peek() else {
                return Duration::from_secs(1);
            };
            let now = Instant::now();
            if *at > now {
                return *at - now;
            }
            let Some(Reverse((_, key, generation))) = self.checks.pop() else {
                continue;
            };
            match self.table.check(&key, generation) {
                Ok(grant) => self.granted(&key, grant),
                Err(left) => self.checks.push(Reverse((now + left, key, generation))),
            }
        }
    }
}

fn serve(socket: UnixDatagram, dir: PathBuf) {
    let mut service = Service {
        table: LockTable::default(),
        checks: BinaryHeap::new(),
        socket,
        dir,
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let wait = service.run_checks().max(Duration::from_millis(1));
        let _ = service.socket.set_read_timeout(Some(wait));
        match service.socket.recv(&mut buf) {
            Ok(n) => match decode(&buf[..n]) {
                Some(op) => service.handle(op),
                None => tracing::debug!("lock service: malformed datagram ({n} bytes) dropped"),
            },
            Err(err) if super::peers::just_a_timeout(&err) => {}
            Err(err) => {
                tracing::warn!("lock service: receive failed: {err}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip() {
        for op in [
            LockOp::Acquire {
                key: "game>L",
                from: 3,
                payload: b"\x05\0\0\0\0",
            },
            LockOp::Extend {
                key: "game>L",
                ms: 250,
            },
            LockOp::Release { key: "game>L" },
        ] {
            assert_eq!(decode(&encode(&op).unwrap()), Some(op));
        }
        assert_eq!(decode(b"K>\x09\0short"), None, "truncated key");
        assert_eq!(decode(b"H..."), None);
    }

    #[test]
    fn grants_go_to_the_requesting_process_in_order() {
        let dir = tempfile::tempdir().unwrap();
        start(dir.path()).unwrap();
        let p1 = UnixDatagram::bind(dir.path().join("1.sock")).unwrap();
        let p2 = UnixDatagram::bind(dir.path().join("2.sock")).unwrap();
        for p in [&p1, &p2] {
            p.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let router = dir.path().join("0.sock");
        let send = |op: LockOp| {
            p1.send_to(&encode(&op).unwrap(), &router).unwrap();
        };
        send(LockOp::Acquire {
            key: "s>L",
            from: 1,
            payload: b"first",
        });
        send(LockOp::Acquire {
            key: "s>L",
            from: 2,
            payload: b"second",
        });
        let mut buf = [0u8; 64];
        let n = p1.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"Gfirst");
        // Process 2 waits until process 1 releases...
        p2.set_read_timeout(Some(Duration::from_millis(30)))
            .unwrap();
        assert!(p2.recv(&mut buf).is_err());
        send(LockOp::Release { key: "s>L" });
        p2.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = p2.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"Gsecond");
        // ...and a holder that neither extends nor releases loses it after its lease.
        send(LockOp::Acquire {
            key: "s>L",
            from: 1,
            payload: b"third",
        });
        let n = p1.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"Gthird");
    }
}
