//! The `packet-defs` command: `gen` compiles a schema into a Lua module and/or a Rust
//! module; `check` validates a schema and, with `--against`, lists every breaking change
//! from an older version (exit status 1 if there is any). Errors are printed as
//! `file:line:column: error: ...`, exit status 2 for an unreadable or invalid schema.

use clap::{Parser, Subcommand};
use packet_defs::{compat, lua, module_name, parse, rust, ts, Schema};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "packet-defs",
    version,
    about = "Packet schema -> generated Lua codecs for STAGE"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate code from SCHEMA: DIR/<name>_packets.lua (--lua), DIR/<name>_packets.rs (--rust),
    /// DIR/<name>_packets.ts (--ts).
    Gen {
        schema: PathBuf,
        /// Directory for the generated Lua module.
        #[arg(long, value_name = "DIR")]
        lua: Option<PathBuf>,
        /// Directory for the generated Rust module (typed messages with BSON encode/decode).
        #[arg(long, value_name = "DIR")]
        rust: Option<PathBuf>,
        /// Directory for the generated TypeScript module (types for clients/typescript).
        #[arg(long, value_name = "DIR")]
        ts: Option<PathBuf>,
    },
    /// Check SCHEMA; with --against OLD, list every change that breaks peers using OLD.
    Check {
        schema: PathBuf,
        #[arg(long, value_name = "OLD")]
        against: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Gen {
            schema,
            lua: lua_dir,
            rust: rust_dir,
            ts: ts_dir,
        } => {
            if lua_dir.is_none() && rust_dir.is_none() && ts_dir.is_none() {
                eprintln!(
                    "packet-defs: nothing to generate: pass --lua DIR, --rust DIR and/or --ts DIR"
                );
                return ExitCode::from(2);
            }
            let Some(s) = load(&schema) else {
                return ExitCode::from(2);
            };
            let module = module_name(&schema);
            let source = display_name(&schema);
            let mut outputs = Vec::new();
            if let Some(dir) = lua_dir {
                outputs.push((
                    dir.join(format!("{module}.lua")),
                    lua::generate(&s, &source, &module),
                ));
            }
            if let Some(dir) = rust_dir {
                outputs.push((
                    dir.join(format!("{module}.rs")),
                    rust::generate(&s, &source),
                ));
            }
            if let Some(dir) = ts_dir {
                outputs.push((dir.join(format!("{module}.ts")), ts::generate(&s, &source)));
            }
            for (out, code) in outputs {
                let dir = out.parent().expect("a file in a directory");
                if let Err(e) =
                    std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&out, code))
                {
                    eprintln!("packet-defs: cannot write {}: {e}", out.display());
                    return ExitCode::from(2);
                }
                println!("wrote {}", out.display());
            }
            ExitCode::SUCCESS
        }
        Cmd::Check { schema, against } => {
            let Some(new) = load(&schema) else {
                return ExitCode::from(2);
            };
            let Some(old_path) = against else {
                println!("{}: ok (version {})", schema.display(), new.version);
                return ExitCode::SUCCESS;
            };
            let Some(old) = load(&old_path) else {
                return ExitCode::from(2);
            };
            let breaks = compat::check(&old, &new);
            for b in &breaks {
                let file = if b.in_old { &old_path } else { &schema };
                println!("{}:{}: breaking: {}", file.display(), b.pos, b.what);
            }
            if breaks.is_empty() {
                println!(
                    "{}: compatible with {} (version {} -> {})",
                    schema.display(),
                    old_path.display(),
                    old.version,
                    new.version
                );
                ExitCode::SUCCESS
            } else {
                println!("{} breaking change(s)", breaks.len());
                ExitCode::from(1)
            }
        }
    }
}

/// The schema's file name, as the generated header names it (no directories, so the output
/// does not depend on where the command ran).
fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads and parses a schema, printing `file:line:column: error: ...` on failure.
fn load(path: &Path) -> Option<Schema> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: error: cannot read: {e}", path.display());
            return None;
        }
    };
    match parse(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("{}", e.render(&path.display().to_string()));
            None
        }
    }
}
