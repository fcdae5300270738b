//! The environment lotus handlers run in (spec/lotus.md §9.2). A handler arrives as Lua source
//! from a node and is compiled once per core with `load` in text mode (bytecode is refused),
//! its globals set to a per-project environment that holds only a whitelist: the pure parts
//! of the base library, copies of `string`, `table` and `math` (without `randomseed`) and
//! `os.time`/`os.clock`. No `require`, `io`, `os.execute`, `load`, `debug`, `ffi`, `jit`,
//! `setfenv`/`getfenv` or metatables: a handler can compute on its state and call `ctx`,
//! nothing else.
//!
//! The environment is read-only: assigning a global raises, so one handler cannot leave a
//! value behind that another state of the project would see (use locals, or the state).
//! Registering a schema compiles every handler and callback first; one that does not compile,
//! or does not evaluate to a function, refuses the whole schema with an error naming it.

use mlua::{ChunkMode, Function, Lua, Table, Value};

/// Base-library functions handlers may call.
const BASE: &[&str] = &[
    "assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber", "tostring",
    "type", "unpack",
];

/// A handler or callback that could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// `handlers.NAME` or `callbacks.NAME`.
    pub handler: String,
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.handler, self.message)
    }
}

/// One project's environment on one core.
pub struct Sandbox {
    env: Table,
}

impl Sandbox {
    /// Builds the environment from the (pristine) libraries of `lua`. Call before user
    /// scripts run, or from a state whose `string`/`table`/`math` nobody replaced.
    pub fn new(lua: &Lua) -> mlua::Result<Sandbox> {
        let globals = lua.globals();
        let allowed = lua.create_table()?;
        for name in BASE {
            allowed.raw_set(*name, globals.raw_get::<Value>(*name)?)?;
        }
        for lib in ["string", "table", "math"] {
            let copy = lua.create_table()?;
            for pair in globals.raw_get::<Table>(lib)?.pairs::<Value, Value>() {
                let (k, v) = pair?;
                copy.raw_set(k, v)?;
            }
            allowed.raw_set(lib, copy)?;
        }
        allowed
            .raw_get::<Table>("math")?
            .raw_set("randomseed", Value::Nil)?;
        allowed
            .raw_get::<Table>("string")?
            .raw_set("dump", Value::Nil)?;
        let os = lua.create_table()?;
        let real_os: Table = globals.raw_get("os")?;
        os.raw_set("time", real_os.raw_get::<Value>("time")?)?;
        os.raw_set("clock", real_os.raw_get::<Value>("clock")?)?;
        allowed.raw_set("os", os)?;
        // The libraries' copies are shared by every handler of the project: freeze them too,
        // or `string.format = nil` in one handler would break the others.
        Ok(Sandbox {
            env: freeze(lua, allowed)?,
        })
    }

    /// Compiles one handler source (a function expression, as lotus ships it) into the
    /// function it evaluates to. `handler` names it in errors (`handlers.ping`).
    pub fn compile(
        &self,
        lua: &Lua,
        handler: &str,
        source: &str,
    ) -> Result<Function, CompileError> {
        let err = |message: String| CompileError {
            handler: handler.to_string(),
            message,
        };
        let chunk = lua
            .load(format!("return {source}"))
            .set_name(format!("={handler}"))
            .set_mode(ChunkMode::Text)
            .set_environment(self.env.clone())
            .into_function()
            .map_err(|e| err(first_line(&e)))?;
        match chunk.call::<Value>(()) {
            Ok(Value::Function(f)) => Ok(f),
            Ok(other) => Err(err(format!(
                "evaluates to a {}, not a function",
                other.type_name()
            ))),
            Err(e) => Err(err(first_line(&e))),
        }
    }

    /// Compiles every `handlers` and `callbacks` entry of a schema table, in name order;
    /// the first failure refuses the whole schema.
    pub fn compile_schema(&self, lua: &Lua, schema: &Table) -> Result<Compiled, CompileError> {
        let mut out = Compiled::default();
        for (field, into) in [
            ("handlers", &mut out.handlers),
            ("callbacks", &mut out.callbacks),
        ] {
            let Some(table) = schema.get::<Option<Table>>(field).ok().flatten() else {
                continue;
            };
            let mut entries = Vec::new();
            for pair in table.pairs::<Value, Value>() {
                let (k, v) = pair.map_err(|e| CompileError {
                    handler: field.to_string(),
                    message: first_line(&e),
                })?;
                let (Value::String(name), Value::String(src)) = (&k, &v) else {
                    return Err(CompileError {
                        handler: format!("{field}.{}", k.to_string().unwrap_or_default()),
                        message: format!(
                            "expected a name mapped to Lua source, found {} = {}",
                            k.type_name(),
                            v.type_name()
                        ),
                    });
                };
                entries.push((
                    name.to_str().map(|s| s.to_string()).unwrap_or_default(),
                    src.to_str().map(|s| s.to_string()).unwrap_or_default(),
                ));
            }
            entries.sort();
            for (name, src) in entries {
                let f = self.compile(lua, &format!("{field}.{name}"), &src)?;
                into.push((name, f));
            }
        }
        Ok(out)
    }
}

/// A schema's compiled functions, by name.
#[derive(Default)]
pub struct Compiled {
    pub handlers: Vec<(String, Function)>,
    pub callbacks: Vec<(String, Function)>,
}

/// A read-only view of `t` (recursively for its table members): reads go through, writes
/// raise, and `getmetatable` would see `false` (not that handlers have it).
fn freeze(lua: &Lua, t: Table) -> mlua::Result<Table> {
    for pair in t.clone().pairs::<Value, Value>() {
        let (k, v) = pair?;
        if let Value::Table(inner) = v {
            t.raw_set(k, freeze(lua, inner)?)?;
        }
    }
    let proxy = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", t)?;
    meta.raw_set(
        "__newindex",
        lua.create_function(|_, (_, k): (Value, Value)| -> mlua::Result<()> {
            Err(mlua::Error::runtime(format!(
                "handlers cannot assign globals or library fields (`{}`): use a local or the state",
                k.to_string().unwrap_or_else(|_| "?".into())
            )))
        })?,
    )?;
    meta.raw_set("__metatable", false)?;
    proxy.set_metatable(Some(meta))?;
    Ok(proxy)
}

/// The message of a Lua error without mlua's traceback lines.
fn first_line(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, .. } => cause.to_string(),
        other => other.to_string(),
    };
    text.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> (Lua, Sandbox) {
        let lua = Lua::new();
        let sb = Sandbox::new(&lua).unwrap();
        (lua, sb)
    }

    #[test]
    fn a_handler_computes_on_its_state() {
        let (lua, sb) = sandbox();
        let f = sb
            .compile(
                &lua,
                "handlers.add",
                "function(ctx, state, n) state.hp = math.min(state.hp + n, 100); return string.format('%d', state.hp), #table.concat({'a','b'}) end",
            )
            .unwrap();
        let state = lua.create_table().unwrap();
        state.set("hp", 95).unwrap();
        let (s, n): (String, i64) = f.call((Value::Nil, state.clone(), 3)).unwrap();
        assert_eq!(
            (s.as_str(), n, state.get::<i64>("hp").unwrap()),
            ("98", 2, 98)
        );
    }

    fn escape_error(src: &str) -> String {
        let (lua, sb) = sandbox();
        let f = sb.compile(&lua, "handlers.x", src).unwrap();
        match f.call::<Value>((Value::Nil, lua.create_table().unwrap())) {
            Ok(v) => panic!("`{src}` ran and returned {v:?}"),
            Err(e) => first_line(&e),
        }
    }

    #[test]
    fn escapes_fail() {
        for (src, expect) in [
            ("function() return require('io') end", "require"),
            ("function() return io.open('/etc/passwd') end", "io"),
            ("function() return os.execute('true') end", "execute"),
            ("function() return load('return 1') end", "load"),
            ("function() return loadstring('return 1') end", "loadstring"),
            ("function() return ffi.C end", "ffi"),
            ("function() return debug.getinfo(1) end", "debug"),
            ("function() return setfenv(1, {}) end", "setfenv"),
            ("function() return getfenv(1) end", "getfenv"),
            (
                "function() return getmetatable('').__index end",
                "getmetatable",
            ),
            ("function() return jit.off() end", "jit"),
            ("function() return string.dump(print) end", "dump"),
            ("function() return rawset(_G, 'x', 1) end", "rawset"),
        ] {
            let err = escape_error(src);
            assert!(
                err.contains(expect) || err.contains("nil value"),
                "`{src}` failed with `{err}`"
            );
        }
    }

    #[test]
    fn globals_and_libraries_are_read_only() {
        let err = escape_error("function() leak = 1 end");
        assert!(err.contains("cannot assign globals"), "{err}");
        let err = escape_error("function() string.format = nil end");
        assert!(err.contains("cannot assign globals"), "{err}");
        let err = escape_error("function() math.randomseed(1) end");
        assert!(err.contains("randomseed"), "{err}");
    }

    #[test]
    fn bytecode_is_refused() {
        let (lua, sb) = sandbox();
        let bc = lua
            .load("return function() end")
            .into_function()
            .unwrap()
            .dump(true);
        let src = String::from_utf8_lossy(&bc).into_owned();
        let err = sb.compile(&lua, "handlers.bc", &src).unwrap_err();
        assert_eq!(err.handler, "handlers.bc");
    }

    #[test]
    fn a_schema_with_one_bad_handler_is_refused_naming_it() {
        let (lua, sb) = sandbox();
        let schema: Table = lua
            .load(
                r#"return { typename = "player",
                    handlers = { ok = "function(ctx, s) end", broken = "function(ctx, s) s.x = 1 // 2 end" },
                    callbacks = { tick = "function(ctx, s, t) end" } }"#,
            )
            .eval()
            .unwrap();
        let err = sb.compile_schema(&lua, &schema).err().unwrap();
        assert_eq!(err.handler, "handlers.broken");
        assert!(err.message.contains("unexpected symbol"), "{}", err.message);

        schema
            .get::<Table>("handlers")
            .unwrap()
            .set("broken", "function(ctx, s) s.x = math.floor(1 / 2) end")
            .unwrap();
        let compiled = sb.compile_schema(&lua, &schema).unwrap();
        let names: Vec<_> = compiled.handlers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["broken", "ok"]);
        assert_eq!(compiled.callbacks[0].0, "tick");

        let err = sb.compile(&lua, "handlers.n", "42").unwrap_err();
        assert_eq!(err.message, "evaluates to a integer, not a function");
    }
}
