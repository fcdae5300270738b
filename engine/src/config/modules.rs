//! Stage module strings (`"lua.so+stage"`, `"=ticket+ticket"`, `"./examples.so@main+ex"`) and
//! the checks of the non-Lua module blocks (`curl.so`, `=ticket`, `index.so`, `=route`,
//! plugins). The Lua blocks live in `lua.rs`. Module strings are parsed the same way whether
//! they come from `#startup` or are a top-level block key, so both agree on what a key means.

use simd_json::{OwnedValue, StaticNode};

use super::error::{as_int, At, ConfigError};

/// What implements a stage module (spec stage.md 9.2, services.md 0.1 and 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    /// `lua.so`, `luajit.so`: both run on the engine's LuaJIT host.
    Lua,
    /// `index.so`: ranking service.
    Index,
    /// `curl.so`: outbound HTTP.
    Curl,
    /// `=route`: built-in publish/subscribe.
    Route,
    /// `=ticket`: built-in admission control.
    Ticket,
    /// `lotus.so`: states with handlers and channels with history (spec/lotus.md).
    Lotus,
    /// Any other `*.so`, or any library with an `@entry` symbol.
    Plugin,
}

impl ModuleKind {
    /// Short name for log lines.
    pub fn name(self) -> &'static str {
        match self {
            ModuleKind::Lua => "lua",
            ModuleKind::Index => "index.so",
            ModuleKind::Curl => "curl.so",
            ModuleKind::Route => "=route",
            ModuleKind::Ticket => "=ticket",
            ModuleKind::Lotus => "lotus.so",
            ModuleKind::Plugin => "plugin",
        }
    }

    /// Modules this build runs as stages of a process: Lua stages and the service stages
    /// wired to the router (index.so, `=ticket`, `=route`, curl.so) and lotus.so. The others are accepted
    /// but not active.
    pub fn is_hosted(self) -> bool {
        matches!(
            self,
            ModuleKind::Lua
                | ModuleKind::Index
                | ModuleKind::Ticket
                | ModuleKind::Route
                | ModuleKind::Curl
                | ModuleKind::Lotus
        )
    }
}

/// One module of a `#startup` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModuleRef {
    /// The string as written, e.g. `"lua.so+stage"`; also the key of its stage block.
    pub entry: String,
    /// The text before the last `+`, e.g. `"lua.so"`; also the key of its module block.
    pub module: String,
    /// The text after the last `+`: the address other stages use. `None` = not addressable.
    pub stage_id: Option<String>,
    pub kind: ModuleKind,
}

/// Spec services.md 0.1: the sender's sign travels in a 40-byte field.
pub const MAX_STAGE_ID: usize = 40;

impl ModuleRef {
    /// Parses a module string; the error text is meant to follow "key `...`: ".
    pub fn parse(entry: &str) -> Result<ModuleRef, String> {
        let (module, stage_id) = match entry.rsplit_once('+') {
            Some((m, id)) => (m, Some(id)),
            None => (entry, None),
        };
        let kind = module_kind(module)?;
        if let Some(id) = stage_id {
            check_stage_id(id)?;
        }
        Ok(ModuleRef {
            entry: entry.to_string(),
            module: module.to_string(),
            stage_id: stage_id.map(str::to_string),
            kind,
        })
    }

    /// The library to load, without an `@entry` suffix.
    pub fn library(&self) -> &str {
        self.module
            .split_once('@')
            .map_or(self.module.as_str(), |(lib, _)| lib)
    }

    /// The alternative entry symbol of `"file.so@sym"`.
    pub fn symbol(&self) -> Option<&str> {
        self.module.split_once('@').map(|(_, sym)| sym)
    }
}

/// Kind of a module name (the part before `+`). Only plain `lua.so` etc. (optionally with a
/// directory) are the engine's own: `lua.so@x` asks for a foreign entry point, so it is a plugin.
pub(crate) fn module_kind(module: &str) -> Result<ModuleKind, String> {
    if let Some(name) = module.strip_prefix('=') {
        return match name {
            "route" => Ok(ModuleKind::Route),
            "ticket" => Ok(ModuleKind::Ticket),
            _ => Err(format!(
                "unknown built-in module `{module}` (the built-ins are `=route` and `=ticket`)"
            )),
        };
    }
    if !module.contains(".so") {
        return Err(format!(
            "`{module}` is not a module: expected `NAME.so[@entry][+ID]`, `=route[+ID]` or `=ticket[+ID]`"
        ));
    }
    let (lib, symbol) = match module.split_once('@') {
        Some((lib, sym)) => (lib, Some(sym)),
        None => (module, None),
    };
    if symbol == Some("") {
        return Err(format!(
            "`{module}`: `@` must be followed by an entry symbol"
        ));
    }
    let base = lib.rsplit('/').next().unwrap_or(lib);
    Ok(match (base, symbol) {
        ("lua.so" | "luajit.so", None) => ModuleKind::Lua,
        ("index.so", None) => ModuleKind::Index,
        ("curl.so", None) => ModuleKind::Curl,
        ("lotus.so", None) => ModuleKind::Lotus,
        _ => ModuleKind::Plugin,
    })
}

/// Stage ids end up in message keys (`"id:msg"`), target lists (`"a,b:msg"`) and policy
/// prefixes (`*`, `=`, `+`), so characters with a meaning there would make a stage unreachable.
fn check_stage_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty stage id after `+` (drop the `+` for a stage nobody addresses)".into());
    }
    if id.len() > MAX_STAGE_ID {
        return Err(format!(
            "stage id `{id}` is {} bytes, more than the limit {MAX_STAGE_ID}",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || ":,*=@<>?".contains(*c))
    {
        return Err(format!(
            "stage id `{id}` contains {c:?}, which has a meaning in message targets"
        ));
    }
    Ok(())
}

/// Checks a top-level block of a non-Lua module against spec 9.2 / services.md.
pub(crate) fn check_block(kind: ModuleKind, v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) {
    match kind {
        ModuleKind::Curl => check_curl(v, at, errs),
        ModuleKind::Ticket => check_ticket(v, at, errs),
        ModuleKind::Index => check_index(v, at, errs),
        ModuleKind::Route => check_route(v, at, errs),
        ModuleKind::Lotus => {
            super::lotus::parse(v, at, errs);
        }
        // Plugins define their own.
        ModuleKind::Plugin | ModuleKind::Lua => {}
    }
}

/// `=route` has no block in the spec; this build takes `{"keepalive": msec}` (docs/config.md).
/// Unknown keys are errors so that a misspelt `"keep_alive"` does not silently do nothing.
fn check_route(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) {
    let obj = match v {
        OwnedValue::Static(StaticNode::Null) => return,
        OwnedValue::Object(o) => o,
        other => {
            errs.push(at.type_err("an object {\"keepalive\": msec}", other));
            return;
        }
    };
    for (key, x) in obj.iter() {
        let at = at.key(key);
        match key.as_ref() {
            "keepalive" => match as_int(x) {
                Some(ms) if ms > 0 && ms <= i128::from(u32::MAX) => {}
                Some(ms) => errs.push(at.invalid(format!(
                    "keepalive {ms} is out of range: expected 1 to {} msec",
                    u32::MAX
                ))),
                None => errs.push(at.type_err("an integer (msec)", x)),
            },
            _ => errs.push(at.invalid("unknown key (the only `=route` setting is keepalive)")),
        }
    }
}

/// services.md 5.1: a string is the user-agent; an object has `user-agent`, `verbose`,
/// `timeout`. Unknown keys are errors so that `"user_agent"` does not silently do nothing.
fn check_curl(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) {
    let obj = match v {
        OwnedValue::String(_) => return,
        OwnedValue::Object(o) => o,
        other => {
            errs.push(at.type_err(
                "an object {\"user-agent\": ..., \"verbose\": 0, \"timeout\": msec} or a user-agent string",
                other,
            ));
            return;
        }
    };
    for (k, x) in obj.iter() {
        let at = at.key(k);
        match k.as_str() {
            "user-agent" => {
                if !matches!(x, OwnedValue::String(_)) {
                    errs.push(at.type_err("a string", x));
                }
            }
            "verbose" => match as_int(x) {
                Some(0 | 1) => {}
                Some(i) => errs.push(at.invalid(format!("{i} is not 0 or 1"))),
                None => errs.push(at.type_err("0 or 1", x)),
            },
            "timeout" => match as_int(x) {
                Some(i) if i >= 0 => {}
                Some(i) => errs.push(at.invalid(format!("timeout {i} msec is negative"))),
                None => errs.push(at.type_err("an integer (msec)", x)),
            },
            _ => errs.push(at.invalid(
                "unknown key: a curl.so block takes `user-agent`, `verbose` and `timeout`",
            )),
        }
    }
}

/// services.md 3.2: `[capacity, {category: limit, ...}]`, elements in any order; a bare
/// integer is the capacity alone.
fn check_ticket(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) {
    let items: Vec<(At, &OwnedValue)> = match v {
        OwnedValue::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| (at.index(i), x))
            .collect(),
        other if as_int(other).is_some() => vec![(at.clone(), other)],
        other => {
            errs.push(at.type_err("an array [capacity, {\"category\": limit}]", other));
            return;
        }
    };
    for (at, x) in items {
        match x {
            OwnedValue::Object(cats) => {
                for (cat, limit) in cats.iter() {
                    let at = at.key(cat);
                    match as_int(limit) {
                        Some(l) if l.unsigned_abs() <= u128::from(u32::MAX) => {}
                        Some(l) => errs.push(at.invalid(format!("limit {l} is out of range"))),
                        None => errs.push(at.type_err(
                            "an integer (ticket limit; negative = refuse instead of queue)",
                            limit,
                        )),
                    }
                }
            }
            other => match as_int(other) {
                Some(c) if c > 0 && c <= i128::from(u32::MAX) => {}
                Some(c) => errs.push(at.invalid(format!(
                    "capacity {c} is out of range: expected 1 to {}",
                    u32::MAX
                ))),
                None => errs.push(at.type_err(
                    "an integer (capacity) or an object of category limits",
                    other,
                )),
            },
        }
    }
}

/// services.md 2.1: `"dir/"` or `["dir/", n, m]` with positive integers.
/// The object form (this build's extension, so the durability policy can be chosen):
/// `{"path": "dir/", "keysize": 128, "sync": "always" | msec, "snapshot": bytes}`.
fn check_index_object(o: &simd_json::owned::Object, at: &At, errs: &mut Vec<ConfigError>) {
    for (k, x) in o.iter() {
        let at = at.key(k);
        match k.as_str() {
            "path" => {
                if !matches!(x, OwnedValue::String(_)) {
                    errs.push(at.type_err("a directory string", x));
                }
            }
            "keysize" => match as_int(x) {
                Some(n) if n > 0 && n <= i128::from(u32::MAX) => {}
                _ => errs.push(at.type_err("a positive integer (bytes)", x)),
            },
            "sync" => match (x, as_int(x)) {
                (OwnedValue::String(s), _) if s == "always" => {}
                (_, Some(n)) if n > 0 && n <= i128::from(u32::MAX) => {}
                _ => errs.push(at.type_err("\"always\" or a positive integer (msec)", x)),
            },
            "snapshot" => match as_int(x) {
                Some(n) if n > 0 && n <= i128::from(u64::MAX) => {}
                _ => errs.push(at.type_err("a positive integer (bytes of log)", x)),
            },
            _ => errs.push(at.invalid(
                "unknown key: an index.so block object takes `path`, `keysize`, `sync` and `snapshot`",
            )),
        }
    }
}

fn check_index(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) {
    const EXPECTED: &str =
        "a directory string, an array [\"dir/\", int, int] or an object {\"path\": ..., \"keysize\": ..., \"sync\": ...}";
    let items = match v {
        OwnedValue::String(_) => return,
        OwnedValue::Object(o) => return check_index_object(o, at, errs),
        OwnedValue::Array(a) => a,
        other => {
            errs.push(at.type_err(EXPECTED, other));
            return;
        }
    };
    if items.is_empty() || items.len() > 3 {
        errs.push(at.invalid(format!(
            "expected 1 to 3 elements [\"dir/\", int, int], found {}",
            items.len()
        )));
    }
    for (i, x) in items.iter().enumerate().take(3) {
        let at = at.index(i);
        if i == 0 {
            if !matches!(x, OwnedValue::String(_)) {
                errs.push(at.type_err("a directory string", x));
            }
            continue;
        }
        match as_int(x) {
            Some(n) if n > 0 && n <= i128::from(u32::MAX) => {}
            Some(n) => {
                errs.push(at.invalid(format!("{n} is out of range: expected 1 to {}", u32::MAX)))
            }
            None => errs.push(at.type_err("a positive integer", x)),
        }
    }
}
