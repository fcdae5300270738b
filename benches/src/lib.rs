//! Support code for STAGE's benchmarks. The crate's binaries are the measuring tools:
//! `baseline-echo`, the plain glommio echo server (same framing as `stage`, no Lua) that
//! every end-to-end figure is a ratio against, and `e2e`, the interleaved comparison. Shared
//! here: finding the workspace's other binaries.

use std::path::PathBuf;

/// Another binary of this workspace's release build, found next to the running one (the
/// measuring tools start `stage` and `baseline-echo` themselves).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("the running binary has no directory"))?
        .join(name);
    if !path.exists() {
        anyhow::bail!(
            "{} not found: run `cargo build --release --workspace` first",
            path.display()
        );
    }
    Ok(path)
}
