//! What the agent writes into ZooKeeper nodes and sends to the API: the shared wire contract
//! ([`fleetmeter_wire`]: a committed [`Round`], a device's [`DeviceReading`], their limits and
//! validation, the same crate the API checks bodies with). Readers treat both as hostile
//! input (see `round::collect` and `publish`).

use std::time::{SystemTime, UNIX_EPOCH};

pub use fleetmeter_wire::*;

/// Now, in ms since the Unix epoch (0 on a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
