//! A core's LuaJIT state: built with the standard libraries, the engine's natives (handed to
//! the prelude only, never to user code), the prelude that builds `broker`/`stage`/`logger`
//! on them and seals the sandbox, then the `%preload` scripts. The `dispatch_*` methods are
//! the only way the core enters Lua; each goes through a prelude hook that catches and logs
//! script errors, so nothing a script does can unwind into the core.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mlua::{Function, LightUserData, Lua, LuaOptions, StdLib, Table, Value};

use super::loader::{Embedded, ScriptLoader};
use super::{logger, natives};
use crate::codec::bson::{self, BsonError, DecodeOptions};
use crate::codec::framing::Framing;
use crate::config::PackageEntry;
use crate::net::conn::Conn;
use crate::net::sockaddr::{self, SockAddr};
use crate::node::Node;
use stage_ffi::PacketView;

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

/// What every core needs to build its Lua state; shared read-only by all cores.
pub struct LuaSettings {
    pub package: Vec<PackageEntry>,
    pub preload: Vec<String>,
    pub reflush: Duration,
    /// `%ffi`: take the packet path through LuaJIT's FFI.
    pub ffi: bool,
    /// `%memory`: the most bytes one Lua state may hold; an allocation past it fails as a Lua
    /// error ("not enough memory") in the callback that made it.
    pub memory: Option<usize>,
    pub stages: Vec<LuaStage>,
    /// The service stages of this process (index.so), numbered after the Lua stages.
    pub services: Vec<ServiceStage>,
    /// `arg[0]` is the program, then the extra command-line arguments.
    pub args: Vec<String>,
    pub embedded: Embedded,
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
    Index(crate::service::index::IndexConfig),
    Ticket(crate::service::ticket::TicketConfig),
    Route(crate::service::route::RouteConfig),
    Http(crate::service::http::HttpConfig),
}

impl ServiceKind {
    /// The stage kind the directory records for this service.
    pub fn stage_kind(&self) -> crate::node::stages::StageKind {
        use crate::node::stages::StageKind;
        match self {
            ServiceKind::Index(_) => StageKind::Index,
            ServiceKind::Ticket(_) => StageKind::Ticket,
            ServiceKind::Route(_) => StageKind::Route,
            ServiceKind::Http(_) => StageKind::Http,
        }
    }

    /// Whether the service runs one shard per core (named indexes and categories spread over
    /// the cores by name) rather than one instance on its main core.
    pub fn is_sharded(&self) -> bool {
        matches!(self, ServiceKind::Index(_) | ServiceKind::Ticket(_))
    }
}

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
    /// The FFI receive path (`None` when `%ffi` is off).
    receive_view: Option<Function>,
}

pub struct Host {
    pub lua: Lua,
    hooks: Hooks,
    /// Where the FFI receive path finds the frame being delivered: the prelude casts this
    /// address once, so handing a frame to Lua allocates nothing.
    view: Box<std::cell::UnsafeCell<PacketView>>,
}

impl Host {
    pub fn new(node: &Arc<Node>, core: Option<usize>) -> anyhow::Result<Host> {
        let settings = &node.lua;
        // SAFETY: the unsafe libraries (debug, ffi, jit) are loaded for the prelude only; the
        // prelude removes them from everything user scripts can reach before any user code runs.
        let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL, LuaOptions::default()) };
        lua.set_app_data(natives::NodeRef(node.clone()));
        lua.set_app_data(ScriptLoader::new(
            settings.package.clone(),
            settings.reflush,
            settings.embedded,
        ));
        let view = Box::new(std::cell::UnsafeCell::new(PacketView {
            ptr: std::ptr::null(),
            len: 0,
        }));
        let hooks = install_prelude(&lua, view.get())
            .map_err(|e| anyhow::anyhow!("prelude failed: {e}"))?;
        // The limit counts from here, once the platform itself is loaded: what it allows is
        // the scripts' room, however large the prelude is.
        if let Some(limit) = settings.memory {
            let limit = limit.saturating_add(lua.used_memory());
            if let Err(err) = lua.set_memory_limit(limit) {
                tracing::warn!("%memory cannot be enforced in this build: {err}");
            }
        }
        let host = Host { lua, hooks, view };
        host.run_preload(&settings.preload, core);
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

    pub fn dispatch_accept(&self, listener: u64, stage: Option<usize>, conn: &Conn) -> bool {
        let peer = conn.peer.get().map(|a| self.addr_string(a));
        match self
            .hooks
            .accept
            .call::<bool>((listener, conn.id, peer, stage))
        {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(socket = conn.id, "accept dispatch failed: {err}");
                false
            }
        }
    }

    /// One UDP datagram (already checked to be one message) for endpoint `endpoint`: decoded
    /// like a frame and handed to the endpoint's receive callback with the sender's address.
    /// A datagram that is not valid BSON is dropped; the endpoint goes on.
    pub fn dispatch_datagram(
        &self,
        endpoint: u64,
        stage: Option<usize>,
        message: &[u8],
        framing: Framing,
        from: std::net::SocketAddr,
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
            Framing::Text | Framing::Raw => match self.lua.create_string(message) {
                Ok(s) => Value::String(s),
                Err(err) => {
                    tracing::warn!(listener = endpoint, "udp dispatch failed: {err}");
                    return;
                }
            },
        };
        let addr = self.addr_string(from);
        if let Err(err) = self
            .hooks
            .datagram
            .call::<()>((endpoint, stage, data, addr))
        {
            tracing::warn!(listener = endpoint, "udp dispatch failed: {err}");
        }
    }

    /// Decodes one frame into the receive callback's `data` and calls it. A frame that is
    /// not valid BSON is an error: the caller closes that connection.
    pub fn dispatch_receive(
        &self,
        id: u64,
        frame: Bytes,
        framing: Framing,
    ) -> Result<(), BsonError> {
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
            match view.call::<bool>((id, packet)) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(socket = id, "receive dispatch failed: {err}");
                    return Ok(());
                }
            }
        }
        let data = match framing {
            Framing::Packet => bson::decode_first(&self.lua, &frame, &DecodeOptions::default())?,
            Framing::Text | Framing::Raw => match self.lua.create_string(&frame[..]) {
                Ok(s) => Value::String(s),
                Err(err) => {
                    tracing::warn!(socket = id, "receive dispatch failed: {err}");
                    return Ok(());
                }
            },
        };
        drop(frame);
        if let Err(err) = self.hooks.receive.call::<()>((id, data)) {
            tracing::warn!(socket = id, "receive dispatch failed: {err}");
        }
        Ok(())
    }

    pub fn dispatch_close(&self, id: u64, errno: i32) {
        if let Err(err) = self.hooks.close.call::<()>((id, errno)) {
            tracing::warn!(socket = id, "close dispatch failed: {err}");
        }
    }

    pub fn dispatch_connected(&self, id: u64, conn: &Conn) {
        let peer = conn.peer.get().map(|a| self.addr_string(a));
        if let Err(err) = self.hooks.connected.call::<()>((id, peer)) {
            tracing::warn!(socket = id, "connect dispatch failed: {err}");
        }
    }

    /// Runs a stage's main script; returns its idle function, if it returned one.
    /// Runs a prelude hook posted by a core (a stage message, a timer, a job).
    pub fn dispatch_post(&self, kind: &str, payload: &[u8]) {
        let result = self
            .lua
            .create_string(payload)
            .and_then(|p| self.hooks.post.call::<()>((kind, p)));
        if let Err(err) = result {
            tracing::warn!("{kind} dispatch failed: {err}");
        }
    }

    /// Runs a `thread.new` function on this pool thread's state.
    pub fn dispatch_thread(&self, id: u64, payload: &[u8]) {
        let result = self
            .lua
            .create_string(payload)
            .and_then(|p| self.hooks.thread.call::<()>((id, p)));
        if let Err(err) = result {
            tracing::warn!(thread = id, "thread dispatch failed: {err}");
        }
    }

    pub fn boot(&self, index: usize, stage: &LuaStage, args: &[String]) -> Option<Function> {
        let result = (|| {
            let arg = self.lua.create_table()?;
            for (i, a) in args.iter().enumerate() {
                arg.raw_set(i as i64, a.as_str())?;
            }
            self.hooks.boot.call::<Option<Function>>((
                index,
                stage.entry.as_str(),
                stage.main_script.as_str(),
                arg,
            ))
        })();
        result.unwrap_or_else(|err| {
            tracing::warn!(stage = %stage.entry, "boot failed: {err}");
            None
        })
    }

    pub fn call_idle(&self, stage: usize, idle: &Function) -> Option<f64> {
        match self.hooks.idle.call::<Option<f64>>((stage, idle)) {
            Ok(next) => next,
            Err(err) => {
                tracing::warn!("idle dispatch failed: {err}");
                None
            }
        }
    }

    fn addr_string(&self, addr: std::net::SocketAddr) -> mlua::String {
        self.lua
            .create_string(sockaddr::to_binary(&SockAddr::Inet(addr)))
            .expect("small string")
    }
}

fn install_prelude(lua: &Lua, view: *mut PacketView) -> mlua::Result<Hooks> {
    let globals = lua.globals();
    let engine = lua.create_table()?;
    natives::register(lua, &engine)?;
    engine.set(
        "packet_view",
        LightUserData(view.cast::<std::ffi::c_void>()),
    )?;
    let broker = lua.create_table()?;
    sockaddr::register(lua, &broker)?;
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
