//! Binary socket addresses as scripts see them (spec 4.5, 4.6).
//!
//! Scripts never get a parsed address object: peer/local addresses (`socket[1]`, `socket[-1]`),
//! the `addr` argument of UDP receive callbacks and the results of `broker.aton` are Lua strings
//! holding the raw bytes of a `struct sockaddr_in` (16 bytes), `sockaddr_in6` (28 bytes) or
//! `sockaddr_un` (family + NUL-terminated path), exactly as libc lays them out on this host:
//! family in native byte order, port and IPv4/IPv6 address in network order. Keeping that
//! representation makes addresses cheap to pass around, usable as table keys and byte-compatible
//! with the original server. This module converts between those bytes and [`SockAddr`], renders
//! and resolves text addresses, lists interface addresses, and provides the Lua functions
//! `broker.ntoa`, `broker.aton` and `broker.ifaddr` ([`register`]).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use mlua::{IntoLuaMulti, Lua, MultiValue, Table, Value};

/// An address a script can hold: an IP socket address or a unix-domain path.
///
/// A unix path that starts with a NUL byte is a Linux abstract-namespace address (rendered as
/// `@name` by [`ntoa`]); an empty path is an unnamed unix socket (what `accept` reports for
/// clients that never bound).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SockAddr {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl SockAddr {
    /// The `AF_*` constant of this address (2, 10 or 1 on Linux), as scripts see it in
    /// `ntoa(addr, t).family`.
    pub fn family(&self) -> i32 {
        match self {
            SockAddr::Inet(SocketAddr::V4(_)) => libc::AF_INET,
            SockAddr::Inet(SocketAddr::V6(_)) => libc::AF_INET6,
            SockAddr::Unix(_) => libc::AF_UNIX,
        }
    }
}

impl From<SocketAddr> for SockAddr {
    fn from(a: SocketAddr) -> Self {
        SockAddr::Inet(a)
    }
}

// The byte layout below relies on Linux's `struct sockaddr` shape (no BSD `sa_len` byte): the
// family is the first field of every sockaddr. The engine is Linux-only (glommio), so assert it
// at compile time rather than carry untested variants.
const FAMILY_LEN: usize = size_of::<libc::sa_family_t>();
const SUN_PATH_OFFSET: usize = offset_of!(libc::sockaddr_un, sun_path);
const _: () = assert!(offset_of!(libc::sockaddr, sa_family) == 0);
const _: () = assert!(offset_of!(libc::sockaddr_in, sin_family) == 0);
const _: () = assert!(offset_of!(libc::sockaddr_in6, sin6_family) == 0);
const _: () = assert!(SUN_PATH_OFFSET == FAMILY_LEN);

/// Views a plain-old-data libc struct as its bytes.
fn pod_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: only instantiated with zero-initialised libc sockaddr structs (no padding holes
    // with undefined contents, no pointers); the slice borrows `v` for its lifetime.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Reads a libc struct from a byte slice of exactly its size.
fn pod_read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != size_of::<T>() {
        return None;
    }
    // SAFETY: the length matches and every bit pattern is a valid sockaddr_in/sockaddr_in6
    // (integers and byte arrays only); read_unaligned because Lua strings carry no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The raw sockaddr bytes of `addr` (see the module doc for the layout).
pub fn to_binary(addr: &SockAddr) -> Vec<u8> {
    match addr {
        SockAddr::Inet(SocketAddr::V4(a)) => {
            // SAFETY: sockaddr_in is plain data; all-zero is valid (and zeroes sin_zero).
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            pod_bytes(&sin).to_vec()
        }
        SockAddr::Inet(SocketAddr::V6(a)) => {
            // SAFETY: as above.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            // std stores flowinfo as the raw field value (no byte swap) in both directions;
            // doing the same keeps addresses taken from std/glommio sockets bit-identical.
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            pod_bytes(&sin6).to_vec()
        }
        SockAddr::Unix(path) => {
            let p = path.as_os_str().as_bytes();
            let mut v = Vec::with_capacity(SUN_PATH_OFFSET + p.len() + 1);
            v.extend_from_slice(&(libc::AF_UNIX as libc::sa_family_t).to_ne_bytes());
            v.extend_from_slice(p);
            // Abstract names are length-delimited (a NUL would become part of the name);
            // filesystem paths are NUL-terminated, length = offsetof(sun_path) + len + 1.
            if p.first() != Some(&0) {
                v.push(0);
            }
            v
        }
    }
}

/// Parses raw sockaddr bytes. Returns `None` unless the family is AF_INET/AF_INET6/AF_UNIX and
/// the length is exactly `sizeof(sockaddr_in)` / `sizeof(sockaddr_in6)`, or at least
/// `offsetof(sockaddr_un, sun_path)` for unix (paths longer than `sun_path` are accepted so
/// that [`to_binary`] always round-trips; the kernel rejects them when they are used).
pub fn from_binary(bytes: &[u8]) -> Option<SockAddr> {
    let fam = libc::sa_family_t::from_ne_bytes(bytes.get(..FAMILY_LEN)?.try_into().ok()?);
    match i32::from(fam) {
        libc::AF_INET => {
            let sin: libc::sockaddr_in = pod_read(bytes)?;
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SockAddr::Inet(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            ))))
        }
        libc::AF_INET6 => {
            let sin6: libc::sockaddr_in6 = pod_read(bytes)?;
            Some(SockAddr::Inet(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            ))))
        }
        libc::AF_UNIX => {
            let p = &bytes[SUN_PATH_OFFSET..];
            let path = match p {
                // Unnamed socket (family only, or family + NUL).
                [] | [0] => PathBuf::new(),
                // Abstract namespace: the whole remainder, leading NUL included.
                [0, ..] => PathBuf::from(OsStr::from_bytes(p)),
                _ => {
                    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
                    PathBuf::from(OsStr::from_bytes(&p[..end]))
                }
            };
            Some(SockAddr::Unix(path))
        }
        _ => None,
    }
}

/// Text form of a unix path as raw bytes (`@name` for abstract addresses), so non-UTF-8 paths
/// reach Lua unchanged.
fn unix_text(path: &Path) -> Vec<u8> {
    let p = path.as_os_str().as_bytes();
    match p {
        [0, rest @ ..] => {
            let mut v = Vec::with_capacity(p.len());
            v.push(b'@');
            v.extend_from_slice(rest);
            v
        }
        _ => p.to_vec(),
    }
}

/// `"1.2.3.4:80"`, `"[::1]:80"` (`"[fe80::1%2]:80"` when the scope id is not 0), or the unix
/// path (`@name` for abstract addresses, `""` for unnamed sockets).
pub fn ntoa(addr: &SockAddr) -> String {
    match addr {
        SockAddr::Inet(SocketAddr::V4(a)) => format!("{}:{}", a.ip(), a.port()),
        // Spelled out rather than relying on std's Display so the scope suffix is guaranteed
        // and matches what `resolve` accepts back.
        SockAddr::Inet(SocketAddr::V6(a)) if a.scope_id() != 0 => {
            format!("[{}%{}]:{}", a.ip(), a.scope_id(), a.port())
        }
        SockAddr::Inet(SocketAddr::V6(a)) => format!("[{}]:{}", a.ip(), a.port()),
        SockAddr::Unix(p) => String::from_utf8_lossy(&unix_text(p)).into_owned(),
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// A parsed address string, before name resolution.
#[derive(Debug, PartialEq)]
enum Target<'a> {
    Unix(&'a str),
    Host { host: &'a str, port: Option<u16> },
}

/// Splits `scheme://`, `?query` and `host:port` (port after the last `:`, spec 4.1).
fn parse_target(s: &str) -> io::Result<Target<'_>> {
    let (scheme, rest) = match s.find("://") {
        Some(i) => (Some(&s[..i]), &s[i + 3..]),
        None => (None, s),
    };
    let rest = rest.split_once('?').map_or(rest, |(a, _)| a);
    match scheme {
        Some(sc) if sc.eq_ignore_ascii_case("unix") => return Ok(Target::Unix(rest)),
        Some(sc) if sc.eq_ignore_ascii_case("tcp") || sc.eq_ignore_ascii_case("udp") => {}
        None => {}
        Some(sc) => return Err(invalid(format!("unsupported address scheme '{sc}'"))),
    }
    let Some(colon) = rest.rfind(':') else {
        return Ok(Target::Host {
            host: rest,
            port: None,
        });
    };
    let (host, port) = (&rest[..colon], &rest[colon + 1..]);
    if port.is_empty() {
        return Ok(Target::Host { host, port: None });
    }
    if port.bytes().all(|b| b.is_ascii_digit()) {
        let port = port
            .parse::<u16>()
            .map_err(|_| invalid(format!("invalid port '{port}'")))?;
        return Ok(Target::Host {
            host,
            port: Some(port),
        });
    }
    // Not a number after the last ':': a bare or bracketed IPv6 address without a port
    // ("[::1]", "fe80::1%eth0"); anything else has a malformed port.
    if rest.starts_with('[') || host.contains(':') {
        Ok(Target::Host {
            host: rest,
            port: None,
        })
    } else {
        Err(invalid(format!("invalid port '{port}'")))
    }
}

/// Parses an IPv6 literal with an optional `%scope` (numeric or interface name).
fn parse_scoped_v6(host: &str, port: u16) -> Option<io::Result<SocketAddr>> {
    let (ip, scope) = host.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope_id = match scope.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            let idx = CString::new(scope)
                // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
                .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
                .unwrap_or(0);
            if idx == 0 {
                return Some(Err(invalid(format!("unknown interface '{scope}'"))));
            }
            idx
        }
    };
    Some(Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope_id))))
}

/// Resolves a host (IP literal, `[v6]`, `v6%scope` or hostname) to socket addresses,
/// optionally keeping only one address family.
fn resolve_host(host: &str, port: u16, family: Option<i32>) -> io::Result<Vec<SockAddr>> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // An empty or `*` host means "any address", the usual listener shorthand (":8080").
    let host = match host {
        "" | "*" if family == Some(libc::AF_INET6) => "::",
        "" | "*" => "0.0.0.0",
        h => h,
    };
    let found: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else if let Some(scoped) = parse_scoped_v6(host, port) {
        vec![scoped?]
    } else {
        let mut v: Vec<SocketAddr> = Vec::new();
        for a in (host, port).to_socket_addrs()? {
            // getaddrinfo may repeat an address (e.g. once per /etc/hosts line).
            if !v.contains(&a) {
                v.push(a);
            }
        }
        v
    };
    let out: Vec<SockAddr> = found
        .into_iter()
        .map(SockAddr::Inet)
        .filter(|a| family.is_none_or(|f| a.family() == f))
        .collect();
    if out.is_empty() {
        let what = match family {
            Some(libc::AF_INET) => "IPv4 ",
            Some(libc::AF_INET6) => "IPv6 ",
            _ => "",
        };
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no {what}address found for '{host}'"),
        ));
    }
    Ok(out)
}

/// The unix path of a `unix://` target; a leading `@` selects the abstract namespace (the
/// same spelling [`ntoa`] produces).
fn unix_path(s: &str) -> PathBuf {
    match s.strip_prefix('@') {
        Some(name) => {
            let mut b = Vec::with_capacity(s.len());
            b.push(0);
            b.extend_from_slice(name.as_bytes());
            PathBuf::from(OsStr::from_bytes(&b))
        }
        None => PathBuf::from(s),
    }
}

/// Resolves `"host:port"`, `"[v6]:port"`, `"tcp://h:p?x=y"`, `"udp://..."` or
/// `"unix://path"`. The scheme and `?query` are stripped, the port is taken after the last
/// `:` (missing port = 0), hostnames go through the system resolver. Never empty on success.
pub fn resolve(s: &str) -> io::Result<Vec<SockAddr>> {
    match parse_target(s)? {
        Target::Unix(p) => Ok(vec![SockAddr::Unix(unix_path(p))]),
        Target::Host { host, port } => resolve_host(host, port.unwrap_or(0), None),
    }
}

/// Resolves `s` like [`resolve`] but only in address family `family` (`AF_*`), using
/// `default_port` when `s` names no port. For AF_UNIX, `s` is the path (with or without
/// `unix://`). Backs `broker.aton(family_or_sockaddr, "host")`.
pub fn resolve_in(s: &str, family: i32, default_port: u16) -> io::Result<Vec<SockAddr>> {
    if family == libc::AF_UNIX {
        let p = match parse_target(s) {
            Ok(Target::Unix(p)) => p,
            _ => s,
        };
        return Ok(vec![SockAddr::Unix(unix_path(p))]);
    }
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return Err(invalid(format!("unsupported address family {family}")));
    }
    // A bare IP literal is a host without a port here ("::1" would otherwise split at its
    // last ':'), since this form names a host to place into an existing address.
    let bare = s
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(s);
    if bare.parse::<IpAddr>().is_ok() || parse_scoped_v6(bare, 0).is_some_and(|r| r.is_ok()) {
        return resolve_host(bare, default_port, Some(family));
    }
    match parse_target(s)? {
        Target::Unix(_) => Err(invalid("a unix address in an IP address family")),
        Target::Host { host, port } => {
            resolve_host(host, port.unwrap_or(default_port), Some(family))
        }
    }
}

/// Frees the getifaddrs list even on early return.
struct IfAddrs(*mut libc::ifaddrs);

impl Drop for IfAddrs {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(self.0) }
    }
}

/// Addresses of the interfaces that are up and not loopback, IPv4/IPv6 only, whose name
/// contains `name_filter` (all when `None`), ordered by interface name.
pub fn interfaces(name_filter: Option<&str>) -> io::Result<Vec<(String, Vec<SockAddr>)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` on success; ownership moves into the guard.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let list = IfAddrs(head);
    let mut by_name: BTreeMap<String, Vec<SockAddr>> = BTreeMap::new();
    let mut cur = list.0;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs built; entries stay valid until freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let flags = ifa.ifa_flags;
        if flags & libc::IFF_UP as libc::c_uint == 0
            || flags & libc::IFF_LOOPBACK as libc::c_uint != 0
            || ifa.ifa_addr.is_null()
            || ifa.ifa_name.is_null()
        {
            continue;
        }
        // SAFETY: non-null, points to at least a `struct sockaddr`.
        let len = match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => size_of::<libc::sockaddr_in6>(),
            _ => continue,
        };
        // SAFETY: for these families the kernel stores a full sockaddr_in/sockaddr_in6.
        let bytes = unsafe { std::slice::from_raw_parts(ifa.ifa_addr.cast::<u8>(), len) };
        let Some(addr) = from_binary(bytes) else {
            continue;
        };
        // SAFETY: ifa_name is a NUL-terminated C string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        if name_filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        by_name.entry(name).or_default().push(addr);
    }
    Ok(by_name.into_iter().collect())
}

// ---------------------------------------------------------------------------------------------
// Lua bindings: broker.ntoa / broker.aton / broker.ifaddr (spec 4.6).
// ---------------------------------------------------------------------------------------------

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

    fn v4(s: &str) -> SockAddr {
        SockAddr::Inet(s.parse().unwrap())
    }

    #[test]
    fn binary_round_trip_v4() {
        let a = v4("1.2.3.4:80");
        let b = to_binary(&a);
        assert_eq!(b.len(), 16);
        assert_eq!(&b[..2], &(libc::AF_INET as u16).to_ne_bytes());
        assert_eq!(&b[2..4], &[0, 80]); // port in network order
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[8..], &[0; 8]);
        assert_eq!(from_binary(&b), Some(a));
    }

    #[test]
    fn binary_round_trip_v6_with_scope() {
        let a = SockAddr::Inet(SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            8081,
            0,
            3,
        )));
        let b = to_binary(&a);
        assert_eq!(b.len(), 28);
        assert_eq!(&b[..2], &(libc::AF_INET6 as u16).to_ne_bytes());
        assert_eq!(&b[2..4], &8081u16.to_be_bytes());
        assert_eq!(b[8], 0xfe);
        assert_eq!(&b[24..28], &3u32.to_ne_bytes());
        assert_eq!(from_binary(&b), Some(a));
    }

    #[test]
    fn binary_round_trip_unix() {
        let a = SockAddr::Unix(PathBuf::from("/tmp/stage.sock"));
        let b = to_binary(&a);
        assert_eq!(b.len(), SUN_PATH_OFFSET + "/tmp/stage.sock".len() + 1);
        assert_eq!(*b.last().unwrap(), 0);
        assert_eq!(from_binary(&b), Some(a));
        // Unnamed (as accept reports it) and abstract addresses.
        let fam = (libc::AF_UNIX as u16).to_ne_bytes();
        assert_eq!(from_binary(&fam), Some(SockAddr::Unix(PathBuf::new())));
        let abs = unix_path("@stage");
        let b = to_binary(&SockAddr::Unix(abs.clone()));
        assert_eq!(b.len(), SUN_PATH_OFFSET + 6); // NUL + "stage", no terminator
        assert_eq!(from_binary(&b), Some(SockAddr::Unix(abs.clone())));
        assert_eq!(ntoa(&SockAddr::Unix(abs)), "@stage");
    }

    #[test]
    fn from_binary_rejects_bad_input() {
        assert_eq!(from_binary(b""), None);
        assert_eq!(from_binary(b"\x02"), None);
        let mut b = to_binary(&v4("1.2.3.4:80"));
        b.push(0);
        assert_eq!(from_binary(&b), None, "wrong length");
        b.truncate(15);
        assert_eq!(from_binary(&b), None, "short");
        assert_eq!(from_binary(&[7, 0, 0, 0]), None, "unknown family");
        assert_eq!(from_binary(b"127.0.0.1:8081"), None, "text is not binary");
    }

    #[test]
    fn ntoa_text() {
        assert_eq!(ntoa(&v4("1.2.3.4:80")), "1.2.3.4:80");
        assert_eq!(ntoa(&v4("[::1]:80")), "[::1]:80");
        let scoped = SockAddr::Inet(SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            80,
            0,
            2,
        )));
        assert_eq!(ntoa(&scoped), "[fe80::1%2]:80");
        assert_eq!(ntoa(&SockAddr::Unix("/run/s".into())), "/run/s");
        // Text round-trips through resolve.
        assert_eq!(resolve("[fe80::1%2]:80").unwrap(), vec![scoped]);
    }

    #[test]
    fn resolve_forms() {
        assert_eq!(
            resolve("127.0.0.1:8081").unwrap(),
            vec![v4("127.0.0.1:8081")]
        );
        assert_eq!(resolve("[::1]:80").unwrap(), vec![v4("[::1]:80")]);
        assert_eq!(resolve("[::]:80").unwrap(), vec![v4("[::]:80")]);
        assert_eq!(
            resolve("tcp://10.0.0.1:9000?packet=4k,10k").unwrap(),
            vec![v4("10.0.0.1:9000")]
        );
        assert_eq!(
            resolve("udp://224.0.0.1:8082").unwrap(),
            vec![v4("224.0.0.1:8082")]
        );
        assert_eq!(
            resolve("unix:///tmp/x.sock").unwrap(),
            vec![SockAddr::Unix("/tmp/x.sock".into())]
        );
        // Port after the last ':', even for an unbracketed IPv6 host.
        assert_eq!(resolve("::1:80").unwrap(), vec![v4("[::1]:80")]);
        assert_eq!(resolve(":8080").unwrap(), vec![v4("0.0.0.0:8080")]);
        assert_eq!(resolve("[::1]").unwrap(), vec![v4("[::1]:0")]);
        assert_eq!(resolve("10.1.1.1").unwrap(), vec![v4("10.1.1.1:0")]);
        let local = resolve("localhost:8081").unwrap();
        assert!(!local.is_empty());
        assert!(local.iter().all(|a| matches!(a,
            SockAddr::Inet(s) if s.ip().is_loopback() && s.port() == 8081)));
        assert!(resolve("1.2.3.4:99999").is_err());
        assert!(resolve("host:abc").is_err());
        assert!(resolve("ftp://1.2.3.4:80").is_err());
        assert!(resolve("no-such-host.invalid:80").is_err());
    }

    #[test]
    fn resolve_in_family() {
        assert_eq!(
            resolve_in("127.0.0.1", libc::AF_INET, 77).unwrap(),
            vec![v4("127.0.0.1:77")]
        );
        assert!(resolve_in("::1", libc::AF_INET, 1).is_err());
        assert_eq!(
            resolve_in("::1", libc::AF_INET6, 1).unwrap(),
            vec![v4("[::1]:1")]
        );
        assert_eq!(
            resolve_in("[::1]:5", libc::AF_INET6, 1).unwrap(),
            vec![v4("[::1]:5")]
        );
        assert_eq!(
            resolve_in("/tmp/a", libc::AF_UNIX, 0).unwrap(),
            vec![SockAddr::Unix("/tmp/a".into())]
        );
    }

    #[test]
    fn interfaces_have_no_loopback() {
        let all = interfaces(None).unwrap();
        let names: Vec<&String> = all.iter().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (name, addrs) in &all {
            assert!(!addrs.is_empty());
            for a in addrs {
                match a {
                    SockAddr::Inet(s) => assert!(!s.ip().is_loopback(), "{name}: {s}"),
                    SockAddr::Unix(_) => panic!("unix address on {name}"),
                }
            }
        }
        assert!(interfaces(Some("no-such-interface-name"))
            .unwrap()
            .is_empty());
    }

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
