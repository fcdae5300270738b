//! The seam between a core and the script engine it drives. A core knows no Lua: it calls
//! these methods when something happens that a script handles, and the script layer
//! implements them (`script::host::Host`, one LuaJIT state per core). skynet's core, which
//! calls one callback per service and knows nothing of Lua, is the model.
//!
//! Every method is called on the core's own thread, one at a time, never from inside
//! another; an implementation catches its scripts' errors (nothing unwinds into the core)
//! and may call back into the core (commit, close, post) from inside any of them.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::post::PostKind;
use super::reload::Batch;
use super::stats::HostStats;
use super::Node;
use crate::codec::framing::Framing;
use crate::net::conn::Conn;
use crate::plan::{LuaStage, ServiceStage};

pub trait ScriptHost {
    /// A client was accepted on `listener` (opened by stage `stage`): run the accept
    /// callback. `false` refuses the client.
    fn accept(&self, listener: u64, stage: Option<usize>, conn: &Rc<Conn>) -> bool;
    /// One frame of `conn`: run its receive callback. An error means the frame cannot be
    /// decoded: the connection is closed.
    fn receive(&self, conn: &Rc<Conn>, frame: Bytes) -> Result<(), String>;
    /// One UDP datagram for endpoint `endpoint` (opened by stage `stage`).
    fn datagram(
        &self,
        endpoint: u64,
        stage: Option<usize>,
        message: &[u8],
        framing: Framing,
        from: SocketAddr,
    );
    /// `conn` ended (errno 0 = orderly): run its close callback.
    fn close(&self, conn: &Conn, errno: i32);
    /// An outgoing connection is up: run its connect callback.
    fn connected(&self, conn: &Rc<Conn>);
    /// A message posted to this core (see [`PostKind`]).
    fn post(&self, kind: PostKind, payload: &[u8]);
    /// Runs the main script of stage `index` (this core is its main core). `true` when the
    /// script returned an idle function, which [`ScriptHost::idle`] then runs.
    fn boot(&self, index: usize, stage: &LuaStage) -> bool;
    /// Runs stage `stage`'s idle function: the msec until the next call, or `None` to stop.
    fn idle(&self, stage: usize) -> Option<f64>;
    /// Starts this core's part of a service stage that the script engine runs (lotus.so):
    /// called on every core at boot, before the inbox is read.
    fn boot_service(&self, index: usize, service: &ServiceStage);
    /// Switches this core to the scripts of `batch` (called between two messages; the core
    /// acknowledges to the reloader when this returns).
    fn reload(&self, batch: &Batch);
    /// The core stops in order (its connections are closed): hand anything that must
    /// outlive the node to the threads that write it (lotus's dirty states).
    fn stop(&self) {}
    /// The host's own figures for a scrape (Lua memory, errors, loaded scripts). Must not
    /// run scripts.
    fn stats(&self) -> HostStats {
        HostStats::default()
    }
}

/// Builds the script host of core `index` (on that core's thread, before it boots).
pub type HostFactory =
    Arc<dyn Fn(&Arc<Node>, usize) -> anyhow::Result<Box<dyn ScriptHost>> + Send + Sync>;
