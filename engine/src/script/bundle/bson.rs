//! `bundle.bson(x, ...)`: a table's fields as one BSON document and back, through the
//! engine's codec (`script::bson`), so the bytes are exactly what the engine sends and
//! receives elsewhere (integer keys as `"#n"`, `name@type` suffixes, functions as bytecode).
//!
//! * table -> the document's bytes as a Lua string. Functions inside are allowed and become
//!   bytecode (the engine-internal form). A `bundle.proxy` object is encoded as the table it
//!   observes (top level only; the codec itself knows nothing about proxies).
//! * string -> it must start with its own length (little-endian int32) or the error is
//!   `bundle.bson: This is not BSON data.`; the whole document is then validated and ALL its
//!   top-level fields are returned in a table. Functions are NOT loaded: a string may have
//!   come from a client, and LuaJIT's bytecode loader is not safe against crafted input, so
//!   bytecode fields come back as plain strings.
//! * function -> called with the remaining arguments; its first result is converted as above
//!   (a function returning a function is an error).

use bytes::BytesMut;
use mlua::{Lua, MultiValue, Value};

use super::{call_user, fail, proxy, type_name, Res};
use crate::script::bson::{self as codec, DecodeOptions, EncodeOptions};

pub(super) fn bson(lua: &Lua, args: MultiValue) -> Res<MultiValue> {
    let mut args = args;
    let x = args.pop_front().unwrap_or(Value::Nil);
    let x = match x {
        Value::Function(f) => {
            let first = call_user(lua, &f, args)?
                .into_iter()
                .next()
                .unwrap_or(Value::Nil);
            if let Value::Function(_) = first {
                return fail(
                    "bundle.bson: the function returned a function (expected a table or BSON data)",
                );
            }
            first
        }
        other => other,
    };
    let result = match x {
        Value::Table(t) => {
            let t = proxy::target_of(&t).unwrap_or(t);
            let mut out = BytesMut::new();
            let opts = EncodeOptions {
                allow_functions: true,
            };
            if let Err(e) = codec::encode_document(lua, &t, &mut out, &opts) {
                return fail(format!("bundle.bson: {e}"));
            }
            Value::String(lua.create_string(&out)?)
        }
        Value::String(s) => {
            let bytes = s.as_bytes();
            let declared = bytes.first_chunk::<4>().map(|h| i32::from_le_bytes(*h));
            if declared.and_then(|d| usize::try_from(d).ok()) != Some(bytes.len()) {
                return fail("bundle.bson: This is not BSON data.");
            }
            let opts = DecodeOptions {
                load_functions: false,
            };
            match codec::decode_document(lua, &bytes, &opts) {
                Ok(t) => Value::Table(t),
                Err(e) => return fail(format!("bundle.bson: {e}")),
            }
        }
        other => {
            return fail(format!(
                "bundle.bson: expected a table, BSON data (a string) or a function, got {}",
                type_name(&other)
            ))
        }
    };
    Ok(MultiValue::from_vec(vec![result]))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;

    #[test]
    fn bundle_bson_round_trip() {
        let lua = lua();
        let ok: bool = lua
            .load(
                r#"
                local b = bundle.bson({ name = "HELLO", n = 42, f = 1.5, list = {1, 2, 3},
                                        nested = { yes = true }, [5] = "five" })
                assert(type(b) == "string")
                local len = b:byte(1) + b:byte(2) * 256 + b:byte(3) * 65536 + b:byte(4) * 16777216
                assert(len == #b)
                local t = bundle.bson(b)
                return t.name == "HELLO" and t.n == 42 and t.f == 1.5 and t.list[3] == 3
                   and t.nested.yes == true and t[5] == "five"
            "#,
            )
            .eval()
            .unwrap();
        assert!(ok);
        // Functions are encoded (internal form) but never loaded back from a string.
        let kind: String = lua
            .load(r#"return type(bundle.bson(bundle.bson({ f = function() return 1 end })).f)"#)
            .eval()
            .unwrap();
        assert_eq!(kind, "string");
        // The function form passes its extra arguments on.
        let name: String = lua
            .load(
                r#"return bundle.bson(bundle.bson(function(n) return { name = n } end, "x")).name"#,
            )
            .eval()
            .unwrap();
        assert_eq!(name, "x");
    }

    #[test]
    fn bundle_bson_rejects_non_bson() {
        let lua = lua();
        for code in [
            "bundle.bson('hello')",
            "bundle.bson('')",
            "bundle.bson('\\5\\0\\0')",
            "bundle.bson('\\6\\0\\0\\0\\0')",
        ] {
            assert_eq!(
                error_of(&lua, code),
                "bundle.bson: This is not BSON data.",
                "{code}"
            );
        }
        // Right length, broken inside: the codec's message, still under our name.
        let e = error_of(&lua, "bundle.bson('\\6\\0\\0\\0\\0\\1')");
        assert!(e.starts_with("bundle.bson: bson"), "{e}");
        let e = error_of(&lua, "bundle.bson({[true] = 1})");
        assert!(
            e.starts_with("bundle.bson: table key of type boolean"),
            "{e}"
        );
        let e = error_of(&lua, "bundle.bson(nil)");
        assert!(e.starts_with("bundle.bson: expected"), "{e}");
    }
}
