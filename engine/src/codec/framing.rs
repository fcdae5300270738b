//! Framings that cut a connection's byte stream into messages: `packet`/`bson` (4-byte
//! little-endian length that counts itself; bit 31 marks an encrypted frame, which is cut
//! like any other and opened by the connection with its key, see `codec::crypto`), `text` (lines
//! ending in `\n`) and raw (whatever one read returned). Frames are cut out of the read buffer
//! with `split_to(..).freeze()`, so a frame is never copied between the socket read and Lua.
//!
//! Limits are checked against the 4-byte header *before* any buffer is grown for the frame
//! body, so a hostile length can cost at most one connection, never memory.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Bit 31 of a packet header marks an encrypted body (spec/stage.md §4.2).
pub const ENCRYPTED_FLAG: u32 = 0x8000_0000;
/// The default buffer size when a URL gives none (the original's BUFSIZ).
pub const DEFAULT_BUFFER: usize = 8192;

/// How a connection's stream is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No framing: each read is one message, handed to Lua as a string.
    Raw,
    /// Lines split on `\n`, the newline kept.
    Text,
    /// Length-prefixed BSON documents (`packet=` and `bson=` are the same).
    Packet,
    /// lotus's original wire: a 2-byte big-endian body length, then the body (JSON). The
    /// frame handed on is the body alone. Only lotus listeners use it (no URL filter names it).
    Be16,
    /// lotus's v1 wire: a 4-byte big-endian body length, then the body (MessagePack).
    Be32,
}

/// The framing plus the two buffer limits of a `?filter=IN,OUT` URL part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpec {
    pub framing: Framing,
    /// Input buffer size: the largest frame (or line) a peer may send.
    pub input: usize,
    /// Output buffer size: the most unsent output a connection may hold.
    pub output: usize,
}

impl Default for FrameSpec {
    fn default() -> Self {
        FrameSpec {
            framing: Framing::Raw,
            input: DEFAULT_BUFFER,
            output: DEFAULT_BUFFER,
        }
    }
}

/// Why a URL's filter part was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown filter `{0}` (expected packet, bson or text)")]
    UnknownFilter(String),
    #[error("bad buffer size `{0}` (expected a number with an optional b, k or m suffix)")]
    BadSize(String),
    #[error("buffer size `{0}` is out of range (1 byte to 1 GiB)")]
    SizeOutOfRange(String),
}

/// Why a connection's input could not be cut into frames; the connection is closed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {len} exceeds the input buffer of {limit} bytes (raise IN in `packet=IN,OUT`)")]
    TooLong { len: usize, limit: usize },
    #[error("frame length {len} is shorter than the smallest BSON document (5 bytes)")]
    TooShort { len: usize },
    #[error("line longer than the input buffer of {limit} bytes (raise IN in `text=IN,OUT`)")]
    LineTooLong { limit: usize },
}

impl FrameSpec {
    /// Parses the query part of a broker URL (`packet=4k,10k`, `text=2k:4k`, or empty).
    pub fn parse(query: Option<&str>) -> Result<FrameSpec, FilterError> {
        let Some(query) = query.filter(|q| !q.is_empty()) else {
            return Ok(FrameSpec::default());
        };
        let (name, sizes) = query.split_once('=').unwrap_or((query, ""));
        let framing = match name {
            "packet" | "bson" => Framing::Packet,
            "text" => Framing::Text,
            other => return Err(FilterError::UnknownFilter(other.to_string())),
        };
        // The docs write `IN:OUT`, the original parser takes `IN,OUT`: accept both.
        let mut parts = sizes.splitn(2, [',', ':']);
        let input = parse_size(parts.next().unwrap_or(""))?;
        let output = parse_size(parts.next().unwrap_or(""))?;
        Ok(FrameSpec {
            framing,
            input,
            output,
        })
    }

    /// Cuts the next complete frame off the front of `buf`, or returns `Ok(None)` when more
    /// bytes are needed. A raw stream yields everything buffered as one message.
    pub fn next_frame(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.framing {
            Framing::Raw => Ok((!buf.is_empty()).then(|| buf.split().freeze())),
            // A line (its newline counted) longer than IN is refused whether its newline has
            // arrived yet or not, so the outcome never depends on how the bytes were split
            // into reads.
            Framing::Text => match memchr_newline(&buf[..buf.len().min(self.input)]) {
                Some(end) => Ok(Some(buf.split_to(end + 1).freeze())),
                None if buf.len() >= self.input => {
                    Err(FrameError::LineTooLong { limit: self.input })
                }
                None => Ok(None),
            },
            Framing::Packet => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                let len = ((&buf[..4]).get_u32_le() & !ENCRYPTED_FLAG) as usize;
                if len < 5 {
                    return Err(FrameError::TooShort { len });
                }
                if len > self.input {
                    return Err(FrameError::TooLong {
                        len,
                        limit: self.input,
                    });
                }
                if buf.len() < len {
                    return Ok(None);
                }
                Ok(Some(buf.split_to(len).freeze()))
            }
            Framing::Be16 => self.cut_body(buf, 2),
            Framing::Be32 => self.cut_body(buf, 4),
        }
    }

    /// A big-endian length of `header` bytes that counts only the body, checked against IN
    /// before the body is buffered; the header is dropped.
    fn cut_body(&self, buf: &mut BytesMut, header: usize) -> Result<Option<Bytes>, FrameError> {
        if buf.len() < header {
            return Ok(None);
        }
        let len = buf[..header]
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b));
        if len > self.input {
            return Err(FrameError::TooLong {
                len,
                limit: self.input,
            });
        }
        if buf.len() < header + len {
            return Ok(None);
        }
        buf.advance(header);
        Ok(Some(buf.split_to(len).freeze()))
    }

    /// How many more bytes the frame at the front of `buf` needs, when its header is known;
    /// lets the reader grow the buffer once for a large frame instead of many times.
    pub fn pending_frame_len(&self, buf: &[u8]) -> Option<usize> {
        match self.framing {
            Framing::Be32 if buf.len() >= 4 => {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize + 4;
                return (len - 4 <= self.input && len > buf.len()).then_some(len);
            }
            Framing::Packet if buf.len() >= 4 => {}
            _ => return None,
        }
        let len = (u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) & !ENCRYPTED_FLAG) as usize;
        (len <= self.input && len > buf.len()).then_some(len)
    }
}

fn memchr_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// `4k` → 4096, `10k` → 10240, `1m` → 1048576, `512b`/`512` → 512, empty → the default.
fn parse_size(text: &str) -> Result<usize, FilterError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(DEFAULT_BUFFER);
    }
    let (digits, unit) = match text.as_bytes()[text.len() - 1].to_ascii_lowercase() {
        b'k' => (&text[..text.len() - 1], 1024),
        b'm' => (&text[..text.len() - 1], 1024 * 1024),
        b'b' => (&text[..text.len() - 1], 1),
        _ => (text, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| FilterError::BadSize(text.to_string()))?;
    let size = n
        .checked_mul(unit)
        .filter(|s| (1..=1 << 30).contains(s))
        .ok_or_else(|| FilterError::SizeOutOfRange(text.to_string()))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(input: usize) -> FrameSpec {
        FrameSpec {
            framing: Framing::Packet,
            input,
            output: 1024,
        }
    }

    fn frame(len: u32) -> Vec<u8> {
        let mut f = len.to_le_bytes().to_vec();
        f.resize(len.max(4) as usize, 0);
        f
    }

    #[test]
    fn parses_filters_and_sizes() {
        let spec = FrameSpec::parse(Some("packet=4k,10k")).unwrap();
        assert_eq!(
            (spec.framing, spec.input, spec.output),
            (Framing::Packet, 4096, 10240)
        );
        let spec = FrameSpec::parse(Some("bson=64k:1m")).unwrap();
        assert_eq!((spec.input, spec.output), (65536, 1 << 20));
        let spec = FrameSpec::parse(Some("text=2k")).unwrap();
        assert_eq!(
            (spec.framing, spec.input, spec.output),
            (Framing::Text, 2048, DEFAULT_BUFFER)
        );
        assert_eq!(FrameSpec::parse(None).unwrap(), FrameSpec::default());
        assert_eq!(
            FrameSpec::parse(Some("gzip=1k")),
            Err(FilterError::UnknownFilter("gzip".into()))
        );
        assert!(matches!(
            FrameSpec::parse(Some("packet=4x")),
            Err(FilterError::BadSize(_))
        ));
        assert!(matches!(
            FrameSpec::parse(Some("packet=0")),
            Err(FilterError::SizeOutOfRange(_))
        ));
    }

    #[test]
    fn cuts_packets_at_their_length() {
        let spec = packet(64);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(10));
        buf.extend_from_slice(&frame(5));
        buf.extend_from_slice(&frame(7)[..3]);
        assert_eq!(spec.next_frame(&mut buf).unwrap().unwrap().len(), 10);
        assert_eq!(spec.next_frame(&mut buf).unwrap().unwrap().len(), 5);
        assert_eq!(spec.next_frame(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn a_frame_of_exactly_in_bytes_fits_and_one_more_does_not() {
        let spec = packet(64);
        let mut buf = BytesMut::from(&frame(64)[..]);
        assert_eq!(spec.next_frame(&mut buf).unwrap().unwrap().len(), 64);
        let mut buf = BytesMut::from(&frame(65)[..4]);
        assert_eq!(
            spec.next_frame(&mut buf),
            Err(FrameError::TooLong { len: 65, limit: 64 })
        );
    }

    #[test]
    fn refuses_short_and_huge_headers_before_buffering() {
        let spec = packet(64);
        for len in [0u32, 4] {
            let mut buf = BytesMut::from(&len.to_le_bytes()[..]);
            assert_eq!(
                spec.next_frame(&mut buf),
                Err(FrameError::TooShort { len: len as usize })
            );
        }
        let mut buf = BytesMut::from(&0x7FFF_FFFFu32.to_le_bytes()[..]);
        assert!(matches!(
            spec.next_frame(&mut buf),
            Err(FrameError::TooLong { .. })
        ));
        // Bit 31 is not part of the length: flagged headers obey the same limits.
        for len in [0u32, 4] {
            let mut buf = BytesMut::from(&(ENCRYPTED_FLAG | len).to_le_bytes()[..]);
            assert_eq!(
                spec.next_frame(&mut buf),
                Err(FrameError::TooShort { len: len as usize })
            );
        }
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(matches!(
            spec.next_frame(&mut buf),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn cuts_an_encrypted_frame_at_its_masked_length() {
        let spec = packet(64);
        let mut flagged = frame(20);
        flagged[..4].copy_from_slice(&(ENCRYPTED_FLAG | 20).to_le_bytes());
        let mut buf = BytesMut::from(&flagged[..12]);
        assert_eq!(spec.pending_frame_len(&buf), Some(20));
        assert_eq!(spec.next_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(&flagged[12..]);
        buf.extend_from_slice(&frame(5));
        assert_eq!(
            &spec.next_frame(&mut buf).unwrap().unwrap()[..],
            &flagged[..]
        );
        assert_eq!(spec.next_frame(&mut buf).unwrap().unwrap().len(), 5);
    }

    #[test]
    fn splits_text_lines_and_limits_them() {
        let spec = FrameSpec {
            framing: Framing::Text,
            input: 8,
            output: 8,
        };
        let mut buf = BytesMut::from(&b"ab\ncd\nef"[..]);
        assert_eq!(&spec.next_frame(&mut buf).unwrap().unwrap()[..], b"ab\n");
        assert_eq!(&spec.next_frame(&mut buf).unwrap().unwrap()[..], b"cd\n");
        assert_eq!(spec.next_frame(&mut buf).unwrap(), None);
        let mut buf = BytesMut::from(&b"123456789"[..]);
        assert_eq!(
            spec.next_frame(&mut buf),
            Err(FrameError::LineTooLong { limit: 8 })
        );
        // The same line with its newline in the same buffer: refused the same way.
        let mut buf = BytesMut::from(&b"123456789\n"[..]);
        assert_eq!(
            spec.next_frame(&mut buf),
            Err(FrameError::LineTooLong { limit: 8 })
        );
        // A line of exactly IN bytes, newline included, fits.
        let mut buf = BytesMut::from(&b"1234567\n9"[..]);
        assert_eq!(
            &spec.next_frame(&mut buf).unwrap().unwrap()[..],
            b"1234567\n"
        );
    }

    #[test]
    fn raw_yields_everything_buffered() {
        let spec = FrameSpec::default();
        let mut buf = BytesMut::from(&b"xyz"[..]);
        assert_eq!(&spec.next_frame(&mut buf).unwrap().unwrap()[..], b"xyz");
        assert_eq!(spec.next_frame(&mut buf).unwrap(), None);
    }
}

/// Properties: any byte stream, split into reads anywhere, is cut without a panic, no frame
/// is longer than IN, and the frames do not depend on where the stream was split.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `stream` in pieces of the given sizes and cuts frames after each, as the
    /// connection's reader does; stops at the first error (the connection would close).
    fn cut(spec: &FrameSpec, stream: &[u8], pieces: &[usize]) -> (Vec<Bytes>, Option<FrameError>) {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut rest = stream;
        let mut sizes = pieces.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                match spec.next_frame(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(err) => return (frames, Some(err)),
                }
            }
        }
        (frames, None)
    }

    /// Streams of frames with mostly sensible headers (so that frames are actually cut), and
    /// plain noise.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let framed = proptest::collection::vec(
            (0u32..80, proptest::collection::vec(any::<u8>(), 0..80)),
            0..8,
        )
        .prop_map(|parts| {
            let mut out = Vec::new();
            for (len, body) in parts {
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&body);
            }
            out
        });
        let lines = proptest::collection::vec(
            proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..40),
            0..6,
        )
        .prop_map(|ls| ls.concat());
        prop_oneof![
            framed,
            lines,
            proptest::collection::vec(any::<u8>(), 0..300)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_stream_split_anywhere_is_cut_the_same_within_in(
            bytes in stream(),
            pieces in proptest::collection::vec(1usize..64, 1..8),
            input in 5usize..64,
            which in 0u8..2,
        ) {
            let framing = if which == 0 { Framing::Packet } else { Framing::Text };
            let spec = FrameSpec { framing, input, output: 64 };
            let (frames, err) = cut(&spec, &bytes, &pieces);
            for f in &frames {
                prop_assert!(f.len() <= input, "a frame of {} bytes with IN = {}", f.len(), input);
                if framing == Framing::Packet {
                    prop_assert!(f.len() >= 5);
                    prop_assert_eq!(u32::from_le_bytes([f[0], f[1], f[2], f[3]]) as usize, f.len());
                } else {
                    prop_assert_eq!(f.last(), Some(&b'\n'));
                }
            }
            // The same stream in one piece, and byte by byte: the same frames, the same end.
            for other in [vec![bytes.len().max(1)], vec![1]] {
                let (again, err_again) = cut(&spec, &bytes, &other);
                prop_assert_eq!(&again, &frames);
                prop_assert_eq!(&err_again, &err);
            }
        }

        /// A raw stream yields what was buffered; the reader bounds each read by IN.
        #[test]
        fn raw_yields_every_byte_once(bytes in proptest::collection::vec(any::<u8>(), 0..300), pieces in proptest::collection::vec(1usize..64, 1..8)) {
            let spec = FrameSpec::default();
            let (frames, err) = cut(&spec, &bytes, &pieces);
            prop_assert!(err.is_none());
            prop_assert_eq!(frames.concat(), bytes);
        }
    }
}

#[cfg(test)]
mod lotus_tests {
    use super::*;

    fn spec(framing: Framing, input: usize) -> FrameSpec {
        FrameSpec {
            framing,
            input,
            output: DEFAULT_BUFFER,
        }
    }

    #[test]
    fn big_endian_frames_hand_on_the_body_alone() {
        let mut buf = BytesMut::from(&b"\x00\x03abc\x00\x00\x00\x02xy\x00"[..]);
        let s16 = spec(Framing::Be16, 100);
        assert_eq!(&s16.next_frame(&mut buf).unwrap().unwrap()[..], b"abc");
        let s32 = spec(Framing::Be32, 100);
        assert_eq!(&s32.next_frame(&mut buf).unwrap().unwrap()[..], b"xy");
        assert_eq!(s32.next_frame(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"\x00");
    }

    #[test]
    fn a_big_endian_length_over_in_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&b"\x00\x01\x00\x00"[..]);
        assert_eq!(
            spec(Framing::Be32, 1000).next_frame(&mut buf),
            Err(FrameError::TooLong {
                len: 65536,
                limit: 1000
            })
        );
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x10ab"[..]);
        assert_eq!(spec(Framing::Be32, 100).pending_frame_len(&buf), Some(20));
        assert_eq!(spec(Framing::Be32, 100).next_frame(&mut buf), Ok(None));
    }
}
