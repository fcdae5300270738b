//! The reload protocol between a process's reloader and its cores, as plain data: a
//! [`Batch`] ("version N: these scripts") that the reloader posts to every core's inbox, the
//! acknowledgement each core sends back once it has installed the batch, and the
//! bookkeeping of one reload ([`Round`]) that says when every core has switched.
//!
//! A core installs a batch between two messages (the inbox handles it like any other
//! message, so no callback is running), then acknowledges with the time it switched. The
//! reload is complete when every core of the process has acknowledged; until then the
//! reloader starts no other one, so at most two versions are ever live (N−1 on the cores
//! that have not reached the batch yet, N on the others). Reading, compiling and deciding
//! what changed is the script layer's job (`script::reload`); this module holds no Lua and
//! does no I/O.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size and mtime (ns since the epoch) of a file on disk; `None` for a script compiled into
/// the binary, which never changes.
pub type Stamp = Option<(u64, i64)>;

/// One script file's bytes as every Lua state of the process compiles them.
#[derive(Debug)]
pub struct Source {
    /// The path it was read from (`@builtin/...` for scripts compiled into the binary).
    pub path: String,
    /// Its `%package` entry's position: 0 = normal, > 0 = a fail-over copy.
    pub position: u32,
    pub stamp: Stamp,
    pub bytes: Arc<[u8]>,
}

impl Source {
    /// Seconds since the epoch (0 for built-in scripts): `info[3]` of `stage.load`.
    pub fn mtime(&self) -> i64 {
        self.stamp.map_or(0, |(_, ns)| ns / 1_000_000_000)
    }
}

/// A file of the search path that exists but does not compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenFile {
    pub path: String,
    pub stamp: Stamp,
    pub error: String,
}

/// What a script name resolves to through `%package`: the first file that exists and
/// compiles, and the broken files passed over before it (spec/stage.md §8.2: a syntax error
/// falls through to the next entry). No file and no broken one: not found.
#[derive(Debug, Default)]
pub struct Resolution {
    pub found: Option<Arc<Source>>,
    pub broken: Vec<BrokenFile>,
}

impl Resolution {
    /// Whether `other` names the same files at the same stamps (same bytes, as far as the
    /// file system tells).
    pub fn same_as(&self, other: &Resolution) -> bool {
        let key = |r: &Resolution| {
            r.found
                .as_ref()
                .map(|s| (s.path.clone(), s.stamp, s.position))
        };
        let broken = |r: &Resolution| {
            r.broken
                .iter()
                .map(|b| (b.path.clone(), b.stamp))
                .collect::<Vec<_>>()
        };
        key(self) == key(other) && broken(self) == broken(other)
    }
}

/// What a core tells the reloader after installing a batch.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub version: u64,
    pub core: usize,
    /// When the core switched (its clock read right after installing).
    pub at: Instant,
}

/// "Version N: these scripts", posted to every core of the process.
pub struct Batch {
    pub version: u64,
    /// Every script name whose resolution changed, with its new resolution.
    pub scripts: Vec<(String, Arc<Resolution>)>,
    /// Hands a core's acknowledgement to the reloader; never blocks (an unbounded channel).
    pub ack: Box<dyn Fn(Ack) + Send + Sync>,
}

impl Batch {
    /// The names this batch changes, for logs and outcomes.
    pub fn names(&self) -> Vec<String> {
        self.scripts.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// The bookkeeping of one reload: which cores have switched to `version`, and when.
#[derive(Debug)]
pub struct Round {
    pub version: u64,
    started: Instant,
    /// Per core: whether its inbox has taken the batch (a full inbox is retried).
    sent: Vec<bool>,
    /// Per core: when it switched.
    switched: Vec<Option<Instant>>,
}

/// What one acknowledgement did to a [`Round`].
#[derive(Debug, PartialEq, Eq)]
pub enum AckResult {
    /// For another version, or from a core that is not part of the round: ignored.
    Stale,
    /// This core had acknowledged already: ignored.
    Duplicate,
    /// Counted; this many cores still run the previous version.
    Pending(usize),
    /// The last core switched: the reload is complete.
    Complete(Switch),
}

/// A complete reload, measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    pub version: u64,
    pub cores: usize,
    /// From the first core switching to the last: the only time two cores of the process
    /// served different versions.
    pub window: Duration,
    /// From the batch being posted to the last core switching.
    pub took: Duration,
}

impl Round {
    pub fn new(version: u64, cores: usize, started: Instant) -> Round {
        Round {
            version,
            started,
            sent: vec![false; cores],
            switched: vec![None; cores],
        }
    }

    /// Cores whose inbox has not taken the batch yet.
    pub fn unsent(&self) -> Vec<usize> {
        (0..self.sent.len()).filter(|&c| !self.sent[c]).collect()
    }

    pub fn mark_sent(&mut self, core: usize) {
        if let Some(s) = self.sent.get_mut(core) {
            *s = true;
        }
    }

    pub fn ack(&mut self, ack: Ack) -> AckResult {
        if ack.version != self.version || ack.core >= self.switched.len() {
            return AckResult::Stale;
        }
        if self.switched[ack.core].is_some() {
            return AckResult::Duplicate;
        }
        self.switched[ack.core] = Some(ack.at);
        let left = self.switched.iter().filter(|s| s.is_none()).count();
        if left > 0 {
            return AckResult::Pending(left);
        }
        let times = self.switched.iter().flatten();
        let first = *times.clone().min().expect("at least one core");
        let last = *times.max().expect("at least one core");
        AckResult::Complete(Switch {
            version: self.version,
            cores: self.switched.len(),
            window: last.saturating_duration_since(first),
            took: last.saturating_duration_since(self.started),
        })
    }
}

/// What a requested reload came to, as the node layer (the admin endpoint) sees it; the
/// script layer's reloader (`script::reload`) fills it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `switched`, `unchanged`, `refused` or `unavailable`.
    pub status: &'static str,
    /// The version running after the request.
    pub version: u64,
    /// Scripts that switched (`switched`).
    pub changed: Vec<String>,
    /// (path, compiler message) of each file that does not compile (`refused`).
    pub errors: Vec<(String, String)>,
    /// Cores that switched, and the time from the first to the last one.
    pub cores: usize,
    pub window: Duration,
    /// One line for logs and humans.
    pub summary: String,
}

/// How a reload is asked for: the script layer installs it when its reloader starts (the
/// node cannot name the script layer).
pub type Requester = Box<dyn Fn(Box<dyn FnOnce(Outcome) + Send>) + Send + Sync>;

static REQUESTER: std::sync::OnceLock<Requester> = std::sync::OnceLock::new();

/// Installs the process's reload requester (once; later calls are ignored).
pub fn set_requester(requester: Requester) {
    let _ = REQUESTER.set(requester);
}

/// Asks for a reload now; `done` gets the outcome (on the reloader's thread: it must not
/// block). `false` when this process has no reloader.
pub fn request(done: Box<dyn FnOnce(Outcome) + Send>) -> bool {
    match REQUESTER.get() {
        Some(r) => {
            r(done);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(version: u64, core: usize, at: Instant) -> Ack {
        Ack { version, core, at }
    }

    #[test]
    fn a_round_completes_when_every_core_has_switched_once() {
        let t0 = Instant::now();
        let mut round = Round::new(7, 3, t0);
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(round.ack(ack(7, 1, ms(2))), AckResult::Pending(2));
        assert_eq!(round.ack(ack(7, 1, ms(3))), AckResult::Duplicate);
        assert_eq!(
            round.ack(ack(6, 0, ms(3))),
            AckResult::Stale,
            "an old version"
        );
        assert_eq!(
            round.ack(ack(7, 3, ms(3))),
            AckResult::Stale,
            "no such core"
        );
        assert_eq!(round.ack(ack(7, 0, ms(5))), AckResult::Pending(1));
        assert_eq!(
            round.ack(ack(7, 2, ms(9))),
            AckResult::Complete(Switch {
                version: 7,
                cores: 3,
                window: Duration::from_millis(7),
                took: Duration::from_millis(9),
            })
        );
    }

    #[test]
    fn cores_whose_inbox_was_full_are_sent_again() {
        let mut round = Round::new(1, 3, Instant::now());
        assert_eq!(round.unsent(), vec![0, 1, 2]);
        round.mark_sent(0);
        round.mark_sent(2);
        round.mark_sent(9);
        assert_eq!(round.unsent(), vec![1]);
    }

    #[test]
    fn resolutions_compare_by_file_and_stamp() {
        let source = |path: &str, stamp| {
            Some(Arc::new(Source {
                path: path.into(),
                position: 0,
                stamp,
                bytes: Arc::from(&b"return 1"[..]),
            }))
        };
        let a = Resolution {
            found: source("p/m.lua", Some((8, 1))),
            broken: Vec::new(),
        };
        let same = Resolution {
            found: source("p/m.lua", Some((8, 1))),
            broken: Vec::new(),
        };
        let touched = Resolution {
            found: source("p/m.lua", Some((8, 2))),
            broken: Vec::new(),
        };
        let missing = Resolution::default();
        assert!(a.same_as(&same));
        assert!(!a.same_as(&touched));
        assert!(!a.same_as(&missing));
        assert!(missing.same_as(&Resolution::default()));
    }
}
