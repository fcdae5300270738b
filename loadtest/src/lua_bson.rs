//! Conversion between Lua values (in a bot script) and our BSON values, following the STAGE
//! mapping of spec §4.2 so a script sees replies exactly as a server script would: tables are
//! documents, positive integer keys travel as `"#n"` and come back as integers, BSON arrays
//! become 1-based sequences, int32/int64/datetime become integers, null becomes nil.

use crate::bson::{Document, Value, MAX_DEPTH};
use mlua::{Lua, Table};

/// A Lua table as a BSON document (for `bot.send(tbl)`).
pub fn table_to_document(t: &Table) -> mlua::Result<Document> {
    table_to_document_at(t, 0)
}

fn table_to_document_at(t: &Table, depth: usize) -> mlua::Result<Document> {
    if depth > MAX_DEPTH {
        return Err(mlua::Error::runtime(
            "bot.send: table nested too deeply (a cycle?)",
        ));
    }
    let mut doc = Document::new();
    for pair in t.pairs::<mlua::Value, mlua::Value>() {
        let (k, v) = pair?;
        let key = match &k {
            mlua::Value::String(s) => String::from_utf8_lossy(&s.as_bytes()).into_owned(),
            mlua::Value::Integer(n) if *n >= 1 => format!("#{n}"),
            mlua::Value::Integer(n) => n.to_string(),
            mlua::Value::Number(n) => n.to_string(),
            other => {
                return Err(mlua::Error::runtime(format!(
                    "bot.send: a {} cannot be a key in a message",
                    other.type_name()
                )))
            }
        };
        if let Some(value) = to_bson_at(&v, depth + 1)? {
            doc.fields.push((key, value));
        }
    }
    Ok(doc)
}

/// A Lua value as BSON; `None` for nil (an absent field).
pub fn to_bson(v: &mlua::Value) -> mlua::Result<Option<Value>> {
    to_bson_at(v, 0)
}

fn to_bson_at(v: &mlua::Value, depth: usize) -> mlua::Result<Option<Value>> {
    Ok(Some(match v {
        mlua::Value::Nil => return Ok(None),
        mlua::Value::Boolean(b) => Value::Bool(*b),
        // Spec: a Lua integer travels as int64, any other number as a double.
        mlua::Value::Integer(i) => Value::Int64(*i),
        mlua::Value::Number(n) => Value::Double(*n),
        mlua::Value::String(s) => Value::String(s.as_bytes().to_vec()),
        mlua::Value::Table(t) => Value::Document(table_to_document_at(t, depth)?),
        other => {
            return Err(mlua::Error::runtime(format!(
                "bot.send: a {} cannot be sent",
                other.type_name()
            )))
        }
    }))
}

/// `"#n"` (n a positive integer written without leading zeros) → n.
fn hash_index(key: &str) -> Option<i64> {
    let digits = key.strip_prefix('#')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A BSON value as a Lua value (for `on_message`).
pub fn to_lua(lua: &Lua, v: &Value) -> mlua::Result<mlua::Value> {
    Ok(match v {
        Value::Double(d) => mlua::Value::Number(*d),
        Value::String(s) => mlua::Value::String(lua.create_string(s)?),
        Value::Binary { data, .. } => mlua::Value::String(lua.create_string(data)?),
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Null => mlua::Value::Nil,
        Value::Int32(i) => mlua::Value::Integer((*i).into()),
        Value::Int64(i) | Value::DateTime(i) => mlua::Value::Integer(*i),
        Value::Document(d) => {
            let t = lua.create_table_with_capacity(0, d.fields.len())?;
            for (k, v) in &d.fields {
                let v = to_lua(lua, v)?;
                match hash_index(k) {
                    Some(n) => t.raw_set(n, v)?,
                    None => t.raw_set(k.as_str(), v)?,
                }
            }
            mlua::Value::Table(t)
        }
        Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, v) in items.iter().enumerate() {
                t.raw_set(i as i64 + 1, to_lua(lua, v)?)?;
            }
            mlua::Value::Table(t)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bson;

    fn eval(lua: &Lua, code: &str) -> mlua::Value {
        lua.load(code).eval().unwrap()
    }

    #[test]
    fn lua_table_round_trips_through_bson() {
        let lua = Lua::new();
        let t = eval(
            &lua,
            r#"return { message = "hi", n = 42, f = 1.5, ok = true, list = {10, 20, 30},
                        nested = { deep = { x = "y" } }, bytes = "a\0b", [7] = "seven" }"#,
        );
        let mlua::Value::Table(t) = t else { panic!() };
        let doc = table_to_document(&t).unwrap();
        // Integer keys travel as "#n", like the server's own encoder.
        let list = doc.get("list").unwrap().as_document().unwrap();
        assert_eq!(list.get("#2"), Some(&Value::Int64(20)));
        assert_eq!(doc.get("#7"), Some(&Value::str("seven")));
        assert_eq!(doc.get("n"), Some(&Value::Int64(42)));
        assert_eq!(doc.get("f"), Some(&Value::Double(1.5)));

        let bytes = bson::to_vec(&Document::new().with("v", Value::Document(doc))).unwrap();
        let back = bson::decode_document(&bytes).unwrap();
        let v = to_lua(&lua, back.first().unwrap()).unwrap();
        lua.globals().set("msg", v).unwrap();
        let ok: bool = lua
            .load(
                r#"return msg.message == "hi" and msg.n == 42 and msg.f == 1.5 and msg.ok == true
                   and #msg.list == 3 and msg.list[3] == 30 and msg.nested.deep.x == "y"
                   and msg.bytes == "a\0b" and msg[7] == "seven""#,
            )
            .eval()
            .unwrap();
        assert!(ok);
    }

    #[test]
    fn arrays_and_nulls_from_the_server() {
        let lua = Lua::new();
        let v = Value::Document(
            Document::new()
                .with("a", Value::Array(vec![Value::Int32(5), Value::str("x")]))
                .with("gone", Value::Null)
                .with("#01", Value::Int32(1))
                .with("#0", Value::Int32(2))
                .with(
                    "bin",
                    Value::Binary {
                        subtype: 0,
                        data: vec![1, 2],
                    },
                ),
        );
        lua.globals().set("m", to_lua(&lua, &v).unwrap()).unwrap();
        let ok: bool = lua
            .load(
                r##"return m.a[1] == 5 and m.a[2] == "x" and m.gone == nil and m["#01"] == 1
                   and m["#0"] == 2 and m.bin == "\1\2""##,
            )
            .eval()
            .unwrap();
        assert!(ok);
    }

    #[test]
    fn unsendable_values_are_lua_errors() {
        let lua = Lua::new();
        let mlua::Value::Table(t) = eval(&lua, "return { f = function() end }") else {
            panic!()
        };
        assert!(table_to_document(&t)
            .unwrap_err()
            .to_string()
            .contains("function"));
        let mlua::Value::Table(t) = eval(&lua, "local t = {}; t.self = t; return t") else {
            panic!()
        };
        assert!(table_to_document(&t)
            .unwrap_err()
            .to_string()
            .contains("cycle"));
        assert_eq!(to_bson(&mlua::Value::Nil).unwrap(), None);
    }
}
