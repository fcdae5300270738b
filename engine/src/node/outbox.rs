//! Datagrams to other processes that could not be sent at once. A Unix datagram socket
//! queues only a few unread datagrams (`net.unix.max_dgram_qlen`, 10 by default) before a
//! non-blocking sender gets EAGAIN, so a burst of messages to one process would lose most
//! of them. Instead of blocking the core, such a datagram is queued here and a thread of its
//! own sends it with a blocking socket (bounded by a send timeout). Once a process has
//! datagrams queued, later ones to it queue behind them, so messages from one sender to one
//! process keep their order. The queue is bounded in bytes: past that, the send fails as
//! before (EAGAIN) and the message counts as unrouted. A receiver that takes nothing for
//! [`SEND_TIMEOUT`] (a stopped process) loses what is queued for it, not the others.

use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

/// The most bytes waiting in the outbox before senders get EAGAIN.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;

/// How long the outbox thread waits for a busy receiver before it drops a datagram.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);

struct Queued {
    n: u32,
    path: PathBuf,
    frame: Vec<u8>,
}

pub struct Outbox {
    tx: Mutex<Sender<Queued>>,
    rx: Mutex<Option<Receiver<Queued>>>,
    /// Datagrams queued per destination process.
    pending: Mutex<HashMap<u32, usize>>,
    bytes: AtomicUsize,
}

impl Default for Outbox {
    fn default() -> Self {
        let (tx, rx) = channel();
        Outbox {
            tx: Mutex::new(tx),
            rx: Mutex::new(Some(rx)),
            pending: Mutex::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
        }
    }
}

fn would_block() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::WouldBlock)
}

impl Outbox {
    /// True while datagrams to process `n` wait here (new ones must queue behind them).
    pub fn is_pending(&self, n: u32) -> bool {
        self.pending.lock().unwrap().get(&n).is_some_and(|c| *c > 0)
    }

    /// Queues a datagram for process `n` at `path`; EAGAIN when the outbox is full.
    pub fn push(&self, n: u32, path: PathBuf, frame: &[u8]) -> std::io::Result<()> {
        let len = frame.len();
        if self.bytes.fetch_add(len, Ordering::AcqRel) + len > MAX_QUEUED_BYTES {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(would_block());
        }
        *self.pending.lock().unwrap().entry(n).or_insert(0) += 1;
        let queued = Queued {
            n,
            path,
            frame: frame.to_vec(),
        };
        if self.tx.lock().unwrap().send(queued).is_err() {
            self.done(n, len);
            return Err(would_block());
        }
        Ok(())
    }

    fn done(&self, n: u32, len: usize) {
        self.bytes.fetch_sub(len, Ordering::AcqRel);
        if let Some(c) = self.pending.lock().unwrap().get_mut(&n) {
            *c = c.saturating_sub(1);
        }
    }

    /// The outbox thread: sends what is queued until `stopped()` says so. `dropped` is told
    /// about every datagram that could not be delivered.
    pub fn run(&self, stopped: impl Fn() -> bool, dropped: impl Fn(u32, &std::io::Error)) {
        let Some(rx) = self.rx.lock().unwrap().take() else {
            return;
        };
        let socket = match UnixDatagram::unbound().and_then(|s| {
            s.set_write_timeout(Some(SEND_TIMEOUT))?;
            Ok(s)
        }) {
            Ok(socket) => socket,
            Err(err) => {
                tracing::error!("cannot open the outbox socket: {err}");
                return;
            }
        };
        // Processes whose receiver did not take a datagram within the timeout: what is
        // queued for them is dropped at once, so they do not hold up everybody else.
        let mut stalled = HashSet::new();
        while !stopped() {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(q) => {
                    let result = if stalled.contains(&q.n) {
                        Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
                    } else {
                        socket.send_to(&q.frame, &q.path).map(drop)
                    };
                    if let Err(err) = result {
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) {
                            stalled.insert(q.n);
                        }
                        dropped(q.n, &err);
                    }
                    self.done(q.n, q.frame.len());
                    if !self.is_pending(q.n) {
                        stalled.remove(&q.n);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_datagrams_are_sent_in_order_once_the_receiver_reads() {
        let dir = tempfile_dir();
        let path = dir.join("r.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let outbox = std::sync::Arc::new(Outbox::default());
        for i in 0..50u8 {
            outbox.push(7, path.clone(), &[i]).unwrap();
        }
        assert!(outbox.is_pending(7));
        assert!(!outbox.is_pending(8));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (outbox, stop) = (outbox.clone(), stop.clone());
            std::thread::spawn(move || outbox.run(|| stop.load(Ordering::Relaxed), |_, _| {}))
        };
        let mut buf = [0u8; 8];
        for i in 0..50u8 {
            assert_eq!(receiver.recv(&mut buf).unwrap(), 1);
            assert_eq!(buf[0], i);
        }
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        assert!(!outbox.is_pending(7));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_full_outbox_refuses() {
        let outbox = Outbox::default();
        let big = vec![0u8; MAX_QUEUED_BYTES / 2 + 1];
        outbox.push(1, PathBuf::from("/nonexistent"), &big).unwrap();
        let err = outbox
            .push(1, PathBuf::from("/nonexistent"), &big)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "stage-outbox-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
