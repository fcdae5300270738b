//! Wire formats: the BSON codec shared by client framing and internal messages, and the
//! framings (`packet`/`bson`, `text`, raw) that cut a byte stream into messages.

pub mod bson;
pub mod framing;
