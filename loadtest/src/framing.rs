//! Cutting the server's byte stream into messages, for the three STAGE framings (spec §4.2):
//! `packet` (4-byte little-endian length that counts itself, then a BSON document), `text`
//! (lines ending in `\n`) and `raw` (whatever arrived). TCP may split or merge messages at
//! any byte, so the decoder buffers and yields only complete messages; it checks sizes before
//! buffering so a misbehaving server cannot make a bot allocate without limit.

use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// The wire framing, as chosen with `--framing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// 4-byte LE length (counting itself) + BSON document `{"v": {...}}`.
    Packet,
    /// Lines ending in `\n`.
    Text,
    /// No boundaries: bytes as they arrive.
    Raw,
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Packet => "packet",
            Framing::Text => "text",
            Framing::Raw => "raw",
        })
    }
}

/// Bit 31 of a packet header marks an encrypted frame; a bot has no key, so it cannot read one.
const ENCRYPTED: u32 = 0x8000_0000;

/// Why the server's bytes cannot be framed: the connection is unusable after that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Packet header declares a length of 4 or less (no room for a BSON document).
    TooShort(u32),
    /// Packet or line larger than the configured maximum.
    TooLong { len: usize, max: usize },
    /// Packet with the encryption bit set.
    Encrypted,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort(n) => write!(f, "frame length {n} is too short"),
            FrameError::TooLong { len, max } => {
                write!(f, "message of {len} bytes exceeds the {max}-byte limit")
            }
            FrameError::Encrypted => write!(f, "encrypted frame (bot has no key)"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Accumulates received bytes and yields complete messages.
pub struct FrameDecoder {
    framing: Framing,
    max: usize,
    buf: BytesMut,
}

impl FrameDecoder {
    /// `max` bounds one packet or line (raw messages are bounded by the read size anyway).
    pub fn new(framing: Framing, max: usize) -> Self {
        Self {
            framing,
            max,
            buf: BytesMut::with_capacity(8192),
        }
    }

    /// The buffer to read into (callers use `read_buf`, which appends).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends bytes (tests, and callers that read elsewhere).
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet part of a complete message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, if the buffer holds one. Packets are returned whole
    /// (header included, i.e. exactly a BSON document); lines include their `\n`.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        match self.framing {
            Framing::Packet => {
                if self.buf.len() < 4 {
                    return Ok(None);
                }
                let header =
                    u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if header & ENCRYPTED != 0 {
                    return Err(FrameError::Encrypted);
                }
                if header <= 4 {
                    return Err(FrameError::TooShort(header));
                }
                let len = header as usize;
                if len > self.max {
                    return Err(FrameError::TooLong { len, max: self.max });
                }
                if self.buf.len() < len {
                    // Reserve now so the next reads fill the frame without re-growing.
                    self.buf.reserve(len - self.buf.len());
                    return Ok(None);
                }
                Ok(Some(self.buf.split_to(len).freeze()))
            }
            Framing::Text => match self.buf.iter().position(|&b| b == b'\n') {
                Some(i) if i < self.max => Ok(Some(self.buf.split_to(i + 1).freeze())),
                Some(i) => Err(FrameError::TooLong {
                    len: i + 1,
                    max: self.max,
                }),
                None if self.buf.len() >= self.max => Err(FrameError::TooLong {
                    len: self.buf.len(),
                    max: self.max,
                }),
                None => Ok(None),
            },
            Framing::Raw => {
                if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(self.buf.split().freeze()))
                }
            }
        }
    }

    /// Drops `n` buffered bytes (raw echo counts bytes instead of cutting messages).
    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n.min(self.buf.len()));
    }
}

/// Wraps a BSON body as a packet. A BSON document already starts with its own length, which
/// is exactly the packet header, so this is the identity; it exists to say so in one place.
pub fn packet(bson_document: Vec<u8>) -> Vec<u8> {
    debug_assert!(bson_document.len() >= 5);
    bson_document
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bson::{self, Document, Value};

    fn frame(text: &str) -> Vec<u8> {
        let doc = Document::new().with(
            "v",
            Value::Document(Document::new().with("message", Value::str(text))),
        );
        packet(bson::to_vec(&doc).unwrap())
    }

    fn drain(d: &mut FrameDecoder) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(m) = d.next_message().unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn packets_split_at_every_byte() {
        let mut stream = frame("one");
        stream.extend(frame("two"));
        stream.extend(frame("three"));
        // Feed the stream cut at every possible pair of points: messages must come out whole.
        for a in 0..stream.len() {
            for b in a..stream.len() {
                let mut d = FrameDecoder::new(Framing::Packet, 4096);
                let mut got = Vec::new();
                for part in [&stream[..a], &stream[a..b], &stream[b..]] {
                    d.extend(part);
                    got.extend(drain(&mut d));
                }
                assert_eq!(got.len(), 3, "cuts {a},{b}");
                assert_eq!(got.concat(), stream);
                assert_eq!(d.pending(), 0);
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let f = frame("hello");
        let mut d = FrameDecoder::new(Framing::Packet, 4096);
        for (i, b) in f.iter().enumerate() {
            d.extend(&[*b]);
            let m = d.next_message().unwrap();
            assert_eq!(m.is_some(), i == f.len() - 1);
            if let Some(m) = m {
                let doc = bson::decode_document(&m).unwrap();
                assert!(doc.first().unwrap().as_document().is_some());
            }
        }
    }

    #[test]
    fn packet_errors() {
        let mut d = FrameDecoder::new(Framing::Packet, 100);
        d.extend(&[4, 0, 0, 0]);
        assert_eq!(d.next_message(), Err(FrameError::TooShort(4)));

        let mut d = FrameDecoder::new(Framing::Packet, 100);
        d.extend(&101u32.to_le_bytes());
        assert_eq!(
            d.next_message(),
            Err(FrameError::TooLong { len: 101, max: 100 })
        );

        let mut d = FrameDecoder::new(Framing::Packet, 100);
        d.extend(&(ENCRYPTED | 12).to_le_bytes());
        assert_eq!(d.next_message(), Err(FrameError::Encrypted));

        // An incomplete header is not an error, just not a message yet.
        let mut d = FrameDecoder::new(Framing::Packet, 100);
        d.extend(&[9, 0]);
        assert_eq!(d.next_message(), Ok(None));
    }

    #[test]
    fn text_lines_split_and_merged() {
        let mut d = FrameDecoder::new(Framing::Text, 64);
        d.extend(b"ab");
        assert_eq!(d.next_message(), Ok(None));
        d.extend(b"c\nde\n\nf");
        let got = drain(&mut d);
        assert_eq!(got, vec![&b"abc\n"[..], &b"de\n"[..], &b"\n"[..]]);
        assert_eq!(d.pending(), 1);
        d.extend(b"\n");
        assert_eq!(drain(&mut d), vec![&b"f\n"[..]]);
    }

    #[test]
    fn text_line_limit() {
        let mut d = FrameDecoder::new(Framing::Text, 4);
        d.extend(b"abcd");
        assert!(matches!(d.next_message(), Err(FrameError::TooLong { .. })));
        let mut d = FrameDecoder::new(Framing::Text, 4);
        d.extend(b"abc\n");
        assert_eq!(d.next_message().unwrap().unwrap(), &b"abc\n"[..]);
    }

    #[test]
    fn raw_yields_everything_and_consume_counts() {
        let mut d = FrameDecoder::new(Framing::Raw, 16);
        assert_eq!(d.next_message(), Ok(None));
        d.extend(b"xyz");
        assert_eq!(d.next_message().unwrap().unwrap(), &b"xyz"[..]);
        d.extend(b"12345");
        d.consume(2);
        assert_eq!(d.pending(), 3);
        d.consume(10);
        assert_eq!(d.pending(), 0);
    }
}
