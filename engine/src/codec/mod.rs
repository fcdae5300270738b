//! Wire formats that need nothing but bytes: the framings (`packet`/`bson`, `text`, raw)
//! that cut a byte stream into messages. (BSON <-> Lua values is `script::bson`: it names
//! Lua, and only the script layer may.)

pub mod framing;
