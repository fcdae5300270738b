//! The checked schema model every generator and the compatibility check read. The parser
//! builds it and only hands it out after every name is resolved, every bound is inside its
//! type and every default fits its field, so generators never re-check anything. Items keep
//! their declaration order (a `Vec`, never a hash map), which is what makes generated output
//! deterministic.

use crate::error::Pos;

/// A whole schema file.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// `version N`: the schema's own version, written into generated code.
    pub version: u32,
    pub items: Vec<Item>,
}

/// A top-level declaration.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Enum(EnumDef),
    Struct(StructDef),
}

impl Item {
    pub fn name(&self) -> &str {
        match self {
            Item::Enum(e) => &e.name,
            Item::Struct(s) => &s.name,
        }
    }

    pub fn pos(&self) -> Pos {
        match self {
            Item::Enum(e) => e.pos,
            Item::Struct(s) => s.pos,
        }
    }
}

/// `enum Name { a, b, c }`: travels as the value's name (a string), so reordering values
/// changes nothing on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct EnumDef {
    pub name: String,
    pub values: Vec<String>,
    pub pos: Pos,
}

/// Who sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `from client`: client -> server; the server validates it before its handler runs.
    Client,
    /// `from server`: server -> client; built with the generated constructor.
    Server,
}

impl Direction {
    pub fn word(self) -> &'static str {
        match self {
            Direction::Client => "client",
            Direction::Server => "server",
        }
    }
}

/// A `message` (dispatched on its name) or a `struct` (only nested inside others).
#[derive(Debug, Clone, PartialEq)]
pub enum StructKind {
    Struct,
    Message {
        from: Direction,
        reply: Option<String>,
    },
}

/// `struct Name { ... }` or `message name from client reply other { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct StructDef {
    pub name: String,
    pub kind: StructKind,
    pub fields: Vec<Field>,
    pub pos: Pos,
}

impl StructDef {
    pub fn is_message(&self) -> bool {
        matches!(self.kind, StructKind::Message { .. })
    }

    pub fn direction(&self) -> Option<Direction> {
        match self.kind {
            StructKind::Message { from, .. } => Some(from),
            StructKind::Struct => None,
        }
    }
}

/// One field: `name: type`, `name?: type` or `name: type = default`.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub ty: Type,
    pub presence: Presence,
    pub pos: Pos,
}

/// Whether a field must be present.
#[derive(Debug, Clone, PartialEq)]
pub enum Presence {
    Required,
    /// `name?: T`: may be absent (nil in Lua).
    Optional,
    /// `name: T = v`: may be absent; the decoder fills `v`.
    Default(Value),
}

/// A default value, already checked against its field's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    /// For `string` (UTF-8) and `bytes` fields.
    Bytes(Vec<u8>),
    /// An enum value's name.
    Enum(String),
    /// `[]`: an empty array.
    EmptyArray,
}

impl Value {
    /// The value as written in a schema (`1`, `green`, `"a\x00"`, `[]`).
    pub fn spelling(&self) -> String {
        match self {
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Float(f) => num(*f),
            Value::Bytes(b) => {
                let mut s = String::from("\"");
                for &c in b {
                    match c {
                        b'"' => s.push_str("\\\""),
                        b'\\' => s.push_str("\\\\"),
                        0x20..=0x7e => s.push(c as char),
                        _ => s.push_str(&format!("\\x{c:02x}")),
                    }
                }
                s.push('"');
                s
            }
            Value::Enum(e) => e.clone(),
            Value::EmptyArray => "[]".into(),
        }
    }
}

/// Integer types. All travel as BSON int64 (what the engine writes for an integral number),
/// so `u64` is limited to `i64`'s maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntKind {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
}

impl IntKind {
    pub const ALL: [IntKind; 8] = [
        IntKind::I8,
        IntKind::I16,
        IntKind::I32,
        IntKind::I64,
        IntKind::U8,
        IntKind::U16,
        IntKind::U32,
        IntKind::U64,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IntKind::I8 => "i8",
            IntKind::I16 => "i16",
            IntKind::I32 => "i32",
            IntKind::I64 => "i64",
            IntKind::U8 => "u8",
            IntKind::U16 => "u16",
            IntKind::U32 => "u32",
            IntKind::U64 => "u64",
        }
    }

    /// The full range of the type on this wire.
    pub fn range(self) -> (i64, i64) {
        match self {
            IntKind::I8 => (i8::MIN.into(), i8::MAX.into()),
            IntKind::I16 => (i16::MIN.into(), i16::MAX.into()),
            IntKind::I32 => (i32::MIN.into(), i32::MAX.into()),
            IntKind::I64 => (i64::MIN, i64::MAX),
            IntKind::U8 => (0, u8::MAX.into()),
            IntKind::U16 => (0, u16::MAX.into()),
            IntKind::U32 => (0, u32::MAX.into()),
            IntKind::U64 => (0, i64::MAX),
        }
    }
}

/// Float types. Both travel as BSON double; `f32` bounds values to `f32`'s finite range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatKind {
    F32,
    F64,
}

impl FloatKind {
    pub fn name(self) -> &'static str {
        match self {
            FloatKind::F32 => "f32",
            FloatKind::F64 => "f64",
        }
    }

    pub fn range(self) -> (f64, f64) {
        match self {
            FloatKind::F32 => (f64::from(f32::MIN), f64::from(f32::MAX)),
            FloatKind::F64 => (f64::MIN, f64::MAX),
        }
    }
}

/// A field's type with its bounds resolved (inclusive on both ends).
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    Bool,
    Int {
        kind: IntKind,
        min: i64,
        max: i64,
    },
    /// Always finite: NaN and infinities are refused.
    Float {
        kind: FloatKind,
        min: f64,
        max: f64,
    },
    /// UTF-8 text; length bounds count bytes (what the wire and `#s` count).
    Str {
        min: u32,
        max: u32,
    },
    /// Any bytes (BSON binary or string); length bounds count bytes.
    Bytes {
        min: u32,
        max: u32,
    },
    Array {
        elem: Box<Type>,
        min: u32,
        max: u32,
    },
    Enum(String),
    Struct(String),
}

impl Type {
    /// The type as written in a schema (`u16[1..100]`, `[string[..16]; ..8]`).
    pub fn spelling(&self) -> String {
        match self {
            Type::Bool => "bool".into(),
            Type::Int { kind, min, max } => {
                if (*min, *max) == kind.range() {
                    kind.name().into()
                } else {
                    format!("{}[{min}..{max}]", kind.name())
                }
            }
            Type::Float { kind, min, max } => {
                if (*min, *max) == kind.range() {
                    kind.name().into()
                } else {
                    format!("{}[{}..{}]", kind.name(), num(*min), num(*max))
                }
            }
            Type::Str { min, max } => format!("string[{}..{max}]", lo(*min)),
            Type::Bytes { min, max } => format!("bytes[{}..{max}]", lo(*min)),
            Type::Array { elem, min, max } => format!("[{}; {}..{max}]", elem.spelling(), lo(*min)),
            Type::Enum(n) | Type::Struct(n) => n.clone(),
        }
    }
}

fn lo(min: u32) -> String {
    if min == 0 {
        String::new()
    } else {
        min.to_string()
    }
}

/// A float as Rust prints it, always with a fraction or exponent so it reads as a float.
pub fn num(f: f64) -> String {
    format!("{f:?}")
}

impl Schema {
    pub fn item(&self, name: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.name() == name)
    }

    pub fn structs(&self) -> impl Iterator<Item = &StructDef> {
        self.items.iter().filter_map(|i| match i {
            Item::Struct(s) => Some(s),
            Item::Enum(_) => None,
        })
    }

    pub fn enums(&self) -> impl Iterator<Item = &EnumDef> {
        self.items.iter().filter_map(|i| match i {
            Item::Enum(e) => Some(e),
            Item::Struct(_) => None,
        })
    }

    pub fn struct_def(&self, name: &str) -> Option<&StructDef> {
        self.structs().find(|s| s.name == name)
    }

    pub fn enum_def(&self, name: &str) -> Option<&EnumDef> {
        self.enums().find(|e| e.name == name)
    }
}
