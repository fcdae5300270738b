//! The `bundle` library (spec/stage.md §5) as Rust natives: `bundle.json`, `bundle.bson`,
//! `bundle.random`, `bundle.proxy` and `bundle.viewof`. [`register`] sets them on a table;
//! the host copies them into `stage.*` as the original preload does. Each family lives in its
//! own file, whose module doc lists the decisions taken where the spec is silent.
//!
//! Errors. Every failure a script can cause raises a Lua error whose value is a plain string
//! starting with the function name (`"bundle.json: parse error at byte 3 ..."`), raised at
//! level 0 so no position is prepended. mlua would otherwise raise its own error userdata
//! (whose `tostring` reads `"runtime error: ..."` plus a traceback), which a script cannot
//! `:find()` on. So natives never return `Err` for script mistakes: they return a private
//! marker followed by the error value, and a small Lua shim (the function the script
//! actually holds) turns that into `error(value, 0)`. Errors raised by script callbacks that
//! a native calls (proxy handlers, the `fn` arguments) are caught with the real `pcall` and
//! re-raised unchanged, so a handler's `error({code = 1})` reaches the script as that table,
//! exactly as if the handler had been called from Lua.
//!
//! Nothing here panics on bad input: every conversion is checked, every index bounds-checked.

mod bson;
mod json;
mod proxy;
mod random;
mod viewof;
pub(crate) mod viewof_sync;

use std::ffi::c_void;

use mlua::{Function, LightUserData, Lua, MultiValue, Table, Value};

/// Registry slot of the shim factory (`wrap(native) -> function`).
const WRAP_KEY: &str = "stage.bundle.wrap";
/// Registry slot of the real `pcall`, captured before user code can replace the global.
const PCALL_KEY: &str = "stage.bundle.pcall";

/// Sets bundle.json, bundle.bson, bundle.random, bundle.proxy, bundle.viewof on `target`.
pub fn register(lua: &Lua, target: &Table) -> mlua::Result<()> {
    install_shim(lua)?;
    target.set("json", native(lua, "bundle.json", json::json)?)?;
    target.set("bson", native(lua, "bundle.bson", bson::bson)?)?;
    target.set("random", native(lua, "bundle.random", random::random)?)?;
    target.set("proxy", proxy::create(lua)?)?;
    target.set("viewof", native(lua, "bundle.viewof", viewof::viewof)?)?;
    Ok(())
}

/// Why a native failed.
pub(crate) enum Fail {
    /// Our own message, already prefixed with the function name.
    Msg(String),
    /// An error value raised by a script callback: re-raised as is.
    Raise(Value),
    /// An mlua failure (memory, stack): reported as text under the function's name.
    Lua(mlua::Error),
}

impl From<mlua::Error> for Fail {
    fn from(e: mlua::Error) -> Self {
        Fail::Lua(e)
    }
}

pub(crate) type Res<T> = Result<T, Fail>;

/// Shorthand for a script-facing error message.
pub(crate) fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(Fail::Msg(msg.into()))
}

/// The marker a native returns first when it failed; its address is unique to this process
/// and a script has no way to produce the same light userdata.
static FAIL_MARK: u8 = 0;

fn mark() -> Value {
    Value::LightUserData(LightUserData(&FAIL_MARK as *const u8 as *mut c_void))
}

/// Loads the shim factory and captures `pcall` (once per Lua state).
fn install_shim(lua: &Lua) -> mlua::Result<()> {
    if let Ok(Value::Function(_)) = lua.named_registry_value::<Value>(WRAP_KEY) {
        return Ok(());
    }
    // `pass` keeps the number of results intact (a native returning nothing returns nothing);
    // a tail call keeps the shim out of tracebacks.
    let factory: Function = lua
        .load(
            r#"
local mark, error, select = ...
local function pass(...)
  if (...) == mark then error((select(2, ...)), 0) end
  return ...
end
return function(native)
  return function(...) return pass(native(...)) end
end
"#,
        )
        .set_name("=bundle")
        .call((
            mark(),
            lua.globals().get::<Function>("error")?,
            lua.globals().get::<Function>("select")?,
        ))?;
    lua.set_named_registry_value(WRAP_KEY, factory)?;
    lua.set_named_registry_value(PCALL_KEY, lua.globals().get::<Function>("pcall")?)?;
    Ok(())
}

/// Creates the script-facing function for `f`: a Rust callback behind the error shim.
pub(crate) fn native<F>(lua: &Lua, name: &'static str, f: F) -> mlua::Result<Function>
where
    F: Fn(&Lua, MultiValue) -> Res<MultiValue> + 'static,
{
    let raw = lua.create_function(move |lua, args: MultiValue| match f(lua, args) {
        Ok(results) => Ok(results),
        Err(failure) => {
            let value = match failure {
                Fail::Msg(msg) => Value::String(lua.create_string(msg)?),
                Fail::Raise(value) => value,
                Fail::Lua(e) => Value::String(lua.create_string(format!("{name}: {e}"))?),
            };
            Ok(MultiValue::from_vec(vec![mark(), value]))
        }
    })?;
    let wrap: Function = lua.named_registry_value(WRAP_KEY)?;
    wrap.call(raw)
}

/// Calls a script function under the real `pcall`, so its error value survives untouched
/// (mlua's own call path would stringify it and append a traceback).
pub(crate) fn call_user(lua: &Lua, f: &Function, args: MultiValue) -> Res<MultiValue> {
    let pcall: Function = lua.named_registry_value(PCALL_KEY)?;
    let mut out: MultiValue = pcall.call((f.clone(), args))?;
    match out.pop_front() {
        Some(Value::Boolean(true)) => Ok(out),
        _ => Err(Fail::Raise(out.pop_front().unwrap_or(Value::Nil))),
    }
}

/// Lua's name of a value's type, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "boolean",
        Value::LightUserData(_) | Value::UserData(_) => "userdata",
        Value::Integer(_) | Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Table(_) => "table",
        Value::Function(_) => "function",
        Value::Thread(_) => "thread",
        _ => "value",
    }
}

/// A key as a script would write it in an index expression: `"name"`, `3`, `true`.
pub(crate) fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.to_string_lossy()),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => lua_number_text(*n),
        Value::Boolean(b) => b.to_string(),
        other => type_name(other).to_string(),
    }
}

/// Lua's `tostring` of a number (`%.14g`), so number keys turned into strings match what the
/// script would see.
pub(crate) fn lua_number_text(n: f64) -> String {
    let mut buf = [0u8; 64];
    // SAFETY: the buffer is 64 bytes, snprintf writes at most that many including the NUL,
    // and the format consumes exactly one double.
    let len = unsafe { libc::snprintf(buf.as_mut_ptr().cast(), buf.len(), c"%.14g".as_ptr(), n) };
    let len = usize::try_from(len).unwrap_or(0).min(buf.len() - 1);
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// An integral Lua number as i64, if it is one.
pub(crate) fn as_integer(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::Number(n) if n.fract() == 0.0 && *n >= -9.2e18 && *n <= 9.2e18 => Some(*n as i64),
        _ => None,
    }
}

/// A Lua number as f64.
pub(crate) fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Number(n) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use mlua::{Lua, Table};

    /// A fresh state with `bundle` registered as a global.
    pub fn lua() -> Lua {
        let lua = Lua::new();
        let bundle: Table = lua.create_table().unwrap();
        super::register(&lua, &bundle).unwrap();
        lua.globals().set("bundle", bundle).unwrap();
        lua
    }

    /// Runs `code` expecting it to raise; returns the error value as a string (the error
    /// must be a plain string, which is what the shim guarantees).
    pub fn error_of(lua: &Lua, code: &str) -> String {
        let f = format!("local ok, e = pcall(function() {code} end) assert(not ok, 'no error') assert(type(e) == 'string', 'error is a ' .. type(e)) return e");
        lua.load(&f).eval::<String>().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;

    #[test]
    fn bundle_errors_are_plain_strings_named_after_the_function() {
        let lua = lua();
        let e = error_of(&lua, "bundle.bson(42)");
        assert!(e.starts_with("bundle.bson: "), "{e}");
        // A callback's error value passes through untouched.
        let ok: bool = lua
            .load(
                r#"
                local ok, e = pcall(bundle.json, function() error({code = 7}) end)
                return not ok and type(e) == "table" and e.code == 7
            "#,
            )
            .eval()
            .unwrap();
        assert!(ok);
    }

    #[test]
    fn bundle_number_text_matches_lua() {
        assert_eq!(super::lua_number_text(1.0), "1");
        assert_eq!(super::lua_number_text(0.1), "0.1");
        assert_eq!(super::lua_number_text(1e100), "1e+100");
        assert_eq!(super::lua_number_text(f64::INFINITY), "inf");
    }
}
