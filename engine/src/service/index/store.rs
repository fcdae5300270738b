//! Persistence of one index: `<prefix><name>.snap` (a full copy) plus `<prefix><name>.log`
//! (every acknowledged mutation since that copy, appended).
//!
//! **Durability rule.** A command's records are written to the log with one `write(2)` before
//! its reply is produced, so an acknowledged mutation is in the kernel's page cache and
//! survives the `stage` process being killed (SIGKILL, panic, OOM) under either policy. What
//! a power loss or kernel crash may take depends on [`SyncPolicy`]:
//! - `Always` (the default): the log is `fdatasync`ed before the reply, so nothing
//!   acknowledged is lost;
//! - `Interval(d)`: the log is synced at most every `d` (checked on writes and idle ticks), so
//!   up to `d` of acknowledged mutations can be lost.
//!
//! Snapshots are written to `.snap.tmp`, synced, renamed over `.snap` and the directory
//! synced; only then is the log truncated. Log records are whole id states, so replaying a log
//! over a snapshot that already contains it is harmless. On open, a torn or corrupt log tail
//! (a write cut short by a crash) is truncated with a warning; a corrupt snapshot is an error,
//! never silently dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::record::{self, Entry, Mutation, Next};

const SNAP_MAGIC: &[u8; 8] = b"STGIDX1\n";

/// When the log is flushed to stable storage (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    #[default]
    Always,
    Interval(Duration),
}

pub struct Store {
    log: File,
    log_path: PathBuf,
    snap_path: PathBuf,
    log_len: u64,
    /// Records of the current command, written by [`Store::commit`].
    pending: Vec<u8>,
    /// Written but not yet synced.
    unsynced: bool,
    last_sync: Instant,
    policy: SyncPolicy,
}

/// What [`Store::open`] found besides the records it replayed.
pub struct Opened {
    pub store: Store,
    /// The snapshot's sequence counter (the log's records carry their own sequences).
    pub next_seq: u64,
}

fn with_ext(base: &str, ext: &str) -> PathBuf {
    PathBuf::from(format!("{base}{ext}"))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

impl Store {
    /// Opens (creating as needed) the files at `base` (`<prefix><name>`), calling `apply` for
    /// every snapshot entry, then every log record, in order.
    pub fn open(
        base: &str,
        policy: SyncPolicy,
        mut apply: impl FnMut(Mutation),
    ) -> io::Result<Opened> {
        let log_path = with_ext(base, ".log");
        let snap_path = with_ext(base, ".snap");
        if let Some(dir) = log_path.parent() {
            if !dir.as_os_str().is_empty() {
                fs::create_dir_all(dir)?;
            }
        }
        let next_seq = match fs::read(&snap_path) {
            Ok(buf) => load_snapshot(&buf, &mut apply).map_err(|why| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {why}", snap_path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)?;
        let buf = fs::read(&log_path)?;
        let mut at = 0usize;
        loop {
            match record::next_record(&buf[at..]) {
                Next::Record(m, n) => {
                    apply(m);
                    at += n;
                }
                Next::End => break,
                Next::Bad(why) => {
                    tracing::warn!(
                        "index log {}: {why} at byte {at}; dropping the last {} bytes (a write cut short by a crash)",
                        log_path.display(),
                        buf.len() - at
                    );
                    log.set_len(at as u64)?;
                    log.sync_all()?;
                    break;
                }
            }
        }
        let store = Store {
            log,
            log_path,
            snap_path,
            log_len: at as u64,
            pending: Vec::new(),
            unsynced: false,
            last_sync: Instant::now(),
            policy,
        };
        Ok(Opened { store, next_seq })
    }

    pub fn log_len(&self) -> u64 {
        self.log_len
    }

    pub fn push_put(&mut self, id: &str, e: &Entry) {
        record::encode_put(&mut self.pending, id, e);
    }

    pub fn push_remove(&mut self, id: &str) {
        record::encode_remove(&mut self.pending, id);
    }

    /// Makes the pending records durable per the policy; call before acknowledging.
    pub fn commit(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            // One write per command: a crash leaves at most one torn record at the tail.
            let r = self.log.write_all(&self.pending);
            self.log_len += self.pending.len() as u64;
            self.pending.clear();
            r?;
            self.unsynced = true;
        }
        match self.policy {
            SyncPolicy::Always => self.sync(),
            SyncPolicy::Interval(d) => {
                if self.last_sync.elapsed() >= d {
                    self.sync()
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Idle tick: honours `Interval` when no write came along to do it.
    pub fn idle(&mut self) -> io::Result<()> {
        match self.policy {
            SyncPolicy::Interval(d) if self.last_sync.elapsed() >= d => self.sync(),
            _ => Ok(()),
        }
    }

    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.log.sync_data()?;
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Replaces the snapshot with `entries` and empties the log.
    pub fn snapshot<'a>(
        &mut self,
        next_seq: u64,
        count: usize,
        entries: impl Iterator<Item = (&'a str, &'a Entry)>,
    ) -> io::Result<()> {
        let tmp = with_ext(&self.snap_path.to_string_lossy(), ".tmp");
        let mut buf = Vec::with_capacity(24);
        buf.extend_from_slice(SNAP_MAGIC);
        buf.extend_from_slice(&next_seq.to_le_bytes());
        buf.extend_from_slice(&(count as u64).to_le_bytes());
        let mut f = io::BufWriter::new(File::create(&tmp)?);
        f.write_all(&buf)?;
        let mut written = 0usize;
        for (id, e) in entries {
            buf.clear();
            record::encode_put(&mut buf, id, e);
            f.write_all(&buf)?;
            written += 1;
        }
        debug_assert_eq!(written, count);
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.snap_path)?;
        sync_dir(&self.snap_path)?;
        // The snapshot holds everything the log did: only now may the log go.
        self.log.set_len(0)?;
        self.log.sync_all()?;
        self.log_len = 0;
        self.unsynced = false;
        tracing::debug!("index snapshot {}: {count} ids", self.snap_path.display());
        Ok(())
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

fn load_snapshot(buf: &[u8], apply: &mut impl FnMut(Mutation)) -> Result<u64, &'static str> {
    if buf.len() < 24 || &buf[..8] != SNAP_MAGIC {
        return Err("not an index snapshot");
    }
    let next_seq = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    let count = u64::from_le_bytes(buf[16..24].try_into().unwrap());
    let mut at = 24;
    let mut seen = 0u64;
    loop {
        match record::next_record(&buf[at..]) {
            Next::Record(m, n) => {
                apply(m);
                at += n;
                seen += 1;
            }
            Next::End => break,
            Next::Bad(why) => return Err(why),
        }
    }
    if seen != count {
        return Err("snapshot entry count mismatch");
    }
    Ok(next_seq)
}
