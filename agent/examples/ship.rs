//! The cost of shipping plugins (`scripts/bench-ship`), against a real ZooKeeper from
//! Debian's package: for each bundled plugin, the bytes a publication writes to ZooKeeper and
//! in how many transactions, and what one device pays to run it — fetch (every chunk read
//! and checked), signature check, compile (no cache) or load (compile cache warm), and
//! instantiate + `init` — each the median of `--runs`; then the cost of a shadow aggregator
//! per round: one more `aggregate` call on the round's readings, for fleets of 3, 100 and
//! 10,000 devices.
//!
//! `cargo run --release --example ship -- [--runs 5] [--plugin-dir plugins/dist]`

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use fleetmeter::{
    coord::{Session, ZkSettings},
    plugin::{
        self, AggregatorPlugin, EngineOptions, PluginEngine, PluginKind, PluginSettings,
        PluginSource, Reading, SensorPlugin,
    },
    rollout::{
        artifacts::{self, Manifest, Published},
        signing::{self, TrustPolicy},
    },
};
use fleetmeter_testkit::zk::ZkServer;

#[derive(Parser)]
struct Args {
    /// Repetitions of each measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The bundled plugins.
    #[arg(long, default_value = "plugins/dist")]
    plugin_dir: PathBuf,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let zk = ZkServer::start();
    let session = Session::connect(ZkSettings {
        connect_timeout: Duration::from_secs(20),
        ..ZkSettings::new(zk.hosts(), "/bench")
    })
    .await?;
    session.ensure_root().await?;
    let client = session.client()?;
    let (secret, key, _) = signing::keygen()?;
    let policy = TrustPolicy {
        trusted: vec![key],
        allow_unsigned: false,
    };
    let cache = tempfile::tempdir()?;
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: Some(cache.path().to_owned()),
        ..EngineOptions::default()
    })?;
    println!(
        "plugin               size      ZooKeeper bytes (txns)  fetch      verify     compile     cached load  ready (init)"
    );
    let mut aggregators = Vec::new();
    for name in [
        "random-temperature",
        "thermal-zone",
        "mean",
        "median",
        "trimmed-mean",
    ] {
        let path = plugin::resolve(name, &args.plugin_dir);
        let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        let inspection = plugin::inspect(&engine, &path).await?;
        let kind = inspection.kind.context("not a plugin")?;
        let meta = inspection.metadata.context("no metadata")?;
        let signature = signing::sign(&secret, None, &bytes, name)?;
        let manifest = artifacts::describe(
            &bytes,
            Manifest {
                format: 0,
                name: meta.name.clone(),
                version: meta.version.clone(),
                kind: kind.world().to_owned(),
                contract: inspection.contract.clone().unwrap_or_default(),
                unit: meta.unit.clone(),
                sha256: String::new(),
                size: 0,
                chunk_bytes: 0,
                chunks: Vec::new(),
                signature: Some(signature),
                signer: None,
                published_at: 1,
            },
        );
        let Published::Stored {
            transactions,
            bytes: written,
        } = artifacts::publish(&client, &bytes, &manifest).await?
        else {
            anyhow::bail!("{name} was already stored");
        };
        let digest = manifest.sha256.clone();
        let (mut fetch, mut verify, mut compile, mut cached, mut ready) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..args.runs {
            let t = Instant::now();
            let (m, fetched) = artifacts::fetch(&client, &digest, 16 << 20).await?;
            fetch.push(t.elapsed());
            let t = Instant::now();
            policy.check(&fetched, m.signature.as_deref())?;
            verify.push(t.elapsed());
            // A new engine and an empty cache each time: what a device pays on its first
            // sight of the artifact.
            let empty = tempfile::tempdir()?;
            let fresh = PluginEngine::new(EngineOptions {
                cache_dir: Some(empty.path().to_owned()),
                ..EngineOptions::default()
            })?;
            let label = PathBuf::from(format!("artifact {name}"));
            let t = Instant::now();
            fresh.compile_bytes(&label, &fetched)?;
            compile.push(t.elapsed());
            let warm = PluginEngine::new(EngineOptions {
                cache_dir: Some(empty.path().to_owned()),
                ..EngineOptions::default()
            })?;
            let t = Instant::now();
            warm.compile_bytes(&label, &fetched)?;
            cached.push(t.elapsed());
            let source = PluginSource::Bytes {
                label,
                bytes: Arc::new(fetched),
            };
            let t = Instant::now();
            match kind {
                // thermal-zone's init reads a thermal zone this machine may not have.
                PluginKind::Sensor if name == "thermal-zone" => {}
                PluginKind::Sensor => {
                    SensorPlugin::load_source(&warm, source, PluginSettings::default()).await?;
                }
                PluginKind::Aggregator => {
                    AggregatorPlugin::load_source(&warm, source, PluginSettings::default()).await?;
                }
            }
            ready.push(t.elapsed());
        }
        println!(
            "{name:<20} {:>7} B  {written:>8} B ({transactions})          {:<10} {:<10} {:<11} {:<12} {}",
            bytes.len(),
            ms(median(fetch)),
            ms(median(verify)),
            ms(median(compile)),
            ms(median(cached)),
            if name == "thermal-zone" {
                "(needs a thermal zone)".to_owned()
            } else {
                ms(median(ready))
            }
        );
        if kind == PluginKind::Aggregator {
            aggregators.push(path);
        }
    }
    println!();
    println!(
        "shadow aggregator: one more aggregate() per round, median of {} calls",
        50
    );
    for path in &aggregators {
        let mut plugin = AggregatorPlugin::load(&engine, path, PluginSettings::default()).await?;
        let mut row = format!("{:<20}", path.file_stem().unwrap().to_string_lossy());
        for n in [3usize, 100, 10_000] {
            let readings: Vec<Reading> = (0..n)
                .map(|i| {
                    Reading::one(
                        format!("device-{i:05}"),
                        "t",
                        20.0 + (i % 17) as f64 * 0.5,
                        "",
                    )
                })
                .collect();
            let mut calls = Vec::new();
            for _ in 0..50 {
                let t = Instant::now();
                plugin.aggregate(&readings).await?;
                calls.push(t.elapsed());
            }
            row.push_str(&format!("  {n:>6} devices: {:>9}", ms(median(calls))));
        }
        println!("{row}");
    }
    drop(client);
    session.close().await;
    Ok(())
}
