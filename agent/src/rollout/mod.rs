//! Shipping plugins to a running fleet: signed, content-addressed artifacts in the fleet's
//! ZooKeeper, rolled out to canary devices at a round boundary, judged by the leader on the
//! measurements, promoted or rolled back by themselves.
//!
//! # Layout
//! - [`signing`]: minisign signatures, the trusted keys, key generation and signing.
//! - [`artifacts`]: the artifact store, `{root}/artifacts/sha256-HEX` (chunks + manifest).
//! - [`record`]: the rollout record and assignments, and the pure rule of who runs what in
//!   which round.
//! - [`gates`]: how the leader judges a canary round, and what the judged rounds lead to.
//! - [`follow`]: every agent's side: watch the record, fetch, check and load what it names,
//!   so that the round loop can switch at the announced round.
//! - [`store`]: reading and writing the record and the assignments (fenced when the
//!   leader writes).
//!
//! ZooKeeper layout (docs/coordination.md): `{root}/artifacts/…`, `{root}/rollout`,
//! `{root}/plugins/sensor`, `{root}/plugins/aggregator`.

pub mod artifacts;
pub mod follow;
pub mod gates;
pub mod record;
pub mod signing;
pub mod store;

pub use follow::View;
pub use record::{Kind, Rollout, State};
