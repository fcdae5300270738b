//! Finding and caching scripts for `stage.load`, `stage.require` and main scripts: the
//! `%package` search path with positions (spec/stage.md §8.2), per-core compiled-chunk cache
//! re-checked against the file's size and mtime at most every `%reflush` msec, so a content
//! developer's edit is picked up by the next packet without a restart.
//!
//! Each core keeps its own cache (the original shares a source cache between threads; the
//! behaviour scripts see is the same, and nothing here needs a lock). Paths under the virtual
//! root `@builtin/` come from scripts compiled into the binary (the embedded default
//! configuration).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use mlua::{Function, Lua};

use crate::config::PackageEntry;

/// Prefix of package entries served from scripts compiled into the binary.
pub const BUILTIN_ROOT: &str = "@builtin";

pub use crate::plan::Embedded;

pub struct ScriptLoader {
    entries: Vec<PackageEntry>,
    reflush: Duration,
    embedded: Embedded,
    cache: RefCell<HashMap<String, Cached>>,
}

#[derive(Clone)]
pub struct Loaded {
    pub chunk: Function,
    /// The entry's position: 0 = normal, > 0 = a fail-over copy such as `rollback/`.
    pub position: u32,
    pub path: String,
    /// Seconds since the epoch (0 for built-in scripts).
    pub mtime: i64,
}

pub enum Lookup {
    Found(Loaded),
    /// Nothing found anywhere; carries the searched path without `.lua` (for `info[1]`).
    NotFound(String),
}

/// Size and mtime (ns) of a file on disk; `None` for built-in scripts, which never change.
type Stamp = Option<(u64, i64)>;

struct Cached {
    loaded: Loaded,
    stamp: Stamp,
    checked: Instant,
    /// Size and FNV-1a 64 hash of the source compiled (what `/status` shows as its version).
    size: u64,
    hash: u64,
}

impl ScriptLoader {
    pub fn new(entries: Vec<PackageEntry>, reflush: Duration, embedded: Embedded) -> ScriptLoader {
        ScriptLoader {
            entries,
            reflush,
            embedded,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// `"cluster.ready"` -> `cluster/ready.lua`; a name ending in `.lua` is used verbatim.
    pub fn relative_path(name: &str) -> String {
        if name.ends_with(".lua") {
            return name.to_string();
        }
        format!("{}.lua", name.replace(['.', ':'], "/"))
    }

    /// Finds `name` (compiling it if it is new or changed). A file that exists but does not
    /// compile falls through to later entries; if none compiles, the first error is raised.
    pub fn load(&self, lua: &Lua, name: &str) -> mlua::Result<Lookup> {
        if let Some(hit) = self.fresh(name) {
            return Ok(Lookup::Found(hit));
        }
        let rel = Self::relative_path(name);
        let mut first_error = None;
        for entry in &self.entries {
            let path = join(&entry.prefix, &rel);
            let Some((source, stamp)) = self.read(&path) else {
                continue;
            };
            match lua
                .load(&source[..])
                .set_name(format!("@{path}"))
                .into_function()
            {
                Ok(chunk) => {
                    if let Some(err) = first_error.take() {
                        tracing::warn!("{err}; using fail-over copy {path}");
                    }
                    let loaded = Loaded {
                        chunk,
                        position: entry.position,
                        path: path.clone(),
                        mtime: stamp.map_or(0, |s| mtime_seconds(s.1)),
                    };
                    self.cache.borrow_mut().insert(
                        name.to_string(),
                        Cached {
                            loaded: loaded.clone(),
                            stamp,
                            checked: Instant::now(),
                            size: source.len() as u64,
                            hash: fnv1a(&source),
                        },
                    );
                    return Ok(Lookup::Found(loaded));
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        self.cache.borrow_mut().remove(name);
        match first_error {
            Some(err) => Err(err),
            None => Ok(Lookup::NotFound(rel.trim_end_matches(".lua").to_string())),
        }
    }

    /// The cached chunk when it is still current: unchanged on disk, or checked recently.
    /// Fail-over copies (position > 0) are never trusted, so the normal copy wins again as
    /// soon as it reappears.
    fn fresh(&self, name: &str) -> Option<Loaded> {
        let mut cache = self.cache.borrow_mut();
        let cached = cache.get_mut(name)?;
        if cached.loaded.position > 0 {
            return None;
        }
        if cached.stamp.is_none() || cached.checked.elapsed() < self.reflush {
            return Some(cached.loaded.clone());
        }
        if stamp_of(Path::new(&cached.loaded.path)) == cached.stamp {
            cached.checked = Instant::now();
            return Some(cached.loaded.clone());
        }
        None
    }

    /// The version of every script this loader serves now: path, mtime, size and hash of
    /// the source it compiled.
    pub fn versions(&self) -> Vec<crate::node::stats::ScriptVersion> {
        let mut out: Vec<_> = self
            .cache
            .borrow()
            .values()
            .map(|c| crate::node::stats::ScriptVersion {
                path: c.loaded.path.clone(),
                mtime_ns: c.stamp.map_or(0, |s| s.1),
                size: c.size,
                hash: c.hash,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out.dedup();
        out
    }

    /// The `%reflush` check of every cached script, now (an operator's reload): a script
    /// whose file changed or vanished is dropped from the cache, so the next `stage.load`
    /// compiles what is on disk; the others count as freshly checked. Returns how many were
    /// looked at and the paths that changed.
    pub fn recheck(&self) -> (usize, Vec<String>) {
        let mut cache = self.cache.borrow_mut();
        let mut checked = 0;
        let mut changed = Vec::new();
        cache.retain(|_, cached| {
            if cached.stamp.is_none() {
                return true; // built into the binary: never changes
            }
            checked += 1;
            if stamp_of(Path::new(&cached.loaded.path)) == cached.stamp {
                cached.checked = Instant::now();
                true
            } else {
                changed.push(cached.loaded.path.clone());
                false
            }
        });
        changed.sort();
        changed.dedup();
        (checked, changed)
    }

    fn read(&self, path: &str) -> Option<(Vec<u8>, Stamp)> {
        if let Some(rest) = path.strip_prefix(BUILTIN_ROOT) {
            let rest = rest.trim_start_matches('/');
            return self
                .embedded
                .iter()
                .find(|(p, _)| *p == rest)
                .map(|(_, src)| (src.as_bytes().to_vec(), None));
        }
        let stamp = stamp_of(Path::new(path))?;
        let source = std::fs::read(path).ok()?;
        Some((source, Some(stamp)))
    }
}

fn join(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() || prefix == "." {
        rel.to_string()
    } else {
        format!("{}/{}", prefix.trim_end_matches('/'), rel)
    }
}

/// Size and mtime (seconds) of a regular file, or `None` if there is none.
fn stamp_of(path: &Path) -> Option<(u64, i64)> {
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    Some((meta.len(), mtime))
}

/// FNV-1a, 64 bits: a script's version fingerprint (not a security hash: it only has to
/// tell two versions of one file apart on the status page).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Seconds since the epoch from a stamp's nanosecond mtime.
pub fn mtime_seconds(mtime_ns: i64) -> i64 {
    mtime_ns / 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(position: u32, prefix: &str) -> PackageEntry {
        PackageEntry {
            position,
            prefix: prefix.to_string(),
        }
    }

    #[test]
    fn maps_names_to_paths() {
        assert_eq!(ScriptLoader::relative_path("packet"), "packet.lua");
        assert_eq!(
            ScriptLoader::relative_path("cluster.ready"),
            "cluster/ready.lua"
        );
        assert_eq!(ScriptLoader::relative_path("a:b"), "a/b.lua");
        assert_eq!(ScriptLoader::relative_path("x/y.lua"), "x/y.lua");
    }

    #[test]
    fn searches_in_order_falls_over_and_reloads_on_change() {
        let dir = std::env::temp_dir().join(format!("stage-loader-{}", std::process::id()));
        let (pkg, rollback) = (dir.join("package"), dir.join("rollback"));
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::create_dir_all(&rollback).unwrap();
        std::fs::write(rollback.join("m.lua"), "return 'rollback'").unwrap();
        std::fs::write(pkg.join("m.lua"), "return (").unwrap();
        let loader = ScriptLoader::new(
            vec![
                entry(0, pkg.to_str().unwrap()),
                entry(1, rollback.to_str().unwrap()),
            ],
            Duration::ZERO,
            &[],
        );
        let lua = Lua::new();
        let run = |loader: &ScriptLoader| match loader.load(&lua, "m").unwrap() {
            Lookup::Found(l) => (l.position, l.chunk.call::<String>(()).unwrap()),
            Lookup::NotFound(_) => panic!("not found"),
        };
        assert_eq!(run(&loader), (1, "rollback".to_string()));
        std::fs::write(pkg.join("m.lua"), "return 'v1'").unwrap();
        assert_eq!(run(&loader), (0, "v1".to_string()));
        std::fs::write(pkg.join("m.lua"), "return 'v2 is longer'").unwrap();
        assert_eq!(run(&loader), (0, "v2 is longer".to_string()));
        assert!(
            matches!(loader.load(&lua, "missing").unwrap(), Lookup::NotFound(p) if p == "missing")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recheck_drops_what_changed_and_versions_name_what_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.lua");
        std::fs::write(&path, "return 1").unwrap();
        let prefix = dir.path().to_str().unwrap();
        // A reflush period far away: only `recheck` can notice the change.
        let loader = ScriptLoader::new(vec![entry(0, prefix)], Duration::from_secs(3600), &[]);
        let lua = Lua::new();
        let run = |loader: &ScriptLoader| match loader.load(&lua, "m").unwrap() {
            Lookup::Found(l) => l.chunk.call::<i64>(()).unwrap(),
            Lookup::NotFound(_) => panic!("not found"),
        };
        assert_eq!(run(&loader), 1);
        let v1 = loader.versions();
        assert_eq!(v1.len(), 1);
        assert_eq!((v1[0].size, v1[0].hash), (8, fnv1a(b"return 1")));
        assert_eq!(loader.recheck(), (1, vec![]));
        std::fs::write(&path, "return 22").unwrap();
        assert_eq!(
            run(&loader),
            1,
            "the cached version is served until a check"
        );
        let (checked, changed) = loader.recheck();
        assert_eq!((checked, changed.len()), (1, 1));
        assert!(changed[0].ends_with("m.lua"));
        assert_eq!(run(&loader), 22);
        assert_eq!(loader.versions()[0].hash, fnv1a(b"return 22"));
    }

    #[test]
    fn serves_builtin_scripts() {
        static FILES: Embedded = &[("v1/start.lua", "return 7")];
        let loader = ScriptLoader::new(vec![entry(0, "@builtin/v1")], Duration::ZERO, FILES);
        let lua = Lua::new();
        match loader.load(&lua, "start").unwrap() {
            Lookup::Found(l) => assert_eq!(l.chunk.call::<i64>(()).unwrap(), 7),
            Lookup::NotFound(_) => panic!("builtin script not found"),
        }
    }
}
