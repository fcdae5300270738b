//! What a NATS server sends on a connection, read without waiting: bytes are appended as
//! they arrive and whole operations taken out (`MSG` with its payload, `PING`, `-ERR`). For
//! a core's own subscription (`listen`), which must never block nor grow without bound: a
//! protocol line past [`MAX_LINE`] or a payload past the server's `max_payload` is an error
//! that ends the connection.

/// The longest protocol line read from the server (`INFO` with a long server list).
pub const MAX_LINE: usize = 64 << 10;

#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// A message on one of the connection's subscriptions.
    Msg {
        reply: Option<String>,
        payload: Vec<u8>,
    },
    Ping,
    Pong,
    /// The server's `INFO` line, whole.
    Info(String),
    /// The server's error line: it closes the connection after it.
    Err(String),
    /// Anything else (`+OK`): nothing to do.
    Other,
}

pub struct Reader {
    buf: Vec<u8>,
    /// Where the next operation starts in `buf`.
    start: usize,
    max_payload: usize,
}

impl Reader {
    /// The server's `max_payload`, once its `INFO` said it.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    pub fn new(max_payload: usize) -> Reader {
        Reader {
            buf: Vec::new(),
            start: 0,
            max_payload,
        }
    }

    /// Appends bytes read from the socket, first dropping what was taken already.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole operation, `None` until more bytes arrive.
    pub fn next(&mut self) -> std::io::Result<Option<Op>> {
        let rest = &self.buf[self.start..];
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            if rest.len() > MAX_LINE {
                return Err(bad("a protocol line too long"));
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| bad("a line not UTF-8"))?;
        let op = if let Some(args) = line.strip_prefix("MSG ") {
            let (reply, len) = msg_args(args)?;
            if len > self.max_payload {
                return Err(bad("a message larger than the server's max_payload"));
            }
            let body = end + 2;
            if rest.len() < body + len + 2 {
                return Ok(None);
            }
            if &rest[body + len..body + len + 2] != b"\r\n" {
                return Err(bad("a message payload without its line end"));
            }
            let payload = rest[body..body + len].to_vec();
            self.start += body + len + 2;
            return Ok(Some(Op::Msg { reply, payload }));
        } else if line == "PING" {
            Op::Ping
        } else if line == "PONG" {
            Op::Pong
        } else if line.starts_with("INFO ") {
            Op::Info(line.to_string())
        } else if line.starts_with("-ERR") {
            Op::Err(line.to_string())
        } else {
            Op::Other
        };
        self.start += end + 2;
        Ok(Some(op))
    }
}

/// `<subject> <sid> [reply-to] <#bytes>`: the reply subject and the payload's length.
fn msg_args(args: &str) -> std::io::Result<(Option<String>, usize)> {
    let parts: Vec<&str> = args.split(' ').filter(|p| !p.is_empty()).collect();
    let (reply, len) = match parts.as_slice() {
        [_, _, len] => (None, len),
        [_, _, reply, len] => (Some(reply.to_string()), len),
        _ => return Err(bad("a malformed MSG line")),
    };
    let len = len.parse().map_err(|_| bad("a malformed MSG length"))?;
    Ok((reply, len))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(reply: Option<&str>, payload: &[u8]) -> Op {
        Op::Msg {
            reply: reply.map(str::to_string),
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn operations_are_taken_whole_however_the_bytes_arrive() {
        let wire: &[u8] =
            b"INFO {}\r\nMSG stage.m.a.1.0 1 5\r\nhello\r\nPING\r\nMSG s 1 stage.m.b.1.2 2\r\n\r\n\r\n+OK\r\nPONG\r\n-ERR 'x'\r\n";
        let want = vec![
            Op::Info("INFO {}".into()),
            msg(None, b"hello"),
            Op::Ping,
            msg(Some("stage.m.b.1.2"), b"\r\n"),
            Op::Other,
            Op::Pong,
            Op::Err("-ERR 'x'".into()),
        ];
        // All at once, and one byte at a time.
        for step in [wire.len(), 1] {
            let mut r = Reader::new(1024);
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                r.extend(chunk);
                while let Some(op) = r.next().unwrap() {
                    got.push(op);
                }
            }
            assert_eq!(got, want, "chunks of {step}");
        }
    }

    #[test]
    fn what_breaks_the_protocol_or_its_bounds_is_an_error() {
        for wire in [
            &b"MSG s 1 10\r\n"[..],
            b"MSG s 5\r\n",
            b"MSG s 1 x\r\n",
            b"MSG s 1 2\r\nabcd",
        ] {
            let mut r = Reader::new(4);
            r.extend(wire);
            let max = if wire == b"MSG s 1 10\r\n" {
                "max_payload"
            } else {
                ""
            };
            let err = r.next().unwrap_err().to_string();
            assert!(err.contains(max), "{err}");
        }
        let mut r = Reader::new(4);
        r.extend(&vec![b'x'; MAX_LINE + 1]);
        assert!(r.next().is_err(), "no line end within MAX_LINE");
    }
}
