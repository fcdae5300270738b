//! A core's LuaJIT state: built with the standard libraries, the engine's natives (handed to
//! the prelude only, never to user code), the prelude that builds `broker`/`stage`/`logger`
//! on them and seals the sandbox, then the `%preload` scripts. [`Host`] implements the
//! node's `ScriptHost`: its methods are the only way a core enters Lua, and each goes
//! through a prelude hook that catches and logs script errors, so nothing a script does can
//! unwind into the core. Pool threads build the same state (without a core) for
//! `thread.new` functions.

use std::cell::{RefCell, UnsafeCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use mlua::{Function, LightUserData, Lua, LuaOptions, StdLib, Table, Value};

use super::bson::{self, BsonError, DecodeOptions};
use super::budget::{within, CoreBudget};
use super::loader::ScriptLoader;
use super::pool::Pool;
use super::{logger, lotus, natives};
use crate::codec::framing::Framing;
use crate::net::conn::Conn;
use crate::net::id::ConnId;
use crate::net::sockaddr::{self, SockAddr};
use crate::node::host::{HostFactory, ScriptHost};
use crate::node::post::PostKind;
use crate::node::reload::Batch;
use crate::node::stats::HostStats;
use crate::node::Node;
use crate::plan::{LuaStage, ServiceKind, ServiceStage};
use stage_ffi::{FfiContext, PacketView};

/// The prelude, in load order; each part is a chunk called with `(E, P)`.
const PRELUDE: &[(&str, &str)] = &[
    (
        "@prelude/core.lua",
        include_str!("../../lua/prelude/core.lua"),
    ),
    (
        "@prelude/broker.lua",
        include_str!("../../lua/prelude/broker.lua"),
    ),
    (
        "@prelude/stage.lua",
        include_str!("../../lua/prelude/stage.lua"),
    ),
    (
        "@prelude/messaging.lua",
        include_str!("../../lua/prelude/messaging.lua"),
    ),
    (
        "@prelude/thread.lua",
        include_str!("../../lua/prelude/thread.lua"),
    ),
    (
        "@prelude/shared.lua",
        include_str!("../../lua/prelude/shared.lua"),
    ),
    (
        "@prelude/fastpath.lua",
        include_str!("../../lua/prelude/fastpath.lua"),
    ),
    (
        "@prelude/odbc.lua",
        include_str!("../../lua/prelude/odbc.lua"),
    ),
];

struct Hooks {
    accept: Function,
    receive: Function,
    /// A UDP datagram: `(endpoint, stage, data, addr)`.
    datagram: Function,
    close: Function,
    connected: Function,
    boot: Function,
    idle: Function,
    post: Function,
    thread: Function,
    /// A reload changed these script names (`stage.require` forgets them).
    reloaded: Function,
    /// The prelude's counters for a scrape: `(errors, routed, unrouted)`.
    stats: Function,
    /// The FFI receive path (`None` when `%ffi` is off).
    receive_view: Option<Function>,
}

pub struct Host {
    pub lua: Lua,
    hooks: Hooks,
    /// Where the FFI receive path finds the frame being delivered: the prelude casts this
    /// address once, so handing a frame to Lua allocates nothing.
    view: Box<UnsafeCell<PacketView>>,
    /// The `ctx` of every FFI call (stage-ffi): the connection whose callback is running,
    /// so its replies reach it without a lookup.
    ffi_ctx: Box<UnsafeCell<FfiContext>>,
    /// The idle function each booted stage returned, by stage index.
    idle: RefCell<HashMap<usize, Function>>,
    /// The CPU budget of this core's callbacks (`%cpu`); `None` on pool threads and when off.
    budget: Option<CoreBudget>,
    /// This core's part of the process's lotus.so stage, if it runs one.
    lotus: RefCell<Option<Rc<lotus::server::Server>>>,
}

impl Drop for Host {
    fn drop(&mut self) {
        // Before the state closes: the budget thread must never interrupt a closed state.
        self.budget.take();
    }
}

/// The script hosts of a process: each core gets a [`Host`]; all of them (and the pool
/// threads' states) share one blocking pool for `thread.new`.
pub fn factory() -> HostFactory {
    let pool = Arc::new(Pool::default());
    Arc::new(move |node: &Arc<Node>, core: usize| {
        let host = Host::new(node, &pool, Some(core))?;
        // On the core, in its executor: the core reads its own NATS subscription there.
        crate::cluster::start_core(node.clone(), core);
        Ok(Box::new(host) as Box<dyn ScriptHost>)
    })
}

impl Host {
    /// A Lua state for core `core`, or for a pool thread (`None`).
    pub fn new(node: &Arc<Node>, pool: &Arc<Pool>, core: Option<usize>) -> anyhow::Result<Host> {
        let settings = &node.plan;
        // SAFETY: the unsafe libraries (debug, ffi, jit) are loaded for the prelude only; the
        // prelude removes them from everything user scripts can reach before any user code runs.
        let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL, LuaOptions::default()) };
        lua.set_app_data(natives::Runtime {
            node: node.clone(),
            pool: pool.clone(),
        });
        lua.set_app_data(ScriptLoader::new(super::reload::start(node)));
        let view = Box::new(UnsafeCell::new(PacketView {
            ptr: std::ptr::null(),
            len: 0,
        }));
        let ffi_ctx = Box::new(UnsafeCell::new(FfiContext {
            conn: std::ptr::null(),
            id: 0,
        }));
        let hooks = install_prelude(&lua, view.get(), ffi_ctx.get())
            .map_err(|e| anyhow::anyhow!("prelude failed: {e}"))?;
        // The limit counts from here, once the platform itself is loaded: what it allows is
        // the scripts' room, however large the prelude is.
        if let Some(limit) = settings.memory {
            let limit = limit.saturating_add(lua.used_memory());
            if let Err(err) = lua.set_memory_limit(limit) {
                tracing::warn!("%memory cannot be enforced in this build: {err}");
            }
        }
        let mut host = Host {
            lua,
            hooks,
            view,
            ffi_ctx,
            idle: RefCell::new(HashMap::new()),
            budget: None,
            lotus: RefCell::new(None),
        };
        host.run_preload(&settings.preload, core);
        // Only now: `%preload` runs unbudgeted, like the main scripts at boot.
        if let Some(core) = core {
            host.budget = CoreBudget::attach(&host.lua, node, core);
        }
        Ok(host)
    }

    /// Runs the `%preload` scripts: each entry is a file or a directory whose `*.lua` files
    /// (recursively) run in lexicographic order. A failing script is logged and skipped.
    fn run_preload(&self, entries: &[String], core: Option<usize>) {
        for entry in entries {
            let mut files = Vec::new();
            collect_lua_files(std::path::Path::new(entry), &mut files);
            if files.is_empty() && core == Some(0) {
                tracing::warn!("%preload entry `{entry}` has no .lua files");
            }
            files.sort();
            for file in files {
                let result = std::fs::read(&file)
                    .map_err(mlua::Error::external)
                    .and_then(|src| {
                        let name = format!("@{}", file.display());
                        self.lua.load(&src[..]).set_name(name).exec()
                    });
                if let Err(err) = result {
                    tracing::warn!("preload {} failed: {err}", file.display());
                }
            }
        }
    }

    /// Runs a `thread.new` function on this pool thread's state, on the scripts' committed
    /// version (a pool thread takes part in no reload round: it catches up here).
    pub fn dispatch_thread(&self, id: u64, payload: &[u8]) {
        let changed = self
            .lua
            .app_data_ref::<ScriptLoader>()
            .and_then(|loader| loader.catch_up());
        if let Some(names) = changed {
            self.forget_required(names);
        }
        let result = self
            .lua
            .create_string(payload)
            .and_then(|p| self.hooks.thread.call::<()>((id, p)));
        if let Err(err) = result {
            tracing::warn!(thread = id, "thread dispatch failed: {err}");
        }
    }

    /// Tells the prelude which script names changed, so `stage.require` runs them again.
    fn forget_required(&self, names: Vec<String>) {
        if let Err(err) = self.hooks.reloaded.call::<()>(names) {
            tracing::warn!("reload hook failed: {err}");
        }
    }

    /// Runs `f` with `conn` as the FFI context: the prelude's commits to it during `f` need
    /// no lookup. The context is cleared afterwards (a later commit, from a timer say, looks
    /// the connection up), and restored when calls nest.
    fn with_ffi_conn<R>(&self, conn: &Rc<Conn>, f: impl FnOnce() -> R) -> R {
        let ctx = self.ffi_ctx.get();
        // SAFETY: the context is read only by this state's FFI calls, on this thread, while
        // `conn` (kept alive by the caller's Rc) is alive; nothing else writes it.
        let saved = unsafe {
            std::ptr::replace(
                ctx,
                FfiContext {
                    conn: Rc::as_ptr(conn).cast(),
                    id: conn.id.raw(),
                },
            )
        };
        let result = f();
        // SAFETY: as above.
        unsafe { *ctx = saved };
        result
    }

    /// Decodes one frame into the receive callback's `data` and calls it.
    fn receive_frame(&self, id: ConnId, frame: Bytes, framing: Framing) -> Result<(), String> {
        let id = id.raw();
        if let Some(view) = &self.hooks.receive_view {
            // The prelude reads the frame in place; it declines what it does not handle
            // exactly like the Rust codec, which then takes over below.
            // SAFETY: the view is only read by this state's prelude during the call below,
            // while `frame` is alive; nothing else writes it (one thread).
            unsafe {
                *self.view.get() = PacketView {
                    ptr: frame.as_ptr(),
                    len: frame.len(),
                }
            };
            let packet = framing == Framing::Packet;
            // The length goes as an argument too: the hook reads it before its decoding loop,
            // where an FFI read would run interpreted (a boxed cdata per frame).
            match view.call::<bool>((id, packet, frame.len())) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(socket = id, "receive dispatch failed: {err}");
                    return Ok(());
                }
            }
        }
        let data = match framing {
            Framing::Packet => {
                match bson::decode_first(&self.lua, &frame, &DecodeOptions::default()) {
                    Ok(v) => v,
                    Err(err) => {
                        // A document over a BSON limit was counted and logged (at most once a
                        // second) by `bson_limits`; any other bad BSON is logged here.
                        if !matches!(
                            err,
                            BsonError::TooDeep { .. } | BsonError::TooManyElements { .. }
                        ) {
                            tracing::warn!(socket = id, "closing connection: {err}");
                        }
                        return Err(err.to_string());
                    }
                }
            }
            // Be16/Be32 frames go to lotus before this point (`receive`).
            Framing::Text | Framing::Raw | Framing::Be16 | Framing::Be32 => {
                match self.lua.create_string(&frame[..]) {
                    Ok(s) => Value::String(s),
                    Err(err) => {
                        tracing::warn!(socket = id, "receive dispatch failed: {err}");
                        return Ok(());
                    }
                }
            }
        };
        drop(frame);
        if let Err(err) = self.hooks.receive.call::<()>((id, data)) {
            tracing::warn!(socket = id, "receive dispatch failed: {err}");
        }
        Ok(())
    }

    fn addr_string(&self, addr: SocketAddr) -> mlua::String {
        self.lua
            .create_string(sockaddr::to_binary(&SockAddr::Inet(addr)))
            .expect("small string")
    }
}

/// The lotus wire of a connection, by its framing (only lotus listeners use these).
fn lotus_wire(framing: Framing) -> Option<lotus::posts::Wire> {
    match framing {
        Framing::Be32 => Some(lotus::posts::Wire::V1),
        Framing::Be16 => Some(lotus::posts::Wire::Compat),
        _ => None,
    }
}

impl Host {
    fn lotus(&self) -> Option<Rc<lotus::server::Server>> {
        self.lotus.borrow().clone()
    }
}

impl ScriptHost for Host {
    fn accept(&self, listener: u64, stage: Option<usize>, conn: &Rc<Conn>) -> bool {
        if let Some(wire) = lotus_wire(conn.spec.framing) {
            let Some(lotus) = self.lotus() else {
                return false;
            };
            lotus.accept(conn, wire);
            return true;
        }
        let peer = conn.peer.get().map(|a| self.addr_string(a));
        let result = within(&self.budget, || {
            self.with_ffi_conn(conn, || {
                self.hooks
                    .accept
                    .call::<bool>((listener, conn.id.raw(), peer, stage))
            })
        });
        match result {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(socket = %conn.id, "accept dispatch failed: {err}");
                false
            }
        }
    }

    fn receive(&self, conn: &Rc<Conn>, frame: Bytes) -> Result<(), String> {
        if lotus_wire(conn.spec.framing).is_some() {
            return match self.lotus() {
                Some(lotus) => within(&self.budget, || lotus.receive(conn, &frame)),
                None => Err("no lotus stage on this core".into()),
            };
        }
        within(&self.budget, || {
            self.with_ffi_conn(conn, || {
                self.receive_frame(conn.id, frame, conn.spec.framing)
            })
        })
    }

    /// A datagram that is not valid BSON is dropped; the endpoint goes on.
    fn datagram(
        &self,
        endpoint: u64,
        stage: Option<usize>,
        message: &[u8],
        framing: Framing,
        from: SocketAddr,
    ) {
        let data = match framing {
            Framing::Packet => {
                match bson::decode_first(&self.lua, message, &DecodeOptions::default()) {
                    Ok(v) => v,
                    Err(err) => {
                        tracing::debug!(listener = endpoint, %from, "udp datagram dropped: {err}");
                        return;
                    }
                }
            }
            // No UDP endpoint uses the lotus framings.
            Framing::Text | Framing::Raw | Framing::Be16 | Framing::Be32 => {
                match self.lua.create_string(message) {
                    Ok(s) => Value::String(s),
                    Err(err) => {
                        tracing::warn!(listener = endpoint, "udp dispatch failed: {err}");
                        return;
                    }
                }
            }
        };
        let addr = self.addr_string(from);
        let result = within(&self.budget, || {
            self.hooks
                .datagram
                .call::<()>((endpoint, stage, data, addr))
        });
        if let Err(err) = result {
            tracing::warn!(listener = endpoint, "udp dispatch failed: {err}");
        }
    }

    fn close(&self, conn: &Conn, errno: i32) {
        if self.lotus().is_some_and(|lotus| lotus.close(conn.id)) {
            return;
        }
        // The peer goes along: a connection's socket object does not keep it while open
        // (idle memory), and after this the connection is gone from the core's map.
        let peer = conn.peer.get().map(|a| self.addr_string(a));
        let result = within(&self.budget, || {
            self.hooks.close.call::<()>((conn.id.raw(), errno, peer))
        });
        if let Err(err) = result {
            tracing::warn!(socket = %conn.id, "close dispatch failed: {err}");
        }
    }

    fn connected(&self, conn: &Rc<Conn>) {
        let peer = conn.peer.get().map(|a| self.addr_string(a));
        let result = within(&self.budget, || {
            self.with_ffi_conn(conn, || {
                self.hooks.connected.call::<()>((conn.id.raw(), peer))
            })
        });
        if let Err(err) = result {
            tracing::warn!(socket = %conn.id, "connect dispatch failed: {err}");
        }
    }

    fn post(&self, kind: PostKind, payload: &[u8]) {
        if kind == PostKind::Lotus {
            match self.lotus() {
                Some(lotus) => within(&self.budget, || lotus.post(payload)),
                None => tracing::warn!("lotus work for a core without lotus dropped"),
            }
            return;
        }
        let result = within(&self.budget, || {
            self.lua
                .create_string(payload)
                .and_then(|p| self.hooks.post.call::<()>((kind.name(), p)))
        });
        if let Err(err) = result {
            tracing::warn!("{kind} dispatch failed: {err}");
        }
    }

    fn boot(&self, index: usize, stage: &LuaStage) -> bool {
        let result = (|| {
            let arg = self.lua.create_table()?;
            let node = natives::node(&self.lua)?;
            for (i, a) in node.plan.args.iter().enumerate() {
                arg.raw_set(i as i64, a.as_str())?;
            }
            self.hooks.boot.call::<Option<Function>>((
                index,
                stage.entry.as_str(),
                stage.main_script.as_str(),
                arg,
            ))
        })();
        match result {
            Ok(Some(idle)) => {
                self.idle.borrow_mut().insert(index, idle);
                true
            }
            Ok(None) => false,
            Err(err) => {
                tracing::warn!(stage = %stage.entry, "boot failed: {err}");
                false
            }
        }
    }

    fn boot_service(&self, _index: usize, service: &ServiceStage) {
        let ServiceKind::Lotus(cfg) = &service.kind else {
            return;
        };
        let Some(core) = crate::node::runtime::try_current() else {
            return;
        };
        let server = lotus::server::Server::new(
            &self.lua,
            &service.entry,
            cfg.clone(),
            core.index,
            core.node.cores(),
            lotus::store::get_or_start(&service.entry, cfg, core.node.clone()),
        );
        *self.lotus.borrow_mut() = Some(server);
        if service.main_core == core.index {
            for err in lotus::listen::open(&core, &service.entry, cfg) {
                tracing::error!("{err}");
            }
            core.after_script();
        }
    }

    fn stop(&self) {
        if let Some(lotus) = self.lotus() {
            lotus.stop();
        }
    }

    fn reload(&self, batch: &Batch) {
        if let Some(loader) = self.lua.app_data_ref::<ScriptLoader>() {
            loader.install(batch);
        }
        self.forget_required(batch.names());
    }

    fn stats(&self) -> HostStats {
        let by_policy = |t: &Table| -> Vec<(String, u64)> {
            let mut v: Vec<(String, u64)> = t
                .pairs::<String, f64>()
                .filter_map(Result::ok)
                .map(|(k, n)| (k, n as u64))
                .collect();
            v.sort();
            v
        };
        let (errors, routed, unrouted) = self
            .hooks
            .stats
            .call::<(f64, Table, Table)>(())
            .map(|(e, r, u)| (e as u64, by_policy(&r), by_policy(&u)))
            .unwrap_or_default();
        let scripts = self
            .lua
            .app_data_ref::<ScriptLoader>()
            .map(|l| l.versions())
            .unwrap_or_default();
        HostStats {
            lua_memory: self.lua.used_memory() as u64,
            lua_errors: errors,
            routed,
            unrouted,
            scripts,
        }
    }

    fn idle(&self, stage: usize) -> Option<f64> {
        let idle = self.idle.borrow().get(&stage).cloned()?;
        let next = match within(&self.budget, || {
            self.hooks.idle.call::<Option<f64>>((stage, idle))
        }) {
            Ok(next) => next,
            Err(err) => {
                tracing::warn!("idle dispatch failed: {err}");
                None
            }
        };
        if !next.is_some_and(|ms| ms > 0.0) {
            self.idle.borrow_mut().remove(&stage);
        }
        next
    }
}

fn install_prelude(
    lua: &Lua,
    view: *mut PacketView,
    ffi_ctx: *mut FfiContext,
) -> mlua::Result<Hooks> {
    let globals = lua.globals();
    let engine = lua.create_table()?;
    natives::register(lua, &engine)?;
    engine.set(
        "packet_view",
        LightUserData(view.cast::<std::ffi::c_void>()),
    )?;
    engine.set("ffi_ctx", LightUserData(ffi_ctx.cast::<std::ffi::c_void>()))?;
    // The source of `require("lotus")`, the seed's lotus client (stage.lua preloads it).
    engine.set("lotus_client", include_str!("../../lua/lib/lotus.lua"))?;
    let broker = lua.create_table()?;
    super::sockaddr::register(lua, &broker)?;
    globals.set("broker", broker)?;
    let log = lua.create_table()?;
    logger::register(lua, &log)?;
    globals.set("logger", log)?;
    logger::register_print(lua)?;
    let bundle = lua.create_table()?;
    super::bundle::register(lua, &bundle)?;
    globals.set("bundle", bundle)?;
    globals.set("stage", lua.create_table()?)?;

    let private: Table = lua.create_table()?;
    private.set("hooks", lua.create_table()?)?;
    for (name, source) in PRELUDE {
        lua.load(*source)
            .set_name(*name)
            .call::<()>((engine.clone(), private.clone()))?;
    }
    let hooks: Table = private.get("hooks")?;
    Ok(Hooks {
        accept: hooks.get("accept")?,
        receive: hooks.get("receive")?,
        datagram: hooks.get("datagram")?,
        close: hooks.get("close")?,
        connected: hooks.get("connected")?,
        boot: hooks.get("boot")?,
        idle: hooks.get("idle")?,
        post: hooks.get("post")?,
        thread: hooks.get("thread")?,
        reloaded: hooks.get("reloaded")?,
        stats: hooks.get("stats")?,
        receive_view: hooks.get("receive_view")?,
    })
}

fn collect_lua_files(path: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
    } else if let Ok(dir) = std::fs::read_dir(path) {
        for entry in dir.flatten() {
            let p = entry.path();
            if p.is_dir() {
                collect_lua_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "lua") {
                out.push(p);
            }
        }
    }
}
