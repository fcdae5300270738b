//! Wire formats: the BSON codec shared by client framing and internal messages.

pub mod bson;
