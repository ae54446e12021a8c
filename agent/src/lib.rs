//! The fleetmeter agent: a measuring device coordinated through ZooKeeper, with sensors and
//! aggregation policies as sandboxed WebAssembly plugins.
//!
//! # Layout
//! - [`config`]: `agent.toml`, the environment and flags, validated; the key table.
//! - [`coord`]: ZooKeeper coordination: session, election, membership, barrier, counter,
//!   dynamic configuration.
//! - [`plugin`]: the plugin host (engine, sandbox, sensors, aggregators, inspection).
//! - [`round`]: the round protocol as a library: `round::run` takes a session, a device and
//!   a shutdown token.
//! - [`rollout`]: shipping plugins to a running fleet: signed artifacts in ZooKeeper, canary
//!   rollouts judged by the leader, promotion and rollback.
//! - [`publish`]: the outbox and the measurements API client.
//! - [`wire`]: what goes into ZooKeeper nodes and to the API.
//! - [`backoff`]: the retry schedule every retry loop uses.
//! - [`telemetry`]: `/metrics` and `/healthz`.
//! - [`text`]: text from outside the process, escaped onto one line before it is logged.
//! - [`status`]: `fleetmeter status` and `config get|set`, as a library.
//! - [`cli`]: the `fleetmeter` command line; `main.rs` only parses and calls it.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod coord;
pub mod plugin;
pub mod publish;
pub mod rollout;
pub mod round;
pub mod status;
pub mod telemetry;
pub mod text;
pub mod wire;
