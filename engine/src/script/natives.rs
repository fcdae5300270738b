//! The engine's natives: the Rust functions behind `broker` and `stage`, registered in a
//! table that only the prelude sees (`E`). Each resolves the calling core through
//! `node::runtime::try_current()` and works on that core's connections; operations on a socket owned by
//! another core travel there through its inbox. Errors a script should handle come back as
//! values (errno, -1); misuse raises a Lua error naming the call.

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use mlua::{Function, Lua, MultiValue, Table, Value};

use super::bson::{self, EncodeOptions};
use super::loader::{Lookup, ScriptLoader};
use super::pool::Pool;
use crate::net::admission::Gate;
use crate::net::conn::{errno_of, Conn};
use crate::net::id::ConnId;
use crate::net::listener::Destination;
use crate::net::sockaddr::{self, SockAddr};
use crate::net::url::{BrokerUrl, Scheme};
use crate::net::{listener, udp};
use crate::node::runtime::{self, Core};
use crate::node::{CoreMsg, ListenerProps, ListenerShared, Node};

pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set("log", lua.create_function(log)?)?;
    e.set("commit", lua.create_function(commit)?)?;
    e.set("close", lua.create_function(close)?)?;
    e.set("conn_set", lua.create_function(conn_set)?)?;
    e.set("conn_get", lua.create_function(conn_get)?)?;
    e.set("ready", lua.create_function(ready)?)?;
    e.set("udp_send", lua.create_function(udp_send)?)?;
    e.set("udp_send_to", lua.create_function(udp_send_to)?)?;
    e.set("join", lua.create_function(join)?)?;
    e.set("listener_set", lua.create_function(listener_set)?)?;
    e.set("listener_get", lua.create_function(listener_get)?)?;
    e.set("listener_version", lua.create_function(listener_version)?)?;
    e.set("listener_props", lua.create_function(listener_props)?)?;
    e.set("listener_close", lua.create_function(listener_close)?)?;
    e.set("load", lua.create_function(load)?)?;
    e.set(
        "viewof_keeper",
        lua.create_function(|lua, keep: mlua::Function| {
            super::bundle::viewof_sync::set_keeper(lua, keep)
        })?,
    )?;
    super::messaging::register(lua, e)?;
    super::cluster::register(lua, e)?;
    super::shared::register(lua, e)?;
    super::services::index::register(lua, e)?;
    super::services::timed::register(lua, e)?;
    super::services::http::register(lua, e)?;
    super::services::odbc::register(lua, e)?;
    super::fastpath::register(lua, e)?;
    super::crypto::register(lua, e)?;
    e.set(
        "exit",
        lua.create_function(|lua, ()| {
            node(lua)?.exit();
            Ok(())
        })?,
    )?;
    Ok(())
}

pub(crate) fn core() -> mlua::Result<Rc<Core>> {
    runtime::try_current().ok_or_else(|| {
        mlua::Error::runtime(
            "this call needs a core: it is not available in thread.new functions or preload scripts",
        )
    })
}

/// What every Lua state of the process (cores and pool threads) reaches: the node, and the
/// blocking pool where `thread.new` functions run.
pub struct Runtime {
    pub node: Arc<Node>,
    pub pool: Arc<Pool>,
}

pub(crate) fn node(lua: &Lua) -> mlua::Result<Arc<Node>> {
    lua.app_data_ref::<Runtime>()
        .map(|r| r.node.clone())
        .ok_or_else(|| mlua::Error::runtime("runtime not attached to this Lua state"))
}

pub(crate) fn pool(lua: &Lua) -> mlua::Result<Arc<Pool>> {
    lua.app_data_ref::<Runtime>()
        .map(|r| r.pool.clone())
        .ok_or_else(|| mlua::Error::runtime("runtime not attached to this Lua state"))
}

/// The connection a script's socket id names, and its owner core, when the id is one of a
/// connection of this process (not a listener, not a core this process does not run).
fn conn_id(node: &Node, raw: u64) -> Option<ConnId> {
    ConnId::from_raw(raw).filter(|id| id.owner() < node.cores())
}

fn log(_: &Lua, (level, msg): (String, String)) -> mlua::Result<()> {
    match level.as_str() {
        "error" => tracing::error!(target: "lua", "{msg}"),
        "warn" => tracing::warn!(target: "lua", "{msg}"),
        "debug" => tracing::debug!(target: "lua", "{msg}"),
        _ => tracing::info!(target: "lua", "{msg}"),
    }
    Ok(())
}

/// Encodes what `socket.commit(v)` sends: strings raw, tables as BSON `{"v": v}`, numbers
/// and booleans as their text.
fn encode(lua: &Lua, value: &Value, out: &mut BytesMut) -> mlua::Result<()> {
    match value {
        Value::String(s) => out.extend_from_slice(&s.as_bytes()),
        Value::Table(_) => bson::encode_wrapped(lua, value, out, &EncodeOptions::default())
            .map_err(|e| mlua::Error::runtime(format!("socket.commit: {e}")))?,
        Value::Integer(_) | Value::Number(_) | Value::Boolean(_) => {
            let text: String = lua
                .globals()
                .get::<Function>("tostring")?
                .call(value.clone())?;
            out.extend_from_slice(text.as_bytes());
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "socket.commit: cannot send a {} (expected a string or a table)",
                other.type_name()
            )))
        }
    }
    Ok(())
}

fn commit(lua: &Lua, (raw, value): (u64, Value)) -> mlua::Result<i64> {
    let node = node(lua)?;
    let Some(id) = conn_id(&node, raw) else {
        return Ok(-1);
    };
    let owner = id.owner();
    if let Some(core) = runtime::try_current().filter(|c| c.index == owner) {
        let Some(conn) = core.conn(id) else {
            return Ok(-1);
        };
        if value.is_nil() {
            conn.request_flush();
            return Ok(0);
        }
        let queued = if matches!(value, Value::Table(_)) && conn.encrypts() {
            // socket.crypto: the document is sealed into an encrypted frame.
            let mut doc = BytesMut::new();
            encode(lua, &value, &mut doc)?;
            conn.commit_document(&doc)
        } else {
            conn.encode_with(|out| encode(lua, &value, out))?
        };
        return match queued {
            Ok(len) => Ok(len as i64),
            Err(err) => {
                crate::net::conn::log_refused_commit(raw, &err);
                Ok(-1)
            }
        };
    }
    // Another core owns the socket: encode here, append there.
    if value.is_nil() {
        return Ok(0);
    }
    let mut out = BytesMut::new();
    encode(lua, &value, &mut out)?;
    let len = out.len() as i64;
    let data = out.freeze();
    let document = matches!(value, Value::Table(_));
    match node.send(owner, CoreMsg::Commit { id, data, document }) {
        Ok(()) => Ok(len),
        Err(err) => {
            node.log_dropped(owner, &err);
            Ok(-1)
        }
    }
}

fn close(lua: &Lua, raw: u64) -> mlua::Result<i64> {
    let node = node(lua)?;
    let Some(id) = conn_id(&node, raw) else {
        return Ok(-1);
    };
    let owner = id.owner();
    if let Some(core) = runtime::try_current().filter(|c| c.index == owner) {
        return Ok(match core.conn(id) {
            Some(conn) => {
                conn.request_close(0);
                0
            }
            None => -1,
        });
    }
    Ok(match node.send(owner, CoreMsg::Close { id, errno: 0 }) {
        Ok(()) => 0,
        Err(_) => -1,
    })
}

fn local_conn(raw: u64) -> mlua::Result<Option<Rc<Conn>>> {
    let core = core()?;
    match ConnId::from_raw(raw) {
        Some(id) if id.owner() != core.index => Err(mlua::Error::runtime(format!(
            "socket {id} belongs to core {}; its fields can only be used there",
            id.owner()
        ))),
        Some(id) => Ok(core.conn(id)),
        None => Ok(None),
    }
}

/// `nil`, a negative number or 0 mean "never" for `expire`.
fn msec_option(value: &Value) -> Option<u64> {
    let ms = match value {
        Value::Integer(n) => *n as f64,
        Value::Number(n) => *n,
        _ => return None,
    };
    (ms > 0.0).then_some(ms as u64)
}

fn conn_set(_: &Lua, (id, key, value): (u64, String, Value)) -> mlua::Result<()> {
    let Some(conn) = local_conn(id)? else {
        return Ok(());
    };
    match key.as_str() {
        "expire" => conn.expire_ms.set(msec_option(&value)),
        "commit_interval" => conn
            .commit_ms
            .set(msec_option(&value).map_or(0, |ms| u32::try_from(ms).unwrap_or(u32::MAX))),
        "crypto" => conn.set_crypto(super::crypto::parse("socket.crypto", &value)?),
        other => {
            return Err(mlua::Error::runtime(format!(
                "unknown socket option `{other}`"
            )))
        }
    }
    conn.request_flush();
    Ok(())
}

fn conn_get(lua: &Lua, (id, key): (u64, String)) -> mlua::Result<Value> {
    let Some(conn) = local_conn(id)? else {
        return Ok(Value::Nil);
    };
    Ok(match key.as_str() {
        "errno" => Value::Integer(conn.errno.get() as i64),
        "expire" => conn
            .expire_ms
            .get()
            .map_or(Value::Nil, |ms| Value::Integer(ms as i64)),
        "commit_interval" => Value::Integer(conn.commit_ms.get() as i64),
        "crypto" => Value::Boolean(conn.encrypts()),
        "local" => addr_value(lua, conn.local.get())?,
        "peer" => addr_value(lua, conn.peer.get())?,
        _ => Value::Nil,
    })
}

/// A socket address as the script sees it (binary sockaddr bytes), `nil` when unknown.
fn addr_value(lua: &Lua, addr: Option<std::net::SocketAddr>) -> mlua::Result<Value> {
    Ok(match addr {
        Some(addr) => Value::String(lua.create_string(sockaddr::to_binary(&SockAddr::Inet(addr)))?),
        None => Value::Nil,
    })
}

/// `broker.ready`: binds on this core at once (so the script gets bind errors as an errno),
/// then every core starts accepting when the current Lua call returns.
fn ready(
    lua: &Lua,
    (url, accept, stage): (String, mlua::String, Option<usize>),
) -> mlua::Result<MultiValue> {
    let core = core()?;
    let fail = |errno: i32| (false, errno).into_lua_multi(lua);
    let parsed = match BrokerUrl::parse(&url) {
        Ok(parsed) => parsed,
        Err(err) => {
            tracing::warn!("broker.ready `{url}`: {err}");
            return fail(err.errno());
        }
    };
    let bound = listener::resolve(&parsed).and_then(|addr| match parsed.scheme {
        // A WebSocket listener is a TCP listener whose connections upgrade first.
        Scheme::Tcp | Scheme::Ws => {
            if core.node.peers.is_none() {
                listener::warn_if_taken(addr);
            }
            let l = listener::bind(addr)?;
            let addr = l.local_addr().map_err(std::io::Error::from)?;
            Ok((Prebound::Tcp(l), addr))
        }
        Scheme::Udp => {
            let s = udp::bind(addr)?;
            let local = s.local_addr().map_err(std::io::Error::from)?;
            // The other cores bind the same: a multicast group (to join it too) on the
            // port actually bound.
            let addr = if addr.ip().is_multicast() {
                std::net::SocketAddr::new(addr.ip(), local.port())
            } else {
                local
            };
            Ok((Prebound::Udp(s), addr))
        }
    });
    let (bound, addr) = match bound {
        Ok(ok) => ok,
        Err(err) => {
            tracing::warn!("broker.ready `{url}`: {err}");
            return fail(errno_of(&err));
        }
    };
    let id = core.node.next_listener_id();
    let framing = parsed.frame;
    let limits = parsed.limits;
    // A WebSocket listener's line names its scheme and upgrade path.
    let (scheme, path) = match parsed.scheme {
        Scheme::Ws => ("ws://", parsed.path.clone()),
        _ => ("", String::new()),
    };
    let shared = Arc::new(ListenerShared {
        id,
        stage,
        gate: Gate::new(id, limits),
        url: parsed,
        addr,
        props: Mutex::new(ListenerProps {
            version: 1,
            accept: accept.as_bytes().to_vec(),
            ..ListenerProps::default()
        }),
    });
    tracing::info!(
        listener = id,
        "listening on {scheme}{addr}{path} ({:?}, in {} / out {} bytes, maxconn {}, perip {}, deadline {} ms) on {} cores",
        framing.framing,
        framing.input,
        framing.output,
        limits.maxconn.map_or("off".to_string(), |n| n.to_string()),
        limits.perip.map_or("off".to_string(), |n| n.to_string()),
        limits.deadline_ms,
        core.node.cores()
    );
    core.node.add_listener(shared.clone());
    match bound {
        Prebound::Tcp(l) => core.prebind(id, l),
        Prebound::Udp(s) => udp::prebind(id, s),
    }
    core.defer_listen(shared);
    (true, id).into_lua_multi(lua)
}

/// What `broker.ready` bound on the calling core, kept for that core's loop.
enum Prebound {
    Tcp(glommio::net::TcpListener),
    Udp(glommio::net::UdpSocket),
}

/// `E.udp_send(endpoint, value, addr)`: `socket.commit(v, addr)` on a UDP socket (and the
/// return values of its receive callback): one datagram from this core's socket.
fn udp_send(lua: &Lua, (id, value, addr): (u64, Value, Option<mlua::String>)) -> mlua::Result<i64> {
    let Some(to) = addr.as_ref().and_then(|a| inet_addr(&a.as_bytes())) else {
        return Err(mlua::Error::runtime(
            "socket.commit: a udp socket needs the address to send to (commit(v, addr))",
        ));
    };
    if value.is_nil() {
        return Ok(0);
    }
    let mut out = BytesMut::new();
    encode(lua, &value, &mut out)?;
    Ok(datagram_result(udp::send(id, &out, to), out.len(), to))
}

/// `E.udp_send_to(addr, v)`: `broker.signal(addr, v)`, one datagram from an unbound socket
/// of this core holding the BSON of table `v` (no `{"v": ...}` wrapper, spec §4.6), or the
/// bytes of string `v` (a group send may carry a string).
fn udp_send_to(lua: &Lua, (addr, value): (mlua::String, Value)) -> mlua::Result<i64> {
    let Some(to) = inet_addr(&addr.as_bytes()) else {
        return Err(mlua::Error::runtime(
            "broker.signal: the address is not a binary IPv4/IPv6 sockaddr (see broker.aton)",
        ));
    };
    let mut out = BytesMut::new();
    match &value {
        Value::Table(t) => bson::encode_document(lua, t, &mut out, &EncodeOptions::default())
            .map_err(|e| mlua::Error::runtime(format!("broker.signal: {e}")))?,
        Value::String(s) => out.extend_from_slice(&s.as_bytes()),
        other => {
            return Err(mlua::Error::runtime(format!(
                "broker.signal: a datagram holds a table or a string, not a {}",
                other.type_name()
            )))
        }
    }
    Ok(datagram_result(udp::send_loose(&out, to), out.len(), to))
}

fn inet_addr(bytes: &[u8]) -> Option<std::net::SocketAddr> {
    match sockaddr::from_binary(bytes)? {
        SockAddr::Inet(a) => Some(a),
        SockAddr::Unix(_) => None,
    }
}

/// Bytes sent, or -1 (logged) when the kernel did not take the datagram.
fn datagram_result(sent: std::io::Result<usize>, len: usize, to: std::net::SocketAddr) -> i64 {
    match sent {
        Ok(n) => n as i64,
        Err(err) => {
            tracing::debug!(%to, len, "udp datagram not sent: {err}");
            -1
        }
    }
}

use mlua::IntoLuaMulti;

fn listener(id: u64) -> mlua::Result<Arc<ListenerShared>> {
    core()?
        .node
        .listener(id)
        .ok_or_else(|| mlua::Error::runtime(format!("listener {id} is closed")))
}

fn listener_set(_: &Lua, (id, key, value): (u64, String, Value)) -> mlua::Result<()> {
    let shared = listener(id)?;
    let mut props = shared.props.lock().unwrap();
    let bytecode = |v: &Value| match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    };
    match key.as_str() {
        "receive" => props.receive = bytecode(&value),
        "close" => props.close = bytecode(&value),
        "expire" => props.expire = msec_option(&value),
        "commit_interval" => props.commit = msec_option(&value).unwrap_or(0),
        "crypto" => props.crypto = super::crypto::parse("socket.crypto", &value)?,
        other => {
            return Err(mlua::Error::runtime(format!(
                "unknown listener option `{other}`"
            )))
        }
    }
    props.version += 1;
    Ok(())
}

fn listener_get(lua: &Lua, (id, key): (u64, String)) -> mlua::Result<Value> {
    let Some(shared) = core()?.node.listener(id) else {
        return Ok(Value::Nil);
    };
    let props = shared.props.lock().unwrap();
    Ok(match key.as_str() {
        "expire" => props
            .expire
            .map_or(Value::Nil, |ms| Value::Integer(ms as i64)),
        "commit_interval" => Value::Integer(props.commit as i64),
        "crypto" => Value::Boolean(props.crypto.is_some()),
        "local" => {
            Value::String(lua.create_string(sockaddr::to_binary(&SockAddr::Inet(shared.addr)))?)
        }
        _ => Value::Nil,
    })
}

fn listener_version(_: &Lua, id: u64) -> mlua::Result<Option<u64>> {
    Ok(core()?
        .node
        .listener(id)
        .map(|s| s.props.lock().unwrap().version))
}

fn listener_props(lua: &Lua, id: u64) -> mlua::Result<MultiValue> {
    let shared = listener(id)?;
    let props = shared.props.lock().unwrap().clone();
    let string = |b: Option<Vec<u8>>| -> mlua::Result<Value> {
        Ok(match b {
            Some(b) => Value::String(lua.create_string(b)?),
            None => Value::Nil,
        })
    };
    (
        props.version,
        lua.create_string(props.accept)?,
        string(props.receive)?,
        string(props.close)?,
    )
        .into_lua_multi(lua)
}

fn listener_close(_: &Lua, id: u64) -> mlua::Result<i64> {
    let core = core()?;
    if core.node.remove_listener(id).is_none() {
        return Ok(-1);
    }
    for other in 0..core.node.cores() {
        if other == core.index {
            core.unlisten(id);
        } else if let Err(err) = core.node.send(other, CoreMsg::Unlisten(id)) {
            tracing::warn!(listener = id, core = other, "cannot stop listener: {err}");
        }
    }
    Ok(0)
}

/// `broker.join`: registers the connection now (the script may set callbacks and commit
/// before it is connected) and connects in the background.
fn join(lua: &Lua, (url, timeout): (String, f64)) -> mlua::Result<MultiValue> {
    let core = core()?;
    let parsed = match BrokerUrl::parse(&url) {
        Ok(parsed) => parsed,
        Err(err) => {
            tracing::warn!("broker.join `{url}`: {err}");
            return (false, err.errno()).into_lua_multi(lua);
        }
    };
    if parsed.scheme == Scheme::Ws {
        // The prelude refuses it first; a WebSocket client is not built in.
        tracing::warn!("broker.join `{url}`: ws:// is a listener scheme only");
        return (false, libc::EINVAL).into_lua_multi(lua);
    }
    let frame = parsed.frame;
    // A host name is looked up in the background, like the connect itself.
    let to = match Destination::of(parsed) {
        Ok(to) => to,
        Err(err) => {
            tracing::warn!("broker.join `{url}`: {err}");
            return (false, errno_of(&err)).into_lua_multi(lua);
        }
    };
    let conn = Conn::new(core.next_conn_id(), frame);
    let id = conn.id.raw();
    core.add_conn(conn.clone());
    let timeout = Duration::from_millis(timeout.max(1.0) as u64);
    listener::join(&core, conn, to, timeout);
    (true, id).into_lua_multi(lua)
}

/// `E.load(name)` -> chunk, position, path, mtime; or nil, searched path when not found.
fn load(lua: &Lua, name: String) -> mlua::Result<MultiValue> {
    let loader = lua
        .app_data_ref::<ScriptLoader>()
        .ok_or_else(|| mlua::Error::runtime("script loader missing"))?;
    match loader.load(lua, &name)? {
        Lookup::Found(l) => (l.chunk, l.position, l.path, l.mtime).into_lua_multi(lua),
        Lookup::NotFound(path) => (Value::Nil, path).into_lua_multi(lua),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// ARCHITECTURE.md lists every native of `E` in one table; the table and what the engine
    /// registers must name the same functions.
    #[test]
    fn every_native_is_listed_in_architecture_md() {
        let lua = mlua::Lua::new();
        let e = lua.create_table().unwrap();
        super::register(&lua, &e).unwrap();
        let mut registered: BTreeSet<String> = e
            .pairs::<String, mlua::Value>()
            .map(|pair| pair.unwrap().0)
            .collect();
        // Set by `host::install_prelude` next to the natives: the per-state pointers.
        registered.extend(["packet_view".to_string(), "ffi_ctx".to_string()]);
        // ... and the lotus client's source, a string rather than a function.
        registered.insert("lotus_client".to_string());

        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md"),
        )
        .unwrap();
        let section = doc
            .split("## The natives (`E`)")
            .nth(1)
            .expect("ARCHITECTURE.md has a natives section");
        let section = section.split("\n## ").next().unwrap();
        let listed: BTreeSet<String> = section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| cell.split(','))
            .map(|name| name.trim().trim_matches('`').to_string())
            .collect();
        let missing: Vec<_> = registered.difference(&listed).collect();
        let stale: Vec<_> = listed.difference(&registered).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "natives not listed in ARCHITECTURE.md: {missing:?}; listed but not registered: {stale:?}"
        );
    }
}
