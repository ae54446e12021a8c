//! Shared fixtures: the real plugins compiled by scripts/build-plugins, and engines that
//! share one compile cache so each test binary compiles each plugin once.
#![allow(dead_code)]

pub mod proxy;
pub mod zk;

use std::{future::Future, net::TcpListener, path::PathBuf, time::Duration};

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `check` until it holds or `deadline` passes (then panics naming `what`). Tests wait
/// on conditions, never for a fixed time.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
