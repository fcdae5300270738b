//! Parser: tokens -> the checked [`Schema`]. Two passes: the first follows the grammar
//! (README.md, "The language") and records where each type and default was written; the
//! second resolves names, checks bounds and defaults against their types, and refuses
//! recursive types, so every error carries the line and column of the text to fix.

use crate::error::{Error, Pos};
use crate::lexer::{lex, Tok};
use crate::schema::*;

/// Words that name built-in types or generated module members, so no item may take them.
const RESERVED_ITEMS: [&str; 23] = [
    "bool",
    "string",
    "bytes",
    "i8",
    "i16",
    "i32",
    "i64",
    "u8",
    "u16",
    "u32",
    "u64",
    "f32",
    "f64",
    "version",
    "decode",
    "receive",
    "messages",
    "enums",
    "unknown_fields",
    "on_bad_packet",
    "schema",
    "generator",
    "bad_packet",
];

/// Parses and checks a whole schema.
pub fn parse(src: &str) -> Result<Schema, Error> {
    let toks = lex(src)?;
    let mut p = Parser { toks, at: 0 };
    let raw = p.file()?;
    resolve(raw)
}

/// A literal written after `=`, not yet checked against the field's type.
#[derive(Debug, Clone)]
enum Lit {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    Ident(String),
    EmptyArray,
}

struct RawField {
    name: String,
    optional_mark: bool,
    ty: Type,
    /// Named types used anywhere in `ty` (also inside arrays), with where they were written.
    refs: Vec<(String, Pos)>,
    default: Option<(Lit, Pos)>,
    pos: Pos,
}

struct RawStruct {
    name: String,
    pos: Pos,
    kind: StructKind,
    reply_pos: Option<Pos>,
    fields: Vec<RawField>,
}

enum RawItem {
    Enum(EnumDef),
    Struct(RawStruct),
}

struct RawSchema {
    version: u32,
    items: Vec<RawItem>,
}

struct Parser {
    toks: Vec<(Tok, Pos)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn pos(&self) -> Pos {
        self.toks[self.at].1
    }

    fn bump(&mut self) -> (Tok, Pos) {
        let t = self.toks[self.at].clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn unexpected(&self, what: &str) -> Error {
        Error::at(
            self.pos(),
            format!("expected {what}, found {}", self.peek().describe()),
        )
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::Punct(q) if *q == p)
    }

    fn eat_punct(&mut self, p: &str) -> bool {
        if self.is_punct(p) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect_punct(&mut self, p: &str) -> Result<Pos, Error> {
        let pos = self.pos();
        if self.eat_punct(p) {
            Ok(pos)
        } else {
            Err(self.unexpected(&format!("`{p}`")))
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == w)
    }

    fn ident(&mut self, what: &str) -> Result<(String, Pos), Error> {
        match self.peek().clone() {
            Tok::Ident(s) => {
                let pos = self.bump().1;
                Ok((s, pos))
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn file(&mut self) -> Result<RawSchema, Error> {
        if !self.is_word("version") {
            return Err(self.unexpected("`version N` at the top of the schema"));
        }
        self.bump();
        let version = match self.peek().clone() {
            Tok::Int(n) if (0..=i64::from(u32::MAX)).contains(&n) => {
                self.bump();
                n as u32
            }
            _ => return Err(self.unexpected("a version number (a whole number, e.g. `version 1`)")),
        };
        self.eat_punct(";");
        let mut items = Vec::new();
        loop {
            match self.peek() {
                Tok::Eof => break,
                Tok::Ident(w) if w == "enum" => items.push(RawItem::Enum(self.enum_def()?)),
                Tok::Ident(w) if w == "struct" || w == "message" => {
                    items.push(RawItem::Struct(self.struct_def()?))
                }
                Tok::Ident(w) if w == "version" => {
                    return Err(Error::at(
                        self.pos(),
                        "`version` may appear only once, at the top",
                    ))
                }
                _ => return Err(self.unexpected("`message`, `struct` or `enum`")),
            }
        }
        Ok(RawSchema { version, items })
    }

    fn enum_def(&mut self) -> Result<EnumDef, Error> {
        self.bump();
        let (name, pos) = self.ident("an enum name")?;
        self.expect_punct("{")?;
        let mut values: Vec<String> = Vec::new();
        while !self.eat_punct("}") {
            let (v, vpos) = self.ident("an enum value name or `}`")?;
            if values.contains(&v) {
                return Err(Error::at(
                    vpos,
                    format!("enum {name} already has a value `{v}`"),
                ));
            }
            if v == "true" || v == "false" {
                return Err(Error::at(vpos, "`true` and `false` cannot be enum values"));
            }
            values.push(v);
            if !self.eat_punct(",") {
                self.eat_punct(";");
            }
        }
        if values.is_empty() {
            return Err(Error::at(pos, format!("enum {name} has no values")));
        }
        Ok(EnumDef { name, values, pos })
    }

    fn struct_def(&mut self) -> Result<RawStruct, Error> {
        let (word, _) = self.bump();
        let message = word == Tok::Ident("message".into());
        let (name, pos) = self.ident(if message {
            "a message name"
        } else {
            "a struct name"
        })?;
        let mut reply_pos = None;
        let kind = if message {
            if !self.is_word("from") {
                return Err(self.unexpected(&format!(
                    "`from client` or `from server` after `message {name}`"
                )));
            }
            self.bump();
            let from = match self.peek() {
                Tok::Ident(w) if w == "client" => Direction::Client,
                Tok::Ident(w) if w == "server" => Direction::Server,
                _ => return Err(self.unexpected("`client` or `server`")),
            };
            self.bump();
            let reply = if self.is_word("reply") {
                self.bump();
                let (r, rpos) = self.ident("the name of the reply message")?;
                reply_pos = Some(rpos);
                Some(r)
            } else {
                None
            };
            StructKind::Message { from, reply }
        } else {
            StructKind::Struct
        };
        self.expect_punct("{")?;
        let mut fields: Vec<RawField> = Vec::new();
        while !self.eat_punct("}") {
            let f = self.field()?;
            if fields.iter().any(|g| g.name == f.name) {
                return Err(Error::at(
                    f.pos,
                    format!("{name} already has a field `{}`", f.name),
                ));
            }
            fields.push(f);
            if !self.eat_punct(";") {
                self.eat_punct(",");
            }
        }
        Ok(RawStruct {
            name,
            pos,
            kind,
            reply_pos,
            fields,
        })
    }

    fn field(&mut self) -> Result<RawField, Error> {
        let (name, pos) = self.ident("a field name or `}`")?;
        let optional_mark = self.eat_punct("?");
        if !self.is_punct(":") {
            return Err(self.unexpected(&format!("`:` and a type after field `{name}`")));
        }
        self.bump();
        let mut refs = Vec::new();
        let ty = self.ty(&mut refs)?;
        let default = if self.eat_punct("=") {
            let dpos = self.pos();
            let lit = match self.bump().0 {
                Tok::Int(n) => Lit::Int(n),
                Tok::Float(f) => Lit::Float(f),
                Tok::Str(s) => Lit::Str(s),
                Tok::Ident(w) if w == "true" => Lit::Bool(true),
                Tok::Ident(w) if w == "false" => Lit::Bool(false),
                Tok::Ident(w) => Lit::Ident(w),
                Tok::Punct("[") => {
                    self.expect_punct("]").map_err(|_| {
                        Error::at(dpos, "an array default can only be `[]` (empty)")
                    })?;
                    Lit::EmptyArray
                }
                t => {
                    return Err(Error::at(
                        dpos,
                        format!("expected a default value, found {}", t.describe()),
                    ))
                }
            };
            Some((lit, dpos))
        } else {
            None
        };
        Ok(RawField {
            name,
            optional_mark,
            ty,
            refs,
            default,
            pos,
        })
    }

    fn ty(&mut self, refs: &mut Vec<(String, Pos)>) -> Result<Type, Error> {
        let pos = self.pos();
        if self.eat_punct("[") {
            let elem = self.ty(refs)?;
            if !self.eat_punct(";") {
                return Err(self.unexpected("`;` and a count range, e.g. `[u8; ..16]`"));
            }
            let (min, max) = self.length_range(pos, "an array")?;
            self.expect_punct("]")?;
            return Ok(Type::Array {
                elem: Box::new(elem),
                min,
                max,
            });
        }
        let (word, wpos) = self.ident("a type")?;
        if let Some(kind) = IntKind::ALL.into_iter().find(|k| k.name() == word) {
            let (tmin, tmax) = kind.range();
            let (mut min, mut max) = (tmin, tmax);
            if self.eat_punct("[") {
                let (lo, hi) = self.range()?;
                for (b, bpos) in [lo.clone(), hi.clone()].into_iter().flatten() {
                    if !matches!(b, Lit::Int(_)) {
                        return Err(Error::at(
                            bpos,
                            format!("{word} bounds must be whole numbers"),
                        ));
                    }
                }
                if let Some((Lit::Int(n), _)) = lo {
                    min = n;
                }
                if let Some((Lit::Int(n), _)) = hi {
                    max = n;
                }
                self.expect_punct("]")?;
                if min < tmin || max > tmax {
                    return Err(Error::at(
                        wpos,
                        format!("range {min}..{max} does not fit in {word} ({tmin}..{tmax})"),
                    ));
                }
                if min > max {
                    return Err(Error::at(wpos, format!("empty range {min}..{max}")));
                }
            }
            return Ok(Type::Int { kind, min, max });
        }
        let float = match word.as_str() {
            "f32" => Some(FloatKind::F32),
            "f64" => Some(FloatKind::F64),
            _ => None,
        };
        if let Some(kind) = float {
            let (tmin, tmax) = kind.range();
            let (mut min, mut max) = (tmin, tmax);
            if self.eat_punct("[") {
                let (lo, hi) = self.range()?;
                let as_f = |l: &Lit| match l {
                    Lit::Int(n) => *n as f64,
                    Lit::Float(f) => *f,
                    _ => f64::NAN,
                };
                if let Some((l, _)) = &lo {
                    min = as_f(l);
                }
                if let Some((l, _)) = &hi {
                    max = as_f(l);
                }
                self.expect_punct("]")?;
                if min.is_nan() || max.is_nan() || min < tmin || max > tmax {
                    return Err(Error::at(
                        wpos,
                        format!("bounds of {word} must be numbers within {word}"),
                    ));
                }
                if min > max {
                    return Err(Error::at(
                        wpos,
                        format!("empty range {}..{}", num(min), num(max)),
                    ));
                }
            }
            return Ok(Type::Float { kind, min, max });
        }
        match word.as_str() {
            "bool" => Ok(Type::Bool),
            "string" | "bytes" => {
                if !self.eat_punct("[") {
                    return Err(Error::at(
                        wpos,
                        format!("{word} needs a maximum length in bytes, e.g. `{word}[..64]`"),
                    ));
                }
                let (min, max) = self.length_range(wpos, &format!("a {word}"))?;
                self.expect_punct("]")?;
                Ok(if word == "string" {
                    Type::Str { min, max }
                } else {
                    Type::Bytes { min, max }
                })
            }
            _ => {
                refs.push((word.clone(), wpos));
                // Resolved to Enum or Struct once every item is known.
                Ok(Type::Struct(word))
            }
        }
    }

    /// `lo..hi` with either end optional; each end with where it was written.
    #[allow(clippy::type_complexity)]
    fn range(&mut self) -> Result<(Option<(Lit, Pos)>, Option<(Lit, Pos)>), Error> {
        let num_lit = |p: &mut Parser| -> Option<(Lit, Pos)> {
            let pos = p.pos();
            match p.peek().clone() {
                Tok::Int(n) => {
                    p.bump();
                    Some((Lit::Int(n), pos))
                }
                Tok::Float(f) => {
                    p.bump();
                    Some((Lit::Float(f), pos))
                }
                _ => None,
            }
        };
        let lo = num_lit(self);
        if !self.eat_punct("..") {
            return Err(self.unexpected("`..` (a range is `min..max`, `..max` or `min..`)"));
        }
        let hi = num_lit(self);
        Ok((lo, hi))
    }

    /// A length or count range: whole numbers >= 0, the maximum required.
    fn length_range(&mut self, pos: Pos, what: &str) -> Result<(u32, u32), Error> {
        let (lo, hi) = self.range()?;
        let as_len = |b: Option<(Lit, Pos)>| -> Result<Option<u32>, Error> {
            match b {
                None => Ok(None),
                Some((Lit::Int(n), bpos)) => u32::try_from(n).map(Some).map_err(|_| {
                    Error::at(bpos, format!("a length must be between 0 and {}", u32::MAX))
                }),
                Some((_, bpos)) => Err(Error::at(bpos, "a length must be a whole number")),
            }
        };
        let min = as_len(lo)?.unwrap_or(0);
        let Some(max) = as_len(hi)? else {
            return Err(Error::at(
                pos,
                format!("{what} needs a maximum (write `..N`): every length is bounded before anything is built"),
            ));
        };
        if min > max {
            return Err(Error::at(pos, format!("empty range {min}..{max}")));
        }
        Ok((min, max))
    }
}

/// Second pass: names, reserved words, defaults, replies, recursion.
fn resolve(raw: RawSchema) -> Result<Schema, Error> {
    // Every name once, none reserved.
    for (i, item) in raw.items.iter().enumerate() {
        let (name, pos) = match item {
            RawItem::Enum(e) => (&e.name, e.pos),
            RawItem::Struct(s) => (&s.name, s.pos),
        };
        if RESERVED_ITEMS.contains(&name.as_str()) {
            return Err(Error::at(pos, format!("`{name}` is reserved (a built-in type or a generated module member); pick another name")));
        }
        let earlier = raw.items[..i].iter().find_map(|o| match o {
            RawItem::Enum(e) if &e.name == name => Some(e.pos),
            RawItem::Struct(s) if &s.name == name => Some(s.pos),
            _ => None,
        });
        if let Some(first) = earlier {
            return Err(Error::at(
                pos,
                format!("`{name}` is already declared at {first}"),
            ));
        }
        // The generated Rust names types in CamelCase: `score` and `Score` would both be
        // `Score` there, and `Message` & co. are the module's own.
        let rust = crate::rust::camel(name);
        if crate::rust::RUST_OWN_TYPES.contains(&rust.as_str()) {
            return Err(Error::at(
                pos,
                format!("`{name}` would be the generated Rust module's own type `{rust}`; pick another name"),
            ));
        }
        let clash = raw.items[..i].iter().find_map(|o| {
            let (other, at) = match o {
                RawItem::Enum(e) => (&e.name, e.pos),
                RawItem::Struct(s) => (&s.name, s.pos),
            };
            (crate::rust::camel(other) == rust).then(|| (other.clone(), at))
        });
        if let Some((other, at)) = clash {
            return Err(Error::at(
                pos,
                format!("`{name}` and `{other}` (at {at}) would both be the Rust type `{rust}`; rename one"),
            ));
        }
    }
    let kind_of = |name: &str| {
        raw.items.iter().find_map(|o| match o {
            RawItem::Enum(e) if e.name == name => Some(None),
            RawItem::Struct(s) if s.name == name => Some(Some(&s.kind)),
            _ => None,
        })
    };
    let mut items = Vec::new();
    for item in &raw.items {
        let s = match item {
            RawItem::Enum(e) => {
                items.push(Item::Enum(e.clone()));
                continue;
            }
            RawItem::Struct(s) => s,
        };
        if let (
            StructKind::Message {
                from,
                reply: Some(r),
            },
            Some(rpos),
        ) = (&s.kind, s.reply_pos)
        {
            if *from == Direction::Server {
                return Err(Error::at(
                    rpos,
                    "only a `from client` message (a request) has a reply",
                ));
            }
            match kind_of(r) {
                Some(Some(StructKind::Message {
                    from: Direction::Server,
                    ..
                })) => {}
                Some(_) => {
                    return Err(Error::at(
                        rpos,
                        format!("reply `{r}` must be a `from server` message"),
                    ))
                }
                None => return Err(Error::at(rpos, format!("no message named `{r}`"))),
            }
        }
        let mut fields = Vec::new();
        for f in &s.fields {
            if s.kind != StructKind::Struct && f.name == "message" {
                return Err(Error::at(f.pos, "`message` is the dispatch key every message carries; name the field differently"));
            }
            let mut ty = f.ty.clone();
            for (r, rpos) in &f.refs {
                match kind_of(r) {
                    None => return Err(Error::at(*rpos, format!("unknown type `{r}`"))),
                    Some(Some(StructKind::Message { .. })) => {
                        return Err(Error::at(*rpos, format!("`{r}` is a message; declare the shared fields as a `struct` and use that")))
                    }
                    Some(None) => retag_enum(&mut ty, r),
                    Some(Some(StructKind::Struct)) => {}
                }
            }
            let presence = match (&f.default, f.optional_mark) {
                (Some((_, dpos)), true) => {
                    return Err(Error::at(
                        *dpos,
                        "a field with a default is already optional; drop the `?`",
                    ))
                }
                (Some((lit, dpos)), false) => {
                    Presence::Default(default_value(&raw, &ty, lit, *dpos)?)
                }
                (None, true) => Presence::Optional,
                (None, false) => Presence::Required,
            };
            fields.push(Field {
                name: f.name.clone(),
                ty,
                presence,
                pos: f.pos,
            });
        }
        items.push(Item::Struct(StructDef {
            name: s.name.clone(),
            kind: s.kind.clone(),
            fields,
            pos: s.pos,
        }));
    }
    let schema = Schema {
        version: raw.version,
        items,
    };
    check_no_cycles(&schema)?;
    Ok(schema)
}

/// Turns the placeholder `Struct(name)` into `Enum(name)` wherever `name` is an enum.
fn retag_enum(ty: &mut Type, name: &str) {
    match ty {
        Type::Struct(n) if n == name => *ty = Type::Enum(name.to_string()),
        Type::Array { elem, .. } => retag_enum(elem, name),
        _ => {}
    }
}

fn default_value(raw: &RawSchema, ty: &Type, lit: &Lit, pos: Pos) -> Result<Value, Error> {
    let bad = |why: String| Err(Error::at(pos, why));
    match (ty, lit) {
        (Type::Bool, Lit::Bool(b)) => Ok(Value::Bool(*b)),
        (Type::Int { min, max, .. }, Lit::Int(n)) => {
            if n < min || n > max {
                bad(format!("default {n} is outside {min}..{max}"))
            } else {
                Ok(Value::Int(*n))
            }
        }
        (Type::Float { min, max, .. }, Lit::Int(_) | Lit::Float(_)) => {
            let f = match lit {
                Lit::Int(n) => *n as f64,
                Lit::Float(f) => *f,
                _ => unreachable!(),
            };
            if f < *min || f > *max {
                bad(format!(
                    "default {} is outside {}..{}",
                    num(f),
                    num(*min),
                    num(*max)
                ))
            } else {
                Ok(Value::Float(f))
            }
        }
        (Type::Str { min, max }, Lit::Str(s)) | (Type::Bytes { min, max }, Lit::Str(s)) => {
            if matches!(ty, Type::Str { .. }) && std::str::from_utf8(s).is_err() {
                return bad("a string default must be UTF-8 (use `bytes` for raw bytes)".into());
            }
            let n = s.len() as u64;
            if n < u64::from(*min) || n > u64::from(*max) {
                bad(format!("default is {n} bytes long, outside {min}..{max}"))
            } else {
                Ok(Value::Bytes(s.clone()))
            }
        }
        (Type::Enum(e), Lit::Ident(v)) => {
            let def = raw.items.iter().find_map(|i| match i {
                RawItem::Enum(d) if &d.name == e => Some(d),
                _ => None,
            });
            match def {
                Some(d) if d.values.contains(v) => Ok(Value::Enum(v.clone())),
                _ => bad(format!("`{v}` is not a value of enum {e}")),
            }
        }
        (Type::Array { min, .. }, Lit::EmptyArray) => {
            if *min > 0 {
                bad(format!(
                    "default `[]` is shorter than the minimum count {min}"
                ))
            } else {
                Ok(Value::EmptyArray)
            }
        }
        (Type::Struct(s), _) => bad(format!(
            "a {s} field cannot have a default; make it optional with `?`"
        )),
        (t, _) => bad(format!("this default does not fit type {}", t.spelling())),
    }
}

/// Recursive structs are refused: every generated validator then has a fixed depth, and
/// the Rust side needs no boxing.
fn check_no_cycles(schema: &Schema) -> Result<(), Error> {
    fn refs(ty: &Type, out: &mut Vec<String>) {
        match ty {
            Type::Struct(n) => out.push(n.clone()),
            Type::Array { elem, .. } => refs(elem, out),
            _ => {}
        }
    }
    fn visit(schema: &Schema, name: &str, stack: &mut Vec<String>) -> Result<(), Error> {
        if let Some(i) = stack.iter().position(|n| n == name) {
            let s = schema.struct_def(name).expect("resolved");
            let mut path = stack[i..].to_vec();
            path.push(name.to_string());
            return Err(Error::at(
                s.pos,
                format!("recursive types are not supported: {}", path.join(" -> ")),
            ));
        }
        stack.push(name.to_string());
        let s = schema.struct_def(name).expect("resolved");
        for f in &s.fields {
            let mut out = Vec::new();
            refs(&f.ty, &mut out);
            for r in out {
                visit(schema, &r, stack)?;
            }
        }
        stack.pop();
        Ok(())
    }
    for s in schema.structs() {
        visit(schema, &s.name, &mut Vec::new())?;
    }
    Ok(())
}
