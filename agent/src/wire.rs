//! What the agent writes into ZooKeeper nodes and sends to the API: the shared wire contract
//! ([`fleetmeter_wire`]: a committed [`Round`], a device's [`DeviceReading`], their limits and
//! validation, the same crate the API checks bodies with). Readers treat both as hostile
//! input (see `round::collect` and `publish`).

use std::time::{SystemTime, UNIX_EPOCH};

pub use fleetmeter_wire::*;

/// This agent's version, as `fleetmeter --version` says and its device node advertises.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What this agent advertises in its device node: its version and the contract versions it
/// reads and writes, up to `wire_version` (`[publish] wire_version`).
pub fn advert(wire_version: u32) -> Advert {
    Advert {
        agent: Some(AGENT_VERSION.to_owned()),
        wire: Some([OLDEST, wire_version.clamp(OLDEST, VERSION)]),
        ..Advert::default()
    }
}

/// Now, in ms since the Unix epoch (0 on a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
