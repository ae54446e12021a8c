//! What the agent writes into ZooKeeper nodes and sends to the API: a device's reading and
//! a committed round's result. Both are JSON; readers treat them as hostile input (see
//! `round::collect` and `publish`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What a device writes to its node, `{root}/devices/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceReading {
    pub round: u64,
    pub value: f64,
    /// When it was sampled, ms since the Unix epoch.
    pub ts: u64,
}

/// A committed round, as stored in the outbox (`{root}/results/{n}`) and sent to
/// `POST /api/v1/rounds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundResult {
    pub round: u64,
    pub value: f64,
    pub count: u32,
    pub devices: Vec<String>,
    /// `NAME@VERSION` of the aggregator plugin.
    pub aggregator: String,
    pub leader: String,
    /// Commit time, ms since the Unix epoch.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// Now, in ms since the Unix epoch (0 on a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
