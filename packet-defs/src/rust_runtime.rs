// Runtime (the same in every generated Rust file; no dependencies): the engine's wire is a
// frame of a 4-byte little-endian length (counting itself) and the BSON document {"v": {...}}.
// Integers are written as int64 and arrays as documents with "#1".."#n" keys, as the engine
// writes them; decoding also takes int32, integral doubles and BSON arrays.

/// Why a frame was refused: the field path (as the generated Lua spells it) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for DecodeError {}

fn fail<T>(reason: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError { field: String::new(), reason: reason.into() })
}

/// Prefixes `name` to the path of an error found below it.
fn under<T>(name: &str, r: Result<T, DecodeError>) -> Result<T, DecodeError> {
    r.map_err(|mut e| {
        e.field = if e.field.is_empty() {
            name.to_string()
        } else if e.field.starts_with('[') {
            format!("{name}{}", e.field)
        } else {
            format!("{name}.{}", e.field)
        };
        e
    })
}

/// A decoded BSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Bson {
    Double(f64),
    Str(Vec<u8>),
    Doc(Vec<(String, Bson)>),
    Array(Vec<Bson>),
    Binary(Vec<u8>),
    Bool(bool),
    Null,
    Int(i64),
}

impl Bson {
    /// A field of a document; null counts as absent (a Lua table cannot hold nil).
    fn field(&self, name: &str) -> Option<&Bson> {
        match self {
            Bson::Doc(fs) => fs.iter().find(|(k, _)| k == name).map(|(_, v)| v).filter(|v| **v != Bson::Null),
            _ => None,
        }
    }
}

/// Parses one frame (length prefix included) into the value under its first key.
pub fn parse_frame(frame: &[u8]) -> Result<Bson, DecodeError> {
    if frame.len() < 5 || u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize != frame.len() {
        return fail("bad frame length");
    }
    let (doc, _) = parse_doc(frame, 0, 0)?;
    match doc {
        Bson::Doc(mut fs) if !fs.is_empty() => Ok(fs.swap_remove(0).1),
        _ => fail("empty frame"),
    }
}

fn take<'a>(buf: &'a [u8], pos: usize, n: usize) -> Result<&'a [u8], DecodeError> {
    match buf.get(pos..pos.saturating_add(n)) {
        Some(s) if pos.checked_add(n).is_some() => Ok(s),
        _ => fail("truncated bson"),
    }
}

fn le_i32(buf: &[u8], pos: usize) -> Result<i32, DecodeError> {
    let b = take(buf, pos, 4)?;
    Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn le_8(buf: &[u8], pos: usize) -> Result<[u8; 8], DecodeError> {
    let mut a = [0u8; 8];
    a.copy_from_slice(take(buf, pos, 8)?);
    Ok(a)
}

/// A document at `pos`: (the value, the position after it).
fn parse_doc(buf: &[u8], pos: usize, depth: usize) -> Result<(Bson, usize), DecodeError> {
    if depth > 64 {
        return fail("bson nested too deeply");
    }
    let len = le_i32(buf, pos)?;
    if len < 5 {
        return fail("bad bson document length");
    }
    let end = pos + len as usize;
    take(buf, pos, len as usize)?;
    let mut p = pos + 4;
    let mut fields = Vec::new();
    while p < end - 1 {
        let ty = buf[p];
        let key_end = buf[p + 1..end].iter().position(|&b| b == 0).map(|i| p + 1 + i);
        let Some(key_end) = key_end else { return fail("unterminated bson key") };
        let key = String::from_utf8_lossy(&buf[p + 1..key_end]).into_owned();
        p = key_end + 1;
        let value = match ty {
            0x01 => {
                p += 8;
                Bson::Double(f64::from_le_bytes(le_8(buf, p - 8)?))
            }
            0x02 | 0x0D | 0x0E => {
                let n = le_i32(buf, p)?;
                if n < 1 {
                    return fail("bad bson string length");
                }
                let s = take(buf, p + 4, n as usize)?;
                p += 4 + n as usize;
                Bson::Str(s[..s.len() - 1].to_vec())
            }
            0x03 | 0x04 => {
                let (d, next) = parse_doc(buf, p, depth + 1)?;
                p = next;
                match (ty, d) {
                    (0x04, Bson::Doc(fs)) => Bson::Array(fs.into_iter().map(|(_, v)| v).collect()),
                    (_, d) => d,
                }
            }
            0x05 => {
                let n = le_i32(buf, p)?;
                if n < 0 {
                    return fail("bad bson binary length");
                }
                let s = take(buf, p + 5, n as usize)?.to_vec();
                p += 5 + n as usize;
                Bson::Binary(s)
            }
            0x08 => {
                p += 1;
                Bson::Bool(take(buf, p - 1, 1)?[0] != 0)
            }
            0x06 | 0x0A => Bson::Null,
            0x10 => {
                p += 4;
                Bson::Int(i64::from(le_i32(buf, p - 4)?))
            }
            0x09 | 0x11 | 0x12 => {
                p += 8;
                Bson::Int(i64::from_le_bytes(le_8(buf, p - 8)?))
            }
            other => return fail(format!("unsupported bson type {other:#04x}")),
        };
        if p > end - 1 {
            return fail("truncated bson");
        }
        fields.push((key, value));
    }
    if buf.get(end - 1) != Some(&0) {
        return fail("bson document without terminator");
    }
    Ok((Bson::Doc(fields), end))
}

/// Builds BSON documents in place, patching lengths when each document ends.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
    open: Vec<usize>,
}

impl Writer {
    fn begin(&mut self) {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&[0; 4]);
    }

    fn end(&mut self) {
        self.buf.push(0);
        let start = self.open.pop().expect("balanced documents");
        let len = (self.buf.len() - start) as i32;
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    fn key(&mut self, ty: u8, key: &str) {
        self.buf.push(ty);
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(0);
    }

    fn int(&mut self, key: &str, v: i64) {
        self.key(0x12, key);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn double(&mut self, key: &str, v: f64) {
        self.key(0x01, key);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn boolean(&mut self, key: &str, v: bool) {
        self.key(0x08, key);
        self.buf.push(u8::from(v));
    }

    fn string(&mut self, key: &str, v: &[u8]) {
        self.key(0x02, key);
        self.buf.extend_from_slice(&(v.len() as i32 + 1).to_le_bytes());
        self.buf.extend_from_slice(v);
        self.buf.push(0);
    }

    fn binary(&mut self, key: &str, v: &[u8]) {
        self.key(0x05, key);
        self.buf.extend_from_slice(&(v.len() as i32).to_le_bytes());
        self.buf.push(0);
        self.buf.extend_from_slice(v);
    }

    fn doc(&mut self, key: &str) {
        self.key(0x03, key);
        self.begin();
    }

    /// `{"v": {"message": name, ...fields}}` as a frame.
    fn frame(name: &str, fields: impl FnOnce(&mut Writer)) -> Vec<u8> {
        // The outer document's own length is the frame's length prefix.
        let mut w = Writer { buf: Vec::with_capacity(64), open: Vec::new() };
        w.begin();
        w.doc("v");
        w.string("message", name.as_bytes());
        fields(&mut w);
        w.end();
        w.end();
        w.buf
    }
}

/// The "#n" key of array element `i` (0-based).
fn index_key(i: usize) -> String {
    format!("#{}", i + 1)
}

fn d_bool(v: &Bson) -> Result<bool, DecodeError> {
    match v {
        Bson::Bool(b) => Ok(*b),
        _ => fail("expected boolean"),
    }
}

fn d_int(v: &Bson, lo: i64, hi: i64) -> Result<i64, DecodeError> {
    let n = match v {
        Bson::Int(n) => *n,
        Bson::Double(d) if d.is_nan() || d.fract() != 0.0 => return fail("not an integer"),
        Bson::Double(d) if *d >= 9_223_372_036_854_775_808.0 => return fail(format!("above maximum {hi}")),
        Bson::Double(d) if *d < -9_223_372_036_854_775_808.0 => return fail(format!("below minimum {lo}")),
        Bson::Double(d) => *d as i64,
        _ => return fail("expected integer"),
    };
    if n < lo {
        return fail(format!("below minimum {lo}"));
    }
    if n > hi {
        return fail(format!("above maximum {hi}"));
    }
    Ok(n)
}

fn d_float(v: &Bson, lo: f64, hi: f64) -> Result<f64, DecodeError> {
    let f = match v {
        Bson::Double(d) => *d,
        Bson::Int(n) => *n as f64,
        _ => return fail("expected number"),
    };
    if !f.is_finite() {
        return fail("not finite");
    }
    if f < lo {
        return fail(format!("below minimum {lo}"));
    }
    if f > hi {
        return fail(format!("above maximum {hi}"));
    }
    Ok(f)
}

fn d_bytes(v: &Bson, lo: usize, hi: usize) -> Result<Vec<u8>, DecodeError> {
    let b = match v {
        Bson::Str(b) | Bson::Binary(b) => b,
        _ => return fail("expected string"),
    };
    if b.len() < lo {
        return fail(format!("shorter than {lo} bytes"));
    }
    if b.len() > hi {
        return fail(format!("longer than {hi} bytes"));
    }
    Ok(b.clone())
}

fn d_string(v: &Bson, lo: usize, hi: usize) -> Result<String, DecodeError> {
    String::from_utf8(d_bytes(v, lo, hi)?).or_else(|_| fail("invalid UTF-8"))
}

/// An array: a BSON array, or a document with exactly the keys "#1".."#n" (what the engine
/// sends for a Lua sequence; an empty table is an empty document).
fn d_array<T>(v: &Bson, lo: usize, hi: usize, elem: impl Fn(&Bson) -> Result<T, DecodeError>) -> Result<Vec<T>, DecodeError> {
    let items: Vec<&Bson> = match v {
        Bson::Array(a) => a.iter().collect(),
        Bson::Doc(fs) => {
            let mut slots: Vec<Option<&Bson>> = vec![None; fs.len()];
            for (k, e) in fs {
                let i = k.strip_prefix('#').and_then(|d| d.parse::<usize>().ok()).filter(|&i| i >= 1 && i <= fs.len());
                match i {
                    Some(i) if slots[i - 1].is_none() => slots[i - 1] = Some(e),
                    _ => return fail("not an array"),
                }
            }
            slots.into_iter().map(|s| s.expect("every slot filled")).collect()
        }
        _ => return fail("expected array"),
    };
    // A null element is a hole in the Lua table the server would see.
    if items.iter().any(|e| **e == Bson::Null) {
        return fail("not an array");
    }
    if items.len() > hi {
        return fail(format!("more than {hi} elements"));
    }
    if items.len() < lo {
        return fail(format!("fewer than {lo} elements"));
    }
    items.iter().enumerate().map(|(i, e)| under(&format!("[{}]", i + 1), elem(e))).collect()
}

fn d_table(v: &Bson) -> Result<&Bson, DecodeError> {
    match v {
        Bson::Doc(_) => Ok(v),
        _ => fail("expected table"),
    }
}
