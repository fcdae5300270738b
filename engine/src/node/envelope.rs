//! The envelope of a message between stages: what `stage.signal`, a handler's reply, a
//! service's output or a lock grant becomes on its way to a stage, as one Rust type
//! ([`Envelope`]) and one BSON document. It is the payload of every `PostKind::Msg` post (the
//! prelude's `P.posts.msg` handles it), and without `t` it is the body of an `M` datagram to
//! another process of the node (`node::peers`); a transport between machines carries the same
//! document. The prelude (`engine/lua/prelude/messaging.lua`) builds and reads it as a Lua
//! table through the engine-internal BSON codec (`E.encode` / `E.decode`); this module reads
//! and writes the same bytes without Lua (`codec::document`), so the runtime can handle a
//! message without a Lua state.
//!
//! # The BSON form
//!
//! One document; every key is optional except `i`. The Lua codec writes every integral number
//! as int64 and any other number as double, a nil field not at all; a BSON null reads as
//! absent, as it does in Lua.
//!
//! | key  | BSON type | set by | meaning |
//! |------|-----------|--------|---------|
//! | `t`  | int64 (int32 read too) | the sender, in its own process (`post_to_stage`, `split_batch`); the receiving process, on arrival from another one (`node::peers`). Never sent between processes | the receiving stage: its index in the receiving process's stage directory (`node::stages`) |
//! | `i`  | string, **required** | every sender: `route` (`group:name` of `stage.signal`), `send_reply` (the reply's id), `send_service_output` (an output's id), `deliver_here` (a lock grant's callback, `cb` of `>L.cb`), `split_batch` (the batch's id) | the message id; the receiver strips its own `stage:` prefix and finds the handler (Lua stage) or the command (service stage) it names |
//! | `r`  | string | `route` (the sending stage's id: replies wanted), `send_service_output` (a service's reply stage) | the stage replies go to; absent: nobody is answered |
//! | `rp` | int64 | a sender in another process: `route_processes` (its own number), `send_service_output` (the output's `rp`, else its own number); kept when a core passes the message on (the parts of a split batch leave it to the gathering core) | the process of `r`, and the sender's process for `=ticket` / `=route`; absent: this process |
//! | `rn` | string | every message sent to another node: `route_cluster` (requests) and `send_reply` (replies), this member's name (`cluster::Cluster::me`) | the cluster member (`<node>.<process>`) that sent the message; for a request, where its replies go (through `E.cluster_send`, never load-balanced); absent: this node. `P.posts.msg` keeps it in `_WAITFOR[3]`; index.so and curl.so replies carry it through; `=ticket` / `=route` take it as the sender's member (`Requester::node`) and address their outputs to it |
//! | `f`  | string | `send_reply` (the replying stage's id, when a stage replies) | who sent a reply, without making it answerable (a reply is never answered); `=ticket` / `=route` take it as the sender when `r` is absent (claims, lease extensions) |
//! | `fp` | int64 | `send_reply` to another process or node (its own number) | the process of `f` (on node `rn` when set); absent: this process |
//! | `d`  | int64 if integral, else double | `route`, from `stage.signal({id, ms}, ...)`: the wall clock at sending + `ms`; kept by `split_batch` | deadline, in milliseconds since the Unix epoch: `P.posts.msg` drops a message it receives later; curl.so takes it as the request's time limit |
//! | `v`  | embedded document | every sender with values: `P.pack(...)` = `{n = count, [1] = .., ...}` (keys `#1`, `#2`, ... and `n`; a nil is a missing `#k`) | the values, in the engine-internal form (functions as LuaJIT bytecode, binary subtype 0x80). **Opaque** here: kept as raw bytes, only its framing checked (the Lua codec checks the rest where it is read) |
//! | `k`  | string | `send_service_output`, for a `=ticket` grant | the lease the grant runs under (`_TICKET` in the handler) |
//! | `b`  | boolean (true) | `split_batch`, on what it posts | an index.so batch already split: every index it names is the receiving core's own; not split or forwarded again. `false` reads as absent (the prelude only tests it) |
//! | `g`  | int64 | `split_batch`, on each part of a batch split over cores when a reply is due | the gather id on the splitting core: the part's results go back there as a `gather` post |
//! | `gc` | int64 | `split_batch`, on each part of a batch split over cores | the core that split the batch and gathers the parts' results |
//!
//! A document with any other key, a key twice, a known key of another type, a string that is
//! not UTF-8 or an integer out of its field's range is an error. Unknown keys are refused
//! rather than skipped: this table is the whole envelope, and a field the prelude started to
//! send without this type learning it would otherwise vanish silently between processes (and
//! between machines); refused, it shows at once, in `script::messaging`'s agreement test and
//! in the end-to-end tests. Strings must be UTF-8 because the natives that take ids
//! (`E.waitfor_find`, `E.index_call`, ...) already take them as Rust strings.

use crate::codec::document::{self, DocumentError, Element, Writer};

/// A message between stages (the BSON form and who sets what: the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    /// `t`: the receiving stage's index in the receiving process. `None` between processes,
    /// where the sender cannot know it.
    pub stage: Option<u32>,
    /// `i`: the message id (`group:name`, a reply's id, a service command).
    pub id: String,
    /// `r`: the stage replies go to (`None`: nobody is answered).
    pub reply_stage: Option<String>,
    /// `rp`: the process of the reply stage, and of the sender (`None`: this process).
    pub reply_process: Option<u32>,
    /// `rn`: the cluster member that sent this message, where a request's replies go
    /// (`None`: this node).
    pub reply_node: Option<String>,
    /// `f`: the stage that sent this reply; never a reply address.
    pub from_stage: Option<String>,
    /// `fp`: the process of `from_stage` (`None`: this process).
    pub from_process: Option<u32>,
    /// `d`: milliseconds since the Unix epoch after which the message is dropped unhandled.
    pub deadline_ms: Option<f64>,
    /// `v`: the packed values as the whole embedded BSON document (length prefix and
    /// terminator included), in the engine-internal form; not interpreted here.
    pub values: Option<Vec<u8>>,
    /// `k`: the `=ticket` lease a grant runs under.
    pub ticket: Option<String>,
    /// `b`: an index.so batch already split over cores (written only when true).
    pub split: bool,
    /// `g`: the gather id of a part of a split batch whose reply is due.
    pub gather: Option<u64>,
    /// `gc`: the core that split the batch and gathers the parts.
    pub gather_core: Option<u32>,
}

/// Why bytes are not an envelope, or an envelope cannot be written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("malformed envelope: {0}")]
    Malformed(#[from] DocumentError),
    #[error("envelope key {key:?} is not one of the envelope's keys")]
    UnknownKey { key: String },
    #[error("envelope key `{key}` appears twice")]
    Duplicate { key: &'static str },
    #[error("envelope key `{key}`: expected {expected}, found {found}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("envelope key `{key}`: {value} is out of range")]
    OutOfRange { key: &'static str, value: i128 },
    #[error("envelope key `{key}` is not valid UTF-8")]
    NotUtf8 { key: &'static str },
    #[error("envelope without a message id (`i`)")]
    MissingId,
    #[error("cannot write the envelope: {0}")]
    Unwritable(DocumentError),
}

/// The envelope's keys; one place for their spelling.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    Stage,
    Id,
    ReplyStage,
    ReplyProcess,
    FromStage,
    FromProcess,
    Deadline,
    Values,
    Ticket,
    Split,
    Gather,
    GatherCore,
    ReplyNode,
}

impl Field {
    const ALL: [Field; 13] = [
        Field::Stage,
        Field::Id,
        Field::ReplyStage,
        Field::ReplyProcess,
        Field::FromStage,
        Field::FromProcess,
        Field::Deadline,
        Field::Values,
        Field::Ticket,
        Field::Split,
        Field::Gather,
        Field::GatherCore,
        Field::ReplyNode,
    ];

    fn key(self) -> &'static str {
        match self {
            Field::Stage => "t",
            Field::Id => "i",
            Field::ReplyStage => "r",
            Field::ReplyProcess => "rp",
            Field::FromStage => "f",
            Field::FromProcess => "fp",
            Field::Deadline => "d",
            Field::Values => "v",
            Field::Ticket => "k",
            Field::Split => "b",
            Field::Gather => "g",
            Field::GatherCore => "gc",
            Field::ReplyNode => "rn",
        }
    }

    fn of(key: &[u8]) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.key().as_bytes() == key)
    }

    /// What the field holds, for a wrong-type error.
    fn expected(self) -> &'static str {
        match self {
            Field::Stage
            | Field::ReplyProcess
            | Field::FromProcess
            | Field::Gather
            | Field::GatherCore => "an integer (int32 or int64)",
            Field::Id | Field::ReplyStage | Field::FromStage | Field::Ticket | Field::ReplyNode => {
                "a string"
            }
            Field::Deadline => "a number (double, int32 or int64)",
            Field::Values => "an embedded document",
            Field::Split => "a boolean",
        }
    }

    fn wrong(self, found: &Element<'_>) -> EnvelopeError {
        EnvelopeError::WrongType {
            key: self.key(),
            expected: self.expected(),
            found: found.type_name().into(),
        }
    }

    fn string(self, value: &Element<'_>) -> Result<String, EnvelopeError> {
        match value {
            Element::String(bytes) => std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| EnvelopeError::NotUtf8 { key: self.key() }),
            other => Err(self.wrong(other)),
        }
    }

    fn integer<T: TryFrom<i64>>(self, value: &Element<'_>) -> Result<T, EnvelopeError> {
        let wide = match *value {
            Element::Int32(i) => i64::from(i),
            Element::Int64(i) => i,
            ref other => return Err(self.wrong(other)),
        };
        T::try_from(wide).map_err(|_| EnvelopeError::OutOfRange {
            key: self.key(),
            value: wide.into(),
        })
    }

    fn number(self, value: &Element<'_>) -> Result<f64, EnvelopeError> {
        match *value {
            Element::Double(f) => Ok(f),
            // What Lua would see too: an int64 past 2^53 rounds to the nearest double.
            Element::Int64(i) => Ok(i as f64),
            Element::Int32(i) => Ok(f64::from(i)),
            ref other => Err(self.wrong(other)),
        }
    }
}

impl Envelope {
    /// An envelope carrying only the message id `id`.
    pub fn new(id: impl Into<String>) -> Envelope {
        Envelope {
            id: id.into(),
            ..Envelope::default()
        }
    }

    /// Reads an envelope from its BSON form (the module documentation). `doc` must be exactly
    /// one document. Nothing is allocated beyond the fields read, each bounded by `doc`.
    pub fn decode(doc: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut out = Envelope::default();
        let mut id = None;
        let mut seen = 0u16;
        for item in document::elements(doc)? {
            let (key, value) = item.map_err(|err| match err {
                // A type this reader does not know: for one of the envelope's keys that is the
                // wrong type, for any other key an unknown key.
                DocumentError::UnsupportedType { key, ty, .. } => match Field::of(key.as_bytes()) {
                    Some(field) => EnvelopeError::WrongType {
                        key: field.key(),
                        expected: field.expected(),
                        found: format!("bson type 0x{ty:02x}"),
                    },
                    None => EnvelopeError::UnknownKey { key },
                },
                other => other.into(),
            })?;
            let Some(field) = Field::of(key) else {
                return Err(EnvelopeError::UnknownKey {
                    key: String::from_utf8_lossy(key).into_owned(),
                });
            };
            let bit = 1u16 << field as u16;
            if seen & bit != 0 {
                return Err(EnvelopeError::Duplicate { key: field.key() });
            }
            seen |= bit;
            if value == Element::Null {
                continue;
            }
            match field {
                Field::Stage => out.stage = Some(field.integer(&value)?),
                Field::Id => id = Some(field.string(&value)?),
                Field::ReplyStage => out.reply_stage = Some(field.string(&value)?),
                Field::ReplyProcess => out.reply_process = Some(field.integer(&value)?),
                Field::ReplyNode => out.reply_node = Some(field.string(&value)?),
                Field::FromStage => out.from_stage = Some(field.string(&value)?),
                Field::FromProcess => out.from_process = Some(field.integer(&value)?),
                Field::Deadline => out.deadline_ms = Some(field.number(&value)?),
                Field::Values => match value {
                    Element::Document(bytes) => out.values = Some(bytes.to_vec()),
                    other => return Err(field.wrong(&other)),
                },
                Field::Ticket => out.ticket = Some(field.string(&value)?),
                Field::Split => match value {
                    Element::Bool(b) => out.split = b,
                    other => return Err(field.wrong(&other)),
                },
                Field::Gather => out.gather = Some(field.integer(&value)?),
                Field::GatherCore => out.gather_core = Some(field.integer(&value)?),
            }
        }
        out.id = id.ok_or(EnvelopeError::MissingId)?;
        Ok(out)
    }

    /// Writes the envelope's BSON form: the document the prelude's codec would write for the
    /// same Lua table (integers as int64, `d` as int64 when integral, absent fields left
    /// out), so `E.decode` of it gives the table the prelude would have built. Fails only on
    /// what BSON cannot hold (a field past 2 GiB, `values` that are not one document, a
    /// gather id past `i64::MAX`).
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let strings = [
            &self.reply_stage,
            &self.reply_node,
            &self.from_stage,
            &self.ticket,
        ];
        let size = 64
            + self.id.len()
            + strings
                .iter()
                .filter_map(|s| s.as_ref())
                .map(String::len)
                .sum::<usize>()
            + self.values.as_ref().map_or(0, Vec::len);
        let gather = self
            .gather
            .map(|g| {
                i64::try_from(g).map_err(|_| EnvelopeError::OutOfRange {
                    key: Field::Gather.key(),
                    value: g.into(),
                })
            })
            .transpose()?;
        let mut w = Writer::with_capacity(size);
        write_fields(self, gather, &mut w).map_err(EnvelopeError::Unwritable)?;
        w.finish().map_err(EnvelopeError::Unwritable)
    }
}

/// Every field present, in a fixed order (the Lua codec's order is `next()`'s, so no reader
/// depends on one): `t` and `i` first, `v`, usually the largest, last. `gather` is `g`,
/// already checked to fit an int64.
fn write_fields(e: &Envelope, gather: Option<i64>, w: &mut Writer) -> Result<(), DocumentError> {
    if let Some(t) = e.stage {
        w.int64(Field::Stage.key(), t.into())?;
    }
    w.string(Field::Id.key(), e.id.as_bytes())?;
    if let Some(r) = &e.reply_stage {
        w.string(Field::ReplyStage.key(), r.as_bytes())?;
    }
    if let Some(rp) = e.reply_process {
        w.int64(Field::ReplyProcess.key(), rp.into())?;
    }
    if let Some(rn) = &e.reply_node {
        w.string(Field::ReplyNode.key(), rn.as_bytes())?;
    }
    if let Some(f) = &e.from_stage {
        w.string(Field::FromStage.key(), f.as_bytes())?;
    }
    if let Some(fp) = e.from_process {
        w.int64(Field::FromProcess.key(), fp.into())?;
    }
    if let Some(d) = e.deadline_ms {
        write_number(w, Field::Deadline.key(), d)?;
    }
    if let Some(k) = &e.ticket {
        w.string(Field::Ticket.key(), k.as_bytes())?;
    }
    if e.split {
        w.bool(Field::Split.key(), true)?;
    }
    if let Some(g) = gather {
        w.int64(Field::Gather.key(), g)?;
    }
    if let Some(gc) = e.gather_core {
        w.int64(Field::GatherCore.key(), gc.into())?;
    }
    if let Some(v) = &e.values {
        w.document(Field::Values.key(), v)?;
    }
    Ok(())
}

/// A Lua number the way the engine's Lua codec writes it: int64 when integral and within
/// `[-2^63, 2^63)`, else double (fractions, NaN, infinities, and -0.0, whose sign an integer
/// would lose).
fn write_number(w: &mut Writer, key: &str, f: f64) -> Result<(), DocumentError> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    let integral = f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f);
    if integral && !(f == 0.0 && f.is_sign_negative()) {
        w.int64(key, f as i64)
    } else {
        w.double(key, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::document::handmade::raw;
    use crate::codec::document::types;

    fn bstr(s: &str) -> Vec<u8> {
        crate::codec::document::handmade::bstr(s.as_bytes())
    }

    fn i64le(i: i64) -> [u8; 8] {
        i.to_le_bytes()
    }

    /// `{n = 1, [1] = "hi"}` as the Lua codec writes it.
    fn values() -> Vec<u8> {
        raw(&[
            (types::STRING, "#1", &bstr("hi")),
            (types::INT64, "n", &i64le(1)),
        ])
    }

    #[test]
    fn a_request_from_another_process() {
        let v = values();
        let doc = raw(&[
            (types::STRING, "i", &bstr("game:hello=back")),
            (types::STRING, "r", &bstr("lobby")),
            (types::INT64, "rp", &i64le(2)),
            (types::DOUBLE, "d", &1_700_000_000_000.5f64.to_le_bytes()),
            (types::DOCUMENT, "v", &v),
        ]);
        let e = Envelope::decode(&doc).unwrap();
        assert_eq!(
            e,
            Envelope {
                reply_stage: Some("lobby".into()),
                reply_process: Some(2),
                deadline_ms: Some(1_700_000_000_000.5),
                values: Some(v.clone()),
                ..Envelope::new("game:hello=back")
            }
        );
        assert_eq!(Envelope::decode(&e.encode().unwrap()).unwrap(), e);
    }

    #[test]
    fn every_field_round_trips() {
        let e = Envelope {
            stage: Some(u32::MAX),
            id: "index:#1.set?scores=done".into(),
            reply_stage: Some("game".into()),
            reply_process: Some(3),
            reply_node: Some("eu-1.2".into()),
            from_stage: Some("ticket".into()),
            from_process: Some(4),
            deadline_ms: Some(12.0),
            values: Some(values()),
            ticket: Some("17".into()),
            split: true,
            gather: Some(i64::MAX as u64),
            gather_core: Some(5),
        };
        let bytes = e.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        // The types the Lua codec would write: integers as int64, an integral deadline too.
        let types_of: Vec<(Vec<u8>, u8)> = document::elements(&bytes)
            .unwrap()
            .map(|x| {
                let (k, v) = x.unwrap();
                let ty = match v {
                    Element::Int64(_) => types::INT64,
                    Element::String(_) => types::STRING,
                    Element::Document(_) => types::DOCUMENT,
                    Element::Bool(_) => types::BOOL,
                    other => panic!("unexpected {other:?}"),
                };
                (k.to_vec(), ty)
            })
            .collect();
        for (key, ty) in [
            ("t", types::INT64),
            ("i", types::STRING),
            ("rp", types::INT64),
            ("rn", types::STRING),
            ("d", types::INT64),
            ("b", types::BOOL),
            ("g", types::INT64),
            ("gc", types::INT64),
            ("v", types::DOCUMENT),
        ] {
            assert!(
                types_of.contains(&(key.as_bytes().to_vec(), ty)),
                "{key}: {types_of:?}"
            );
        }
    }

    #[test]
    fn numbers_are_written_as_lua_writes_them() {
        for (d, ty) in [
            (5.0, types::INT64),
            (-3.0, types::INT64),
            (0.0, types::INT64),
            (0.25, types::DOUBLE),
            (-0.0, types::DOUBLE),
            (f64::NAN, types::DOUBLE),
            (f64::INFINITY, types::DOUBLE),
            (1e300, types::DOUBLE),
        ] {
            let e = Envelope {
                deadline_ms: Some(d),
                ..Envelope::new("x")
            };
            let bytes = e.encode().unwrap();
            let (_, value) = document::elements(&bytes)
                .unwrap()
                .map(Result::unwrap)
                .find(|(k, _)| *k == b"d")
                .unwrap();
            let got = match value {
                Element::Int64(i) => {
                    assert_eq!(i as f64, d);
                    types::INT64
                }
                Element::Double(f) => {
                    assert!(f.to_bits() == d.to_bits(), "{f} for {d}");
                    types::DOUBLE
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(got, ty, "deadline {d}");
        }
    }

    #[test]
    fn what_lua_reads_as_absent_is_absent() {
        let doc = raw(&[
            (types::STRING, "i", &bstr("a:b")),
            (types::NULL, "r", &[]),
            (types::NULL, "v", &[]),
            (types::BOOL, "b", &[0]),
            // int32, as the old datagram path appended it, reads too.
            (types::INT32, "t", &7i32.to_le_bytes()),
            (types::INT32, "d", &9i32.to_le_bytes()),
        ]);
        let e = Envelope::decode(&doc).unwrap();
        assert_eq!(
            e,
            Envelope {
                stage: Some(7),
                deadline_ms: Some(9.0),
                ..Envelope::new("a:b")
            }
        );
    }

    /// Table-driven: documents that are not envelopes, and the error each must give.
    #[test]
    fn bad_envelopes_are_errors_naming_the_key() {
        let id = bstr("a:b");
        let cases: Vec<(&str, Vec<u8>, EnvelopeError)> = vec![
            ("no id", raw(&[]), EnvelopeError::MissingId),
            (
                "null id",
                raw(&[(types::NULL, "i", &[])]),
                EnvelopeError::MissingId,
            ),
            (
                "unknown key",
                raw(&[(types::STRING, "i", &id), (types::INT64, "zz", &i64le(1))]),
                EnvelopeError::UnknownKey { key: "zz".into() },
            ),
            (
                "unknown key of an unknown type",
                raw(&[(types::STRING, "i", &id), (0x05, "x", &[0, 0, 0, 0, 0])]),
                EnvelopeError::UnknownKey { key: "x".into() },
            ),
            (
                "twice",
                raw(&[(types::STRING, "i", &id), (types::STRING, "i", &id)]),
                EnvelopeError::Duplicate { key: "i" },
            ),
            (
                "id as a number",
                raw(&[(types::INT64, "i", &i64le(1))]),
                EnvelopeError::WrongType {
                    key: "i",
                    expected: "a string",
                    found: "int64".into(),
                },
            ),
            (
                "stage as a double",
                raw(&[(types::STRING, "i", &id), (types::DOUBLE, "t", &[0; 8])]),
                EnvelopeError::WrongType {
                    key: "t",
                    expected: "an integer (int32 or int64)",
                    found: "double".into(),
                },
            ),
            (
                "negative process",
                raw(&[(types::STRING, "i", &id), (types::INT64, "rp", &i64le(-1))]),
                EnvelopeError::OutOfRange {
                    key: "rp",
                    value: -1,
                },
            ),
            (
                "stage past u32",
                raw(&[
                    (types::STRING, "i", &id),
                    (types::INT64, "t", &i64le(1 << 32)),
                ]),
                EnvelopeError::OutOfRange {
                    key: "t",
                    value: 1 << 32,
                },
            ),
            (
                "values as a string",
                raw(&[(types::STRING, "i", &id), (types::STRING, "v", &id)]),
                EnvelopeError::WrongType {
                    key: "v",
                    expected: "an embedded document",
                    found: "string".into(),
                },
            ),
            (
                "values as an array",
                raw(&[(types::STRING, "i", &id), (0x04, "v", &[5, 0, 0, 0, 0])]),
                EnvelopeError::WrongType {
                    key: "v",
                    expected: "an embedded document",
                    found: "bson type 0x04".into(),
                },
            ),
            (
                "split as an integer",
                raw(&[
                    (types::STRING, "i", &id),
                    (types::INT32, "b", &[1, 0, 0, 0]),
                ]),
                EnvelopeError::WrongType {
                    key: "b",
                    expected: "a boolean",
                    found: "int32".into(),
                },
            ),
            (
                "deadline as a string",
                raw(&[(types::STRING, "i", &id), (types::STRING, "d", &id)]),
                EnvelopeError::WrongType {
                    key: "d",
                    expected: "a number (double, int32 or int64)",
                    found: "string".into(),
                },
            ),
            (
                "reply stage not UTF-8",
                raw(&[
                    (types::STRING, "i", &id),
                    (types::STRING, "r", &[2, 0, 0, 0, 0xff, 0]),
                ]),
                EnvelopeError::NotUtf8 { key: "r" },
            ),
            (
                "reply node as an integer",
                raw(&[(types::STRING, "i", &id), (types::INT64, "rn", &i64le(2))]),
                EnvelopeError::WrongType {
                    key: "rn",
                    expected: "a string",
                    found: "int64".into(),
                },
            ),
        ];
        for (what, doc, expected) in cases {
            assert_eq!(Envelope::decode(&doc), Err(expected), "{what}");
        }
        // Malformed BSON is an error of its own.
        assert!(matches!(
            Envelope::decode(&[5, 0, 0]),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    /// Every prefix and many corruptions of a real envelope: an error or an envelope, never a
    /// panic; and whatever decodes encodes again to something that decodes the same.
    #[test]
    fn garbled_envelopes_never_panic() {
        let full = Envelope {
            stage: Some(2),
            reply_stage: Some("lobby".into()),
            reply_process: Some(1),
            reply_node: Some("n1.1".into()),
            deadline_ms: Some(1e12 + 0.5),
            values: Some(values()),
            split: true,
            gather: Some(4),
            gather_core: Some(1),
            ..Envelope::new("game:hello")
        }
        .encode()
        .unwrap();
        for cut in 0..full.len() {
            assert!(Envelope::decode(&full[..cut]).is_err(), "prefix {cut}");
        }
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut d = full.clone();
            for _ in 0..1 + next() % 3 {
                let r = next();
                let at = (r >> 8) as usize % d.len();
                match r % 4 {
                    0 => d[at] = (r >> 32) as u8,
                    1 => d[at] ^= 1 << ((r >> 32) % 8),
                    2 => d[at] = d[at].wrapping_add(((r >> 32) % 5) as u8).wrapping_sub(2),
                    _ => d.truncate(at.max(1)),
                }
            }
            if d.len() >= 4 && next() % 2 == 0 {
                let len = d.len() as i32;
                d[..4].copy_from_slice(&len.to_le_bytes());
            }
            if let Ok(e) = Envelope::decode(&d) {
                decoded += 1;
                let again = Envelope::decode(&e.encode().unwrap()).unwrap();
                // NaN is the one value not equal to itself.
                if e.deadline_ms.is_none_or(|d| !d.is_nan()) {
                    assert_eq!(again, e);
                }
            }
        }
        assert!(decoded > 0, "the corruption rejected everything");
    }

    #[test]
    fn what_bson_cannot_hold_is_refused() {
        let e = Envelope {
            values: Some(vec![1, 2, 3]),
            ..Envelope::new("x")
        };
        assert!(matches!(e.encode(), Err(EnvelopeError::Unwritable(_))));
        let e = Envelope {
            gather: Some(u64::MAX),
            ..Envelope::new("x")
        };
        assert!(matches!(
            e.encode(),
            Err(EnvelopeError::OutOfRange { key: "g", .. })
        ));
    }
}

/// Properties: any bytes decode without a panic, and every envelope encodes and decodes back
/// to itself (the envelope is what travels between cores and processes).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter)
    }

    /// A values document: `{"#1" = .., "#2" = .., n = count}` of int64s, as `P.pack` makes.
    fn values() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<i64>(), 0..6).prop_map(|vs| {
            let mut w = Writer::default();
            for (i, v) in vs.iter().enumerate() {
                w.int64(&format!("#{}", i + 1), *v).unwrap();
            }
            w.int64("n", vs.len() as i64).unwrap();
            w.finish().unwrap()
        })
    }

    fn deadline() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            any::<u64>().prop_map(f64::from_bits),
            (0i64..1 << 50).prop_map(|i| i as f64),
        ]
    }

    prop_compose! {
        fn envelope()(
            stage in proptest::option::of(any::<u32>()),
            id in text(),
            reply_stage in proptest::option::of(text()),
            reply_process in proptest::option::of(any::<u32>()),
            reply_node in proptest::option::of(text()),
            from_stage in proptest::option::of(text()),
            from_process in proptest::option::of(any::<u32>()),
            deadline_ms in proptest::option::of(deadline()),
            values in proptest::option::of(values()),
            ticket in proptest::option::of(text()),
            split in any::<bool>(),
            gather in proptest::option::of(0..=i64::MAX as u64),
            gather_core in proptest::option::of(any::<u32>()),
        ) -> Envelope {
            Envelope {
                stage, id, reply_stage, reply_process, reply_node, from_stage, from_process,
                deadline_ms, values, ticket, split, gather, gather_core,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_envelope_comes_back_as_itself(e in envelope()) {
            let bytes = e.encode().unwrap();
            let back = Envelope::decode(&bytes).unwrap();
            // NaN is the one deadline not equal to itself: compared as "both NaN".
            let nan = |x: &Envelope| x.deadline_ms.is_some_and(f64::is_nan);
            prop_assert_eq!(nan(&back), nan(&e));
            if !nan(&e) {
                prop_assert_eq!(&back, &e);
            }
            prop_assert_eq!(back.encode().unwrap(), bytes);
        }

        #[test]
        fn any_bytes_decode_without_a_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), fix in any::<bool>()) {
            if fix && bytes.len() >= 5 {
                let len = bytes.len() as i32;
                bytes[..4].copy_from_slice(&len.to_le_bytes());
            }
            if let Ok(e) = Envelope::decode(&bytes) {
                prop_assert!(e.id.len() < bytes.len());
            }
        }
    }
}
