//! Shared fixtures: the real plugins compiled by scripts/build-plugins, and engines that
//! share one compile cache so the test binary compiles each plugin once.

pub use fleetmeter_testkit::{free_port, prometheus, proxy, redis, wait_until, zk};

pub mod api;
pub mod compose;
pub mod fleet;
pub mod pki;

use std::path::PathBuf;

use fleetmeter::plugin::{EngineOptions, PluginEngine, PluginSettings};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ lives in the repository")
        .to_owned()
}

fn must_exist(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "missing test plugin {}: run scripts/build-plugins (scripts/test does it). Plugin \
         fixtures are never skipped.",
        path.display()
    );
    path
}

/// A bundled plugin, `plugins/dist/NAME.wasm`.
pub fn plugin(name: &str) -> PathBuf {
    must_exist(
        repo_root()
            .join("plugins/dist")
            .join(format!("{name}.wasm")),
    )
}

/// A test fixture, `plugins/dist/fixtures/NAME.wasm`.
pub fn fixture(name: &str) -> PathBuf {
    must_exist(
        repo_root()
            .join("plugins/dist/fixtures")
            .join(format!("{name}.wasm")),
    )
}

/// The compile cache shared by the tests (under target/, so `cargo clean` clears it).
pub fn cache_dir() -> PathBuf {
    repo_root().join("target/test-plugin-cache")
}

pub fn engine() -> PluginEngine {
    PluginEngine::new(EngineOptions {
        cache_dir: Some(cache_dir()),
        ..EngineOptions::default()
    })
    .expect("engine")
}

pub fn fuel_engine() -> PluginEngine {
    PluginEngine::new(EngineOptions {
        cache_dir: Some(cache_dir()),
        fuel: true,
        ..EngineOptions::default()
    })
    .expect("engine with fuel")
}

pub fn settings(config: &[(&str, &str)]) -> PluginSettings {
    PluginSettings {
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..PluginSettings::default()
    }
}

/// A call's result as a plugin of one quantity gives it: a sample's first value, an
/// aggregation's first published value (`None`: nothing published).
pub trait Single {
    type Output;
    fn one(self) -> Self::Output;
}

impl Single for Result<Vec<fleetmeter::plugin::Quantity>, fleetmeter::plugin::CallError> {
    type Output = Result<f64, fleetmeter::plugin::CallError>;
    fn one(self) -> Self::Output {
        self.map(|sample| sample[0].value)
    }
}

impl Single for Result<Vec<(String, f64)>, fleetmeter::plugin::CallError> {
    type Output = Result<Option<f64>, fleetmeter::plugin::CallError>;
    fn one(self) -> Self::Output {
        self.map(|published| published.first().map(|(_, v)| *v))
    }
}
