//! The `=ticket` configuration (spec services.md §3.2): `[capacity, {"category": limit}]` in
//! any order, or a bare capacity. `config::modules` has already checked the shape, so this
//! reads the raw value and skips what it does not understand instead of failing again.

use simd_json::{OwnedValue, StaticNode};

use crate::config::{Config, ModuleRef};

/// Spec §3.2: the default capacity of the pending-lease queue.
pub const DEFAULT_CAPACITY: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketConfig {
    /// Most requests (waiting plus holding) tracked at once, over all categories.
    pub capacity: usize,
    /// Categories created at start-up, with no expiry, sorted by name (the raw object is a
    /// hash map, and start-up should not depend on its order).
    pub categories: Vec<(String, i64)>,
}

impl Default for TicketConfig {
    fn default() -> Self {
        TicketConfig {
            capacity: DEFAULT_CAPACITY,
            categories: Vec::new(),
        }
    }
}

impl TicketConfig {
    /// Reads a `=ticket` block; JSON null (no block) gives the defaults.
    pub fn from_value(v: &OwnedValue) -> TicketConfig {
        let mut out = TicketConfig::default();
        let items: &[OwnedValue] = match v {
            OwnedValue::Array(a) => a,
            other => std::slice::from_ref(other),
        };
        for item in items {
            match item {
                OwnedValue::Object(cats) => {
                    for (name, limit) in cats.iter() {
                        if let Some(l) = int(limit) {
                            out.categories.push((name.to_string(), l));
                        }
                    }
                }
                other => {
                    if let Some(c) = int(other).filter(|c| *c > 0) {
                        out.capacity = usize::try_from(c).unwrap_or(DEFAULT_CAPACITY);
                    }
                }
            }
        }
        out.categories.sort();
        out
    }

    /// Spec §0.1 lookup: `config[entry]`, else `config[module]` (the key without `+suffix`),
    /// else null.
    pub fn from_config(config: &Config, module: &ModuleRef) -> TicketConfig {
        let OwnedValue::Object(top) = &config.raw else {
            return TicketConfig::default();
        };
        let v = top
            .get(module.entry.as_str())
            .or_else(|| top.get(module.module.as_str()));
        v.map_or_else(TicketConfig::default, TicketConfig::from_value)
    }
}

fn int(v: &OwnedValue) -> Option<i64> {
    match v {
        OwnedValue::Static(StaticNode::I64(i)) => Some(*i),
        OwnedValue::Static(StaticNode::U64(u)) => i64::try_from(*u).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, ConfigSource};

    fn parse(text: &str) -> TicketConfig {
        let mut bytes = text.as_bytes().to_vec();
        TicketConfig::from_value(&simd_json::to_owned_value(&mut bytes).unwrap())
    }

    #[test]
    fn capacity_and_categories() {
        let c = parse(r#"[100000, {"odbc": 10, "room": -4}]"#);
        assert_eq!(c.capacity, 100_000);
        assert_eq!(
            c.categories,
            vec![("odbc".to_string(), 10), ("room".to_string(), -4)]
        );
    }

    #[test]
    fn any_order_bare_integer_and_null() {
        assert_eq!(parse(r#"[{"a": 1}, 5]"#).capacity, 5);
        assert_eq!(parse("7").capacity, 7);
        assert_eq!(parse("7").categories, vec![]);
        assert_eq!(parse("null"), TicketConfig::default());
        assert_eq!(parse("null").capacity, DEFAULT_CAPACITY);
    }

    #[test]
    fn looked_up_by_entry_then_module() {
        let text = r##"{
            "#startup": [["=ticket+ticket", "=ticket+other", "=ticket+gate"]],
            "=ticket+ticket": [100000, {"odbc": 10}],
            "=ticket": [50]
        }"##;
        let cfg = load(vec![ConfigSource::new("t.json", text)]).unwrap();
        let by_entry =
            TicketConfig::from_config(&cfg, &ModuleRef::parse("=ticket+ticket").unwrap());
        assert_eq!(by_entry.capacity, 100_000);
        assert_eq!(by_entry.categories, vec![("odbc".to_string(), 10)]);
        let by_module = TicketConfig::from_config(&cfg, &ModuleRef::parse("=ticket+gate").unwrap());
        assert_eq!(by_module.capacity, 50);
        assert!(by_module.categories.is_empty());
    }
}
