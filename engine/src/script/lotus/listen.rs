//! Opens a lotus stage's listeners (`listen`: the v1 wire, `compat`: the original wire) the
//! way `broker.ready` opens a script's: bound on the stage's main core (so a taken port is
//! reported at boot), then accepted on every core through `SO_REUSEPORT`. The framing is the
//! wire's (`Be32` / `Be16`), which is also how the host tells a lotus connection from a
//! script's.

use std::sync::{Arc, Mutex};

use crate::codec::framing::{FrameSpec, Framing};
use crate::config::LotusConfig;
use crate::net::admission::Gate;
use crate::net::listener;
use crate::net::url::BrokerUrl;
use crate::node::runtime::Core;
use crate::node::{ListenerProps, ListenerShared};
use crate::service::lotus::wire::compat;

/// Opens every address of `cfg` on `core` (the stage's main core); the accept loops start on
/// every core when the caller's `after_script` runs. Errors name the key and the address.
pub fn open(core: &Core, entry: &str, cfg: &LotusConfig) -> Vec<String> {
    let mut errors = Vec::new();
    let wires = [
        (
            "listen",
            cfg.listen.as_deref(),
            Framing::Be32,
            cfg.max_frame,
        ),
        (
            "compat",
            cfg.compat.as_deref(),
            Framing::Be16,
            compat::MAX_FRAME,
        ),
    ];
    for (key, addr, framing, input) in wires {
        let Some(addr) = addr else { continue };
        match bind(core, addr, framing, input, cfg.max_output) {
            Ok(local) => tracing::info!(
                "lotus `{entry}`: {key} on {local} ({} wire) on {} cores",
                if framing == Framing::Be32 {
                    "v1"
                } else {
                    "compat"
                },
                core.node.cores()
            ),
            Err(err) => errors.push(format!(
                "lotus `{entry}`: cannot listen on {key} `{addr}`: {err}"
            )),
        }
    }
    errors
}

fn bind(
    core: &Core,
    addr: &str,
    framing: Framing,
    input: usize,
    output: usize,
) -> std::io::Result<std::net::SocketAddr> {
    let mut url = BrokerUrl::parse(&format!("tcp://{addr}"))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    url.frame = FrameSpec {
        framing,
        input,
        output,
    };
    let resolved = listener::resolve(&url)?;
    if core.node.peers.is_none() {
        listener::warn_if_taken(resolved);
    }
    let bound = listener::bind(resolved)?;
    let local = bound.local_addr().map_err(std::io::Error::from)?;
    let id = core.node.next_listener_id();
    let limits = url.limits;
    let shared = Arc::new(ListenerShared {
        id,
        stage: None,
        gate: Gate::new(id, limits),
        url,
        addr: local,
        props: Mutex::new(ListenerProps {
            version: 1,
            ..ListenerProps::default()
        }),
    });
    core.node.add_listener(shared.clone());
    core.prebind(id, bound);
    core.defer_listen(shared);
    Ok(local)
}
