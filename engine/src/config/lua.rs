//! Lua stage configuration (spec stage.md 8 and 9.2): the `%` keys of `lua.so`/`luajit.so`
//! blocks and how the block of one `#startup` entry is assembled. Lookup for `"M+ID"`: start
//! from the module block `"M"`, then apply the top-level stage block `"M+ID"` (object → merged
//! over it, string → main script, array → each element merged in order, strings naming other
//! top-level blocks or JSON files). The main script is `"M+ID"`, then `"ID"`, in the result.
//! Every merged key remembers which block it came from so errors name the key as written.

use std::collections::HashMap;

use simd_json::owned::Object;
use simd_json::OwnedValue;

use super::error::{as_int, At, ConfigError};
use super::modules::{module_kind, ModuleKind, ModuleRef};

/// Interval between modification checks of a cached script. The original defaults to 30000;
/// ours is 1000 so that an edited script is picked up about a second after saving, which is
/// what one expects while developing. A stat per second per script is negligible.
pub const DEFAULT_REFLUSH_MS: u64 = 1000;

/// `%cpu` when the configuration says nothing: the CPU budget of one Lua callback, in msec
/// (`node::budget`).
pub const DEFAULT_CPU_MS: u64 = 500;
/// The largest `%cpu` accepted, in msec: the supervisor kills a process whose core has not
/// returned to its loop for 3.1 s, and a budget must end a runaway callback well before that.
pub const MAX_CPU_MS: u64 = 2000;
/// `%spin`'s ceiling in µs: a core that spins longer than this between messages gains no
/// latency a parked wake-up would lose, only CPU time.
pub const MAX_SPIN_US: u64 = 10_000;

/// The `%` keys a Lua block may contain; anything else starting with `%` is a typo.
const PERCENT_KEYS: &str =
    "%preload, %package, %reflush, %ffi, %memory, %cpu, %spin, %blocking, %odbc, %cluster";

/// `%blocking`: what a serving core does when a script asks it for a call that waits on the
/// system (a file outside the file image, opening a `bundle.viewof`, `commit('sync')`
/// without a callback, a host-name lookup): `node::blocking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockingPolicy {
    /// Make the call (the script gets its answer; the core stalls meanwhile), count it and
    /// log the first of each kind: what the original engine did, minus the silence.
    Count,
    /// Refuse it with an error that says what to do instead (counted and logged the same
    /// way): a core never waits on the system for a script. The default, so that no path a
    /// client or a stage can trigger stalls a core's other clients (issue #15).
    #[default]
    Refuse,
}

/// One `%package` search-path entry (spec 8.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageEntry {
    /// 0 = normal copy; > 0 = fail-over copy (reported to scripts in `info[1]`).
    pub position: u32,
    /// Directory prefix (`""` = current directory) or `"archive.zip:"`-style zip path.
    pub prefix: String,
}

impl PackageEntry {
    /// `"[N]rest"` / `"#Nrest"` force position N; otherwise the array index is the position.
    pub fn parse(s: &str, index: usize) -> Result<PackageEntry, String> {
        if let Some(rest) = s.strip_prefix('[') {
            let Some((n, prefix)) = rest.split_once(']') else {
                return Err(format!("`{s}`: `[` without a closing `]`"));
            };
            let position = n
                .parse::<u32>()
                .map_err(|_| format!("`{s}`: `[{n}]` must be a position number like `[0]`"))?;
            return Ok(PackageEntry {
                position,
                prefix: prefix.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix('#') {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            // `#` without digits is an ordinary directory name.
            if digits > 0 {
                let position = rest[..digits]
                    .parse::<u32>()
                    .map_err(|_| format!("`{s}`: position `{}` is too large", &rest[..digits]))?;
                return Ok(PackageEntry {
                    position,
                    prefix: rest[digits..].to_string(),
                });
            }
        }
        let position =
            u32::try_from(index).map_err(|_| format!("`{s}`: too many `%package` entries"))?;
        Ok(PackageEntry {
            position,
            prefix: s.to_string(),
        })
    }
}

/// Everything the Lua host needs for one Lua stage.
#[derive(Debug, Clone, PartialEq)]
pub struct LuaStageConfig {
    /// `%preload` directories or files, in order.
    pub preload: Vec<String>,
    /// `%package` search path; `[0] ""` (current directory) when absent.
    pub package: Vec<PackageEntry>,
    /// `%reflush`, msec; see [`DEFAULT_REFLUSH_MS`].
    pub reflush_ms: u64,
    /// `%ffi`: the packet path through LuaJIT's FFI (default true); false takes the classic
    /// Lua C API path everywhere (same bytes on the wire, slower).
    pub ffi: bool,
    /// `%memory`: the most memory one Lua state may hold, in MiB (this build's limit, DESIGN
    /// principle 9); `None` = no limit.
    pub memory_mib: Option<u64>,
    /// `%cpu`: the CPU budget of one Lua callback in msec (0 = none), see [`DEFAULT_CPU_MS`].
    pub cpu_ms: u64,
    /// `%spin`: µs a core keeps polling after its last work before it parks (0 = park at once).
    pub spin_us: u64,
    /// `%blocking`: see [`BlockingPolicy`].
    pub blocking: BlockingPolicy,
    /// Main script name, if configured anywhere (a missing one is a boot-time warning).
    pub main_script: Option<String>,
    /// `%odbc`: named DSN objects (or raw connection strings) for `odbc.new`.
    pub odbc: Option<OwnedValue>,
    /// `%cluster`: URL(s) for the script-level cluster package.
    pub cluster: Option<OwnedValue>,
    /// The merged block itself, as `process["$"]` shows it.
    pub block: OwnedValue,
}

/// The `%` keys of one (possibly merged) block. `at_of(key)` says where `key` was written.
fn parse_keys(
    block: &Object,
    at_of: &dyn Fn(&str) -> At,
    errs: &mut Vec<ConfigError>,
) -> LuaStageConfig {
    let mut out = LuaStageConfig {
        preload: Vec::new(),
        package: vec![PackageEntry {
            position: 0,
            prefix: String::new(),
        }],
        reflush_ms: DEFAULT_REFLUSH_MS,
        ffi: true,
        memory_mib: None,
        cpu_ms: DEFAULT_CPU_MS,
        spin_us: 0,
        blocking: BlockingPolicy::Refuse,
        main_script: None,
        odbc: None,
        cluster: None,
        block: OwnedValue::Object(Box::new(block.clone())),
    };
    for (k, v) in block.iter() {
        if !k.starts_with('%') {
            continue;
        }
        let at = at_of(k).key(k);
        match k.as_str() {
            "%preload" => out.preload = strings(v, &at, errs),
            "%package" => {
                let list = strings(v, &at, errs);
                if list.is_empty() && matches!(v, OwnedValue::Array(_)) {
                    errs.push(at.invalid(
                        "is empty, so no script could ever be found (omit it to search the current directory)",
                    ));
                }
                let single = !matches!(v, OwnedValue::Array(_));
                let entries: Vec<PackageEntry> = list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let at = if single { at.clone() } else { at.index(i) };
                        PackageEntry::parse(s, i)
                            .map_err(|m| errs.push(at.invalid(m)))
                            .ok()
                    })
                    .collect();
                if !entries.is_empty() {
                    out.package = entries;
                }
            }
            "%reflush" => match as_int(v) {
                Some(ms) if ms >= 0 && ms <= i128::from(u32::MAX) => out.reflush_ms = ms as u64,
                Some(ms) => errs.push(at.invalid(format!(
                    "{ms} msec is out of range: expected 0 to {}",
                    u32::MAX
                ))),
                None => errs.push(at.type_err("an integer (msec)", v)),
            },
            "%ffi" => match simd_json::prelude::ValueAsScalar::as_bool(v) {
                Some(b) => out.ffi = b,
                None => errs.push(at.type_err("true or false", v)),
            },
            "%memory" => match as_int(v) {
                Some(0) => out.memory_mib = None,
                Some(mib) if mib > 0 && mib <= 1 << 20 => out.memory_mib = Some(mib as u64),
                Some(mib) => errs.push(at.invalid(format!(
                    "{mib} MiB is out of range: expected 0 (no limit) to {}",
                    1 << 20
                ))),
                None => errs.push(at.type_err("an integer (MiB per Lua state, 0 = no limit)", v)),
            },
            "%spin" => match as_int(v) {
                Some(us) if us >= 0 && us <= i128::from(MAX_SPIN_US) => out.spin_us = us as u64,
                Some(us) => errs.push(at.invalid(format!(
                    "{us} µs is out of range: expected 0 (park at once) to {MAX_SPIN_US}"
                ))),
                None => errs.push(at.type_err(
                    "an integer (µs a core polls before it parks, 0 = park at once)",
                    v,
                )),
            },
            "%blocking" => match simd_json::prelude::ValueAsScalar::as_str(v) {
                Some("count") => out.blocking = BlockingPolicy::Count,
                Some("refuse") => out.blocking = BlockingPolicy::Refuse,
                _ => errs.push(at.type_err("\"count\" or \"refuse\"", v)),
            },
            "%cpu" => match as_int(v) {
                Some(ms) if ms >= 0 && ms <= i128::from(MAX_CPU_MS) => out.cpu_ms = ms as u64,
                Some(ms) => errs.push(at.invalid(format!(
                    "{ms} ms is out of range: expected 0 (no budget) to {} (the budget must end \
                     a runaway callback well before the supervisor's 3.1 s kill)",
                    MAX_CPU_MS
                ))),
                None => {
                    errs.push(at.type_err("an integer (msec per Lua callback, 0 = no budget)", v))
                }
            },
            "%odbc" => {
                check_odbc(v, &at, errs);
                out.odbc = Some(v.clone());
            }
            "%cluster" => {
                // services.md 6.6: a string listens, an array of strings joins.
                strings(v, &at, errs);
                out.cluster = Some(v.clone());
            }
            _ => errs.push(at.invalid(format!("unknown key (a Lua block knows {PERCENT_KEYS})"))),
        }
    }
    out
}

/// A string or an array of strings, as a list.
fn strings(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Vec<String> {
    match v {
        OwnedValue::String(s) => vec![s.clone()],
        OwnedValue::Array(a) => a
            .iter()
            .enumerate()
            .filter_map(|(i, x)| match x {
                OwnedValue::String(s) => Some(s.clone()),
                other => {
                    errs.push(at.index(i).type_err("a string", other));
                    None
                }
            })
            .collect(),
        other => {
            errs.push(at.type_err("a string or an array of strings", other));
            Vec::new()
        }
    }
}

/// services.md 1.1: `{NAME: "raw connection string" | {ODBC keyword: value, .option: ...}}`.
fn check_odbc(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) {
    let OwnedValue::Object(dsns) = v else {
        errs.push(at.type_err("an object of named connections", v));
        return;
    };
    for (name, dsn) in dsns.iter() {
        let at = at.key(name);
        let params = match dsn {
            OwnedValue::String(_) => continue,
            OwnedValue::Object(p) => p,
            other => {
                errs.push(at.type_err(
                    "an object of ODBC keywords or a raw connection string",
                    other,
                ));
                continue;
            }
        };
        for (k, x) in params.iter() {
            let at = at.key(k);
            match k.as_str() {
                ".executeTimeout" | ".connectionTimeout" | ".loginTimeout" => match as_int(x) {
                    Some(t) if t >= 0 => {}
                    Some(t) => errs.push(at.invalid(format!("timeout {t} is negative"))),
                    None => errs.push(at.type_err("an integer", x)),
                },
                ".queryDriver" => match x {
                    OwnedValue::String(d) if d == "mysql" || d == "mssql" => {}
                    OwnedValue::String(d) => errs.push(at.invalid(format!(
                        "unknown dialect `{d}`: expected \"mysql\" or \"mssql\""
                    ))),
                    other => errs.push(at.type_err("\"mysql\" or \"mssql\"", other)),
                },
                // Other options are passed through; keywords become `KEY=VALUE;` pairs, so
                // they must be scalars.
                _ if k.starts_with('.') || k.starts_with(':') => {}
                _ => {
                    if matches!(x, OwnedValue::Array(_) | OwnedValue::Object(_)) {
                        errs.push(at.type_err("a string or number (ODBC keyword value)", x));
                    }
                }
            }
        }
    }
}

/// Checks one Lua block as written (not merged), so that a block no `#startup` entry uses is
/// still validated, and reports `%odbc`/`%cluster` and main-script entries at their own path.
pub(crate) fn check_object(obj: &Object, at: &At, errs: &mut Vec<ConfigError>) {
    parse_keys(obj, &|_| at.clone(), errs);
    for (k, v) in obj.iter() {
        // Main-script entries `"lua.so+NAME": "script"` inside a module block.
        let is_main_entry =
            k.contains('+') && ModuleRef::parse(k).is_ok_and(|m| m.kind == ModuleKind::Lua);
        if is_main_entry && !matches!(v, OwnedValue::String(_)) {
            errs.push(at.key(k).type_err("a main script name", v));
        }
    }
}

/// Checks a top-level `"lua.so+ID"` value: object, main-script string, or array of objects
/// and names of other blocks / JSON files. `top` is the merged document, for the names.
pub(crate) fn check_stage_value(
    v: &OwnedValue,
    at: &At,
    top: &Object,
    errs: &mut Vec<ConfigError>,
) {
    match v {
        OwnedValue::Object(o) => check_object(o, at, errs),
        OwnedValue::String(_) => {}
        OwnedValue::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let at = at.index(i);
                match x {
                    OwnedValue::Object(o) => check_object(o, &at, errs),
                    // A top-level block is checked under its own key; a file is checked here.
                    OwnedValue::String(name) => match referenced(name, top, &at) {
                        Ok(Some((file_at, OwnedValue::Object(o)))) => {
                            check_object(&o, &file_at, errs)
                        }
                        Ok(_) => {}
                        Err(e) => errs.push(e),
                    },
                    other => errs.push(at.type_err(
                        "an object or the name of another top-level block or JSON file",
                        other,
                    )),
                }
            }
        }
        other => errs.push(at.type_err(
            "an object, a main script name or an array of blocks to merge",
            other,
        )),
    }
}

/// Resolves a block name from a `"lua.so+ID": [...]` array. `Ok(None)` = a top-level key that
/// is an object (the caller reads it from `top`); `Ok(Some)` = a JSON file read from disk.
fn referenced(name: &str, top: &Object, at: &At) -> Result<Option<(At, OwnedValue)>, ConfigError> {
    if let Some(v) = top.get(name) {
        return match v {
            OwnedValue::Object(_) => Ok(None),
            other => Err(at.type_err(
                &format!("the name of an object block (`{name}` is not one)"),
                other,
            )),
        };
    }
    let text = std::fs::read_to_string(name).map_err(|e| {
        at.invalid(format!(
            "`{name}` is neither a top-level key nor a readable JSON file ({})",
            super::io_reason(&e)
        ))
    })?;
    match super::parse_text(name, &text) {
        Ok(v @ OwnedValue::Object(_)) => Ok(Some((At::new(name, ""), v))),
        Ok(other) => Err(ConfigError::NotObject {
            name: name.to_string(),
            found: super::error::describe(&other),
        }),
        Err(e) => Err(e),
    }
}

/// Where each top-level key came from, needed to name errors in merged blocks.
pub(crate) type Origins = HashMap<String, String>;

/// Builds the configuration of one Lua stage; errors go to `errs`, the result is best effort.
pub(crate) fn resolve(
    top: &Object,
    origins: &Origins,
    m: &ModuleRef,
    errs: &mut Vec<ConfigError>,
) -> LuaStageConfig {
    let top_at = |key: &str| {
        At::new(
            origins.get(key).map_or("<merged>", String::as_str),
            key.to_string(),
        )
    };
    let mut block = Object::default();
    let mut from: HashMap<String, At> = HashMap::new();
    let mut merge = |obj: &Object, at: &At| {
        for (k, v) in obj.iter() {
            block.insert(k.clone(), v.clone());
            from.insert(k.clone(), at.clone());
        }
    };
    let mut main_script = None;

    match top.get(&m.module) {
        Some(OwnedValue::Object(o)) => merge(o, &top_at(&m.module)),
        Some(other) => errs.push(top_at(&m.module).type_err("an object", other)),
        None => {}
    }
    let stage_at = top_at(&m.entry);
    match top.get(&m.entry) {
        // `#startup: "lua.so"` without an id would otherwise find its own module block here.
        _ if m.entry == m.module => {}
        None => {}
        Some(OwnedValue::Object(o)) => merge(o, &stage_at),
        Some(OwnedValue::String(s)) => main_script = Some(s.clone()),
        Some(OwnedValue::Array(items)) => {
            for (i, x) in items.iter().enumerate() {
                let at = stage_at.index(i);
                match x {
                    OwnedValue::Object(o) => merge(o, &at),
                    OwnedValue::String(name) => match referenced(name, top, &at) {
                        Ok(None) => {
                            if let Some(OwnedValue::Object(o)) = top.get(name.as_str()) {
                                merge(o, &top_at(name));
                            }
                        }
                        Ok(Some((file_at, OwnedValue::Object(o)))) => merge(&o, &file_at),
                        Ok(Some(_)) => {}
                        Err(e) => errs.push(e),
                    },
                    other => errs.push(at.type_err(
                        "an object or the name of another top-level block or JSON file",
                        other,
                    )),
                }
            }
        }
        Some(other) => errs.push(stage_at.type_err(
            "an object, a main script name or an array of blocks to merge",
            other,
        )),
    }

    let at_of = |k: &str| from.get(k).cloned().unwrap_or_else(|| stage_at.clone());
    let mut out = parse_keys(&block, &at_of, errs);
    // Spec 9.2: inside the merged block, `"M+ID"` then `"ID"`. Without an id there is no
    // name to look up (and `"M"` would be the module block's own key).
    if let (None, Some(id)) = (&main_script, &m.stage_id) {
        for key in [m.entry.as_str(), id.as_str()] {
            match block.get(key) {
                Some(OwnedValue::String(s)) => {
                    main_script = Some(s.clone());
                    break;
                }
                Some(other) => {
                    errs.push(at_of(key).key(key).type_err("a main script name", other));
                    break;
                }
                None => {}
            }
        }
    }
    out.main_script = main_script;
    out
}

/// Is this top-level key a Lua module block (`lua.so`) or stage block (`lua.so+ID`)?
pub(crate) fn is_lua_key(key: &str) -> bool {
    let module = key.rsplit_once('+').map_or(key, |(m, _)| m);
    module_kind(module) == Ok(ModuleKind::Lua)
}
