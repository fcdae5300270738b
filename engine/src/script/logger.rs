//! The `logger.*` library (spec 6) and the `print` replacement.
//!
//! `logger.out/info/warn/error/trace(...)` convert every argument with the script's global
//! `tostring` (so `__tostring` metamethods apply), expand log4cxx-style escapes inside each
//! value (`%l`, `%F`, `%M`, `%L`, `%{NAME}`, `%N{NAME}`, `%{=logger:level}`, `%%`), join the
//! values with a TAB and emit one `tracing` event at the chosen level with a `logger` field
//! (default `"lua"`); the configured subscriber (`-l`) decides where it goes. Expansion is
//! done by the pure functions [`expand`] and [`format_line`] so it can be tested without Lua.
//! Unknown or malformed escapes are copied literally: a log call must never fail or panic
//! because of what a script happened to print.

use mlua::{Function, Lua, MultiValue, Table, Value};

/// Logger name used when a call does not switch it with `%{=name:}`.
pub const DEFAULT_LOGGER: &str = "lua";

/// Widths beyond this are treated as a malformed escape: a script typo such as
/// `%99999999{X}` must not allocate gigabytes of padding.
const MAX_WIDTH: usize = 4096;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Info,
    Warn,
    Error,
}

impl Level {
    /// Parses a level name as written in `%{=logger:level}` (case-insensitive; `out` and
    /// `debug` are accepted as the nearest levels since scripts use the function names).
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "trace" | "debug" => Some(Level::Trace),
            "info" | "out" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" | "fatal" => Some(Level::Error),
            _ => None,
        }
    }
}

/// Where a log call came from, as rendered by `%F`, `%M`, `%L` and `%l`; `?` when unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub file: String,
    pub function: String,
    pub line: String,
}

impl Default for Caller {
    fn default() -> Self {
        Caller {
            file: "?".into(),
            function: "?".into(),
            line: "?".into(),
        }
    }
}

/// One log line ready to emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub logger: String,
    pub level: Level,
    pub message: String,
}

/// Looks up an environment variable for `%{NAME}`.
pub fn env_var(name: &str) -> Option<String> {
    // Names std may reject (empty, '=' or NUL inside) are simply unset, never a panic.
    if name.is_empty() || name.contains(['=', '\0']) {
        return None;
    }
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Left-pads with spaces or truncates (keeping the first `width` characters), like
/// printf's `%N.Ns`.
fn fit(value: &str, width: usize) -> String {
    let n = value.chars().count();
    if n >= width {
        value.chars().take(width).collect()
    } else {
        let mut s = " ".repeat(width - n);
        s.push_str(value);
        s
    }
}

/// Applies `%{=logger:level}`. The level is after the last ':' (levels never contain one,
/// logger names might); an empty or unknown part leaves that setting unchanged.
fn switch(spec: &str, logger: &mut String, level: &mut Level) {
    let (name, lvl) = spec.rsplit_once(':').unwrap_or((spec, ""));
    if !name.is_empty() {
        *logger = name.to_owned();
    }
    if let Some(l) = Level::parse(lvl) {
        *level = l;
    }
}

/// Expands the escapes of one value. `%{=...}` updates `logger` / `level` for the whole call
/// and produces no text.
pub fn expand(
    text: &str,
    caller: &Caller,
    env: &dyn Fn(&str) -> Option<String>,
    logger: &mut String,
    level: &mut Level,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pct) = rest.find('%') {
        out.push_str(&rest[..pct]);
        let esc = &rest[pct + 1..];
        let consumed = match esc.as_bytes().first() {
            Some(b'%') => {
                out.push('%');
                1
            }
            Some(b'l') => {
                out.push_str(&format!(
                    "{}[{}:{}]",
                    caller.file, caller.function, caller.line
                ));
                1
            }
            Some(b'F') => {
                out.push_str(&caller.file);
                1
            }
            Some(b'M') => {
                out.push_str(&caller.function);
                1
            }
            Some(b'L') => {
                out.push_str(&caller.line);
                1
            }
            Some(b'{' | b'0'..=b'9') => braced(esc, env, &mut out, logger, level),
            _ => 0,
        };
        if consumed == 0 {
            // Not an escape: keep the '%' and rescan from the next character.
            out.push('%');
        }
        rest = &esc[consumed..];
    }
    out.push_str(rest);
    out
}

/// Handles `{NAME}`, `N{NAME}` and `{=logger:level}` after a '%'. Returns the number of bytes
/// consumed, 0 if malformed (unterminated, bad width), in which case nothing was written.
fn braced(
    esc: &str,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    logger: &mut String,
    level: &mut Level,
) -> usize {
    let digits = esc.bytes().take_while(u8::is_ascii_digit).count();
    let Some(body) = esc[digits..].strip_prefix('{') else {
        return 0;
    };
    let Some(close) = body.find('}') else {
        return 0;
    };
    let name = &body[..close];
    let consumed = digits + 1 + close + 1;
    if let Some(spec) = name.strip_prefix('=') {
        switch(spec, logger, level);
        return consumed;
    }
    let value = env(name).unwrap_or_default();
    if digits == 0 {
        out.push_str(&value);
        return consumed;
    }
    match esc[..digits].parse::<usize>() {
        Ok(w) if w <= MAX_WIDTH => {
            out.push_str(&fit(&value, w));
            consumed
        }
        _ => 0,
    }
}

/// Expands every value and joins them with a TAB, starting from the default logger name
/// and `level`.
pub fn format_line<S: AsRef<str>>(
    values: &[S],
    caller: &Caller,
    env: &dyn Fn(&str) -> Option<String>,
    level: Level,
) -> Record {
    let mut logger = DEFAULT_LOGGER.to_owned();
    let mut level = level;
    let parts: Vec<String> = values
        .iter()
        .map(|v| expand(v.as_ref(), caller, env, &mut logger, &mut level))
        .collect();
    Record {
        logger,
        level,
        message: parts.join("\t"),
    }
}

/// Sends a record to `tracing`. The level must be a constant in tracing's macros, hence the
/// match.
pub fn emit(rec: &Record) {
    let logger = rec.logger.as_str();
    let msg = &rec.message;
    match rec.level {
        Level::Trace => tracing::trace!(logger, "{msg}"),
        Level::Info => tracing::info!(logger, "{msg}"),
        Level::Warn => tracing::warn!(logger, "{msg}"),
        Level::Error => tracing::error!(logger, "{msg}"),
    }
}

/// Converts call arguments to text with the global `tostring`, as Lua's `print` does, so a
/// script's own `tostring` override and `__tostring` metamethods apply.
fn tostring_all(lua: &Lua, args: MultiValue) -> mlua::Result<Vec<String>> {
    let tostring = match lua.globals().raw_get::<Value>("tostring")? {
        Value::Function(f) => Some(f),
        _ => None,
    };
    args.into_iter()
        .map(|v| to_text(lua, tostring.as_ref(), v))
        .collect()
}

fn to_text(lua: &Lua, tostring: Option<&Function>, v: Value) -> mlua::Result<String> {
    let v = match tostring {
        Some(f) => f.call::<Value>(v)?,
        // A sandbox that removed `tostring` still gets readable output.
        None => return v.to_string(),
    };
    match v {
        Value::String(s) => Ok(s.to_string_lossy()),
        Value::Integer(_) | Value::Number(_) => Ok(lua
            .coerce_string(v)?
            .map(|s| s.to_string_lossy())
            .unwrap_or_default()),
        _ => Err(mlua::Error::runtime(
            "'tostring' must return a string to 'logger'",
        )),
    }
}

/// File, function and line of the Lua function that called the current Rust function
/// (stack level 1; level 0 is the Rust function itself).
fn caller_info(lua: &Lua) -> Caller {
    lua.inspect_stack(1, |d| {
        let src = d.source();
        // `@path` sources carry the full file name; short_src may be shortened with "...".
        let file = match src.source.as_deref().and_then(|s| s.strip_prefix('@')) {
            Some(path) => Some(path.to_owned()),
            None => src.short_src.as_deref().map(str::to_owned),
        };
        let line = d.current_line().map(|l| l.to_string());
        let function = d.names().name.map(|n| n.into_owned());
        let unknown = || "?".to_owned();
        Caller {
            file: file.unwrap_or_else(unknown),
            function: function.unwrap_or_else(unknown),
            line: line.unwrap_or_else(unknown),
        }
    })
    .unwrap_or_default()
}

fn log_call(lua: &Lua, level: Level, args: MultiValue) -> mlua::Result<()> {
    let texts = tostring_all(lua, args)?;
    // Stack inspection costs a few lua_getinfo calls; skip it when no value has an escape.
    let caller = if texts.iter().any(|t| t.contains('%')) {
        caller_info(lua)
    } else {
        Caller::default()
    };
    emit(&format_line(&texts, &caller, &env_var, level));
    Ok(())
}

/// Sets `target.out`, `info`, `warn`, `error` and `trace`.
pub fn register(lua: &Lua, target: &Table) -> mlua::Result<()> {
    for (name, level) in [
        ("out", Level::Info),
        ("info", Level::Info),
        ("warn", Level::Warn),
        ("error", Level::Error),
        ("trace", Level::Trace),
    ] {
        let f = lua.create_function(move |lua, args: MultiValue| log_call(lua, level, args))?;
        target.set(name, f)?;
    }
    Ok(())
}

/// Replaces the global `print` so script output goes to the log (info, logger `lua`) instead
/// of stdout, which a server process does not watch. Like Lua's `print`: values converted with
/// `tostring`, joined with TABs, no escape expansion.
pub fn register_print(lua: &Lua) -> mlua::Result<()> {
    let print = lua.create_function(|lua, args: MultiValue| {
        let texts = tostring_all(lua, args)?;
        emit(&Record {
            logger: DEFAULT_LOGGER.to_owned(),
            level: Level::Info,
            message: texts.join("\t"),
        });
        Ok(())
    })?;
    lua.globals().set("print", print)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    fn env(name: &str) -> Option<String> {
        match name {
            "USER" => Some("stage".into()),
            "LONG" => Some("abcdefgh".into()),
            _ => None,
        }
    }

    fn caller() -> Caller {
        Caller {
            file: "main.lua".into(),
            function: "tick".into(),
            line: "42".into(),
        }
    }

    fn x(text: &str) -> String {
        let mut logger = DEFAULT_LOGGER.to_owned();
        let mut level = Level::Info;
        expand(text, &caller(), &env, &mut logger, &mut level)
    }

    #[test]
    fn caller_escapes() {
        assert_eq!(x("at %l!"), "at main.lua[tick:42]!");
        assert_eq!(x("%F|%M|%L"), "main.lua|tick|42");
        assert_eq!(x("100%% sure"), "100% sure");
        assert_eq!(x("plain"), "plain");
        assert_eq!(x(""), "");
    }

    #[test]
    fn env_escapes() {
        assert_eq!(x("u=%{USER}."), "u=stage.");
        assert_eq!(x("u=%{UNSET}."), "u=.");
        assert_eq!(x("[%8{USER}]"), "[   stage]");
        assert_eq!(x("[%3{LONG}]"), "[abc]");
        assert_eq!(x("[%3{UNSET}]"), "[   ]");
        assert_eq!(x("[%0{USER}]"), "[]");
        assert_eq!(x("%{}"), "");
    }

    #[test]
    fn malformed_escapes_are_literal() {
        assert_eq!(x("%5{USER"), "%5{USER");
        assert_eq!(x("%{USER"), "%{USER");
        assert_eq!(x("%5"), "%5");
        assert_eq!(x("%5x"), "%5x");
        assert_eq!(x("%"), "%");
        assert_eq!(x("a%"), "a%");
        assert_eq!(x("%q%z"), "%q%z");
        assert_eq!(
            x("%99999999999999999999{USER}"),
            "%99999999999999999999{USER}"
        );
        assert_eq!(x("%100000{USER}"), "%100000{USER}");
        // Multi-byte text next to escapes.
        assert_eq!(x("é%é%{USER}é"), "é%éstageé");
        assert_eq!(env_var(""), None);
        assert_eq!(env_var("A=B"), None);
        assert_eq!(env_var("A\0B"), None);
    }

    #[test]
    fn logger_switch() {
        let r = format_line(&["a%{=net:warn}b", "c"], &caller(), &env, Level::Info);
        assert_eq!(
            r,
            Record {
                logger: "net".into(),
                level: Level::Warn,
                message: "ab\tc".into()
            }
        );
        let r = format_line(&["%{=:error}x"], &caller(), &env, Level::Info);
        assert_eq!((r.logger.as_str(), r.level), ("lua", Level::Error));
        let r = format_line(&["%{=db}x", "%{=:}y"], &caller(), &env, Level::Trace);
        assert_eq!((r.logger.as_str(), r.level), ("db", Level::Trace));
        assert_eq!(r.message, "x\ty");
        let r = format_line(&["%{=a:b:WARN}"], &caller(), &env, Level::Info);
        assert_eq!((r.logger.as_str(), r.level), ("a:b", Level::Warn));
        let r = format_line(&["%{=x:bogus}"], &caller(), &env, Level::Info);
        assert_eq!((r.logger.as_str(), r.level), ("x", Level::Info));
        let r = format_line::<&str>(&[], &caller(), &env, Level::Info);
        assert_eq!(r.message, "");
    }

    /// Events captured from `tracing`: (level, logger, message).
    type Events = Arc<Mutex<Vec<(tracing::Level, String, String)>>>;

    struct Capture(Events);

    #[derive(Default)]
    struct Fields {
        logger: String,
        message: String,
    }

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "logger" {
                self.logger = value.to_owned();
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            }
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
            let mut f = Fields::default();
            event.record(&mut f);
            self.0
                .lock()
                .unwrap()
                .push((*event.metadata().level(), f.logger, f.message));
        }
    }

    /// Runs `f` with a capturing subscriber and returns the events it produced.
    ///
    /// Every test that emits must go through here: tracing caches a callsite's interest when
    /// the callsite is first hit, and a first hit from a test thread without a subscriber could
    /// cache "never" and silently drop a parallel test's events.
    fn capture(f: impl FnOnce()) -> Vec<(tracing::Level, String, String)> {
        let events = Events::default();
        let sub = tracing_subscriber::registry().with(Capture(events.clone()));
        tracing::subscriber::with_default(sub, f);
        let v = events.lock().unwrap().clone();
        v
    }

    fn lua_with_logger() -> Lua {
        let lua = Lua::new();
        let logger = lua.create_table().unwrap();
        register(&lua, &logger).unwrap();
        lua.globals().set("logger", logger).unwrap();
        register_print(&lua).unwrap();
        lua
    }

    /// Runs a Lua chunk (named `test.lua`) with `logger` and `print` installed and returns
    /// the log events it produced.
    fn run_lua(code: &str) -> Vec<(tracing::Level, String, String)> {
        capture(|| {
            let lua = lua_with_logger();
            lua.load(code).set_name("@test.lua").exec().unwrap();
        })
    }

    #[test]
    fn lua_logger_levels_and_caller() {
        let ev = run_lua(
            "local t = setmetatable({}, { __tostring = function() return 'T!' end })\n\
             logger.info('line %L', 1, nil, true, t)\n\
             local function tick()\n\
               logger.warn('%l')\n\
             end\n\
             tick()\n\
             logger.out('%{=net:error}boom', '%M')\n\
             logger.trace('%F')\n\
             logger.error()\n\
             print('p', 2.5, '%L')\n",
        );
        use tracing::Level as L;
        let ev: Vec<(L, &str, &str)> = ev
            .iter()
            .map(|(l, g, m)| (*l, g.as_str(), m.as_str()))
            .collect();
        assert_eq!(
            ev,
            vec![
                (L::INFO, "lua", "line 2\t1\tnil\ttrue\tT!"),
                (L::WARN, "lua", "test.lua[tick:4]"),
                (L::ERROR, "net", "boom\t?"),
                (L::TRACE, "lua", "test.lua"),
                (L::ERROR, "lua", ""),
                (L::INFO, "lua", "p\t2.5\t%L"),
            ]
        );
    }

    #[test]
    fn lua_logger_env_and_tostring_override() {
        let path = env_var("PATH").unwrap_or_default();
        let ev = run_lua(
            "logger.info('%{PATH}', '%{STAGE_SURELY_UNSET_VAR}|')\n\
             tostring = function(v) return '<' .. type(v) .. '>' end\n\
             logger.info(1, 'x')\n",
        );
        assert_eq!(ev[0].2, format!("{path}\t|"));
        assert_eq!(ev[1].2, "<number>\t<string>");
    }

    #[test]
    fn lua_logger_bad_tostring_is_an_error_not_a_panic() {
        let ev = capture(|| {
            let lua = lua_with_logger();
            let ok: bool = lua
                .load("tostring = function() return {} end; return pcall(logger.info, 1)")
                .eval()
                .unwrap();
            assert!(!ok);
            // Without a global tostring at all, values still render.
            lua.load("tostring = nil; logger.info(1, 'a')")
                .exec()
                .unwrap();
        });
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].2, "1\ta");
    }
}
