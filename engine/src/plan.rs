//! The runtime plan: what this process runs, decided once from the configuration before any
//! core starts — its Lua stages (entry, main script, main core), its service stages
//! (index.so, `=ticket`, `=route`, curl.so with their parsed configuration) and what every
//! Lua state is built with (`%package`, `%preload`, `%reflush`, `%ffi`, `%memory`, `%cpu`, the
//! scripts compiled into the binary). Plain data: the node layer reads it to start cores and
//! service shards, the script layer to build Lua states; neither builds it.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, LotusConfig, ModuleKind, ModuleRef, PackageEntry};
use crate::service::http::HttpConfig;
use crate::service::index::{IndexConfig, SyncPolicy};
use crate::service::route::RouteConfig;
use crate::service::ticket::TicketConfig;

/// Scripts compiled into the binary, by path under `@builtin/`.
pub type Embedded = &'static [(&'static str, &'static str)];

/// What this process runs: its Lua stages and service stages, and what every core needs to
/// build its Lua state. Built once from the configuration, shared read-only by all cores.
pub struct Plan {
    pub package: Vec<PackageEntry>,
    pub preload: Vec<String>,
    pub reflush: Duration,
    /// `%ffi`: take the packet path through LuaJIT's FFI.
    pub ffi: bool,
    /// `%memory`: the most bytes one Lua state may hold; an allocation past it fails as a Lua
    /// error ("not enough memory") in the callback that made it.
    pub memory: Option<usize>,
    /// `%cpu`: the CPU budget of one Lua callback in msec (0 = none), `node::budget`.
    pub cpu_ms: u64,
    /// `%spin`: how long a core polls for work after its last task before it parks.
    pub spin: Duration,
    /// `%blocking`: whether a serving core makes a blocking call a script asks for
    /// (`node::blocking`).
    pub blocking: crate::config::BlockingPolicy,
    pub stages: Vec<LuaStage>,
    /// The service stages of this process (index.so), numbered after the Lua stages.
    pub services: Vec<ServiceStage>,
    /// `arg[0]` is the program, then the extra command-line arguments.
    pub args: Vec<String>,
    pub embedded: Embedded,
}

#[cfg(test)]
impl Plan {
    /// A plan with no package, stage or service: a test's node sets what it needs on it.
    pub fn empty() -> Plan {
        Plan {
            package: Vec::new(),
            preload: Vec::new(),
            reflush: Duration::from_secs(1),
            ffi: true,
            memory: None,
            cpu_ms: 0,
            spin: Duration::ZERO,
            blocking: crate::config::BlockingPolicy::Refuse,
            stages: Vec::new(),
            services: Vec::new(),
            args: Vec::new(),
            embedded: &[],
        }
    }
}

/// A Lua stage of `#startup` and the core its main script runs on.
#[derive(Debug, Clone)]
pub struct LuaStage {
    /// The stage id (`stage` of `lua.so+stage`); empty when the entry names none.
    pub id: String,
    pub entry: String,
    pub main_script: String,
    /// The stage's merged configuration block as JSON (for `process["$"]`).
    pub block_json: String,
    pub main_core: usize,
}

/// A built-in service stage of `#startup` (no Lua). index.so and `=ticket` run one shard on
/// every core of the process (`service::shard`); `=route` lives on its main core, which is
/// also where messages from other processes arrive for all three.
#[derive(Debug, Clone)]
pub struct ServiceStage {
    pub id: String,
    pub entry: String,
    pub main_core: usize,
    pub kind: ServiceKind,
    /// `=ticket`: requests tracked by all its shards, against its service-wide capacity.
    pub ticket_tracked: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug, Clone)]
pub enum ServiceKind {
    Index(IndexConfig),
    Ticket(TicketConfig),
    Route(RouteConfig),
    Http(HttpConfig),
    /// lotus.so: states and channels on every core, its own listeners (spec/lotus.md).
    Lotus(LotusConfig),
}

impl ServiceKind {
    /// The stage kind the directory records for this service.
    pub fn stage_kind(&self) -> StageKind {
        match self {
            ServiceKind::Index(_) => StageKind::Index,
            ServiceKind::Ticket(_) => StageKind::Ticket,
            ServiceKind::Route(_) => StageKind::Route,
            ServiceKind::Http(_) => StageKind::Http,
            ServiceKind::Lotus(_) => StageKind::Lotus,
        }
    }

    /// Whether the service runs one shard per core (named indexes and categories spread over
    /// the cores by name) rather than one instance on its main core.
    pub fn is_sharded(&self) -> bool {
        matches!(
            self,
            ServiceKind::Index(_) | ServiceKind::Ticket(_) | ServiceKind::Lotus(_)
        )
    }
}

/// What runs a stage: a Lua main script, or a built-in service that answers messages without
/// handlers, its state sharded over the cores (index.so, `=ticket`) or on its main core
/// (`=route`); see `service::shard`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    Lua,
    Index,
    Ticket,
    Route,
    /// curl.so: served by whichever core the message reaches (no state between requests).
    Http,
    /// lotus.so: reached by its own clients over its listeners, not by stage messages.
    Lotus,
}

impl StageKind {
    /// The name the prelude sees (`E.stage_info`): nil for Lua stages.
    pub fn service_name(self) -> Option<&'static str> {
        match self {
            StageKind::Lua => None,
            StageKind::Index => Some("index"),
            StageKind::Ticket => Some("ticket"),
            StageKind::Route => Some("route"),
            StageKind::Http => Some("curl"),
            StageKind::Lotus => Some("lotus"),
        }
    }
}

/// The plan for `modules` (all of `#startup` in a single-process node, one process entry in
/// a child): its Lua stages, each run once in this process with main core `i % cores`, then
/// its service stages, whose main cores continue the rotation. Errors name the config key.
pub fn build(
    config: &Config,
    modules: Vec<&ModuleRef>,
    cores: usize,
    args: Vec<String>,
    embedded: Embedded,
) -> Result<Plan, Vec<String>> {
    let mut stages: Vec<LuaStage> = Vec::new();
    let mut first = None;
    let mut errors = Vec::new();
    let hosted: Vec<&ModuleRef> = modules.clone();
    for module in modules
        .into_iter()
        .filter(|m| matches!(m.kind, ModuleKind::Lua))
    {
        if stages.iter().any(|s| s.entry == module.entry) {
            tracing::info!(
                "`{}` is listed more than once; it runs once per process",
                module.entry
            );
            continue;
        }
        let stage = match config.lua_stage(module) {
            Ok(stage) => stage,
            Err(err) => {
                errors.push(err.to_string());
                continue;
            }
        };
        let Some(main_script) = stage.main_script.clone() else {
            tracing::warn!(
                "`{}` names no main script; it has no handlers",
                module.entry
            );
            continue;
        };
        stages.push(LuaStage {
            id: module.stage_id.clone().unwrap_or_default(),
            entry: module.entry.clone(),
            main_script,
            block_json: simd_json::to_string(&stage.block).unwrap_or_else(|_| "{}".into()),
            main_core: stages.len() % cores,
        });
        first.get_or_insert(stage);
    }
    // Service stages come after the Lua stages (their directory indexes follow), and their
    // main cores continue the same rotation.
    let mut services: Vec<ServiceStage> = Vec::new();
    for module in &hosted {
        if services.iter().any(|s| s.entry == module.entry) {
            continue;
        }
        // services.md §0.1: without `+suffix` the sign is the service's default name.
        let (sign, kind) = match module.kind {
            ModuleKind::Index => (
                "index",
                ServiceKind::Index(index_config(config.module_block(module))),
            ),
            ModuleKind::Ticket => (
                "ticket",
                ServiceKind::Ticket(TicketConfig::from_config(config, module)),
            ),
            ModuleKind::Route => (
                "route",
                ServiceKind::Route(RouteConfig::from_config(config, module)),
            ),
            ModuleKind::Curl => (
                "curl",
                ServiceKind::Http(HttpConfig::from_config(config, module)),
            ),
            ModuleKind::Lotus => match config.lotus_config(module) {
                Ok(cfg) => ("lotus", ServiceKind::Lotus(cfg)),
                Err(errs) => {
                    errors.extend(errs.iter().map(ToString::to_string));
                    continue;
                }
            },
            _ => continue,
        };
        services.push(ServiceStage {
            id: module.stage_id.clone().unwrap_or_else(|| sign.into()),
            entry: module.entry.clone(),
            main_core: (stages.len() + services.len()) % cores,
            kind,
            ticket_tracked: Default::default(),
        });
    }
    if services
        .iter()
        .filter(|s| matches!(s.kind, ServiceKind::Lotus(_)))
        .count()
        > 1
    {
        errors.push(
            "#startup: a process runs at most one lotus.so stage (put a second one in another process entry)".into(),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let Some(first) = first else {
        if services.is_empty() {
            tracing::warn!("#startup has no Lua stage with a main script: nothing will run");
        }
        return Ok(Plan {
            package: Vec::new(),
            preload: Vec::new(),
            reflush: Duration::from_secs(1),
            ffi: true,
            memory: None,
            cpu_ms: crate::config::DEFAULT_CPU_MS,
            spin: Duration::ZERO,
            blocking: crate::config::BlockingPolicy::Refuse,
            stages,
            services,
            args,
            embedded,
        });
    };
    Ok(Plan {
        package: first.package,
        preload: first.preload,
        reflush: Duration::from_millis(first.reflush_ms),
        ffi: first.ffi,
        memory: first.memory_mib.map(|mib| (mib as usize) << 20),
        cpu_ms: first.cpu_ms,
        spin: Duration::from_micros(first.spin_us),
        blocking: first.blocking,
        stages,
        services,
        args,
        embedded,
    })
}

/// services.md §2.1: `"dir/"` or `["dir/", max_key, nelem]` (the element count sized the
/// original's pages; this engine has none, so it is accepted and ignored). No block at all:
/// `index/` in the working directory, as in the original's shipped configuration.
fn index_config(block: Option<&simd_json::OwnedValue>) -> IndexConfig {
    use simd_json::prelude::*;
    let mut cfg = IndexConfig::new("index/");
    match block {
        Some(v) if v.as_str().is_some() => cfg.path = v.as_str().unwrap_or_default().into(),
        Some(v) if v.as_array().is_some() => {
            let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
            if let Some(p) = items.first().and_then(|p| p.as_str()) {
                cfg.path = p.into();
            }
            if let Some(n) = items.get(1).and_then(|n| n.as_u64()) {
                cfg.max_key = n as usize;
            }
        }
        // This build's object form (checked by `config::modules`).
        Some(v) if v.is_object() => {
            if let Some(p) = v.get("path").and_then(|p| p.as_str()) {
                cfg.path = p.into();
            }
            if let Some(n) = v.get("keysize").and_then(|n| n.as_u64()) {
                cfg.max_key = n as usize;
            }
            if let Some(ms) = v.get("sync").and_then(|s| s.as_u64()) {
                cfg.sync = SyncPolicy::Interval(Duration::from_millis(ms));
            }
            if let Some(bytes) = v.get("snapshot").and_then(|s| s.as_u64()) {
                cfg.snapshot_log_bytes = bytes;
            }
        }
        _ => {}
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(json: &str) -> simd_json::OwnedValue {
        simd_json::to_owned_value(&mut json.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn index_blocks_in_every_form() {
        let cfg = index_config(Some(&block(r#""score/""#)));
        assert_eq!(
            (cfg.path.as_str(), cfg.sync),
            ("score/", SyncPolicy::Always)
        );
        let cfg = index_config(Some(&block(r#"["rank/", 64, 512]"#)));
        assert_eq!((cfg.path.as_str(), cfg.max_key), ("rank/", 64));
        let cfg = index_config(Some(&block(
            r#"{"path": "p/", "keysize": 32, "sync": 250, "snapshot": 4096}"#,
        )));
        assert_eq!((cfg.path.as_str(), cfg.max_key), ("p/", 32));
        assert_eq!(cfg.snapshot_log_bytes, 4096);
        assert_eq!(cfg.sync, SyncPolicy::Interval(Duration::from_millis(250)));
        let cfg = index_config(Some(&block(r#"{"sync": "always"}"#)));
        assert_eq!(
            (cfg.path.as_str(), cfg.sync),
            ("index/", SyncPolicy::Always)
        );
        assert_eq!(cfg.snapshot_log_bytes, 64 << 20);
        assert_eq!(index_config(None).path, "index/");
    }
}
