//! The open thread of an index.so stage (`index-open`, one per stage and process): the first
//! request naming an index that is not open yet makes its owner core hand an [`OpenJob`] to
//! this thread, which reads the snapshot and the log (`Store::open`: `read`, a torn tail's
//! `ftruncate` + `fsync`) **and replays them into the [`Ranking`]** here, so the core only
//! receives a finished index and never sits in a file syscall or in a long replay. The result
//! goes to the shard's own channel (`OpenJob::reply`); `notify` then rings the core's inbox
//! (an `index_open` post), and the core takes the result in arrival order with its other
//! posts (`IndexService::opened`).
//!
//! Why a thread of its own and not the stage's `index-sync` thread: opening a big index
//! takes a while (5 s for a million ids on this project's loaded 2-CPU machine, BENCHMARKS.md),
//! and on the sync thread it would hold up the group commits — and with them every held
//! reply — of the stage's other indexes for that long. Opens are rare (once per index and process, again only after a
//! failed open), so one thread per stage is plenty; opens of one stage run one after another.
//!
//! Why the replay runs here too rather than on the core: reading the files off the core and
//! replaying on it would still stall the core for the whole replay (hundreds of ms for a big
//! log: decoding every record and inserting it into the tier trees is most of an open's cost).
//! A `Ranking` is plain owned data, so building it here and moving it costs the core nothing.

use std::io;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::ranking::Ranking;
use super::store::Store;

/// An index read from its files, ready to serve.
pub struct Loaded {
    pub ranking: Ranking,
    pub store: Store,
    /// How long the read and replay took, for the `index opened` line.
    pub took: Duration,
}

/// One open to do: the files at `base` (`<prefix><name>`) of index `name`, for core `core`,
/// whose shard takes the result from `reply`.
pub struct OpenJob {
    pub core: usize,
    pub name: String,
    pub base: String,
    pub reply: mpsc::Sender<OpenResult>,
}

/// What an open found: the index, or why it cannot be opened (a corrupt snapshot, an
/// unreadable file, a directory that cannot be created).
pub struct OpenResult {
    pub name: String,
    pub result: Result<Loaded, String>,
}

/// How an index is read: [`load`]; tests put a gate or a fault here.
pub type OpenFn = Arc<dyn Fn(&str, &str) -> io::Result<Loaded> + Send + Sync>;

/// Rings core `core` (its inbox, in the engine) once a result is in its shard's channel.
pub type OpenNotify = Box<dyn Fn(usize) + Send>;

/// A core's handle on the thread (cloneable: every core of the process shares one).
#[derive(Clone)]
pub struct OpenThread {
    tx: mpsc::Sender<OpenJob>,
}

impl OpenThread {
    /// Starts the thread with the real [`load`].
    pub fn start(what: &str, notify: OpenNotify) -> io::Result<OpenThread> {
        Self::start_with(what, Arc::new(load), notify)
    }

    pub fn start_with(what: &str, open: OpenFn, notify: OpenNotify) -> io::Result<OpenThread> {
        let (tx, rx) = mpsc::channel::<OpenJob>();
        let what = what.to_string();
        std::thread::Builder::new()
            .name("index-open".into())
            .spawn(move || {
                tracing::debug!("index open thread for {what} started");
                for job in rx {
                    // A panic in a replay must not take the thread (and every later open of
                    // the stage) with it: it is this open's failure.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        open(&job.base, &job.name)
                    }));
                    let result = match result {
                        Ok(Ok(loaded)) => Ok(loaded),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("the open panicked".to_string()),
                    };
                    let name = job.name;
                    // The shard is gone (its core stopped): nobody waits for this index.
                    if job.reply.send(OpenResult { name, result }).is_ok() {
                        notify(job.core);
                    }
                }
            })?;
        Ok(OpenThread { tx })
    }

    /// Hands an open to the thread (never blocks); gives it back if the thread is gone.
    pub fn send(&self, job: OpenJob) -> Result<(), OpenJob> {
        self.tx.send(job).map_err(|e| e.0)
    }
}

/// Reads an index's snapshot and log (creating the files as needed) and replays them.
pub fn load(base: &str, name: &str) -> io::Result<Loaded> {
    let started = Instant::now();
    let mut ranking = Ranking::new();
    let opened = Store::open(base, name, |m| ranking.apply(m))?;
    ranking.bump_seq(opened.next_seq);
    Ok(Loaded {
        ranking,
        store: opened.store,
        took: started.elapsed(),
    })
}
