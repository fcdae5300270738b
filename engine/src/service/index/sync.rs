//! The sync thread of an index.so stage (`index-sync`, one per stage and process): every
//! write, `fdatasync`, snapshot and rename of the stage's indexes happens here, so an owner
//! core never sits in a file syscall. Cores hand it [`Job`]s through an unbounded channel (a
//! send never blocks; the backlog is bounded by what the cores apply between two syncs) and
//! learn what is on disk from [`Completion`]s, which the stage's owner delivers to the core's
//! inbox (the `notify` given to [`SyncThread::start`]).
//!
//! **Group commit.** The thread takes one job, then every job already queued behind it,
//! writes them all in order, and (policy `Always`) `fdatasync`s each log written once: the
//! jobs that arrived during one sync share the next. Only then is each core told the last
//! job of its that is covered (`upto`), so a core never releases a reply before its sync.
//! Policy `Interval(d)` completes a job once written and syncs every log at most every `d`.
//!
//! **Failures.** A write, sync or snapshot that fails breaks its index for good: the thread
//! writes nothing more to it (a later record after a hole would be replayed as if the hole
//! were not there) and reports the index in `failed` of the completion, so its core refuses
//! it from then on and answers the replies waiting on it with null, never a false ack. After
//! a failed `fdatasync` the page cache cannot be trusted to hold what is on disk, so only a
//! restart (which reads the files again) brings the index back.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::store::{LogFiles, SyncPolicy};

/// What to do with one index's files.
pub enum Work {
    /// A command's records.
    Append(Vec<u8>),
    /// A snapshot image (built by [`super::snapshot::Build`]); the log is then emptied.
    Snapshot(Vec<u8>),
}

/// One commit of one core: its works in order, numbered by the core (`seq` grows by one per
/// job of that core).
pub struct Job {
    pub core: usize,
    pub seq: u64,
    pub work: Vec<(Arc<LogFiles>, Work)>,
    /// Told (after the completion) when this job is done: the shutdown snapshot waits on it.
    pub done: Option<mpsc::Sender<()>>,
}

/// What the thread tells a core: its jobs up to `upto` are done (written, and synced under
/// `Always`); the indexes in `failed` broke, with why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    pub upto: u64,
    pub failed: Vec<(String, String)>,
}

/// How the thread makes a log durable: `File::sync_data` (fdatasync); tests put a fault or a
/// gate here.
pub type SyncFn = Arc<dyn Fn(&File) -> io::Result<()> + Send + Sync>;

/// Delivers a completion to core `core` (its inbox, in the engine).
pub type Notify = Box<dyn Fn(usize, Completion) + Send>;

/// A core's handle on the thread (cloneable: every core of the process shares one).
#[derive(Clone)]
pub struct SyncThread {
    tx: mpsc::Sender<Job>,
}

impl SyncThread {
    /// Starts the thread with the real `fdatasync`.
    pub fn start(what: &str, policy: SyncPolicy, notify: Notify) -> io::Result<SyncThread> {
        Self::start_with(what, policy, Arc::new(|f: &File| f.sync_data()), notify)
    }

    pub fn start_with(
        what: &str,
        policy: SyncPolicy,
        sync: SyncFn,
        notify: Notify,
    ) -> io::Result<SyncThread> {
        let (tx, rx) = mpsc::channel();
        let what = what.to_string();
        std::thread::Builder::new()
            .name("index-sync".into())
            .spawn(move || Syncer::new(policy, sync, notify).run(rx, &what))?;
        Ok(SyncThread { tx })
    }

    /// Hands a job to the thread (never blocks); gives it back if the thread is gone.
    pub fn send(&self, job: Job) -> Result<(), Job> {
        self.tx.send(job).map_err(|e| e.0)
    }
}

/// Files are told apart by their `Arc`'s address; the map keeps them alive, so an address is
/// never reused while it is a key.
fn key(f: &Arc<LogFiles>) -> usize {
    Arc::as_ptr(f) as usize
}

struct Syncer {
    policy: SyncPolicy,
    sync: SyncFn,
    notify: Notify,
    /// Indexes whose files failed: nothing more is written to them.
    broken: HashMap<usize, Arc<LogFiles>>,
    /// Written, not yet synced (policy `Interval`), with the core that owns each.
    unsynced: HashMap<usize, (Arc<LogFiles>, usize)>,
    last_sync: Instant,
    /// The last job seen of each core, for failures found by an interval sync.
    last_seq: HashMap<usize, u64>,
}

impl Syncer {
    fn new(policy: SyncPolicy, sync: SyncFn, notify: Notify) -> Syncer {
        Syncer {
            policy,
            sync,
            notify,
            broken: HashMap::new(),
            unsynced: HashMap::new(),
            last_sync: Instant::now(),
            last_seq: HashMap::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Job>, what: &str) {
        tracing::debug!("index sync thread for {what} started");
        loop {
            let first = match self.policy {
                SyncPolicy::Always => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
                SyncPolicy::Interval(d) => {
                    let wait = d.saturating_sub(self.last_sync.elapsed());
                    match rx.recv_timeout(wait) {
                        Ok(job) => job,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.sync_interval();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let mut group = vec![first];
            group.extend(rx.try_iter());
            self.commit(group);
        }
        // Every core is gone: make what was written durable before the process ends.
        let cores: Vec<(Arc<LogFiles>, usize)> = self.unsynced.drain().map(|(_, v)| v).collect();
        for (files, _) in cores {
            if let Err(e) = (self.sync)(files.log()) {
                tracing::error!(
                    "index {}: last sync failed: {e}",
                    files.log_path().display()
                );
            }
        }
    }

    /// Writes a group of jobs, syncs (per policy) and tells each core how far it got.
    fn commit(&mut self, group: Vec<Job>) {
        let mut failed: HashMap<usize, Vec<(String, String)>> = HashMap::new();
        let mut upto: HashMap<usize, u64> = HashMap::new();
        // Logs written in this group, with their owner core, in first-write order.
        let mut written: Vec<(Arc<LogFiles>, usize)> = Vec::new();
        let mut dones = Vec::new();
        for job in group {
            upto.insert(job.core, job.seq);
            self.last_seq.insert(job.core, job.seq);
            for (files, work) in job.work {
                let k = key(&files);
                if self.broken.contains_key(&k) {
                    let why = "an earlier write or sync of this index failed".to_string();
                    failed
                        .entry(job.core)
                        .or_default()
                        .push((files.name.clone(), why));
                    continue;
                }
                let r = match &work {
                    Work::Append(records) => files.append(records),
                    Work::Snapshot(image) => files.snapshot(image),
                };
                match r {
                    Ok(()) => match work {
                        Work::Append(_) => {
                            if !written.iter().any(|(f, _)| key(f) == k) {
                                written.push((files, job.core));
                            }
                        }
                        // The snapshot synced the (now empty) log itself.
                        Work::Snapshot(_) => {
                            written.retain(|(f, _)| key(f) != k);
                            self.unsynced.remove(&k);
                        }
                    },
                    Err(e) => self.break_index(files, job.core, &e, &mut failed),
                }
            }
            if let Some(done) = job.done {
                dones.push(done);
            }
        }
        match self.policy {
            SyncPolicy::Always => {
                for (files, core) in written {
                    if self.broken.contains_key(&key(&files)) {
                        continue;
                    }
                    if let Err(e) = (self.sync)(files.log()) {
                        self.break_index(files, core, &e, &mut failed);
                    }
                }
            }
            SyncPolicy::Interval(d) => {
                for (files, core) in written {
                    self.unsynced.insert(key(&files), (files, core));
                }
                if self.last_sync.elapsed() >= d {
                    self.sync_logs(&mut failed);
                }
            }
        }
        for (core, upto) in upto {
            let failed = failed.remove(&core).unwrap_or_default();
            (self.notify)(core, Completion { upto, failed });
        }
        // A failure found by an interval sync, on a core with no job in this group.
        for (core, failed) in failed {
            let upto = self.last_seq.get(&core).copied().unwrap_or(0);
            (self.notify)(core, Completion { upto, failed });
        }
        for done in dones {
            let _ = done.send(());
        }
    }

    /// Policy `Interval`: the timer ran out with nothing to write.
    fn sync_interval(&mut self) {
        let mut failed = HashMap::new();
        self.sync_logs(&mut failed);
        for (core, failed) in failed {
            let upto = self.last_seq.get(&core).copied().unwrap_or(0);
            (self.notify)(core, Completion { upto, failed });
        }
    }

    fn sync_logs(&mut self, failed: &mut HashMap<usize, Vec<(String, String)>>) {
        let logs: Vec<(Arc<LogFiles>, usize)> = self.unsynced.drain().map(|(_, v)| v).collect();
        for (files, core) in logs {
            if let Err(e) = (self.sync)(files.log()) {
                self.break_index(files, core, &e, failed);
            }
        }
        self.last_sync = Instant::now();
    }

    fn break_index(
        &mut self,
        files: Arc<LogFiles>,
        core: usize,
        e: &io::Error,
        failed: &mut HashMap<usize, Vec<(String, String)>>,
    ) {
        let why = format!("{}: {e}", files.log_path().display());
        failed
            .entry(core)
            .or_default()
            .push((files.name.clone(), why));
        self.unsynced.remove(&key(&files));
        self.broken.insert(key(&files), files);
    }
}

/// How long a core waits for its shutdown snapshot before it gives up on it.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
