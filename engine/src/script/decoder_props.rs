//! Property tests of the two decoders a client's frame meets inside a real Lua state: the
//! Rust codec over the Lua C API (`script::bson`) and the LuaJIT FFI decoder of the packet
//! path (`engine/lua/prelude/fastpath.lua`, loaded here as the prelude loads it, with the
//! engine functions it needs). Arbitrary bytes never crash the state and never make the two
//! disagree (the FFI decoder only takes what the Rust one takes, and builds the same value);
//! every document — written independently of both, or by the engine's encoder — decodes to
//! the value it holds, nested documents, arrays, binaries, NaNs with any payload, infinities,
//! int32 and int64 included.

use std::cell::UnsafeCell;

use bytes::BytesMut;
use mlua::{Function, LightUserData, Lua, LuaOptions, StdLib, Table, Value};
use proptest::prelude::*;
use stage_ffi::{FfiContext, PacketView};

use super::bson::{self, BsonError, DecodeOptions, EncodeOptions};

/// A Lua state with the FFI decoder loaded, and what it needs kept alive.
struct States {
    lua: Lua,
    view: Box<UnsafeCell<PacketView>>,
    _ctx: Box<UnsafeCell<FfiContext>>,
    receive_view: Function,
    p: Table,
    deq: Function,
}

/// Deep equality as scripts see it (shared with `script::bson`'s tests).
use super::bson::tests::DEEP_EQ;

fn states() -> States {
    // SAFETY: the ffi library is what the decoder under test is written in; this state runs
    // only the prelude's fastpath chunk and this module's code.
    let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL, LuaOptions::default()) };
    let view = Box::new(UnsafeCell::new(PacketView {
        ptr: std::ptr::null(),
        len: 0,
    }));
    let ctx = Box::new(UnsafeCell::new(FfiContext {
        conn: std::ptr::null(),
        id: 0,
    }));
    let e = lua.create_table().unwrap();
    super::fastpath::register(&lua, &e).unwrap();
    // The real `ffi_enabled` asks the node's plan; there is no node here.
    e.set(
        "ffi_enabled",
        lua.create_function(|_, ()| Ok(true)).unwrap(),
    )
    .unwrap();
    e.set("packet_view", LightUserData(view.get().cast()))
        .unwrap();
    e.set("ffi_ctx", LightUserData(ctx.get().cast())).unwrap();
    let p: Table = lua
        .load(
            "local P = { ffi = require('ffi'), hooks = {} }
             P.deliver = function (_, v) P.got = v end
             return P",
        )
        .eval()
        .unwrap();
    lua.load(include_str!("../../lua/prelude/fastpath.lua"))
        .set_name("@prelude/fastpath.lua")
        .call::<()>((e, p.clone()))
        .unwrap();
    let hooks: Table = p.get("hooks").unwrap();
    let receive_view = hooks.get("receive_view").unwrap();
    let deq = lua.load(DEEP_EQ).eval().unwrap();
    States {
        lua,
        view,
        _ctx: ctx,
        receive_view,
        p,
        deq,
    }
}

impl States {
    /// The FFI decoder's value of `frame`'s first element, or None when it steps aside.
    fn ffi(&self, frame: &[u8]) -> Option<Value> {
        // SAFETY: the decoder reads the view only during the call below, while `frame` lives.
        unsafe {
            *self.view.get() = PacketView {
                ptr: frame.as_ptr(),
                len: frame.len(),
            }
        };
        self.p.set("got", Value::Nil).unwrap();
        let taken: bool = self.receive_view.call((1u64, true, frame.len())).unwrap();
        taken.then(|| self.p.get("got").unwrap())
    }

    fn rust(&self, frame: &[u8]) -> Result<Value, BsonError> {
        bson::decode_first(&self.lua, frame, &DecodeOptions::default())
    }

    fn same(&self, a: &Value, b: &Value) -> bool {
        self.deq.call((a, b)).unwrap()
    }

    /// `v` as the engine's encoder writes it: tables in their `next()` order, so two tables
    /// with the same contents but a different shape (sizes, insertion history) can differ.
    fn encoded(&self, v: &Value) -> Vec<u8> {
        let mut out = BytesMut::new();
        bson::encode_wrapped(&self.lua, v, &mut out, &EncodeOptions::default()).unwrap();
        out.to_vec()
    }
}

/// A BSON value, written by [`write`] independently of the engine's codecs.
#[derive(Debug, Clone)]
enum Tree {
    Double(u64),
    Str(Vec<u8>),
    Doc(Vec<(String, Tree)>),
    Array(Vec<Tree>),
    Binary(u8, Vec<u8>),
    Bool(bool),
    Null,
    Int32(i32),
    Int64(i64),
}

impl Tree {
    fn has_nan(&self) -> bool {
        match self {
            Tree::Double(bits) => f64::from_bits(*bits).is_nan(),
            Tree::Doc(fields) => fields.iter().any(|(_, t)| t.has_nan()),
            Tree::Array(items) => items.iter().any(Tree::has_nan),
            _ => false,
        }
    }
}

fn key() -> impl Strategy<Value = String> {
    proptest::collection::vec(b'a'..=b'e', 1..4).prop_map(|b| String::from_utf8(b).unwrap())
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(Tree::Double),
        any::<f64>().prop_map(|f| Tree::Double(f.to_bits())),
        // NaNs whose payloads look like LuaJIT type tags (GC64: the top 17 bits).
        (0u64..16, any::<u32>())
            .prop_map(|(tag, addr)| Tree::Double((0x1FFF0 | tag) << 47 | u64::from(addr))),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Tree::Str),
        // Subtype 2 (the old binary) is left to the Rust decoder by the FFI one.
        (
            prop_oneof![Just(0u8), Just(1), Just(0x80), 3u8..0x80],
            proptest::collection::vec(any::<u8>(), 0..12)
        )
            .prop_map(|(s, b)| Tree::Binary(s, b)),
        any::<bool>().prop_map(Tree::Bool),
        Just(Tree::Null),
        any::<i32>().prop_map(Tree::Int32),
        any::<i64>().prop_map(Tree::Int64),
    ];
    leaf.prop_recursive(5, 40, 5, |inner| {
        prop_oneof![
            proptest::collection::vec((key(), inner.clone()), 0..5).prop_map(Tree::Doc),
            proptest::collection::vec(inner, 0..5).prop_map(Tree::Array),
        ]
    })
}

fn write_doc(out: &mut Vec<u8>, fields: &[(String, Tree)]) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for (k, v) in fields {
        out.push(match v {
            Tree::Double(_) => 0x01,
            Tree::Str(_) => 0x02,
            Tree::Doc(_) => 0x03,
            Tree::Array(_) => 0x04,
            Tree::Binary(..) => 0x05,
            Tree::Bool(_) => 0x08,
            Tree::Null => 0x0A,
            Tree::Int32(_) => 0x10,
            Tree::Int64(_) => 0x12,
        });
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        match v {
            Tree::Double(bits) => out.extend_from_slice(&bits.to_le_bytes()),
            Tree::Str(s) => {
                out.extend_from_slice(&(s.len() as i32 + 1).to_le_bytes());
                out.extend_from_slice(s);
                out.push(0);
            }
            Tree::Doc(f) => write_doc(out, f),
            Tree::Array(items) => {
                let f: Vec<_> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v.clone()))
                    .collect();
                write_doc(out, &f);
            }
            Tree::Binary(sub, b) => {
                out.extend_from_slice(&(b.len() as i32).to_le_bytes());
                out.push(*sub);
                out.extend_from_slice(b);
            }
            Tree::Bool(b) => out.push(u8::from(*b)),
            Tree::Null => {}
            Tree::Int32(i) => out.extend_from_slice(&i.to_le_bytes()),
            Tree::Int64(i) => out.extend_from_slice(&i.to_le_bytes()),
        }
    }
    out.push(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// `{v = tree}` as a frame.
fn frame(t: &Tree) -> Vec<u8> {
    let mut out = Vec::new();
    write_doc(&mut out, &[("v".into(), t.clone())]);
    out
}

/// The Lua value a script must see for `t` (the mapping of `script::bson`'s documentation).
fn expected(lua: &Lua, t: &Tree) -> Value {
    match t {
        Tree::Double(bits) => Value::Number(f64::from_bits(*bits)),
        Tree::Str(s) | Tree::Binary(_, s) => Value::String(lua.create_string(s).unwrap()),
        Tree::Doc(fields) => {
            let table = lua.create_table().unwrap();
            for (k, v) in fields {
                let v = expected(lua, v);
                // A null leaves the field as it was.
                if !v.is_nil() {
                    table.raw_set(k.as_str(), v).unwrap();
                }
            }
            Value::Table(table)
        }
        Tree::Array(items) => {
            let table = lua.create_table().unwrap();
            for (i, v) in items.iter().enumerate() {
                let v = expected(lua, v);
                if !v.is_nil() {
                    table.raw_set(i + 1, v).unwrap();
                }
            }
            Value::Table(table)
        }
        Tree::Bool(b) => Value::Boolean(*b),
        Tree::Null => Value::Nil,
        Tree::Int32(i) => Value::Number(f64::from(*i)),
        Tree::Int64(i) => Value::Number(*i as f64),
    }
}

/// Frames close to valid ones (one written by [`write_doc`], then cut, garbled or given a
/// matching length), and plain noise.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    let garbled = (
        tree(),
        proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4),
        any::<u16>(),
        any::<bool>(),
    )
        .prop_map(|(t, edits, cut, fix)| {
            let mut f = frame(&t);
            for (at, b) in edits {
                let at = usize::from(at) % f.len();
                f[at] = b;
            }
            f.truncate(f.len() - usize::from(cut) % f.len().min(8));
            if fix && f.len() >= 4 {
                let len = f.len() as i32;
                f[..4].copy_from_slice(&len.to_le_bytes());
            }
            f
        });
    let noise = proptest::collection::vec(any::<u8>(), 5..128).prop_map(|mut f| {
        let len = f.len() as i32;
        f[..4].copy_from_slice(&len.to_le_bytes());
        f
    });
    prop_oneof![3 => garbled, 1 => noise]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    /// Any frame: neither decoder crashes the state, the FFI decoder takes only what the
    /// Rust decoder takes, and both build the same value.
    #[test]
    fn hostile_frames_never_crash_and_the_decoders_agree(f in hostile()) {
        thread_local!(static S: States = states());
        S.with(|s| {
            let rust = s.rust(&f);
            if let Some(v) = s.ffi(&f) {
                let Ok(r) = &rust else {
                    return Err(TestCaseError::fail(format!("the FFI decoder took a frame the Rust decoder refuses: {f:?}")));
                };
                prop_assert!(s.same(&v, r), "the decoders disagree on {:?}", f);
            }
            // The state is still usable.
            let two: i64 = s.lua.load("return 1 + 1").eval().unwrap();
            prop_assert_eq!(two, 2);
            Ok(())
        })?;
    }

    /// Every document, written independently of the engine, decodes to the value it holds,
    /// through both decoders.
    #[test]
    fn written_documents_decode_to_their_value(t in tree()) {
        thread_local!(static S: States = states());
        S.with(|s| {
            let f = frame(&t);
            let want = expected(&s.lua, &t);
            let rust = s.rust(&f).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(s.same(&rust, &want), "C API decoder: {:?}", t);
            let ffi = s.ffi(&f);
            prop_assert!(ffi.is_some(), "the FFI decoder stepped aside for {:?}", t);
            let ffi = ffi.unwrap();
            prop_assert!(s.same(&ffi, &want), "FFI decoder: {:?}", t);
            // Same shape too: both tables are sent on in the same order (an echo's bytes do
            // not depend on the path that decoded the request). Compared for tables only (a
            // top-level scalar of the Rust decoder has not been through Lua yet: an int64 past
            // 2^53 is still exact there), and without NaNs (the FFI decoder makes every NaN
            // Lua's own, see fastpath.lua).
            if matches!(rust, Value::Table(_)) && !t.has_nan() {
                prop_assert_eq!(s.encoded(&ffi), s.encoded(&rust), "iteration order differs: {:?}", t);
            }
            Ok(())
        })?;
    }

    /// What the engine's encoder writes for a Lua value decodes back to that value.
    #[test]
    fn encoded_values_decode_to_themselves(t in tree()) {
        thread_local!(static S: States = states());
        S.with(|s| {
            // Arrays become Lua sequences, binaries strings: any value a script can hold.
            let value = expected(&s.lua, &t);
            let mut out = BytesMut::new();
            bson::encode_wrapped(&s.lua, &value, &mut out, &EncodeOptions::default())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let rust = s.rust(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(s.same(&rust, &value), "C API decoder: {:?}", t);
            let ffi = s.ffi(&out);
            prop_assert!(ffi.is_some(), "the FFI decoder stepped aside for {:?}", t);
            prop_assert!(s.same(&ffi.unwrap(), &value), "FFI decoder: {:?}", t);
            Ok(())
        })?;
    }

    /// A key with a NUL cannot be encoded (it would end the key early).
    #[test]
    fn keys_with_a_nul_are_refused(a in key(), b in key()) {
        thread_local!(static S: States = states());
        S.with(|s| {
            let t = s.lua.create_table().unwrap();
            t.raw_set(format!("{a}\0{b}"), 1).unwrap();
            let mut out = BytesMut::new();
            let r = bson::encode_wrapped(&s.lua, &Value::Table(t), &mut out, &EncodeOptions::default());
            prop_assert!(matches!(r, Err(BsonError::NulInKey { .. })), "{:?}", r);
            prop_assert!(out.is_empty());
            Ok(())
        })?;
    }
}

/// The limits on both paths: MAX_DEPTH levels and MAX_ELEMENTS elements are decoded, one
/// more is refused by the Rust decoder, and the FFI decoder steps aside for it.
#[test]
fn both_decoders_stop_at_the_limits() {
    let s = states();
    let nested = |levels: usize| {
        let mut t = Tree::Int32(1);
        for _ in 0..levels {
            t = Tree::Doc(vec![("x".into(), t)]);
        }
        frame(&t)
    };
    // The frame is level 1, `v` level 2.
    let fits = nested(bson::MAX_DEPTH - 1);
    assert!(s.rust(&fits).is_ok());
    assert!(s.ffi(&fits).is_some());
    let deep = nested(bson::MAX_DEPTH);
    assert!(matches!(s.rust(&deep), Err(BsonError::TooDeep { .. })));
    assert!(s.ffi(&deep).is_none());

    // `v` = an array of n - 1 nulls: n elements in all.
    let many = |n: usize| frame(&Tree::Array(vec![Tree::Null; n - 1]));
    let fits = many(bson::MAX_ELEMENTS);
    assert!(s.rust(&fits).is_ok());
    assert!(s.ffi(&fits).is_some());
    let over = many(bson::MAX_ELEMENTS + 1);
    assert!(matches!(
        s.rust(&over),
        Err(BsonError::TooManyElements { .. })
    ));
    assert!(s.ffi(&over).is_none());
    // Over the limit at the top level, where the values after the first are only checked.
    let mut top = Vec::new();
    let fields: Vec<_> = (0..bson::MAX_ELEMENTS + 1)
        .map(|_| (String::new(), Tree::Null))
        .collect();
    write_doc(&mut top, &fields);
    assert!(matches!(
        s.rust(&top),
        Err(BsonError::TooManyElements { .. })
    ));
    assert!(s.ffi(&top).is_none());
}
