//! The `stage-loadtest` command: parse the command line, run the bots, print the summary,
//! write the JSON and chart files, and turn thresholds into the exit code
//! (0 ok, 1 a threshold was violated, 2 usage error or nobody could connect).

use clap::Parser;
use stage_loadtest::chart;
use stage_loadtest::cli::{Args, ChartFormat, Scenario};
use stage_loadtest::report::{progress_line, Summary};
use stage_loadtest::{luabot, runner};
use std::io::Write;
use std::process::ExitCode;

const USAGE: u8 = 2;
const VIOLATED: u8 = 1;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("stage-loadtest: error: {message}");
    ExitCode::from(USAGE)
}

fn main() -> ExitCode {
    // clap itself exits with code 2 on usage errors and 0 for --help/--version.
    let args = Args::parse();
    let plan = match args.plan() {
        Ok(p) => p,
        Err(e) => return fail(format!("{e:#}")),
    };
    if let Scenario::Lua(path) = &plan.scenario {
        if let Err(e) = luabot::check_script(path) {
            return fail(format!("{e:#}"));
        }
    }

    let quiet = plan.quiet;
    let run = runner::run(&plan, |p| {
        if !quiet {
            eprintln!("{}", progress_line(p, plan.connections));
        }
    });
    let run = match run {
        Ok(r) => r,
        Err(e) => return fail(format!("{e:#}")),
    };
    let mut summary = Summary::new(&plan, run);
    summary.thresholds = plan.thresholds.check(&summary);

    // With the JSON on stdout, the human summary moves to stderr so stdout stays parseable.
    let json_to_stdout = plan.json.as_deref() == Some("-");
    if json_to_stdout {
        eprint!("{}", summary.human());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", summary.json());
    } else {
        print!("{}", summary.human());
    }
    if let Some(path) = plan.json.as_deref().filter(|p| *p != "-") {
        if let Err(e) = std::fs::write(path, summary.json() + "\n") {
            return fail(format!("writing --json {path}: {e}"));
        }
    }
    if let Some((path, format)) = &plan.chart {
        let text = match format {
            ChartFormat::Svg => chart::svg(&summary),
            ChartFormat::Html => chart::html(&summary),
        };
        if let Err(e) = std::fs::write(path, text) {
            return fail(format!("writing --chart {}: {e}", path.display()));
        }
    }

    if summary.connected == 0 {
        return fail(format!("no bot could connect to {}", plan.target));
    }
    let violated: Vec<_> = summary.thresholds.iter().filter(|v| !v.ok).collect();
    if !violated.is_empty() {
        for v in violated {
            eprintln!("stage-loadtest: threshold violated: {v}");
        }
        return ExitCode::from(VIOLATED);
    }
    ExitCode::SUCCESS
}
