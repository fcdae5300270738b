//! stage-loadtest: bot clients for load-testing a STAGE server from the outside. The crate
//! talks to the server only over TCP with its own BSON codec and framing (it never links the
//! engine), so it measures exactly what a studio's real clients would see. The binary
//! (`main.rs`) is a thin shell over these modules, which are unit-tested one by one.

pub mod bson;
pub mod builtin;
pub mod chart;
pub mod cli;
pub mod conn;
pub mod framing;
pub mod lua_bson;
pub mod luabot;
pub mod report;
pub mod runner;
pub mod series;
pub mod stats;
pub mod thresholds;
pub mod units;
