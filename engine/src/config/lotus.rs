//! The `lotus.so+NAME` block (spec/lotus.md §9, docs/config.md "lotus.so"): where lotus
//! listens, who may log in, where it keeps its data and its limits. Checked once at load like
//! every other block — each wrong key is an error naming it — and turned into a typed
//! [`LotusConfig`] by the same walk, so the check and the values read can never disagree.

use std::path::PathBuf;

use simd_json::OwnedValue;

use super::error::{as_int, At, ConfigError};

/// Spec §9.5: the write-behind interval of states.
pub const DEFAULT_FLUSH_MS: u64 = 200;
/// Spec §6.5: messages a channel keeps.
pub const DEFAULT_HISTORY: usize = 256;
/// Spec §9.6: the largest v1 frame body.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// States one project may hold at once (live in memory or stored).
pub const DEFAULT_MAX_STATES: usize = 100_000;
/// The largest state, measured as its stored (MessagePack) size.
pub const DEFAULT_MAX_STATE_BYTES: usize = 1 << 20;
/// The most unsent output one lotus connection may hold (a slow reader past it is closed).
pub const DEFAULT_MAX_OUTPUT: usize = 4 << 20;
/// Where the embedded store keeps its files when the block names no `store`.
pub const DEFAULT_STORE_DIR: &str = "lotus/";

/// A lotus stage's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotusConfig {
    /// `listen`: the v1 protocol's address (`"127.0.0.1:7000"` or `"tcp://..."`).
    pub listen: Option<String>,
    /// `compat`: the original lotus wire's address.
    pub compat: Option<String>,
    pub accounts: Vec<Account>,
    pub store: Store,
    pub flush_ms: u64,
    pub history: usize,
    pub max_frame: usize,
    pub max_states: usize,
    pub max_state_bytes: usize,
    pub max_output: usize,
}

/// A login account (the original kept these in Mongo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub account: String,
    pub secret: Secret,
    pub project: String,
}

/// How an account's password is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// `"password"`: compared as given (convenient for a laptop, not for production).
    Plain(String),
    /// `"password_hash"`: a PHC string (`$argon2id$...`, made by `stage --hash-password`).
    Hash(String),
}

/// Where states, schemas and channel history are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// The embedded default: files under a directory.
    Files(PathBuf),
    /// `redis://host:port/db` (or `rediss://`, `redis+unix://`).
    Redis(String),
}

const KEYS: &str = "`listen`, `compat`, `accounts`, `store`, `flush_ms`, `history`, `max_frame`, `max_states`, `max_state_bytes` and `max_output`";

/// Checks a lotus block, pushing one error per wrong key, and returns what it could read
/// (defaults where a key is absent or wrong).
pub(crate) fn parse(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> LotusConfig {
    let mut cfg = LotusConfig {
        listen: None,
        compat: None,
        accounts: Vec::new(),
        store: Store::Files(PathBuf::from(DEFAULT_STORE_DIR)),
        flush_ms: DEFAULT_FLUSH_MS,
        history: DEFAULT_HISTORY,
        max_frame: DEFAULT_MAX_FRAME,
        max_states: DEFAULT_MAX_STATES,
        max_state_bytes: DEFAULT_MAX_STATE_BYTES,
        max_output: DEFAULT_MAX_OUTPUT,
    };
    let OwnedValue::Object(o) = v else {
        errs.push(at.type_err(&format!("an object with {KEYS}"), v));
        return cfg;
    };
    let mut keys: Vec<_> = o.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (k, x) in keys {
        let at = at.key(k);
        match k.as_str() {
            "listen" => cfg.listen = address(x, &at, errs),
            "compat" => cfg.compat = address(x, &at, errs),
            "accounts" => cfg.accounts = accounts(x, &at, errs),
            "store" => match x {
                OwnedValue::String(s)
                    if s.starts_with("redis://")
                        || s.starts_with("rediss://")
                        || s.starts_with("redis+unix://") =>
                {
                    cfg.store = Store::Redis(s.to_string())
                }
                OwnedValue::String(s) if !s.is_empty() && !s.contains("://") => {
                    cfg.store = Store::Files(PathBuf::from(s.as_str()))
                }
                _ => errs.push(at.type_err(
                    "\"redis://host:port/db\" or a directory for the embedded store",
                    x,
                )),
            },
            "flush_ms" => {
                cfg.flush_ms = number(x, &at, errs, 1, 60_000, "msec").unwrap_or(cfg.flush_ms)
            }
            "history" => {
                cfg.history =
                    number(x, &at, errs, 1, 1 << 20, "messages").map_or(cfg.history, |n| n as usize)
            }
            "max_frame" => {
                cfg.max_frame =
                    number(x, &at, errs, 64, 1 << 30, "bytes").map_or(cfg.max_frame, |n| n as usize)
            }
            "max_states" => {
                cfg.max_states = number(x, &at, errs, 1, u32::MAX.into(), "states")
                    .map_or(cfg.max_states, |n| n as usize)
            }
            "max_output" => {
                cfg.max_output = number(x, &at, errs, 1024, 1 << 30, "bytes")
                    .map_or(cfg.max_output, |n| n as usize)
            }
            "max_state_bytes" => {
                cfg.max_state_bytes = number(x, &at, errs, 64, 1 << 30, "bytes")
                    .map_or(cfg.max_state_bytes, |n| n as usize)
            }
            _ => errs.push(at.invalid(format!("unknown key: a lotus.so block takes {KEYS}"))),
        }
    }
    if cfg.listen.is_none() && cfg.compat.is_none() {
        errs.push(at.invalid(
            "a lotus.so block needs `listen` (v1 wire) or `compat` (the original wire), or both",
        ));
    }
    if cfg.accounts.is_empty() {
        errs.push(at.invalid("a lotus.so block needs `accounts` (nobody could log in)"));
    }
    cfg
}

fn address(x: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Option<String> {
    match x {
        OwnedValue::String(s) => {
            let hostport = s.strip_prefix("tcp://").unwrap_or(s);
            match hostport.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Some(hostport.to_string())
                }
                _ => {
                    errs.push(at.invalid(format!(
                        "`{s}` is not an address: expected \"HOST:PORT\" or \"tcp://HOST:PORT\""
                    )));
                    None
                }
            }
        }
        _ => {
            errs.push(at.type_err("an address string \"HOST:PORT\"", x));
            None
        }
    }
}

fn number(
    x: &OwnedValue,
    at: &At,
    errs: &mut Vec<ConfigError>,
    min: u64,
    max: u64,
    unit: &str,
) -> Option<u64> {
    match as_int(x) {
        Some(n) if n >= i128::from(min) && n <= i128::from(max) => Some(n as u64),
        Some(n) => {
            errs.push(at.invalid(format!(
                "{n} {unit} is out of range: expected {min} to {max}"
            )));
            None
        }
        None => {
            errs.push(at.type_err(&format!("an integer ({unit})"), x));
            None
        }
    }
}

/// `{"ACCOUNT": {"password" | "password_hash": "...", "project": "..."}}`.
fn accounts(x: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Vec<Account> {
    let OwnedValue::Object(o) = x else {
        errs.push(at.type_err(
            "an object {\"account\": {\"password_hash\": ..., \"project\": ...}}",
            x,
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut entries: Vec<_> = o.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for (name, entry) in entries {
        let at = at.key(name);
        let OwnedValue::Object(e) = entry else {
            errs.push(at.type_err(
                "an object {\"password_hash\": ..., \"project\": ...}",
                entry,
            ));
            continue;
        };
        let text = |key: &str| match e.get(key) {
            Some(OwnedValue::String(s)) => Some(s.to_string()),
            _ => None,
        };
        for (k, v) in e.iter() {
            match k.as_str() {
                "password" | "password_hash" | "project" if matches!(v, OwnedValue::String(_)) => {}
                "password" | "password_hash" | "project" => {
                    errs.push(at.key(k).type_err("a string", v))
                }
                _ => errs.push(at.key(k).invalid(
                    "unknown key: an account takes `password` or `password_hash`, and `project`",
                )),
            }
        }
        let secret = match (text("password"), text("password_hash")) {
            (Some(p), None) => Secret::Plain(p),
            (None, Some(h)) if h.starts_with('$') => Secret::Hash(h),
            (None, Some(_)) => {
                errs.push(at.key("password_hash").invalid("expected a PHC string such as `$argon2id$v=19$...` (make one with `stage --hash-password`)"));
                continue;
            }
            _ => {
                errs.push(
                    at.invalid("an account needs exactly one of `password` and `password_hash`"),
                );
                continue;
            }
        };
        let Some(project) = text("project").filter(|p| !p.is_empty()) else {
            errs.push(at.invalid("an account needs a `project`"));
            continue;
        };
        out.push(Account {
            account: name.to_string(),
            secret,
            project,
        });
    }
    out.sort_by(|a, b| a.account.cmp(&b.account));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> (LotusConfig, Vec<String>) {
        let v = simd_json::to_owned_value(&mut json.as_bytes().to_vec()).unwrap();
        let mut errs = Vec::new();
        let cfg = parse(&v, &At::new("stage.json", "lotus.so+l"), &mut errs);
        (cfg, errs.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_minimal_block_gets_the_documented_defaults() {
        let (cfg, errs) = check(
            r#"{"listen": "127.0.0.1:7000", "accounts": {"gate": {"password": "pw", "project": "demo"}}}"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(cfg.listen.as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(cfg.compat, None);
        assert_eq!(cfg.store, Store::Files(DEFAULT_STORE_DIR.into()));
        assert_eq!(
            (cfg.flush_ms, cfg.history, cfg.max_frame),
            (200, 256, 1 << 20)
        );
        assert_eq!(
            cfg.accounts,
            [Account {
                account: "gate".into(),
                secret: Secret::Plain("pw".into()),
                project: "demo".into()
            }]
        );
    }

    #[test]
    fn every_key_is_read() {
        let (cfg, errs) = check(
            r#"{"listen": "tcp://0.0.0.0:7000", "compat": "0.0.0.0:9999", "store": "redis://127.0.0.1:6379/2",
                "flush_ms": 50, "history": 16, "max_frame": 4096, "max_states": 10, "max_state_bytes": 1000,
                "accounts": {"g": {"password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", "project": "p"}}}"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(cfg.listen.as_deref(), Some("0.0.0.0:7000"));
        assert_eq!(cfg.compat.as_deref(), Some("0.0.0.0:9999"));
        assert_eq!(cfg.store, Store::Redis("redis://127.0.0.1:6379/2".into()));
        assert_eq!(
            (
                cfg.flush_ms,
                cfg.history,
                cfg.max_frame,
                cfg.max_states,
                cfg.max_state_bytes
            ),
            (50, 16, 4096, 10, 1000)
        );
        assert!(
            matches!(cfg.accounts[0].secret, Secret::Hash(ref h) if h.starts_with("$argon2id$"))
        );
    }

    #[test]
    fn wrong_keys_are_named() {
        let (_, errs) = check(
            r#"{"listen": "nowhere", "flush_ms": 0, "store": "mongodb://x", "colour": 1,
            "accounts": {"a": {"password": "x", "password_hash": "$y", "project": "p"}, "b": {"password": "x"}}}"#,
        );
        assert_eq!(
            errs,
            [
                "config `stage.json`: key `lotus.so+l.accounts.a`: an account needs exactly one of `password` and `password_hash`",
                "config `stage.json`: key `lotus.so+l.accounts.b`: an account needs a `project`",
                "config `stage.json`: key `lotus.so+l.colour`: unknown key: a lotus.so block takes `listen`, `compat`, `accounts`, `store`, `flush_ms`, `history`, `max_frame`, `max_states`, `max_state_bytes` and `max_output`",
                "config `stage.json`: key `lotus.so+l.flush_ms`: 0 msec is out of range: expected 1 to 60000",
                "config `stage.json`: key `lotus.so+l.listen`: `nowhere` is not an address: expected \"HOST:PORT\" or \"tcp://HOST:PORT\"",
                "config `stage.json`: key `lotus.so+l.store`: expected \"redis://host:port/db\" or a directory for the embedded store, found string \"mongodb://x\"",
                "config `stage.json`: key `lotus.so+l`: a lotus.so block needs `listen` (v1 wire) or `compat` (the original wire), or both",
                "config `stage.json`: key `lotus.so+l`: a lotus.so block needs `accounts` (nobody could log in)",
            ]
        );
    }
}
