//! Resident memory of an agent process with the two default plugins loaded.
//!
//! `cargo run --release -p fleetmeter --example plugin_rss -- [PLUGIN_DIR] [CACHE_DIR]`
//! Run it twice: the first run fills the compile cache, the second shows the RSS of an
//! agent that loads its plugins from the cache (what every restart does).

use std::path::PathBuf;

use anyhow::{Context, Result};
use fleetmeter::plugin::{
    AggregatorPlugin, EngineOptions, PluginEngine, PluginSettings, Reading, SensorPlugin,
};

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "n/a".into())
}

fn main() -> Result<()> {
    // Plugin calls are futures; an agent runs them on its tokio runtime.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "plugins/dist".into()));
    let cache = args
        .next()
        .map(PathBuf::from)
        .or_else(fleetmeter::plugin::default_cache_dir);
    println!("start:            VmRSS {}", status("VmRSS:"));
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: cache,
        ..EngineOptions::default()
    })?;
    println!("engine:           VmRSS {}", status("VmRSS:"));
    let mut sensor = SensorPlugin::load(
        &engine,
        &dir.join("random-temperature.wasm"),
        PluginSettings::default(),
    )
    .await
    .context("loading random-temperature")?;
    let mut mean =
        AggregatorPlugin::load(&engine, &dir.join("mean.wasm"), PluginSettings::default())
            .await
            .context("loading mean")?;
    println!(
        "plugins loaded:   VmRSS {} (from cache: sensor {}, aggregator {})",
        status("VmRSS:"),
        sensor.loaded_from_cache(),
        mean.loaded_from_cache()
    );
    for round in 0..10_000 {
        let mut readings = Vec::with_capacity(3);
        for d in 0..3 {
            readings.push(Reading {
                device: d.to_string(),
                quantities: sensor.sample().await.expect("sample"),
            });
        }
        let published = mean.aggregate(&readings).await.expect("aggregate");
        assert!(!published.is_empty(), "round {round}");
    }
    println!(
        "after 10k rounds: VmRSS {}, peak VmHWM {}",
        status("VmRSS:"),
        status("VmHWM:")
    );
    Ok(())
}
