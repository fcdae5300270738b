//! `bundle.viewof(spec [, start, rows] [, fn])`: rows of packed C-like records in a file,
//! memory-mapped (`mmap`, `MAP_SHARED`), so scripts can share fixed-layout data with other
//! processes and with C code (`#pragma pack(1)` structs) without a serialization step.
//!
//! `spec` is a file name (a byte array: each row is one `uint8`) or `{ file, format }` where
//! `format` is a string or a list of strings of whitespace- (or comma-) separated tokens:
//!
//! | token | C type | Lua value |
//! |---|---|---|
//! | `cN` | `char[N]` (N defaults to 1) | string; NUL-padded on write, trailing NULs stripped on read |
//! | `sN` | `char[N]`, NUL-terminated | string of at most N-1 bytes without NUL; read up to the first NUL |
//! | `b` `B` | `int8_t` `uint8_t` | integer |
//! | `h` `H` | `int16_t` `uint16_t` | integer |
//! | `i` `I` | `int32_t` `uint32_t` | integer |
//! | `l` | `int64_t` | number (beyond 2^53 it rounds, like every LuaJIT number) |
//! | `f` `d` | `float` `double` | number |
//!
//! A count after a numeric token (`b4`, `i1`) makes a fixed array, read and written as a Lua
//! list. Records are packed (no padding) in native byte order, like the C struct they
//! mirror. A token may be named, `name:fmt` (`"id:i name:c16 hp:h"`): then every token must
//! be named and rows are tables keyed by name; otherwise rows are lists (`{id, name, hp}`).
//! A format of exactly one unnamed field makes rows bare values (`buf[i] = 7`, the byte
//! array of a plain file name works this way).
//!
//! Placement: no numbers maps every whole record from the start of the file; one number is
//! `rows` (from the start, as in the original's `viewof({file, fmt}, 10)`); two are
//! `start` (a byte offset, any alignment) and `rows`; either may be nil. When `rows` is given
//! the file is created and/or extended with zero bytes to hold them; without it, a missing
//! file is created empty and the view has 0 rows.
//!
//! The buffer (a userdata): `buf[i]` (1-based) reads a row; `buf[i] = row` writes it, where
//! fields missing from the table are left unchanged (partial update) and `buf[i] = nil`
//! zeroes the row. A value that does not fit its field (range, integer-ness, string length,
//! type) is an error naming the field, and the row is then left untouched (rows are
//! assembled aside and copied in one go). A row outside `1..count` is an error.
//! Fields: `size` (record bytes; alias `row_size`), `count` (rows; alias `rows`), `file`,
//! and `#buf`. Methods (call with `.` or `:`):
//! * `commit(['sync'|'async'] [, fn])`: `msync` (default `'sync'`, waits for the disk) and
//!   forgets the rollback journal; returns true. With `fn` ('sync' only) the wait happens off
//!   the core (`viewof_sync`: glommio's blocking thread) and `fn(true)` or `fn(false, error)`
//!   runs on the core once the rows are on disk; commit returns at once.
//! * `rollback()`: restores every row written through this buffer since it was made or last
//!   committed, returns how many rows it restored. Writes are live in the shared mapping, so
//!   other processes may have seen the intermediate values; rollback undoes, it does not
//!   hide. The journal keeps one copy of each written row (first write only).
//! * `scope(['rw'|'ro',] fn)`: calls `fn(buf)` and returns its results; with `'ro'` every
//!   write inside raises an error (scopes nest, the previous mode comes back after).
//!
//! With `fn`, `viewof` returns `fn(buffer)`'s results, else the buffer. The mapping lives
//! until the buffer is garbage-collected (then `munmap`; the kernel writes dirty pages back
//! even without `commit`). Truncating the file under a live mapping makes access fault
//! (SIGBUS), as for any mmap user: only grow shared files.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use mlua::{AnyUserData, Lua, MultiValue, Table, UserData, UserDataFields, UserDataMethods, Value};

use super::{as_integer, as_number, call_user, fail, lua_number_text, native, type_name, Res};

/// Largest `N` / count a token may carry; keeps record sizes sane.
const MAX_TOKEN_N: usize = 1 << 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Char(usize),
    Str(usize),
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    F32,
    F64,
}

impl Kind {
    fn size(self) -> usize {
        match self {
            Kind::Char(n) | Kind::Str(n) => n,
            Kind::I8 | Kind::U8 => 1,
            Kind::I16 | Kind::U16 => 2,
            Kind::I32 | Kind::U32 | Kind::F32 => 4,
            Kind::I64 | Kind::F64 => 8,
        }
    }

    /// C spelling, for messages.
    fn c_name(self) -> String {
        match self {
            Kind::Char(n) | Kind::Str(n) => format!("char[{n}]"),
            Kind::I8 => "int8".into(),
            Kind::U8 => "uint8".into(),
            Kind::I16 => "int16".into(),
            Kind::U16 => "uint16".into(),
            Kind::I32 => "int32".into(),
            Kind::U32 => "uint32".into(),
            Kind::I64 => "int64".into(),
            Kind::F32 => "float".into(),
            Kind::F64 => "double".into(),
        }
    }

    fn int_range(self) -> Option<(i64, i64)> {
        Some(match self {
            Kind::I8 => (i8::MIN.into(), i8::MAX.into()),
            Kind::U8 => (0, u8::MAX.into()),
            Kind::I16 => (i16::MIN.into(), i16::MAX.into()),
            Kind::U16 => (0, u16::MAX.into()),
            Kind::I32 => (i32::MIN.into(), i32::MAX.into()),
            Kind::U32 => (0, u32::MAX.into()),
            Kind::I64 => (i64::MIN, i64::MAX),
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
struct Field {
    name: Option<String>,
    /// The token as written (without the name), for messages.
    token: String,
    kind: Kind,
    /// `Some(n)` for an array (`b4`).
    count: Option<usize>,
    offset: usize,
}

impl Field {
    fn size(&self) -> usize {
        self.kind.size() * self.count.unwrap_or(1)
    }
}

#[derive(Clone, Debug)]
struct Layout {
    fields: Vec<Field>,
    size: usize,
    named: bool,
}

impl Layout {
    fn bytes() -> Layout {
        Layout {
            fields: vec![Field {
                name: None,
                token: "B".into(),
                kind: Kind::U8,
                count: None,
                offset: 0,
            }],
            size: 1,
            named: false,
        }
    }

    /// Rows are bare values when there is a single unnamed field.
    fn bare(&self) -> bool {
        !self.named && self.fields.len() == 1
    }
}

fn parse_format(specs: &[String]) -> Res<Layout> {
    let mut fields: Vec<Field> = Vec::new();
    let mut size = 0usize;
    let tokens = specs
        .iter()
        .flat_map(|s| s.split(|c: char| c.is_ascii_whitespace() || c == ','))
        .filter(|t| !t.is_empty());
    for token in tokens {
        let bad = |why: &str| -> Res<Layout> {
            fail(format!("bundle.viewof: bad format token {token:?}: {why}"))
        };
        let (name, fmt) = match token.split_once(':') {
            Some((name, fmt)) => {
                if name.is_empty() {
                    return bad("empty field name");
                }
                (Some(name.to_string()), fmt)
            }
            None => (None, token),
        };
        let mut chars = fmt.chars();
        let Some(letter) = chars.next() else {
            return bad("missing type letter");
        };
        let digits = chars.as_str();
        let n = if digits.is_empty() {
            None
        } else {
            match digits.parse::<usize>() {
                Ok(n) if (1..=MAX_TOKEN_N).contains(&n) => Some(n),
                _ => return bad(&format!("the number must be 1 to {MAX_TOKEN_N}")),
            }
        };
        let (kind, count) = match letter {
            'c' => (Kind::Char(n.unwrap_or(1)), None),
            's' => match n {
                Some(n) => (Kind::Str(n), None),
                None => return bad("`s` needs a size, e.g. s16"),
            },
            'b' => (Kind::I8, n),
            'B' => (Kind::U8, n),
            'h' => (Kind::I16, n),
            'H' => (Kind::U16, n),
            'i' => (Kind::I32, n),
            'I' => (Kind::U32, n),
            'l' => (Kind::I64, n),
            'f' => (Kind::F32, n),
            'd' => (Kind::F64, n),
            _ => return bad("unknown type letter (expected one of c s b B h H i I l f d)"),
        };
        if let Some(name) = &name {
            if fields.iter().any(|f| f.name.as_deref() == Some(name)) {
                return bad("duplicate field name");
            }
        }
        let field = Field {
            name,
            token: fmt.to_string(),
            kind,
            count,
            offset: size,
        };
        size = match size.checked_add(field.size()) {
            Some(s) if s <= MAX_TOKEN_N * 8 => s,
            _ => return bad("the record is too large"),
        };
        fields.push(field);
    }
    if fields.is_empty() {
        return fail("bundle.viewof: the format has no fields");
    }
    let named = fields[0].name.is_some();
    if fields.iter().any(|f| f.name.is_some() != named) {
        return fail("bundle.viewof: name either every field (name:fmt) or none");
    }
    Ok(Layout {
        fields,
        size,
        named,
    })
}

/// One `mmap`ed range; unmapped on drop (after the last holder: the buffer, or a
/// `commit('sync', fn)` in flight on glommio's blocking thread).
pub(super) struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: another thread only ever calls `msync` on the range (`viewof_sync`), which the
// kernel allows concurrently with reads and writes of a shared mapping; rows are copied in
// and out by the owning thread only, and munmap runs once, when the last `Arc` drops.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `msync` of the whole range with `flags` (`MS_SYNC` waits for the disk).
    pub(super) fn sync(&self, flags: libc::c_int) -> std::io::Result<()> {
        // SAFETY: the whole live mapping, page-aligned as mmap returned it.
        if unsafe { libc::msync(self.base.cast(), self.len, flags) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned and nothing else unmaps them.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// The buffer object scripts hold.
pub struct View {
    map: Option<Arc<Mapping>>,
    /// Offset of row 1 inside the mapping (the mapping starts on a page boundary).
    data_off: usize,
    layout: Layout,
    count: usize,
    file: String,
    read_only: bool,
    /// Row (0-based) -> its bytes before the first write since creation / the last commit.
    journal: HashMap<usize, Box<[u8]>>,
}

impl View {
    /// Copies row `row` (0-based, < count) out of the mapping.
    fn read_row(&self, row: usize) -> Vec<u8> {
        let size = self.layout.size;
        let mut out = vec![0u8; size];
        if let Some(m) = &self.map {
            let at = self.data_off + row * size;
            if row < self.count && at + size <= m.len {
                // SAFETY: the range was checked against the mapping; copying (rather than
                // borrowing) avoids holding a Rust reference into memory others may write.
                unsafe { std::ptr::copy_nonoverlapping(m.base.add(at), out.as_mut_ptr(), size) };
            }
        }
        out
    }

    fn write_row(&mut self, row: usize, bytes: &[u8]) {
        let size = self.layout.size;
        if let Some(m) = &self.map {
            let at = self.data_off + row * size;
            if row < self.count && bytes.len() == size && at + size <= m.len {
                // SAFETY: as in read_row; the mapping is PROT_WRITE and MAP_SHARED.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.base.add(at), size) };
            }
        }
    }

    /// Validates a row index (1-based Lua value) and returns it 0-based.
    fn row_index(&self, key: &Value) -> Res<usize> {
        let Some(i) = as_integer(key) else {
            return fail(format!(
                "bundle.viewof: a row index must be an integer, got {}",
                match key {
                    Value::Number(n) => lua_number_text(*n),
                    other => type_name(other).to_string(),
                }
            ));
        };
        if i < 1 || i as u64 > self.count as u64 {
            if self.count == 0 {
                return fail(format!(
                    "bundle.viewof: row {i} is out of range (the view has no rows)"
                ));
            }
            return fail(format!(
                "bundle.viewof: row {i} is out of range (1..{})",
                self.count
            ));
        }
        Ok(i as usize - 1)
    }
}

impl UserData for View {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        // Through the error shim, so misuse raises plain "bundle.viewof: ..." strings.
        fields.add_meta_field_with("__index", |lua| native(lua, "bundle.viewof", index));
        fields.add_meta_field_with("__newindex", |lua| native(lua, "bundle.viewof", newindex));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method("__len", |_, this, ()| Ok(this.count));
        methods.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!(
                "bundle.viewof: {} ({} rows of {} bytes)",
                this.file, this.count, this.layout.size
            ))
        });
    }
}

pub(super) fn viewof(lua: &Lua, args: MultiValue) -> Res<MultiValue> {
    let mut args: Vec<Value> = args.into_vec();
    if args.is_empty() {
        return fail("bundle.viewof: expected a file name or {file, format}");
    }
    let spec = args.remove(0);
    let f = match args.last() {
        Some(Value::Function(f)) => {
            let f = f.clone();
            args.pop();
            Some(f)
        }
        _ => None,
    };
    while matches!(args.last(), Some(Value::Nil)) && args.len() > 2 {
        args.pop();
    }
    let number = |v: &Value, what: &str| -> Res<Option<u64>> {
        match v {
            Value::Nil => Ok(None),
            v => match as_integer(v) {
                Some(n) if n >= 0 => Ok(Some(n as u64)),
                _ => fail(format!(
                    "bundle.viewof: {what} must be a non-negative integer, got {}",
                    match v {
                        Value::Number(n) => lua_number_text(*n),
                        Value::Integer(i) => i.to_string(),
                        other => type_name(other).to_string(),
                    }
                )),
            },
        }
    };
    let (start, rows) = match args.as_slice() {
        [] => (0, None),
        [rows] => (0, number(rows, "rows")?),
        [start, rows] => (number(start, "start")?.unwrap_or(0), number(rows, "rows")?),
        _ => {
            return fail(
                "bundle.viewof: expected (spec [, start, rows] [, fn]): too many arguments",
            )
        }
    };

    let (file, layout) = match &spec {
        Value::String(s) => (s.to_string_lossy(), Layout::bytes()),
        Value::Table(t) => spec_table(t)?,
        other => {
            return fail(format!(
                "bundle.viewof: expected a file name or {{file, format}}, got {}",
                type_name(other)
            ))
        }
    };
    let view = open(file, layout, start, rows)?;
    let ud = lua.create_userdata(view)?;
    match f {
        Some(f) => call_user(lua, &f, MultiValue::from_vec(vec![Value::UserData(ud)])),
        None => Ok(MultiValue::from_vec(vec![Value::UserData(ud)])),
    }
}

fn spec_table(t: &Table) -> Res<(String, Layout)> {
    let file =
        match t.raw_get::<Value>(1)? {
            Value::String(s) => s.to_string_lossy(),
            Value::UserData(_) => return fail(
                "bundle.viewof: a view of another buffer is not supported yet (give a file name)",
            ),
            other => {
                return fail(format!(
                    "bundle.viewof: spec[1] must be a file name, got {}",
                    type_name(&other)
                ))
            }
        };
    let layout = match t.raw_get::<Value>(2)? {
        Value::Nil => Layout::bytes(),
        Value::String(s) => parse_format(&[s.to_string_lossy()])?,
        Value::Table(list) => {
            let mut specs = Vec::new();
            for i in 1..=list.raw_len() {
                match list.raw_get::<Value>(i)? {
                    Value::String(s) => specs.push(s.to_string_lossy()),
                    other => {
                        return fail(format!(
                            "bundle.viewof: format entries must be strings like \"id:i name:c16\", got {}",
                            type_name(&other)
                        ))
                    }
                }
            }
            parse_format(&specs)?
        }
        other => {
            return fail(format!(
                "bundle.viewof: spec[2] must be a format string or a list of them, got {}",
                type_name(&other)
            ))
        }
    };
    Ok((file, layout))
}

fn open(file: String, layout: Layout, start: u64, rows: Option<u64>) -> Res<View> {
    let io = |what: &str, e: std::io::Error| -> Res<View> {
        fail(format!("bundle.viewof: cannot {what} {file:?}: {e}"))
    };
    if let Err(refused) = crate::node::blocking::note(
        crate::node::blocking::Kind::ViewofOpen,
        &format!("bundle.viewof of {file:?}"),
    ) {
        return fail(refused.to_string());
    }
    let handle = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&file)
    {
        Ok(h) => h,
        Err(e) => return io("open", e),
    };
    let file_len = match handle.metadata() {
        Ok(m) => m.len(),
        Err(e) => return io("stat", e),
    };
    let size = layout.size as u64;
    let count = match rows {
        Some(n) => n,
        None => file_len.saturating_sub(start) / size,
    };
    let Some(end) = count.checked_mul(size).and_then(|b| b.checked_add(start)) else {
        return fail("bundle.viewof: start + rows * size overflows");
    };
    if end > i64::MAX as u64 || usize::try_from(end).is_err() {
        return fail("bundle.viewof: the view is too large");
    }
    if end > file_len {
        if let Err(e) = handle.set_len(end) {
            return io("extend", e);
        }
    }
    let mut view = View {
        map: None,
        data_off: 0,
        layout,
        count: count as usize,
        file: file.clone(),
        read_only: false,
        journal: HashMap::new(),
    };
    if count == 0 {
        return Ok(view);
    }
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as u64,
        _ => 4096,
    };
    let aligned = start - start % page;
    let len = (end - aligned) as usize;
    // SAFETY: a fresh mapping of an open descriptor; the result is checked for MAP_FAILED,
    // and the descriptor may be closed afterwards (the mapping keeps the file).
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            handle.as_raw_fd(),
            aligned as libc::off_t,
        )
    };
    if base == libc::MAP_FAILED {
        return io("map", std::io::Error::last_os_error());
    }
    view.map = Some(Arc::new(Mapping {
        base: base.cast(),
        len,
    }));
    view.data_off = (start - aligned) as usize;
    Ok(view)
}

// ---------------------------------------------------------------------------------------------
// Access
// ---------------------------------------------------------------------------------------------

fn index(lua: &Lua, args: MultiValue) -> Res<MultiValue> {
    let mut args = args.into_iter();
    let Some(Value::UserData(ud)) = args.next() else {
        return fail("bundle.viewof: not a buffer");
    };
    let key = args.next().unwrap_or(Value::Nil);
    let one = |v: Value| Ok(MultiValue::from_vec(vec![v]));
    if let Value::String(s) = &key {
        let name = s.to_string_lossy();
        let method: fn(&Lua, &AnyUserData, Vec<Value>) -> Res<MultiValue> = match name.as_str() {
            "commit" => commit,
            "rollback" => rollback,
            "scope" => scope,
            _ => {
                let view = ud.borrow::<View>()?;
                return match name.as_str() {
                    "size" | "row_size" => one(Value::Integer(view.layout.size as i64)),
                    "count" | "rows" => one(Value::Integer(view.count as i64)),
                    "file" => one(Value::String(lua.create_string(&view.file)?)),
                    _ => fail(format!(
                        "bundle.viewof: no field {name:?} (index rows with numbers; fields: size, count, file, commit, rollback, scope)"
                    )),
                };
            }
        };
        // A method bound to this buffer, callable as buf.commit() or buf:commit().
        let bound = ud.clone();
        let f = native(lua, "bundle.viewof", move |lua, args| {
            let mut args = args.into_vec();
            if let Some(Value::UserData(first)) = args.first() {
                if *first == bound {
                    args.remove(0);
                }
            }
            method(lua, &bound, args)
        })?;
        return one(Value::Function(f));
    }
    let view = ud.borrow::<View>()?;
    let row = view.row_index(&key)?;
    let bytes = view.read_row(row);
    one(decode_row(lua, &view.layout, &bytes)?)
}

fn newindex(_: &Lua, args: MultiValue) -> Res<MultiValue> {
    let mut args = args.into_iter();
    let Some(Value::UserData(ud)) = args.next() else {
        return fail("bundle.viewof: not a buffer");
    };
    let key = args.next().unwrap_or(Value::Nil);
    let value = args.next().unwrap_or(Value::Nil);
    if let Value::String(s) = &key {
        return fail(format!(
            "bundle.viewof: cannot set {:?} (only rows, by number, can be written)",
            s.to_string_lossy()
        ));
    }
    let mut view = ud.borrow_mut::<View>()?;
    let row = view.row_index(&key)?;
    if view.read_only {
        return fail("bundle.viewof: the buffer is read-only inside scope('ro')");
    }
    let old = view.read_row(row);
    let mut new = old.clone();
    if value.is_nil() {
        new.fill(0);
    } else {
        encode_row(&view.layout, &value, &mut new, row + 1)?;
    }
    view.journal
        .entry(row)
        .or_insert_with(|| old.into_boxed_slice());
    view.write_row(row, &new);
    Ok(MultiValue::new())
}

fn commit(lua: &Lua, ud: &AnyUserData, args: Vec<Value>) -> Res<MultiValue> {
    let flags = match args.first() {
        None | Some(Value::Nil) => libc::MS_SYNC,
        Some(Value::String(s)) if s.as_bytes().as_ref() == b"sync" => libc::MS_SYNC,
        Some(Value::String(s)) if s.as_bytes().as_ref() == b"async" => libc::MS_ASYNC,
        Some(other) => {
            return fail(format!(
                "bundle.viewof: commit takes 'sync' or 'async', got {}",
                match other {
                    Value::String(s) => format!("{:?}", s.to_string_lossy()),
                    v => type_name(v).to_string(),
                }
            ))
        }
    };
    let done = match args.get(1) {
        None | Some(Value::Nil) => None,
        Some(Value::Function(f)) if flags == libc::MS_SYNC => Some(f.clone()),
        Some(other) => {
            return fail(format!(
                "bundle.viewof: commit's callback goes with 'sync' and must be a function, got {}",
                type_name(other)
            ))
        }
    };
    let mut view = ud.borrow_mut::<View>()?;
    let Some(map) = view.map.clone() else {
        view.journal.clear();
        drop(view);
        if let Some(done) = done {
            call_user(lua, &done, MultiValue::from_vec(vec![Value::Boolean(true)]))?;
        }
        return Ok(MultiValue::from_vec(vec![Value::Boolean(true)]));
    };
    let file = view.file.clone();
    if done.is_some() {
        // Committed from the script's point of view: rollback starts over from here.
        view.journal.clear();
    }
    drop(view);
    if let Some(done) = done {
        if super::viewof_sync::start(lua, map.clone(), &file, done.clone())? {
            return Ok(MultiValue::from_vec(vec![Value::Boolean(true)]));
        }
        // Not on a core: sync here, then tell `done`.
        let result = match map.sync(libc::MS_SYNC) {
            Ok(()) => vec![Value::Boolean(true)],
            Err(e) => vec![
                Value::Boolean(false),
                Value::String(
                    lua.create_string(format!("bundle.viewof: commit of {file:?} failed: {e}"))?,
                ),
            ],
        };
        call_user(lua, &done, MultiValue::from_vec(result))?;
        return Ok(MultiValue::from_vec(vec![Value::Boolean(true)]));
    }
    if flags == libc::MS_SYNC {
        if let Err(refused) = crate::node::blocking::note(
            crate::node::blocking::Kind::ViewofSync,
            &format!("commit('sync') of the view of {file:?}"),
        ) {
            return fail(refused.to_string());
        }
    }
    if let Err(e) = map.sync(flags) {
        return fail(format!("bundle.viewof: commit of {file:?} failed: {e}"));
    }
    ud.borrow_mut::<View>()?.journal.clear();
    Ok(MultiValue::from_vec(vec![Value::Boolean(true)]))
}

fn rollback(_: &Lua, ud: &AnyUserData, _args: Vec<Value>) -> Res<MultiValue> {
    let mut view = ud.borrow_mut::<View>()?;
    let journal = std::mem::take(&mut view.journal);
    let restored = journal.len();
    for (row, bytes) in journal {
        view.write_row(row, &bytes);
    }
    Ok(MultiValue::from_vec(vec![Value::Integer(restored as i64)]))
}

fn scope(lua: &Lua, ud: &AnyUserData, args: Vec<Value>) -> Res<MultiValue> {
    let (mode, f) = match args.as_slice() {
        [Value::Function(f)] => (false, f.clone()),
        [Value::String(m), Value::Function(f)] => match m.as_bytes().as_ref() {
            b"rw" => (false, f.clone()),
            b"ro" => (true, f.clone()),
            _ => {
                return fail(format!(
                    "bundle.viewof: scope mode must be 'rw' or 'ro', got {:?}",
                    m.to_string_lossy()
                ))
            }
        },
        _ => return fail("bundle.viewof: expected scope(['rw'|'ro',] fn)"),
    };
    let previous = {
        let mut view = ud.borrow_mut::<View>()?;
        std::mem::replace(&mut view.read_only, mode)
    };
    // No borrow is held while the script runs: it reads and writes the buffer itself.
    let result = call_user(
        lua,
        &f,
        MultiValue::from_vec(vec![Value::UserData(ud.clone())]),
    );
    if let Ok(mut view) = ud.borrow_mut::<View>() {
        view.read_only = previous;
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Row encoding
// ---------------------------------------------------------------------------------------------

fn field_label(layout: &Layout, index: usize) -> String {
    let f = &layout.fields[index];
    match &f.name {
        Some(name) => format!("field {name:?} ({})", f.token),
        None if layout.bare() => format!("the value ({})", f.token),
        None => format!("field {} ({})", index + 1, f.token),
    }
}

fn decode_row(lua: &Lua, layout: &Layout, bytes: &[u8]) -> Res<Value> {
    if layout.bare() {
        return decode_field(lua, &layout.fields[0], bytes);
    }
    let t = if layout.named {
        lua.create_table_with_capacity(0, layout.fields.len())?
    } else {
        lua.create_table_with_capacity(layout.fields.len(), 0)?
    };
    for (i, f) in layout.fields.iter().enumerate() {
        let v = decode_field(lua, f, bytes)?;
        match &f.name {
            Some(name) => t.raw_set(name.as_str(), v)?,
            None => t.raw_set(i + 1, v)?,
        }
    }
    Ok(Value::Table(t))
}

fn decode_field(lua: &Lua, f: &Field, row: &[u8]) -> Res<Value> {
    let bytes = &row[f.offset..f.offset + f.size()];
    match f.count {
        None => decode_scalar(lua, f.kind, bytes),
        Some(n) => {
            let t = lua.create_table_with_capacity(n, 0)?;
            let w = f.kind.size();
            for i in 0..n {
                t.raw_set(
                    i + 1,
                    decode_scalar(lua, f.kind, &bytes[i * w..(i + 1) * w])?,
                )?;
            }
            Ok(Value::Table(t))
        }
    }
}

fn decode_scalar(lua: &Lua, kind: Kind, b: &[u8]) -> Res<Value> {
    fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&b[..N]);
        a
    }
    Ok(match kind {
        Kind::Char(_) => {
            let end = b.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
            Value::String(lua.create_string(&b[..end])?)
        }
        Kind::Str(_) => {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            Value::String(lua.create_string(&b[..end])?)
        }
        Kind::I8 => Value::Integer(i8::from_ne_bytes(arr(b)).into()),
        Kind::U8 => Value::Integer(b[0].into()),
        Kind::I16 => Value::Integer(i16::from_ne_bytes(arr(b)).into()),
        Kind::U16 => Value::Integer(u16::from_ne_bytes(arr(b)).into()),
        Kind::I32 => Value::Integer(i32::from_ne_bytes(arr(b)).into()),
        Kind::U32 => Value::Integer(u32::from_ne_bytes(arr(b)).into()),
        Kind::I64 => Value::Integer(i64::from_ne_bytes(arr(b))),
        Kind::F32 => Value::Number(f32::from_ne_bytes(arr(b)).into()),
        Kind::F64 => Value::Number(f64::from_ne_bytes(arr(b))),
    })
}

fn encode_row(layout: &Layout, value: &Value, row: &mut [u8], row_no: usize) -> Res<()> {
    if layout.bare() {
        return encode_field(&layout.fields[0], value, row, || {
            format!("row {row_no} {}", field_label(layout, 0))
        });
    }
    let Value::Table(t) = value else {
        return fail(format!(
            "bundle.viewof: row {row_no} must be a table (or nil to clear it), got {}",
            type_name(value)
        ));
    };
    for (i, f) in layout.fields.iter().enumerate() {
        let v: Value = match &f.name {
            Some(name) => t.raw_get(name.as_str())?,
            None => t.raw_get(i + 1)?,
        };
        if v.is_nil() {
            continue; // partial update: absent fields keep their bytes
        }
        encode_field(f, &v, row, || {
            format!("row {row_no} {}", field_label(layout, i))
        })?;
    }
    Ok(())
}

fn encode_field(f: &Field, v: &Value, row: &mut [u8], label: impl Fn() -> String) -> Res<()> {
    let dst = &mut row[f.offset..f.offset + f.size()];
    match f.count {
        None => encode_scalar(f.kind, v, dst, &label),
        Some(n) => {
            let Value::Table(list) = v else {
                return fail(format!(
                    "bundle.viewof: {} expects a list of {n}, got {}",
                    label(),
                    type_name(v)
                ));
            };
            if list.raw_len() > n {
                return fail(format!(
                    "bundle.viewof: {} holds {n} values, got {}",
                    label(),
                    list.raw_len()
                ));
            }
            let w = f.kind.size();
            for i in 0..n {
                let e: Value = list.raw_get(i + 1)?;
                if e.is_nil() {
                    continue;
                }
                encode_scalar(f.kind, &e, &mut dst[i * w..(i + 1) * w], &|| {
                    format!("{}[{}]", label(), i + 1)
                })?;
            }
            Ok(())
        }
    }
}

fn encode_scalar(kind: Kind, v: &Value, dst: &mut [u8], label: &dyn Fn() -> String) -> Res<()> {
    let shown = |v: &Value| match v {
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => lua_number_text(*n),
        other => type_name(other).to_string(),
    };
    match kind {
        Kind::Char(n) | Kind::Str(n) => {
            let Value::String(s) = v else {
                return fail(format!(
                    "bundle.viewof: {} expects a string, got {}",
                    label(),
                    type_name(v)
                ));
            };
            let b = s.as_bytes();
            let limit = if let Kind::Str(_) = kind { n - 1 } else { n };
            if b.len() > limit {
                return fail(format!(
                    "bundle.viewof: {}: a string of {} bytes does not fit {} (at most {limit})",
                    label(),
                    b.len(),
                    kind.c_name()
                ));
            }
            if matches!(kind, Kind::Str(_)) && b.contains(&0) {
                return fail(format!(
                    "bundle.viewof: {}: the string contains a NUL byte",
                    label()
                ));
            }
            dst[..b.len()].copy_from_slice(&b);
            dst[b.len()..].fill(0);
        }
        Kind::F32 | Kind::F64 => {
            let Some(x) = as_number(v) else {
                return fail(format!(
                    "bundle.viewof: {} expects a number, got {}",
                    label(),
                    type_name(v)
                ));
            };
            if kind == Kind::F32 {
                if x.is_finite() && x.abs() > f64::from(f32::MAX) {
                    return fail(format!(
                        "bundle.viewof: {}: {} does not fit float",
                        label(),
                        shown(v)
                    ));
                }
                dst.copy_from_slice(&(x as f32).to_ne_bytes());
            } else {
                dst.copy_from_slice(&x.to_ne_bytes());
            }
        }
        _ => {
            let Some((lo, hi)) = kind.int_range() else {
                return fail("bundle.viewof: internal error: unknown field kind");
            };
            let Some(i) = as_integer(v) else {
                return fail(format!(
                    "bundle.viewof: {} expects an integer, got {}",
                    label(),
                    shown(v)
                ));
            };
            if i < lo || i > hi {
                return fail(format!(
                    "bundle.viewof: {}: {i} does not fit {}",
                    label(),
                    kind.c_name()
                ));
            }
            // Two's complement truncation is exact here: `i` is within the kind's range.
            let bytes = i.to_ne_bytes();
            let w = kind.size();
            if cfg!(target_endian = "little") {
                dst.copy_from_slice(&bytes[..w]);
            } else {
                dst.copy_from_slice(&bytes[8 - w..]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(tag: &str) -> TempFile {
            let p = std::env::temp_dir().join(format!(
                "bundle-viewof-{}-{tag}-{:?}.bin",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_file(&p);
            TempFile(p)
        }
        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn bundle_viewof_format_parsing() {
        let l = parse_format(&["id:i name:c16 hp:h".into(), "stats:b4,tag:s8".into()])
            .ok()
            .unwrap();
        assert_eq!(l.size, 4 + 16 + 2 + 4 + 8);
        assert!(l.named);
        assert_eq!(l.fields[3].count, Some(4));
        assert_eq!(l.fields[4].offset, 26);
        let l = parse_format(&["c10 i".into()]).ok().unwrap();
        assert_eq!(l.size, 14);
        assert!(!l.named);
        for bad in ["x", "i0", "s", "a:i i", "a:i a:h", ":i", "", "c99999999999"] {
            assert!(parse_format(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn bundle_viewof_write_read_commit_across_mappings() {
        let tmp = TempFile::new("shared");
        let lua = lua();
        lua.globals().set("FILE", tmp.path()).unwrap();
        lua.load(
            r#"
            local FMT = { FILE, { "id:i name:c8 hp:h", "stats:b3 tag:s6 ratio:f big:l d:d u:I ub:B uh:H" } }
            local a = bundle.viewof(FMT, 4)
            local b = bundle.viewof(FMT, 4)
            assert(a.size == 4 + 8 + 2 + 3 + 6 + 4 + 8 + 8 + 4 + 1 + 2 and a.count == 4 and #a == 4)
            assert(a.row_size == a.size and a.rows == 4)
            a[2] = { id = -7, name = "orc", hp = 300, stats = {1, -2, 127}, tag = "hello",
                     ratio = 0.5, big = 2^40, d = 1/3, u = 4294967295, ub = 255, uh = 65535 }
            -- the second mapping sees the write at once (MAP_SHARED)
            local r = b[2]
            assert(r.id == -7 and r.name == "orc" and r.hp == 300, r.name)
            assert(r.stats[1] == 1 and r.stats[2] == -2 and r.stats[3] == 127)
            assert(r.tag == "hello" and r.ratio == 0.5 and r.big == 2^40 and r.d == 1/3)
            assert(r.u == 4294967295 and r.ub == 255 and r.uh == 65535)
            -- untouched rows are zero
            local z = b[1]
            assert(z.id == 0 and z.name == "" and z.stats[3] == 0)
            -- partial update keeps other fields
            b[2] = { hp = 5, stats = { [2] = 9 } }
            assert(a[2].hp == 5 and a[2].name == "orc" and a[2].stats[1] == 1 and a[2].stats[2] == 9)
            assert(a.commit() == true and a:commit("async") == true)
            -- nil clears a row
            b[2] = nil
            assert(a[2].id == 0 and a[2].name == "")
        "#,
        )
        .exec()
        .unwrap();
        // Four packed 50-byte records.
        let bytes = std::fs::read(tmp.path()).unwrap();
        assert_eq!(bytes.len(), 4 * 50);
    }

    #[test]
    fn a_commit_with_a_callback_off_a_core_syncs_here_and_calls_it_at_once() {
        let tmp = TempFile::new("synced");
        let lua = lua();
        lua.globals().set("FILE", tmp.path()).unwrap();
        lua.load(
            r#"
            local v = bundle.viewof({ FILE, "i" }, 2)
            v[2] = 77
            local heard
            assert(v:commit("sync", function(ok, err) heard = { ok, err } end) == true)
            assert(heard and heard[1] == true and heard[2] == nil, "called before commit returns")
            assert(v:rollback() == 0, "the commit forgot the journal")
            local ok, e = pcall(v.commit, v, "async", function() end)
            assert(not ok and e:find("goes with 'sync'"), e)
        "#,
        )
        .exec()
        .unwrap();
        let bytes = std::fs::read(tmp.path()).unwrap();
        assert_eq!(&bytes[4..8], &77i32.to_ne_bytes());
    }

    #[test]
    fn bundle_viewof_layout_on_disk_and_start_offset() {
        let tmp = TempFile::new("layout");
        let lua = lua();
        lua.globals().set("FILE", tmp.path()).unwrap();
        lua.load(
            r#"
            local v = bundle.viewof({ FILE, "c3 h" }, 5, 2)
            v[1] = { "ab", 258 }
            v[2] = { "xyz", -1 }
            v.commit()
            assert(v[2][1] == "xyz" and v[2][2] == -1)
        "#,
        )
        .exec()
        .unwrap();
        let bytes = std::fs::read(tmp.path()).unwrap();
        assert_eq!(bytes.len(), 15);
        let mut want = vec![0u8; 5];
        want.extend_from_slice(b"ab\0");
        want.extend_from_slice(&258i16.to_ne_bytes());
        want.extend_from_slice(b"xyz");
        want.extend_from_slice(&(-1i16).to_ne_bytes());
        assert_eq!(bytes, want);
        // A plain file name maps bytes; the whole file without counts.
        let rows: Vec<i64> = lua
            .load(r#"local v = bundle.viewof(FILE) local t = {} for i = 1, #v do t[i] = v[i] end return t"#)
            .eval()
            .unwrap();
        assert_eq!(rows.len(), 15);
        assert_eq!(rows[5], i64::from(b'a'));
        // rows from the start of the file, a bare single field
        let x: i64 = lua
            .load(r#"return bundle.viewof({ FILE, { "B" } }, 1, 3, function(buf) buf[2] = 200 return buf[2] + buf.count end)"#)
            .eval()
            .unwrap();
        assert_eq!(x, 203);
        assert_eq!(std::fs::read(tmp.path()).unwrap()[2], 200);
    }

    #[test]
    fn bundle_viewof_rollback_and_scope() {
        let tmp = TempFile::new("rollback");
        let lua = lua();
        lua.globals().set("FILE", tmp.path()).unwrap();
        lua.load(
            r#"
            local v = bundle.viewof({ FILE, "n:i" }, 3)
            v[1] = { n = 1 } v.commit()
            v[1] = { n = 2 } v[1] = { n = 3 } v[2] = { n = 4 }
            assert(v.rollback() == 2)
            assert(v[1].n == 1 and v[2].n == 0)
            assert(v:rollback() == 0)
            local r = v.scope("ro", function(buf)
              local ok, e = pcall(function() buf[1] = { n = 9 } end)
              assert(not ok and e == "bundle.viewof: the buffer is read-only inside scope('ro')", e)
              return buf[1].n
            end)
            assert(r == 1)
            v:scope(function(buf) buf[3] = { n = 30 } end)
            assert(v[3].n == 30)
            assert(tostring(v):find("3 rows of 4 bytes", 1, true))
        "#,
        )
        .exec()
        .unwrap();
    }

    #[test]
    fn bundle_viewof_errors() {
        let tmp = TempFile::new("errors");
        let lua = lua();
        lua.globals().set("FILE", tmp.path()).unwrap();
        lua.load(r#"V = bundle.viewof({ FILE, "id:i name:c4 tag:s4 hp:h s:b2 r:f" }, 2)"#)
            .exec()
            .unwrap();
        let cases = [
            ("local _ = V[0]", "bundle.viewof: row 0 is out of range (1..2)"),
            ("local _ = V[3]", "bundle.viewof: row 3 is out of range (1..2)"),
            ("V[3] = {}", "bundle.viewof: row 3 is out of range (1..2)"),
            ("local _ = V[1.5]", "bundle.viewof: a row index must be an integer, got 1.5"),
            ("V[1] = { hp = 70000 }", "bundle.viewof: row 1 field \"hp\" (h): 70000 does not fit int16"),
            ("V[1] = { id = 2.5 }", "bundle.viewof: row 1 field \"id\" (i) expects an integer, got 2.5"),
            ("V[1] = { id = 'x' }", "bundle.viewof: row 1 field \"id\" (i) expects an integer, got string"),
            ("V[1] = { name = 'hello' }", "bundle.viewof: row 1 field \"name\" (c4): a string of 5 bytes does not fit char[4] (at most 4)"),
            ("V[1] = { tag = 'abcd' }", "bundle.viewof: row 1 field \"tag\" (s4): a string of 4 bytes does not fit char[4] (at most 3)"),
            ("V[1] = { s = { 1, 200 } }", "bundle.viewof: row 1 field \"s\" (b2)[2]: 200 does not fit int8"),
            ("V[1] = { s = { 1, 2, 3 } }", "bundle.viewof: row 1 field \"s\" (b2) holds 2 values, got 3"),
            ("V[1] = { r = 1e300 }", "bundle.viewof: row 1 field \"r\" (f): 1e+300 does not fit float"),
            ("V[1] = 5", "bundle.viewof: row 1 must be a table (or nil to clear it), got number"),
            ("local _ = V.nope", "bundle.viewof: no field \"nope\""),
            ("V.size = 3", "bundle.viewof: cannot set \"size\""),
            ("V.commit('later')", "bundle.viewof: commit takes 'sync' or 'async', got \"later\""),
            ("V.scope('wx', print)", "bundle.viewof: scope mode must be 'rw' or 'ro'"),
            ("bundle.viewof({ FILE, 'q' })", "bundle.viewof: bad format token \"q\""),
            ("bundle.viewof({ FILE, 'a:i h' })", "bundle.viewof: name either every field"),
            ("bundle.viewof(FILE, -1, 2)", "bundle.viewof: start must be a non-negative integer, got -1"),
            ("bundle.viewof(42)", "bundle.viewof: expected a file name or {file, format}, got number"),
            ("bundle.viewof('/no/such/dir/x.bin', 1)", "bundle.viewof: cannot open \"/no/such/dir/x.bin\""),
        ];
        for (code, want) in cases {
            let e = error_of(&lua, code);
            assert!(e.starts_with(want), "{code}: got {e:?}, want {want:?}");
        }
        // A failed write leaves the row as it was.
        let ok: bool = lua
            .load(r#"V[1] = { id = 5 } pcall(function() V[1] = { id = 6, hp = 1e6 } end) return V[1].id == 5"#)
            .eval()
            .unwrap();
        assert!(ok);
        // An empty view has no rows.
        let empty = TempFile::new("empty");
        let e = error_of(
            &lua,
            &format!("local v = bundle.viewof({:?}) local _ = v[1]", empty.path()),
        );
        assert_eq!(
            e,
            "bundle.viewof: row 1 is out of range (the view has no rows)"
        );
    }
}
