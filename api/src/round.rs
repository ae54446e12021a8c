//! A round result as the leader publishes it, and the checks it must pass before anything
//! is stored: both come from the shared wire crate, so the agent checks the same rules before
//! it commits a round.

use serde::{Deserialize, Serialize};

pub use fleetmeter_wire::{
    InvalidRound, MAX_DEVICES, MAX_ID_BYTES, MAX_ROUND_JSON, Quantity, Round, RoundQuantity,
};

/// A value stored through the original API's `GET /nuevo?dato=V`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LegacyValue {
    pub value: f64,
    /// Server time when it was stored, ms since the Unix epoch.
    pub ts: u64,
    /// Storage sequence number (keeps equal values at the same millisecond apart).
    pub seq: u64,
}
