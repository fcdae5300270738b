//! Natives behind `__`, `_SANDBOX` and `process` (spec/stage.md §3.11, §7). Shared values are
//! stored as the engine-internal BSON of `{n = 1, v}`, so a read always builds a fresh copy in
//! the reading state, functions included (as bytecode, between the engine's own states only).

use bytes::BytesMut;
use mlua::{Function, Lua, Table, Value};

use super::natives::node;
use crate::node::shared::Policy;
use crate::script::bson::{self, DecodeOptions, EncodeOptions};

pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set("shared_get", lua.create_function(shared_get)?)?;
    e.set("shared_set", lua.create_function(shared_set)?)?;
    e.set("shared_update", lua.create_function(shared_update)?)?;
    e.set("shared_clear", lua.create_function(shared_clear)?)?;
    e.set("shared_names", lua.create_function(shared_names)?)?;
    e.set("sandbox_set", lua.create_function(sandbox_set)?)?;
    e.set("sandbox_policies", lua.create_function(sandbox_policies)?)?;
    e.set(
        "sandbox_version",
        lua.create_function(|lua, ()| Ok(node(lua)?.shared.policy_version()))?,
    )?;
    e.set("pid", lua.create_function(|_, ()| Ok(std::process::id()))?)?;
    e.set("args", lua.create_function(args)?)?;
    e.set("config_block", lua.create_function(config_block)?)?;
    e.set("config_set", lua.create_function(config_set)?)?;
    e.set("env_get", lua.create_function(env_get)?)?;
    e.set("env_set", lua.create_function(env_set)?)?;
    e.set("set_title", lua.create_function(set_title)?)?;
    Ok(())
}

fn runtime_err(e: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(e.to_string())
}

/// Decodes a stored value (the `v` of `{n = 1, v}`), or nil.
fn decode_value(lua: &Lua, bytes: Option<&[u8]>) -> mlua::Result<Value> {
    let Some(bytes) = bytes else {
        return Ok(Value::Nil);
    };
    let opts = DecodeOptions {
        load_functions: true,
    };
    let t = bson::decode_document(lua, bytes, &opts).map_err(runtime_err)?;
    t.raw_get(1)
}

/// Encodes a value for the store; tables are copied, functions kept as bytecode.
fn encode_value(lua: &Lua, value: Value) -> mlua::Result<Option<Vec<u8>>> {
    match &value {
        Value::Nil => return Ok(None),
        Value::UserData(_) | Value::LightUserData(_) | Value::Thread(_) | Value::Error(_) => {
            return Err(mlua::Error::runtime("Includes non-serialable data"))
        }
        _ => {}
    }
    let t = lua.create_table()?;
    t.raw_set("n", 1)?;
    t.raw_set(1, value)?;
    let mut out = BytesMut::new();
    let opts = EncodeOptions {
        allow_functions: true,
    };
    bson::encode_document(lua, &t, &mut out, &opts)
        .map_err(|e| mlua::Error::runtime(format!("Includes non-serialable data ({e})")))?;
    Ok(Some(out.to_vec()))
}

fn shared_get(lua: &Lua, (space, name): (u32, String)) -> mlua::Result<Value> {
    let bytes = node(lua)?
        .shared
        .lock()
        .map_err(runtime_err)?
        .get(space, &name);
    decode_value(lua, bytes.as_deref())
}

fn shared_set(lua: &Lua, (space, name, value): (u32, String, Value)) -> mlua::Result<()> {
    let encoded = encode_value(lua, value)?;
    node(lua)?
        .shared
        .lock()
        .map_err(runtime_err)?
        .set(space, &name, encoded);
    Ok(())
}

/// `__("name", fn)`: fn(old) runs with the store locked; a nil result changes nothing.
fn shared_update(lua: &Lua, (space, name, f): (u32, String, Function)) -> mlua::Result<Value> {
    let node = node(lua)?;
    node.shared
        .update(|store| {
            let old = decode_value(lua, store.get(space, &name).as_deref())?;
            let new: Value = f.call(old.clone())?;
            if new.is_nil() {
                return Ok(old);
            }
            store.set(space, &name, encode_value(lua, new.clone())?);
            Ok(new)
        })
        .map_err(runtime_err)?
}

fn shared_clear(lua: &Lua, space: u32) -> mlua::Result<()> {
    node(lua)?.shared.clear(space).map_err(runtime_err)
}

fn shared_names(lua: &Lua, space: u32) -> mlua::Result<Vec<String>> {
    node(lua)?.shared.names(space).map_err(runtime_err)
}

fn sandbox_set(lua: &Lua, (name, mode): (String, Option<String>)) -> mlua::Result<()> {
    let policy = match mode.as_deref() {
        Some("ro") => Some(Policy::ReadOnly),
        Some(_) => Some(Policy::Shared),
        None => None,
    };
    node(lua)?.shared.set_policy(&name, policy);
    Ok(())
}

/// version, { name = "rw" | "ro" }
fn sandbox_policies(lua: &Lua, (): ()) -> mlua::Result<(u64, Table)> {
    let (version, policies) = node(lua)?.shared.policies();
    let t = lua.create_table()?;
    for (name, p) in policies {
        t.raw_set(name, if p == Policy::ReadOnly { "ro" } else { "rw" })?;
    }
    Ok((version, t))
}

fn args(lua: &Lua, (): ()) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (i, a) in node(lua)?.plan.args.iter().enumerate() {
        t.raw_set(i as i64, a.as_str())?;
    }
    Ok(t)
}

/// The merged configuration block of a Lua stage, as JSON text (`process["$"]`), as the
/// scripts may have changed it.
fn config_block(lua: &Lua, stage: usize) -> mlua::Result<Option<String>> {
    let node = node(lua)?;
    Ok(node
        .plan
        .stages
        .get(stage)
        .map(|s| node.overrides.block(stage, &s.block_json)))
}

/// `E.config_set(stage, key|nil, json|nil)`: `process["$KEY"] = json` / `process["$"] = json`.
fn config_set(
    lua: &Lua,
    (stage, key, json): (usize, Option<String>, Option<String>),
) -> mlua::Result<()> {
    let node = node(lua)?;
    let Some(s) = node.plan.stages.get(stage) else {
        return Err(runtime_err(format!("no Lua stage #{stage}")));
    };
    let what = match &key {
        Some(k) => format!("process[\"${k}\"]"),
        None => "process[\"$\"]".to_string(),
    };
    node.overrides
        .set_block(stage, &s.block_json, key.as_deref(), json.as_deref())
        .map_err(|e| runtime_err(format!("{what}: {e}")))
}

/// `E.env_get(name)` / `E.env_set(name, value|nil)`: `process["%NAME"]`.
fn env_get(lua: &Lua, name: String) -> mlua::Result<Option<String>> {
    Ok(node(lua)?.overrides.env(&name))
}

fn env_set(lua: &Lua, (name, value): (String, Option<String>)) -> mlua::Result<()> {
    node(lua)?.overrides.set_env(&name, value);
    Ok(())
}

/// `process.title = "..."`: the name `ps` and `top` show (15 bytes, the kernel's limit).
fn set_title(lua: &Lua, title: String) -> mlua::Result<()> {
    let program = node(lua)?.plan.args.first().cloned().unwrap_or_default();
    let program = std::path::Path::new(&program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(program);
    let title = title.replace("${program}", &program);
    let short: String = title.chars().take(15).collect();
    std::fs::write("/proc/self/comm", short.as_bytes())
        .map_err(|e| mlua::Error::runtime(format!("process.title: {e}")))
}
