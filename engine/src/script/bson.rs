//! Hand-written BSON <-> Lua codec (spec 4.2). Every client frame and every internal message
//! (signals, submitted arguments, `socket.commit`) crosses this module, so it is written for
//! speed: encoding appends straight into the caller's `BytesMut` and patches document lengths
//! in place, decoding walks the borrowed input slice once, creating Lua strings directly from
//! sub-slices and pre-sizing tables. It also faces untrusted network input, so the decoder
//! validates strictly (lengths, terminators, nesting) and never panics; and it only turns
//! bytecode back into functions when the caller explicitly trusts the peer
//! (`DecodeOptions::load_functions`), because LuaJIT's bytecode loader is not memory-safe
//! against crafted input.
//!
//! Mapping decisions beyond the spec text:
//! * Numbers: LuaJIT has only doubles. A number that is integral and in `[-2^63, 2^63)` is
//!   written as int64 (0x12), anything else (fractions, NaN, ±inf, and `-0.0`, whose sign an
//!   integer would lose) as double (0x01). Decoded int64 values beyond ±2^53 are rounded to the
//!   nearest double when they enter LuaJIT; that precision loss is inherent to the VM.
//! * Forced types (`key@X`) are strict: `@i`/`@l`/`@D` need an integral number that fits,
//!   `@d`/`@f` a number, `@b` a boolean, `@S`/`@C`/`@B` a string, `@A`/`@O` a table. Anything
//!   else is an error naming the key rather than a silent truncation. Containers nest
//!   (`@AAi` is an array of int32 arrays). A key whose text after the last `@` is not a valid
//!   suffix (e.g. `"a@host.com"`) is written verbatim. Inside `@O?`, a key's own suffix wins
//!   over `?`. `@A` takes elements 1..n with n = the raw length (`#` without metamethods);
//!   a hole inside that range is written as null so positions survive.
//! * Table keys must be strings or numbers; booleans, tables, etc. as keys are an error,
//!   since no string form of them survives the round trip meaningfully.
//! * Non-sequence number keys use Lua's `tostring` format (`%.14g`), so they match what a Lua
//!   script would see as the key's string form.
//! * Functions travel as raw (uncompressed) `string.dump` bytecode in binary subtype 0x80;
//!   the spec's optional gzip variant is not produced or accepted. Other binary subtypes
//!   decode to their raw payload.
//! * Depth counts documents: the top-level document is level 1, at most [`MAX_DEPTH`] levels.
//!   This bounds recursion on both sides and turns cyclic tables into an error. A decoded
//!   document holds at most [`MAX_ELEMENTS`] elements over all its levels. Both limits are
//!   `codec::bson_limits`'s, shared with the FFI decoder; a decode that hits one is counted
//!   and logged there.

use std::cell::Cell;

use bytes::{BufMut, BytesMut};
use mlua::{ChunkMode, Function, Lua, Table, Value};

use crate::codec::bson_limits::{self, Limit};
pub use crate::codec::bson_limits::{MAX_DEPTH, MAX_ELEMENTS};

/// Options for the encoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Serialize Lua functions as bytecode (binary subtype 0x80). Off for client sockets,
    /// which could never load them anyway.
    pub allow_functions: bool,
}

/// Options for the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Load binary subtype 0x80 as LuaJIT bytecode into a function. Only for trusted internal
    /// messages: bytes from the network must never become code.
    pub load_functions: bool,
}

/// Everything that can go wrong while encoding or decoding. Decode errors carry the byte
/// offset (relative to the start of the document) of the offending item; encode errors carry
/// the key being written.
#[derive(Debug, thiserror::Error)]
pub enum BsonError {
    #[error("bson truncated: {what} at offset {offset} needs {need} bytes, only {have} remain")]
    Truncated {
        what: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error(
        "bson document at offset {offset} declares length {declared} but {available} bytes are available"
    )]
    BadDocumentLength {
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
    #[error("bson binary at offset {offset} has invalid length {len}")]
    BadBinaryLength { offset: usize, len: i64 },
    #[error("bson boolean at offset {offset} has invalid byte 0x{byte:02x}")]
    BadBoolean { offset: usize, byte: u8 },
    #[error("unsupported bson type 0x{ty:02x} at offset {offset}")]
    UnsupportedType { ty: u8, offset: usize },
    #[error("bson nesting deeper than {limit} levels at offset {offset}")]
    TooDeep { offset: usize, limit: usize },
    #[error("bson document with more than {limit} elements (at offset {offset})")]
    TooManyElements { offset: usize, limit: usize },
    #[error("cannot load function bytecode at offset {offset}: {source}")]
    BadFunction { offset: usize, source: mlua::Error },
    #[error("key {key:?} contains a nul byte")]
    NulInKey { key: String },
    #[error("table key of type {ty} cannot be encoded (keys must be strings or numbers)")]
    UnsupportedKey { ty: &'static str },
    #[error("function values cannot be sent to this peer (key {key:?})")]
    FunctionNotAllowed { key: String },
    #[error("function at key {key:?} cannot be dumped to bytecode (c function?)")]
    FunctionNotDumpable { key: String },
    #[error("key {key:?}: cannot encode {found} as {expected}")]
    TypeMismatch {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("nesting deeper than {limit} levels at key {key:?} (cyclic table?)")]
    EncodeTooDeep { key: String, limit: usize },
    #[error("value at key {key:?} is too large for bson ({len} bytes)")]
    TooLarge { key: String, len: usize },
    #[error("lua error in bson codec: {0}")]
    Lua(#[from] mlua::Error),
}

// BSON element type bytes that this codec knows.
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

const SUBTYPE_GENERIC: u8 = 0x00;
/// User-defined binary subtype carrying a LuaJIT bytecode dump.
const SUBTYPE_FUNCTION: u8 = 0x80;

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Encode `table`'s fields as the top-level fields of one BSON document, appended to `out`.
///
/// On error `out` is restored to its previous length, so a failed encode never leaves a
/// half-written frame behind. `lua` is not needed by the current encoder; it is taken for
/// symmetry with the decoder.
pub fn encode_document(
    lua: &Lua,
    table: &Table,
    out: &mut BytesMut,
    opts: &EncodeOptions,
) -> Result<(), BsonError> {
    let _ = lua;
    let start = out.len();
    let mut enc = Encoder {
        out: &mut *out,
        allow_functions: opts.allow_functions,
    };
    let result = enc.table_document(table, b"", 1, None);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Encode `{"v": value}` (what socket.commit(table) sends), appended to `out`.
///
/// On error `out` is restored to its previous length.
pub fn encode_wrapped(
    lua: &Lua,
    value: &Value,
    out: &mut BytesMut,
    opts: &EncodeOptions,
) -> Result<(), BsonError> {
    let _ = lua;
    let start = out.len();
    let mut enc = Encoder {
        out: &mut *out,
        allow_functions: opts.allow_functions,
    };
    let result = (|| {
        let doc = enc.begin_document();
        // "v" is a fixed wrapper key: never subject to `@` suffix parsing.
        enc.natural(b"v", value, 1)?;
        enc.end_document(doc, b"")
    })();
    if result.is_err() {
        out.truncate(start);
    }
    result
}

struct Encoder<'o> {
    out: &'o mut BytesMut,
    allow_functions: bool,
}

impl Encoder<'_> {
    /// Reserve the 4-byte length slot of a document and return its position for patching.
    fn begin_document(&mut self) -> usize {
        let pos = self.out.len();
        self.out.put_i32_le(0);
        pos
    }

    /// Terminate the document that starts at `start` and patch its length in place.
    fn end_document(&mut self, start: usize, key: &[u8]) -> Result<(), BsonError> {
        self.out.put_u8(0);
        let len = self.out.len() - start;
        let len32 = i32::try_from(len).map_err(|_| BsonError::TooLarge {
            key: key_text(key),
            len,
        })?;
        self.out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
        Ok(())
    }

    /// Type byte + NUL-terminated key.
    fn header(&mut self, ty: u8, key: &[u8]) {
        self.out.reserve(key.len() + 2);
        self.out.put_u8(ty);
        self.out.extend_from_slice(key);
        self.out.put_u8(0);
    }

    /// String/symbol/code payload: int32 length (including NUL), bytes, NUL.
    fn string_payload(&mut self, key: &[u8], bytes: &[u8]) -> Result<(), BsonError> {
        let len = i32::try_from(bytes.len() + 1).map_err(|_| BsonError::TooLarge {
            key: key_text(key),
            len: bytes.len(),
        })?;
        self.out.reserve(bytes.len() + 5);
        self.out.put_i32_le(len);
        self.out.extend_from_slice(bytes);
        self.out.put_u8(0);
        Ok(())
    }

    /// Binary payload: int32 length (excluding subtype), subtype, bytes.
    fn binary_payload(&mut self, key: &[u8], subtype: u8, bytes: &[u8]) -> Result<(), BsonError> {
        let len = i32::try_from(bytes.len()).map_err(|_| BsonError::TooLarge {
            key: key_text(key),
            len: bytes.len(),
        })?;
        self.out.reserve(bytes.len() + 5);
        self.out.put_i32_le(len);
        self.out.put_u8(subtype);
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    /// Write one element, typed by `spec` (a validated `@` suffix) when given.
    fn element(
        &mut self,
        key: &[u8],
        value: &Value,
        spec: Option<&[u8]>,
        depth: usize,
    ) -> Result<(), BsonError> {
        match spec {
            Some(spec) => self.forced(key, spec, value, depth),
            None => self.natural(key, value, depth),
        }
    }

    /// Write one element with the type that follows from the Lua value. `depth` is the level
    /// of the document the element belongs to.
    fn natural(&mut self, key: &[u8], value: &Value, depth: usize) -> Result<(), BsonError> {
        match value {
            Value::Nil => self.header(T_NULL, key),
            Value::Boolean(b) => {
                self.header(T_BOOL, key);
                self.out.put_u8(u8::from(*b));
            }
            Value::Integer(i) => {
                self.header(T_INT64, key);
                self.out.put_i64_le(*i);
            }
            Value::Number(f) => match exact_i64(*f) {
                // mlua already reports integral doubles as Integer; this catches the rest.
                Some(i) if !(*f == 0.0 && f.is_sign_negative()) => {
                    self.header(T_INT64, key);
                    self.out.put_i64_le(i);
                }
                _ => {
                    self.header(T_DOUBLE, key);
                    self.out.put_f64_le(*f);
                }
            },
            Value::String(s) => {
                self.header(T_STRING, key);
                self.string_payload(key, &s.as_bytes())?;
            }
            Value::Table(t) => {
                self.header(T_DOCUMENT, key);
                self.table_document(t, key, depth + 1, None)?;
            }
            Value::Function(f) => self.function(key, f)?,
            // Userdata, light userdata, threads, cdata and error values are not transferable
            // (spec 1.3): they travel as their `tostring` text.
            other => {
                let text = other.to_string()?;
                self.header(T_STRING, key);
                self.string_payload(key, text.as_bytes())?;
            }
        }
        Ok(())
    }

    fn function(&mut self, key: &[u8], f: &Function) -> Result<(), BsonError> {
        if !self.allow_functions {
            return Err(BsonError::FunctionNotAllowed { key: key_text(key) });
        }
        let code = f.dump(false);
        // lua_dump writes nothing for C functions.
        if code.is_empty() {
            return Err(BsonError::FunctionNotDumpable { key: key_text(key) });
        }
        self.header(T_BINARY, key);
        self.binary_payload(key, SUBTYPE_FUNCTION, &code)
    }

    /// Write one element with the type forced by `spec` (`spec[0]` is the type letter; for
    /// `A`/`O` the rest types the elements).
    fn forced(
        &mut self,
        key: &[u8],
        spec: &[u8],
        value: &Value,
        depth: usize,
    ) -> Result<(), BsonError> {
        let Some((&letter, inner)) = spec.split_first() else {
            return self.natural(key, value, depth);
        };
        // Array holes (and `@X` on an explicit nil) stay null whatever the forced type.
        if value.is_nil() {
            self.header(T_NULL, key);
            return Ok(());
        }
        let inner = (!inner.is_empty()).then_some(inner);
        let mismatch = |expected: &'static str| BsonError::TypeMismatch {
            key: key_text(key),
            expected,
            found: describe(value),
        };
        match letter {
            b'i' => {
                let v = as_i64(value)
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| mismatch("int32"))?;
                self.header(T_INT32, key);
                self.out.put_i32_le(v);
            }
            b'l' | b'D' => {
                let v = as_i64(value)
                    .ok_or_else(|| mismatch(if letter == b'l' { "int64" } else { "datetime" }))?;
                self.header(if letter == b'l' { T_INT64 } else { T_DATETIME }, key);
                self.out.put_i64_le(v);
            }
            b'd' | b'f' => {
                let v = match value {
                    Value::Integer(i) => *i as f64,
                    Value::Number(f) => *f,
                    _ => return Err(mismatch("double")),
                };
                self.header(T_DOUBLE, key);
                self.out.put_f64_le(v);
            }
            b'b' => {
                let Value::Boolean(b) = value else {
                    return Err(mismatch("bool"));
                };
                self.header(T_BOOL, key);
                self.out.put_u8(u8::from(*b));
            }
            b'S' | b'C' | b'B' => {
                let Value::String(s) = value else {
                    return Err(mismatch(match letter {
                        b'S' => "symbol",
                        b'C' => "code",
                        _ => "binary",
                    }));
                };
                let bytes = s.as_bytes();
                match letter {
                    b'S' => {
                        self.header(T_SYMBOL, key);
                        self.string_payload(key, &bytes)?;
                    }
                    b'C' => {
                        self.header(T_CODE, key);
                        self.string_payload(key, &bytes)?;
                    }
                    _ => {
                        self.header(T_BINARY, key);
                        self.binary_payload(key, SUBTYPE_GENERIC, &bytes)?;
                    }
                }
            }
            b'A' => {
                let Value::Table(t) = value else {
                    return Err(mismatch("array"));
                };
                self.header(T_ARRAY, key);
                self.array_document(t, key, depth + 1, inner)?;
            }
            b'O' => {
                let Value::Table(t) = value else {
                    return Err(mismatch("object"));
                };
                self.header(T_DOCUMENT, key);
                self.table_document(t, key, depth + 1, inner)?;
            }
            // `valid_spec` admits only the letters above.
            _ => return self.natural(key, value, depth),
        }
        Ok(())
    }

    /// Write `table` as a document at nesting level `depth`: sequence part 1..n first (keys
    /// `#1`..`#n`, in order), then the remaining keys in `next()` order. `elem_spec` types
    /// every value (from `@O?`) unless the value's own key carries a suffix.
    fn table_document(
        &mut self,
        table: &Table,
        key: &[u8],
        depth: usize,
        elem_spec: Option<&[u8]>,
    ) -> Result<(), BsonError> {
        if depth > MAX_DEPTH {
            return Err(BsonError::EncodeTooDeep {
                key: key_text(key),
                limit: MAX_DEPTH,
            });
        }
        let start = self.begin_document();

        // Sequence part with ipairs semantics (stops at the first nil); raw access so
        // metatables are ignored, as the spec drops them.
        let mut seq_len: i64 = 0;
        for value in table.sequence_values::<Value>() {
            let value = value?;
            seq_len += 1;
            let mut buf = [0u8; 24];
            let k = int_key(&mut buf, seq_len, true);
            self.element(k, &value, elem_spec, depth)?;
        }

        // `for_each` needs an mlua error to stop early; keep the real error on the side.
        let mut failure: Option<BsonError> = None;
        let walked = table.for_each::<Value, Value>(|k, v| {
            match self.hash_field(&k, &v, seq_len, depth, elem_spec) {
                Ok(()) => Ok(()),
                Err(e) => {
                    failure = Some(e);
                    Err(mlua::Error::RuntimeError(String::new()))
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        walked?;

        self.end_document(start, key)
    }

    /// One non-sequence field of a table document.
    fn hash_field(
        &mut self,
        k: &Value,
        v: &Value,
        seq_len: i64,
        depth: usize,
        elem_spec: Option<&[u8]>,
    ) -> Result<(), BsonError> {
        let mut buf = [0u8; 24];
        match k {
            Value::String(s) => {
                let bytes = s.as_bytes();
                if bytes.contains(&0) {
                    return Err(BsonError::NulInKey {
                        key: key_text(&bytes),
                    });
                }
                let (name, spec) = split_suffix(&bytes);
                self.element(name, v, spec.or(elem_spec), depth)
            }
            Value::Integer(i) => {
                if (1..=seq_len).contains(i) {
                    return Ok(()); // already written as part of the sequence
                }
                let name = int_key(&mut buf, *i, *i > 0);
                self.element(name, v, elem_spec, depth)
            }
            Value::Number(f) => match exact_i64(*f) {
                Some(i) if i > seq_len => {
                    let name = int_key(&mut buf, i, true);
                    self.element(name, v, elem_spec, depth)
                }
                _ => {
                    let name = number_key(*f);
                    self.element(name.as_bytes(), v, elem_spec, depth)
                }
            },
            other => Err(BsonError::UnsupportedKey {
                ty: other.type_name(),
            }),
        }
    }

    /// Write `table`'s 1..n sequence (n = raw length, so holes become null) as a BSON array
    /// with keys "0", "1", ...; each element typed by `elem_spec` or naturally.
    fn array_document(
        &mut self,
        table: &Table,
        key: &[u8],
        depth: usize,
        elem_spec: Option<&[u8]>,
    ) -> Result<(), BsonError> {
        if depth > MAX_DEPTH {
            return Err(BsonError::EncodeTooDeep {
                key: key_text(key),
                limit: MAX_DEPTH,
            });
        }
        let start = self.begin_document();
        let len = table.raw_len();
        for i in 0..len {
            let value: Value = table.raw_get(i + 1)?;
            let mut buf = [0u8; 24];
            let k = int_key(&mut buf, i as i64, false);
            self.element(k, &value, elem_spec, depth)?;
        }
        self.end_document(start, key)
    }
}

/// The integer a double holds exactly, if it is integral and within `[-2^63, 2^63)`.
fn exact_i64(f: f64) -> Option<i64> {
    // NaN and ±inf fail `fract() == 0.0`.
    if f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
    {
        Some(f as i64)
    } else {
        None
    }
}

/// Integral numeric value for the `@i`/`@l`/`@D` conversions.
fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Integer(i) => Some(*i),
        Value::Number(f) => exact_i64(*f),
        _ => None,
    }
}

/// Short description of a value for type-mismatch messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Integer(i) => format!("number {i}"),
        Value::Number(f) => format!("number {f}"),
        other => other.type_name().to_owned(),
    }
}

/// Decimal text of `n` (optionally prefixed by `#`), built right-aligned in `buf` so that
/// integer keys never allocate.
fn int_key(buf: &mut [u8; 24], n: i64, hash: bool) -> &[u8] {
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    if hash {
        i -= 1;
        buf[i] = b'#';
    }
    &buf[i..]
}

/// Lua's `tostring` of a non-sequence number key (`%.14g`, LuaJIT spelling of inf/nan).
fn number_key(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    fn trim(s: &str) -> &str {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.')
        } else {
            s
        }
    }
    // %g picks the style from the exponent of the value rounded to 14 significant digits.
    let sci = format!("{f:.13e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..14).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.unsigned_abs())
    } else {
        let fixed = format!("{:.*}", (13 - exp) as usize, f);
        trim(&fixed).to_owned()
    }
}

/// Split `name@spec` into the bare name and a valid type spec; keys without a valid suffix
/// are returned whole.
fn split_suffix(key: &[u8]) -> (&[u8], Option<&[u8]>) {
    if let Some(at) = key.iter().rposition(|&b| b == b'@') {
        let spec = &key[at + 1..];
        if valid_spec(spec) {
            return (&key[..at], Some(spec));
        }
    }
    (key, None)
}

/// `[AO]* <letter>`: containers may nest, the last letter types the leaves. Checked
/// iteratively so a hostile key cannot drive recursion.
fn valid_spec(spec: &[u8]) -> bool {
    match spec.split_last() {
        None => false,
        Some((last, containers)) => {
            containers.iter().all(|c| matches!(c, b'A' | b'O'))
                && matches!(
                    last,
                    b'i' | b'l' | b'd' | b'f' | b'b' | b'D' | b'S' | b'C' | b'B' | b'A' | b'O'
                )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Validate a whole document (length field == doc.len(), structure, terminators, nesting) and
/// return the decoded value of its FIRST element (Nil for an empty document).
///
/// Elements after the first are validated but never materialized as Lua values.
pub fn decode_first(lua: &Lua, doc: &[u8], opts: &DecodeOptions) -> Result<Value, BsonError> {
    let end = check_top(doc)?;
    let dec = Decoder {
        lua,
        buf: doc,
        load_functions: opts.load_functions,
        elements: Cell::new(0),
    };
    let mut first = None;
    let mut pos = 4;
    while pos < end {
        let (ty, _key, vpos) = dec.element(pos, end)?;
        dec.one_more(pos)?;
        pos = if first.is_none() {
            let (value, next) = dec.value::<true>(ty, vpos, end, 1, pos)?;
            first = Some(value);
            next
        } else {
            dec.value::<false>(ty, vpos, end, 1, pos)?.1
        };
    }
    Ok(first.unwrap_or(Value::Nil))
}

/// Validate and decode all top-level fields into a table.
pub fn decode_document(lua: &Lua, doc: &[u8], opts: &DecodeOptions) -> Result<Table, BsonError> {
    check_top(doc)?;
    let dec = Decoder {
        lua,
        buf: doc,
        load_functions: opts.load_functions,
        elements: Cell::new(0),
    };
    match dec.document::<true>(0, doc.len(), 1, false)?.0 {
        Value::Table(t) => Ok(t),
        // `document::<true>` always builds a table.
        _ => Ok(lua.create_table()?),
    }
}

/// Top-level framing checks; returns the index of the terminating 0x00.
fn check_top(doc: &[u8]) -> Result<usize, BsonError> {
    let Some(head) = doc.first_chunk::<4>() else {
        return Err(BsonError::Truncated {
            what: "document length",
            offset: 0,
            need: 4,
            have: doc.len(),
        });
    };
    let declared = i32::from_le_bytes(*head);
    if declared < 5 || declared as usize != doc.len() {
        return Err(BsonError::BadDocumentLength {
            offset: 0,
            declared: declared.into(),
            available: doc.len(),
        });
    }
    let end = doc.len() - 1;
    if doc[end] != 0 {
        return Err(BsonError::MissingTerminator { offset: end });
    }
    Ok(end)
}

struct Decoder<'a> {
    lua: &'a Lua,
    buf: &'a [u8],
    load_functions: bool,
    /// Elements read so far, over every level: at most [`MAX_ELEMENTS`].
    elements: Cell<usize>,
}

impl<'a> Decoder<'a> {
    /// Counts the element at `pos`; an error past [`MAX_ELEMENTS`].
    fn one_more(&self, pos: usize) -> Result<(), BsonError> {
        self.room_for(1, pos)?;
        self.elements.set(self.elements.get() + 1);
        Ok(())
    }

    /// Whether `n` more elements fit under [`MAX_ELEMENTS`] (nothing is counted).
    fn room_for(&self, n: usize, pos: usize) -> Result<(), BsonError> {
        if self.elements.get() + n > MAX_ELEMENTS {
            bson_limits::hit(Limit::Elements);
            return Err(BsonError::TooManyElements {
                offset: pos,
                limit: MAX_ELEMENTS,
            });
        }
        Ok(())
    }

    /// `N` bytes at `pos`, which must end at or before `limit`.
    fn fixed<const N: usize>(
        &self,
        pos: usize,
        limit: usize,
        what: &'static str,
    ) -> Result<[u8; N], BsonError> {
        let have = limit.saturating_sub(pos);
        if have < N {
            return Err(BsonError::Truncated {
                what,
                offset: pos,
                need: N,
                have,
            });
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[pos..pos + N]);
        Ok(out)
    }

    /// Element header at `pos` (< `end`): type byte, key, and the position of the value.
    fn element(&self, pos: usize, end: usize) -> Result<(u8, &'a [u8], usize), BsonError> {
        let ty = self.buf[pos];
        let kstart = pos + 1;
        let key_area = self.buf.get(kstart..end).unwrap_or(&[]);
        let Some(nul) = key_area.iter().position(|&b| b == 0) else {
            return Err(BsonError::UnterminatedKey { offset: kstart });
        };
        Ok((ty, &key_area[..nul], kstart + nul + 1))
    }

    /// String-like payload at `pos` (int32 length incl. NUL, bytes, NUL); returns the bytes.
    fn string(&self, pos: usize, limit: usize) -> Result<&'a [u8], BsonError> {
        let len = i32::from_le_bytes(self.fixed::<4>(pos, limit, "string length")?);
        let have = limit - pos - 4;
        if len < 1 || len as usize > have {
            return Err(BsonError::BadStringLength {
                offset: pos,
                len: len.into(),
            });
        }
        let start = pos + 4;
        let nul = start + len as usize - 1;
        if self.buf[nul] != 0 {
            return Err(BsonError::UnterminatedString { offset: pos });
        }
        Ok(&self.buf[start..nul])
    }

    /// Decode (when `BUILD`) or just validate the value of type `ty` at `pos`, bounded by
    /// `limit`; `depth` is the level of the containing document and `elem` the element's
    /// offset for error messages. Returns the value (Nil when not building) and the position
    /// after it.
    fn value<const BUILD: bool>(
        &self,
        ty: u8,
        pos: usize,
        limit: usize,
        depth: usize,
        elem: usize,
    ) -> Result<(Value, usize), BsonError> {
        Ok(match ty {
            T_DOUBLE => {
                let f = f64::from_le_bytes(self.fixed(pos, limit, "double")?);
                (Value::Number(f), pos + 8)
            }
            T_STRING | T_CODE | T_SYMBOL => {
                let s = self.string(pos, limit)?;
                (self.lua_string::<BUILD>(s)?, pos + 4 + s.len() + 1)
            }
            T_DOCUMENT => self.document::<BUILD>(pos, limit, depth + 1, false)?,
            T_ARRAY => self.document::<BUILD>(pos, limit, depth + 1, true)?,
            T_BINARY => {
                let len = i32::from_le_bytes(self.fixed(pos, limit, "binary length")?);
                let have = limit - pos - 4;
                if len < 0 || len as usize >= have {
                    return Err(BsonError::BadBinaryLength {
                        offset: pos,
                        len: len.into(),
                    });
                }
                let subtype = self.buf[pos + 4];
                let data = &self.buf[pos + 5..pos + 5 + len as usize];
                let value = if BUILD && subtype == SUBTYPE_FUNCTION && self.load_functions {
                    let f = self
                        .lua
                        .load(data)
                        .set_mode(ChunkMode::Binary)
                        .set_name("=bson")
                        .into_function()
                        .map_err(|source| BsonError::BadFunction {
                            offset: pos,
                            source,
                        })?;
                    Value::Function(f)
                } else {
                    self.lua_string::<BUILD>(data)?
                };
                (value, pos + 5 + len as usize)
            }
            T_UNDEFINED | T_NULL => (Value::Nil, pos),
            T_OBJECT_ID => {
                let id: [u8; 12] = self.fixed(pos, limit, "objectid")?;
                (self.lua_string::<BUILD>(&id)?, pos + 12)
            }
            T_BOOL => {
                let [byte] = self.fixed(pos, limit, "boolean")?;
                if byte > 1 {
                    return Err(BsonError::BadBoolean { offset: pos, byte });
                }
                (Value::Boolean(byte == 1), pos + 1)
            }
            T_INT32 => {
                let i = i32::from_le_bytes(self.fixed(pos, limit, "int32")?);
                (Value::Integer(i.into()), pos + 4)
            }
            T_INT64 | T_DATETIME => {
                let i = i64::from_le_bytes(self.fixed(pos, limit, "int64")?);
                (Value::Integer(i), pos + 8)
            }
            T_TIMESTAMP => {
                let u = u64::from_le_bytes(self.fixed(pos, limit, "timestamp")?);
                let v = match i64::try_from(u) {
                    Ok(i) => Value::Integer(i),
                    Err(_) => Value::Number(u as f64),
                };
                (v, pos + 8)
            }
            _ => return Err(BsonError::UnsupportedType { ty, offset: elem }),
        })
    }

    fn lua_string<const BUILD: bool>(&self, bytes: &[u8]) -> Result<Value, BsonError> {
        Ok(if BUILD {
            Value::String(self.lua.create_string(bytes)?)
        } else {
            Value::Nil
        })
    }

    /// Embedded document or array at `pos` (nesting level `depth`), which must fit before
    /// `limit`. Returns the table (Nil when not building) and the position after it.
    fn document<const BUILD: bool>(
        &self,
        pos: usize,
        limit: usize,
        depth: usize,
        array: bool,
    ) -> Result<(Value, usize), BsonError> {
        if depth > MAX_DEPTH {
            bson_limits::hit(Limit::Depth);
            return Err(BsonError::TooDeep {
                offset: pos,
                limit: MAX_DEPTH,
            });
        }
        let declared = i32::from_le_bytes(self.fixed(pos, limit, "document length")?);
        let available = limit - pos;
        if declared < 5 || declared as usize > available {
            return Err(BsonError::BadDocumentLength {
                offset: pos,
                declared: declared.into(),
                available,
            });
        }
        let end = pos + declared as usize - 1;
        if self.buf[end] != 0 {
            return Err(BsonError::MissingTerminator { offset: end });
        }

        let table = if BUILD {
            let (narr, nrec) = self.count(pos + 4, end, array);
            // Refused before the table is sized for them.
            self.room_for(narr + nrec, pos)?;
            Some(self.lua.create_table_with_capacity(narr, nrec)?)
        } else {
            None
        };

        let mut p = pos + 4;
        let mut index: i64 = 0;
        while p < end {
            let (ty, key, vpos) = self.element(p, end)?;
            self.one_more(p)?;
            let (value, next) = self.value::<BUILD>(ty, vpos, end, depth, p)?;
            if let Some(t) = &table {
                // null/undefined decode to nil, i.e. the field is absent.
                if !value.is_nil() {
                    if array {
                        // Position, not key text: BSON arrays are 0-based on the wire.
                        t.raw_set(index + 1, value)?;
                    } else if let Some(n) = hash_index(key) {
                        t.raw_set(n, value)?;
                    } else {
                        t.raw_set(self.lua.create_string(key)?, value)?;
                    }
                }
            }
            index += 1;
            p = next;
        }
        Ok((table.map_or(Value::Nil, Value::Table), end + 1))
    }

    /// Capacity hint for the table of the document body `[start, end)`: how many elements
    /// will land in the array part (array elements, `#n` keys) and the hash part. A cheap
    /// header-only scan; it stops quietly on malformed data, which the real pass reports.
    fn count(&self, start: usize, end: usize, array: bool) -> (usize, usize) {
        let (mut narr, mut nrec) = (0, 0);
        let mut p = start;
        while p < end {
            let Ok((ty, key, vpos)) = self.element(p, end) else {
                break;
            };
            let Some(size) = value_size(self.buf, ty, vpos, end) else {
                break;
            };
            if array || key.first() == Some(&b'#') {
                narr += 1;
            } else {
                nrec += 1;
            }
            p = vpos + size;
        }
        (narr, nrec)
    }
}

/// Size of the value of type `ty` at `pos` if it fits before `limit` (no deep validation).
fn value_size(buf: &[u8], ty: u8, pos: usize, limit: usize) -> Option<usize> {
    let read_len = || -> Option<usize> {
        let bytes = buf.get(pos..pos.checked_add(4)?)?;
        let len = i32::from_le_bytes(bytes.try_into().ok()?);
        usize::try_from(len).ok()
    };
    let size = match ty {
        T_UNDEFINED | T_NULL => 0,
        T_BOOL => 1,
        T_INT32 => 4,
        T_DOUBLE | T_DATETIME | T_TIMESTAMP | T_INT64 => 8,
        T_OBJECT_ID => 12,
        T_STRING | T_CODE | T_SYMBOL => 4 + read_len()?,
        T_DOCUMENT | T_ARRAY => read_len()?,
        T_BINARY => 5 + read_len()?,
        _ => return None,
    };
    (size <= limit.saturating_sub(pos)).then_some(size)
}

/// `#n` with `n` a positive decimal integer without leading zeros that fits in i64.
fn hash_index(key: &[u8]) -> Option<i64> {
    let digits = key.strip_prefix(b"#")?;
    if digits.is_empty() || digits[0] == b'0' || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(n)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::codec::document::handmade::{bstr, raw as doc};

    const ENC: EncodeOptions = EncodeOptions {
        allow_functions: false,
    };
    const ENC_FN: EncodeOptions = EncodeOptions {
        allow_functions: true,
    };
    const DEC: DecodeOptions = DecodeOptions {
        load_functions: false,
    };
    const DEC_FN: DecodeOptions = DecodeOptions {
        load_functions: true,
    };

    /// Deep structural equality, written in Lua so it sees exactly what scripts see (NaN equal
    /// to NaN, types compared first). Also used by `script::decoder_props`.
    pub(in crate::script) const DEEP_EQ: &str = r#"
        local function deq(a, b)
            if type(a) ~= type(b) then return false end
            if type(a) ~= "table" then
                if a ~= a and b ~= b then return true end -- NaN
                return a == b
            end
            for k, v in pairs(a) do if not deq(v, b[k]) then return false end end
            for k in pairs(b) do if a[k] == nil then return false end end
            return true
        end
        return deq
    "#;

    fn eval(lua: &Lua, src: &str) -> Value {
        lua.load(src).eval().expect("test lua")
    }

    fn table(lua: &Lua, src: &str) -> Table {
        lua.load(src).eval().expect("test lua table")
    }

    fn deep_eq(lua: &Lua, a: &Value, b: &Value) -> bool {
        let f: Function = lua.load(DEEP_EQ).eval().unwrap();
        f.call((a, b)).unwrap()
    }

    fn encode(lua: &Lua, t: &Table, opts: &EncodeOptions) -> BytesMut {
        let mut out = BytesMut::new();
        encode_document(lua, t, &mut out, opts).unwrap();
        out
    }

    /// (type, key, value bytes) of the elements of the document `doc` (test-side walker).
    fn elements(doc: &[u8]) -> Vec<(u8, Vec<u8>, &[u8])> {
        let end = doc.len() - 1;
        let mut p = 4;
        let mut out = Vec::new();
        while p < end {
            let ty = doc[p];
            let nul = p + 1 + doc[p + 1..].iter().position(|&b| b == 0).unwrap();
            let key = doc[p + 1..nul].to_vec();
            let size = value_size(doc, ty, nul + 1, end).unwrap();
            out.push((ty, key, &doc[nul + 1..nul + 1 + size]));
            p = nul + 1 + size;
        }
        out
    }

    fn field<'d>(doc: &'d [u8], key: &str) -> (u8, &'d [u8]) {
        elements(doc)
            .into_iter()
            .find(|(_, k, _)| k == key.as_bytes())
            .map(|(t, _, v)| (t, v))
            .unwrap_or_else(|| panic!("no key {key}"))
    }

    #[test]
    fn round_trip_nested_tables() {
        let lua = Lua::new();
        let t = table(
            &lua,
            r#"return {
                name = "bob", bin = "a\0b\255\0", empty = "",
                yes = true, no = false,
                n = 42, neg = -7, big = 2^53, huge = 2^62, frac = 1.25, tiny = -1e-300,
                inf = math.huge, ninf = -math.huge, nan = 0/0,
                list = {1, 2, "three", {4}},
                sparse = {[1] = "a", [2] = "b", [10] = "j"},
                deep = {a = {b = {c = {d = "bottom"}}}},
                [7] = "seven", [1] = "one",
            }"#,
        );
        let bytes = encode(&lua, &t, &ENC);
        let back = decode_document(&lua, &bytes, &DEC).unwrap();
        assert!(deep_eq(&lua, &Value::Table(t), &Value::Table(back.clone())));
        let sparse: Table = back.get("sparse").unwrap();
        assert_eq!(sparse.get::<String>(10).unwrap(), "j");

        // Number keys that are not positive integers come back as their string form.
        let odd = table(&lua, r#"return {[-3] = "m", [0] = "z", [1.5] = "h"}"#);
        let back = decode_document(&lua, &encode(&lua, &odd, &ENC), &DEC).unwrap();
        assert_eq!(back.get::<String>("-3").unwrap(), "m");
        assert_eq!(back.get::<String>("0").unwrap(), "z");
        assert_eq!(back.get::<String>("1.5").unwrap(), "h");
        assert_eq!(back.raw_len(), 0);
    }

    #[test]
    fn number_encoding() {
        let lua = Lua::new();
        let t = table(
            &lua,
            "return {i = 3, f = 0.5, z = -0.0, p = 2^60, big = 2^63, nan = 0/0, inf = 1/0}",
        );
        let bytes = encode(&lua, &t, &ENC);
        assert_eq!(field(&bytes, "i"), (T_INT64, &3i64.to_le_bytes()[..]));
        assert_eq!(field(&bytes, "f").0, T_DOUBLE);
        assert_eq!(field(&bytes, "z").0, T_DOUBLE);
        assert_eq!(
            field(&bytes, "p"),
            (T_INT64, &(1i64 << 60).to_le_bytes()[..])
        );
        assert_eq!(field(&bytes, "big").0, T_DOUBLE);
        assert_eq!(field(&bytes, "nan").0, T_DOUBLE);
        assert_eq!(field(&bytes, "inf").0, T_DOUBLE);
        let back = decode_document(&lua, &bytes, &DEC).unwrap();
        lua.globals().set("b", back).unwrap();
        let ok: bool = lua
            .load("return 1/b.z == -math.huge and b.nan ~= b.nan and b.p == 2^60")
            .eval()
            .unwrap();
        assert!(ok);
        // int64 beyond 2^53 rounds to the nearest double inside LuaJIT.
        let d = doc(&[(T_INT64, "x", &((1i64 << 60) + 1).to_le_bytes())]);
        let x = decode_first(&lua, &d, &DEC).unwrap();
        lua.globals().set("x", x).unwrap();
        assert!(lua.load("return x == 2^60").eval::<bool>().unwrap());
        // Non-sequence float keys use Lua's %.14g spelling.
        assert_eq!(number_key(0.1), "0.1");
        assert_eq!(number_key(1e300), "1e+300");
        assert_eq!(number_key(-2.5e-7), "-2.5e-07");
        assert_eq!(number_key(123456.75), "123456.75");
        assert_eq!(number_key(1.0 / 3.0), "0.33333333333333");
        assert_eq!(number_key(f64::INFINITY), "inf");
    }

    #[test]
    fn hash_keys_on_the_wire() {
        let lua = Lua::new();
        let t = table(&lua, r#"return {10, 20, 30, [5] = 50, x = "y"}"#);
        let bytes = encode(&lua, &t, &ENC);
        let keys: Vec<Vec<u8>> = elements(&bytes).into_iter().map(|e| e.1).collect();
        // Sequence part first, in order; then the rest.
        assert_eq!(
            &keys[..3],
            &[b"#1".to_vec(), b"#2".to_vec(), b"#3".to_vec()]
        );
        assert!(keys.contains(&b"#5".to_vec()));
        assert!(keys.contains(&b"x".to_vec()));
        assert_eq!(keys.len(), 5);

        // Only well-formed "#n" keys become integers.
        let d = doc(&[
            (T_INT32, "#3", &1i32.to_le_bytes()),
            (T_INT32, "#0", &2i32.to_le_bytes()),
            (T_INT32, "#01", &3i32.to_le_bytes()),
            (T_INT32, "#x", &4i32.to_le_bytes()),
            (T_INT32, "#-1", &5i32.to_le_bytes()),
            (T_INT32, "#", &6i32.to_le_bytes()),
            (T_INT32, "#99999999999999999999", &7i32.to_le_bytes()),
            (T_INT32, "4", &8i32.to_le_bytes()),
        ]);
        let t = decode_document(&lua, &d, &DEC).unwrap();
        assert_eq!(t.get::<i64>(3).unwrap(), 1);
        assert_eq!(t.get::<i64>("#0").unwrap(), 2);
        assert_eq!(t.get::<i64>("#01").unwrap(), 3);
        assert_eq!(t.get::<i64>("#x").unwrap(), 4);
        assert_eq!(t.get::<i64>("#-1").unwrap(), 5);
        assert_eq!(t.get::<i64>("#").unwrap(), 6);
        assert_eq!(t.get::<i64>("#99999999999999999999").unwrap(), 7);
        assert_eq!(t.get::<i64>("4").unwrap(), 8);
        assert!(t.get::<Value>(4).unwrap().is_nil());
    }

    #[test]
    fn first_element_rule_and_wrapping() {
        let lua = Lua::new();
        let payload = eval(&lua, r#"return {message = "hi", list = {1, 2}}"#);
        let mut out = BytesMut::from(&b"prefix"[..]);
        encode_wrapped(&lua, &payload, &mut out, &ENC).unwrap();
        assert_eq!(&out[..6], b"prefix");
        let wire = &out[6..];
        assert_eq!(elements(wire)[0].1, b"v");
        let back = decode_first(&lua, wire, &DEC).unwrap();
        assert!(deep_eq(&lua, &payload, &back));

        // Scalars and nil can be wrapped too.
        for src in ["return 42", "return 'str'", "return true", "return nil"] {
            let v = eval(&lua, src);
            let mut out = BytesMut::new();
            encode_wrapped(&lua, &v, &mut out, &ENC).unwrap();
            assert!(deep_eq(&lua, &v, &decode_first(&lua, &out, &DEC).unwrap()));
        }

        // First element only; an empty document gives nil.
        let d = doc(&[
            (T_INT32, "a", &1i32.to_le_bytes()),
            (T_INT32, "b", &2i32.to_le_bytes()),
        ]);
        assert_eq!(decode_first(&lua, &d, &DEC).unwrap(), Value::Integer(1));
        assert_eq!(decode_first(&lua, &doc(&[]), &DEC).unwrap(), Value::Nil);
        let d = doc(&[(T_NULL, "a", &[]), (T_INT32, "b", &2i32.to_le_bytes())]);
        assert_eq!(decode_first(&lua, &d, &DEC).unwrap(), Value::Nil);

        // The rest of the document is still validated.
        let d = doc(&[(T_INT32, "a", &1i32.to_le_bytes()), (0x0B, "r", b"x\0\0")]);
        assert!(matches!(
            decode_first(&lua, &d, &DEC),
            Err(BsonError::UnsupportedType { ty: 0x0B, .. })
        ));
        let d = doc(&[
            (T_INT32, "a", &1i32.to_le_bytes()),
            (T_STRING, "s", &[0, 0, 0, 0]),
        ]);
        assert!(decode_first(&lua, &d, &DEC).is_err());
    }

    #[test]
    fn arrays_decode_one_based() {
        let lua = Lua::new();
        let arr = doc(&[
            (T_STRING, "0", &bstr(b"a")),
            (T_NULL, "1", &[]),
            (T_STRING, "2", &bstr(b"c")),
        ]);
        let d = doc(&[(T_ARRAY, "v", &arr)]);
        let v = decode_first(&lua, &d, &DEC).unwrap();
        let Value::Table(t) = v else { panic!() };
        assert_eq!(t.get::<String>(1).unwrap(), "a");
        assert!(t.get::<Value>(2).unwrap().is_nil());
        assert_eq!(t.get::<String>(3).unwrap(), "c");
        assert!(t.get::<Value>(0).unwrap().is_nil());
        assert!(t.get::<Value>("0").unwrap().is_nil());
    }

    #[test]
    fn every_suffix() {
        let lua = Lua::new();
        let t = table(
            &lua,
            r#"return {
                ["a@i"] = 5, ["b@l"] = 6, ["c@d"] = 7, ["c2@f"] = 1.5, ["e@b"] = true,
                ["t@D"] = 1700000000000, ["s@S"] = "sym", ["k@C"] = "return 1",
                ["bin@B"] = "\0\1", ["arr@Ai"] = {1, 2, 3}, ["arr2@A"] = {1, "x", true},
                ["obj@Od"] = {x = 1, y = 2, ["z@i"] = 3},
                ["nested@AAi"] = {{1}, {2, 3}}, ["mail@host.com"] = "plain", ["@i"] = 9,
            }"#,
        );
        let bytes = encode(&lua, &t, &ENC);
        assert_eq!(field(&bytes, "a"), (T_INT32, &5i32.to_le_bytes()[..]));
        assert_eq!(field(&bytes, "b"), (T_INT64, &6i64.to_le_bytes()[..]));
        assert_eq!(field(&bytes, "c"), (T_DOUBLE, &7f64.to_le_bytes()[..]));
        assert_eq!(field(&bytes, "c2"), (T_DOUBLE, &1.5f64.to_le_bytes()[..]));
        assert_eq!(field(&bytes, "e"), (T_BOOL, &[1u8][..]));
        let ms = 1_700_000_000_000i64.to_le_bytes();
        assert_eq!(field(&bytes, "t"), (T_DATETIME, &ms[..]));
        assert_eq!(field(&bytes, "s"), (T_SYMBOL, &bstr(b"sym")[..]));
        assert_eq!(field(&bytes, "k"), (T_CODE, &bstr(b"return 1")[..]));
        assert_eq!(field(&bytes, "bin"), (T_BINARY, &[2, 0, 0, 0, 0, 0, 1][..]));
        assert_eq!(field(&bytes, "mail@host.com").0, T_STRING);
        assert_eq!(field(&bytes, ""), (T_INT32, &9i32.to_le_bytes()[..]));

        let (ty, arr) = field(&bytes, "arr");
        assert_eq!(ty, T_ARRAY);
        let els = elements(arr);
        let keys: Vec<&[u8]> = els.iter().map(|e| &e.1[..]).collect();
        assert_eq!(keys, [b"0", b"1", b"2"]);
        assert!(els.iter().all(|e| e.0 == T_INT32));

        let (ty, arr2) = field(&bytes, "arr2");
        assert_eq!(ty, T_ARRAY);
        let types: Vec<u8> = elements(arr2).iter().map(|e| e.0).collect();
        assert_eq!(types, [T_INT64, T_STRING, T_BOOL]);

        // Where the raw length covers a hole, the hole is written as null (the border of a
        // table with holes is unspecified in Lua, so drive the encoder directly).
        let mut out = BytesMut::new();
        let mut enc = Encoder {
            out: &mut out,
            allow_functions: false,
        };
        enc.forced(b"h", b"l", &Value::Nil, 1).unwrap();
        assert_eq!(&out[..], &[T_NULL, b'h', 0]);

        let (ty, obj) = field(&bytes, "obj");
        assert_eq!(ty, T_DOCUMENT);
        assert_eq!(field(obj, "x").0, T_DOUBLE);
        assert_eq!(field(obj, "y").0, T_DOUBLE);
        assert_eq!(field(obj, "z").0, T_INT32); // own suffix wins

        let (ty, nested) = field(&bytes, "nested");
        assert_eq!(ty, T_ARRAY);
        for (ty, _, inner) in elements(nested) {
            assert_eq!(ty, T_ARRAY);
            assert!(elements(inner).iter().all(|e| e.0 == T_INT32));
        }

        let back = decode_document(&lua, &bytes, &DEC).unwrap();
        let expected = eval(
            &lua,
            r#"return {
                a = 5, b = 6, c = 7, c2 = 1.5, e = true, t = 1700000000000, s = "sym",
                k = "return 1", bin = "\0\1", arr = {1, 2, 3}, arr2 = {1, "x", true},
                obj = {x = 1, y = 2, z = 3}, nested = {{1}, {2, 3}},
                ["mail@host.com"] = "plain", [""] = 9,
            }"#,
        );
        assert!(deep_eq(&lua, &expected, &Value::Table(back)));
    }

    #[test]
    fn suffix_conversion_errors_name_the_key() {
        let lua = Lua::new();
        for (src, key) in [
            (r#"return {["age@i"] = "x"}"#, "age"),
            (r#"return {["age@i"] = 2^40}"#, "age"),
            (r#"return {["age@i"] = 1.5}"#, "age"),
            (r#"return {["when@D"] = 0.5}"#, "when"),
            (r#"return {["num@l"] = 0/0}"#, "num"),
            (r#"return {["r@d"] = "1"}"#, "r"),
            (r#"return {["flag@b"] = 1}"#, "flag"),
            (r#"return {["sym@S"] = 5}"#, "sym"),
            (r#"return {["code@C"] = {}}"#, "code"),
            (r#"return {["data@B"] = false}"#, "data"),
            (r#"return {["list@A"] = 5}"#, "list"),
            (r#"return {["o@O"] = "s"}"#, "o"),
        ] {
            let t = table(&lua, src);
            let mut out = BytesMut::from(&b"keep"[..]);
            let err = encode_document(&lua, &t, &mut out, &ENC).unwrap_err();
            assert!(
                matches!(&err, BsonError::TypeMismatch { key: k, .. } if k == key),
                "{src}: {err}"
            );
            assert!(err.to_string().contains(key));
            assert_eq!(&out[..], b"keep", "output restored on error");
        }
    }

    #[test]
    fn bad_keys() {
        let lua = Lua::new();
        let t = table(&lua, r#"return {["a\0b"] = 1}"#);
        let err = encode_document(&lua, &t, &mut BytesMut::new(), &ENC).unwrap_err();
        assert!(matches!(err, BsonError::NulInKey { .. }), "{err}");
        let t = table(&lua, "return {[true] = 1}");
        let err = encode_document(&lua, &t, &mut BytesMut::new(), &ENC).unwrap_err();
        assert!(matches!(err, BsonError::UnsupportedKey { .. }), "{err}");
    }

    #[test]
    fn functions_allowed_and_refused() {
        let lua = Lua::new();
        let t = table(
            &lua,
            "local up = 5; return {add = function(a, b) return a + b end, \
             up = function() return up end}",
        );
        let err = encode_document(&lua, &t, &mut BytesMut::new(), &ENC).unwrap_err();
        assert!(
            err.to_string()
                .contains("function values cannot be sent to this peer"),
            "{err}"
        );

        let bytes = encode(&lua, &t, &ENC_FN);
        let (ty, payload) = field(&bytes, "add");
        assert_eq!(ty, T_BINARY);
        assert_eq!(payload[4], SUBTYPE_FUNCTION);

        // Trusted peer: bytecode becomes a function again, without its upvalues (spec 1.3).
        let back = decode_document(&lua, &bytes, &DEC_FN).unwrap();
        let add: Function = back.get("add").unwrap();
        assert_eq!(add.call::<i64>((2, 3)).unwrap(), 5);
        let up: Function = back.get("up").unwrap();
        assert!(up.call::<Value>(()).unwrap().is_nil());

        // Untrusted peer: the bytes stay a plain string.
        let back = decode_document(&lua, &bytes, &DEC).unwrap();
        let s: mlua::String = back.get("add").unwrap();
        assert!(s.as_bytes().starts_with(b"\x1bLJ"));

        // C functions have no bytecode.
        let t = table(&lua, "return {p = print}");
        let err = encode_document(&lua, &t, &mut BytesMut::new(), &ENC_FN).unwrap_err();
        assert!(
            matches!(err, BsonError::FunctionNotDumpable { .. }),
            "{err}"
        );

        // Garbage in a function slot is an error, not a crash, when loading is on.
        let d = doc(&[(T_BINARY, "f", &[3, 0, 0, 0, 0x80, 1, 2, 3])]);
        assert!(matches!(
            decode_first(&lua, &d, &DEC_FN),
            Err(BsonError::BadFunction { .. })
        ));
    }

    #[test]
    fn untransferable_values_become_strings() {
        let lua = Lua::new();
        let t = table(&lua, "return {co = coroutine.create(function() end)}");
        let bytes = encode(&lua, &t, &ENC);
        let back = decode_document(&lua, &bytes, &DEC).unwrap();
        assert!(back.get::<String>("co").unwrap().starts_with("thread: "));
    }

    #[test]
    fn nesting_limit() {
        let lua = Lua::new();
        let t = table(&lua, "local t = {}; t.self = t; return t");
        let err = encode_document(&lua, &t, &mut BytesMut::new(), &ENC).unwrap_err();
        assert!(matches!(err, BsonError::EncodeTooDeep { .. }), "{err}");

        // Top-level document + 63 nested tables is exactly the limit.
        let nest = |levels: usize| {
            let src = format!("local t = {{}}; for i = 1, {levels} do t = {{x = t}} end; return t");
            table(&lua, &src)
        };
        let ok = nest(MAX_DEPTH - 1); // (MAX_DEPTH - 1) wrappers + innermost {} = MAX_DEPTH
        let bytes = encode(&lua, &ok, &ENC);
        decode_document(&lua, &bytes, &DEC).unwrap();
        let too_deep = nest(MAX_DEPTH);
        assert!(encode_document(&lua, &too_deep, &mut BytesMut::new(), &ENC).is_err());

        // Decoder: MAX_DEPTH nested documents pass, one more fails.
        assert!(decode_first(&lua, &nested_doc(MAX_DEPTH), &DEC).is_ok());
        assert!(matches!(
            decode_first(&lua, &nested_doc(MAX_DEPTH + 1), &DEC),
            Err(BsonError::TooDeep { .. })
        ));
    }

    /// A document nested `levels` deep in total (top-level included).
    fn nested_doc(levels: usize) -> Vec<u8> {
        let mut d = doc(&[]);
        for _ in 1..levels {
            d = doc(&[(T_DOCUMENT, "d", &d)]);
        }
        d
    }

    #[test]
    fn malformed_inputs_are_rejected() {
        let lua = Lua::new();
        let good = doc(&[
            (T_STRING, "s", &bstr(b"hello")),
            (T_INT32, "i", &7i32.to_le_bytes()),
        ]);
        assert!(decode_document(&lua, &good, &DEC).is_ok());

        let with_len = |mut d: Vec<u8>, len: i32| {
            d[..4].copy_from_slice(&len.to_le_bytes());
            d
        };
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short length", vec![5, 0, 0]),
            ("length only", vec![4, 0, 0, 0]),
            ("truncated", good[..good.len() - 1].to_vec()),
            (
                "truncated fixed",
                with_len(good[..good.len() - 3].to_vec(), good.len() as i32 - 3),
            ),
            (
                "length too big",
                with_len(good.clone(), good.len() as i32 + 1),
            ),
            (
                "length too small",
                with_len(good.clone(), good.len() as i32 - 1),
            ),
            ("negative length", with_len(good.clone(), -1)),
            ("string length 0", doc(&[(T_STRING, "s", &[0, 0, 0, 0, 0])])),
            (
                "string negative",
                doc(&[(T_STRING, "s", &[0xff, 0xff, 0xff, 0xff, 0])]),
            ),
            (
                "string past end",
                doc(&[(T_STRING, "s", &[100, 0, 0, 0, b'a', 0])]),
            ),
            (
                "string no nul",
                doc(&[(T_STRING, "s", &[2, 0, 0, 0, b'a', b'b'])]),
            ),
            ("unknown type 0x0b", doc(&[(0x0B, "r", b"a\0\0")])),
            ("decimal128", doc(&[(0x13, "d", &[0; 16])])),
            ("min key", doc(&[(0xFF, "m", &[])])),
            ("max key", doc(&[(0x7F, "m", &[])])),
            ("js with scope", doc(&[(0x0F, "j", &[0; 14])])),
            ("type zero", doc(&[(0x00, "z", &[])])),
            ("too deep", nested_doc(MAX_DEPTH + 1)),
            ("bad bool", doc(&[(T_BOOL, "b", &[2])])),
            ("int32 short", doc(&[(T_INT32, "i", &[1, 2])])),
            ("double short", doc(&[(T_DOUBLE, "d", &[1, 2, 3, 4])])),
            (
                "binary negative",
                doc(&[(T_BINARY, "b", &[0xff, 0xff, 0xff, 0xff, 0])]),
            ),
            (
                "binary past end",
                doc(&[(T_BINARY, "b", &[9, 0, 0, 0, 0, 1])]),
            ),
            (
                "sub doc too long",
                doc(&[(T_DOCUMENT, "d", &[50, 0, 0, 0, 0])]),
            ),
            (
                "sub doc too short",
                doc(&[(T_DOCUMENT, "d", &[4, 0, 0, 0, 0])]),
            ),
            (
                "sub doc no terminator",
                doc(&[(T_DOCUMENT, "d", &[5, 0, 0, 0, 1])]),
            ),
            (
                "array no terminator",
                doc(&[(T_ARRAY, "a", &[5, 0, 0, 0, 1])]),
            ),
        ];
        // Missing terminator, top level.
        let mut d = good.clone();
        *d.last_mut().unwrap() = 1;
        cases.push(("missing terminator", d));
        // Key running into the terminator.
        let mut d = vec![8, 0, 0, 0, T_NULL, b'a', b'b', 0];
        cases.push(("key unterminated", d.clone()));
        d[7] = 1;
        cases.push(("key unterminated 2", d));

        for (name, bytes) in &cases {
            assert!(
                decode_document(&lua, bytes, &DEC).is_err(),
                "{name} (document)"
            );
            assert!(decode_first(&lua, bytes, &DEC).is_err(), "{name} (first)");
            assert!(
                decode_first(&lua, bytes, &DEC_FN).is_err(),
                "{name} (first, fn)"
            );
        }
    }

    #[test]
    fn error_messages_are_lowercase_and_located() {
        let lua = Lua::new();
        let d = doc(&[(0x0B, "r", b"a\0\0")]);
        let err = decode_first(&lua, &d, &DEC).unwrap_err();
        assert_eq!(err.to_string(), "unsupported bson type 0x0b at offset 4");
    }

    /// Deterministic mutation fuzzing: whatever the bytes, decoding returns instead of
    /// panicking.
    #[test]
    fn fuzz_mutations_never_panic() {
        let lua = Lua::new();
        let t = table(
            &lua,
            r#"return {
                s = "text", n = 12, f = 0.5, b = true, list = {1, 2, {3, "x"}},
                obj = {a = {b = {c = "d"}}}, ["i@i"] = 3, ["arr@Al"] = {4, 5},
                ["sym@S"] = "y", ["bin@B"] = "\0\1\2", ["when@D"] = 5,
                fn = function() return 1 end,
            }"#,
        );
        let base = encode(&lua, &t, &ENC_FN).to_vec();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut decoded_ok = 0;
        for _ in 0..20_000 {
            let mut d = base.clone();
            let mutations = 1 + next() % 4;
            for _ in 0..mutations {
                let r = next();
                let at = (r >> 8) as usize % d.len().max(1);
                match r % 6 {
                    0 => d[at] = (r >> 32) as u8,
                    1 => d[at] ^= 1 << ((r >> 32) % 8),
                    2 => d.truncate(at),
                    3 => d.insert(at, (r >> 32) as u8),
                    4 => {
                        d.remove(at);
                    }
                    _ => {
                        // Small integer nudges hit length fields meaningfully.
                        d[at] = d[at].wrapping_add(((r >> 32) % 5) as u8).wrapping_sub(2)
                    }
                }
                if d.is_empty() {
                    break;
                }
            }
            // Usually keep the outer length consistent so the inner structure is exercised.
            if d.len() >= 4 && next() % 4 != 0 {
                let len = d.len() as i32;
                d[..4].copy_from_slice(&len.to_le_bytes());
            }
            // Never DEC_FN here: mutated bytecode is exactly what must not be loaded.
            if decode_document(&lua, &d, &DEC).is_ok() {
                decoded_ok += 1;
            }
            let _ = decode_first(&lua, &d, &DEC);
        }
        // Sanity: the loop is not trivially rejecting everything.
        assert!(decoded_ok > 0);
    }
}
