//! The `curl.so` configuration (spec services.md §5.1): a bare string is the user-agent, an
//! object is `{"user-agent": "...", "timeout": msec, "verbose": 0|1}`. `config::modules`
//! (`check_curl`) has already checked the shape, so this reads the raw value and keeps the
//! default for whatever it does not understand instead of failing again.

use std::time::Duration;

use simd_json::{OwnedValue, StaticNode};

use crate::config::{Config, ModuleRef};

/// Spec §5.1: the default total timeout of a request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(10_000);

/// The most response body bytes one request may hold in memory. A bigger body is not read
/// (see `reply::FILESIZE_EXCEEDED`): a script fetching an unexpected download must not be able
/// to exhaust the process.
pub const MAX_BODY: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Sent as `User-Agent` unless the request names its own.
    pub user_agent: String,
    /// The total timeout before the message deadline and the request's own are considered.
    /// Zero means "no limit", as `CURLOPT_TIMEOUT_MS` 0 does in the original.
    pub timeout: Duration,
    /// Logs one line per request and per reply (the original turned on curl's own trace).
    pub verbose: bool,
    /// See [`MAX_BODY`]; not in the spec's block, so only code sets it for now.
    pub max_body: usize,
}

/// `stage/<version>`: says which server calls, the way curl says `curl/8.x`.
pub fn default_user_agent() -> String {
    format!("stage/{}", env!("CARGO_PKG_VERSION"))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            user_agent: default_user_agent(),
            timeout: DEFAULT_TIMEOUT,
            verbose: false,
            max_body: MAX_BODY,
        }
    }
}

impl HttpConfig {
    /// Reads a `curl.so` block; JSON null (no block) gives the defaults.
    pub fn from_value(v: &OwnedValue) -> HttpConfig {
        let mut out = HttpConfig::default();
        match v {
            OwnedValue::String(ua) => out.user_agent = ua.to_string(),
            OwnedValue::Object(o) => {
                if let Some(OwnedValue::String(ua)) = o.get("user-agent") {
                    out.user_agent = ua.to_string();
                }
                if let Some(ms) = o.get("timeout").and_then(non_negative) {
                    out.timeout = Duration::from_millis(ms);
                }
                if let Some(flag) = o.get("verbose").and_then(non_negative) {
                    out.verbose = flag != 0;
                }
            }
            _ => {}
        }
        out
    }

    /// Spec §0.1 lookup: `config[entry]`, else `config[module]` (`"curl.so"`), else defaults.
    pub fn from_config(config: &Config, module: &ModuleRef) -> HttpConfig {
        let OwnedValue::Object(top) = &config.raw else {
            return HttpConfig::default();
        };
        let v = top
            .get(module.entry.as_str())
            .or_else(|| top.get(module.module.as_str()));
        v.map_or_else(HttpConfig::default, HttpConfig::from_value)
    }
}

fn non_negative(v: &OwnedValue) -> Option<u64> {
    match v {
        OwnedValue::Static(StaticNode::I64(i)) => u64::try_from(*i).ok(),
        OwnedValue::Static(StaticNode::U64(u)) => Some(*u),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, ConfigSource};

    fn parse(text: &str) -> HttpConfig {
        let mut bytes = text.as_bytes().to_vec();
        HttpConfig::from_value(&simd_json::to_owned_value(&mut bytes).unwrap())
    }

    #[test]
    fn http_config_string_is_the_user_agent() {
        let c = parse(r#""agent/2""#);
        assert_eq!(c.user_agent, "agent/2");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert!(!c.verbose);
    }

    #[test]
    fn http_config_object_and_defaults() {
        let c = parse(r#"{"user-agent": "ua", "timeout": 2500, "verbose": 1}"#);
        assert_eq!(c.user_agent, "ua");
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert!(c.verbose);
        let d = parse("null");
        assert_eq!(d, HttpConfig::default());
        assert_eq!(d.user_agent, format!("stage/{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(d.timeout, Duration::from_millis(10_000));
        assert_eq!(d.max_body, 16 * 1024 * 1024);
        assert_eq!(parse(r#"{"timeout": 0}"#).timeout, Duration::ZERO);
    }

    #[test]
    fn http_config_looked_up_by_entry_then_module() {
        let text = r##"{
            "#startup": [["curl.so+agent", "curl.so+other"]],
            "curl.so+agent": {"user-agent": "by-entry"},
            "curl.so": "by-module"
        }"##;
        let cfg = load(vec![ConfigSource::new("t.json", text)]).unwrap();
        let e = HttpConfig::from_config(&cfg, &ModuleRef::parse("curl.so+agent").unwrap());
        assert_eq!(e.user_agent, "by-entry");
        let m = HttpConfig::from_config(&cfg, &ModuleRef::parse("curl.so+other").unwrap());
        assert_eq!(m.user_agent, "by-module");
    }
}
