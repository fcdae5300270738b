//! What scripts change about their process at run time (spec/stage.md §3.11):
//! `process["%NAME"] = v` and `process["$NAME"] = json`. Kept process-wide, so every core's
//! Lua state reads the same values.
//!
//! Environment variables are an overlay over the real environment rather than `setenv`:
//! `setenv` is not safe while other threads may call `getenv` (every core, the blocking
//! pool and native libraries are such threads), and a crash there would cost the process.
//! Configuration blocks are replaced per stage; the configuration the node started with is
//! left untouched.

use std::collections::HashMap;
use std::sync::Mutex;

use simd_json::prelude::*;
use simd_json::OwnedValue;

#[derive(Default)]
pub struct Overrides {
    /// `%NAME` assignments: `None` = unset.
    env: Mutex<HashMap<String, Option<String>>>,
    /// Replaced configuration blocks by stage index, as JSON text.
    blocks: Mutex<HashMap<usize, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Overrides {
    /// `process["%NAME"]`: the assigned value, else the real environment.
    pub fn env(&self, name: &str) -> Option<String> {
        match lock(&self.env).get(name) {
            Some(v) => v.clone(),
            None => std::env::var(name).ok(),
        }
    }

    pub fn set_env(&self, name: &str, value: Option<String>) {
        lock(&self.env).insert(name.to_string(), value);
    }

    /// The stage's block as JSON: its replacement, else `original`.
    pub fn block(&self, stage: usize, original: &str) -> String {
        lock(&self.blocks)
            .get(&stage)
            .cloned()
            .unwrap_or_else(|| original.to_string())
    }

    /// `process["$"] = json` (`key` = None) replaces the whole block, which must be a JSON
    /// object; `process["$KEY"] = json` sets one key, `nil` removes it.
    pub fn set_block(
        &self,
        stage: usize,
        original: &str,
        key: Option<&str>,
        json: Option<&str>,
    ) -> Result<(), String> {
        let parse = |text: &str| {
            let mut bytes = text.as_bytes().to_vec();
            simd_json::to_owned_value(&mut bytes).map_err(|e| format!("not valid JSON: {e}"))
        };
        let mut blocks = lock(&self.blocks);
        let current = blocks
            .get(&stage)
            .cloned()
            .unwrap_or_else(|| original.to_string());
        let next = match key {
            None => {
                let value = parse(json.ok_or("process[\"$\"] needs a JSON object, not nil")?)?;
                if !value.is_object() {
                    return Err("process[\"$\"] must be a JSON object".into());
                }
                value
            }
            Some(key) => {
                let mut block = parse(&current)?;
                let OwnedValue::Object(map) = &mut block else {
                    return Err("the configuration block is not an object".into());
                };
                match json {
                    Some(text) => {
                        map.insert(key.to_string(), parse(text)?);
                    }
                    None => {
                        map.remove(key);
                    }
                }
                block
            }
        };
        let text = simd_json::to_string(&next).map_err(|e| e.to_string())?;
        blocks.insert(stage, text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_variables_shadow_the_environment_and_nil_unsets() {
        let o = Overrides::default();
        assert!(o.env("PATH").is_some());
        o.set_env("PATH", None);
        assert_eq!(o.env("PATH"), None);
        o.set_env("STAGE_TEST_VAR", Some("x".into()));
        assert_eq!(o.env("STAGE_TEST_VAR").as_deref(), Some("x"));
    }

    /// Compares as JSON values: an object's key order is not kept.
    fn json(text: &str) -> OwnedValue {
        simd_json::to_owned_value(&mut text.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn blocks_change_by_key_or_whole_and_bad_json_changes_nothing() {
        let o = Overrides::default();
        let original = r#"{"a":1,"b":2}"#;
        o.set_block(0, original, Some("c"), Some(r#"[1,"x"]"#))
            .unwrap();
        o.set_block(0, original, Some("a"), None).unwrap();
        assert_eq!(json(&o.block(0, original)), json(r#"{"b":2,"c":[1,"x"]}"#));
        assert!(o.set_block(0, original, Some("d"), Some("{nope")).is_err());
        assert!(o.set_block(0, original, None, Some("[1]")).is_err());
        assert_eq!(json(&o.block(0, original)), json(r#"{"b":2,"c":[1,"x"]}"#));
        o.set_block(0, original, None, Some(r#"{"z":true}"#))
            .unwrap();
        assert_eq!(o.block(0, original), r#"{"z":true}"#);
        assert_eq!(o.block(1, original), original, "other stages keep theirs");
    }
}
