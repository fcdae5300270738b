//! Natives behind cross-node routing (`crate::cluster`): who this member is, which members
//! of other nodes host a stage id, and handing a message to the NATS thread. The choice of
//! receivers stays in the prelude's `route` (engine/lua/prelude/messaging.lua), as it does
//! for the processes of one node; these only answer and send. While this member is still
//! learning who hosts a stage id (`cluster::Pick::Learning`), `cluster_pick` and
//! `cluster_members` answer `false` and the prelude hands the message to `cluster_hold`.

use mlua::{Lua, Table, Value};

use super::natives::node;
use crate::cluster::{self, Cluster, Pick};

pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set(
        "cluster_me",
        lua.create_function(|_, ()| Ok(cluster::get().map(|c| c.me.clone())))?,
    )?;
    // A member's name, nil (nobody eligible, or no cluster) or false (learning).
    e.set(
        "cluster_pick",
        lua.create_function(|lua, group: String| {
            Ok(match cluster::get().map(|c| c.pick(&group)) {
                Some(Pick::Member(m)) => Value::String(lua.create_string(m)?),
                Some(Pick::Learning) => Value::Boolean(false),
                Some(Pick::Nobody) | None => Value::Nil,
            })
        })?,
    )?;
    // The eligible members' names, or false (learning).
    e.set(
        "cluster_members",
        lua.create_function(|lua, group: String| {
            let Some(c) = cluster::get() else {
                return Ok(Value::Table(lua.create_table()?));
            };
            Ok(match c.members_of(&group) {
                Some(members) => Value::Table(lua.create_sequence_from(members)?),
                None => Value::Boolean(false),
            })
        })?,
    )?;
    e.set("cluster_send", lua.create_function(cluster_send)?)?;
    e.set("cluster_hold", lua.create_function(cluster_hold)?)?;
    Ok(())
}

fn the_cluster() -> mlua::Result<&'static std::sync::Arc<Cluster>> {
    cluster::get().ok_or_else(|| mlua::Error::runtime("this node is not in a cluster"))
}

/// `E.cluster_send(member, group, every, payload)`: the envelope `payload` (without `t`) to
/// the first (or `every`) stage of `group` in cluster member `member`. Not sendable now
/// (not connected, queue full, too large): counted as unrouted, returns false.
fn cluster_send(
    lua: &Lua,
    (member, group, every, payload): (String, String, bool, mlua::String),
) -> mlua::Result<bool> {
    match the_cluster()?.send(&member, &group, every, &payload.as_bytes()) {
        Ok(()) => Ok(true),
        Err(err) => {
            node(lua)?.count_unrouted(&format!("`{group}` in cluster member {member} ({err})"));
            Ok(false)
        }
    }
}

/// `E.cluster_hold(group, every, payload)`: the envelope `payload` for `group`, whose hosts
/// this member is still learning: routed to one (or `every`) eligible member of another node
/// once they are known. Not holdable (not connected, a limit reached): counted as unrouted,
/// returns false.
fn cluster_hold(
    lua: &Lua,
    (group, every, payload): (String, bool, mlua::String),
) -> mlua::Result<bool> {
    match the_cluster()?.hold(&group, every, &payload.as_bytes()) {
        Ok(()) => Ok(true),
        Err(err) => {
            node(lua)?.count_unrouted(&format!("`{group}` on another node ({err})"));
            Ok(false)
        }
    }
}
