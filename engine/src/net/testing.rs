//! Test support for the net layer: runs an async test body on a real glommio executor, and
//! owns connections through [`Recorder`], a [`ConnEvents`] that writes down every event and
//! lets each test decide what accepting and receiving a frame do (echo, refuse, close, fail).
//! With it, the connection task, the framing and the accept, join and UDP loops are tested
//! on loopback sockets with no core and no Lua state, as the layering promises they can be.
//!
//! Nothing here measures time: waits poll for a condition and fail only after a generous
//! deadline, so a noisy machine makes a test slower, never wrong.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::admission::{Gate, Limits};
use super::conn::Conn;
use super::id::{listener_id, ConnId};
use super::listener::{self, Endpoint};
use super::ConnEvents;
use crate::codec::framing::{FrameSpec, Framing};
use crate::notify::Notify;

/// How long any single wait may take before the test fails. Generous on purpose: it only
/// bounds a hang, it is not a performance claim.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `body` on a fresh glommio executor in its own thread and returns its output. A
/// panic in the body (or in any task it spawned) fails the calling test with the original
/// message; a body that hangs fails after twice [`PATIENCE`].
pub(crate) fn run_local<B, F>(body: B) -> F::Output
where
    B: FnOnce() -> F + Send + 'static,
    F: Future + 'static,
    F::Output: Send + 'static,
{
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("net-test")
        // The default reserves 10 MiB of io_uring buffers per executor, for file I/O these
        // tests never do; tests run in parallel, so keep each executor small.
        .io_memory(64 << 10)
        .spawn(move || async move {
            futures_lite::future::or(body(), async {
                glommio::timer::sleep(PATIENCE * 2).await;
                panic!("test body still running after {:?}", PATIENCE * 2);
            })
            .await
        })
        .expect("cannot start a glommio executor");
    match handle.join() {
        Ok(output) => output,
        Err(glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(
            payload,
        ))) => std::panic::resume_unwind(payload),
        Err(err) => panic!("glommio executor failed: {err}"),
    }
}

/// Awaits `fut`, failing the test if it takes longer than [`PATIENCE`].
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    futures_lite::future::or(fut, async {
        glommio::timer::sleep(PATIENCE).await;
        panic!("timed out: {what}");
    })
    .await
}

/// One event the owner was told about, with the bytes copied out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Accepted {
        listener: u64,
        conn: ConnId,
    },
    Connected(ConnId),
    Frame(ConnId, Vec<u8>),
    Closed(ConnId, i32),
    Datagram {
        endpoint: u64,
        message: Vec<u8>,
        framing: Framing,
        from: SocketAddr,
    },
}

type AcceptHook = Box<dyn Fn(&Rc<Conn>) -> bool>;
type FrameHook = Box<dyn Fn(&Rc<Conn>, &Bytes) -> Result<(), String>>;
type DatagramHook = Box<dyn Fn(u64, &[u8], SocketAddr)>;

/// A [`ConnEvents`] for tests: records every event in order and runs the test's hooks.
/// By default it accepts every client and only records frames.
pub(crate) struct Recorder {
    seq: Cell<u64>,
    seen: RefCell<Vec<Seen>>,
    conns: RefCell<Vec<Rc<Conn>>>,
    on_accept: AcceptHook,
    on_frame: FrameHook,
    on_datagram: Option<DatagramHook>,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            seq: Cell::new(0),
            seen: RefCell::new(Vec::new()),
            conns: RefCell::new(Vec::new()),
            on_accept: Box::new(|_| true),
            on_frame: Box::new(|_, _| Ok(())),
            on_datagram: None,
        }
    }

    /// Sends every frame straight back: the smallest server whose replies a client can check.
    pub(crate) fn echo() -> Recorder {
        Recorder::new().on_frame(|conn, frame| {
            conn.append(frame).map_err(|e| e.to_string())?;
            Ok(())
        })
    }

    /// What to do with a new client before its task starts (refuse it, set `expire`, ...).
    pub(crate) fn on_accept(mut self, hook: impl Fn(&Rc<Conn>) -> bool + 'static) -> Recorder {
        self.on_accept = Box::new(hook);
        self
    }

    /// What to do with each frame, after it is recorded; an error closes the connection.
    pub(crate) fn on_frame(
        mut self,
        hook: impl Fn(&Rc<Conn>, &Bytes) -> Result<(), String> + 'static,
    ) -> Recorder {
        self.on_frame = Box::new(hook);
        self
    }

    pub(crate) fn on_datagram(
        mut self,
        hook: impl Fn(u64, &[u8], SocketAddr) + 'static,
    ) -> Recorder {
        self.on_datagram = Some(Box::new(hook));
        self
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.borrow().clone()
    }

    /// The connections accepted or connected so far, in order.
    pub(crate) fn conns(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().clone()
    }

    pub(crate) fn frames_of(&self, id: ConnId) -> Vec<Vec<u8>> {
        self.seen
            .borrow()
            .iter()
            .filter_map(|s| match s {
                Seen::Frame(c, bytes) if *c == id => Some(bytes.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every `closed` errno reported for `id` (a correct connection reports exactly one).
    pub(crate) fn closes_of(&self, id: ConnId) -> Vec<i32> {
        self.seen
            .borrow()
            .iter()
            .filter_map(|s| match s {
                Seen::Closed(c, errno) if *c == id => Some(*errno),
                _ => None,
            })
            .collect()
    }

    /// Waits until `done` holds for the events so far; fails the test, listing them, if it
    /// does not within [`PATIENCE`].
    pub(crate) async fn until(&self, what: &str, done: impl Fn(&[Seen]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(&self.seen.borrow()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events: {:#?}",
                self.seen.borrow()
            );
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits for the first connection to be accepted or connected, and returns it.
    pub(crate) async fn first_conn(&self) -> Rc<Conn> {
        self.until("a connection", |_| !self.conns.borrow().is_empty())
            .await;
        self.conns.borrow()[0].clone()
    }

    /// Waits until connection `id` is reported closed, and returns its errno.
    pub(crate) async fn closed_with(&self, id: ConnId) -> i32 {
        self.until(&format!("connection {id} to close"), |seen| {
            seen.iter()
                .any(|s| matches!(s, Seen::Closed(c, _) if *c == id))
        })
        .await;
        self.closes_of(id)[0]
    }

    fn record(&self, seen: Seen) {
        self.seen.borrow_mut().push(seen);
    }
}

impl ConnEvents for Recorder {
    fn next_conn_id(&self) -> ConnId {
        self.seq.set(self.seq.get() + 1);
        ConnId::new(0, self.seq.get())
    }

    fn accepted(self: &Rc<Self>, listener: u64, conn: &Rc<Conn>) -> bool {
        self.record(Seen::Accepted {
            listener,
            conn: conn.id,
        });
        self.conns.borrow_mut().push(conn.clone());
        (self.on_accept)(conn)
    }

    fn connected(self: &Rc<Self>, conn: &Rc<Conn>) {
        self.record(Seen::Connected(conn.id));
        self.conns.borrow_mut().push(conn.clone());
    }

    fn frame(self: &Rc<Self>, conn: &Rc<Conn>, frame: Bytes) -> Result<(), String> {
        self.record(Seen::Frame(conn.id, frame.to_vec()));
        (self.on_frame)(conn, &frame)
    }

    fn closed(self: &Rc<Self>, conn: &Rc<Conn>, errno: i32) {
        self.record(Seen::Closed(conn.id, errno));
    }

    fn datagram(
        self: &Rc<Self>,
        endpoint: u64,
        message: &[u8],
        framing: Framing,
        from: SocketAddr,
    ) {
        self.record(Seen::Datagram {
            endpoint,
            message: message.to_vec(),
            framing,
            from,
        });
        if let Some(hook) = &self.on_datagram {
            hook(endpoint, message, from);
        }
    }
}

/// A running accept loop on a loopback port the kernel picked.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: Notify,
}

/// Starts `listener::accept_loop` for `events` on 127.0.0.1 with framing `frame`.
pub(crate) fn listen(events: &Rc<Recorder>, frame: FrameSpec) -> Server {
    listen_with(events, frame, Limits::default())
}

/// [`listen`] with connection limits.
pub(crate) fn listen_with(events: &Rc<Recorder>, frame: FrameSpec, limits: Limits) -> Server {
    let socket = listener::bind("127.0.0.1:0".parse().unwrap()).expect("bind a loopback port");
    let addr = socket.local_addr().expect("the listener's address");
    let stop = Notify::default();
    let endpoint = Endpoint {
        id: listener_id(1),
        addr,
        frame,
        gate: Gate::new(listener_id(1), limits),
        websocket: None,
    };
    glommio::spawn_local(listener::accept_loop(
        events.clone(),
        endpoint,
        Some(socket),
        stop.clone(),
    ))
    .detach();
    Server { addr, stop }
}

pub(crate) fn packet_spec(input: usize, output: usize) -> FrameSpec {
    FrameSpec {
        framing: Framing::Packet,
        input,
        output,
    }
}

/// A packet frame of exactly `len` bytes: the 4-byte length that counts itself, then a
/// recognisable body (`tag`, then counting bytes), so frames are told apart in a stream.
pub(crate) fn packet(len: usize, tag: u8) -> Vec<u8> {
    let mut frame = (len as u32).to_le_bytes().to_vec();
    frame.extend((0..len.saturating_sub(4)).map(|i| if i == 0 { tag } else { i as u8 }));
    frame.truncate(len.max(4));
    frame
}

/// A client of a test server (glommio's own stream, on the same executor).
pub(crate) async fn connect(addr: SocketAddr) -> TcpStream {
    within("connect", TcpStream::connect(addr))
        .await
        .expect("connect to the test server")
}

pub(crate) async fn send(client: &mut TcpStream, bytes: &[u8]) {
    within("client write", client.write_all(bytes))
        .await
        .expect("client write");
}

/// Reads exactly `n` bytes of replies.
pub(crate) async fn receive(client: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    within(
        &format!("{n} bytes of replies"),
        client.read_exact(&mut buf),
    )
    .await
    .expect("client read");
    buf
}

/// How a client saw its connection end.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// An orderly close (FIN).
    Eof,
    /// A reset: the server closed with input it had not read, which TCP answers with RST.
    Reset,
}

/// Reads until the server ends the connection; returns what arrived and how it ended.
pub(crate) async fn read_to_end(client: &mut TcpStream) -> (Vec<u8>, End) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within("the server to close", client.read(&mut buf)).await {
            Ok(0) => return (got, End::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, End::Reset)
            }
            Err(err) => panic!("client read failed: {err}"),
        }
    }
}
