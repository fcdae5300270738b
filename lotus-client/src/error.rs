//! What a client call can fail with: the server's error code and message (spec/lotus.md
//! §9.6), or what happened on this side (I/O, timeout, a lost connection, a full queue).

use std::time::Duration;

use rmpv::Value;

/// A lotus client error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server refused the request: `code` is one of spec §9.6's codes (`auth_failed`,
    /// `unknown_type`, `compile_error`, `state_not_found`, `handler_error`, ...), `message`
    /// its text and `detail` the whole detail map (e.g. `handler` for `compile_error`,
    /// `depth` for `path_missing`).
    #[error("{code}: {message}")]
    Server {
        code: String,
        message: String,
        detail: Value,
    },
    /// Connecting, reading or writing failed.
    #[error("i/o: {0}")]
    Io(String),
    /// No reply within `ClientConfig::request_timeout` (queueing included).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection broke after the request was sent: it may or may not have run.
    #[error("the connection was lost before the reply")]
    Disconnected,
    /// The client was shut down.
    #[error("the client is closed")]
    Closed,
    /// The server sent something that is not wire v1.
    #[error("protocol: {0}")]
    Protocol(String),
    /// This client already has a live subscription to the channel (one per channel).
    #[error("already subscribed to channel `{0}`")]
    AlreadySubscribed(String),
}

impl Error {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn from_reply(code: String, detail: Value) -> Error {
        let message = crate::frame::field(&detail, "message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Error::Server {
            code,
            message,
            detail,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
