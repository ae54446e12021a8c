//! Plugin call costs, on the real bundled plugins (build them first: scripts/build-plugins).
//!
//! `cargo bench -p fleetmeter --bench plugins` (scripts/bench runs it and the RSS probe).
//! Targets from the plugin-system issue: `sample()` <= 300 ns, instantiation <= 25 µs.

use std::{hint::black_box, path::PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use fleetmeter::plugin::{
    AggregatorPlugin, EngineOptions, PluginEngine, PluginSettings, Reading, SensorPlugin,
};

fn plugin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    path
}

fn engine() -> PluginEngine {
    PluginEngine::new(EngineOptions {
        cache_dir: Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-plugin-cache"),
        ),
        ..EngineOptions::default()
    })
    .expect("engine")
}

fn sensor(c: &mut Criterion) {
    let engine = engine();
    let mut sensor = SensorPlugin::load(
        &engine,
        &plugin("random-temperature"),
        PluginSettings::default(),
    )
    .expect("load random-temperature");
    c.bench_function("sensor/sample (random-temperature)", |b| {
        b.iter(|| black_box(sensor.sample().expect("sample")))
    });
    // What a trap costs afterwards: a new store, instantiation from the InstancePre, `init`.
    c.bench_function("sensor/instantiate+init (random-temperature)", |b| {
        b.iter(|| sensor.rebuild().expect("rebuild"))
    });
}

fn aggregator(c: &mut Criterion) {
    let engine = engine();
    let mut mean = AggregatorPlugin::load(&engine, &plugin("mean"), PluginSettings::default())
        .expect("load mean");
    let readings: Vec<Reading> = (1..=3)
        .map(|i| Reading {
            device: i.to_string(),
            value: 80.0 + f64::from(i),
        })
        .collect();
    c.bench_function("aggregator/aggregate 3 readings (mean)", |b| {
        b.iter(|| black_box(mean.aggregate(black_box(&readings)).expect("aggregate")))
    });
    c.bench_function("aggregator/instantiate+init (mean)", |b| {
        b.iter(|| mean.rebuild().expect("rebuild"))
    });
}

fn load(c: &mut Criterion) {
    let engine = engine();
    let path = plugin("random-temperature");
    // Warm the cache, then measure a load as at agent start: deserialize, link, describe,
    // instantiate, init.
    SensorPlugin::load(&engine, &path, PluginSettings::default()).expect("warm");
    c.bench_function("engine/load from cache (random-temperature)", |b| {
        b.iter(|| {
            let s = SensorPlugin::load(&engine, &path, PluginSettings::default()).expect("load");
            assert!(s.loaded_from_cache());
            s
        })
    });
}

criterion_group!(benches, sensor, aggregator, load);
criterion_main!(benches);
