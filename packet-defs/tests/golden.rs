//! Golden files: the generators' output (Lua, Rust and TypeScript) for `tests/golden/all_types.packets`
//! (a schema using every type and option) is checked in, so any change to generated code shows up in review.
//! After an intended change, regenerate with
//! `UPDATE_GOLDEN=1 cargo test --release -p packet-defs --test golden` and commit the diff.

use packet_defs::{lua, module_name, parse, rust, ts};
use std::path::Path;

fn golden_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"))
}

#[test]
fn generated_lua_matches_the_golden_file() {
    let schema_path = golden_dir().join("all_types.packets");
    let src = std::fs::read_to_string(&schema_path).unwrap();
    let schema = parse(&src).unwrap();
    let module = module_name(&schema_path);
    assert_eq!(module, "all_types_packets");
    let code = lua::generate(&schema, "all_types.packets", &module);
    // Same schema, same bytes: nothing may depend on hash order or the environment.
    assert_eq!(
        code,
        lua::generate(&parse(&src).unwrap(), "all_types.packets", &module)
    );
    let golden = golden_dir().join(format!("{module}.lua"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &code).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap();
    assert!(
        code == expected,
        "generated Lua differs from {}; if the change is intended, rerun with UPDATE_GOLDEN=1",
        golden.display()
    );
}

#[test]
fn generated_rust_matches_the_golden_file() {
    let src = std::fs::read_to_string(golden_dir().join("all_types.packets")).unwrap();
    let code = rust::generate(&parse(&src).unwrap(), "all_types.packets");
    assert_eq!(
        code,
        rust::generate(&parse(&src).unwrap(), "all_types.packets")
    );
    let golden = golden_dir().join("all_types_packets.rs");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &code).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap();
    assert!(
        code == expected,
        "generated Rust differs from {}; if the change is intended, rerun with UPDATE_GOLDEN=1",
        golden.display()
    );
}

#[test]
fn generated_typescript_matches_the_golden_file() {
    let src = std::fs::read_to_string(golden_dir().join("all_types.packets")).unwrap();
    let code = ts::generate(&parse(&src).unwrap(), "all_types.packets");
    let golden = golden_dir().join("all_types_packets.ts");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &code).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap();
    assert!(
        code == expected,
        "generated TypeScript differs from {}; if the change is intended, rerun with UPDATE_GOLDEN=1",
        golden.display()
    );
}

#[test]
fn the_cli_writes_the_golden_bytes() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_packet-defs"))
        .arg("gen")
        .arg(golden_dir().join("all_types.packets"))
        .arg("--lua")
        .arg(out.path())
        .arg("--rust")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let written = std::fs::read(out.path().join("all_types_packets.lua")).unwrap();
    let golden = std::fs::read(golden_dir().join("all_types_packets.lua")).unwrap();
    assert!(
        written == golden,
        "`packet-defs gen` output differs from the golden file"
    );
}
