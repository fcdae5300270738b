//! Persistence of one index: `<prefix><name>.snap` (a full copy) plus `<prefix><name>.log`
//! (every acknowledged mutation since that copy, appended).
//!
//! This file is the index's two halves of that: [`LogFiles`], the open files and the
//! operations on them (append, snapshot) that only the index's sync thread (`sync.rs`)
//! performs, and [`Store`], the owner core's bookkeeping (the records of the command being
//! run, the log's length) which never touches a file after the open. The snapshot image is
//! built on the owner core in slices (`snapshot.rs`) and written here.
//!
//! **Durability rule.** A command's records go to the sync thread as one job and are written
//! to the log with one `write(2)`; its reply waits until the thread reports that write done
//! (so an acknowledged mutation survives the `stage` process being killed, SIGKILL, panic,
//! OOM, under either policy) and, per [`SyncPolicy`]:
//! - `Always` (the default): until the log is `fdatasync`ed, so nothing acknowledged is lost
//!   to a power loss or kernel crash. The thread syncs once for every job that arrived while
//!   it was busy (group commit);
//! - `Interval(d)`: the thread syncs at most every `d`, so up to `d` of acknowledged mutations
//!   can be lost to a power loss.
//!
//! Snapshots are written to `.snap.tmp`, synced, renamed over `.snap` and the directory
//! synced; only then is the log truncated. Log records are whole id states, so replaying a log
//! over a snapshot that already contains it is harmless. A snapshot's records are the same
//! records (an id may appear more than once, the last one counting; a REMOVE may appear). On open, a torn or corrupt log tail
//! (a write cut short by a crash) is truncated with a warning; a corrupt snapshot is an error,
//! never silently dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::record::{self, Entry, Mutation, Next};

const SNAP_MAGIC: &[u8; 8] = b"STGIDX1\n";

/// When the log is flushed to stable storage (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    #[default]
    Always,
    Interval(Duration),
}

/// One index's files, shared by its owner core (which only names them in jobs) and the sync
/// thread (which writes them).
pub struct LogFiles {
    /// The index's name, for the failures the sync thread reports.
    pub name: String,
    log: File,
    log_path: PathBuf,
    snap_path: PathBuf,
}

impl LogFiles {
    /// Appends a command's records with one `write(2)`: a crash leaves at most one torn
    /// record at the tail.
    pub fn append(&self, records: &[u8]) -> io::Result<()> {
        (&self.log).write_all(records)
    }

    /// The log file, for the sync thread's `fdatasync`.
    pub fn log(&self) -> &File {
        &self.log
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Replaces the snapshot with `image` (built by `snapshot::Build`) and empties the log.
    pub fn snapshot(&self, image: &[u8]) -> io::Result<()> {
        let tmp = with_ext(&self.snap_path.to_string_lossy(), ".tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(image)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.snap_path)?;
        sync_dir(&self.snap_path)?;
        // The snapshot holds everything the log did: only now may the log go.
        self.log.set_len(0)?;
        self.log.sync_all()?;
        tracing::debug!(
            "index snapshot {}: {} bytes",
            self.snap_path.display(),
            image.len()
        );
        Ok(())
    }
}

/// The owner core's side of one index's persistence: no file operation after [`Store::open`].
pub struct Store {
    files: Arc<LogFiles>,
    /// The log's length once every record handed out so far is written.
    log_len: u64,
    /// Records of the current command, handed out by [`Store::take`].
    pending: Vec<u8>,
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
    pub fn open(base: &str, name: &str, mut apply: impl FnMut(Mutation)) -> io::Result<Opened> {
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
        let files = Arc::new(LogFiles {
            name: name.to_string(),
            log,
            log_path,
            snap_path,
        });
        let store = Store {
            files,
            log_len: at as u64,
            pending: Vec::new(),
        };
        Ok(Opened { store, next_seq })
    }

    pub fn log_len(&self) -> u64 {
        self.log_len
    }

    pub fn files(&self) -> &Arc<LogFiles> {
        &self.files
    }

    pub fn push_put(&mut self, id: &str, e: &Entry) {
        record::encode_put(&mut self.pending, id, e);
    }

    pub fn push_remove(&mut self, id: &str) {
        record::encode_remove(&mut self.pending, id);
    }

    /// The current command's records, for one append job (none when it changed nothing).
    pub fn take(&mut self) -> Option<Vec<u8>> {
        if self.pending.is_empty() {
            return None;
        }
        self.log_len += self.pending.len() as u64;
        Some(std::mem::take(&mut self.pending))
    }

    /// A snapshot image was handed to the sync thread after every record taken so far: the
    /// log counts as empty from here on (the thread truncates it once the snapshot is
    /// safely in place).
    pub fn snapshot_sent(&mut self) {
        self.log_len = 0;
    }
}

/// Bytes before a snapshot's first record: magic, next sequence, record count.
pub const SNAP_HEADER: usize = 24;

/// Starts a snapshot image in `buf`: its header, with the sequence and count left at zero
/// for [`finish_header`] (the image is built by `snapshot::Build`, on the owner core).
pub fn snapshot_header(buf: &mut Vec<u8>) {
    buf.extend_from_slice(SNAP_MAGIC);
    buf.extend_from_slice(&[0u8; SNAP_HEADER - 8]);
}

/// Writes the index's next sequence and the number of records into the header of a built
/// image.
pub fn finish_header(buf: &mut [u8], next_seq: u64, records: u64) {
    buf[8..16].copy_from_slice(&next_seq.to_le_bytes());
    buf[16..24].copy_from_slice(&records.to_le_bytes());
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
