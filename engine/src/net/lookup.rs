//! Host-name lookups: `getaddrinfo` blocks the calling thread (it may read `/etc/hosts` and
//! ask a DNS server). `net` resolves a name when a script hands it one instead of an IP
//! address; the layer that owns the threads says what that costs, and whether it may happen
//! here, by installing a hook ([`set_hook`]: the node counts lookups made on a core and may
//! refuse them, `node::blocking`).

use std::sync::OnceLock;

/// Told of a lookup about to run on the calling thread; an error refuses it.
type Hook = fn(&str) -> std::io::Result<()>;

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Installs the function asked before every host-name lookup (the first call wins).
pub fn set_hook(hook: Hook) {
    let _ = HOOK.set(hook);
}

/// Called just before `host` (not an IP literal) goes to the system resolver; an error means
/// the lookup must not run (the caller returns it).
pub(crate) fn before(host: &str) -> std::io::Result<()> {
    match HOOK.get() {
        Some(hook) => hook(host),
        None => Ok(()),
    }
}
