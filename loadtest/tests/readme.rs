//! The first ten minutes: every `stage-loadtest` command that loadtest/README.md shows runs,
//! as written, against the server the READMEs tell a new user to start — the embedded v1
//! example (`stage` with no arguments, port 8081), the Hello World example for the
//! line-based command, or the lotus example node (loadtest/examples/lotus.json, port 7000)
//! for the `lotus` scenario — and ends with no error, no failed connect and no disconnect.
//!
//! Two changes are made to each command, both about the test rather than the server: the
//! summary goes to a file of the test's (`--json FILE --quiet`, the chart too), and the speed
//! thresholds (`--p99-max`, `--p50-max`, `--min-throughput`) are dropped, because this machine
//! is shared and speed is measured by benchmarks, never asserted by tests. `--error-max` stays.

mod common;

use std::path::Path;

/// The commands of the README's `sh` blocks, continuation lines joined, as argument lists
/// (the program name dropped; `cargo run … --` counts as the program).
fn readme_commands(readme: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh || line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        pending.push_str(line.trim().trim_end_matches('\\'));
        pending.push(' ');
        if line.trim_end().ends_with('\\') {
            continue;
        }
        let command = std::mem::take(&mut pending);
        let args = match command.split_once(" -- ") {
            // `cargo run --release -- -c CONFIG` starts a server, not the load tester.
            Some((prefix, rest)) if prefix.starts_with("cargo run") && rest.starts_with("-c ") => {
                continue
            }
            Some((prefix, rest)) if prefix.starts_with("cargo run") => rest,
            _ => match command.strip_prefix("stage-loadtest") {
                Some(rest) => rest,
                None => continue,
            },
        };
        commands.push(args.split_whitespace().map(String::from).collect());
    }
    commands
}

/// The command with the test's own output files and without the speed thresholds.
fn for_the_test(args: &[String], json: &Path, chart: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--p99-max" | "--p50-max" | "--min-throughput" | "--json" | "--chart" => {
                it.next();
            }
            "--quiet" => {}
            _ => out.push(arg.clone()),
        }
    }
    if args.iter().any(|a| a == "--chart") {
        out.extend(["--chart".into(), chart.to_str().unwrap().into()]);
    }
    out.extend([
        "--quiet".into(),
        "--json".into(),
        json.to_str().unwrap().into(),
    ]);
    out
}

#[test]
fn the_readme_finds_every_command_and_joins_continuations() {
    let text = "```sh\n# a comment\nstage-loadtest --target a:1 \\\n    --error-max 0\n```\n\
                ```lua\nstage-loadtest --not-this\n```\n\
                ```sh\ncargo run --release -p stage-loadtest -- --target b:2\n\
                cargo run --release -- -c server.json   # a server, not a bot run\n```\n";
    assert_eq!(
        readme_commands(text),
        [
            vec!["--target", "a:1", "--error-max", "0"],
            vec!["--target", "b:2"]
        ]
    );
}

#[test]
fn the_shipped_bot_script_is_the_one_the_readme_shows() {
    let ws = common::workspace();
    let readme = std::fs::read_to_string(ws.join("loadtest/README.md")).unwrap();
    let start = readme.find("```lua\n").expect("a lua block") + "```lua\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let shipped = std::fs::read_to_string(ws.join("loadtest/examples/bots.lua")).unwrap();
    assert_eq!(readme[start..end], shipped);
}

#[test]
fn every_readme_command_runs_clean_against_the_readme_server() {
    let ws = common::workspace();
    let readme = std::fs::read_to_string(ws.join("loadtest/README.md")).unwrap();
    let commands = readme_commands(&readme);
    assert!(commands.len() >= 6, "found only {commands:?}");
    let tmp = tempfile::tempdir().unwrap();
    for (n, command) in commands.iter().enumerate() {
        let has = |pair: [&str; 2]| command.windows(2).any(|w| w == pair);
        // The lotus command is for the lotus example node (port 7000, its store under
        // target/lotus-loadtest/); the line-based one for the Hello World example; the
        // others for the embedded default (`cargo run --release`, `stage` with no arguments).
        let (server_args, port): (&[&str], u16) = if has(["--scenario", "lotus"]) {
            (&["-c", "loadtest/examples/lotus.json"], 7000)
        } else if has(["--framing", "text"]) {
            (&["-c", "engine/lua/examples/hello/stage.json"], 8081)
        } else {
            (&[], 8081)
        };
        assert!(
            has(["--target", &format!("127.0.0.1:{port}")]),
            "README command {command:?} does not target the server the README starts"
        );
        let mut server = common::Server::spawn(server_args, &ws, port, tmp.path());
        let json = tmp.path().join(format!("summary-{n}.json"));
        let chart = tmp.path().join(format!("chart-{n}.html"));
        let out = common::run_loadtest(&for_the_test(command, &json, &chart), &ws);
        assert!(
            out.status.success(),
            "stage-loadtest {command:?} failed ({}):\n{}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        common::assert_clean(&summary);
        assert!(summary["received"].as_u64().unwrap() > 0, "{summary:#}");
        server.stop_cleanly();
    }
}
