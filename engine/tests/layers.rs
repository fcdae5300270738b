//! The engine's layering, as a test (glommio's `tests/linters.rs` is the model): every module
//! of `src/` may name only modules of a lower layer, only the script layer may name mlua,
//! and nothing is compiled in from outside the crate. ARCHITECTURE.md ("Layers") explains
//! the shape; this test keeps it true. A violation is reported with its file and line.

use std::path::{Path, PathBuf};

/// Top-level modules of `src/`, bottom to top. A module may use modules of a lower layer
/// only (never its own layer's siblings, never a layer above).
const LAYERS: &[&[&str]] = &[
    // Leaves: bytes, configuration, a core-local event, the log writer. They know nothing of
    // the engine.
    &["codec", "config", "notify", "logging"],
    // Built-in services as state machines (they parse their own config blocks).
    &["service"],
    // The runtime plan: what a process runs, built from config, naming service configs.
    &["plan"],
    // Sockets, framing, connection ids; no cores, no Lua.
    &["net"],
    // Cores, inboxes, peers, locks, timers, service shards; drives a ScriptHost, no Lua.
    &["node"],
    // Other nodes through NATS: members, heartbeats, the NATS thread; no Lua.
    &["cluster"],
    // The admin endpoint: metrics, status, reload, the console page; its own thread, talks
    // to the cores through their inboxes; no Lua.
    &["admin"],
    // The only Lua: states, prelude, natives, bundle, BSON <-> Lua, the blocking pool.
    &["script"],
    // The multi-process supervisor, then the command line that picks a role.
    &["supervisor"],
    &["cli"],
];

/// The only top-level module that may name mlua.
const LUA_LAYER: &str = "script";

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// One broken rule, for the report.
#[derive(Debug, PartialEq)]
struct Violation {
    file: String,
    line: usize,
    what: String,
}

/// The top-level module a file under `src/` belongs to (`None` for `lib.rs`).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// Every `crate::NAME` a line names (in `use` lines and in paths inside code alike).
fn crate_refs(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        // `stage_engine::` or `some_crate::` are other crates: need a word boundary before.
        let boundary = at == 0
            || !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = &rest[at + "crate::".len()..];
        let name_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if boundary && name_len > 0 {
            out.push(&after[..name_len]);
        }
        rest = &after[name_len..];
    }
    out
}

/// The rules applied to one file's text. `file` is for the report; `module` is the
/// top-level module the file belongs to; `path` is the file on disk (to resolve includes).
fn check_source(file: &str, module: &str, source: &str, path: Option<&Path>) -> Vec<Violation> {
    let mut found = Vec::new();
    let Some(mine) = layer_of(module) else {
        return vec![Violation {
            file: file.into(),
            line: 0,
            what: format!("module `{module}` has no layer: add it to LAYERS (and ARCHITECTURE.md)"),
        }];
    };
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for target in crate_refs(code) {
            if target == module {
                continue;
            }
            match layer_of(target) {
                Some(theirs) if theirs < mine => {}
                Some(_) => found.push(Violation {
                    file: file.into(),
                    line: n + 1,
                    what: format!("`{module}` uses `crate::{target}`, which is not below it"),
                }),
                None => found.push(Violation {
                    file: file.into(),
                    line: n + 1,
                    what: format!("`crate::{target}` has no layer"),
                }),
            }
        }
        if module != LUA_LAYER && code.contains("mlua") {
            found.push(Violation {
                file: file.into(),
                line: n + 1,
                what: format!("`{module}` names mlua; only `{LUA_LAYER}` may"),
            });
        }
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            let Some(at) = code.find(macro_name) else {
                continue;
            };
            let arg = &code[at + macro_name.len()..];
            let included = &arg[..arg.find('"').unwrap_or(arg.len())];
            if let Some(path) = path {
                if !inside_crate(path, included) {
                    found.push(Violation {
                        file: file.into(),
                        line: n + 1,
                        what: format!("`{included}` is outside the engine crate"),
                    });
                }
            }
        }
    }
    found
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `included`, relative to the file at `path`, stays inside the crate directory.
fn inside_crate(path: &Path, included: &str) -> bool {
    let dir = path.parent().unwrap_or(Path::new("."));
    match dir.join(included).canonicalize() {
        Ok(real) => real.starts_with(crate_dir().canonicalize().unwrap()),
        Err(_) => false,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = crate_dir().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 50,
        "found only {} files under src/",
        files.len()
    );
    let mut violations = Vec::new();
    for path in &files {
        let relative = path.strip_prefix(&src).unwrap();
        let Some(module) = module_of(relative) else {
            continue;
        };
        let source = std::fs::read_to_string(path).unwrap();
        let file = format!("src/{}", relative.display());
        violations.extend(check_source(&file, &module, &source, Some(path)));
    }
    let report: Vec<String> = violations
        .iter()
        .map(|v| format!("{}:{}: {}", v.file, v.line, v.what))
        .collect();
    assert!(
        report.is_empty(),
        "the layering is broken:\n{}",
        report.join("\n")
    );
}

/// The checker itself: each rule catches what it is meant to catch.
#[test]
fn the_checker_reports_each_kind_of_violation() {
    let up = check_source("net/x.rs", "net", "use crate::node::runtime::Core;\n", None);
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].line, 1);
    assert!(up[0].what.contains("`net` uses `crate::node`"));

    let sibling = check_source(
        "codec/x.rs",
        "codec",
        "fn f() { crate::config::load(x) }",
        None,
    );
    assert_eq!(sibling.len(), 1, "{sibling:?}");

    let lua = check_source("node/x.rs", "node", "\nuse mlua::Lua;\n", None);
    assert_eq!(lua.len(), 1);
    assert_eq!(lua[0].line, 2);

    let down = check_source(
        "script/x.rs",
        "script",
        "use crate::node::Node;\nuse mlua::Lua; // fine here\nuse stage_engine::cli;\n",
        None,
    );
    assert!(down.is_empty(), "{down:?}");

    let comment = check_source("net/x.rs", "net", "// see crate::node::runtime\n", None);
    assert!(comment.is_empty(), "{comment:?}");

    let unknown = check_source("nowhere/x.rs", "nowhere", "", None);
    assert_eq!(unknown.len(), 1);

    let here = crate_dir().join("src/lib.rs");
    let outside = check_source(
        "lib.rs",
        "cli",
        "const X: &str = include_str!(\"../../README.md\");",
        Some(&here),
    );
    assert_eq!(outside.len(), 1, "{outside:?}");
    let inside = check_source(
        "lib.rs",
        "cli",
        "const X: &str = include_str!(\"../Cargo.toml\");",
        Some(&here),
    );
    assert!(inside.is_empty(), "{inside:?}");
}
