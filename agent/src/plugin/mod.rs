//! WebAssembly plugins: sensors and aggregators, run sandboxed by wasmtime.
//!
//! # Layout
//! - [`engine`]: the one engine of an agent, its two linkers and load-time checks.
//! - `cache`: the compile cache, which uses only entries it can prove it wrote.
//! - [`limits`]: the sandbox's budget per call, the caps per instance, and what a plugin is
//!   granted.
//! - `host`: what one instance gets from the host: its store data, logging, WASI context,
//!   the aggregators' frozen clocks.
//! - `logs`: the per-plugin log budget.
//! - [`network`]: a sensor's network grants as allow-lists (sockets and `wasi:http`).
//! - `metadata`: what a plugin may say about itself (lengths, characters).
//! - `instance`: one plugin's instances: async calls under a deadline, trap handling,
//!   rebuilds, back-off.
//! - [`sensor`] / [`aggregator`]: the two kinds of plugin, as the agent uses them.
//! - [`inspect`]: what a plugin file is, for `fleetmeter plugin inspect`.
//!
//! The contract is `wit/fleetmeter.wit` (package `fleetmeter:plugin@0.2.0`); plugins of
//! 0.1.0 (`wit/v0.1.0/fleetmeter.wit`) still load: a 0.1.0 sensor's value is one quantity named
//! after the plugin with its metadata unit, a 0.1.0 aggregator is applied per quantity.

mod aggregator;
mod bindings;
mod cache;
mod engine;
mod error;
mod host;
mod inspect;
mod instance;
mod limits;
mod logs;
mod metadata;
pub mod network;
mod sensor;

use std::path::{Path, PathBuf};

pub use aggregator::AggregatorPlugin;
pub(crate) use aggregator::quantity_order;
pub use engine::{Compiled, EngineOptions, PluginEngine, PluginSource, default_cache_dir};
pub use error::{CallError, Failure, LoadError};
pub use inspect::{Inspection, inspect};
pub use instance::PluginStats;
pub use limits::{
    DirGrant, DirGrantError, Grants, Limits, LimitsError, MAX_LOG_BYTES, MAX_LOG_LINES,
    PluginSettings, STORE_CAPS, StoreCaps,
};
pub use metadata::{MAX_DESCRIPTION_CHARS, MAX_NAME_LEN, MAX_UNIT_CHARS, MAX_VERSION_LEN};
pub use sensor::SensorPlugin;

/// The WIT package both worlds belong to.
pub const CONTRACT_PACKAGE: &str = "fleetmeter:plugin";
/// The contract version this agent's SDK builds plugins for, the newest it loads.
pub const CONTRACT_VERSION: &str = "0.2.0";
/// Every contract version this agent loads, newest first (0.x versions make no compatibility
/// promise by themselves: these are the ones this agent keeps).
pub const CONTRACT_VERSIONS: [&str; 2] = [CONTRACT_VERSION, "0.1.0"];

/// A plugin's contract version, as the agent runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contract {
    /// 0.1.0: one value per sample; an aggregator of one quantity.
    V1,
    /// 0.2.0: samples of named quantities.
    V2,
}

impl Contract {
    pub fn version(self) -> &'static str {
        match self {
            Contract::V1 => "0.1.0",
            Contract::V2 => CONTRACT_VERSION,
        }
    }
}

/// The two kinds of plugin, one WIT world each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PluginKind {
    Sensor,
    Aggregator,
}

impl PluginKind {
    pub const ALL: [PluginKind; 2] = [PluginKind::Sensor, PluginKind::Aggregator];

    /// The world's name in the WIT package.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Sensor => "sensor",
            PluginKind::Aggregator => "aggregator",
        }
    }

    /// The interface the world exports.
    pub fn interface(self) -> &'static str {
        match self {
            PluginKind::Sensor => "sensor-api",
            PluginKind::Aggregator => "aggregator-api",
        }
    }

    /// The fully qualified export name a plugin of this kind must have.
    pub fn export_name(self) -> String {
        format!("{CONTRACT_PACKAGE}/{}@{CONTRACT_VERSION}", self.interface())
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.world())
    }
}

/// What a plugin says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    /// Empty when unitless (or, for aggregators, when the sensors' unit applies).
    pub unit: String,
    pub description: String,
}

impl From<bindings::v2::types::Metadata> for Metadata {
    fn from(m: bindings::v2::types::Metadata) -> Self {
        Self {
            name: m.name,
            version: m.version,
            unit: m.unit,
            description: m.description,
        }
    }
}

impl From<bindings::v1::types::Metadata> for Metadata {
    fn from(m: bindings::v1::types::Metadata) -> Self {
        Self {
            name: m.name,
            version: m.version,
            unit: m.unit,
            description: m.description,
        }
    }
}

pub use crate::wire::Quantity;

/// One device's sample in a round.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub device: String,
    pub quantities: Vec<Quantity>,
}

impl Reading {
    /// A reading of one quantity; handy in tests.
    pub fn one(device: impl Into<String>, name: &str, value: f64, unit: &str) -> Self {
        Self {
            device: device.into(),
            quantities: vec![Quantity::new(name, value, unit)],
        }
    }
}

/// Whether `name` and `version` follow the metadata rules (what a plugin may call itself):
/// for names and versions read from elsewhere (a rollout record, a manifest) before they are
/// logged or shown.
pub fn check_label(name: &str, version: &str) -> Result<(), String> {
    metadata::validate(&Metadata {
        name: name.to_owned(),
        version: version.to_owned(),
        ..Metadata::default()
    })
    .map_err(|e| e.to_string())
}

/// Where a plugin reference from configuration or the command line points: a path when it
/// looks like one (contains `/` or ends in `.wasm`), else `DIR/NAME.wasm`.
pub fn resolve(reference: &str, plugin_dir: &Path) -> PathBuf {
    if reference.contains('/') || reference.ends_with(".wasm") {
        PathBuf::from(reference)
    } else {
        plugin_dir.join(format!("{reference}.wasm"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_version_matches_the_wit_file() {
        let wit = include_str!("../../../wit/fleetmeter.wit");
        let old = include_str!("../../../wit/v0.1.0/fleetmeter.wit");
        assert!(
            old.lines()
                .any(|l| l.trim() == "package fleetmeter:plugin@0.1.0;")
        );
        let expected = format!("package {CONTRACT_PACKAGE}@{CONTRACT_VERSION};");
        assert!(
            wit.lines().any(|l| l.trim() == expected),
            "wit/fleetmeter.wit does not declare `{expected}`: bump CONTRACT_VERSION with it"
        );
    }

    #[test]
    fn the_sdk_builds_plugins_for_the_contract_this_agent_loads() {
        assert_eq!(CONTRACT_VERSION, fleetmeter_sdk::CONTRACT_VERSION);
    }

    #[test]
    fn resolve_names_and_paths() {
        let dir = Path::new("/opt/plugins");
        assert_eq!(
            resolve("mean", dir),
            PathBuf::from("/opt/plugins/mean.wasm")
        );
        assert_eq!(resolve("./x.wasm", dir), PathBuf::from("./x.wasm"));
        assert_eq!(resolve("my.wasm", dir), PathBuf::from("my.wasm"));
        assert_eq!(resolve("/a/b", dir), PathBuf::from("/a/b"));
    }
}
