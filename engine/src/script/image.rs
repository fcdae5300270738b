//! The file image: every script (`*.lua`) and data file (`*.json`) under the `%package`
//! directories, held in memory so a core never reads or stats a file to serve a script.
//!
//! A core loads a script for the first time when a stage first asks for its name — often from
//! a receive callback (`stage.load("packet+" .. data.message)`), so on a client's packet — and
//! `bundle.json("items.json")` reads data files from callbacks too. Both look here instead of
//! the file system. The image is built once per process before any core serves (by the first
//! Lua state, `script::reload::start`) and walked again by the `stage-reload` thread on every
//! scan (`%reflush`), which reads only the files whose size or mtime changed. So a file added
//! or edited while the node runs is seen after the next scan, and a name that has no file
//! costs a hash lookup, not a `stat` per `%package` entry.
//!
//! What is not here is read on the calling thread, counted on a core (`blocking`:
//! `stage_limit_hits_total{limit="blocking_on_core"}`) and logged once per process: a
//! `bundle.json` file outside every `%package` directory or of another kind, and files past
//! the image's limits
//! ([`MAX_FILES`], [`MAX_BYTES`], [`MAX_ENTRIES`], [`MAX_DEPTH`]; reaching one is logged once
//! per process). A
//! path that climbs with `..` is never in the image: script names cannot leave their
//! `%package` directory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::UNIX_EPOCH;

/// Most files the image holds; a tree with more is held in part (the rest is read on demand).
pub const MAX_FILES: usize = 20_000;
/// Most bytes the image holds (the sum of its files' sizes).
pub const MAX_BYTES: u64 = 64 << 20;
/// Most directory entries (of any kind) one walk looks at: a `%package` entry that names a
/// big tree (a home directory) costs one bounded walk per scan, not a walk of everything.
pub const MAX_ENTRIES: usize = 50_000;
/// Deepest directory walked below a `%package` directory (also stops symlink loops).
pub const MAX_DEPTH: usize = 16;
/// The file kinds a script reads: sources, and data for `bundle.json`.
const EXTENSIONS: [&str; 2] = ["lua", "json"];

static FULL_LOGGED: AtomicBool = AtomicBool::new(false);

/// One file as last seen: its stamp (size, mtime ns) and its bytes.
#[derive(Clone)]
pub struct ImageFile {
    pub stamp: (u64, i64),
    pub bytes: Arc<[u8]>,
}

/// What one walk found.
struct Snapshot {
    files: HashMap<String, ImageFile>,
    /// False when a limit left files out: a miss then proves nothing.
    complete: bool,
}

/// The image of the files under `roots` (the `%package` directories, as configured).
pub struct Image {
    roots: Vec<String>,
    /// The roots as lookup keys ([`normalize`]d once, not on every miss).
    root_keys: Vec<String>,
    current: RwLock<Arc<Snapshot>>,
}

/// What a lookup found.
pub enum Lookup {
    Found(ImageFile),
    /// The image covers the path and it had no such file at the last scan.
    Missing,
    /// The image does not cover the path (outside every root, or left out by a limit).
    NotCovered,
}

impl Image {
    /// Walks `roots` now, on the calling thread (the first state of the process, before any
    /// core serves).
    pub fn new(roots: Vec<String>) -> Image {
        let image = Image {
            root_keys: roots.iter().map(|r| normalize(r)).collect(),
            roots,
            current: RwLock::new(Arc::new(Snapshot {
                files: HashMap::new(),
                complete: true,
            })),
        };
        image.refresh();
        image
    }

    /// Walks the roots again, reading only files whose stamp changed (the reloader's thread).
    pub fn refresh(&self) {
        let previous = self.snapshot();
        let mut next = Snapshot {
            files: HashMap::with_capacity(previous.files.len()),
            complete: true,
        };
        let mut budget = Budget {
            bytes: 0,
            entries: 0,
        };
        for (root, key) in self.roots.iter().zip(&self.root_keys) {
            walk(Path::new(root), key, 0, &previous, &mut next, &mut budget);
        }
        if !next.complete && !FULL_LOGGED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the %package directories hold more than the file image takes ({MAX_FILES} files, \
                 {MAX_BYTES} bytes, {MAX_ENTRIES} entries walked, {MAX_DEPTH} levels): a core \
                 that serves refuses to read files past it (%blocking \"refuse\", the default) \
                 or reads them while its clients wait (%blocking \"count\"); point %package \
                 at the directories that hold your scripts and data"
            );
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The file at `path` (as a script or the configuration spells it, relative to the
    /// working directory or absolute).
    pub fn lookup(&self, path: &str) -> Lookup {
        let Some(key) = normalize_strict(path) else {
            return Lookup::Missing;
        };
        let snapshot = self.snapshot();
        if let Some(file) = snapshot.files.get(&key) {
            return Lookup::Found(file.clone());
        }
        let kind = Path::new(&key).extension().and_then(|e| e.to_str());
        let covered = kind.is_some_and(|k| EXTENSIONS.contains(&k))
            && self.root_keys.iter().any(|root| under(&key, root));
        if covered && snapshot.complete {
            Lookup::Missing
        } else {
            Lookup::NotCovered
        }
    }

    /// How many files the image holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.snapshot().files.len()
    }
}

/// Reads `path` on the calling thread because the image does not cover it (`what` names the
/// caller), if [`may_read_on_this_thread`] allows it.
pub fn read_on_this_thread(path: &str, what: &str) -> std::io::Result<Vec<u8>> {
    may_read_on_this_thread(path, what)?;
    std::fs::read(path)
}

/// Whether `path`, which the image does not cover, may be read on the calling thread:
/// counted and logged once when that thread is a serving core, refused there under
/// `%blocking: "refuse"` (`node::blocking`).
pub fn may_read_on_this_thread(path: &str, what: &str) -> std::io::Result<()> {
    crate::node::blocking::note(
        crate::node::blocking::Kind::FileRead,
        &format!("{what} of {path:?}"),
    )
}

/// Size and mtime (ns) of a regular file, or `None` if there is none.
pub fn stamp_of(path: &Path) -> Option<(u64, i64)> {
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    Some(stamp_from(&meta))
}

fn stamp_from(meta: &std::fs::Metadata) -> (u64, i64) {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    (meta.len(), mtime)
}

/// What one walk has used of the limits.
struct Budget {
    bytes: u64,
    entries: usize,
}

fn walk(
    dir: &Path,
    key: &str,
    depth: usize,
    previous: &Snapshot,
    next: &mut Snapshot,
    budget: &mut Budget,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        budget.entries += 1;
        if budget.entries > MAX_ENTRIES {
            next.complete = false;
            return;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, as opening the file would.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let child = join_key(key, name);
        if meta.is_dir() {
            if depth + 1 >= MAX_DEPTH {
                next.complete = false;
                continue;
            }
            walk(&path, &child, depth + 1, previous, next, budget);
        } else if meta.is_file() {
            let kind = Path::new(name).extension().and_then(|e| e.to_str());
            if !kind.is_some_and(|k| EXTENSIONS.contains(&k)) || next.files.contains_key(&child) {
                continue;
            }
            let stamp = stamp_from(&meta);
            if next.files.len() >= MAX_FILES || budget.bytes + stamp.0 > MAX_BYTES {
                next.complete = false;
                continue;
            }
            let file = match previous.files.get(&child) {
                Some(seen) if seen.stamp == stamp => seen.clone(),
                _ => match std::fs::read(&path) {
                    // The stamp of what was read: a write between the stat and the read
                    // shows as a changed stamp at the next scan, which reads it again.
                    Ok(read) => ImageFile {
                        stamp: (read.len() as u64, stamp.1),
                        bytes: Arc::from(read),
                    },
                    Err(_) => continue,
                },
            };
            budget.bytes += file.stamp.0;
            next.files.insert(child, file);
        }
    }
}

fn join_key(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// A path's lookup key: `.` and empty components dropped (`./a//b` -> `a/b`, `.` -> ``).
/// `..` is kept (a symlink makes collapsing it unsound).
fn normalize(path: &str) -> String {
    let absolute = path.starts_with('/');
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// [`normalize`], or `None` for a path with a `..` component (never in the image).
fn normalize_strict(path: &str) -> Option<String> {
    path.split('/').all(|p| p != "..").then(|| normalize(path))
}

/// Whether `key` lies under the directory `root` (both normalized).
fn under(key: &str, root: &str) -> bool {
    if root.is_empty() {
        return !key.starts_with('/');
    }
    if root == "/" {
        return key.starts_with('/');
    }
    key.strip_prefix(root)
        .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_drop_dots_and_refuse_climbing() {
        assert_eq!(normalize("./a//b/./c.lua"), "a/b/c.lua");
        assert_eq!(normalize("."), "");
        assert_eq!(normalize("/srv/./x"), "/srv/x");
        assert_eq!(normalize_strict("a/../b"), None);
        assert!(under("a/b.lua", ""));
        assert!(!under("/a/b.lua", ""));
        assert!(under("s/x.json", "s"));
        assert!(!under("sx/x.json", "s"));
        assert!(under("/srv/x", "/srv"));
    }

    #[test]
    fn the_image_holds_scripts_and_data_and_sees_changes_at_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("scripts");
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("start.lua"), "return 1").unwrap();
        std::fs::write(root.join("lib/items.json"), "[1]").unwrap();
        std::fs::write(root.join("notes.txt"), "no").unwrap();
        std::fs::write(root.join(".git/x.lua"), "hidden").unwrap();
        let root_s = root.to_str().unwrap().to_string();
        let image = Image::new(vec![root_s.clone()]);
        let at = |rel: &str| format!("{root_s}/{rel}");
        let bytes = |rel: &str| match image.lookup(&at(rel)) {
            Lookup::Found(f) => Some(f.bytes.to_vec()),
            _ => None,
        };
        assert_eq!(bytes("start.lua").as_deref(), Some(&b"return 1"[..]));
        assert_eq!(bytes("./lib//items.json").as_deref(), Some(&b"[1]"[..]));
        assert_eq!(image.len(), 2, "only .lua and .json, no hidden directory");
        assert!(matches!(image.lookup(&at("notes.txt")), Lookup::NotCovered));
        assert!(matches!(image.lookup(&at("gone.lua")), Lookup::Missing));
        assert!(matches!(
            image.lookup(&at("lib/../start.lua")),
            Lookup::Missing
        ));
        assert!(matches!(
            image.lookup("/elsewhere/x.json"),
            Lookup::NotCovered
        ));

        // A new file and an edit are seen once the image is walked again, not before.
        std::fs::write(root.join("new.lua"), "return 2").unwrap();
        std::fs::write(root.join("start.lua"), "return 11").unwrap();
        assert!(matches!(image.lookup(&at("new.lua")), Lookup::Missing));
        image.refresh();
        assert_eq!(bytes("new.lua").as_deref(), Some(&b"return 2"[..]));
        assert_eq!(bytes("start.lua").as_deref(), Some(&b"return 11"[..]));
        std::fs::remove_file(root.join("new.lua")).unwrap();
        image.refresh();
        assert!(matches!(image.lookup(&at("new.lua")), Lookup::Missing));
    }
}
