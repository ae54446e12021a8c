//! The fleetmeter agent: a measuring device coordinated through ZooKeeper, with sensors and
//! aggregation policies as sandboxed WebAssembly plugins.
//!
//! # Layout
//! - [`plugin`]: the plugin host (engine, sandbox, sensors, aggregators, inspection).
//! - [`telemetry`]: `/metrics` and `/healthz`.
//! - [`cli`]: the `fleetmeter` command line; `main.rs` only parses and calls it.

pub mod cli;
pub mod config;
pub mod coord;
pub mod plugin;
pub mod publish;
pub mod round;
pub mod status;
pub mod telemetry;
