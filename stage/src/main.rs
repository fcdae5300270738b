//! The `stage` server binary: everything lives in the `stage_engine` library.

fn main() -> std::process::ExitCode {
    stage_engine::cli::main()
}
