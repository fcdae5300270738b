//! The admin endpoint (`#admin`): Prometheus metrics (`/metrics`), the process's status as
//! JSON (`/status`), an operator's reload (`POST /reload`) and a small live console page
//! (`/`), served by HTTP/1.1 on a thread of its own (`stage-admin`, a tokio current-thread
//! runtime driving hyper), like the cluster's NATS thread: a core never serves it and never
//! waits for it.
//!
//! It reaches the cores only through their inboxes. A scrape asks every core for a snapshot
//! of its plain, core-local counters (`node::stats`) and waits for the answers until a
//! deadline; a core that does not answer in time is reported as silent. The counting itself
//! stays on the cores, with no lock and no shared atomic on the packet path.
//!
//! In a multi-process node each child serves its own endpoint, on the configured port plus
//! its process number ([`child_address`]); the supervisor serves none. The page and
//! `/status` list the processes with their addresses.
//!
//! Layer: above `node` (and `cluster`), below the script host; it names no Lua.

mod auth;
mod gather;
mod http;
mod metrics;
mod prom;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::node::Node;

/// The console page: one self-contained file (no external assets), polling `/status` and
/// `/metrics`.
const PAGE: &str = include_str!("page.html");

/// How this process serves its admin endpoint.
pub struct Settings {
    /// The configured address (`#admin`).
    pub base: SocketAddr,
    /// The address this process binds: `base`, or in a child of a multi-process node
    /// [`child_address`].
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// The node's name (`#node`, else `<host>-<pid>`), shown on the status page.
    pub node: String,
}

/// The admin address of process `n` of a multi-process node: the configured port plus `n`
/// (`None` past port 65535).
pub fn child_address(base: SocketAddr, n: u32) -> Option<SocketAddr> {
    let port = u16::try_from(u32::from(base.port()) + n).ok()?;
    Some(SocketAddr::new(base.ip(), port))
}

/// Binds the admin address and starts the `stage-admin` thread. A bind error is returned
/// (the operator asked for an endpoint; starting without it would hide the mistake).
pub fn start(node: Arc<Node>, settings: Settings) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(settings.listen).map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("#admin: cannot listen on {}: {err}", settings.listen),
        )
    })?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let guarded = settings.token.is_some();
    let settings = Arc::new(settings);
    std::thread::Builder::new()
        .name("stage-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    tracing::error!("admin: cannot start the admin thread's runtime: {err}");
                    return;
                }
            };
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(listener) => http::serve(listener, node, settings).await,
                    Err(err) => tracing::error!("admin: cannot use the admin socket: {err}"),
                }
            });
        })?;
    tracing::info!(
        "admin endpoint on http://{bound}/ (/metrics, /status, POST /reload){}",
        if guarded {
            "; requests need the token"
        } else {
            ""
        }
    );
    Ok(bound)
}
