//! WebSocket connections (`ws://host:port/path`, RFC 6455): the HTTP upgrade, then the same
//! connection as TCP — the same [`Conn`] (output buffer, `OUT`, `expire`, `commit`, crypto),
//! the same owner events and the same framing — with WebSocket messages around the frames.
//!
//! The protocol is tungstenite's, used without I/O: its [`WebSocket`] runs over a [`Pipe`],
//! an in-memory stream this task fills from the glommio socket and empties into it, so a
//! core never blocks and the connection stays on the core that accepted it. Inbound, every
//! binary or text message is appended to the connection's frame stream and cut by
//! [`FrameSpec::next_frame`] exactly as TCP bytes are, so scripts see identical `data`; a
//! text message without a trailing newline gets one (it is one line), and a packet frame may
//! not straddle two messages. Outbound, the committed bytes are cut back into messages at
//! flush time (one per packet frame, one per line), so the commit path pays nothing for
//! WebSocket. Pings are answered, a close frame is answered and ends the connection with
//! errno 0, and every end the server decides sends a close frame with a code that says why.
//!
//! The TCP task (`conn::serve`) does not know this module exists: a WebSocket connection
//! takes this task instead, chosen once per accept.

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::StatusCode;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Bytes, HandshakeError, Message, ServerHandshake, Utf8Bytes, WebSocket};

use super::admission::{Ticket, DEFAULT_DEADLINE_MS};
use super::conn::{self, Conn};
use super::due::{self, Step};
use super::listener::{self, Endpoint};
use super::ConnEvents;
use crate::codec::crypto;
use crate::codec::framing::Framing;

/// The most bytes an HTTP upgrade request may take; past it the client gets 431 and the
/// connection is closed (the request is read into memory before anything else happens).
pub const HANDSHAKE_MAX: usize = 8 * 1024;
/// The most one socket read asks for, as on TCP.
const READ_CHUNK: usize = 16 * 1024;
/// The first read window, as on TCP: small for an idle connection, doubling (up to
/// `READ_CHUNK`) while reads fill it.
const FIRST_WINDOW: usize = 512;
/// tungstenite's own read buffer (it grows once for a message whose header is known, never
/// past `IN`): small, so an idle WebSocket costs little more than an idle TCP connection.
const CODEC_BUFFER: usize = 4 * 1024;

/// An in-memory stream for tungstenite: `input` holds what the socket delivered and not yet
/// handed to the codec, `output` what the codec wrote and the socket has not taken. Reading
/// an empty pipe is `WouldBlock`, which tungstenite treats as "no more for now".
#[derive(Default)]
pub(super) struct Pipe {
    input: BytesMut,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.input.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.advance(n);
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The codec settings of a connection whose input buffer is `input` bytes: no message (and
/// no fragment) larger than `IN` is buffered — the length in a frame header is checked
/// before the payload is read — and written messages go straight to the pipe.
fn config(input: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(CODEC_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(input))
        .max_frame_size(Some(input))
}

/// Why an upgrade did not happen (logged at debug: a bad client is the client's problem).
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("the client went away during the upgrade")]
    Gone,
    #[error("upgrade request larger than {HANDSHAKE_MAX} bytes")]
    TooLarge,
    #[error("upgrade for path `{0}`, not this listener's")]
    WrongPath(String),
    #[error("bad upgrade request: {0}")]
    Bad(tungstenite::Error),
}

/// The response to a refused upgrade: an HTTP status, then the connection is closed.
fn refusal_response(status: StatusCode) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes()
}

/// Reads the client's HTTP upgrade request and answers it: `101 Switching Protocols` when it
/// is a WebSocket upgrade for `path`, else 404 (another path), 431 (too large) or 400 (not
/// a WebSocket upgrade), after which the connection is closed.
pub(super) async fn handshake(
    stream: &mut TcpStream,
    path: &str,
    input: usize,
) -> Result<WebSocket<Pipe>, Refusal> {
    let wanted = path.to_string();
    let asked = Rc::new(std::cell::RefCell::new(String::new()));
    let seen = asked.clone();
    // The signature (and its large error, an HTTP response) is tungstenite's `Callback`.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, response: Response| {
        if request.uri().path() == wanted {
            return Ok(response);
        }
        *seen.borrow_mut() = request.uri().path().to_string();
        let mut refused = ErrorResponse::new(None);
        *refused.status_mut() = StatusCode::NOT_FOUND;
        Err(refused)
    };
    let mut mid = ServerHandshake::start(Pipe::default(), callback, Some(config(input)));
    let mut buf = vec![0u8; 1024];
    let mut total = 0;
    let (status, refusal) = loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Err(Refusal::Gone),
            Ok(n) => n,
        };
        total += n;
        if total > HANDSHAKE_MAX {
            break (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Refusal::TooLarge,
            );
        }
        mid.get_mut().get_mut().input.extend_from_slice(&buf[..n]);
        match mid.handshake() {
            Ok(mut ws) => {
                let response = std::mem::take(&mut ws.get_mut().output);
                stream
                    .write_all(&response)
                    .await
                    .map_err(|_| Refusal::Gone)?;
                return Ok(ws);
            }
            Err(HandshakeError::Interrupted(again)) => mid = again,
            // The callback's refusal (tungstenite wrote it into the pipe it then dropped).
            Err(HandshakeError::Failure(tungstenite::Error::Http(_))) => {
                let asked = asked.borrow().clone();
                break (StatusCode::NOT_FOUND, Refusal::WrongPath(asked));
            }
            Err(HandshakeError::Failure(err)) => {
                break (StatusCode::BAD_REQUEST, Refusal::Bad(err))
            }
        }
    };
    let _ = stream.write_all(&refusal_response(status)).await;
    Err(refusal)
}

/// Upgrades an accepted client of a `ws://` listener, then serves it like a TCP connection.
/// The upgrade must finish within the listener's `deadline` (10 s when it is off: a client
/// that never upgrades must not hold its place for ever); it holds `ticket` meanwhile, so
/// upgrades in progress count against `maxconn` / `perip`. The owner hears of the client only
/// once it is a WebSocket; a failed upgrade costs that one connection and nothing else.
pub(super) async fn upgrade<H: ConnEvents>(
    events: Rc<H>,
    endpoint: Endpoint,
    path: Arc<str>,
    mut stream: TcpStream,
    peer: Option<SocketAddr>,
    ticket: Ticket,
) {
    let limit = endpoint
        .gate
        .limits
        .deadline()
        .unwrap_or(Duration::from_millis(DEFAULT_DEADLINE_MS));
    let done = futures_lite::future::or(
        async { Some(handshake(&mut stream, &path, endpoint.frame.input).await) },
        async {
            glommio::timer::sleep(limit).await;
            None
        },
    )
    .await;
    let ws = match done {
        Some(Ok(ws)) => ws,
        Some(Err(refusal)) => {
            tracing::debug!(listener = endpoint.id, peer = ?peer, "websocket upgrade refused: {refusal}");
            let _ = stream.shutdown(std::net::Shutdown::Both).await;
            return;
        }
        None => {
            tracing::debug!(listener = endpoint.id, peer = ?peer, "websocket upgrade not complete within the deadline; closing");
            endpoint.gate.frame_timed_out();
            let _ = stream.shutdown(std::net::Shutdown::Both).await;
            return;
        }
    };
    match listener::admit(&events, &endpoint, &stream, peer, ticket) {
        Some(conn) => serve(events, conn, stream, ws).await,
        None => {
            // Refused by the accept callback: say so in the protocol, then close.
            let mut ws = ws;
            let _ = ws.close(Some(close_frame(libc::ECONNREFUSED)));
            let _ = ws.flush();
            let _ = stream.write_all(&ws.get_ref().output).await;
            let _ = stream.shutdown(std::net::Shutdown::Both).await;
        }
    }
}

/// The close frame the server sends when it ends a connection with `errno`.
fn close_frame(errno: i32) -> CloseFrame {
    let (code, reason) = match errno {
        0 => (CloseCode::Normal, ""),
        libc::EMSGSIZE => (CloseCode::Size, "message larger than the input buffer"),
        libc::EBADMSG => (CloseCode::Invalid, "bad frame"),
        libc::ENOBUFS => (CloseCode::Policy, "output buffer full: not reading"),
        libc::ETIMEDOUT => (CloseCode::Away, "timed out"),
        libc::ECONNREFUSED => (CloseCode::Policy, "refused"),
        _ => (CloseCode::Error, ""),
    };
    CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }
}

/// Runs an upgraded connection until it ends, then reports it closed (as `conn::serve`).
pub(super) async fn serve<H: ConnEvents>(
    events: Rc<H>,
    conn: Rc<Conn>,
    mut stream: TcpStream,
    mut ws: WebSocket<Pipe>,
) {
    let mut spare = BytesMut::new();
    let mut last_rx = Instant::now();
    let errno = pump(
        &events,
        &conn,
        &mut stream,
        &mut ws,
        &mut spare,
        &mut last_rx,
    )
    .await;
    if errno != libc::EPIPE && errno != libc::ECONNRESET {
        let patience = match errno {
            0 => conn::idle_deadline(&conn, last_rx),
            _ => Some(Instant::now()),
        };
        let _ = flush(&conn, &mut stream, &mut ws, &mut spare, patience).await;
        // Our half of the close handshake (already sent when the peer closed first).
        if ws.can_write() {
            let _ = ws.close(Some(close_frame(errno)));
            let _ = write_wire(&conn, &mut stream, &mut ws, Some(Instant::now())).await;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both).await;
    drop(stream);
    conn::finish(&events, &conn, errno);
}

enum Event {
    Read(std::io::Result<usize>),
    Signalled,
    Timer,
}

/// Reads, dispatches and flushes until the connection ends; returns its errno. The loop of
/// `conn::pump` (the same flush, idle and deadline rules), with the codec in between.
async fn pump<H: ConnEvents>(
    events: &Rc<H>,
    conn: &Rc<Conn>,
    stream: &mut TcpStream,
    ws: &mut WebSocket<Pipe>,
    spare: &mut BytesMut,
    last_rx: &mut Instant,
) -> i32 {
    // The frame stream the messages' payloads are appended to (empty between messages).
    let mut frames = BytesMut::new();
    let mut last_flush: Option<Instant> = None;
    let mut timer: Option<(Instant, Timer)> = None;
    // When the bytes of a message not yet complete began to arrive. tungstenite does not
    // tell how much of a message it holds, so this is "since the first read that completed
    // no message": a peer that dribbles a message is caught, one that sends whole messages
    // never is.
    let mut message_started: Option<Instant> = None;
    let mut window = FIRST_WINDOW;
    loop {
        if let Some(errno) = conn.close_requested.get() {
            return errno;
        }
        let step = match due::next_step(
            conn,
            *last_rx,
            last_flush,
            message_started,
            &mut timer,
            "message",
        ) {
            Ok(step) => step,
            Err(errno) => return errno,
        };
        if let Step::Flush(expire_at) = step {
            conn.flush_forced.set(false);
            if let Err(errno) = flush(conn, stream, ws, spare, expire_at).await {
                return errno;
            }
            last_flush = Some(Instant::now());
            continue;
        }

        let input = &mut ws.get_mut().input;
        let filled = input.len();
        input.resize(filled + window, 0);
        conn.signalled.set(false);
        let event = std::future::poll_fn(|cx| {
            if conn.signalled.get() {
                return Poll::Ready(Event::Signalled);
            }
            if let Poll::Ready(res) = Pin::new(&mut *stream).poll_read(cx, &mut input[filled..]) {
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
            // The peer went away without a close frame: as a TCP end of stream.
            Event::Read(Ok(0)) => return 0,
            Event::Read(Ok(n)) => {
                input.truncate(filled + n);
                if n == window {
                    window = (window * 2).min(READ_CHUNK);
                }
                let now = Instant::now();
                *last_rx = now;
                let expire_at = conn::idle_deadline(conn, now);
                match read_messages(events, conn, stream, ws, &mut frames, spare, expire_at).await {
                    Ok(Batch::Messages(0)) => {
                        message_started.get_or_insert(now);
                    }
                    Ok(Batch::Messages(_)) => message_started = None,
                    Ok(Batch::Closed) => return 0,
                    Err(errno) => return errno,
                }
                // Pongs and the answer to a close frame go out at once.
                if let Err(errno) = write_wire(conn, stream, ws, expire_at).await {
                    return errno;
                }
            }
            Event::Read(Err(err)) => return conn::errno_of(&err),
            Event::Signalled | Event::Timer => {
                input.truncate(filled);
                if matches!(event, Event::Timer) {
                    timer = None;
                }
            }
        }
    }
}

/// What one read's bytes amounted to.
enum Batch {
    /// This many complete messages (data or control) were handled.
    Messages(usize),
    /// The peer's close frame arrived (and was answered).
    Closed,
}

/// Hands every complete message in the pipe to the connection, in order.
async fn read_messages<H: ConnEvents>(
    events: &Rc<H>,
    conn: &Rc<Conn>,
    stream: &mut TcpStream,
    ws: &mut WebSocket<Pipe>,
    frames: &mut BytesMut,
    spare: &mut BytesMut,
    expire_at: Option<Instant>,
) -> Result<Batch, i32> {
    let mut count = 0;
    while !conn.is_closing() {
        let payload = match ws.read() {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Text(text)) => Bytes::from(text),
            // tungstenite queued the pong; the caller writes it.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {
                count += 1;
                continue;
            }
            Ok(Message::Close(_)) => return Ok(Batch::Closed),
            Err(tungstenite::Error::Io(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {
                break;
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(Batch::Closed);
            }
            Err(err) => return Err(read_error(conn, &err)),
        };
        count += 1;
        deliver(events, conn, frames, &payload)?;
        // Keep a burst of replies from outgrowing OUT while later messages are processed.
        if conn.out.borrow().len() > conn.spec.output / 2 {
            flush(conn, stream, ws, spare, expire_at).await?;
        }
    }
    Ok(Batch::Messages(count))
}

/// The errno a codec error ends the connection with, logged like a TCP framing error.
fn read_error(conn: &Conn, err: &tungstenite::Error) -> i32 {
    match err {
        tungstenite::Error::Capacity(_) => {
            tracing::warn!(
                socket = conn.id.raw(),
                "closing connection: websocket message longer than the input buffer of {} bytes (raise IN in the URL): {err}",
                conn.spec.input
            );
            libc::EMSGSIZE
        }
        _ => {
            tracing::debug!(
                socket = conn.id.raw(),
                "closing connection: websocket protocol error: {err}"
            );
            libc::EBADMSG
        }
    }
}

/// Appends one message's payload to the frame stream and hands every frame it completes to
/// the owner, as `conn::dispatch_frames` does for TCP bytes.
fn deliver<H: ConnEvents>(
    events: &Rc<H>,
    conn: &Rc<Conn>,
    frames: &mut BytesMut,
    payload: &[u8],
) -> Result<(), i32> {
    frames.extend_from_slice(payload);
    // A text message is one line: TCP clients end theirs with `\n`, and `data` keeps it.
    if conn.spec.framing == Framing::Text && !payload.ends_with(b"\n") {
        frames.extend_from_slice(b"\n");
    }
    while !conn.is_closing() {
        let mut frame = match conn.spec.next_frame(frames) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(socket = conn.id.raw(), "closing connection: {err}");
                return Err(conn::frame_errno(&err));
            }
        };
        if conn.spec.framing == Framing::Packet && crypto::is_encrypted(&frame) {
            frame = conn::open_frame(conn, &frame)?;
        }
        if let Err(err) = events.frame(conn, frame) {
            tracing::debug!(socket = conn.id.raw(), "closing connection: {err}");
            return Err(libc::EBADMSG);
        }
    }
    if conn.spec.framing == Framing::Packet && !frames.is_empty() && !conn.is_closing() {
        tracing::debug!(
            socket = conn.id.raw(),
            "closing connection: a websocket message ended inside a packet frame (send whole frames, one per message)"
        );
        return Err(libc::EBADMSG);
    }
    Ok(())
}

/// How long the first message of `data` (pending output) is: one packet frame (a tail that
/// is not a whole frame, bytes a script committed as they are, goes as one message), one
/// line of text, or all of a raw stream.
pub(super) fn first_message(framing: Framing, data: &[u8]) -> usize {
    match framing {
        Framing::Packet if data.len() >= 4 => {
            let len = (u32::from_le_bytes([data[0], data[1], data[2], data[3]])
                & !crate::codec::framing::ENCRYPTED_FLAG) as usize;
            if (5..=data.len()).contains(&len) {
                len
            } else {
                data.len()
            }
        }
        Framing::Text => data
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |at| at + 1),
        _ => data.len(),
    }
}

/// Writes the pending output as WebSocket messages (see [`first_message`]), then whatever
/// else the codec has queued, or returns the errno that ends the connection.
async fn flush(
    conn: &Conn,
    stream: &mut TcpStream,
    ws: &mut WebSocket<Pipe>,
    spare: &mut BytesMut,
    deadline: Option<Instant>,
) -> Result<(), i32> {
    if conn.has_output() {
        let data = std::mem::replace(&mut *conn.out.borrow_mut(), std::mem::take(spare)).freeze();
        let mut at = 0;
        while at < data.len() && ws.can_write() {
            let len = first_message(conn.spec.framing, &data[at..]);
            let part = data.slice(at..at + len);
            at += len;
            let message = match conn.spec.framing {
                Framing::Text => match Utf8Bytes::try_from(part.clone()) {
                    Ok(text) => Message::Text(text),
                    // A browser drops a text message that is not UTF-8: send the bytes.
                    Err(_) => Message::Binary(part),
                },
                _ => Message::Binary(part),
            };
            // Into the pipe, which never refuses; an error means the codec is closing.
            if ws.write(message).is_err() {
                break;
            }
        }
        // The codec copied the payloads: the buffer is ours again, to reuse.
        if let Ok(mut data) = data.try_into_mut() {
            data.clear();
            *spare = data;
        }
    }
    write_wire(conn, stream, ws, deadline).await
}

/// Writes what the codec has queued in the pipe (messages, pongs, close frames).
async fn write_wire(
    conn: &Conn,
    stream: &mut TcpStream,
    ws: &mut WebSocket<Pipe>,
    deadline: Option<Instant>,
) -> Result<(), i32> {
    // A closing codec reports ConnectionClosed after writing its close frame: not an error.
    let _ = ws.flush();
    if ws.get_ref().output.is_empty() {
        return Ok(());
    }
    let mut wire = std::mem::take(&mut ws.get_mut().output);
    let result = conn::write_patiently(conn, stream, &wire, deadline).await;
    wire.clear();
    ws.get_mut().output = wire;
    result
}
