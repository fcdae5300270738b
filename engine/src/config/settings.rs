//! The `#` settings of the configuration (spec stage.md 9.2, services.md 6.2–6.4): `#services`,
//! `#router`, `#cluster`, `#threads`, `#startup` and our own `#restart`. Each parser takes the raw value and its
//! location, returns the typed setting and pushes one error per bad element, so a file with
//! several mistakes is reported completely. Nothing here opens sockets or forks: this is only
//! the shape of the data.

use std::net::{Ipv4Addr, Ipv6Addr};

use simd_json::OwnedValue;

use super::error::{as_int, At, ConfigError};
use super::modules::ModuleRef;

/// `#services`: addresses the supervisor binds before forking so every stage process shares
/// them (spec services.md 6.2). Entries are normalised to `host:port` / `[v6]:port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services {
    pub tcp: Vec<String>,
    pub udp: Vec<String>,
}

/// `#router`: liveness window and re-registration interval (spec services.md 6.3/6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Router {
    /// `#router[0]` as written, if present.
    pub sync_ms: Option<u64>,
    /// A registrant older than this is skipped: `1.9 × sync_ms`, or 500 when `#router` gives no
    /// base (services.md open question 21: the default *window* is 500, not 1.9 × 500).
    pub expiry_ms: u64,
    /// Heartbeat period `timeNotify`: `#router[1]`, else `#router[0]`, else 300.
    pub notify_ms: u64,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            sync_ms: None,
            expiry_ms: DEFAULT_EXPIRY_MS,
            notify_ms: DEFAULT_NOTIFY_MS,
        }
    }
}

const DEFAULT_EXPIRY_MS: u64 = 500;
const DEFAULT_NOTIFY_MS: u64 = 300;

/// `#restart`: the supervisor's restart intensity (Erlang/OTP's `intensity` and `period`). A
/// process restarted more than `intensity` times within `period_s` seconds is restarted only
/// after a growing delay, so a crash loop cannot keep the machine busy forking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub intensity: u32,
    pub period_s: u32,
}

impl Default for Restart {
    fn default() -> Self {
        // Five restarts a minute: a process that crashes now and then (a bad packet, a
        // script bug on one code path) is back at once; one that crashes every few seconds
        // is slowed down after the fifth time.
        Restart {
            intensity: 5,
            period_s: 60,
        }
    }
}

/// One element of `#cluster` (spec services.md 6.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEntry {
    /// Integer: UDP port the router listens on for other nodes.
    Listen(u16),
    /// `"host:port"`: a remote router this node's processes register with.
    Member(String),
    /// `":eth0"` / `":1.2.3.4"`: interface-name prefix or IPv4 address to advertise (text after
    /// the `:`).
    Advertise(String),
    /// `"=host:port"`: fallback node for messages nobody here takes (text after the `=`).
    Backup(String),
    /// `"nats://[user:pass@]host:port"` or `"tls://..."`: a NATS server of the cluster
    /// (DESIGN.md principle 7: the cluster runs over NATS, not the original's UDP). Several
    /// entries are the client's failover list. Kept as written: credentials in it are the
    /// client library's to read.
    Nats(String),
    /// `{"ca": ..., "cert": ..., "key": ..., "nkey": ..., "creds": ...}`: how to authenticate
    /// to the NATS servers, by files (no secret has to sit in the configuration itself).
    NatsAuth(NatsAuth),
}

/// The NATS client's TLS and authentication files (an object entry of `#cluster`). Paths are
/// relative to the working directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// PEM file of the CA certificates that sign the servers' certificates (else the
    /// system's web roots).
    pub ca: Option<String>,
    /// PEM certificate and private key this node presents to servers that verify clients.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// A file holding an NKey seed (`SU...`), for servers that authorize by NKey.
    pub nkey: Option<String>,
    /// A `.creds` file (JWT + NKey seed) of a NATS account.
    pub creds: Option<String>,
}

/// The authentication entry of `#cluster`, if any (the last one wins).
pub fn nats_auth(entries: &[ClusterEntry]) -> NatsAuth {
    entries
        .iter()
        .rev()
        .find_map(|e| match e {
            ClusterEntry::NatsAuth(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn nats_auth_entry(o: &simd_json::owned::Object, at: &At, errs: &mut Vec<ConfigError>) -> NatsAuth {
    let mut auth = NatsAuth::default();
    for (k, v) in o.iter() {
        let slot = match k.as_str() {
            "ca" => &mut auth.ca,
            "cert" => &mut auth.cert,
            "key" => &mut auth.key,
            "nkey" => &mut auth.nkey,
            "creds" => &mut auth.creds,
            other => {
                errs.push(at.invalid(format!(
                    "unknown NATS option `{other}` (expected ca, cert, key, nkey, creds)"
                )));
                continue;
            }
        };
        match v {
            OwnedValue::String(s) if !s.is_empty() => *slot = Some(s.to_string()),
            other => errs.push(at.type_err(&format!("`{k}`: a file path"), other)),
        }
    }
    if auth.cert.is_some() != auth.key.is_some() {
        errs.push(at.invalid("`cert` and `key` go together (the client certificate and its key)"));
    }
    if auth.nkey.is_some() && auth.creds.is_some() {
        errs.push(
            at.invalid("`nkey` and `creds` exclude each other (a .creds file holds its own NKey)"),
        );
    }
    auth
}

/// The NATS servers among `#cluster`'s entries, in order (empty: no cluster).
pub fn nats_servers(entries: &[ClusterEntry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| match e {
            ClusterEntry::Nats(url) => Some(url.clone()),
            _ => None,
        })
        .collect()
}

/// A `nats://` or `tls://` URL with a host after the scheme (and optional credentials).
fn nats_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("nats://")
        .or_else(|| s.strip_prefix("tls://"))
        .unwrap_or_default();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') || host.contains('/') {
        return Err(format!(
            "`{s}`: expected \"nats://[user:password@]host[:port]\" (or tls://)"
        ));
    }
    Ok(s.to_string())
}

/// `#node`: this node's name in the cluster, `[A-Za-z0-9_-]`, 1 to 64 characters (it is
/// part of NATS subjects, where `.`, `*`, `>` and spaces have meanings of their own).
pub(crate) fn node_name(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Option<String> {
    match v {
        OwnedValue::String(s) if valid_node_name(s) => Some(s.to_string()),
        OwnedValue::String(s) => {
            errs.push(at.invalid(format!(
                "`{s}`: a node name is 1 to 64 characters of A-Z, a-z, 0-9, `_` and `-`"
            )));
            None
        }
        other => {
            errs.push(at.type_err("a string (the node's name in the cluster)", other));
            None
        }
    }
}

pub fn valid_node_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The default node name, `<host>-<pid>`, with every character a node name may not hold
/// replaced by `_` (a host name may hold dots). `pid` is the supervisor's in a
/// multi-process node, so every process of the node agrees on it.
pub fn default_node_name(host: &str, pid: u32) -> String {
    let host: String = host
        .chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let host = if host.is_empty() { "node".into() } else { host };
    format!("{host}-{pid}")
}

/// `#threads`: worker threads per stage process and the message-object pool size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// `None` when absent or `<= 0`: the runtime then picks its own default (spec: 2 × CPUs).
    pub cores: Option<usize>,
    pub objects: usize,
}

pub const DEFAULT_OBJECTS: usize = 100_000;

impl Default for Threads {
    fn default() -> Self {
        Threads {
            cores: None,
            objects: DEFAULT_OBJECTS,
        }
    }
}

/// `#startup`: the process layout (spec stage.md 1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// The normal case: one element per forked process, or a delay between forks.
    Array(Vec<StartupEntry>),
    /// `#startup` was not an array (a single module string): no fork, the master itself runs
    /// the module as one stage process (development mode).
    Single(Vec<ModuleRef>),
}

impl Startup {
    /// Every module of every process, in order (modules listed twice appear twice).
    pub fn modules(&self) -> impl Iterator<Item = &ModuleRef> {
        let (single, array): (&[ModuleRef], &[StartupEntry]) = match self {
            Startup::Single(m) => (m, &[]),
            Startup::Array(a) => (&[], a),
        };
        single.iter().chain(array.iter().flat_map(|e| match e {
            StartupEntry::Process(m) => m.as_slice(),
            StartupEntry::Delay(_) => &[],
        }))
    }

    /// The processes of the layout with their numbers: 1-based, counting process entries
    /// only (delays are not processes), so `process.stage` does not shift when a delay is
    /// added. A non-array `#startup` is process 1.
    pub fn processes(&self) -> Vec<(u32, &[ModuleRef])> {
        match self {
            Startup::Single(m) => vec![(1, m.as_slice())],
            Startup::Array(a) => a
                .iter()
                .filter_map(|e| match e {
                    StartupEntry::Process(m) => Some(m.as_slice()),
                    StartupEntry::Delay(_) => None,
                })
                .enumerate()
                .map(|(i, m)| (i as u32 + 1, m))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupEntry {
    /// Integer element: sleep this many msec before the next fork.
    Delay(u64),
    /// String or array of strings: one process hosting these stage modules.
    Process(Vec<ModuleRef>),
}

pub(crate) fn services(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Services {
    let mut out = Services::default();
    let OwnedValue::Object(obj) = v else {
        errs.push(at.type_err("an object like {\"tcp\": [\"0.0.0.0:8081\"]}", v));
        return out;
    };
    for (key, list) in obj.iter() {
        let at = at.key(key);
        let dest = match key.as_str() {
            "tcp" => &mut out.tcp,
            "udp" => &mut out.udp,
            // Spec 9.2: other keys are fatal in the original; a typo here would silently
            // leave a port unshared.
            _ => {
                errs.push(at.invalid("unknown key: `#services` takes only `tcp` and `udp`"));
                continue;
            }
        };
        match list {
            OwnedValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(a) = service_addr(item, &at.index(i), errs) {
                        dest.push(a);
                    }
                }
            }
            single => {
                if let Some(a) = service_addr(single, &at, errs) {
                    dest.push(a);
                }
            }
        }
    }
    out
}

/// `"host:port"`, `"[v6]:port"`, or a bare port (integer or digit string) meaning
/// `0.0.0.0:port`.
fn service_addr(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Option<String> {
    const EXPECTED: &str = "an address \"host:port\", \"[v6]:port\" or a port number";
    let result = match v {
        OwnedValue::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            parse_port(s).map(|p| format!("{}:{p}", Ipv4Addr::UNSPECIFIED))
        }
        OwnedValue::String(s) => host_port(s),
        other => match as_int(other) {
            Some(i) => port_from_int(i).map(|p| format!("{}:{p}", Ipv4Addr::UNSPECIFIED)),
            None => {
                errs.push(at.type_err(EXPECTED, v));
                return None;
            }
        },
    };
    result.map_err(|m| errs.push(at.invalid(m))).ok()
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .map_err(|_| format!("port `{s}` is not a number from 0 to 65535"))
}

fn port_from_int(i: i128) -> Result<u16, String> {
    u16::try_from(i).map_err(|_| format!("port {i} is not a number from 0 to 65535"))
}

/// Validates `host:port` / `[v6]:port` and returns it normalised (IPv6 in canonical form).
/// Host names are kept as written: resolving them is the network layer's business.
pub(crate) fn host_port(s: &str) -> Result<String, String> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, port)) = rest.split_once("]:") else {
            return Err(format!("`{s}` is not of the form \"[v6]:port\""));
        };
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("`{host}` in `{s}` is not an IPv6 address"))?;
        return Ok(format!("[{ip}]:{}", parse_port(port)?));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("`{s}` has no port: expected \"host:port\""));
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host: expected \"host:port\""));
    }
    if host.contains(':') {
        return Err(format!(
            "`{s}`: an IPv6 host must be in brackets, \"[v6]:port\""
        ));
    }
    Ok(format!("{host}:{}", parse_port(port)?))
}

pub(crate) fn router(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Router {
    const EXPECTED: &str = "an array [sync_ms, notify_ms] of positive integers";
    // A bare integer is taken as `[sync_ms]`, like the other `#` keys that accept one.
    let items: Vec<(At, &OwnedValue)> = match v {
        OwnedValue::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| (at.index(i), x))
            .collect(),
        other if as_int(other).is_some() => vec![(at.clone(), other)],
        other => {
            errs.push(at.type_err(EXPECTED, other));
            return Router::default();
        }
    };
    if items.len() > 2 {
        errs.push(at.invalid(format!(
            "expected at most 2 elements [sync_ms, notify_ms], found {}",
            items.len()
        )));
    }
    let mut ms = [None, None];
    for (slot, (at, x)) in ms.iter_mut().zip(&items) {
        match as_int(x) {
            // Zero would make every registrant stale at once, or heartbeat in a busy loop.
            Some(i) if i > 0 && i <= i128::from(u32::MAX) => *slot = Some(i as u64),
            Some(i) => errs.push(at.invalid(format!(
                "{i} msec is out of range: expected 1 to {}",
                u32::MAX
            ))),
            None => errs.push(at.type_err("a positive integer (msec)", x)),
        }
    }
    let [sync, notify] = ms;
    Router {
        sync_ms: sync,
        expiry_ms: sync.map_or(DEFAULT_EXPIRY_MS, |s| s * 19 / 10),
        notify_ms: notify.or(sync).unwrap_or(DEFAULT_NOTIFY_MS),
    }
}

pub(crate) fn restart(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Restart {
    const EXPECTED: &str = "an array [intensity, period_s] of positive integers";
    let OwnedValue::Array(a) = v else {
        errs.push(at.type_err(EXPECTED, v));
        return Restart::default();
    };
    if a.len() != 2 {
        errs.push(at.invalid(format!(
            "expected 2 elements [intensity, period_s], found {}",
            a.len()
        )));
        return Restart::default();
    }
    let mut n = [0u32; 2];
    for (i, (slot, x)) in n.iter_mut().zip(a.iter()).enumerate() {
        match as_int(x) {
            Some(v) if v > 0 && v <= 86_400 => *slot = v as u32,
            Some(v) => errs.push(
                at.index(i)
                    .invalid(format!("{v} is out of range: expected 1 to 86400")),
            ),
            None => errs.push(at.index(i).type_err("a positive integer", x)),
        }
    }
    match n {
        [intensity, period_s] if intensity > 0 && period_s > 0 => Restart {
            intensity,
            period_s,
        },
        _ => Restart::default(),
    }
}

pub(crate) fn cluster(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Vec<ClusterEntry> {
    let items: Vec<(At, &OwnedValue)> = match v {
        OwnedValue::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| (at.index(i), x))
            .collect(),
        // Spec: "int or array"; a lone string is accepted the same way for symmetry.
        other => vec![(at.clone(), other)],
    };
    let mut out = Vec::new();
    for (at, x) in items {
        let entry = match x {
            OwnedValue::String(s) => {
                if let Some(dev) = s.strip_prefix(':') {
                    if dev.is_empty() {
                        Err("`:` must be followed by an interface name or IPv4 address".into())
                    } else {
                        Ok(ClusterEntry::Advertise(dev.to_string()))
                    }
                } else if let Some(addr) = s.strip_prefix('=') {
                    host_port(addr).map(ClusterEntry::Backup)
                } else if s.starts_with("nats://") || s.starts_with("tls://") {
                    nats_url(s).map(ClusterEntry::Nats)
                } else {
                    host_port(s).map(ClusterEntry::Member)
                }
            }
            OwnedValue::Object(o) => Ok(ClusterEntry::NatsAuth(nats_auth_entry(o, &at, errs))),
            other => match as_int(other) {
                Some(0) => Err("listen port 0 cannot be reached by other nodes".into()),
                Some(i) => port_from_int(i).map(ClusterEntry::Listen),
                None => {
                    errs.push(at.type_err(
                        "a listen port, \"host:port\", \":interface\", \"=host:port\", \"nats://host:port\" or an object of NATS files {ca, cert, key, nkey, creds}",
                        other,
                    ));
                    continue;
                }
            },
        };
        match entry {
            Ok(e) => out.push(e),
            Err(m) => errs.push(at.invalid(m)),
        }
    }
    out
}

pub(crate) fn threads(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Threads {
    let mut out = Threads::default();
    let (cores, objects) = match v {
        OwnedValue::Array(a) => {
            if a.len() > 2 {
                errs.push(at.invalid(format!(
                    "expected at most 2 elements [ncpu, nobjects], found {}",
                    a.len()
                )));
            }
            (
                a.first().map(|x| (at.index(0), x)),
                a.get(1).map(|x| (at.index(1), x)),
            )
        }
        other if as_int(other).is_some() => (Some((at.clone(), other)), None),
        other => {
            errs.push(at.type_err("an integer or an array [ncpu, nobjects]", other));
            return out;
        }
    };
    if let Some((at, x)) = cores {
        match as_int(x) {
            Some(i) if i <= 0 => {}
            // More threads than this is a typo, not a machine.
            Some(i) if i <= 4096 => out.cores = Some(i as usize),
            Some(i) => errs.push(at.invalid(format!("{i} threads is more than the limit 4096"))),
            None => errs.push(at.type_err("an integer (thread count, <= 0 for automatic)", x)),
        }
    }
    if let Some((at, x)) = objects {
        match as_int(x) {
            Some(i) if i > 0 && i <= i128::from(u32::MAX) => out.objects = i as usize,
            Some(i) => errs.push(at.invalid(format!(
                "object pool size {i} is out of range: expected 1 to {}",
                u32::MAX
            ))),
            None => errs.push(at.type_err("a positive integer (object pool size)", x)),
        }
    }
    out
}

pub(crate) fn startup(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Startup {
    let module = |x: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>| match x {
        OwnedValue::String(s) => ModuleRef::parse(s)
            .map_err(|m| errs.push(at.invalid(m)))
            .ok(),
        other => {
            errs.push(at.type_err("a module string like \"lua.so+stage\"", other));
            None
        }
    };
    let items = match v {
        OwnedValue::String(_) => {
            return Startup::Single(module(v, at, errs).into_iter().collect());
        }
        OwnedValue::Array(a) => a,
        other => {
            errs.push(at.type_err(
                "an array (one element per process) or a single module string",
                other,
            ));
            return Startup::Array(Vec::new());
        }
    };
    let errors_before = errs.len();
    let mut out = Vec::with_capacity(items.len());
    for (i, x) in items.iter().enumerate() {
        let at = at.index(i);
        match x {
            OwnedValue::String(_) => {
                if let Some(m) = module(x, &at, errs) {
                    out.push(StartupEntry::Process(vec![m]));
                }
            }
            OwnedValue::Array(mods) => {
                if mods.is_empty() {
                    errs.push(at.invalid("a process must load at least one module"));
                }
                let mods: Vec<ModuleRef> = mods
                    .iter()
                    .enumerate()
                    .filter_map(|(j, m)| module(m, &at.index(j), errs))
                    .collect();
                if !mods.is_empty() {
                    out.push(StartupEntry::Process(mods));
                }
            }
            other => match as_int(other) {
                Some(ms) if ms >= 0 && ms <= i128::from(u32::MAX) => {
                    out.push(StartupEntry::Delay(ms as u64))
                }
                Some(ms) => errs.push(at.invalid(format!(
                    "delay {ms} msec is out of range: expected 0 to {}",
                    u32::MAX
                ))),
                None => errs.push(at.type_err(
                    "a module string, an array of module strings or a delay in msec",
                    other,
                )),
            },
        }
    }
    // Spec 1.1: with only the router left the master exits at once; say so up front.
    // Only judged when the elements themselves were fine, so one typo gives one error.
    if items.is_empty() {
        errs.push(at.invalid("is empty: it must start at least one stage process"));
    } else if errs.len() == errors_before && out.iter().all(|e| matches!(e, StartupEntry::Delay(_)))
    {
        errs.push(at.invalid("starts no stage process (only delays)"));
    }
    Startup::Array(out)
}
