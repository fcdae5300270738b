//! The blocking calls a script can still make a core wait for, counted and named: a file read
//! the file image (`script::image`) does not cover, `bundle.viewof`'s `open`/`mmap` and
//! `commit('sync')` (`msync`), and a host-name lookup (`net::lookup`). Each is allowed — the script asked for it and gets its answer
//! — but it stalls every connection, timer and stage of the core meanwhile, so each one made
//! on a core counts in `stage_limit_hits_total{limit="blocking_on_core"}` and the first of
//! each kind in the process is logged with what to do instead. The same calls on a
//! `thread.new` pool thread (made for blocking work), or on a core still booting (main
//! scripts, before it serves), are neither counted nor logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
                 directory, read it in the main script, or in a thread.new function"
            }
            Kind::ViewofOpen => {
                "bundle.viewof opens and maps its file on the calling thread: open views once, \
                 in the main script, or use them in thread.new functions"
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

/// Notes a blocking call of `kind` about to run on the calling thread (`what` names it for
/// the log line); counts it when that thread is a core that serves (while a core boots —
/// `%preload`, main scripts — it has no client to stall yet).
pub fn note(kind: Kind, what: &str) {
    if !super::runtime::try_current().is_some_and(|core| core.is_serving()) {
        return;
    }
    ON_CORE.fetch_add(1, Ordering::Relaxed);
    if !LOGGED[kind as usize].swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "{what} blocks this core until it returns; {} (logged once, counted as \
             stage_limit_hits_total{{limit=\"blocking_on_core\"}})",
            kind.advice()
        );
    }
}

/// Makes `net`'s host-name lookups count as blocking calls (once per process; every node
/// calls it as it starts).
pub fn count_lookups() {
    crate::net::lookup::set_hook(|host| note(Kind::Lookup, &format!("looking up {host:?}")));
}
