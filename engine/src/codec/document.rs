//! A small BSON document reader and writer for engine-side formats that must be read and
//! written without a Lua state (the stage-to-stage envelope, `node::envelope`). It knows only
//! the element types such formats use — double, string, embedded document, boolean, null,
//! int32 and int64 — and keeps an embedded document as its raw bytes (framing checked,
//! contents not read), so a caller can carry a nested value it does not interpret. The full
//! BSON <-> Lua codec is `script::bson`; this one never builds values of its own beyond the
//! element it is asked for.
//!
//! The reader faces bytes from other processes, so every length is checked against the bytes
//! actually there before anything is sliced or copied, and malformed input is an error (with
//! the byte offset of the offending item), never a panic. It allocates nothing: elements
//! borrow from the input. The writer checks what BSON cannot represent (a key with a NUL, a
//! length past `i32::MAX`, an embedded document that is not one) and reports it instead of
//! writing a corrupt document.
//!
//! The shared BSON limits (`codec::bson_limits`) hold here too: [`elements`] yields at most
//! `MAX_ELEMENTS` elements of one document, and [`validate`] walks a document with everything
//! embedded in it, at most `MAX_DEPTH` levels and `MAX_ELEMENTS` elements over all of them.

use super::bson_limits::{self, Limit, MAX_DEPTH, MAX_ELEMENTS};

/// BSON element type bytes this module reads and writes.
pub mod types {
    pub const DOUBLE: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const DOCUMENT: u8 = 0x03;
    pub const BOOL: u8 = 0x08;
    pub const NULL: u8 = 0x0A;
    pub const INT32: u8 = 0x10;
    pub const INT64: u8 = 0x12;
}

/// The largest document BSON can describe: its length is a signed 32-bit integer.
pub const MAX_DOCUMENT: usize = i32::MAX as usize;

/// The smallest document: a 4-byte length and the terminating NUL.
const MIN_DOCUMENT: usize = 5;

/// One element's value, borrowed from the document it was read from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Element<'a> {
    Double(f64),
    /// A string's bytes without the terminating NUL. BSON says UTF-8, but the engine's Lua
    /// codec writes any Lua string here, so checking the encoding is the caller's choice.
    String(&'a [u8]),
    /// An embedded document, whole (length prefix and terminator included). Its framing is
    /// checked; its elements are not read.
    Document(&'a [u8]),
    Bool(bool),
    Null,
    Int32(i32),
    Int64(i64),
}

impl Element<'_> {
    /// The BSON name of the element's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Element::Double(_) => "double",
            Element::String(_) => "string",
            Element::Document(_) => "document",
            Element::Bool(_) => "boolean",
            Element::Null => "null",
            Element::Int32(_) => "int32",
            Element::Int64(_) => "int64",
        }
    }
}

/// What can be wrong with a document read or written here. Offsets are bytes from the start
/// of the top-level document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("bson truncated: {what} at offset {offset} needs {need} bytes, only {have} remain")]
    Truncated {
        what: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("bson document at offset {offset} declares length {declared} but {available} bytes are available")]
    BadLength {
        offset: usize,
        declared: i64,
        available: usize,
    },
    #[error("bson document at offset {offset} is missing its 0x00 terminator")]
    MissingTerminator { offset: usize },
    #[error("bson key at offset {offset} is not nul-terminated")]
    UnterminatedKey { offset: usize },
    #[error("bson string at offset {offset} has invalid length {len}")]
    BadStringLength { offset: usize, len: i64 },
    #[error("bson string at offset {offset} is not nul-terminated")]
    UnterminatedString { offset: usize },
    #[error("bson boolean at offset {offset} has invalid byte 0x{byte:02x}")]
    BadBoolean { offset: usize, byte: u8 },
    #[error("bson type 0x{ty:02x} of key {key:?} at offset {offset} is not supported here")]
    UnsupportedType { key: String, ty: u8, offset: usize },
    #[error("bson key {key:?} contains a nul byte")]
    NulInKey { key: String },
    #[error("bson value of key {key:?} is too large ({len} bytes)")]
    TooLarge { key: String, len: usize },
    #[error("bson nesting deeper than {limit} levels at offset {offset}")]
    TooDeep { offset: usize, limit: usize },
    #[error("bson document with more than {limit} elements")]
    TooManyElements { limit: usize },
    #[error("value of key {key:?} is not a bson document: {why}")]
    NotADocument {
        key: String,
        why: Box<DocumentError>,
    },
}

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// `N` bytes at `pos`, which must end at or before `limit` (itself within `buf`).
fn fixed<const N: usize>(
    buf: &[u8],
    pos: usize,
    limit: usize,
    what: &'static str,
) -> Result<[u8; N], DocumentError> {
    let have = limit.saturating_sub(pos);
    match buf.get(pos..limit).and_then(|b| b.first_chunk::<N>()) {
        Some(bytes) => Ok(*bytes),
        None => Err(DocumentError::Truncated {
            what,
            offset: pos,
            need: N,
            have,
        }),
    }
}

/// Checks the framing of the document at `pos` that must fit in `buf[pos..limit]`: a length
/// of at least 5 that fits, and the terminating NUL where the length says. Returns the
/// document's length.
fn framed(buf: &[u8], pos: usize, limit: usize) -> Result<usize, DocumentError> {
    let declared = i32::from_le_bytes(fixed(buf, pos, limit, "document length")?);
    let available = limit - pos;
    let len = usize::try_from(declared).unwrap_or(0);
    if len < MIN_DOCUMENT || len > available {
        return Err(DocumentError::BadLength {
            offset: pos,
            declared: declared.into(),
            available,
        });
    }
    let last = pos + len - 1;
    if buf[last] != 0 {
        return Err(DocumentError::MissingTerminator { offset: last });
    }
    Ok(len)
}

/// Checks that `doc` is exactly one document: its declared length is `doc.len()` and it ends
/// in its terminator. The elements are not read.
pub fn check(doc: &[u8]) -> Result<(), DocumentError> {
    let len = framed(doc, 0, doc.len())?;
    if len != doc.len() {
        return Err(DocumentError::BadLength {
            offset: 0,
            declared: len as i64,
            available: doc.len(),
        });
    }
    Ok(())
}

/// The elements of the document `doc`, in order, as `(key, value)`. The document's framing is
/// checked at once; each element as it is reached. After an error the iteration ends.
pub fn elements(doc: &[u8]) -> Result<Elements<'_>, DocumentError> {
    check(doc)?;
    Ok(Elements {
        doc,
        pos: 4,
        end: doc.len() - 1,
        count: 0,
    })
}

/// Checks `doc` and every document embedded in it, element by element: the framing and
/// types [`elements`] checks, at most `MAX_DEPTH` levels (`doc` is level 1) and at most
/// `MAX_ELEMENTS` elements over all levels. For a caller about to keep or pass on a document
/// whose nested parts it does not read itself.
pub fn validate(doc: &[u8]) -> Result<(), DocumentError> {
    let mut total = 0;
    walk(doc, 1, 0, &mut total)
}

/// [`validate`] of the document `doc` at nesting level `depth`, which starts `at` bytes into
/// the top-level document; `total` counts the elements seen so far.
fn walk(doc: &[u8], depth: usize, at: usize, total: &mut usize) -> Result<(), DocumentError> {
    if depth > MAX_DEPTH {
        bson_limits::hit(Limit::Depth);
        return Err(DocumentError::TooDeep {
            offset: at,
            limit: MAX_DEPTH,
        });
    }
    for item in elements(doc)? {
        let (_, value) = item?;
        *total += 1;
        if *total > MAX_ELEMENTS {
            bson_limits::hit(Limit::Elements);
            return Err(DocumentError::TooManyElements {
                limit: MAX_ELEMENTS,
            });
        }
        if let Element::Document(inner) = value {
            // `inner` borrows from `doc`: its offset is where it sits in the slice.
            let offset = at + (inner.as_ptr() as usize - doc.as_ptr() as usize);
            walk(inner, depth + 1, offset, total)?;
        }
    }
    Ok(())
}

/// The iterator [`elements`] returns.
pub struct Elements<'a> {
    doc: &'a [u8],
    /// Where the next element starts.
    pos: usize,
    /// The document's terminator: every element ends at or before it.
    end: usize,
    /// Elements yielded so far: at most `MAX_ELEMENTS`.
    count: usize,
}

impl<'a> Elements<'a> {
    fn read(&mut self) -> Result<(&'a [u8], Element<'a>), DocumentError> {
        let (buf, start, end) = (self.doc, self.pos, self.end);
        let ty = buf[start];
        let key_at = start + 1;
        let key_area = &buf[key_at..end];
        let Some(nul) = key_area.iter().position(|&b| b == 0) else {
            return Err(DocumentError::UnterminatedKey { offset: key_at });
        };
        let key = &key_area[..nul];
        let at = key_at + nul + 1;
        let (value, size) = match ty {
            types::DOUBLE => (
                Element::Double(f64::from_le_bytes(fixed(buf, at, end, "double")?)),
                8,
            ),
            types::STRING => {
                let len = i32::from_le_bytes(fixed(buf, at, end, "string length")?);
                let have = end - at - 4;
                let bytes = usize::try_from(len).unwrap_or(0);
                if bytes < 1 || bytes > have {
                    return Err(DocumentError::BadStringLength {
                        offset: at,
                        len: len.into(),
                    });
                }
                let nul = at + 4 + bytes - 1;
                if buf[nul] != 0 {
                    return Err(DocumentError::UnterminatedString { offset: at });
                }
                (Element::String(&buf[at + 4..nul]), 4 + bytes)
            }
            types::DOCUMENT => {
                let len = framed(buf, at, end)?;
                (Element::Document(&buf[at..at + len]), len)
            }
            types::BOOL => {
                let [byte] = fixed(buf, at, end, "boolean")?;
                if byte > 1 {
                    return Err(DocumentError::BadBoolean { offset: at, byte });
                }
                (Element::Bool(byte == 1), 1)
            }
            types::NULL => (Element::Null, 0),
            types::INT32 => (
                Element::Int32(i32::from_le_bytes(fixed(buf, at, end, "int32")?)),
                4,
            ),
            types::INT64 => (
                Element::Int64(i64::from_le_bytes(fixed(buf, at, end, "int64")?)),
                8,
            ),
            _ => {
                return Err(DocumentError::UnsupportedType {
                    key: key_text(key),
                    ty,
                    offset: start,
                })
            }
        };
        self.pos = at + size;
        Ok((key, value))
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<(&'a [u8], Element<'a>), DocumentError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        self.count += 1;
        if self.count > MAX_ELEMENTS {
            bson_limits::hit(Limit::Elements);
            self.pos = self.end;
            return Some(Err(DocumentError::TooManyElements {
                limit: MAX_ELEMENTS,
            }));
        }
        let item = self.read();
        if item.is_err() {
            // Nothing after a malformed element can be found reliably.
            self.pos = self.end;
        }
        Some(item)
    }
}

/// Writes one document, element by element; [`Writer::finish`] patches in its length.
pub struct Writer {
    out: Vec<u8>,
}

impl Default for Writer {
    fn default() -> Self {
        Writer::with_capacity(64)
    }
}

impl Writer {
    /// A writer whose buffer starts with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Writer {
        let mut out = Vec::with_capacity(capacity.max(MIN_DOCUMENT));
        // The length, patched by `finish`.
        out.extend_from_slice(&[0; 4]);
        Writer { out }
    }

    fn header(&mut self, ty: u8, key: &str) -> Result<(), DocumentError> {
        if key.as_bytes().contains(&0) {
            return Err(DocumentError::NulInKey { key: key.into() });
        }
        self.out.push(ty);
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(0);
        Ok(())
    }

    pub fn double(&mut self, key: &str, value: f64) -> Result<(), DocumentError> {
        self.header(types::DOUBLE, key)?;
        self.out.extend_from_slice(&value.to_le_bytes());
        Ok(())
    }

    /// A string element; `value` may hold any bytes (NUL included: the length says where
    /// the string ends).
    pub fn string(&mut self, key: &str, value: &[u8]) -> Result<(), DocumentError> {
        let len = i32::try_from(value.len() + 1).map_err(|_| DocumentError::TooLarge {
            key: key.into(),
            len: value.len(),
        })?;
        self.header(types::STRING, key)?;
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(value);
        self.out.push(0);
        Ok(())
    }

    /// An embedded document given whole; its framing is checked so that a bad one cannot
    /// corrupt the document around it.
    pub fn document(&mut self, key: &str, doc: &[u8]) -> Result<(), DocumentError> {
        check(doc).map_err(|why| DocumentError::NotADocument {
            key: key.into(),
            why: Box::new(why),
        })?;
        self.header(types::DOCUMENT, key)?;
        self.out.extend_from_slice(doc);
        Ok(())
    }

    pub fn bool(&mut self, key: &str, value: bool) -> Result<(), DocumentError> {
        self.header(types::BOOL, key)?;
        self.out.push(u8::from(value));
        Ok(())
    }

    pub fn null(&mut self, key: &str) -> Result<(), DocumentError> {
        self.header(types::NULL, key)
    }

    pub fn int32(&mut self, key: &str, value: i32) -> Result<(), DocumentError> {
        self.header(types::INT32, key)?;
        self.out.extend_from_slice(&value.to_le_bytes());
        Ok(())
    }

    pub fn int64(&mut self, key: &str, value: i64) -> Result<(), DocumentError> {
        self.header(types::INT64, key)?;
        self.out.extend_from_slice(&value.to_le_bytes());
        Ok(())
    }

    /// The finished document: terminator written, length patched in.
    pub fn finish(mut self) -> Result<Vec<u8>, DocumentError> {
        self.out.push(0);
        let len = self.out.len();
        let declared = i32::try_from(len).map_err(|_| DocumentError::TooLarge {
            key: String::new(),
            len,
        })?;
        self.out[..4].copy_from_slice(&declared.to_le_bytes());
        Ok(self.out)
    }
}

/// Documents built byte by byte for tests anywhere in the engine, independently of every
/// writer (this module's, the envelope's, the Lua codec's), so a reader is never checked only
/// against its own twin.
#[cfg(test)]
pub(crate) mod handmade {
    /// A document from raw elements: (type byte, key, value bytes).
    pub(crate) fn raw(elems: &[(u8, &str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (ty, key, value) in elems {
            body.push(*ty);
            body.extend_from_slice(key.as_bytes());
            body.push(0);
            body.extend_from_slice(value);
        }
        let mut out = ((body.len() + 5) as i32).to_le_bytes().to_vec();
        out.extend_from_slice(&body);
        out.push(0);
        out
    }

    /// The value bytes of a BSON string: length (counting the NUL), bytes, NUL.
    pub(crate) fn bstr(s: &[u8]) -> Vec<u8> {
        let mut v = ((s.len() + 1) as i32).to_le_bytes().to_vec();
        v.extend_from_slice(s);
        v.push(0);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::handmade::{bstr, raw};
    use super::*;

    fn read_all(doc: &[u8]) -> Result<Vec<(Vec<u8>, String)>, DocumentError> {
        elements(doc)?
            .map(|e| e.map(|(k, v)| (k.to_vec(), format!("{v:?}"))))
            .collect()
    }

    const EMPTY: [u8; 5] = [5, 0, 0, 0, 0];

    #[test]
    fn reads_every_supported_type() {
        let inner = raw(&[(types::INT32, "x", &7i32.to_le_bytes())]);
        let doc = raw(&[
            (types::DOUBLE, "d", &1.5f64.to_le_bytes()),
            (types::STRING, "s", &bstr(b"a\0b")),
            (types::DOCUMENT, "o", &inner),
            (types::BOOL, "t", &[1]),
            (types::BOOL, "f", &[0]),
            (types::NULL, "n", &[]),
            (types::INT32, "i", &(-3i32).to_le_bytes()),
            (types::INT64, "l", &(1i64 << 40).to_le_bytes()),
        ]);
        let got: Vec<_> = elements(&doc).unwrap().map(Result::unwrap).collect();
        assert_eq!(
            got,
            vec![
                (&b"d"[..], Element::Double(1.5)),
                (b"s", Element::String(b"a\0b")),
                (b"o", Element::Document(&inner)),
                (b"t", Element::Bool(true)),
                (b"f", Element::Bool(false)),
                (b"n", Element::Null),
                (b"i", Element::Int32(-3)),
                (b"l", Element::Int64(1 << 40)),
            ]
        );
        assert_eq!(elements(&EMPTY).unwrap().count(), 0);
    }

    #[test]
    fn the_writer_and_the_reader_agree() {
        let inner = raw(&[(types::BOOL, "b", &[1])]);
        let mut w = Writer::default();
        w.double("d", -0.0).unwrap();
        w.string("s", b"x\xff").unwrap();
        w.document("o", &inner).unwrap();
        w.bool("b", true).unwrap();
        w.null("n").unwrap();
        w.int32("i", i32::MIN).unwrap();
        w.int64("l", i64::MAX).unwrap();
        let doc = w.finish().unwrap();
        assert_eq!(
            doc,
            raw(&[
                (types::DOUBLE, "d", &(-0.0f64).to_le_bytes()),
                (types::STRING, "s", &bstr(b"x\xff")),
                (types::DOCUMENT, "o", &inner),
                (types::BOOL, "b", &[1]),
                (types::NULL, "n", &[]),
                (types::INT32, "i", &i32::MIN.to_le_bytes()),
                (types::INT64, "l", &i64::MAX.to_le_bytes()),
            ])
        );
        assert_eq!(Writer::default().finish().unwrap(), EMPTY);
    }

    #[test]
    fn the_writer_refuses_what_bson_cannot_say() {
        let mut w = Writer::default();
        assert!(matches!(
            w.int32("a\0b", 1),
            Err(DocumentError::NulInKey { .. })
        ));
        for bad in [&b""[..], &[6, 0, 0, 0, 0], &[5, 0, 0, 0, 1], &[4, 0, 0, 0]] {
            assert!(
                matches!(
                    w.document("v", bad),
                    Err(DocumentError::NotADocument { .. })
                ),
                "{bad:?}"
            );
        }
        // Nothing of the refused elements was written.
        assert_eq!(w.finish().unwrap(), EMPTY);
    }

    /// A malformed document's name, its bytes, and the test its error must pass.
    type Case = (&'static str, Vec<u8>, fn(&DocumentError) -> bool);

    /// Table-driven: each malformed document and the error it must give.
    #[test]
    fn malformed_documents_are_errors() {
        let cases: Vec<Case> = vec![
            ("empty input", vec![], |e| {
                matches!(e, DocumentError::Truncated { .. })
            }),
            ("short length", vec![5, 0, 0], |e| {
                matches!(e, DocumentError::Truncated { .. })
            }),
            ("length too small", vec![4, 0, 0, 0], |e| {
                matches!(e, DocumentError::BadLength { .. })
            }),
            ("negative length", vec![0xff, 0xff, 0xff, 0xff, 0], |e| {
                matches!(e, DocumentError::BadLength { .. })
            }),
            ("length past the end", vec![9, 0, 0, 0, 0], |e| {
                matches!(e, DocumentError::BadLength { .. })
            }),
            ("length short of the end", vec![5, 0, 0, 0, 0, 0], |e| {
                matches!(e, DocumentError::BadLength { .. })
            }),
            ("no terminator", vec![5, 0, 0, 0, 1], |e| {
                matches!(e, DocumentError::MissingTerminator { .. })
            }),
            (
                "key runs into the end",
                vec![7, 0, 0, 0, 0x10, b'k', 0],
                |e| matches!(e, DocumentError::UnterminatedKey { .. }),
            ),
            (
                "int32 cut short",
                raw(&[(types::INT32, "i", &[1, 2])]),
                |e| matches!(e, DocumentError::Truncated { .. }),
            ),
            (
                "double cut short",
                raw(&[(types::DOUBLE, "d", &[0; 7])]),
                |e| matches!(e, DocumentError::Truncated { .. }),
            ),
            (
                "string length zero",
                raw(&[(types::STRING, "s", &[0, 0, 0, 0])]),
                |e| matches!(e, DocumentError::BadStringLength { .. }),
            ),
            (
                "string longer than the document",
                raw(&[(types::STRING, "s", &[50, 0, 0, 0, b'a', 0])]),
                |e| matches!(e, DocumentError::BadStringLength { .. }),
            ),
            (
                "string without its nul",
                raw(&[(types::STRING, "s", &[2, 0, 0, 0, b'a', b'b'])]),
                |e| matches!(e, DocumentError::UnterminatedString { .. }),
            ),
            (
                "embedded document too long",
                raw(&[(types::DOCUMENT, "o", &[6, 0, 0, 0, 0])]),
                |e| matches!(e, DocumentError::BadLength { .. }),
            ),
            (
                "embedded document reaching the outer terminator",
                {
                    // The inner length covers the outer document's last byte too.
                    let mut d = raw(&[(types::DOCUMENT, "o", &[5, 0, 0, 0, 0])]);
                    let at = d.len() - 6;
                    d[at] = 6;
                    d
                },
                |e| matches!(e, DocumentError::BadLength { .. }),
            ),
            (
                "embedded document without terminator",
                raw(&[(types::DOCUMENT, "o", &[5, 0, 0, 0, 7])]),
                |e| matches!(e, DocumentError::MissingTerminator { .. }),
            ),
            ("boolean 2", raw(&[(types::BOOL, "b", &[2])]), |e| {
                matches!(e, DocumentError::BadBoolean { byte: 2, .. })
            }),
            (
                "binary",
                raw(&[(0x05, "bin", &[0, 0, 0, 0, 0])]),
                |e| matches!(e, DocumentError::UnsupportedType { ty: 0x05, key, .. } if key == "bin"),
            ),
            ("array", raw(&[(0x04, "a", &EMPTY)]), |e| {
                matches!(e, DocumentError::UnsupportedType { ty: 0x04, .. })
            }),
        ];
        for (what, doc, expected) in cases {
            match read_all(&doc) {
                Ok(got) => panic!("{what}: read as {got:?}"),
                Err(err) => assert!(expected(&err), "{what}: {err}"),
            }
        }
    }

    /// Every prefix of a valid document, with its length field made to match or not, and
    /// every single-byte corruption: an error or a value, never a panic, and never a value
    /// read from outside the input.
    #[test]
    fn truncated_and_garbled_input_never_panics() {
        let inner = raw(&[(types::STRING, "x", &bstr(b"inner"))]);
        let doc = raw(&[
            (types::STRING, "i", &bstr(b"game:hello")),
            (types::INT64, "t", &3i64.to_le_bytes()),
            (types::DOUBLE, "d", &1e12f64.to_le_bytes()),
            (types::DOCUMENT, "v", &inner),
            (types::BOOL, "b", &[1]),
            (types::NULL, "z", &[]),
            (types::INT32, "g", &9i32.to_le_bytes()),
        ]);
        assert_eq!(read_all(&doc).unwrap().len(), 7);
        for cut in 0..doc.len() {
            let mut d = doc[..cut].to_vec();
            assert!(read_all(&d).is_err(), "prefix {cut} read as a document");
            if d.len() >= 4 {
                d[..4].copy_from_slice(&(cut as i32).to_le_bytes());
                let _ = read_all(&d);
            }
        }
        // Deterministic pseudo-random corruption (xorshift), many rounds.
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut survived = 0;
        for _ in 0..20_000 {
            let mut d = doc.clone();
            for _ in 0..1 + next() % 3 {
                let r = next();
                let at = (r >> 8) as usize % d.len();
                match r % 3 {
                    0 => d[at] = (r >> 32) as u8,
                    1 => d[at] = d[at].wrapping_add(((r >> 32) % 5) as u8).wrapping_sub(2),
                    _ => {
                        d.remove(at);
                        if d.is_empty() {
                            break;
                        }
                        // Keep the outer length right so the elements are what is tested.
                        if d.len() >= 4 && r & (1 << 40) != 0 {
                            let len = d.len() as i32;
                            d[..4].copy_from_slice(&len.to_le_bytes());
                        }
                    }
                }
            }
            if let Ok(items) = read_all(&d) {
                survived += 1;
                assert!(items.len() <= 7 + d.len());
            }
        }
        assert!(survived > 0, "the corruption rejected everything");
    }
}

/// Properties: any bytes are read without a panic, and what the writer writes reads back.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// A value the writer can write, embedded documents as trees.
    #[derive(Debug, Clone)]
    enum Tree {
        Double(u64),
        String(Vec<u8>),
        Document(Vec<(String, Tree)>),
        Bool(bool),
        Null,
        Int32(i32),
        Int64(i64),
    }

    fn key() -> impl Strategy<Value = String> {
        proptest::collection::vec(1u8..=0x7F, 0..8)
            .prop_map(|b| String::from_utf8(b).expect("ascii without nul"))
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = prop_oneof![
            // Any bits: NaNs with every payload, infinities, -0.0.
            any::<u64>().prop_map(Tree::Double),
            any::<f64>().prop_map(|f| Tree::Double(f.to_bits())),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Tree::String),
            any::<bool>().prop_map(Tree::Bool),
            Just(Tree::Null),
            any::<i32>().prop_map(Tree::Int32),
            any::<i64>().prop_map(Tree::Int64),
        ];
        leaf.prop_recursive(6, 48, 6, |inner| {
            proptest::collection::vec((key(), inner), 0..6).prop_map(Tree::Document)
        })
    }

    fn write(fields: &[(String, Tree)]) -> Vec<u8> {
        let mut w = Writer::default();
        for (k, v) in fields {
            match v {
                Tree::Double(bits) => w.double(k, f64::from_bits(*bits)),
                Tree::String(s) => w.string(k, s),
                Tree::Document(inner) => w.document(k, &write(inner)),
                Tree::Bool(b) => w.bool(k, *b),
                Tree::Null => w.null(k),
                Tree::Int32(i) => w.int32(k, *i),
                Tree::Int64(i) => w.int64(k, *i),
            }
            .expect("a writable element");
        }
        w.finish().expect("a small document")
    }

    /// Reads `doc` back and checks it against `fields`, bit for bit (NaN payloads included).
    fn same(doc: &[u8], fields: &[(String, Tree)]) -> Result<(), TestCaseError> {
        let read: Vec<_> = elements(doc)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read.len(), fields.len());
        for ((k, v), (key, want)) in read.into_iter().zip(fields) {
            prop_assert_eq!(k, key.as_bytes());
            match (v, want) {
                (Element::Double(f), Tree::Double(bits)) => prop_assert_eq!(f.to_bits(), *bits),
                (Element::String(s), Tree::String(t)) => prop_assert_eq!(s, &t[..]),
                (Element::Document(d), Tree::Document(inner)) => same(d, inner)?,
                (Element::Bool(b), Tree::Bool(c)) => prop_assert_eq!(b, *c),
                (Element::Null, Tree::Null) => {}
                (Element::Int32(i), Tree::Int32(j)) => prop_assert_eq!(i, *j),
                (Element::Int64(i), Tree::Int64(j)) => prop_assert_eq!(i, *j),
                (got, want) => prop_assert!(false, "{:?} read as {:?}", want, got),
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes, and arbitrary bytes behind a length that matches: an error or
        /// elements, never a panic; every element read lies within the input.
        #[test]
        fn any_bytes_are_read_without_a_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..256), fix in any::<bool>()) {
            if fix && bytes.len() >= 5 {
                let len = bytes.len() as i32;
                bytes[..4].copy_from_slice(&len.to_le_bytes());
                let last = bytes.len() - 1;
                bytes[last] = 0;
            }
            if let Ok(items) = elements(&bytes) {
                for (key, _) in items.flatten() {
                    prop_assert!(key.len() < bytes.len());
                }
            }
            let _ = validate(&bytes);
        }

        /// Every document the writer writes reads back to the same values, nested
        /// documents included, and passes `validate`.
        #[test]
        fn written_documents_read_back(fields in proptest::collection::vec((key(), tree()), 0..8)) {
            let doc = write(&fields);
            prop_assert!(validate(&doc).is_ok());
            same(&doc, &fields)?;
        }

        /// A key with a NUL cannot be written (it would end the key early).
        #[test]
        fn keys_with_a_nul_are_refused(a in key(), b in key(), v in any::<i32>()) {
            let mut w = Writer::default();
            let bad = format!("{a}\0{b}");
            prop_assert!(matches!(w.int32(&bad, v), Err(DocumentError::NulInKey { .. })), "key {:?} was written", bad);
            prop_assert_eq!(w.finish().unwrap(), vec![5, 0, 0, 0, 0]);
        }
    }

    /// `validate`'s limits: MAX_DEPTH levels pass, one more does not; MAX_ELEMENTS elements
    /// over all levels pass, one more does not.
    #[test]
    fn validate_enforces_depth_and_element_limits() {
        let nest = |levels: usize| {
            let mut doc = Writer::default().finish().unwrap();
            for _ in 1..levels {
                let mut w = Writer::default();
                w.document("x", &doc).unwrap();
                doc = w.finish().unwrap();
            }
            doc
        };
        assert_eq!(validate(&nest(MAX_DEPTH)), Ok(()));
        assert!(matches!(
            validate(&nest(MAX_DEPTH + 1)),
            Err(DocumentError::TooDeep {
                limit: MAX_DEPTH,
                ..
            })
        ));
        // Half the elements in an embedded document, the rest (and the element holding it)
        // beside it.
        let nulls = |n: usize| {
            let mut w = Writer::with_capacity(2 * n + 8);
            for _ in 0..n {
                w.null("").unwrap();
            }
            w
        };
        let inner = nulls(MAX_ELEMENTS / 2).finish().unwrap();
        for (rest, ok) in [(MAX_ELEMENTS / 2 - 1, true), (MAX_ELEMENTS / 2, false)] {
            let mut w = nulls(rest);
            w.document("d", &inner).unwrap();
            let doc = w.finish().unwrap();
            match validate(&doc) {
                Ok(()) => assert!(ok, "{rest}: over the limit and accepted"),
                Err(DocumentError::TooManyElements { .. }) => assert!(!ok, "{rest}: refused"),
                Err(other) => panic!("{other}"),
            }
        }
        // One document's own elements, read with `elements`.
        let doc = nulls(MAX_ELEMENTS + 1).finish().unwrap();
        let last = elements(&doc).unwrap().last().unwrap();
        assert!(matches!(last, Err(DocumentError::TooManyElements { .. })));
        assert_eq!(elements(&doc).unwrap().count(), MAX_ELEMENTS + 1);
    }
}
