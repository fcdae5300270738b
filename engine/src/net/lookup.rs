//! Host-name lookups: `getaddrinfo` blocks the calling thread (it may read `/etc/hosts` and
//! ask a DNS server). `net` resolves a name when a script hands it one instead of an IP
//! address; the layer that owns the threads says what that costs by installing a hook
//! ([`set_hook`]: the node counts lookups made on a core, `node::blocking`).

use std::sync::OnceLock;

static HOOK: OnceLock<fn(&str)> = OnceLock::new();

/// Installs the function told of every host-name lookup (the first call wins).
pub fn set_hook(hook: fn(&str)) {
    let _ = HOOK.set(hook);
}

/// Called just before `host` (not an IP literal) goes to the system resolver.
pub(crate) fn before(host: &str) {
    if let Some(hook) = HOOK.get() {
        hook(host);
    }
}
