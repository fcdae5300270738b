//! Property tests of the generated Lua, driven by the schema itself: for every message of
//! `tests/golden/all_types.packets`, random valid messages (built from the field types and
//! bounds) are accepted, and a random single-field corruption (a wrong type, a value one past
//! a bound, a too-long string or array, a removed required field, ...) at a random place,
//! however deeply nested, is refused with exactly that field's path. The generated Rust
//! (`tests/golden/all_types_packets.rs`) gets the same messages as BSON frames, written as the
//! engine writes a Lua table (integral numbers as int64, sequences as "#n" documents), and
//! must agree: valid ones decode (and re-encode to an equal message), corrupted ones are
//! refused at the same path. A last property compares the generated UTF-8 check with
//! Rust's `std::str::from_utf8`.

#[path = "golden/all_types_packets.rs"]
mod all_types;

use mlua::{Lua, Table, Value};
use packet_defs::schema::{FloatKind, Presence, Schema, StructDef, Type};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};

const SCHEMA: &str = include_str!("golden/all_types.packets");
const MODULE: &str = include_str!("golden/all_types_packets.lua");

/// A Lua value as the engine's decoder would build it from a packet.
#[derive(Clone, Debug)]
enum LV {
    Bool(bool),
    Num(f64),
    Str(Vec<u8>),
    Arr(Vec<LV>),
    Obj(Vec<(String, LV)>),
}

fn to_lua(lua: &Lua, v: &LV) -> Value {
    match v {
        LV::Bool(b) => Value::Boolean(*b),
        LV::Num(n) => Value::Number(*n),
        LV::Str(s) => Value::String(lua.create_string(s).unwrap()),
        LV::Arr(a) => {
            let t = lua.create_table().unwrap();
            for (i, e) in a.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, e)).unwrap();
            }
            Value::Table(t)
        }
        LV::Obj(o) => {
            let t = lua.create_table().unwrap();
            for (k, e) in o {
                t.raw_set(k.as_str(), to_lua(lua, e)).unwrap();
            }
            Value::Table(t)
        }
    }
}

/// `{"v": {"message": name, ...v}}` as the engine would send the Lua table `v`.
fn frame(name: &str, v: &LV) -> Vec<u8> {
    fn key(out: &mut Vec<u8>, ty: u8, k: &str) {
        out.push(ty);
        out.extend_from_slice(k.as_bytes());
        out.push(0);
    }
    fn value(out: &mut Vec<u8>, k: &str, v: &LV) {
        match v {
            LV::Bool(b) => {
                key(out, 0x08, k);
                out.push(u8::from(*b));
            }
            LV::Num(n) if n.fract() == 0.0 && *n >= -(2f64.powi(63)) && *n < 2f64.powi(63) => {
                key(out, 0x12, k);
                out.extend_from_slice(&(*n as i64).to_le_bytes());
            }
            LV::Num(n) => {
                key(out, 0x01, k);
                out.extend_from_slice(&n.to_le_bytes());
            }
            LV::Str(s) => {
                key(out, 0x02, k);
                out.extend_from_slice(&(s.len() as i32 + 1).to_le_bytes());
                out.extend_from_slice(s);
                out.push(0);
            }
            LV::Arr(a) => {
                key(out, 0x03, k);
                let fields: Vec<(String, LV)> = a
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (format!("#{}", i + 1), e.clone()))
                    .collect();
                doc(out, &fields);
            }
            LV::Obj(o) => {
                key(out, 0x03, k);
                doc(out, o);
            }
        }
    }
    fn doc(out: &mut Vec<u8>, fields: &[(String, LV)]) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        for (k, v) in fields {
            value(out, k, v);
        }
        out.push(0);
        let len = (out.len() - start) as i32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
    let LV::Obj(fields) = v else {
        panic!("a message is a table")
    };
    let mut body = vec![("message".to_string(), LV::Str(name.as_bytes().to_vec()))];
    body.extend(fields.iter().cloned());
    let mut out = Vec::new();
    doc(&mut out, &[("v".to_string(), LV::Obj(body))]);
    out
}

/// Exactly representable integers only, so a bound is never crossed by rounding.
const SAFE: i64 = 1 << 53;

fn valid(schema: &Schema, ty: &Type) -> BoxedStrategy<LV> {
    match ty {
        Type::Bool => any::<bool>().prop_map(LV::Bool).boxed(),
        Type::Int { min, max, .. } => {
            let (lo, hi) = ((*min).max(-SAFE), (*max).min(SAFE));
            prop_oneof![Just(lo), Just(hi), lo..=hi]
                .prop_map(|n| LV::Num(n as f64))
                .boxed()
        }
        Type::Float { min, max, .. } => {
            let (lo, hi) = (min.max(-1e300), max.min(1e300));
            prop_oneof![Just(*min), Just(*max), lo..=hi]
                .prop_map(LV::Num)
                .boxed()
        }
        Type::Str { min, max } => {
            let (min, max) = (*min as usize, *max as usize);
            proptest::collection::vec(any::<char>(), 0..=max)
                .prop_map(move |cs| {
                    let mut s = String::new();
                    for c in cs {
                        if s.len() + c.len_utf8() <= max {
                            s.push(c);
                        }
                    }
                    while s.len() < min {
                        s.push('a');
                    }
                    LV::Str(s.into_bytes())
                })
                .boxed()
        }
        Type::Bytes { min, max } => {
            proptest::collection::vec(any::<u8>(), *min as usize..=*max as usize)
                .prop_map(LV::Str)
                .boxed()
        }
        Type::Enum(e) => {
            let values = schema.enum_def(e).unwrap().values.clone();
            proptest::sample::select(values)
                .prop_map(|v| LV::Str(v.into_bytes()))
                .boxed()
        }
        Type::Array { elem, min, max } => {
            proptest::collection::vec(valid(schema, elem), *min as usize..=*max as usize)
                .prop_map(LV::Arr)
                .boxed()
        }
        Type::Struct(s) => fields(schema, schema.struct_def(s).unwrap()),
    }
}

/// A table with every required field and a random subset of the optional ones.
fn fields(schema: &Schema, s: &StructDef) -> BoxedStrategy<LV> {
    let parts: Vec<BoxedStrategy<Option<(String, LV)>>> = s
        .fields
        .iter()
        .map(|f| {
            let name = f.name.clone();
            let v = valid(schema, &f.ty).prop_map(move |v| (name.clone(), v));
            if f.presence == Presence::Required {
                v.prop_map(Some).boxed()
            } else {
                proptest::option::of(v).boxed()
            }
        })
        .collect();
    parts
        .prop_map(|p| LV::Obj(p.into_iter().flatten().collect()))
        .boxed()
}

/// One step from a table to a value inside it.
#[derive(Clone, Debug)]
enum Step {
    Field(String),
    Index(usize),
}

/// A place in a valid message: how to reach it, its path as errors spell it, its type, and
/// whether removing it is itself an error (a required field).
struct Site {
    steps: Vec<Step>,
    path: String,
    ty: Type,
    required: bool,
}

fn sites(schema: &Schema, s: &StructDef, v: &LV, steps: &[Step], path: &str, out: &mut Vec<Site>) {
    let LV::Obj(fs) = v else { return };
    for f in &s.fields {
        let Some((_, fv)) = fs.iter().find(|(k, _)| *k == f.name) else {
            continue;
        };
        let p = if path.is_empty() {
            f.name.clone()
        } else {
            format!("{path}.{}", f.name)
        };
        let mut st = steps.to_vec();
        st.push(Step::Field(f.name.clone()));
        below(
            schema,
            &f.ty,
            fv,
            &st,
            &p,
            f.presence == Presence::Required,
            out,
        );
    }
}

fn below(
    schema: &Schema,
    ty: &Type,
    v: &LV,
    steps: &[Step],
    path: &str,
    required: bool,
    out: &mut Vec<Site>,
) {
    out.push(Site {
        steps: steps.to_vec(),
        path: path.to_string(),
        ty: ty.clone(),
        required,
    });
    match (ty, v) {
        (Type::Struct(n), _) => sites(schema, schema.struct_def(n).unwrap(), v, steps, path, out),
        (Type::Array { elem, .. }, LV::Arr(items)) => {
            for (i, e) in items.iter().enumerate() {
                let mut st = steps.to_vec();
                st.push(Step::Index(i));
                below(
                    schema,
                    elem,
                    e,
                    &st,
                    &format!("{path}[{}]", i + 1),
                    false,
                    out,
                );
            }
        }
        _ => {}
    }
}

/// Values that break `ty` on their own (`None`: remove the field).
fn invalid(ty: &Type, required: bool) -> Vec<Option<LV>> {
    let mut c = vec![];
    if required {
        c.push(None);
    }
    match ty {
        Type::Bool => c.extend([Some(LV::Num(1.0)), Some(LV::Str(b"true".to_vec()))]),
        Type::Int { min, max, .. } => {
            c.push(Some(LV::Str(b"1".to_vec())));
            c.push(Some(LV::Num((*min).max(-1000) as f64 + 0.5))); // never integral
            c.push(Some(LV::Bool(true)));
            if *min > -SAFE {
                c.push(Some(LV::Num((min - 1) as f64)));
            }
            if *max < SAFE {
                c.push(Some(LV::Num((max + 1) as f64)));
            }
        }
        Type::Float { kind, min, max } => {
            c.extend([
                Some(LV::Num(f64::NAN)),
                Some(LV::Num(f64::INFINITY)),
                Some(LV::Str(b"x".to_vec())),
            ]);
            let (tmin, tmax) = kind.range();
            if *kind == FloatKind::F32 && *max == tmax {
                c.push(Some(LV::Num(1e39)));
            } else if *max < tmax {
                c.push(Some(LV::Num(max + 1.0)));
            }
            if *kind == FloatKind::F32 && *min == tmin {
                c.push(Some(LV::Num(-1e39)));
            } else if *min > tmin {
                c.push(Some(LV::Num(min - 1.0)));
            }
        }
        Type::Str { min, max } | Type::Bytes { min, max } => {
            c.push(Some(LV::Num(1.0)));
            c.push(Some(LV::Str(vec![b'a'; *max as usize + 1])));
            if *min > 0 {
                c.push(Some(LV::Str(vec![])));
            }
            if matches!(ty, Type::Str { .. }) && *max >= 2 {
                c.push(Some(LV::Str(vec![b'a', 0xff])));
            }
        }
        Type::Enum(_) => c.extend([Some(LV::Str(b"no_such_value".to_vec())), Some(LV::Num(1.0))]),
        Type::Array { min, max, .. } => {
            c.push(Some(LV::Str(b"x".to_vec())));
            c.push(Some(LV::Obj(vec![("x".into(), LV::Num(1.0))])));
            c.push(Some(LV::Arr(vec![LV::Num(0.0); *max as usize + 1])));
            if *min > 0 {
                c.push(Some(LV::Arr(vec![])));
            }
        }
        Type::Struct(_) => c.extend([Some(LV::Num(1.0)), Some(LV::Bool(false))]),
    }
    c
}

fn replace(v: &mut LV, steps: &[Step], new: Option<LV>) {
    let (first, rest) = steps.split_first().unwrap();
    match (v, first) {
        (LV::Obj(fs), Step::Field(name)) => {
            let i = fs.iter().position(|(k, _)| k == name).unwrap();
            if rest.is_empty() {
                match new {
                    Some(n) => fs[i].1 = n,
                    None => {
                        fs.remove(i);
                    }
                }
            } else {
                replace(&mut fs[i].1, rest, new);
            }
        }
        (LV::Arr(items), Step::Index(i)) => {
            if rest.is_empty() {
                items[*i] = new.expect("array elements are never removed");
            } else {
                replace(&mut items[*i], rest, new);
            }
        }
        _ => unreachable!("steps follow the value"),
    }
}

fn setup() -> (Lua, Schema) {
    let lua = Lua::new();
    let module: Table = lua.load(MODULE).eval().unwrap();
    lua.globals().set("P", module).unwrap();
    (lua, packet_defs::parse(SCHEMA).unwrap())
}

/// Every message of the schema with a random valid value, as (name, value).
fn messages(schema: &Schema) -> BoxedStrategy<(String, LV)> {
    let all: Vec<BoxedStrategy<(String, LV)>> = schema
        .structs()
        .filter(|s| s.is_message())
        .map(|s| {
            let name = s.name.clone();
            fields(schema, s)
                .prop_map(move |v| (name.clone(), v))
                .boxed()
        })
        .collect();
    proptest::strategy::Union::new(all).boxed()
}

/// Decodes `v` as message `name`: Ok(()) or Err((field, reason)).
fn decode(lua: &Lua, name: &str, v: &LV) -> Result<(), (String, String)> {
    let m: Table = lua.globals().get::<Table>("P").unwrap().get(name).unwrap();
    let f: mlua::Function = m.get("decode").unwrap();
    let (t, err): (Value, Option<Table>) = f.call(to_lua(lua, v)).unwrap();
    match err {
        None => {
            assert!(matches!(t, Value::Table(_)));
            Ok(())
        }
        Some(e) => Err((e.get("field").unwrap(), e.get("reason").unwrap())),
    }
}

#[test]
fn random_valid_messages_are_accepted_with_defaults_filled() {
    let (lua, schema) = setup();
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&messages(&schema), |(name, v)| {
            let table = to_lua(&lua, &v);
            let m: Table = lua
                .globals()
                .get::<Table>("P")
                .unwrap()
                .get(name.as_str())
                .unwrap();
            let (t, err): (Value, Value) = m
                .get::<mlua::Function>("decode")
                .unwrap()
                .call(table)
                .unwrap();
            prop_assert!(matches!(err, Value::Nil), "{name} {v:?} refused: {err:?}");
            let Value::Table(t) = t else { unreachable!() };
            let bytes = frame(&name, &v);
            let m = all_types::Message::decode(&bytes);
            prop_assert!(m.is_ok(), "rust refused {name} {v:?}: {m:?}");
            let m = m.unwrap();
            prop_assert_eq!(m.name(), name.as_str());
            prop_assert_eq!(all_types::Message::decode(&m.encode()), Ok(m));
            for f in &schema.struct_def(&name).unwrap().fields {
                if matches!(f.presence, Presence::Default(_)) {
                    prop_assert!(
                        !matches!(t.get::<Value>(f.name.as_str()).unwrap(), Value::Nil),
                        "{name}.{} not filled",
                        f.name
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_single_corrupted_field_is_refused_with_its_path() {
    let (lua, schema) = setup();
    let mut runner = TestRunner::new(Config {
        cases: 1024,
        failure_persistence: None,
        ..Config::default()
    });
    let cases = (messages(&schema), any::<Index>(), any::<Index>());
    runner
        .run(&cases, |((name, v), site, bad)| {
            let s = schema.struct_def(&name).unwrap();
            let mut all = Vec::new();
            sites(&schema, s, &v, &[], "", &mut all);
            if all.is_empty() {
                return Ok(());
            }
            let site = &all[site.index(all.len())];
            let candidates = invalid(&site.ty, site.required);
            let new = candidates[bad.index(candidates.len())].clone();
            let mut broken = v.clone();
            replace(&mut broken, &site.steps, new.clone());
            match decode(&lua, &name, &broken) {
                Ok(()) => prop_assert!(false, "{name}: {} = {new:?} was accepted", site.path),
                Err((field, reason)) => {
                    prop_assert_eq!(
                        &field,
                        &site.path,
                        "{}: {:?} refused as {}",
                        name,
                        new,
                        reason
                    )
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_utf8_check_agrees_with_rust() {
    let (lua, _) = setup();
    let mut runner = TestRunner::new(Config {
        cases: 2048,
        failure_persistence: None,
        ..Config::default()
    });
    let bytes = proptest::collection::vec(
        prop_oneof![any::<u8>(), 0x80u8..=0xbf, 0xc0u8..=0xf7, Just(b'a')],
        1..=32,
    );
    runner
        .run(&bytes, |b| {
            let v = LV::Obj(vec![("name".into(), LV::Str(b.clone()))]);
            let got = decode(&lua, "login", &v);
            match std::str::from_utf8(&b) {
                Ok(_) => prop_assert!(got.is_ok(), "{b:?}: {got:?}"),
                Err(_) => {
                    prop_assert_eq!(got, Err(("name".to_string(), "invalid UTF-8".to_string())))
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn rust_fills_defaults_of_absent_fields() {
    let v = LV::Obj(vec![("name".into(), LV::Str(b"bob".to_vec()))]);
    let all_types::Message::Login(l) = all_types::Message::decode(&frame("login", &v)).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (l.level, l.token.as_slice(), l.guest, l.tags),
        (1, &[0u8, 255][..], false, None)
    );
    let v = LV::Obj(vec![("id".into(), LV::Num(-3.0))]);
    let all_types::Message::LoginOk(ok) =
        all_types::Message::decode(&frame("login_ok", &v)).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (ok.id, ok.color, ok.motd.as_str()),
        (-3, all_types::Color::Green, "welcome")
    );
}
