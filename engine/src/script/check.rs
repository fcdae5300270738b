//! `stage --check`: compiles every script a configuration would run (main scripts, the
//! `%package` directories, `%preload`) in a plain Lua state and reports each error. Nothing
//! runs.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::loader::{Library, Lookup, ScriptLoader, BUILTIN_ROOT};
use crate::plan::Plan;

/// `--check`: compiles the main scripts, preload scripts and every script in the package
/// directories, printing each error. Nothing runs.
pub fn check(settings: &Plan) -> ExitCode {
    let lua = mlua::Lua::new();
    let loader = ScriptLoader::new(Library::new(
        settings.package.clone(),
        Duration::ZERO,
        settings.embedded,
    ));
    let mut errors = Vec::new();
    for stage in &settings.stages {
        match loader.load(&lua, &stage.main_script) {
            Ok(Lookup::Found(_)) => {}
            Ok(Lookup::NotFound(path)) => errors.push(format!(
                "main script `{}` of `{}` not found in %package (looked for {path}.lua)",
                stage.main_script, stage.entry
            )),
            Err(err) => errors.push(err.to_string()),
        }
    }
    let mut files = Vec::new();
    for entry in &settings.package {
        if entry.prefix.starts_with(BUILTIN_ROOT) {
            continue;
        }
        let dir = if entry.prefix.is_empty() {
            "."
        } else {
            entry.prefix.as_str()
        };
        // The current directory may hold anything: only its own scripts, not its subtrees.
        lua_files(Path::new(dir), !entry.prefix.is_empty(), &mut files);
    }
    for entry in &settings.preload {
        lua_files(Path::new(entry), true, &mut files);
    }
    files.sort();
    files.dedup();
    for file in &files {
        let result = std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|src| {
                lua.load(&src[..])
                    .set_name(format!("@{}", file.display()))
                    .into_function()
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
        if let Err(err) = result {
            errors.push(err);
        }
    }
    if errors.is_empty() {
        println!(
            "configuration OK: {} Lua stage(s), {} script(s) compiled",
            settings.stages.len(),
            files.len()
        );
        ExitCode::SUCCESS
    } else {
        for err in &errors {
            eprintln!("error: {err}");
        }
        ExitCode::from(1)
    }
}

fn lua_files(path: &Path, recursive: bool, out: &mut Vec<std::path::PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
        return;
    }
    let Ok(dir) = std::fs::read_dir(path) else {
        return;
    };
    for entry in dir.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if recursive {
                lua_files(&p, true, out);
            }
        } else if p.extension().is_some_and(|e| e == "lua") {
            out.push(p);
        }
    }
}
