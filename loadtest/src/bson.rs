//! A small, independent BSON codec: just what a STAGE client needs to build request frames
//! and to check/decode the server's replies. It is written from the BSON spec on purpose
//! (the harness must never share code with the engine it measures, or a codec bug would
//! cancel itself out). Decoding never panics: any malformed input is a `BsonError`.

use std::fmt;

/// Nesting limit when decoding: a hostile server must not be able to overflow our stack.
pub const MAX_DEPTH: usize = 64;

/// A decoded or to-be-encoded BSON value. Strings are bytes: STAGE strings are binary-safe
/// Lua strings, so a server may legitimately send non-UTF-8 "strings".
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Double(f64),
    String(Vec<u8>),
    Document(Document),
    Array(Vec<Value>),
    Binary {
        subtype: u8,
        data: Vec<u8>,
    },
    Bool(bool),
    Null,
    Int32(i32),
    Int64(i64),
    /// UTC milliseconds (type 0x09); decoded so that servers using `@D` keys do not look broken.
    DateTime(i64),
}

impl Value {
    /// A string value from text.
    pub fn str(s: &str) -> Value {
        Value::String(s.as_bytes().to_vec())
    }

    /// The document inside, if this is one.
    pub fn as_document(&self) -> Option<&Document> {
        match self {
            Value::Document(d) => Some(d),
            _ => None,
        }
    }
}

/// An ordered BSON document (order matters on the wire: STAGE reads the *first* element).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    pub fields: Vec<(String, Value)>,
}

impl Document {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a field (builder style).
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.fields.push((key.to_string(), value));
        self
    }

    /// The first field with that key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The first element's value: what a STAGE receive callback sees as `data`.
    pub fn first(&self) -> Option<&Value> {
        self.fields.first().map(|(_, v)| v)
    }
}

/// Why bytes are not a valid BSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BsonError {
    Truncated { offset: usize },
    BadLength { offset: usize, declared: i64 },
    MissingTerminator { offset: usize },
    UnterminatedKey { offset: usize },
    UnsupportedType { ty: u8, offset: usize },
    BadBool { offset: usize },
    TooDeep,
    TrailingBytes { offset: usize },
    KeyWithNul,
}

impl fmt::Display for BsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BsonError::Truncated { offset } => write!(f, "truncated at byte {offset}"),
            BsonError::BadLength { offset, declared } => {
                write!(f, "bad length {declared} at byte {offset}")
            }
            BsonError::MissingTerminator { offset } => {
                write!(f, "missing document terminator at byte {offset}")
            }
            BsonError::UnterminatedKey { offset } => write!(f, "unterminated key at byte {offset}"),
            BsonError::UnsupportedType { ty, offset } => {
                write!(f, "unsupported element type 0x{ty:02x} at byte {offset}")
            }
            BsonError::BadBool { offset } => write!(f, "bad boolean at byte {offset}"),
            BsonError::TooDeep => write!(f, "nested deeper than {MAX_DEPTH} levels"),
            BsonError::TrailingBytes { offset } => write!(f, "trailing bytes after byte {offset}"),
            BsonError::KeyWithNul => write!(f, "key contains a NUL byte"),
        }
    }
}

impl std::error::Error for BsonError {}

const T_DOUBLE: u8 = 0x01;
const T_STRING: u8 = 0x02;
const T_DOCUMENT: u8 = 0x03;
const T_ARRAY: u8 = 0x04;
const T_BINARY: u8 = 0x05;
const T_UNDEFINED: u8 = 0x06;
const T_OBJECT_ID: u8 = 0x07;
const T_BOOL: u8 = 0x08;
const T_DATETIME: u8 = 0x09;
const T_NULL: u8 = 0x0A;
const T_CODE: u8 = 0x0D;
const T_SYMBOL: u8 = 0x0E;
const T_INT32: u8 = 0x10;
const T_TIMESTAMP: u8 = 0x11;
const T_INT64: u8 = 0x12;

/// Encodes a document, appending to `out`. Fails only for keys containing NUL, which BSON
/// cannot represent (a script could build such a key).
pub fn encode_document(doc: &Document, out: &mut Vec<u8>) -> Result<(), BsonError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for (key, value) in &doc.fields {
        encode_element(key, value, out)?;
    }
    out.push(0);
    patch_length(out, start);
    Ok(())
}

/// Encodes a document into a new buffer.
pub fn to_vec(doc: &Document) -> Result<Vec<u8>, BsonError> {
    let mut out = Vec::with_capacity(64);
    encode_document(doc, &mut out)?;
    Ok(out)
}

fn patch_length(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn encode_element(key: &str, value: &Value, out: &mut Vec<u8>) -> Result<(), BsonError> {
    if key.as_bytes().contains(&0) {
        return Err(BsonError::KeyWithNul);
    }
    let ty = match value {
        Value::Double(_) => T_DOUBLE,
        Value::String(_) => T_STRING,
        Value::Document(_) => T_DOCUMENT,
        Value::Array(_) => T_ARRAY,
        Value::Binary { .. } => T_BINARY,
        Value::Bool(_) => T_BOOL,
        Value::Null => T_NULL,
        Value::Int32(_) => T_INT32,
        Value::Int64(_) => T_INT64,
        Value::DateTime(_) => T_DATETIME,
    };
    out.push(ty);
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    match value {
        Value::Double(d) => out.extend_from_slice(&d.to_le_bytes()),
        Value::String(s) => {
            out.extend_from_slice(&((s.len() + 1) as i32).to_le_bytes());
            out.extend_from_slice(s);
            out.push(0);
        }
        Value::Document(d) => encode_document(d, out)?,
        Value::Array(items) => {
            let start = out.len();
            out.extend_from_slice(&[0; 4]);
            for (i, item) in items.iter().enumerate() {
                encode_element(&i.to_string(), item, out)?;
            }
            out.push(0);
            patch_length(out, start);
        }
        Value::Binary { subtype, data } => {
            out.extend_from_slice(&(data.len() as i32).to_le_bytes());
            out.push(*subtype);
            out.extend_from_slice(data);
        }
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::Null => {}
        Value::Int32(i) => out.extend_from_slice(&i.to_le_bytes()),
        Value::Int64(i) | Value::DateTime(i) => out.extend_from_slice(&i.to_le_bytes()),
    }
    Ok(())
}

/// Decodes exactly one document spanning all of `buf`.
pub fn decode_document(buf: &[u8]) -> Result<Document, BsonError> {
    let (doc, end) = Decoder { buf }.document(0, buf.len(), 0, false)?;
    if end != buf.len() {
        return Err(BsonError::TrailingBytes { offset: end });
    }
    match doc {
        Value::Document(d) => Ok(d),
        _ => unreachable!("document() with array=false builds a document"),
    }
}

struct Decoder<'a> {
    buf: &'a [u8],
}

impl Decoder<'_> {
    fn fixed<const N: usize>(&self, pos: usize, limit: usize) -> Result<[u8; N], BsonError> {
        if pos.checked_add(N).is_none_or(|end| end > limit) {
            return Err(BsonError::Truncated { offset: pos });
        }
        let mut a = [0; N];
        a.copy_from_slice(&self.buf[pos..pos + N]);
        Ok(a)
    }

    /// The document (or array) starting at `pos`, which must end by `limit`.
    fn document(
        &self,
        pos: usize,
        limit: usize,
        depth: usize,
        array: bool,
    ) -> Result<(Value, usize), BsonError> {
        if depth > MAX_DEPTH {
            return Err(BsonError::TooDeep);
        }
        let declared = i32::from_le_bytes(self.fixed(pos, limit)?);
        if declared < 5 || declared as usize > limit - pos {
            return Err(BsonError::BadLength {
                offset: pos,
                declared: declared.into(),
            });
        }
        let end = pos + declared as usize - 1;
        if self.buf[end] != 0 {
            return Err(BsonError::MissingTerminator { offset: end });
        }
        let mut fields = Vec::new();
        let mut p = pos + 4;
        while p < end {
            let ty = self.buf[p];
            let key_start = p + 1;
            let key_len = self.buf[key_start..end]
                .iter()
                .position(|&b| b == 0)
                .ok_or(BsonError::UnterminatedKey { offset: key_start })?;
            let key = String::from_utf8_lossy(&self.buf[key_start..key_start + key_len]);
            let (value, next) = self.value(ty, key_start + key_len + 1, end, depth, p)?;
            fields.push((key.into_owned(), value));
            p = next;
        }
        let value = if array {
            // Array keys are positions on the wire ("0", "1", ...); keep the order only.
            Value::Array(fields.into_iter().map(|(_, v)| v).collect())
        } else {
            Value::Document(Document { fields })
        };
        Ok((value, end + 1))
    }

    fn string(&self, pos: usize, limit: usize) -> Result<(Vec<u8>, usize), BsonError> {
        let len = i32::from_le_bytes(self.fixed(pos, limit)?);
        let body = pos + 4;
        if len < 1 || len as usize > limit - body {
            return Err(BsonError::BadLength {
                offset: pos,
                declared: len.into(),
            });
        }
        let nul = body + len as usize - 1;
        if self.buf[nul] != 0 {
            return Err(BsonError::MissingTerminator { offset: nul });
        }
        Ok((self.buf[body..nul].to_vec(), nul + 1))
    }

    fn value(
        &self,
        ty: u8,
        pos: usize,
        limit: usize,
        depth: usize,
        elem: usize,
    ) -> Result<(Value, usize), BsonError> {
        Ok(match ty {
            T_DOUBLE => (
                Value::Double(f64::from_le_bytes(self.fixed(pos, limit)?)),
                pos + 8,
            ),
            T_STRING | T_CODE | T_SYMBOL => {
                let (s, next) = self.string(pos, limit)?;
                (Value::String(s), next)
            }
            T_DOCUMENT => self.document(pos, limit, depth + 1, false)?,
            T_ARRAY => self.document(pos, limit, depth + 1, true)?,
            T_BINARY => {
                let len = i32::from_le_bytes(self.fixed(pos, limit)?);
                let [subtype] = self.fixed(pos + 4, limit)?;
                let body = pos + 5;
                if len < 0 || len as usize > limit - body {
                    return Err(BsonError::BadLength {
                        offset: pos,
                        declared: len.into(),
                    });
                }
                let data = self.buf[body..body + len as usize].to_vec();
                (Value::Binary { subtype, data }, body + len as usize)
            }
            T_UNDEFINED | T_NULL => (Value::Null, pos),
            T_OBJECT_ID => {
                let id: [u8; 12] = self.fixed(pos, limit)?;
                (
                    Value::Binary {
                        subtype: 0,
                        data: id.to_vec(),
                    },
                    pos + 12,
                )
            }
            T_BOOL => {
                let [b] = self.fixed(pos, limit)?;
                if b > 1 {
                    return Err(BsonError::BadBool { offset: pos });
                }
                (Value::Bool(b == 1), pos + 1)
            }
            T_DATETIME => (
                Value::DateTime(i64::from_le_bytes(self.fixed(pos, limit)?)),
                pos + 8,
            ),
            T_INT32 => (
                Value::Int32(i32::from_le_bytes(self.fixed(pos, limit)?)),
                pos + 4,
            ),
            T_INT64 | T_TIMESTAMP => (
                Value::Int64(i64::from_le_bytes(self.fixed(pos, limit)?)),
                pos + 8,
            ),
            _ => return Err(BsonError::UnsupportedType { ty, offset: elem }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Document {
        Document::new()
            .with(
                "v",
                Value::Document(
                    Document::new()
                        .with("message", Value::str("echo"))
                        .with("data", Value::String(vec![0xff, 0, b'x']))
                        .with("seq", Value::Int64(-7))
                        .with("small", Value::Int32(i32::MIN))
                        .with("pi", Value::Double(3.25))
                        .with("yes", Value::Bool(true))
                        .with("no", Value::Bool(false))
                        .with("nothing", Value::Null)
                        .with("when", Value::DateTime(1_700_000_000_000))
                        .with(
                            "bin",
                            Value::Binary {
                                subtype: 0x80,
                                data: vec![1, 2, 3],
                            },
                        )
                        .with(
                            "list",
                            Value::Array(vec![
                                Value::Int32(1),
                                Value::str("two"),
                                Value::Array(vec![]),
                                Value::Document(Document::new()),
                            ]),
                        ),
                ),
            )
            .with("second", Value::str(""))
    }

    #[test]
    fn round_trip_every_type() {
        let doc = sample();
        let bytes = to_vec(&doc).unwrap();
        assert_eq!(
            u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(decode_document(&bytes).unwrap(), doc);
    }

    #[test]
    fn known_bytes() {
        // {"a": 1} from the BSON spec examples.
        let doc = Document::new().with("a", Value::Int32(1));
        let expected = [0x0c, 0, 0, 0, 0x10, b'a', 0, 1, 0, 0, 0, 0];
        assert_eq!(to_vec(&doc).unwrap(), expected);
        assert_eq!(to_vec(&Document::new()).unwrap(), [5, 0, 0, 0, 0]);
    }

    #[test]
    fn first_element_is_data() {
        let doc = sample();
        let v = doc.first().unwrap().as_document().unwrap();
        assert_eq!(v.get("message"), Some(&Value::str("echo")));
        assert_eq!(v.get("missing"), None);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = to_vec(&sample()).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_document(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Flip each byte: decoding may succeed or fail, but must never panic.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xa5;
            let _ = decode_document(&b);
        }
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            decode_document(&[5, 0, 0, 0, 1]),
            Err(BsonError::MissingTerminator { .. })
        ));
        assert!(matches!(
            decode_document(&[4, 0, 0, 0]),
            Err(BsonError::BadLength { .. })
        ));
        // Unknown element type 0x13 (decimal128 is not something STAGE sends).
        let bad = [8, 0, 0, 0, 0x13, b'a', 0, 0];
        assert!(matches!(
            decode_document(&bad),
            Err(BsonError::UnsupportedType { ty: 0x13, .. })
        ));
        let mut trailing = to_vec(&Document::new()).unwrap();
        trailing.push(0);
        assert!(matches!(
            decode_document(&trailing),
            Err(BsonError::BadLength { .. } | BsonError::TrailingBytes { .. })
        ));
        let nul_key = Document::new().with("a\0b", Value::Null);
        assert_eq!(to_vec(&nul_key), Err(BsonError::KeyWithNul));
    }

    #[test]
    fn depth_is_bounded() {
        let mut v = Value::Null;
        for _ in 0..(MAX_DEPTH + 5) {
            v = Value::Document(Document::new().with("x", v));
        }
        let bytes = to_vec(&Document::new().with("x", v)).unwrap();
        assert_eq!(decode_document(&bytes), Err(BsonError::TooDeep));
    }

    #[test]
    fn decodes_server_only_types() {
        // symbol, code, objectid, timestamp, undefined: STAGE can emit these via @S/@C keys.
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(&[T_SYMBOL, b's', 0, 2, 0, 0, 0, b'x', 0]);
        b.extend_from_slice(&[T_CODE, b'c', 0, 1, 0, 0, 0, 0]);
        b.push(T_OBJECT_ID);
        b.extend_from_slice(b"o\0");
        b.extend_from_slice(&[7; 12]);
        b.extend_from_slice(&[T_TIMESTAMP, b't', 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[T_UNDEFINED, b'u', 0]);
        b.push(0);
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        let d = decode_document(&b).unwrap();
        assert_eq!(d.get("s"), Some(&Value::str("x")));
        assert_eq!(d.get("c"), Some(&Value::str("")));
        assert_eq!(d.get("t"), Some(&Value::Int64(9)));
        assert_eq!(d.get("u"), Some(&Value::Null));
        assert!(matches!(d.get("o"), Some(Value::Binary { data, .. }) if data.len() == 12));
    }
}
