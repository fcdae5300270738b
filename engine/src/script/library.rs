//! The process's scripts: what each script name resolves to through `%package` (spec/stage.md
//! §8.2), as one committed version that every Lua state of the process agrees on. It holds
//! sources (bytes), not compiled chunks: each state compiles its own (`loader`).
//!
//! A name is resolved once per process, by the first state that loads it, and recorded here;
//! every later change goes through the reloader (`reload`), which re-resolves off the cores
//! and commits a new version only once every core has switched to it. So a state that loads
//! a name for the first time gets the version its core runs, never a newer one read behind
//! the reloader's back. Files come from the process's file image (`image`): resolving a name
//! on a core reads and stats nothing. The lock is taken on a state's first load of a name
//! and by the reloader, never per packet.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::PackageEntry;
use crate::node::reload::{BrokenFile, Resolution, Source, Stamp};
use crate::plan::Embedded;

use super::image::{self, Image};

/// Prefix of package entries served from scripts compiled into the binary.
pub const BUILTIN_ROOT: &str = "@builtin";

/// Compiles a candidate file (`path`, bytes): `Err` carries the compiler's message.
pub type Check<'a> = &'a mut dyn FnMut(&str, &[u8]) -> Result<(), String>;

/// What is already known about one file at one stamp, so a scan need not read it again.
pub enum Verdict {
    Compiles(Arc<Source>),
    Broken(BrokenFile),
}

pub struct Library {
    entries: Vec<PackageEntry>,
    embedded: Embedded,
    /// `%reflush`: how often the reloader looks at the files.
    pub reflush: Duration,
    /// The committed version (1 = the scripts as first loaded); read without the lock by
    /// pool threads to see whether they must catch up.
    version: AtomicU64,
    committed: Mutex<HashMap<String, Entry>>,
    /// The files of the `%package` directories (built-in entries excluded).
    pub image: Image,
}

struct Entry {
    resolution: Arc<Resolution>,
    /// The version that last changed it (0 = as first resolved).
    since: u64,
}

impl Library {
    /// Walks the `%package` directories into the file image on the calling thread: the first
    /// state of the process calls this, before any core serves.
    pub fn new(entries: Vec<PackageEntry>, reflush: Duration, embedded: Embedded) -> Arc<Library> {
        let roots = entries
            .iter()
            .filter(|e| !e.prefix.starts_with(BUILTIN_ROOT))
            .map(|e| e.prefix.clone())
            .collect();
        Arc::new(Library {
            image: Image::new(roots),
            entries,
            embedded,
            reflush,
            version: AtomicU64::new(1),
            committed: Mutex::new(HashMap::new()),
        })
    }

    /// `"cluster.ready"` -> `cluster/ready.lua`; a name ending in `.lua` is used verbatim.
    pub fn relative_path(name: &str) -> String {
        if name.ends_with(".lua") {
            return name.to_string();
        }
        format!("{}.lua", name.replace(['.', ':'], "/"))
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.committed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committed resolution of `name`; if no state has loaded it yet, resolves it now from
    /// the file image (`check` compiles a candidate on the calling thread) and records it,
    /// unless no file of that name exists.
    pub fn resolve_first(&self, name: &str, check: Check<'_>) -> Arc<Resolution> {
        if let Some(entry) = self.lock().get(name) {
            return entry.resolution.clone();
        }
        // Outside the lock: another state may resolve the same name meanwhile, and the first
        // one recorded wins, so every state uses the same bytes.
        let resolved = Arc::new(self.resolve(name, check, &|_, _| None, true));
        if resolved.found.is_none() && resolved.broken.is_empty() {
            // Not recorded: names a script builds from what clients send must not grow this
            // table, so a missing name is searched again on its next load (as before the
            // reloader existed); once its file exists, the first load records it.
            return resolved;
        }
        let mut committed = self.lock();
        let entry = committed.entry(name.to_string()).or_insert_with(|| {
            if let (Some(found), Some(first)) = (&resolved.found, resolved.broken.first()) {
                tracing::warn!("{}; using fail-over copy {}", first.error, found.path);
            }
            Entry {
                resolution: resolved,
                since: 0,
            }
        });
        entry.resolution.clone()
    }

    /// Resolves `name` through the search path: the first file that exists and compiles
    /// (`check`), passing over broken ones. `known` answers for files already judged at
    /// their current stamp, which are then not compiled again. `on_core`: a file the image
    /// does not cover is counted as a read on a core.
    pub fn resolve(
        &self,
        name: &str,
        check: Check<'_>,
        known: &dyn Fn(&str, Stamp) -> Option<Verdict>,
        on_core: bool,
    ) -> Resolution {
        let rel = Self::relative_path(name);
        let mut broken = Vec::new();
        for entry in &self.entries {
            let path = join(&entry.prefix, &rel);
            let Some((stamp, bytes)) = self.fetch(&path, on_core) else {
                continue;
            };
            let verdict = match known(&path, stamp) {
                Some(v) => v,
                None => match check(&path, &bytes) {
                    Ok(()) => Verdict::Compiles(Arc::new(Source {
                        path: path.clone(),
                        position: entry.position,
                        stamp,
                        bytes,
                    })),
                    Err(error) => Verdict::Broken(BrokenFile {
                        path: path.clone(),
                        stamp,
                        error,
                    }),
                },
            };
            match verdict {
                Verdict::Compiles(source) => {
                    return Resolution {
                        found: Some(source),
                        broken,
                    }
                }
                Verdict::Broken(b) => broken.push(b),
            }
        }
        Resolution {
            found: None,
            broken,
        }
    }

    /// Every name some state has loaded, with its committed resolution.
    pub fn snapshot(&self) -> Vec<(String, Arc<Resolution>)> {
        self.lock()
            .iter()
            .map(|(name, e)| (name.clone(), e.resolution.clone()))
            .collect()
    }

    /// Records `version` as committed: every core has switched to `scripts`.
    pub fn commit(&self, version: u64, scripts: &[(String, Arc<Resolution>)]) {
        let mut committed = self.lock();
        for (name, resolution) in scripts {
            committed.insert(
                name.clone(),
                Entry {
                    resolution: resolution.clone(),
                    since: version,
                },
            );
        }
        self.version.store(version, Ordering::Release);
    }

    /// The names changed by versions after `version`, with their committed resolution.
    pub fn changed_since(&self, version: u64) -> Vec<(String, Arc<Resolution>)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.since > version)
            .map(|(name, e)| (name.clone(), e.resolution.clone()))
            .collect()
    }

    /// The stamp and bytes of a file that exists (stamp `None` for a built-in script), from
    /// the image; a file the image does not cover (it is past the image's limits) is read
    /// here, on the calling thread.
    fn fetch(&self, path: &str, on_core: bool) -> Option<(Stamp, Arc<[u8]>)> {
        if let Some(rest) = path.strip_prefix(BUILTIN_ROOT) {
            let rest = rest.trim_start_matches('/');
            return self
                .embedded
                .iter()
                .find(|(p, _)| *p == rest)
                .map(|(_, src)| (None, Arc::from(src.as_bytes())));
        }
        match self.image.lookup(path) {
            image::Lookup::Found(file) => Some((Some(file.stamp), file.bytes)),
            image::Lookup::Missing => None,
            image::Lookup::NotCovered => {
                // Asked before the stat too: under %blocking "refuse" the file is not looked
                // at (the name then resolves to nothing; the refusal is logged).
                if on_core && image::may_read_on_this_thread(path, "a script's first load").is_err()
                {
                    return None;
                }
                let stamp = image::stamp_of(Path::new(path))?;
                let bytes = std::fs::read(path).ok()?;
                Some((Some(stamp), Arc::from(bytes)))
            }
        }
    }
}

fn join(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() || prefix == "." {
        rel.to_string()
    } else {
        format!("{}/{}", prefix.trim_end_matches('/'), rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_names_to_paths() {
        assert_eq!(Library::relative_path("packet"), "packet.lua");
        assert_eq!(Library::relative_path("cluster.ready"), "cluster/ready.lua");
        assert_eq!(Library::relative_path("a:b"), "a/b.lua");
        assert_eq!(Library::relative_path("x/y.lua"), "x/y.lua");
    }

    #[test]
    fn the_first_resolution_is_shared_and_commits_replace_it() {
        static FILES: Embedded = &[("lib/m.lua", "return 7")];
        let entries = vec![PackageEntry {
            position: 0,
            prefix: "@builtin/lib".into(),
        }];
        let library = Library::new(entries, Duration::ZERO, FILES);
        let mut checks = 0;
        let mut check = |_: &str, _: &[u8]| {
            checks += 1;
            Ok(())
        };
        let first = library.resolve_first("m", &mut check);
        let again = library.resolve_first("m", &mut check);
        assert!(Arc::ptr_eq(&first, &again), "resolved once per process");
        assert_eq!(checks, 1);
        assert_eq!(&first.found.as_ref().unwrap().bytes[..], b"return 7");
        assert_eq!(library.version(), 1);
        assert!(library.changed_since(1).is_empty());
        let gone = Arc::new(Resolution::default());
        library.commit(2, &[("m".into(), gone.clone())]);
        assert_eq!(library.version(), 2);
        let changed = library.changed_since(1);
        assert_eq!(changed.len(), 1);
        assert!(Arc::ptr_eq(&changed[0].1, &gone));
        assert!(library.changed_since(2).is_empty());
    }
}
