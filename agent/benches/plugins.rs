//! Plugin call costs, on the real bundled plugins (build them first: scripts/build-plugins).
//!
//! `cargo bench -p fleetmeter --bench plugins` (scripts/bench runs it and the RSS probe).
//! Targets: `sample()` of one quantity <= 2 µs including the call's deadline machinery (async
//! call, epoch yield, timeout; 1 µs before contract 0.2 made a sample a list of named
//! quantities), rebuild after a trap <= 50 µs. `scripts/bench` runs these benchmarks
//! on this tree and on a baseline revision in one run and prints them side by side.
//! `instrument/`: the real-instrument sensors against local peers (pymodbus needs the
//! `.venv` scripts/test makes). `quantities/`: a sample and an aggregation of 1 and of 8
//! quantities, and (printed) a round's JSON size per device with 1 and 8 quantities.

use std::{
    cell::RefCell,
    future::Future,
    hint::black_box,
    path::PathBuf,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use fleetmeter::plugin::{
    AggregatorPlugin, EngineOptions, PluginEngine, PluginSettings, Reading, SensorPlugin,
};
use tokio::runtime::Runtime;

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

/// The agent's runtime flavour for one device: plugin calls are futures.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `sample()` of a loaded sensor, awaited in a loop as a device's task runs it.
fn bench_samples(c: &mut Criterion, rt: &Runtime, name: &str, sensor: &RefCell<SensorPlugin>) {
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut sensor = sensor.borrow_mut();
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(sensor.sample().await.expect("sample"));
                }
                start.elapsed()
            })
        })
    });
}

/// `aggregate(readings)` of a loaded aggregator, awaited in a loop as the leader runs it.
fn bench_aggregate(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    aggregator: &RefCell<AggregatorPlugin>,
    readings: &[Reading],
) {
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut aggregator = aggregator.borrow_mut();
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(
                        aggregator
                            .aggregate(black_box(readings))
                            .await
                            .expect("aggregate"),
                    );
                }
                start.elapsed()
            })
        })
    });
}

/// Times `iters` awaited calls inside one `block_on`, as a device's task runs them.
fn timed<T, F: Future<Output = T>>(
    rt: &Runtime,
    iters: u64,
    mut call: impl FnMut() -> F,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(call().await);
        }
        start.elapsed()
    })
}

fn sensor(c: &mut Criterion) {
    let rt = runtime();
    let engine = engine();
    let sensor = RefCell::new(
        rt.block_on(SensorPlugin::load(
            &engine,
            &plugin("random-temperature"),
            PluginSettings::default(),
        ))
        .expect("load random-temperature"),
    );
    bench_samples(c, &rt, "sensor/sample (random-temperature)", &sensor);
    // What a trap costs afterwards: a new store, instantiation from the InstancePre, `init`.
    c.bench_function("sensor/instantiate+init (random-temperature)", |b| {
        b.iter_custom(|iters| {
            let mut sensor = sensor.borrow_mut();
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    sensor.rebuild().await.expect("rebuild");
                }
                start.elapsed()
            })
        })
    });
}

fn aggregator(c: &mut Criterion) {
    let rt = runtime();
    let engine = engine();
    let mean = RefCell::new(
        rt.block_on(AggregatorPlugin::load(
            &engine,
            &plugin("mean"),
            PluginSettings::default(),
        ))
        .expect("load mean"),
    );
    let readings: Vec<Reading> = (1..=3)
        .map(|i| Reading::one(i.to_string(), "t", 80.0 + f64::from(i), ""))
        .collect();
    bench_aggregate(
        c,
        &rt,
        "aggregator/aggregate 3 readings (mean)",
        &mean,
        &readings,
    );
    c.bench_function("aggregator/instantiate+init (mean)", |b| {
        b.iter_custom(|iters| {
            let mut mean = mean.borrow_mut();
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    mean.rebuild().await.expect("rebuild");
                }
                start.elapsed()
            })
        })
    });
}

fn load(c: &mut Criterion) {
    let rt = runtime();
    let engine = engine();
    let path = plugin("random-temperature");
    // Warm the cache, then measure a load as at agent start: read and verify the cache
    // entry, deserialize, link, describe, instantiate, init.
    rt.block_on(SensorPlugin::load(
        &engine,
        &path,
        PluginSettings::default(),
    ))
    .expect("warm");
    c.bench_function("engine/load from cache (random-temperature)", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                let s = SensorPlugin::load(&engine, &path, PluginSettings::default())
                    .await
                    .expect("load");
                assert!(s.loaded_from_cache());
                s
            })
        })
    });
}

/// The instrument sensors against local peers (pymodbus's server, Python's http.server), one
/// connection kept: what a round's sample costs beside `random-temperature`'s. Their time is
/// the peer's (a Python server on the same 2 cores), not only the sandbox's.
fn instruments(c: &mut Criterion) {
    use fleetmeter::plugin::{
        Grants,
        network::{Endpoint, Origin},
    };
    use fleetmeter_testkit::instruments::{JsonPeer, ModbusServer};

    let rt = runtime();
    let engine = engine();
    let modbus = ModbusServer::start();
    let json = JsonPeer::start(r#"{"meter": {"power": 1234.5}}"#, "");
    let settings = |config: &[(&str, String)], grants: Grants| PluginSettings {
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        grants,
        ..PluginSettings::default()
    };
    let sensors = [
        (
            "instrument/sample (modbus-tcp, f32 holding register, pymodbus)",
            "modbus-tcp",
            settings(
                &[
                    ("address", modbus.address()),
                    ("register", "6".into()),
                    ("type", "f32".into()),
                ],
                Grants {
                    connect: vec![Endpoint::parse(&modbus.address()).unwrap()],
                    ..Grants::default()
                },
            ),
        ),
        (
            "instrument/sample (http-json, GET + pointer, http.server)",
            "http-json",
            settings(
                &[
                    ("url", format!("{}/status", json.origin())),
                    ("pointer", "/meter/power".into()),
                ],
                Grants {
                    http: vec![Origin::parse(&json.origin()).unwrap()],
                    ..Grants::default()
                },
            ),
        ),
    ];
    for (name, plugin_name, settings) in sensors {
        let sensor = RefCell::new(
            rt.block_on(SensorPlugin::load(&engine, &plugin(plugin_name), settings))
                .unwrap_or_else(|e| panic!("load {plugin_name}: {e}")),
        );
        bench_samples(c, &rt, name, &sensor);
    }
}

/// `NAME:VALUE:UNIT,…` of `n` quantities.
fn fixed(n: usize) -> String {
    (0..n)
        .map(|i| format!("q{i}:{}.25:V", 200 + i))
        .collect::<Vec<_>>()
        .join(",")
}

fn quantities(c: &mut Criterion) {
    use fleetmeter::wire::Round;

    let rt = runtime();
    let engine = engine();
    for n in [1, 8] {
        let settings = PluginSettings {
            config: vec![
                ("mode".into(), "fixed".into()),
                ("quantities".into(), fixed(n)),
            ],
            ..PluginSettings::default()
        };
        let sensor = RefCell::new(
            rt.block_on(SensorPlugin::load(
                &engine,
                &plugin("fixtures/misbehaving-sensor"),
                settings,
            ))
            .expect("load misbehaving-sensor"),
        );
        bench_samples(
            c,
            &rt,
            &format!("quantities/sample {n} quantities"),
            &sensor,
        );
    }
    let mean = RefCell::new(
        rt.block_on(AggregatorPlugin::load(
            &engine,
            &plugin("mean"),
            PluginSettings::default(),
        ))
        .expect("load mean"),
    );
    for n in [1, 8] {
        let readings: Vec<Reading> = (0..100)
            .map(|d| Reading {
                device: format!("device-{d:03}"),
                quantities: (0..n)
                    .map(|i| {
                        fleetmeter::plugin::Quantity::new(format!("q{i}"), 20.0 + f64::from(d), "V")
                    })
                    .collect(),
            })
            .collect();
        let name = format!("quantities/aggregate 100 devices x {n} quantities (mean)");
        bench_aggregate(c, &rt, &name, &mean, &readings);
    }
    // A round's JSON per device, with ids like "device-00042" and values of full precision.
    for n in [1, 8] {
        for devices in [100, 10_000] {
            let readings: Vec<Reading> = (0..devices)
                .map(|d| Reading {
                    device: format!("device-{d:05}"),
                    quantities: (0..n)
                        .map(|i| {
                            fleetmeter::plugin::Quantity::new(
                                format!("quantity-{i}"),
                                20.0 + (d as f64) / 3.0,
                                "Cel",
                            )
                        })
                        .collect(),
                })
                .collect();
            let published: Vec<(String, f64)> =
                (0..n).map(|i| (format!("quantity-{i}"), 21.5)).collect();
            let p =
                fleetmeter::round::quantities::publish(&readings, &published).expect("published");
            let round = Round {
                round: 1_000_000,
                value: p.value,
                count: devices as u32,
                devices: p.devices,
                aggregator: "mean@0.1.0".into(),
                leader: "device-00001".into(),
                ts: 1_766_334_379_000,
                unit: p.unit,
                counter: Some(123_456_789),
                version: fleetmeter::wire::VERSION,
                values: p.values,
                shadow: None,
                rollout: None,
                quantities: Some(p.quantities),
            };
            round.validate().expect("a valid round");
            let bytes = serde_json::to_vec(&round).expect("serializes").len();
            println!(
                "quantities/round JSON: {n} quantities, {devices} devices: {bytes} bytes, {:.1} bytes per device",
                bytes as f64 / devices as f64
            );
        }
    }
}

criterion_group!(benches, sensor, aggregator, load, instruments, quantities);
criterion_main!(benches);
