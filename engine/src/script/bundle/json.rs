//! `bundle.json(x [, sel])`: JSON text <-> Lua values, parsed with simd-json's tape (one flat
//! `Vec` of nodes, so nothing recursive is built or dropped outside our own depth-limited
//! walk) and written by a small hand-rolled encoder.
//!
//! Input forms:
//! * a string whose first non-blank character is `{` or `[` is JSON text;
//! * any other string is a file name (relative to the working directory), read and parsed; a
//!   UTF-8 byte-order mark is skipped. A `.json` file under a `%package` directory comes from
//!   the process's file image (`script::image`: no file system call on a core, edits seen at
//!   the next `%reflush` scan); any other file is read on the calling thread (counted and
//!   logged once);
//! * a table is encoded to JSON text (compact, no whitespace);
//! * a function is called with no arguments and its first result is converted as above (a
//!   function returning a function is an error, not a loop).
//!
//! Parsing: objects become tables with string keys, arrays become sequences starting at 1,
//! numbers become Lua numbers (integers beyond 2^53 round, as every LuaJIT number does),
//! `null` becomes nil: an absent key in an object, a hole in an array (so `[1,null,3]` keeps
//! 3 at index 3). A duplicated object key keeps its last value. Errors give the byte offset
//! and line/column: `bundle.json: parse error at byte 7 (line 1, column 8): ...`.
//!
//! The selector `sel` picks a sub-value of the parsed document before it is turned into Lua
//! values, so only the selected part is materialised:
//! * a number indexes an array, 1-based (on an object it looks up the key `tostring(n)`);
//! * a string is ONE object key, taken literally: no dotted paths, because real keys contain
//!   dots (the configuration has `"lua.so"`);
//! * a table `{k1, k2, ...}` is a path of such steps: `{"players", 3, "name"}`.
//!
//! A step that does not match gives nil, not an error. With a table input the same selector
//! picks a sub-value of the table, which is then encoded.
//!
//! Encoding: a table whose keys are exactly `1..n` (n >= 1) is an array; every other table,
//! including the empty one, is an object (`{}`). Object keys are strings as is, numbers as
//! their `tostring` text; any other key type is an error. Keys are written sorted (bytewise),
//! so the same table always gives the same text. Two keys that become the same text (`1` and
//! `"1"`) are an error. Strings must be valid UTF-8 (JSON text is Unicode); control
//! characters are escaped. Functions, userdata, threads, NaN and ±inf cannot be represented
//! and raise an error naming the key path (`at "player.stats.2"`). Nesting is limited to
//! [`MAX_DEPTH`] levels (the top-level table is level 1), which also stops cyclic tables.
//! Metatables are ignored (raw contents are written), except that a `bundle.proxy` object
//! is written as the table it observes. The parser applies the same depth limit.

use mlua::{Lua, MultiValue, Table, Value};
use simd_json::{Node, StaticNode};

use super::{as_integer, call_user, fail, lua_number_text, proxy, type_name, Res};

/// Maximum nesting, counting the top-level container as level 1 (the BSON codec's limit).
pub const MAX_DEPTH: usize = 64;

pub(super) fn json(lua: &Lua, args: MultiValue) -> Res<MultiValue> {
    let mut args = args.into_iter();
    let x = args.next().unwrap_or(Value::Nil);
    let sel = selector(&args.next().unwrap_or(Value::Nil))?;
    let x = match x {
        Value::Function(f) => {
            let first = call_user(lua, &f, MultiValue::new())?
                .into_iter()
                .next()
                .unwrap_or(Value::Nil);
            if let Value::Function(_) = first {
                return fail("bundle.json: the function returned a function (expected a JSON string, a file name or a table)");
            }
            first
        }
        other => other,
    };
    let result = match x {
        Value::String(s) => {
            let bytes = s.as_bytes();
            let start = bytes
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(bytes.len());
            if matches!(bytes.get(start), Some(b'{' | b'[')) {
                parse(lua, &bytes, "", &sel)?
            } else {
                let name = s.to_string_lossy();
                let text = read_file(&name)
                    .or_else(|e| fail(format!("bundle.json: cannot read {name:?}: {e}")))?;
                let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&text);
                parse(lua, text, &format!("{name}: "), &sel)?
            }
        }
        Value::Table(t) => {
            let picked = select_table(lua, Value::Table(t), &sel)?;
            if picked.is_nil() {
                Value::Nil
            } else {
                Value::String(lua.create_string(encode(&picked)?)?)
            }
        }
        other => {
            return fail(format!(
                "bundle.json: expected a JSON string, a file name, a table or a function, got {}",
                type_name(&other)
            ))
        }
    };
    Ok(MultiValue::from_vec(vec![result]))
}

/// A data file's bytes: from the process's file image when the file lies under a `%package`
/// directory (no file system call on a core), else read here (counted, logged once).
fn read_file(name: &str) -> std::io::Result<std::sync::Arc<[u8]>> {
    use crate::script::image::{read_on_this_thread, Lookup};
    let Some(library) = crate::script::reload::library() else {
        return std::fs::read(name).map(std::sync::Arc::from);
    };
    match library.image.lookup(name) {
        Lookup::Found(file) => Ok(file.bytes),
        Lookup::Missing => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file under the %package directories (as of their last scan, every %reflush)",
        )),
        Lookup::NotCovered => read_on_this_thread(name, "bundle.json").map(std::sync::Arc::from),
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------------

enum Step {
    Num(f64),
    Key(Vec<u8>),
}

fn step(v: &Value) -> Res<Step> {
    match v {
        Value::Integer(i) => Ok(Step::Num(*i as f64)),
        Value::Number(n) => Ok(Step::Num(*n)),
        Value::String(s) => Ok(Step::Key(s.as_bytes().to_vec())),
        other => fail(format!(
            "bundle.json: a selector step must be a number or a string, got {}",
            type_name(other)
        )),
    }
}

fn selector(sel: &Value) -> Res<Vec<Step>> {
    match sel {
        Value::Nil => Ok(Vec::new()),
        Value::Table(path) => {
            let mut steps = Vec::with_capacity(path.raw_len());
            for i in 1..=path.raw_len() {
                steps.push(step(&path.raw_get::<Value>(i)?)?);
            }
            Ok(steps)
        }
        other => Ok(vec![step(other)?]),
    }
}

/// The array position a numeric step names, if it is a whole number in `1..=len`.
fn array_index(n: f64, len: usize) -> Option<usize> {
    (n.fract() == 0.0 && n >= 1.0 && n <= len as f64).then_some(n as usize)
}

fn select_table(lua: &Lua, mut v: Value, sel: &[Step]) -> Res<Value> {
    for s in sel {
        let Value::Table(t) = v else {
            return Ok(Value::Nil);
        };
        v = match s {
            Step::Num(n) => t.raw_get(*n)?,
            Step::Key(k) => t.raw_get(lua.create_string(k)?)?,
        };
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// How many tape nodes a value occupies, its own header included.
fn span(node: &Node) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// Parses `text`; `origin` ("file.json: " or "") goes in front of error positions.
fn parse(lua: &Lua, text: &[u8], origin: &str, sel: &[Step]) -> Res<Value> {
    // simd-json unescapes strings in place, so it works on a copy and `text` stays intact
    // for computing line and column of an error.
    let mut work = text.to_vec();
    let tape = match simd_json::to_tape(&mut work) {
        Ok(tape) => tape,
        Err(e) => return fail(parse_error(&e, text, origin)),
    };
    let nodes = &tape.0;
    match find(nodes, sel) {
        Some(at) => Ok(to_lua(lua, nodes, at, 1)?.0),
        None => Ok(Value::Nil),
    }
}

fn parse_error(e: &simd_json::Error, text: &[u8], origin: &str) -> String {
    let at = e.index().min(text.len());
    let before = &text[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = at
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    // `ExpectedArrayComma` -> "expected array comma"; payload variants stay verbatim.
    let kind = format!("{:?}", e.error());
    let mut what = String::with_capacity(kind.len() + 8);
    for (i, c) in kind.char_indices() {
        if c == '(' {
            what.push_str(&kind[i..]);
            break;
        }
        if c.is_ascii_uppercase() && i > 0 {
            what.push(' ');
        }
        what.push(c.to_ascii_lowercase());
    }
    if matches!(e.error(), simd_json::ErrorType::Eof) {
        what = "unexpected end of input".into();
    }
    format!("bundle.json: {origin}parse error at byte {at} (line {line}, column {column}): {what}")
}

/// Index of the node `sel` designates, or None when a step does not match.
fn find(nodes: &[Node], sel: &[Step]) -> Option<usize> {
    let mut at = 0;
    for s in sel {
        match *nodes.get(at)? {
            Node::Object { len, .. } => {
                let text;
                let want: &[u8] = match s {
                    Step::Key(k) => k,
                    Step::Num(n) => {
                        text = lua_number_text(*n);
                        text.as_bytes()
                    }
                };
                let mut i = at + 1;
                let mut found = None;
                for _ in 0..len {
                    let Node::String(key) = *nodes.get(i)? else {
                        return None;
                    };
                    let value = i + 1;
                    if key.as_bytes() == want {
                        found = Some(value); // the last duplicate wins, as in `to_lua`
                    }
                    i = value + span(nodes.get(value)?);
                }
                at = found?;
            }
            Node::Array { len, .. } => {
                let Step::Num(n) = s else {
                    return None;
                };
                let index = array_index(*n, len)?;
                let mut i = at + 1;
                for _ in 1..index {
                    i += span(nodes.get(i)?);
                }
                at = i;
            }
            _ => return None,
        }
    }
    Some(at)
}

/// Converts the value at `at`; returns it and the index just past it.
fn to_lua(lua: &Lua, nodes: &[Node], at: usize, depth: usize) -> Res<(Value, usize)> {
    let Some(node) = nodes.get(at) else {
        return fail("bundle.json: internal error: truncated parse tape");
    };
    let value = match *node {
        Node::String(s) => Value::String(lua.create_string(s)?),
        Node::Static(StaticNode::Null) => Value::Nil,
        Node::Static(StaticNode::Bool(b)) => Value::Boolean(b),
        Node::Static(StaticNode::I64(i)) => Value::Number(i as f64),
        Node::Static(StaticNode::U64(u)) => Value::Number(u as f64),
        Node::Static(StaticNode::F64(f)) => Value::Number(f),
        Node::Array { len, .. } => {
            check_depth(depth)?;
            let t = lua.create_table_with_capacity(len, 0)?;
            let mut i = at + 1;
            for index in 1..=len {
                let (v, next) = to_lua(lua, nodes, i, depth + 1)?;
                if !v.is_nil() {
                    t.raw_set(index, v)?;
                }
                i = next;
            }
            return Ok((Value::Table(t), i));
        }
        Node::Object { len, .. } => {
            check_depth(depth)?;
            let t = lua.create_table_with_capacity(0, len)?;
            let mut i = at + 1;
            for _ in 0..len {
                let Some(Node::String(key)) = nodes.get(i) else {
                    return fail("bundle.json: internal error: object key is not a string");
                };
                let (v, next) = to_lua(lua, nodes, i + 1, depth + 1)?;
                // Null members are absent, but a later duplicate null must still clear an
                // earlier value, so nil is stored too (raw_set with nil deletes).
                t.raw_set(lua.create_string(key)?, v)?;
                i = next;
            }
            return Ok((Value::Table(t), i));
        }
    };
    Ok((value, at + 1))
}

fn check_depth(depth: usize) -> Res<()> {
    if depth > MAX_DEPTH {
        return fail(format!(
            "bundle.json: nesting deeper than {MAX_DEPTH} levels"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Encodes a Lua value (normally a table) as compact JSON text.
pub(super) fn encode(v: &Value) -> Res<Vec<u8>> {
    let mut enc = Encoder {
        out: Vec::with_capacity(256),
        path: Vec::new(),
    };
    enc.value(v, 1)?;
    Ok(enc.out)
}

struct Encoder {
    out: Vec<u8>,
    /// Keys from the top-level table down to the value being written, for error messages.
    path: Vec<String>,
}

impl Encoder {
    fn at(&self) -> String {
        if self.path.is_empty() {
            "at the top level".to_string()
        } else {
            format!("at {:?}", self.path.join("."))
        }
    }

    fn value(&mut self, v: &Value, depth: usize) -> Res<()> {
        match v {
            Value::Nil => self.out.extend_from_slice(b"null"),
            Value::Boolean(true) => self.out.extend_from_slice(b"true"),
            Value::Boolean(false) => self.out.extend_from_slice(b"false"),
            Value::Integer(i) => self.out.extend_from_slice(i.to_string().as_bytes()),
            Value::Number(n) => {
                if !n.is_finite() {
                    return fail(format!(
                        "bundle.json: {} cannot be represented in JSON ({})",
                        lua_number_text(*n),
                        self.at()
                    ));
                }
                // Rust's shortest round-trip form ("0.1", "1e300") is valid JSON.
                self.out.extend_from_slice(format!("{n:?}").as_bytes());
            }
            Value::String(s) => self.string(&s.as_bytes())?,
            Value::Table(t) => {
                if depth > MAX_DEPTH {
                    return fail(format!(
                        "bundle.json: nesting deeper than {MAX_DEPTH} levels {} (cyclic table?)",
                        self.at()
                    ));
                }
                match proxy::target_of(t) {
                    Some(target) => self.table(&target, depth)?,
                    None => self.table(t, depth)?,
                }
            }
            other => {
                return fail(format!(
                    "bundle.json: cannot convert a {} to JSON ({})",
                    type_name(other),
                    self.at()
                ))
            }
        }
        Ok(())
    }

    fn table(&mut self, t: &Table, depth: usize) -> Res<()> {
        let mut entries: Vec<(Value, Value)> = Vec::new();
        t.for_each::<Value, Value>(|k, v| {
            entries.push((k, v));
            Ok(())
        })?;
        let n = entries.len();
        let is_array = n > 0
            && entries
                .iter()
                .all(|(k, _)| matches!(as_integer(k), Some(i) if i >= 1 && i as usize <= n));
        if is_array {
            // Keys are distinct and all in 1..=n, so every slot gets exactly one value.
            let mut slots: Vec<Value> = vec![Value::Nil; n];
            for (k, v) in entries {
                if let Some(i) = as_integer(&k) {
                    slots[i as usize - 1] = v;
                }
            }
            self.out.push(b'[');
            for (i, v) in slots.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.path.push((i + 1).to_string());
                self.value(v, depth + 1)?;
                self.path.pop();
            }
            self.out.push(b']');
            return Ok(());
        }
        let mut members: Vec<(Vec<u8>, Value)> = Vec::with_capacity(n);
        for (k, v) in entries {
            let key = match &k {
                Value::String(s) => s.as_bytes().to_vec(),
                Value::Integer(i) => i.to_string().into_bytes(),
                Value::Number(f) => lua_number_text(*f).into_bytes(),
                other => {
                    return fail(format!(
                        "bundle.json: a {} key cannot become a JSON object key ({})",
                        type_name(other),
                        self.at()
                    ))
                }
            };
            members.push((key, v));
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = members.windows(2).find(|w| w[0].0 == w[1].0) {
            return fail(format!(
                "bundle.json: two keys both become {:?} ({})",
                String::from_utf8_lossy(&w[0].0),
                self.at()
            ));
        }
        self.out.push(b'{');
        for (i, (key, v)) in members.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.path.push(String::from_utf8_lossy(key).into_owned());
            self.string(key)?;
            self.out.push(b':');
            self.value(v, depth + 1)?;
            self.path.pop();
        }
        self.out.push(b'}');
        Ok(())
    }

    fn string(&mut self, bytes: &[u8]) -> Res<()> {
        if std::str::from_utf8(bytes).is_err() {
            return fail(format!(
                "bundle.json: string is not valid UTF-8 ({})",
                self.at()
            ));
        }
        self.out.reserve(bytes.len() + 2);
        self.out.push(b'"');
        for &b in bytes {
            match b {
                b'"' => self.out.extend_from_slice(b"\\\""),
                b'\\' => self.out.extend_from_slice(b"\\\\"),
                b'\n' => self.out.extend_from_slice(b"\\n"),
                b'\r' => self.out.extend_from_slice(b"\\r"),
                b'\t' => self.out.extend_from_slice(b"\\t"),
                0x08 => self.out.extend_from_slice(b"\\b"),
                0x0c => self.out.extend_from_slice(b"\\f"),
                c if c < 0x20 => {
                    self.out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
                }
                c => self.out.push(c),
            }
        }
        self.out.push(b'"');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use mlua::Lua;

    fn eval<T: mlua::FromLua>(lua: &Lua, code: &str) -> T {
        lua.load(code).eval().unwrap()
    }

    #[test]
    fn bundle_json_parses_objects_arrays_and_scalars() {
        let lua = lua();
        let ok: bool = eval(
            &lua,
            r#"
            local t = bundle.json('  {"a": 1, "b": [true, false, null, "x"], "c": {"d": 2.5}, "e": null, "n": -7}')
            return t.a == 1 and t.b[1] == true and t.b[2] == false and t.b[3] == nil
               and t.b[4] == "x" and t.c.d == 2.5 and t.e == nil and t.n == -7
        "#,
        );
        assert!(ok);
        let ok: bool = eval(
            &lua,
            r#"
            local a = bundle.json([==[ [[1,2],[3,[4]],"\u00e9\n"] ]==])
            return a[1][2] == 2 and a[2][2][1] == 4 and a[3] == "\195\169\n"
        "#,
        );
        assert!(ok);
    }

    #[test]
    fn bundle_json_round_trips() {
        let lua = lua();
        let text: String = eval(
            &lua,
            r#"return bundle.json({ name = "orc", hp = 10, pos = {1.5, -2, 3}, tags = {}, ok = true,
                                  nested = { deep = { list = {"a", "b"} } }, [7] = "seven" })"#,
        );
        assert_eq!(
            text,
            r#"{"7":"seven","hp":10,"name":"orc","nested":{"deep":{"list":["a","b"]}},"ok":true,"pos":[1.5,-2,3],"tags":{}}"#
        );
        let ok: bool = eval(
            &lua,
            &format!(
                r#"local t = bundle.json({text:?})
                   return t.name == "orc" and t.pos[1] == 1.5 and t.nested.deep.list[2] == "b"
                      and t["7"] == "seven" and next(t.tags) == nil"#
            ),
        );
        assert!(ok);
        // Escapes survive a round trip.
        let ok: bool = eval(
            &lua,
            r#"local s = 'q"\\/\n\t\1' return bundle.json(bundle.json({s}))[1] == s"#,
        );
        assert!(ok);
    }

    #[test]
    fn bundle_json_selectors() {
        let lua = lua();
        let ok: bool = eval(
            &lua,
            r#"
            local doc = '{"lua.so": {"%package": ["a", "b"]}, "list": [10, 20, {"x": "y"}], "1": "one"}'
            return bundle.json(doc, "lua.so")["%package"][2] == "b"
               and bundle.json(doc, {"list", 3, "x"}) == "y"
               and bundle.json(doc, {"list", 2}) == 20
               and bundle.json(doc, 1) == "one"
               and bundle.json(doc, "missing") == nil
               and bundle.json(doc, {"list", 9}) == nil
               and bundle.json(doc, {"list", 1, "deeper"}) == nil
               and bundle.json('[5, 6, 7]', 3) == 7
               and bundle.json('[[1, [2]], {"a": [3, {"b": 4}]}, 5]', 3) == 5
               and bundle.json('[[1, [2]], {"a": [3, {"b": 4}]}, 5]', {2, "a", 2, "b"}) == 4
               and bundle.json('{"k": 1, "k": 2}', "k") == 2
               and bundle.json('{"k": 1, "k": 2}').k == 2
               and bundle.json('[5, 6, 7]', 1.5) == nil
               and bundle.json({a = {b = {1, 2}}}, {"a", "b"}) == "[1,2]"
        "#,
        );
        assert!(ok);
    }

    #[test]
    fn bundle_json_reads_files_and_calls_functions() {
        let lua = lua();
        let dir = std::env::temp_dir().join(format!("bundle-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("conf.json");
        std::fs::write(&file, "\u{feff}{\"port\": 8081,\n \"hosts\": [\"a\"]}").unwrap();
        lua.globals().set("FILE", file.to_str().unwrap()).unwrap();
        let ok: bool = eval(
            &lua,
            r#"return bundle.json(FILE).port == 8081 and bundle.json(FILE, {"hosts", 1}) == "a"
                  and bundle.json(function() return '{"k": 1}' end).k == 1
                  and bundle.json(function() return {1, 2} end) == "[1,2]""#,
        );
        assert!(ok);
        std::fs::write(&file, "{\"a\": 1,\n \"b\": }").unwrap();
        let e = error_of(&lua, "bundle.json(FILE)");
        assert!(e.starts_with("bundle.json: "), "{e}");
        assert!(e.contains("conf.json: parse error at byte"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = error_of(&lua, "bundle.json('/no/such/file.json')");
        assert!(
            e.starts_with("bundle.json: cannot read \"/no/such/file.json\""),
            "{e}"
        );
    }

    #[test]
    fn bundle_json_errors() {
        let lua = lua();
        let e = error_of(&lua, r#"bundle.json('{"a": [1, 2,, 3]}')"#);
        assert!(e.starts_with("bundle.json: parse error at byte "), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let e = error_of(&lua, r#"bundle.json('{"a": ')"#);
        assert!(e.starts_with("bundle.json: parse error"), "{e}");
        let e = error_of(&lua, "bundle.json({a = {f = print}})");
        assert_eq!(
            e,
            "bundle.json: cannot convert a function to JSON (at \"a.f\")"
        );
        let e = error_of(&lua, "bundle.json({1, 0/0})");
        assert!(
            e.starts_with("bundle.json: nan cannot be represented")
                || e.starts_with("bundle.json: -nan cannot be represented"),
            "{e}"
        );
        assert!(e.ends_with("(at \"2\")"), "{e}");
        let e = error_of(&lua, "bundle.json({x = math.huge})");
        assert_eq!(
            e,
            "bundle.json: inf cannot be represented in JSON (at \"x\")"
        );
        let e = error_of(&lua, "local t = {} t.self = t bundle.json(t)");
        assert!(e.contains("nesting deeper than 64 levels"), "{e}");
        let e = error_of(&lua, "bundle.json({[true] = 1})");
        assert!(
            e.contains("a boolean key cannot become a JSON object key"),
            "{e}"
        );
        let e = error_of(&lua, r#"bundle.json({[1] = "a", ["1"] = "b", x = 1})"#);
        assert!(e.contains("two keys both become \"1\""), "{e}");
        let e = error_of(&lua, r#"bundle.json({"\255"})"#);
        assert!(e.contains("not valid UTF-8"), "{e}");
        let e = error_of(&lua, "bundle.json(true)");
        assert!(e.starts_with("bundle.json: expected"), "{e}");
        let e = error_of(&lua, "bundle.json('[1]', true)");
        assert!(e.contains("selector step"), "{e}");
        // Deep input is refused, not a stack overflow.
        let e = error_of(
            &lua,
            "bundle.json(string.rep('[', 100) .. string.rep(']', 100))",
        );
        assert!(e.contains("nesting deeper than 64 levels"), "{e}");
        let ok: bool = eval(
            &lua,
            "return bundle.json(string.rep('[', 64) .. string.rep(']', 64)) ~= nil",
        );
        assert!(ok);
    }

    #[test]
    fn bundle_json_array_detection() {
        let lua = lua();
        let out: Vec<String> = eval(
            &lua,
            r#"return { bundle.json({}), bundle.json({1, 2, 3}), bundle.json({[1] = 1, [3] = 3}),
                        bundle.json({[2] = "b", [1] = "a"}), bundle.json({0.5, n = 1}),
                        bundle.json({[1.5] = 1}), bundle.json({1e300, -0.25, 2^53}) }"#,
        );
        assert_eq!(
            out,
            vec![
                "{}",
                "[1,2,3]",
                r#"{"1":1,"3":3}"#,
                r#"["a","b"]"#,
                r#"{"1":0.5,"n":1}"#,
                r#"{"1.5":1}"#,
                "[1e300,-0.25,9007199254740992]",
            ]
        );
    }
}
