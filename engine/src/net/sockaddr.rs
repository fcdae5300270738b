//! Binary socket addresses as scripts see them (spec 4.5, 4.6).
//!
//! Scripts never get a parsed address object: peer/local addresses (`socket[1]`, `socket[-1]`),
//! the `addr` argument of UDP receive callbacks and the results of `broker.aton` are Lua strings
//! holding the raw bytes of a `struct sockaddr_in` (16 bytes), `sockaddr_in6` (28 bytes) or
//! `sockaddr_un` (family + NUL-terminated path), exactly as libc lays them out on this host:
//! family in native byte order, port and IPv4/IPv6 address in network order. Keeping that
//! representation makes addresses cheap to pass around, usable as table keys and byte-compatible
//! with the original server. This module converts between those bytes and [`SockAddr`], renders
//! and resolves text addresses and lists interface addresses; the Lua functions
//! `broker.ntoa`, `broker.aton` and `broker.ifaddr` over them are `script::sockaddr`.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
pub(crate) fn unix_text(path: &Path) -> Vec<u8> {
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
pub(crate) fn resolve_host(
    host: &str,
    port: u16,
    family: Option<i32>,
) -> io::Result<Vec<SockAddr>> {
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
        super::lookup::before(host)?;
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
}
