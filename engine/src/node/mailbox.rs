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
        self.bell.queued.fetch_add(1, Ordering::Relaxed);
        if !self.bell.rung.swap(true, Ordering::AcqRel) {
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
    pub async fn run(mut self, mut handle: impl FnMut(T)) {
        let reader = self.reader.take().expect("inbox runs once");
        // SAFETY: the fd comes from a live std socket whose ownership we give up here.
        let mut reader = unsafe { glommio::net::UnixStream::from_raw_fd(reader.into_raw_fd()) };
        let mut scratch = [0u8; 64];
        loop {
            self.bell.rung.store(false, Ordering::SeqCst);
            loop {
                match self.queue.try_recv() {
                    Ok(msg) => {
                        self.bell.queued.fetch_sub(1, Ordering::Relaxed);
                        handle(msg);
                        // A long backlog must not starve the core's other tasks.
                        glommio::yield_if_needed().await;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            match reader.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}
