//! The blocking calls a script can still ask a core for, counted and named: a file read the
//! file image (`script::image`) does not cover, `bundle.viewof`'s `open`/`mmap` and
//! `commit('sync')` (`msync`), and a host-name lookup (`net::lookup`). Each stalls every
//! connection, timer and stage of the core while it runs, so each one asked of a serving core
//! counts in `stage_limit_hits_total{limit="blocking_on_core"}` and the first of each kind in
//! the process is logged with what to do instead. What happens to the call is `%blocking`'s
//! choice ([`BlockingPolicy`]): by default (`"refuse"`) it fails with that advice as its
//! error, so no path a client or a stage can trigger makes a core wait on the system; with
//! `"count"` it runs (the script gets its answer, as in the original engine). The same calls on a
//! `thread.new` pool thread (made for blocking work), or on a core still booting (main
//! scripts, `%preload`, before it serves), are always made, neither counted nor logged.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::config::BlockingPolicy;

/// Blocking calls made on a core (metrics).
pub static ON_CORE: AtomicU64 = AtomicU64::new(0);

/// A kind of blocking call a script can make.
#[derive(Clone, Copy)]
pub enum Kind {
    /// `bundle.json(file)` or a script's first load, for a file not in the file image.
    FileRead,
    /// `bundle.viewof`: opening, sizing and mapping its file.
    ViewofOpen,
    /// `buffer.commit('sync')`: `msync`, which waits for the disk.
    ViewofSync,
    /// A host name given where an address is expected (`getaddrinfo`).
    Lookup,
}

/// The process's `%blocking` ([`set_policy`]): 0 = count, 1 = refuse (the default).
static POLICY: AtomicU8 = AtomicU8::new(1);

/// Whether the first call of each kind was logged, indexed by `Kind as usize`.
static LOGGED: [AtomicBool; Kind::COUNT] = [const { AtomicBool::new(false) }; Kind::COUNT];

impl Kind {
    /// How many kinds there are (the last variant's index + 1).
    const COUNT: usize = Kind::Lookup as usize + 1;

    fn advice(self) -> &'static str {
        match self {
            Kind::FileRead => {
                "the file is not in the file image (outside every %package directory, not a \
                 .lua or .json file, or past the image's limits): put it under a %package \
                 directory, read it before the core serves (a %preload script, or the main \
                 script and share the value through __), or in a thread.new function"
            }
            Kind::ViewofOpen => {
                "bundle.viewof opens and maps its file on the calling thread: open views \
                 before the core serves (in a %preload script, whose globals every callback \
                 sees), or use them in thread.new functions"
            }
            Kind::ViewofSync => {
                "commit('sync') waits for the disk (msync): use commit('async') on a core, or \
                 commit in a thread.new function"
            }
            Kind::Lookup => {
                "a host name is resolved with getaddrinfo on the calling thread (it may ask a \
                 DNS server): give an IP address, or resolve the name once at startup"
            }
        }
    }
}

/// Sets the process's `%blocking` (every node calls it as it starts; the first Lua block's
/// value applies to every core, like `%cpu`).
pub fn set_policy(policy: BlockingPolicy) {
    let code = match policy {
        BlockingPolicy::Count => 0,
        BlockingPolicy::Refuse => 1,
    };
    POLICY.store(code, Ordering::Relaxed);
}

fn policy() -> BlockingPolicy {
    match POLICY.load(Ordering::Relaxed) {
        0 => BlockingPolicy::Count,
        _ => BlockingPolicy::Refuse,
    }
}

/// Asks whether a blocking call of `kind` may run on the calling thread (`what` names it for
/// the log line and the error). On a thread that is not a serving core (a pool thread, a core
/// still booting: no client to stall yet) it always may. On a serving core it is counted, the
/// first of its kind is logged, and under `%blocking: "refuse"` it is refused: the error
/// (kind `WouldBlock`) says what to do instead, and the caller hands it to the script.
pub fn note(kind: Kind, what: &str) -> std::io::Result<()> {
    if !super::runtime::try_current().is_some_and(|core| core.is_serving()) {
        return Ok(());
    }
    ON_CORE.fetch_add(1, Ordering::Relaxed);
    let refuse = policy() == BlockingPolicy::Refuse;
    if !LOGGED[kind as usize].swap(true, Ordering::Relaxed) {
        let outcome = if refuse {
            "was refused (%blocking is \"refuse\")"
        } else {
            "blocks this core until it returns"
        };
        tracing::warn!(
            "{what} {outcome}; {} (logged once, counted as \
             stage_limit_hits_total{{limit=\"blocking_on_core\"}})",
            kind.advice()
        );
    }
    if refuse {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "{what} would block this core and %blocking is \"refuse\": {}",
                kind.advice()
            ),
        ));
    }
    Ok(())
}

/// Makes `net`'s host-name lookups ask [`note`] first (once per process; every node calls
/// it as it starts).
pub fn count_lookups() {
    crate::net::lookup::set_hook(|host| note(Kind::Lookup, &format!("looking up {host:?}")));
}
