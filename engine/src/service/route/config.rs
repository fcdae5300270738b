//! The `=route` configuration. The spec (services.md §4.1) has none; this build accepts an
//! optional object `{"keepalive": msec}` (default 30000, spec §4.2) so that a deployment, or a
//! test, can choose how long a silent subscriber is kept. `config::modules` has already
//! checked the shape, so this reads the raw value and skips what it does not understand.

use std::time::Duration;

use simd_json::{OwnedValue, StaticNode};

use super::subscribers::KEEPALIVE;
use crate::config::{Config, ModuleRef};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// A subscriber silent (no `route:@`) this long is dropped with its subscriptions.
    pub keepalive: Duration,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            keepalive: KEEPALIVE,
        }
    }
}

impl RouteConfig {
    /// Reads a `=route` block; JSON null (no block) gives the defaults.
    pub fn from_value(v: &OwnedValue) -> RouteConfig {
        let mut out = RouteConfig::default();
        if let OwnedValue::Object(o) = v {
            let ms = match o.get("keepalive") {
                Some(OwnedValue::Static(StaticNode::I64(i))) => u64::try_from(*i).ok(),
                Some(OwnedValue::Static(StaticNode::U64(u))) => Some(*u),
                _ => None,
            };
            if let Some(ms) = ms.filter(|ms| *ms > 0) {
                out.keepalive = Duration::from_millis(ms);
            }
        }
        out
    }

    /// Spec §0.1 lookup: `config[entry]`, else `config[module]`, else the defaults.
    pub fn from_config(config: &Config, module: &ModuleRef) -> RouteConfig {
        let OwnedValue::Object(top) = &config.raw else {
            return RouteConfig::default();
        };
        let v = top
            .get(module.entry.as_str())
            .or_else(|| top.get(module.module.as_str()));
        v.map_or_else(RouteConfig::default, RouteConfig::from_value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, ConfigSource};

    fn parse(text: &str) -> RouteConfig {
        let mut bytes = text.as_bytes().to_vec();
        RouteConfig::from_value(&simd_json::to_owned_value(&mut bytes).unwrap())
    }

    #[test]
    fn keepalive_defaults_to_30_s() {
        assert_eq!(parse("null").keepalive, Duration::from_secs(30));
        assert_eq!(parse("{}").keepalive, Duration::from_secs(30));
        assert_eq!(
            parse(r#"{"keepalive": 500}"#).keepalive,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn looked_up_by_entry_then_module() {
        let text = r##"{
            "#startup": [["=route+route", "=route+other"]],
            "=route+route": {"keepalive": 700},
            "=route": {"keepalive": 900}
        }"##;
        let cfg = load(vec![ConfigSource::new("t.json", text)]).unwrap();
        let by_entry = RouteConfig::from_config(&cfg, &ModuleRef::parse("=route+route").unwrap());
        assert_eq!(by_entry.keepalive, Duration::from_millis(700));
        let by_module = RouteConfig::from_config(&cfg, &ModuleRef::parse("=route+other").unwrap());
        assert_eq!(by_module.keepalive, Duration::from_millis(900));
    }
}
