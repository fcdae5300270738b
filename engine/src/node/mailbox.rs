//! A core's inbox: a bounded multi-producer queue plus a doorbell. Any thread (another core,
//! the signal thread, later the blocking pool) pushes owned messages; the owning core sleeps
//! in its glommio reactor on the doorbell socket and drains the queue when it rings.
//!
//! The doorbell is rung only when it is not already ringing (an atomic flag), so a burst of
//! messages costs one write(2). The receiver clears the flag *before* draining, so a message
//! pushed while it drains either is seen by that drain or rings the bell again.
//!
//! A long backlog is drained in slices: the drain yields whenever glommio says the task has
//! had its turn, so the core's timers, connections and watchdog beat still run while
//! thousands of queued messages are handled. A counter of queued messages lets the node see
//! a backlog that keeps growing (overload, `peers`).

use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;

/// Sending half; cheap to clone, usable from any thread.
pub struct Mailbox<T> {
    queue: SyncSender<T>,
    bell: Arc<Doorbell>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Mailbox {
            queue: self.queue.clone(),
            bell: self.bell.clone(),
        }
    }
}

struct Doorbell {
    rung: AtomicBool,
    writer: StdUnixStream,
    /// Messages pushed and not yet handed to the core.
    queued: AtomicUsize,
}

/// Receiving half, owned by one core.
pub struct Inbox<T> {
    queue: Receiver<T>,
    bell: Arc<Doorbell>,
    reader: Option<StdUnixStream>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("core inbox is full ({0} messages queued); the receiving core is overloaded")]
    Full(usize),
    #[error("core inbox is closed (the core has stopped)")]
    Closed,
}

/// Creates an inbox holding at most `capacity` undelivered messages.
pub fn channel<T>(capacity: usize) -> std::io::Result<(Mailbox<T>, Inbox<T>)> {
    let (writer, reader) = StdUnixStream::pair()?;
    // A full doorbell socket means the bell is already ringing: never block the sender.
    writer.set_nonblocking(true)?;
    reader.set_nonblocking(true)?;
    let (tx, rx) = sync_channel(capacity);
    let bell = Arc::new(Doorbell {
        rung: AtomicBool::new(false),
        writer,
        queued: AtomicUsize::new(0),
    });
    Ok((
        Mailbox {
            queue: tx,
            bell: bell.clone(),
        },
        Inbox {
            queue: rx,
            bell,
            reader: Some(reader),
        },
    ))
}

impl<T> Mailbox<T> {
    pub fn send(&self, msg: T, capacity_hint: usize) -> Result<(), SendError> {
        match self.queue.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(SendError::Full(capacity_hint)),
            Err(TrySendError::Disconnected(_)) => return Err(SendError::Closed),
        }
        // SeqCst on both (free on x86: both are locked instructions): against a spinning
        // core's "clear the mark, then look at the count" (`run_spinning`), a message is
        // either counted before that look or finds the mark cleared and rings.
        self.bell.queued.fetch_add(1, Ordering::SeqCst);
        if !self.bell.rung.swap(true, Ordering::SeqCst) {
            // EAGAIN means unread bytes are already waiting: the core will wake anyway.
            let _ = (&self.bell.writer).write(&[1]);
        }
        Ok(())
    }

    /// Messages waiting for the core (approximate while others push).
    pub fn queued(&self) -> usize {
        self.bell.queued.load(Ordering::Relaxed)
    }
}

impl<T> Inbox<T> {
    /// The next queued message, if any, without an executor (tests that play a core).
    #[cfg(test)]
    pub(crate) fn try_take(&self) -> Option<T> {
        let msg = self.queue.try_recv().ok()?;
        self.bell.queued.fetch_sub(1, Ordering::Relaxed);
        Some(msg)
    }

    /// Waits until the doorbell rings, then hands every queued message to `handle`.
    /// Returns when the last `Mailbox` is gone. Must run inside the core's executor.
    pub async fn run(self, handle: impl FnMut(T)) {
        self.run_spinning(Duration::ZERO, handle).await
    }

    /// [`Inbox::run`], but after draining the queue it keeps looking at it for `spin` before
    /// it waits for the doorbell (`%spin`). Meanwhile the bell stays marked as rung, so senders
    /// skip the doorbell write, and the core sees their message at its next look instead of
    /// through a socket read completing in io_uring (about 20 µs per hop on this project's
    /// machine, BENCHMARKS.md "Wake-ups"). The spin yields between looks, so the core's
    /// connections, timers and other tasks run as usual; it costs the CPU time of the spin
    /// after each burst of messages and nothing on a core that has been idle longer.
    pub async fn run_spinning(mut self, spin: Duration, mut handle: impl FnMut(T)) {
        let reader = self.reader.take().expect("inbox runs once");
        // SAFETY: the fd comes from a live std socket whose ownership we give up here.
        let mut reader = unsafe { glommio::net::UnixStream::from_raw_fd(reader.into_raw_fd()) };
        let mut scratch = [0u8; 64];
        loop {
            self.bell.rung.store(false, Ordering::SeqCst);
            loop {
                if !self.drain(&mut handle).await {
                    return;
                }
                if spin.is_zero() || !self.spin_for_more(spin).await {
                    break;
                }
            }
            // The bell was marked rung while spinning: a message pushed then wrote nothing.
            // Clear the mark first, then look once more, so a message is either seen here or
            // rings the bell (the same order as the top of the loop).
            self.bell.rung.store(false, Ordering::SeqCst);
            if self.bell.queued.load(Ordering::SeqCst) > 0 {
                continue;
            }
            match reader.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Hands every queued message to `handle`; false when every `Mailbox` is gone.
    async fn drain(&mut self, handle: &mut impl FnMut(T)) -> bool {
        loop {
            match self.queue.try_recv() {
                Ok(msg) => {
                    self.bell.queued.fetch_sub(1, Ordering::Relaxed);
                    handle(msg);
                    // A long backlog must not starve the core's other tasks.
                    glommio::yield_if_needed().await;
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Marks the bell rung and looks at the queue, yielding between looks, until a message
    /// is there (true) or `spin` has passed (false).
    async fn spin_for_more(&self, spin: Duration) -> bool {
        self.bell.rung.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while start.elapsed() < spin {
            if self.bell.queued.load(Ordering::SeqCst) > 0 {
                return true;
            }
            futures_lite::future::yield_now().await;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testing::run_local;

    /// A spinning inbox sees what is sent while it spins without a doorbell write, and once
    /// the spin is over a message still wakes it through the doorbell: nothing is lost, in
    /// either phase, from another thread.
    #[test]
    fn a_spinning_inbox_loses_no_message_during_or_after_the_spin() {
        let got = run_local(|| async {
            let (tx, inbox) = channel::<u32>(64).unwrap();
            let bell = inbox.bell.clone();
            let (seen_tx, seen_rx) = glommio::channels::local_channel::new_unbounded::<u32>();
            glommio::spawn_local(inbox.run_spinning(Duration::from_millis(50), move |n| {
                let _ = seen_tx.try_send(n);
            }))
            .detach();
            let mut got = Vec::new();
            // 1: rings the doorbell (the inbox waits for it at first).
            tx.send(1, 64).unwrap();
            got.push(seen_rx.recv().await.unwrap());
            // 2: sent from another thread while the inbox spins: the bell stays marked rung.
            let sender = tx.clone();
            std::thread::spawn(move || sender.send(2, 64).unwrap())
                .join()
                .unwrap();
            got.push(seen_rx.recv().await.unwrap());
            assert!(
                bell.rung.load(Ordering::SeqCst),
                "the bell is marked rung while the inbox spins"
            );
            // 3: after the spin has ended (50 ms), through the doorbell again.
            glommio::timer::sleep(Duration::from_millis(120)).await;
            assert!(!bell.rung.load(Ordering::SeqCst), "the spin has ended");
            let sender = tx.clone();
            std::thread::spawn(move || sender.send(3, 64).unwrap())
                .join()
                .unwrap();
            got.push(seen_rx.recv().await.unwrap());
            got
        });
        assert_eq!(got, [1, 2, 3]);
    }

    #[test]
    fn without_a_spin_the_inbox_waits_for_the_doorbell_at_once() {
        let got = run_local(|| async {
            let (tx, inbox) = channel::<u32>(64).unwrap();
            let bell = inbox.bell.clone();
            let (seen_tx, seen_rx) = glommio::channels::local_channel::new_unbounded::<u32>();
            glommio::spawn_local(inbox.run(move |n| {
                let _ = seen_tx.try_send(n);
            }))
            .detach();
            tx.send(7, 64).unwrap();
            let first = seen_rx.recv().await.unwrap();
            glommio::timer::sleep(Duration::from_millis(5)).await;
            assert!(
                !bell.rung.load(Ordering::SeqCst),
                "no spin: the bell is clear"
            );
            tx.send(8, 64).unwrap();
            [first, seen_rx.recv().await.unwrap()]
        });
        assert_eq!(got, [7, 8]);
    }
}
