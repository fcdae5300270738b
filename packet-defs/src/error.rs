//! The one error type of the schema compiler: a message and, when it comes from the schema
//! text, the line and column it points at. The CLI prefixes the file name, giving the usual
//! `file:line:column: error: ...` form editors can jump to.

use std::fmt;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A schema error: where (if known) and what, phrased so it names the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub pos: Option<Pos>,
    pub msg: String,
}

impl Error {
    pub fn at(pos: Pos, msg: impl Into<String>) -> Error {
        Error {
            pos: Some(pos),
            msg: msg.into(),
        }
    }

    /// `file:line:column: error: message` (or `file: error: message` without a position).
    pub fn render(&self, file: &str) -> String {
        match self.pos {
            Some(p) => format!("{file}:{p}: error: {}", self.msg),
            None => format!("{file}: error: {}", self.msg),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{p}: {}", self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for Error {}
