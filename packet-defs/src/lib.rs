//! packet-defs: one packet schema file is the contract between a STAGE server, its clients
//! and its bots; this crate compiles it into code. `packet-defs gen` writes a Lua module that
//! checks every client packet before a handler sees it (and builds replies); `packet-defs
//! check` compares a schema with its previous version and lists what would break old peers.
//!
//! # Why a small IDL rather than TOML, KDL, JSON Schema or protobuf
//! A gameplay programmer reads a packet as "a name and its fields with their types". A
//! dedicated syntax says exactly that on one line per field —
//! `name: string[1..32]`, `level: u16 = 1`, `tags?: [string[..16]; ..8]` — where TOML or KDL
//! would need a table or node per field and spell types and bounds as strings the reader
//! must decode twice. protobuf's `.proto` is close, but its field numbers, wire format and
//! missing bounds do not match this engine, whose wire is named BSON fields. The IDL is small
//! enough to learn from one example (README.md), its errors point at `line:column`, and its
//! parser is a few hundred lines with no dependencies.
//!
//! # Layout (each module names only the ones below it)
//! `main.rs` (CLI) -> [`lua`], [`rust`] and [`ts`] (generators) and [`compat`] (breaking-change check) ->
//! [`parser`] (text -> checked model) -> [`lexer`] -> [`schema`] (the model) and [`error`].
//! Nothing here depends on the engine: the crate turns text into text.

pub mod compat;
pub mod error;
pub mod lexer;
pub mod lua;
pub mod parser;
pub mod rust;
pub mod schema;
pub mod ts;

pub use error::{Error, Pos};
pub use parser::parse;
pub use schema::Schema;

/// The module name generated code is stored under for a schema path: the file name up to its
/// first `.`, plus `_packets` (`lobby.packets` -> `lobby_packets`, loaded with
/// `stage.require("lobby_packets")`).
pub fn module_name(schema_path: &std::path::Path) -> String {
    let file = schema_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = file.split('.').next().unwrap_or("schema");
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}_packets")
}
