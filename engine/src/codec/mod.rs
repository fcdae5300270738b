//! Wire formats that need nothing but bytes: the framings (`packet`/`bson`, `text`, raw)
//! that cut a byte stream into messages, and a small BSON document reader/writer for the
//! engine's own documents that must be handled without Lua (`document`). (BSON <-> Lua
//! values is `script::bson`: it names Lua, and only the script layer may.) The limits all the
//! BSON decoders share are `bson_limits`.

pub mod bson_limits;
pub mod crypto;
pub mod document;
pub mod framing;
