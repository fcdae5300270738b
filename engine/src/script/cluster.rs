//! Natives behind cross-node routing (`crate::cluster`): who this member is, which members
//! of other nodes host a stage id, and handing a message to the NATS thread. The choice of
//! receivers stays in the prelude's `route` (engine/lua/prelude/messaging.lua), as it does
//! for the processes of one node; these only answer and send.

use mlua::{Lua, Table};

use super::natives::node;
use crate::cluster::{self, Cluster};

pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set(
        "cluster_me",
        lua.create_function(|_, ()| Ok(cluster::get().map(|c| c.me.clone())))?,
    )?;
    e.set(
        "cluster_pick",
        lua.create_function(|_, group: String| Ok(cluster::get().and_then(|c| c.pick(&group))))?,
    )?;
    e.set(
        "cluster_members",
        lua.create_function(|_, group: String| {
            Ok(cluster::get().map_or_else(Vec::new, |c| c.members_of(&group)))
        })?,
    )?;
    e.set("cluster_send", lua.create_function(cluster_send)?)?;
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
