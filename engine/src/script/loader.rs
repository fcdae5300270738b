//! A Lua state's view of the process's scripts for `stage.load`, `stage.require` and main
//! scripts: the chunk compiled from each name's source, in this state. The sources come from
//! the process's [`Library`] (resolved once per process through `%package`, spec/stage.md
//! §8.2); this cache only saves compiling them again.
//!
//! Changes arrive from outside, never from a file check on the packet path: a core's view
//! switches when its inbox hands it a reload batch ([`ScriptLoader::install`], between two
//! messages), a pool thread's when the reload has been committed
//! ([`ScriptLoader::catch_up`], before its next job). See `script::reload`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use mlua::{Function, Lua};

pub use super::library::{Library, BUILTIN_ROOT};
use crate::node::reload::{Batch, Resolution};
pub use crate::plan::Embedded;

pub struct ScriptLoader {
    library: Arc<Library>,
    /// The library version this state has caught up with (pool threads; cores follow
    /// batches instead).
    seen: Cell<u64>,
    view: RefCell<HashMap<String, Compiled>>,
}

/// One name as this state uses it: the resolution and, once loaded, its compiled chunk.
struct Compiled {
    resolution: Arc<Resolution>,
    chunk: Option<Function>,
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

impl ScriptLoader {
    /// The version of every script this state has loaded: path, mtime, size and FNV-1a hash
    /// of the source it compiled (what `/status` shows).
    pub fn versions(&self) -> Vec<crate::node::stats::ScriptVersion> {
        let mut out: Vec<_> = self
            .view
            .borrow()
            .values()
            .filter(|c| c.chunk.is_some())
            .filter_map(|c| c.resolution.found.as_ref())
            .map(|src| crate::node::stats::ScriptVersion {
                path: src.path.clone(),
                mtime_ns: src.stamp.map_or(0, |s| s.1),
                size: src.bytes.len() as u64,
                hash: crate::service::shard::fnv1a(&src.bytes),
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out.dedup();
        out
    }

    pub fn new(library: Arc<Library>) -> ScriptLoader {
        ScriptLoader {
            seen: Cell::new(library.version()),
            library,
            view: RefCell::new(HashMap::new()),
        }
    }

    /// `"cluster.ready"` -> `cluster/ready.lua`; a name ending in `.lua` is used verbatim.
    pub fn relative_path(name: &str) -> String {
        Library::relative_path(name)
    }

    /// Finds `name` and compiles it in `lua` (once per version). A file that does not compile
    /// falls through to later entries; if none compiles, the first error is raised.
    pub fn load(&self, lua: &Lua, name: &str) -> mlua::Result<Lookup> {
        let known = match self.view.borrow().get(name) {
            Some(c) => {
                if let (Some(chunk), Some(source)) = (&c.chunk, &c.resolution.found) {
                    return Ok(Lookup::Found(loaded(chunk.clone(), source)));
                }
                Some(c.resolution.clone())
            }
            None => None,
        };
        let from_batch = known.is_some();
        let resolution = known.unwrap_or_else(|| {
            self.library
                .resolve_first(name, &mut |path, bytes| compile(lua, path, bytes).map(drop))
        });
        let missing = resolution.found.is_none() && resolution.broken.is_empty();
        let chunk = match &resolution.found {
            Some(source) => {
                Some(compile(lua, &source.path, &source.bytes).map_err(mlua::Error::runtime)?)
            }
            None => None,
        };
        // A name with no file is not kept (see `Library::resolve_first`) unless a reload
        // said so: the reloader tracks it then, and tells this state when it reappears.
        if !missing || from_batch {
            self.view.borrow_mut().insert(
                name.to_string(),
                Compiled {
                    resolution: resolution.clone(),
                    chunk: chunk.clone(),
                },
            );
        }
        match (chunk, &resolution.found, resolution.broken.first()) {
            (Some(chunk), Some(source), _) => Ok(Lookup::Found(loaded(chunk, source))),
            (_, _, Some(broken)) => Err(mlua::Error::runtime(broken.error.clone())),
            _ => Ok(Lookup::NotFound(
                Self::relative_path(name)
                    .trim_end_matches(".lua")
                    .to_string(),
            )),
        }
    }

    /// A core: switches this state to `batch` (its names compile again on their next load).
    pub fn install(&self, batch: &Batch) {
        let mut view = self.view.borrow_mut();
        for (name, resolution) in &batch.scripts {
            view.insert(
                name.clone(),
                Compiled {
                    resolution: resolution.clone(),
                    chunk: None,
                },
            );
        }
        self.seen.set(batch.version);
    }

    /// A pool thread: takes the reloads committed since it last looked; returns the names
    /// they changed (`None` when there was none).
    pub fn catch_up(&self) -> Option<Vec<String>> {
        let version = self.library.version();
        if version == self.seen.get() {
            return None;
        }
        let changed = self.library.changed_since(self.seen.get());
        self.seen.set(version);
        let mut view = self.view.borrow_mut();
        let mut names = Vec::with_capacity(changed.len());
        for (name, resolution) in changed {
            view.insert(
                name.clone(),
                Compiled {
                    resolution,
                    chunk: None,
                },
            );
            names.push(name);
        }
        Some(names)
    }
}

fn loaded(chunk: Function, source: &crate::node::reload::Source) -> Loaded {
    Loaded {
        chunk,
        position: source.position,
        path: source.path.clone(),
        mtime: source.mtime(),
    }
}

/// Compiles `bytes` as the chunk of `path` (named `@path` in tracebacks).
pub fn compile(lua: &Lua, path: &str, bytes: &[u8]) -> Result<Function, String> {
    lua.load(bytes)
        .set_name(format!("@{path}"))
        .into_function()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::PackageEntry;

    fn entry(position: u32, prefix: &str) -> PackageEntry {
        PackageEntry {
            position,
            prefix: prefix.to_string(),
        }
    }

    #[test]
    fn searches_in_order_and_falls_over_past_a_broken_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (pkg, rollback) = (dir.path().join("package"), dir.path().join("rollback"));
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::create_dir_all(&rollback).unwrap();
        std::fs::write(rollback.join("m.lua"), "return 'rollback'").unwrap();
        std::fs::write(pkg.join("m.lua"), "return (").unwrap();
        std::fs::write(pkg.join("bad.lua"), "return (").unwrap();
        let library = Library::new(
            vec![
                entry(0, pkg.to_str().unwrap()),
                entry(1, rollback.to_str().unwrap()),
            ],
            Duration::ZERO,
            &[],
        );
        let loader = ScriptLoader::new(library.clone());
        let lua = Lua::new();
        match loader.load(&lua, "m").unwrap() {
            Lookup::Found(l) => {
                assert_eq!(l.position, 1);
                assert_eq!(l.chunk.call::<String>(()).unwrap(), "rollback");
            }
            Lookup::NotFound(_) => panic!("not found"),
        }
        let err = loader.load(&lua, "bad").err().expect("no copy compiles");
        assert!(err.to_string().contains("bad.lua"), "{err}");
        assert!(
            matches!(loader.load(&lua, "missing").unwrap(), Lookup::NotFound(p) if p == "missing")
        );
        // A missing name is not recorded (client-chosen names cannot grow the tables), and
        // is found once its file exists and the reloader's scan has walked it into the image
        // (a load never looks at the file system itself).
        assert!(library.snapshot().iter().all(|(n, _)| n != "missing"));
        std::fs::write(pkg.join("missing.lua"), "return 'here now'").unwrap();
        assert!(
            matches!(loader.load(&lua, "missing").unwrap(), Lookup::NotFound(_)),
            "not in the image before a scan"
        );
        library.image.refresh();
        match loader.load(&lua, "missing").unwrap() {
            Lookup::Found(l) => assert_eq!(l.chunk.call::<String>(()).unwrap(), "here now"),
            Lookup::NotFound(_) => panic!("the new file is not found"),
        }
        // A second state gets the same resolution, even once the image holds a newer file.
        std::fs::write(
            rollback.join("m.lua"),
            "return 'changed behind the reloader'",
        )
        .unwrap();
        library.image.refresh();
        let other = ScriptLoader::new(library);
        match other.load(&Lua::new(), "m").unwrap() {
            Lookup::Found(l) => assert_eq!(l.chunk.call::<String>(()).unwrap(), "rollback"),
            Lookup::NotFound(_) => panic!("not found"),
        }
    }

    #[test]
    fn serves_builtin_scripts() {
        static FILES: Embedded = &[("v1/start.lua", "return 7")];
        let library = Library::new(vec![entry(0, "@builtin/v1")], Duration::ZERO, FILES);
        let loader = ScriptLoader::new(library);
        let lua = Lua::new();
        match loader.load(&lua, "start").unwrap() {
            Lookup::Found(l) => assert_eq!(l.chunk.call::<i64>(()).unwrap(), 7),
            Lookup::NotFound(_) => panic!("builtin script not found"),
        }
    }
}
