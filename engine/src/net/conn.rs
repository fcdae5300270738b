//! One TCP connection owned by one core: its output buffer, its options (idle `expire`, flush
//! interval `commit`, the listener's frame `deadline`), and the task that reads, cuts frames,
//! hands them to Lua and flushes.
//!
//! The read buffer is filled straight from the socket, frames are cut out of it without a
//! copy, and replies are encoded by the natives straight into `out`. Output is written when
//! the task has no more input to process (one write per batch of frames), or earlier when it
//! passes half of `OUT`. The write swaps `out` with a spare buffer so scripts may keep
//! committing while the write is in flight, and neither buffer is reallocated in steady state.
//!
//! An idle connection costs what its task and objects hold while it waits (BENCHMARKS.md
//! "Memory per idle connection"), so the waiting state is kept small: a connection that has
//! sent nothing holds no read buffer (a read that starts on an empty input lands in the
//! core's [`SCRATCH`]), and the futures of rarer states (a write the peer is behind on, the
//! last flush) are boxed rather than sized into every connection's task.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;

use super::addr_cell::AddrCell;
use super::admission::Ticket;
use super::due::{self, Step};
use super::id::ConnId;
use super::ratelog::RateLog;
use super::stats::IoStats;
use super::ConnEvents;
use crate::codec::crypto::{self, Crypto};
use crate::codec::framing::{FrameError, FrameSpec, Framing};

/// The most a single read asks the kernel for; bounds the bytes zeroed before each read.
const READ_CHUNK: usize = 16 * 1024;
/// The first read window: small, so an idle connection costs little memory; it doubles
/// (up to `READ_CHUNK`, never past `IN`) while reads keep filling it, and a frame whose
/// header is known gets room for all of it at once.
const FIRST_WINDOW: usize = 512;

thread_local! {
    /// This core's landing buffer for a read that starts on an empty input (no partial frame
    /// pending): only the bytes read are copied into the connection's own buffer, so a
    /// connection that has sent nothing holds no read buffer at all. The copy of the bytes
    /// read replaces the zeroing of the whole read window that a read straight into the
    /// connection's buffer needs, so it costs the packet path nothing. glommio's
    /// `poll_read` uses the buffer only during the call (a plain `recv`; a read that would
    /// block waits for readiness, not into the buffer), so one buffer serves every
    /// connection of the core.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// A msec setting that may be off, in four bytes instead of an `Option<u64>`'s sixteen: it
/// sits in every connection (issue #15 item 5). Values saturate at `u32::MAX - 1` msec
/// (49 days), which no idle timeout or frame deadline needs to pass.
pub struct MsecCell(Cell<u32>);

impl MsecCell {
    const OFF: u32 = u32::MAX;

    /// A cell that is off.
    pub fn never() -> MsecCell {
        MsecCell(Cell::new(Self::OFF))
    }

    pub fn get(&self) -> Option<u64> {
        let ms = self.0.get();
        (ms != Self::OFF).then_some(ms as u64)
    }

    pub fn set(&self, ms: Option<u64>) {
        self.0
            .set(ms.map_or(Self::OFF, |ms| ms.min(Self::OFF as u64 - 1) as u32));
    }

    /// As a duration, for the deadline arithmetic.
    pub fn duration(&self) -> Option<Duration> {
        self.get().map(Duration::from_millis)
    }
}

/// An errno that may not be set yet, in four bytes instead of an `Option<i32>`'s eight (the
/// same reason as [`MsecCell`]); errno values are never negative.
pub(super) struct ErrnoCell(Cell<i32>);

impl ErrnoCell {
    const NONE: i32 = i32::MIN;

    pub(super) fn get(&self) -> Option<i32> {
        let errno = self.0.get();
        (errno != Self::NONE).then_some(errno)
    }

    pub(super) fn set(&self, errno: Option<i32>) {
        self.0.set(errno.unwrap_or(Self::NONE));
    }
}

pub struct Conn {
    pub id: ConnId,
    pub spec: FrameSpec,
    pub peer: AddrCell,
    pub local: AddrCell,
    /// Idle timeout in msec; `None` = never.
    pub expire_ms: MsecCell,
    /// Minimum msec between flushes; 0 = flush as soon as the task gets to it.
    pub commit_ms: Cell<u32>,
    /// The last socket error seen (for `socket.errno`).
    pub errno: Cell<i32>,
    /// How long a frame whose first byte arrived may take to be complete (the listener's
    /// `deadline`); `None` = no limit. Unlike `expire` it does not restart on every byte,
    /// so a peer that dribbles a frame byte by byte is caught too.
    pub frame_deadline: MsecCell,
    // The fields below that hold an object are `Cell`s taken and put back, not `RefCell`s:
    // each borrow flag would be 8 more bytes in every idle connection (issue #15 item 5).
    /// This connection's places at its listener's gate (accepted connections only).
    ticket: Cell<Option<Ticket>>,
    /// `socket.crypto`: the key that opens encrypted frames and seals committed tables.
    crypto: Cell<Option<Arc<Crypto>>>,
    // The connection task's side (this module and `ws`, the WebSocket task).
    pub(super) out: RefCell<BytesMut>,
    pub(super) close_requested: ErrnoCell,
    pub(super) flush_forced: Cell<bool>,
    pub(super) signalled: Cell<bool>,
    pub(super) waker: Cell<Option<Waker>>,
    /// Where this connection's traffic is counted (its listener's counters on this core),
    /// set once when it is accepted or joined; plain cells, core-local.
    stats: std::cell::OnceCell<Rc<IoStats>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(
        "message of {len} bytes exceeds the output buffer of {limit} bytes (raise OUT in the URL)"
    )]
    TooLarge { len: usize, limit: usize },
    #[error("unsent output passed the output buffer of {limit} bytes: the peer is not reading, connection closed")]
    SlowConsumer { limit: usize },
    #[error("the connection is closing")]
    Closing,
    #[error("output buffer is in use (commit called from inside an encoder)")]
    Busy,
    #[error("cannot encrypt the message: {0}")]
    Seal(#[from] crypto::CryptoError),
}

/// Refused commits of the whole process: a slow reader that was closed with ENOBUFS is
/// committed to by every broadcast until its close callback runs, so one line per refusal
/// would flood the log.
pub static COMMITS_REFUSED: RateLog = RateLog::new();

/// Logs a refused commit (the script got -1), at most one line per second for the process,
/// with the count since the last line and the latest reason.
pub fn log_refused_commit(socket: u64, err: &OutputError) {
    if let Some(n) = COMMITS_REFUSED.hit() {
        tracing::warn!(
            socket,
            "{n} commit(s) refused since the last line; latest: {err}"
        );
    }
}

impl Conn {
    pub fn new(id: ConnId, spec: FrameSpec) -> Rc<Conn> {
        Rc::new(Conn {
            id,
            spec,
            peer: AddrCell::default(),
            local: AddrCell::default(),
            expire_ms: MsecCell::never(),
            commit_ms: Cell::new(0),
            errno: Cell::new(0),
            frame_deadline: MsecCell::never(),
            ticket: Cell::new(None),
            crypto: Cell::new(None),
            out: RefCell::new(BytesMut::new()),
            close_requested: ErrnoCell(Cell::new(ErrnoCell::NONE)),
            flush_forced: Cell::new(false),
            signalled: Cell::new(false),
            waker: Cell::new(None),
            stats: std::cell::OnceCell::new(),
        })
    }

    /// Counts this connection (accepted or joined) in `stats`, and its traffic from now on.
    pub fn count_in(&self, stats: Rc<IoStats>) {
        IoStats::add(&stats.accepted, 1);
        let _ = self.stats.set(stats);
    }

    /// The accept callback refused the connection: it ends without being served.
    pub fn count_refused(&self) {
        self.count(|s| IoStats::add(&s.closed, 1));
    }

    /// Runs `f` on this connection's counters, if it has any.
    #[inline]
    fn count(&self, f: impl FnOnce(&IoStats)) {
        if let Some(stats) = self.stats.get() {
            f(stats);
        }
    }

    /// Holds `ticket` (the listener's places) until the connection ends.
    pub fn admit(&self, ticket: Ticket) {
        self.ticket.set(Some(ticket));
    }

    /// Gives the listener's places back (the connection ended or was refused).
    pub fn release(&self) {
        drop(self.ticket.take());
    }

    /// Tells the listener's gate that this connection missed its frame deadline.
    pub(super) fn count_frame_timeout(&self) {
        let ticket = self.ticket.take();
        if let Some(ticket) = &ticket {
            ticket.gate().frame_timed_out();
        }
        self.ticket.set(ticket);
    }

    /// Lets `encode` append one message to the output buffer, then enforces `OUT`.
    /// Returns the number of bytes the message took.
    pub fn encode_with<E>(
        &self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<Result<usize, OutputError>, E> {
        if self.close_requested.get().is_some() {
            return Ok(Err(OutputError::Closing));
        }
        let Ok(mut out) = self.out.try_borrow_mut() else {
            return Ok(Err(OutputError::Busy));
        };
        let before = out.len();
        if let Err(err) = encode(&mut out) {
            out.truncate(before);
            return Err(err);
        }
        let len = out.len() - before;
        let limit = self.spec.output;
        if len > limit {
            out.truncate(before);
            return Ok(Err(OutputError::TooLarge { len, limit }));
        }
        if out.len() > limit {
            drop(out);
            self.count(|s| IoStats::add(&s.overflow_closes, 1));
            self.request_close(libc::ENOBUFS);
            return Ok(Err(OutputError::SlowConsumer { limit }));
        }
        drop(out);
        self.count(|s| IoStats::add(&s.frames_out, 1));
        self.signal();
        Ok(Ok(len))
    }

    /// The key committed tables are sealed with, when `socket.crypto` is set.
    pub fn crypto(&self) -> Option<Arc<Crypto>> {
        let key = self.crypto.take();
        self.crypto.set(key.clone());
        key
    }

    /// Sets (or, with `None`, clears) `socket.crypto`.
    pub fn set_crypto(&self, key: Option<Arc<Crypto>>) {
        self.crypto.set(key);
    }

    /// Whether `socket.crypto` is set: the FFI reply path steps aside when it is.
    pub fn encrypts(&self) -> bool {
        let key = self.crypto.take();
        let set = key.is_some();
        self.crypto.set(key);
        set
    }

    /// Room for at least `want` more output bytes, for an encoder that writes in place
    /// (the FFI path). Nothing counts until [`Conn::advance`]. `None` while closing.
    pub fn reserve_raw(&self, want: usize) -> Option<(*mut u8, usize)> {
        if self.close_requested.get().is_some() {
            return None;
        }
        let mut out = self.out.try_borrow_mut().ok()?;
        out.reserve(want);
        let spare = out.spare_capacity_mut();
        Some((spare.as_mut_ptr().cast::<u8>(), spare.len()))
    }

    /// Counts `used` bytes written after a [`Conn::reserve_raw`] as one message, with the same
    /// `OUT` rules as [`Conn::encode_with`].
    pub fn advance(&self, used: usize) -> Result<usize, OutputError> {
        let Ok(mut out) = self.out.try_borrow_mut() else {
            return Err(OutputError::Busy);
        };
        if used > out.capacity() - out.len() {
            return Err(OutputError::TooLarge {
                len: used,
                limit: self.spec.output,
            });
        }
        let limit = self.spec.output;
        if used > limit {
            return Err(OutputError::TooLarge { len: used, limit });
        }
        // SAFETY: the caller wrote `used` bytes into the spare capacity handed out by
        // `reserve_raw`, and nothing touched the buffer in between (one thread, no Lua).
        let filled = out.len() + used;
        unsafe { out.set_len(filled) };
        if out.len() > limit {
            drop(out);
            self.count(|s| IoStats::add(&s.overflow_closes, 1));
            self.request_close(libc::ENOBUFS);
            return Err(OutputError::SlowConsumer { limit });
        }
        drop(out);
        self.count(|s| IoStats::add(&s.frames_out, 1));
        self.signal();
        Ok(used)
    }

    /// Appends bytes that were encoded elsewhere (a commit from another core).
    pub fn append(&self, data: &[u8]) -> Result<usize, OutputError> {
        self.encode_with(|out| {
            out.extend_from_slice(data);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {})
    }

    /// Appends a committed table's BSON document (`{"v": v}`), sealed into an encrypted frame
    /// when `socket.crypto` is set (spec/stage.md §4.5).
    pub fn commit_document(&self, doc: &[u8]) -> Result<usize, OutputError> {
        match self.crypto() {
            None => self.append(doc),
            Some(key) => self
                .encode_with(|out| key.seal_frame(doc, out))
                .unwrap_or_else(|err| Err(err.into())),
        }
    }

    /// `socket.commit(nil)`: write pending output now, ignoring the flush interval.
    pub fn request_flush(&self) {
        self.flush_forced.set(true);
        self.signal();
    }

    /// `socket.close()` and friends: the task flushes, closes and runs the close callback.
    pub fn request_close(&self, errno: i32) {
        if self.close_requested.get().is_none() {
            self.close_requested.set(Some(errno));
        }
        self.signal();
    }

    pub fn is_closing(&self) -> bool {
        self.close_requested.get().is_some()
    }

    /// The errno of a close requested with an error (ENOBUFS when output passed `OUT`):
    /// the connection stops waiting for its peer, so its unsent output goes out only as far
    /// as the kernel takes it at once. An orderly close (errno 0) still flushes it all.
    pub(super) fn gave_up(&self) -> Option<i32> {
        self.close_requested.get().filter(|&errno| errno != 0)
    }

    fn signal(&self) {
        self.signalled.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Bytes committed and not yet handed to the socket: lets tests see replies batch up.
    #[cfg(test)]
    pub(crate) fn unsent(&self) -> usize {
        self.out.borrow().len()
    }

    pub(super) fn has_output(&self) -> bool {
        !self.out.borrow().is_empty()
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Signalled,
    Timer,
}

/// Runs a connection until it ends, then reports it closed. Owns the stream.
///
/// A plain function returning the task's future rather than an `async fn`: an `async fn`
/// keeps its arguments twice in its future (as arguments, then as the locals they move to),
/// and every connection's task, idle ones included, would carry the stream twice.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
pub fn serve<H: ConnEvents>(
    events: Rc<H>,
    conn: Rc<Conn>,
    mut stream: TcpStream,
) -> impl Future<Output = ()> {
    async move {
        let mut spare = BytesMut::new();
        let mut last_rx = Instant::now();
        let errno = pump(&events, &conn, &mut stream, &mut spare, &mut last_rx).await;
        // Whatever the scripts committed before the end still goes out, as far as the peer
        // takes it: after an orderly close, until the idle deadline (if `expire` is set); after
        // an error, only what the kernel takes at once; nothing when the peer is gone.
        if errno != libc::EPIPE && errno != libc::ECONNRESET {
            let patience = match errno {
                0 => idle_deadline(&conn, last_rx),
                _ => Some(Instant::now()),
            };
            // Boxed: once per connection, and its future would otherwise add to every task.
            let _ = Box::pin(flush(&conn, &mut stream, &mut spare, patience)).await;
        }
        let _ = stream.shutdown(std::net::Shutdown::Both).await;
        drop(stream);
        finish(&events, &conn, errno);
    }
}

/// Marks a connection closed and reports it, exactly once.
pub fn finish<H: ConnEvents>(events: &Rc<H>, conn: &Rc<Conn>, errno: i32) {
    conn.close_requested.set(Some(errno));
    conn.errno.set(errno);
    // The socket is closed: its places are free before the close callback runs, so a
    // reconnect the callback causes is not refused for a place nobody holds any more.
    conn.release();
    conn.count(|s| IoStats::add(&s.closed, 1));
    events.closed(conn, errno);
}

/// When an idle connection expires: `expire` after the last bytes read, if set.
pub(super) fn idle_deadline(conn: &Conn, last_rx: Instant) -> Option<Instant> {
    conn.expire_ms
        .get()
        .map(|ms| last_rx + Duration::from_millis(ms))
}

/// Reads, dispatches and flushes until the connection ends; returns its errno. `last_rx`
/// (the last read) is the caller's, so the final flush knows the idle deadline.
#[allow(clippy::manual_async_fn)] // not an `async fn`: see `serve`
fn pump<'a, H: ConnEvents>(
    events: &'a Rc<H>,
    conn: &'a Rc<Conn>,
    stream: &'a mut TcpStream,
    spare: &'a mut BytesMut,
    last_rx: &'a mut Instant,
) -> impl Future<Output = i32> + 'a {
    async move {
        let mut input = BytesMut::new();
        let mut window = FIRST_WINDOW.min(conn.spec.input);
        let mut last_flush: Option<Instant> = None;
        let mut timer: Option<(Instant, Timer)> = None;
        // When the bytes of the frame now pending in `input` began to arrive (`None` while
        // `input` holds no partial frame): one Instant per started frame, no timer per byte.
        let mut frame_started: Option<Instant> = None;
        loop {
            if let Some(errno) = conn.close_requested.get() {
                return errno;
            }
            let step = match due::next_step(
                conn,
                *last_rx,
                last_flush,
                frame_started,
                &mut timer,
                "frame",
            ) {
                Ok(step) => step,
                Err(errno) => return errno,
            };
            if let Step::Flush(expire_at) = step {
                conn.flush_forced.set(false);
                if let Err(errno) = write_out(conn, stream, spare, expire_at).await {
                    return errno;
                }
                last_flush = Some(Instant::now());
                continue;
            }

            let filled = input.len();
            let frame_rest = conn
                .spec
                .pending_frame_len(&input)
                .map_or(0, |len| len - filled);
            let want = window
                .max(frame_rest)
                .min(conn.spec.input.saturating_sub(filled))
                .clamp(1, READ_CHUNK);
            // A read that starts on an empty input goes through SCRATCH (no buffer while idle);
            // one that continues a partial frame reads in place after it.
            if filled > 0 {
                input.resize(filled + want, 0);
            }
            conn.signalled.set(false);
            let event = std::future::poll_fn(|cx| {
                if conn.signalled.get() {
                    return Poll::Ready(Event::Signalled);
                }
                let read = if filled == 0 {
                    SCRATCH.with_borrow_mut(|scratch| {
                        let read = Pin::new(&mut *stream).poll_read(cx, &mut scratch[..want]);
                        if let Poll::Ready(Ok(n)) = read {
                            input.extend_from_slice(&scratch[..n]);
                        }
                        read
                    })
                } else {
                    Pin::new(&mut *stream).poll_read(cx, &mut input[filled..])
                };
                if let Poll::Ready(res) = read {
                    return Poll::Ready(Event::Read(res));
                }
                if let Some((_, t)) = timer.as_mut() {
                    if Pin::new(t).poll(cx).is_ready() {
                        return Poll::Ready(Event::Timer);
                    }
                }
                conn.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
            match event {
                Event::Read(Ok(0)) => return 0,
                Event::Read(Ok(n)) => {
                    input.truncate(filled + n);
                    conn.count(|s| IoStats::add(&s.bytes_in, n as u64));
                    if n == want {
                        window = (window * 2).min(READ_CHUNK);
                    }
                    let now = Instant::now();
                    *last_rx = now;
                    let expire_at = idle_deadline(conn, now);
                    let mut cut = 0;
                    loop {
                        match dispatch_frames(events, conn, &mut input) {
                            Ok((n, full)) => {
                                cut += n;
                                if !full {
                                    break;
                                }
                            }
                            Err(errno) => return errno,
                        }
                        // Keep a burst of replies from outgrowing OUT while later frames wait.
                        if let Err(errno) = write_out(conn, stream, spare, expire_at).await {
                            return errno;
                        }
                    }
                    // What is left is a partial frame: it started with this read unless it is
                    // the same one that was pending before (nothing was cut, something was there).
                    if input.is_empty() {
                        frame_started = None;
                    } else if cut > 0 || filled == 0 {
                        frame_started = Some(now);
                    }
                }
                Event::Read(Err(err)) => return errno_of(&err),
                Event::Signalled => input.truncate(filled),
                Event::Timer => {
                    input.truncate(filled);
                    timer = None;
                }
            }
        }
    }
}

/// Cuts the complete frames out of `input` and hands each to the owner, in order; returns
/// how many it cut, and whether it stopped early because the output passed half of `OUT`
/// (the caller writes it out, then calls again for the rest). Not async: a state of its own
/// in the connection's task would enlarge every connection, idle ones included.
fn dispatch_frames<H: ConnEvents>(
    events: &Rc<H>,
    conn: &Rc<Conn>,
    input: &mut BytesMut,
) -> Result<(usize, bool), i32> {
    let mut cut = 0;
    while !conn.is_closing() {
        let mut frame = match conn.spec.next_frame(input) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(socket = conn.id.raw(), "closing connection: {err}");
                return Err(frame_errno(&err));
            }
        };
        cut += 1;
        conn.count(|s| IoStats::add(&s.frames_in, 1));
        // The one test a plain frame pays for socket crypto.
        if conn.spec.framing == Framing::Packet && crypto::is_encrypted(&frame) {
            frame = open_frame(conn, &frame)?;
        }
        if let Err(err) = events.frame(conn, frame) {
            // The owner logged why (at most once a second for a limit, `bson_limits`).
            tracing::debug!(socket = conn.id.raw(), "closing connection: {err}");
            return Err(libc::EBADMSG);
        }
        if conn.out.borrow().len() > conn.spec.output / 2 {
            return Ok((cut, true));
        }
    }
    Ok((cut, false))
}

/// The BSON document inside an encrypted frame, or EBADMSG (as for bad BSON) when the
/// socket has no key or the frame does not decrypt. Logged at debug: a client with the wrong
/// key is the client's problem, and must not flood the log.
pub(super) fn open_frame(conn: &Conn, frame: &[u8]) -> Result<bytes::Bytes, i32> {
    let Some(key) = conn.crypto() else {
        tracing::debug!(
            socket = conn.id.raw(),
            "closing connection: encrypted frame but socket.crypto is not set"
        );
        return Err(libc::EBADMSG);
    };
    key.open_frame(frame)
        .map(bytes::Bytes::from)
        .map_err(|err| {
            tracing::debug!(
                socket = conn.id.raw(),
                "closing connection: encrypted frame ({}): {err}",
                key.describe()
            );
            libc::EBADMSG
        })
}

/// Writes the pending output, or returns the errno that ends the connection, as [`flush`]
/// does. Nearly always the kernel takes it all at once ([`write_at_once`]): only the rest
/// goes through `flush`, boxed, because the state of a waiting write would otherwise be part
/// of every connection's task, idle ones included.
async fn write_out(
    conn: &Conn,
    stream: &mut TcpStream,
    spare: &mut BytesMut,
    deadline: Option<Instant>,
) -> Result<(), i32> {
    if write_at_once(conn, stream)? {
        return Ok(());
    }
    Box::pin(flush(conn, stream, spare, deadline)).await
}

/// Hands the kernel as much of the pending output as it takes now, without waiting (glommio
/// tries a plain `send` first); `true` when nothing is left. What was written is taken off
/// the front of the output buffer.
fn write_at_once(conn: &Conn, stream: &mut TcpStream) -> Result<bool, i32> {
    let mut out = conn.out.borrow_mut();
    if out.is_empty() {
        return Ok(true);
    }
    // Not waiting: if the socket is full, the waker glommio keeps is replaced by the task's
    // own when `flush` polls the same write again.
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut *stream).poll_write(&mut cx, &out) {
        Poll::Ready(Ok(n)) => {
            conn.count(|s| IoStats::add(&s.bytes_out, n as u64));
            if n == out.len() {
                out.clear();
                return Ok(true);
            }
            bytes::Buf::advance(&mut *out, n);
            Ok(false)
        }
        Poll::Ready(Err(err)) => Err(errno_of(&err)),
        Poll::Pending => Ok(false),
    }
}

/// Writes the pending output, or returns the errno that ends the connection. A write waits
/// for as long as the peer takes to read, and nothing else of the connection runs meanwhile,
/// so it gives way to what would otherwise end the connection: a close with an error (see
/// [`Conn::gave_up`]; a peer that stops reading while scripts keep committing is closed with
/// ENOBUFS, which must not wait for that same peer), and `deadline`, the idle deadline
/// (ETIMEDOUT: a peer that neither reads nor sends is idle). When either ends a write, the
/// rest of the buffer is dropped: the peer gets a cut stream, then the end.
async fn flush(
    conn: &Conn,
    stream: &mut TcpStream,
    spare: &mut BytesMut,
    deadline: Option<Instant>,
) -> Result<(), i32> {
    if !conn.has_output() {
        return Ok(());
    }
    let mut data = std::mem::replace(&mut *conn.out.borrow_mut(), std::mem::take(spare));
    let result = write_patiently(conn, stream, &data, deadline).await;
    data.clear();
    *spare = data;
    result
}

/// Writes `data` to the peer, giving way as [`flush`] describes (the WebSocket task writes
/// its framed output through it too).
pub(super) async fn write_patiently(
    conn: &Conn,
    stream: &mut TcpStream,
    data: &[u8],
    deadline: Option<Instant>,
) -> Result<(), i32> {
    // Unless the peer is behind, the kernel takes the whole batch at once: one poll of the
    // write (glommio tries a plain `send` first). Only the rest waits, in a boxed future:
    // its state would otherwise be part of every connection's task, idle ones included.
    let sent =
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *stream).poll_write(cx, data))).await;
    let sent = match sent {
        Poll::Ready(Ok(n)) => n,
        Poll::Ready(Err(err)) => return Err(errno_of(&err)),
        Poll::Pending => 0,
    };
    if sent < data.len() {
        Box::pin(write_waiting(conn, stream, &data[sent..], deadline)).await?;
    }
    conn.count(|s| IoStats::add(&s.bytes_out, data.len() as u64));
    Ok(())
}

/// The part of [`write_patiently`] the kernel did not take at once: written as the peer
/// reads, given up on as [`flush`] describes.
async fn write_waiting(
    conn: &Conn,
    stream: &mut TcpStream,
    data: &[u8],
    deadline: Option<Instant>,
) -> Result<(), i32> {
    let mut write = std::pin::pin!(stream.write_all(data));
    // Armed only once the peer is behind: a write the kernel takes at once costs no timer.
    let mut timer: Option<Timer> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(res) = write.as_mut().poll(cx) {
            return Poll::Ready(res.map_err(|e| errno_of(&e)));
        }
        let mut give_up = conn.gave_up();
        if let (None, Some(at)) = (give_up, deadline) {
            let now = Instant::now();
            if at <= now
                || Pin::new(timer.get_or_insert_with(|| Timer::new(at - now)))
                    .poll(cx)
                    .is_ready()
            {
                give_up = Some(libc::ETIMEDOUT);
            }
        }
        if let Some(errno) = give_up {
            tracing::debug!(
                socket = conn.id.raw(),
                "write abandoned: the peer is not reading"
            );
            return Poll::Ready(Err(errno));
        }
        conn.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    })
    .await
}

pub fn errno_of(err: &std::io::Error) -> i32 {
    err.raw_os_error().unwrap_or(match err.kind() {
        std::io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        std::io::ErrorKind::ConnectionRefused => libc::ECONNREFUSED,
        std::io::ErrorKind::ConnectionReset => libc::ECONNRESET,
        std::io::ErrorKind::BrokenPipe => libc::EPIPE,
        _ => libc::EIO,
    })
}

pub(super) fn frame_errno(err: &FrameError) -> i32 {
    match err {
        FrameError::TooLong { .. } | FrameError::LineTooLong { .. } => libc::EMSGSIZE,
        FrameError::TooShort { .. } => libc::EBADMSG,
    }
}

#[cfg(test)]
mod msec_tests {
    use super::MsecCell;
    use std::time::Duration;

    #[test]
    fn a_msec_cell_keeps_off_apart_from_every_value() {
        let cell = MsecCell::never();
        assert_eq!(cell.get(), None);
        for ms in [0, 1, 30, 3_600_000, u32::MAX as u64 - 1] {
            cell.set(Some(ms));
            assert_eq!(cell.get(), Some(ms));
            assert_eq!(cell.duration(), Some(Duration::from_millis(ms)));
        }
        // Past 49 days it saturates instead of turning into "off".
        cell.set(Some(u64::MAX));
        assert_eq!(cell.get(), Some(u32::MAX as u64 - 1));
        cell.set(None);
        assert_eq!(cell.duration(), None);
    }

    #[test]
    fn a_connection_object_stays_small() {
        // Every idle connection holds one (issue #15 item 5: <= 2 KiB per idle connection,
        // BENCHMARKS.md "Memory per idle connection"); 280 bytes before the compact cells.
        let size = std::mem::size_of::<super::Conn>();
        assert!(size <= 192, "Conn grew to {size} bytes");
    }
}
