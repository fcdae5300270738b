//! The server configuration (spec stage.md 9, services.md 0.1 and 6): reading the `-c` sources,
//! merging them by top-level key (the first source defining a key wins), and checking the
//! result against the key table of spec 9.2. All errors are collected before anything starts,
//! each naming the file, the exact key path, what was expected and what was found. This module
//! only reads and checks data: it opens no sockets, forks nothing and loads no scripts; the
//! supervisor, router and Lua host consume [`Config`].
//!
//! Top-level keys are `#` settings, module blocks (keys containing `.so` or starting with `=`),
//! or blocks that a `"lua.so+ID": [...]` array merges by name. Anything else is reported as an
//! unknown key, because in a file of string keys a typo is otherwise silently ignored.

mod admin;
mod error;
mod lotus;
mod lua;
mod modules;
mod settings;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io::Read;

use simd_json::owned::Object;
use simd_json::OwnedValue;

pub use admin::Admin;
pub use error::ConfigError;
pub use lotus::{Account, LotusConfig, Secret, Store};
pub use lua::{
    BlockingPolicy, LuaStageConfig, PackageEntry, DEFAULT_CPU_MS, DEFAULT_REFLUSH_MS, MAX_CPU_MS,
};
pub use modules::{ModuleKind, ModuleRef, MAX_STAGE_ID};
pub use settings::{
    default_node_name, nats_auth, nats_servers, valid_node_name, ClusterEntry, NatsAuth, Restart,
    Router, Services, Startup, StartupEntry, Threads, DEFAULT_OBJECTS,
};

use error::At;
use lua::Origins;

/// One configuration text and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// File path, `"<stdin>"` or `"<embedded>"`; used in every error message.
    pub name: String,
    pub text: String,
}

impl ConfigSource {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        ConfigSource {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// Reads the `-c` argument: paths separated by `:`, `-` meaning stdin (spec 9.1). Empty
/// segments (`a.json::b.json`) are skipped. Fails on the first source that cannot be read,
/// since a missing file is usually a wrong path that hides everything else.
pub fn read_sources(spec: &str) -> Result<Vec<ConfigSource>, ConfigError> {
    let mut out = Vec::new();
    for part in spec.split(':').filter(|p| !p.is_empty()) {
        if part == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| ConfigError::Read {
                    name: "<stdin>".into(),
                    reason: io_reason(&e),
                })?;
            out.push(ConfigSource::new("<stdin>", text));
        } else {
            let text = std::fs::read_to_string(part).map_err(|e| ConfigError::Read {
                name: part.into(),
                reason: io_reason(&e),
            })?;
            out.push(ConfigSource::new(part, text));
        }
    }
    if out.is_empty() {
        return Err(ConfigError::NoSource);
    }
    Ok(out)
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub services: Services,
    pub router: Router,
    /// `#restart`: the supervisor's restart intensity.
    pub restart: Restart,
    pub cluster: Vec<ClusterEntry>,
    /// `#node`: this node's name in the cluster (`None`: the default, host and pid).
    pub node: Option<String>,
    /// `#admin`: the admin endpoint's address and token (`None`: off).
    pub admin: Option<Admin>,
    pub threads: Threads,
    pub startup: Startup,
    /// `#license` was given. The original checked it; we accept and ignore it.
    pub license_present: bool,
    /// The merged document (a JSON object), for lookups by later stages of boot.
    pub raw: OwnedValue,
    /// Top-level keys in the order they were first defined (`raw` is a hash map).
    order: Vec<String>,
    /// Top-level key → name of the source that defined it, for error messages.
    origins: Origins,
}

/// Merges and checks the sources. `Err` carries every problem found, in file order.
pub fn load(sources: Vec<ConfigSource>) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Vec::new();
    let mut top = Object::default();
    let mut order = Vec::new();
    let mut origins = Origins::new();
    // A source that failed to parse may well have held `#startup`; do not pile a misleading
    // "required" error on top of the real one.
    let mut some_unparsed = false;
    for src in &sources {
        match parse_text(&src.name, &src.text) {
            Ok(OwnedValue::Object(obj)) => {
                for (k, v) in obj.into_iter() {
                    if !top.contains_key(&k) {
                        origins.insert(k.clone(), src.name.clone());
                        order.push(k.clone());
                        top.insert(k, v);
                    }
                }
            }
            Ok(other) => {
                some_unparsed = true;
                errs.push(ConfigError::NotObject {
                    name: src.name.clone(),
                    found: error::describe(&other),
                });
            }
            Err(e) => {
                some_unparsed = true;
                errs.push(e);
            }
        }
    }

    // Names merged by `"lua.so+ID": ["name", ...]` arrays; those blocks are legitimate keys.
    let referenced: HashSet<&str> = order
        .iter()
        .filter(|k| k.contains('+') && lua::is_lua_key(k))
        .filter_map(|k| match top.get(k.as_str()) {
            Some(OwnedValue::Array(a)) => Some(a.iter()),
            _ => None,
        })
        .flatten()
        .filter_map(|x| match x {
            OwnedValue::String(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();

    let mut services = Services::default();
    let mut router = Router::default();
    let mut restart = Restart::default();
    let mut cluster = Vec::new();
    let mut node = None;
    let mut admin = None;
    let mut threads = Threads::default();
    let mut startup = None;
    let mut license_present = false;
    for key in &order {
        let at = At::new(origins[key].clone(), key.clone());
        let Some(v) = top.get(key.as_str()) else {
            continue;
        };
        match key.as_str() {
            "#services" => services = settings::services(v, &at, &mut errs),
            "#router" => router = settings::router(v, &at, &mut errs),
            "#restart" => restart = settings::restart(v, &at, &mut errs),
            "#cluster" => cluster = settings::cluster(v, &at, &mut errs),
            "#node" => node = settings::node_name(v, &at, &mut errs),
            "#admin" => admin = admin::admin(v, &at, &mut errs),
            "#threads" => threads = settings::threads(v, &at, &mut errs),
            "#startup" => startup = Some(settings::startup(v, &at, &mut errs)),
            "#license" => license_present = true,
            k if k.starts_with('#') => errs.push(at.invalid(
                "unknown key (the `#` settings are #services, #license, #router, #restart, #cluster, #node, #admin, #threads, #startup)",
            )),
            k if is_module_key(k) => match ModuleRef::parse(k) {
                Err(m) => errs.push(at.invalid(m)),
                Ok(m) if m.kind == ModuleKind::Lua && m.stage_id.is_some() => {
                    lua::check_stage_value(v, &at, &top, &mut errs)
                }
                Ok(m) if m.kind == ModuleKind::Lua => match v {
                    OwnedValue::Object(o) => lua::check_object(o, &at, &mut errs),
                    other => errs.push(at.type_err("an object (the Lua module block)", other)),
                },
                Ok(m) => modules::check_block(m.kind, v, &at, &mut errs),
            },
            k if referenced.contains(k) => {
                // A non-object is reported where it is referenced.
                if let OwnedValue::Object(o) = v {
                    lua::check_object(o, &at, &mut errs);
                }
            }
            _ => errs.push(at.invalid(
                "unknown key: not a `#` setting, not a module block (`NAME.so...`, `=route...`, `=ticket...`) and not merged by any `lua.so+ID` array",
            )),
        }
    }

    let startup = match startup {
        Some(s) => s,
        None => {
            if !some_unparsed {
                let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
                errs.push(ConfigError::MissingStartup {
                    name: names.join(":"),
                });
            }
            Startup::Array(Vec::new())
        }
    };

    // Assemble each Lua stage once, as the Lua host will, to catch errors that only appear
    // after merging (a main-script entry of the wrong type, a referenced file that is bad).
    let mut seen = HashSet::new();
    for m in startup.modules() {
        if m.kind == ModuleKind::Lua && seen.insert(&m.entry) {
            lua::resolve(&top, &origins, m, &mut errs);
        }
    }

    if !errs.is_empty() {
        // Blocks are checked as written and again merged; report each problem once.
        let mut shown = HashSet::new();
        errs.retain(|e| shown.insert(e.to_string()));
        return Err(errs);
    }
    Ok(Config {
        services,
        router,
        restart,
        cluster,
        node,
        admin,
        threads,
        startup,
        license_present,
        raw: OwnedValue::Object(Box::new(top)),
        order,
        origins,
    })
}

impl Config {
    /// The configuration of one Lua stage (spec 9.2 lookup; see the `lua` module).
    pub fn lua_stage(&self, m: &ModuleRef) -> Result<LuaStageConfig, ConfigError> {
        if m.kind != ModuleKind::Lua {
            return Err(ConfigError::NotLua {
                entry: m.entry.clone(),
            });
        }
        let empty = Object::default();
        let top = match &self.raw {
            OwnedValue::Object(o) => o.as_ref(),
            _ => &empty,
        };
        let mut errs = Vec::new();
        let out = lua::resolve(top, &self.origins, m, &mut errs);
        match errs.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The merged configuration as one JSON document, top-level keys in the order they were
    /// first defined: what the supervisor hands its children (`-c FILE`), so every process
    /// of the node runs exactly what the supervisor loaded, whatever its sources were.
    pub fn to_json(&self) -> String {
        let top = match &self.raw {
            OwnedValue::Object(o) => o.as_ref(),
            _ => return "{}".into(),
        };
        let mut out = String::from("{");
        for key in &self.order {
            let Some(v) = top.get(key.as_str()) else {
                continue;
            };
            if out.len() > 1 {
                out.push(',');
            }
            let key = OwnedValue::String(key.clone());
            out.push_str(&simd_json::to_string(&key).unwrap_or_default());
            out.push(':');
            out.push_str(&simd_json::to_string(v).unwrap_or_else(|_| "null".into()));
        }
        out.push('}');
        out
    }

    /// The processes of `#startup` that run at least one stage of this build (a Lua stage or
    /// a service stage such as index.so; the others host only modules this build does not
    /// run), with their process numbers.
    pub fn lua_processes(&self) -> Vec<(u32, &[ModuleRef])> {
        self.startup
            .processes()
            .into_iter()
            .filter(|(_, mods)| mods.iter().any(|m| m.kind.is_hosted()))
            .collect()
    }

    /// The configuration of a `lotus.so` stage: its block (`config[entry]`, else
    /// `config[module]`), which it cannot do without (accounts, addresses).
    pub fn lotus_config(&self, m: &ModuleRef) -> Result<LotusConfig, Vec<ConfigError>> {
        let key = [&m.entry, &m.module]
            .into_iter()
            .find(|k| self.origins.contains_key(k.as_str()))
            .cloned()
            .unwrap_or_else(|| m.entry.clone());
        let source = self
            .origins
            .get(&key)
            .cloned()
            .unwrap_or_else(|| "#startup".into());
        let at = At::new(source, key);
        let Some(block) = self.module_block(m) else {
            return Err(vec![at.invalid(
                "a lotus.so stage needs its block (`listen` or `compat`, and `accounts`; docs/config.md)",
            )]);
        };
        let mut errs = Vec::new();
        let cfg = lotus::parse(block, &at, &mut errs);
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(errs)
        }
    }

    /// The configuration block of a non-Lua module (services.md §0.1): `config[entry]`, else
    /// `config[module]` (the entry without `+suffix`), else none (JSON null).
    pub fn module_block(&self, m: &ModuleRef) -> Option<&OwnedValue> {
        let OwnedValue::Object(top) = &self.raw else {
            return None;
        };
        top.get(m.entry.as_str())
            .or_else(|| top.get(m.module.as_str()))
    }

    /// More than one process runs Lua stages: the node is a supervisor plus one child per
    /// such process (services.md 6.1). Otherwise one process runs everything, as before.
    pub fn multi_process(&self) -> bool {
        matches!(self.startup, Startup::Array(_)) && self.lua_processes().len() > 1
    }

    /// `#cluster` names NATS servers: the node joins the cluster (`cluster`).
    pub fn clustered(&self) -> bool {
        !settings::nats_servers(&self.cluster).is_empty()
    }

    /// Configured things this build accepts but does not act on yet, for one info line at boot
    /// so that nobody wonders why, say, `#cluster` has no effect.
    pub fn inactive_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        let top = match &self.raw {
            OwnedValue::Object(o) => o.as_ref(),
            _ => return out,
        };
        for key in &self.order {
            let Some(v) = top.get(key.as_str()) else {
                continue;
            };
            match key.as_str() {
                // Every listener already shares its port (between cores and processes) with
                // SO_REUSEPORT. `#router` drives the heartbeats between the processes of a
                // multi-process node; with one process there is nothing to register.
                "#router" if self.multi_process() || self.clustered() => {}
                "#restart" if self.multi_process() => {}
                "#restart" => out.push(key.clone()),
                "#cluster" | "#node" if self.clustered() => {}
                "#cluster" | "#node" | "#license" | "#router" | "#services" => {
                    out.push(key.clone())
                }
                k if k.starts_with('#') => {}
                k if is_module_key(k) => match ModuleRef::parse(k).map(|m| m.kind) {
                    Ok(ModuleKind::Lua) | Err(_) => lua_inactive(key, v, &mut out),
                    Ok(kind) if kind.is_hosted() => {}
                    Ok(kind) => out.push(format!("`{key}` ({})", kind.name())),
                },
                _ => lua_inactive(key, v, &mut out),
            }
        }
        let mut seen = HashSet::new();
        for m in self.startup.modules() {
            if !m.kind.is_hosted() && seen.insert(&m.entry) {
                out.push(format!("`{}` in #startup ({})", m.entry, m.kind.name()));
            }
        }
        out
    }
}

/// `%cluster` inside a Lua block (or the objects of a stage-block array).
fn lua_inactive(path: &str, v: &OwnedValue, out: &mut Vec<String>) {
    match v {
        OwnedValue::Object(o) if o.contains_key("%cluster") => {
            out.push(format!("`{path}.%cluster` (script-level cluster)"));
        }
        OwnedValue::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                if let OwnedValue::Object(_) = x {
                    lua_inactive(&format!("{path}[{i}]"), x, out);
                }
            }
        }
        _ => {}
    }
}

/// Spec 9.2 / services.md 0.1: shared libraries contain `.so`, built-ins start with `=`.
fn is_module_key(key: &str) -> bool {
    key.contains(".so") || key.starts_with('=')
}

/// Parses one source text into a JSON value, reporting the byte offset of a syntax error.
pub(crate) fn parse_text(name: &str, text: &str) -> Result<OwnedValue, ConfigError> {
    // simd-json parses in place (it unescapes strings into the buffer), hence the copy.
    let mut bytes = text.as_bytes().to_vec();
    simd_json::to_owned_value(&mut bytes).map_err(|e| {
        let offset = e.index();
        let (line, column) = error::line_column(text, offset);
        ConfigError::Json {
            name: name.to_string(),
            offset,
            line,
            column,
            message: error::json_message(&e),
        }
    })
}

/// `No such file or directory` rather than `No such file or directory (os error 2)`: the
/// number adds nothing for the person reading the message.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
