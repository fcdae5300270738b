//! `broker.ntoa`, `broker.aton` and `broker.ifaddr` (spec stage.md 4.6): the Lua face of
//! the binary socket addresses in `net::sockaddr`. Addresses travel to and from scripts as
//! the binary sockaddr strings the original platform used; everything but the conversion
//! between Lua values and `SockAddr` lives in `net::sockaddr`.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use mlua::{IntoLuaMulti, Lua, MultiValue, Table, Value};

use crate::net::sockaddr::{
    from_binary, interfaces, ntoa, resolve, resolve_host, resolve_in, to_binary, unix_text,
    SockAddr,
};

/// Sets `target.ntoa`, `target.aton` and `target.ifaddr`.
pub fn register(lua: &Lua, target: &Table) -> mlua::Result<()> {
    target.set("ntoa", lua.create_function(lua_ntoa)?)?;
    target.set("aton", lua.create_function(lua_aton)?)?;
    target.set("ifaddr", lua.create_function(lua_ifaddr)?)?;
    Ok(())
}

/// A binary sockaddr held in a Lua value, if it is one.
fn binary_arg(v: &Value) -> Option<SockAddr> {
    match v {
        Value::String(s) => from_binary(&s.as_bytes()),
        _ => None,
    }
}

/// The nil-plus-message return scripts test for (`local a, err = broker.aton(...)`).
fn fail(lua: &Lua, msg: impl std::fmt::Display) -> mlua::Result<MultiValue> {
    (Value::Nil, msg.to_string()).into_lua_multi(lua)
}

fn binary_value(lua: &Lua, addr: &SockAddr) -> mlua::Result<Value> {
    Ok(Value::String(lua.create_string(to_binary(addr))?))
}

/// `ntoa(addr [, t])`: text form, or `t` filled with the address fields; nil when `addr` is
/// not a valid binary sockaddr.
fn lua_ntoa(lua: &Lua, (addr, t): (Value, Option<Table>)) -> mlua::Result<Value> {
    let Some(sa) = binary_arg(&addr) else {
        return Ok(Value::Nil);
    };
    let Some(t) = t else {
        let text = match &sa {
            SockAddr::Unix(p) => unix_text(p),
            other => ntoa(other).into_bytes(),
        };
        return Ok(Value::String(lua.create_string(text)?));
    };
    t.set("family", sa.family())?;
    // Fields of other families are cleared so a reused table never mixes two addresses.
    match &sa {
        SockAddr::Inet(a) => {
            t.set("addr", a.ip().to_string())?;
            t.set("port", a.port())?;
            match a {
                SocketAddr::V6(v6) => t.set("scope_id", v6.scope_id())?,
                SocketAddr::V4(_) => t.set("scope_id", Value::Nil)?,
            }
            t.set("path", Value::Nil)?;
        }
        SockAddr::Unix(p) => {
            t.set("path", lua.create_string(unix_text(p))?)?;
            t.set("addr", Value::Nil)?;
            t.set("port", Value::Nil)?;
            t.set("scope_id", Value::Nil)?;
        }
    }
    Ok(Value::Table(t))
}

/// The zero address of an `AF_*` family, the base that `aton(family, t)` fills in.
fn family_base(family: i64) -> Option<SockAddr> {
    match i32::try_from(family).ok()? {
        libc::AF_INET => Some(SockAddr::Inet(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))),
        libc::AF_INET6 => Some(SockAddr::Inet(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))),
        libc::AF_UNIX => Some(SockAddr::Unix(PathBuf::new())),
        _ => None,
    }
}

/// Reads an optional integer field, with a message for the script when it is malformed.
fn int_field<T: TryFrom<i64>>(t: &Table, key: &str) -> Result<Option<T>, String> {
    match t.get::<Value>(key).map_err(|e| e.to_string())? {
        Value::Nil => Ok(None),
        Value::Integer(n) => T::try_from(n)
            .map(Some)
            .map_err(|_| format!("'{key}' out of range: {n}")),
        other => Err(format!(
            "'{key}' must be an integer, got {}",
            other.type_name()
        )),
    }
}

/// `aton(sockaddr_or_family, t)`: `base` with the fields of `t` replaced.
fn apply_fields(base: SockAddr, t: &Table) -> Result<SockAddr, String> {
    match base {
        SockAddr::Unix(path) => match t.get::<Value>("path").map_err(|e| e.to_string())? {
            Value::Nil => Ok(SockAddr::Unix(path)),
            Value::String(s) => Ok(SockAddr::Unix(unix_path_bytes(&s.as_bytes()))),
            other => Err(format!(
                "'path' must be a string, got {}",
                other.type_name()
            )),
        },
        SockAddr::Inet(mut a) => {
            let port = int_field::<u16>(t, "port")?.unwrap_or(a.port());
            let family = if a.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            match t.get::<Value>("addr").map_err(|e| e.to_string())? {
                Value::Nil => {}
                Value::String(s) => {
                    let host = s.to_str().map_err(|_| "'addr' is not valid text")?;
                    // Literals parse directly; a hostname resolves in the base's family.
                    match resolve_host(&host, port, Some(family))
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .next()
                    {
                        Some(SockAddr::Inet(n)) => a = n,
                        _ => return Err(format!("no address for '{host}'")),
                    }
                }
                other => {
                    return Err(format!(
                        "'addr' must be a string, got {}",
                        other.type_name()
                    ))
                }
            }
            a.set_port(port);
            if let SocketAddr::V6(v6) = &mut a {
                if let Some(scope) = int_field::<u32>(t, "scope_id")? {
                    v6.set_scope_id(scope);
                }
            }
            Ok(SockAddr::Inet(a))
        }
    }
}

/// A unix path from raw Lua bytes (`@name` = abstract), keeping non-UTF-8 bytes.
fn unix_path_bytes(b: &[u8]) -> PathBuf {
    match b.strip_prefix(b"@") {
        Some(name) => {
            let mut v = Vec::with_capacity(b.len());
            v.push(0);
            v.extend_from_slice(name);
            PathBuf::from(OsStr::from_bytes(&v))
        }
        None => PathBuf::from(OsStr::from_bytes(b)),
    }
}

/// `aton(s [, t])`, see spec 4.6 and the module doc.
fn lua_aton(lua: &Lua, (s, t): (Value, Value)) -> mlua::Result<MultiValue> {
    // A sockaddr or family as `s`: build a new address from it.
    let base = match &s {
        Value::Integer(f) => match family_base(*f) {
            Some(b) => Some(b),
            None => return fail(lua, format!("unsupported address family {f}")),
        },
        // Text never starts with the bytes of a valid family (2/10/1 followed by NUL on
        // little-endian hosts), so trying the binary form first is unambiguous.
        Value::String(_) => binary_arg(&s),
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #1 to 'aton' (string or integer expected, got {})",
                other.type_name()
            )))
        }
    };
    if let Some(base) = base {
        return match t {
            Value::Nil => binary_value(lua, &base)?.into_lua_multi(lua),
            Value::Table(t) => match apply_fields(base, &t) {
                Ok(a) => binary_value(lua, &a)?.into_lua_multi(lua),
                Err(msg) => fail(lua, msg),
            },
            Value::String(host) => {
                let Ok(host) = host.to_str() else {
                    return fail(lua, "invalid address text");
                };
                let port = match &base {
                    SockAddr::Inet(a) => a.port(),
                    SockAddr::Unix(_) => 0,
                };
                match resolve_in(&host, base.family(), port) {
                    Ok(v) => binary_value(lua, &v[0])?.into_lua_multi(lua),
                    Err(e) => fail(lua, e),
                }
            }
            other => Err(mlua::Error::runtime(format!(
                "bad argument #2 to 'aton' (table or string expected, got {})",
                other.type_name()
            ))),
        };
    }
    // Text to resolve.
    // Only a string that is not a binary sockaddr gets here (other types returned above).
    let Value::String(text) = &s else {
        return fail(lua, "invalid address");
    };
    let Ok(text) = text.to_str() else {
        return fail(lua, "invalid address text");
    };
    let addrs = match resolve(&text) {
        Ok(v) => v,
        Err(e) => return fail(lua, e),
    };
    match t {
        Value::Nil => binary_value(lua, &addrs[0])?.into_lua_multi(lua),
        Value::Table(t) => {
            for (i, a) in addrs.iter().enumerate() {
                t.raw_set(i + 1, binary_value(lua, a)?)?;
            }
            Value::Table(t).into_lua_multi(lua)
        }
        other => Err(mlua::Error::runtime(format!(
            "bad argument #2 to 'aton' (table expected, got {})",
            other.type_name()
        ))),
    }
}

/// `ifaddr([name])` → `{ [ifname] = { sockaddr, ... } }`; nil plus a message if the
/// interface list cannot be read.
fn lua_ifaddr(lua: &Lua, name: Option<mlua::String>) -> mlua::Result<MultiValue> {
    let filter = name.map(|n| n.to_string_lossy());
    let list = match interfaces(filter.as_deref()) {
        Ok(l) => l,
        Err(e) => return fail(lua, e),
    };
    let out = lua.create_table()?;
    for (ifname, addrs) in list {
        let arr = lua.create_table_with_capacity(addrs.len(), 0)?;
        for a in &addrs {
            arr.raw_push(binary_value(lua, a)?)?;
        }
        out.set(ifname, arr)?;
    }
    Value::Table(out).into_lua_multi(lua)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua_with_broker() -> Lua {
        let lua = Lua::new();
        let broker = lua.create_table().unwrap();
        register(&lua, &broker).unwrap();
        lua.globals().set("broker", broker).unwrap();
        lua
    }

    #[test]
    fn lua_ntoa_aton() {
        let lua = lua_with_broker();
        let r: String = lua
            .load(r#"return broker.ntoa(broker.aton("127.0.0.1:8081"))"#)
            .eval()
            .unwrap();
        assert_eq!(r, "127.0.0.1:8081");
        let n: usize = lua
            .load(r#"return #broker.aton("tcp://127.0.0.1:8081?packet")"#)
            .eval()
            .unwrap();
        assert_eq!(n, 16);
        lua.load(
            r#"
            local a = broker.aton("udp://224.0.0.1:8082", {})[1]
            assert(broker.ntoa(a) == "224.0.0.1:8082")
            local t = broker.ntoa(a, {})
            assert(t.family == 2 and t.addr == "224.0.0.1" and t.port == 8082)
            assert(t.scope_id == nil and t.path == nil)
            -- replace fields of an existing address
            local b = broker.aton(a, { port = 9000 })
            assert(broker.ntoa(b) == "224.0.0.1:9000", broker.ntoa(b))
            -- build from a family
            local c = broker.aton(10, { addr = "fe80::1", port = 80, scope_id = 4 })
            assert(broker.ntoa(c) == "[fe80::1%4]:80", broker.ntoa(c))
            local ct = broker.ntoa(c, t) -- reuse the table
            assert(ct == t and t.family == 10 and t.addr == "fe80::1" and t.scope_id == 4)
            local u = broker.aton(1, { path = "/tmp/s" })
            assert(broker.ntoa(u) == "/tmp/s")
            local ut = broker.ntoa(u, {})
            assert(ut.family == 1 and ut.path == "/tmp/s" and ut.port == nil)
            assert(broker.ntoa(broker.aton("unix:///tmp/q")) == "/tmp/q")
            -- family + host string, keeping the base port when none is given
            assert(broker.ntoa(broker.aton(2, "127.0.0.1:5")) == "127.0.0.1:5")
            assert(broker.ntoa(broker.aton(b, "10.0.0.2")) == "10.0.0.2:9000")
            -- invalid input
            assert(broker.ntoa("garbage") == nil)
            assert(broker.ntoa(nil) == nil)
            assert(broker.ntoa("garbage", {}) == nil)
            local x, err = broker.aton("no-such-host.invalid:80")
            assert(x == nil and type(err) == "string")
            x, err = broker.aton(2, "::1")
            assert(x == nil and type(err) == "string")
            assert(broker.ntoa(broker.aton(10, "::1")) == "[::1]:0")
            x, err = broker.aton(a, { port = 70000 })
            assert(x == nil and err:find("port"))
            x, err = broker.aton(99, {})
            assert(x == nil and err:find("family"))
            assert(not pcall(broker.aton, {}))
            "#,
        )
        .exec()
        .unwrap();
    }

    #[test]
    fn lua_ifaddr() {
        let lua = lua_with_broker();
        lua.load(
            r#"
            for name, list in pairs(broker.ifaddr()) do
                assert(type(name) == "string" and name ~= "lo")
                for _, a in ipairs(list) do
                    local t = broker.ntoa(a, {})
                    assert(t.family == 2 or t.family == 10)
                end
            end
            assert(next(broker.ifaddr("no-such-interface-name")) == nil)
            "#,
        )
        .exec()
        .unwrap();
    }
}
