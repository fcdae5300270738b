//! Configuration errors and the small helpers that build them: where a value sits (`At`: the
//! source name plus a key path such as `#startup[2][0]` or `lua.so.%package[1]`) and how a found
//! value is described. Every check in the config module reports through these so that messages
//! stay uniform and always name the file, the exact key and what was expected.

use simd_json::{OwnedValue, StaticNode};

/// Everything that can be wrong with a configuration. `load` collects all of them at once so a
/// user fixes a broken file in one round instead of one error per restart.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `-c` file (or stdin) could not be read.
    #[error("cannot read config `{name}`: {reason}")]
    Read { name: String, reason: String },
    /// `-c` named no file at all (for example `-c ''` or `-c ::`).
    #[error("no config given: `-c` needs a file path or `-` for stdin")]
    NoSource,
    /// The text is not JSON.
    #[error(
        "config `{name}`: invalid JSON at byte {offset} (line {line}, column {column}): {message}"
    )]
    Json {
        name: String,
        offset: usize,
        line: usize,
        column: usize,
        message: String,
    },
    /// The text is JSON but not an object, so it cannot be merged by top-level key.
    #[error("config `{name}`: the top level must be a JSON object, found {found}")]
    NotObject { name: String, found: String },
    /// A value has the wrong JSON type.
    #[error("config `{name}`: key `{path}`: expected {expected}, found {found}")]
    Type {
        name: String,
        path: String,
        expected: String,
        found: String,
    },
    /// A value has the right type but is not acceptable (range, syntax, unknown key, ...).
    #[error("config `{name}`: key `{path}`: {message}")]
    Invalid {
        name: String,
        path: String,
        message: String,
    },
    /// Spec 9.1: without `#startup` the server has nothing to run, which is fatal.
    #[error("config `{name}`: `#startup` is required (it lists the stage processes to start, e.g. `\"#startup\": [[\"lua.so+stage\"]]`)")]
    MissingStartup { name: String },
    /// `Config::lua_stage` was asked about a module that is not `lua.so`/`luajit.so`.
    #[error("`{entry}` is not a Lua stage (only `lua.so` and `luajit.so` have Lua stage blocks)")]
    NotLua { entry: String },
}

/// The location of a value: which source it came from and its key path inside the merged
/// document. Cheap to clone; paths are short.
#[derive(Debug, Clone)]
pub(crate) struct At {
    pub(crate) source: String,
    pub(crate) path: String,
}

impl At {
    pub(crate) fn new(source: impl Into<String>, path: impl Into<String>) -> Self {
        At {
            source: source.into(),
            path: path.into(),
        }
    }

    /// Object member. An empty path (the root of a referenced JSON file) yields just the key.
    pub(crate) fn key(&self, key: &str) -> At {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        };
        At::new(self.source.clone(), path)
    }

    pub(crate) fn index(&self, i: usize) -> At {
        At::new(self.source.clone(), format!("{}[{}]", self.path, i))
    }

    pub(crate) fn type_err(&self, expected: &str, found: &OwnedValue) -> ConfigError {
        ConfigError::Type {
            name: self.source.clone(),
            path: self.display_path(),
            expected: expected.to_string(),
            found: describe(found),
        }
    }

    pub(crate) fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            name: self.source.clone(),
            path: self.display_path(),
            message: message.into(),
        }
    }

    fn display_path(&self) -> String {
        if self.path.is_empty() {
            "(top level)".to_string()
        } else {
            self.path.clone()
        }
    }
}

/// Integer value of a JSON number, if it is one. `i128` covers both `I64` and `U64` nodes so the
/// callers can range-check without caring which one simd-json picked.
pub(crate) fn as_int(v: &OwnedValue) -> Option<i128> {
    match v {
        OwnedValue::Static(StaticNode::I64(i)) => Some(i128::from(*i)),
        OwnedValue::Static(StaticNode::U64(u)) => Some(i128::from(*u)),
        _ => None,
    }
}

/// "string \"ten\"", "integer 5", "object", ... — what an error message says was found.
pub(crate) fn describe(v: &OwnedValue) -> String {
    // Long strings are cut so that one bad value cannot flood the log line.
    const MAX: usize = 40;
    match v {
        OwnedValue::String(s) => {
            if s.chars().count() > MAX {
                let cut: String = s.chars().take(MAX).collect();
                format!("string {cut:?}...")
            } else {
                format!("string {s:?}")
            }
        }
        OwnedValue::Array(a) => format!("array of {} element(s)", a.len()),
        OwnedValue::Object(_) => "object".to_string(),
        OwnedValue::Static(StaticNode::Null) => "null".to_string(),
        OwnedValue::Static(StaticNode::Bool(b)) => format!("boolean {b}"),
        OwnedValue::Static(StaticNode::F64(f)) => format!("number {f}"),
        other => match as_int(other) {
            Some(i) => format!("integer {i}"),
            None => "number".to_string(),
        },
    }
}

/// Turns simd-json's `ExpectedMapComma`-style error kinds into lowercase words.
pub(crate) fn json_message(e: &simd_json::Error) -> String {
    if matches!(e.error(), simd_json::ErrorType::Eof) {
        return "unexpected end of input (empty or truncated?)".to_string();
    }
    let kind = format!("{:?}", e.error());
    let mut words = String::with_capacity(kind.len() + 8);
    for (i, c) in kind.char_indices() {
        if c == '(' {
            // Variants with payloads (`Unexpected(Some(..), ..)`) read better verbatim.
            words.push_str(&kind[i..]);
            break;
        }
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    match e.character() {
        Some(c) => format!("{words} near {c:?}"),
        None => words,
    }
}

/// 1-based line and column of a byte offset, for humans reading the JSON error.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}
