//! What every bot does with its socket, whatever the scenario: connect (bounded by the
//! timeout), write, read into the frame decoder, and turn each failure into an error kind and
//! a disconnect reason. Keeping the classification here means built-in and Lua bots report
//! the same server behaviour the same way.

use crate::cli::Plan;
use crate::framing::FrameDecoder;
use crate::stats::{ConnectFailure, DisconnectReason, ErrorKind, Recorder};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Everything one bot needs, whatever its scenario; cheap to build per bot.
pub struct BotCtx<'a> {
    pub plan: &'a Plan,
    pub rec: Recorder,
    pub stop: watch::Receiver<bool>,
    /// 1-based bot number (`bot.id`, `bot-<id>` in logins).
    pub id: usize,
}

/// Why a bot stopped early: recorded once, as an error and a disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub reason: DisconnectReason,
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, reason: DisconnectReason, message: impl Into<String>) -> Self {
        Self {
            kind,
            reason,
            message: message.into(),
        }
    }

    pub fn timeout(timeout: Duration) -> Self {
        Failure::new(
            ErrorKind::Timeout,
            DisconnectReason::Timeout,
            format!("no reply within {}", crate::units::format_duration(timeout)),
        )
    }

    pub fn protocol(message: impl std::fmt::Display) -> Self {
        Failure::new(
            ErrorKind::Protocol,
            DisconnectReason::ProtocolError,
            format!("protocol error: {message}"),
        )
    }

    /// A socket error while reading or writing.
    pub fn io(e: &io::Error, doing: &str) -> Self {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Failure::new(
                ErrorKind::Disconnect,
                DisconnectReason::Reset,
                format!("connection reset while {doing}: {e}"),
            ),
            K::UnexpectedEof => Failure::eof(),
            _ => Failure::new(
                ErrorKind::Io,
                DisconnectReason::IoError,
                format!("{doing}: {e}"),
            ),
        }
    }

    pub fn eof() -> Self {
        Failure::new(
            ErrorKind::Disconnect,
            DisconnectReason::Eof,
            "server closed the connection",
        )
    }

    /// Counts this failure for bot `id`.
    pub fn record(self, rec: &Recorder, id: usize) {
        rec.error(
            self.kind,
            Some(self.reason),
            format!("bot {id}: {}", self.message),
        );
    }
}

/// Connects bot `id`, recording a connect failure (and returning None) if it cannot.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    rec: &Recorder,
    id: usize,
) -> Option<TcpStream> {
    let result = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    match result {
        Ok(stream) => {
            // Latency is the point of the tool: never let Nagle hold back a small request.
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Err(e) => {
            rec.connect_failed(
                ConnectFailure::classify(&e),
                format!("bot {id}: connect to {addr}: {e}"),
            );
            None
        }
    }
}

/// Reads more bytes into the decoder. A zero-byte read is the server's EOF.
pub async fn fill(stream: &mut TcpStream, decoder: &mut FrameDecoder) -> Result<usize, Failure> {
    match stream.read_buf(decoder.buffer()).await {
        Ok(0) => Err(Failure::eof()),
        Ok(n) => Ok(n),
        Err(e) => Err(Failure::io(&e, "reading")),
    }
}

/// Writes all of `bytes`, bounded by `timeout` (a server that stops reading must not hang
/// the bot forever).
pub async fn send(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> Result<(), Failure> {
    match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::io(&e, "writing")),
        Err(_) => Err(Failure::new(
            ErrorKind::Timeout,
            DisconnectReason::Timeout,
            "write blocked: the server is not reading",
        )),
    }
}

/// Resolves when the run is told to stop.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, i.e. the run is over as well.
    let _ = stop.wait_for(|s| *s).await;
}
