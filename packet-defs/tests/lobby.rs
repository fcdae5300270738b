//! The lobby example's generated code is checked in (engine/lua/examples/lobby/lobby_packets.lua
//! for the server and the bots, loadtest/src/lobby_packets.rs for stage-loadtest's `lobby`
//! scenario and the e2e test), so it can be read in review and used without running the
//! generator. This test fails when either file is not what `packet-defs gen` makes of
//! engine/lua/examples/lobby/lobby.packets today: after changing the schema (or the
//! generator), run
//! `packet-defs gen engine/lua/examples/lobby/lobby.packets --lua engine/lua/examples/lobby --rust loadtest/src`
//! (or this test with UPDATE_GOLDEN=1) and commit the result.

use packet_defs::{lua, module_name, parse, rust};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("packet-defs/ has a parent")
        .to_path_buf()
}

fn check(path: &Path, generated: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, generated).unwrap();
    }
    let checked_in =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        checked_in == generated,
        "{} is stale: regenerate it from engine/lua/examples/lobby/lobby.packets \
         (packet-defs gen ... or UPDATE_GOLDEN=1) and commit it",
        path.display()
    );
}

#[test]
fn the_lobby_examples_generated_code_is_up_to_date() {
    let schema_path = repo().join("engine/lua/examples/lobby/lobby.packets");
    let src = std::fs::read_to_string(&schema_path).unwrap();
    let schema = parse(&src).unwrap_or_else(|e| panic!("lobby.packets: {e}"));
    let module = module_name(&schema_path);
    assert_eq!(module, "lobby_packets");
    check(
        &repo().join("engine/lua/examples/lobby/lobby_packets.lua"),
        &lua::generate(&schema, "lobby.packets", &module),
    );
    check(
        &repo().join("loadtest/src/lobby_packets.rs"),
        &rust::generate(&schema, "lobby.packets"),
    );
}
