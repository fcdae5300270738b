//! Support code for STAGE's benchmarks. The crate's binaries are the measuring tools:
//! `baseline-echo`, the plain glommio echo server (same framing as `stage`, no Lua) that
//! every end-to-end figure is a ratio against, and `e2e`, the interleaved comparison.
