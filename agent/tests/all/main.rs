//! The agent's integration tests, in one binary (wasmtime's `tests/all` layout): on two
//! cores, linking one test binary that carries wasmtime instead of nineteen is minutes of a
//! cold `scripts/test`. One module per topic; every test starts the real parts it needs
//! (ZooKeeper, Redis, the API, the plugins) through [`support`] and the shared test kit.
//!
//! Run one topic with `cargo test -p fleetmeter --test all e2e::`.

mod support;

mod api_tls;
mod cli;
mod compile_cache;
mod containment;
mod coord;
mod demo;
mod deploy;
mod docs;
mod e2e;
mod in_process;
mod instruments;
mod kazoo_interop;
mod no_period_lost;
mod nothing_lost;
mod outbox;
mod plugins;
mod publish;
mod quantities;
mod quorum;
mod replay;
mod rollout;
mod sandbox;
mod security;
mod start_storm;
mod zk_transport;
