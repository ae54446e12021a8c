//! The bundled plugins, loaded by the real host, and the load-time checks.

use crate::support::Single;
use crate::support::{engine, fixture, plugin, settings};
use fleetmeter::plugin::{
    AggregatorPlugin, DirGrant, EngineOptions, Grants, LoadError, PluginEngine, PluginKind,
    PluginSettings, Reading, SensorPlugin, inspect,
};

fn readings(values: &[f64]) -> Vec<Reading> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Reading::one((i + 1).to_string(), "value", *v, ""))
        .collect()
}

#[tokio::test]
async fn random_temperature_walks_inside_its_range() {
    let mut sensor = SensorPlugin::load(&engine(), &plugin("random-temperature"), settings(&[]))
        .await
        .unwrap();
    let meta = sensor.metadata();
    assert_eq!(meta.name, "random-temperature");
    assert_eq!(meta.unit, "°C");
    for _ in 0..200 {
        let v = sensor.sample().await.one().unwrap();
        assert!((75.0..=85.0).contains(&v), "{v} outside 75–85 °C");
    }
    assert_eq!(sensor.stats().failures, 0);
}

#[tokio::test]
async fn random_temperature_takes_its_range_and_seed_from_config() {
    let config = [("min", "-10"), ("max", "-5"), ("seed", "3")];
    let take = async || {
        let mut s = SensorPlugin::load(&engine(), &plugin("random-temperature"), settings(&config))
            .await
            .unwrap();
        let mut walk = Vec::new();
        for _ in 0..20 {
            walk.push(s.sample().await.one().unwrap());
        }
        walk
    };
    let first = take().await;
    assert!(
        first.iter().all(|v| (-10.0..=-5.0).contains(v)),
        "{first:?}"
    );
    assert_eq!(first, take().await, "a fixed seed gives the same walk");
}

#[tokio::test]
async fn aggregators_compute_mean_median_trimmed_mean() {
    let engine = engine();
    let values = readings(&[1.0, 2.0, 3.0, 10.0]);
    let run = async |name: &str, config: &[(&str, &str)]| {
        AggregatorPlugin::load(&engine, &plugin(name), settings(config))
            .await
            .unwrap()
            .aggregate(&values)
            .await
            .one()
            .unwrap()
    };
    assert_eq!(run("mean", &[]).await, Some(4.0));
    assert_eq!(run("median", &[]).await, Some(2.5));
    assert_eq!(
        run("trimmed-mean", &[("fraction", "0.25")]).await,
        Some(2.5)
    );
    assert_eq!(run("trimmed-mean", &[]).await, Some(4.0));
}

#[tokio::test]
async fn an_empty_round_aggregates_to_none() {
    let mut mean = AggregatorPlugin::load(&engine(), &plugin("mean"), settings(&[]))
        .await
        .unwrap();
    assert_eq!(mean.aggregate(&[]).await.one().unwrap(), None);
}

#[tokio::test]
async fn aggregators_get_no_clock_and_no_randomness() {
    // The fixture returns `now_secs * 1000 + random % 1000`.
    let engine = engine();
    let run = async || {
        AggregatorPlugin::load(
            &engine,
            &fixture("nondeterministic-aggregator"),
            settings(&[]),
        )
        .await
        .unwrap()
        .aggregate(&readings(&[1.0]))
        .await
        .one()
        .unwrap()
        .unwrap()
    };
    let first = run().await;
    assert!(
        first < 1000.0,
        "the clock must read 0 for aggregators, got {first}"
    );
    assert_eq!(
        first,
        run().await,
        "two instances must compute the same result"
    );
}

#[tokio::test]
async fn bad_plugin_config_is_refused_at_load_with_the_key() {
    let engine = engine();
    for (config, expected) in [
        (("min", "abc"), "config `min`: invalid value `abc`"),
        (("colour", "red"), "unknown config key `colour`"),
        (("step", "-1"), "config `step`"),
    ] {
        let err = SensorPlugin::load(&engine, &plugin("random-temperature"), settings(&[config]))
            .await
            .unwrap_err();
        assert!(matches!(err, LoadError::Config { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains("random-temperature"), "{message}");
    }
    let err = AggregatorPlugin::load(
        &engine,
        &plugin("trimmed-mean"),
        settings(&[("fraction", "0.7")]),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("config `fraction`"), "{err}");
}

#[tokio::test]
async fn thermal_zone_needs_a_granted_directory() {
    let err = SensorPlugin::load(&engine(), &plugin("thermal-zone"), settings(&[]))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("grant the host directory read-only"),
        "{message}"
    );
}

#[tokio::test]
async fn thermal_zone_reads_a_granted_zone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("thermal_zone0")).unwrap();
    std::fs::write(dir.path().join("thermal_zone0/temp"), "47250\n").unwrap();
    let grant = DirGrant::parse(&format!("{}:/sys/class/thermal", dir.path().display())).unwrap();
    let mut sensor = SensorPlugin::load(
        &engine(),
        &plugin("thermal-zone"),
        PluginSettings {
            grants: Grants {
                dirs: vec![grant],
                ..Grants::default()
            },
            ..PluginSettings::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(sensor.sample().await.one().unwrap(), 47.25);
    std::fs::write(dir.path().join("thermal_zone0/temp"), "48000\n").unwrap();
    assert_eq!(
        sensor.sample().await.one().unwrap(),
        48.0,
        "reads the file on every sample"
    );
}

#[tokio::test]
async fn thermal_zone_on_this_machine_lists_what_exists() {
    // The real sysfs directory, granted read-only. Virtual machines often have no zones:
    // then the message must say so instead of failing obscurely.
    let real = std::path::Path::new("/sys/class/thermal");
    let granted = async || {
        SensorPlugin::load(
            &engine(),
            &plugin("thermal-zone"),
            PluginSettings {
                grants: Grants {
                    dirs: vec![DirGrant::parse("/sys/class/thermal").unwrap()],
                    ..Grants::default()
                },
                ..PluginSettings::default()
            },
        )
        .await
    };
    if !real.is_dir() {
        // No sysfs here (a container without /sys, say): granting a directory that does not
        // exist is refused at load, naming it. Never a silent pass.
        let message = granted().await.unwrap_err().to_string();
        assert!(
            message.contains("cannot grant directory /sys/class/thermal"),
            "{message}"
        );
        return;
    }
    let zones: Vec<String> = std::fs::read_dir(real)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("thermal_zone"))
        .collect();
    let result = granted().await;
    if zones.iter().any(|z| z == "thermal_zone0") {
        let value = result.unwrap().sample().await.one().unwrap();
        assert!((-50.0..150.0).contains(&value), "{value} °C");
    } else {
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("no thermal zone `thermal_zone0`"),
            "{message}"
        );
        assert!(message.contains("zones present:"), "{message}");
    }
}

#[tokio::test]
async fn a_plugin_of_the_other_world_is_refused() {
    let err = SensorPlugin::load(&engine(), &plugin("mean"), settings(&[]))
        .await
        .unwrap_err();
    match &err {
        LoadError::WrongWorld {
            expected, found, ..
        } => {
            assert_eq!(*expected, PluginKind::Sensor);
            assert_eq!(*found, PluginKind::Aggregator);
        }
        other => panic!("expected WrongWorld, got {other}"),
    }
    assert!(
        err.to_string()
            .contains("implements the fleetmeter aggregator world, not the sensor world")
    );
    let err = AggregatorPlugin::load(&engine(), &plugin("random-temperature"), settings(&[]))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
}

#[tokio::test]
async fn a_plugin_for_another_contract_version_is_refused() {
    let err = SensorPlugin::load(&engine(), &fixture("future-contract"), settings(&[]))
        .await
        .unwrap_err();
    match &err {
        LoadError::IncompatibleVersion {
            found, supported, ..
        } => {
            assert_eq!(found, "0.9.0");
            assert_eq!(*supported, fleetmeter::plugin::CONTRACT_VERSION);
        }
        other => panic!("expected IncompatibleVersion, got {other}"),
    }
}

#[tokio::test]
async fn files_that_are_not_components_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "hello, I am text").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap(); // a valid, empty core module
    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(plugin("mean")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: None,
        ..EngineOptions::default()
    })
    .unwrap();

    let err = SensorPlugin::load(&engine, &text, settings(&[]))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("is not a WebAssembly file"));

    let err = SensorPlugin::load(&engine, &core, settings(&[]))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("not a component"));

    let err = AggregatorPlugin::load(&engine, &truncated, settings(&[]))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");

    let err = SensorPlugin::load(&engine, &dir.path().join("absent.wasm"), settings(&[]))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
}

#[tokio::test]
async fn inspect_reports_world_metadata_and_problems() {
    let engine = engine();
    let mean = inspect(&engine, &plugin("mean")).await.unwrap();
    assert_eq!(mean.kind, Some(PluginKind::Aggregator));
    assert_eq!(mean.contract.as_deref(), Some("0.2.0"));
    assert_eq!(mean.metadata.as_ref().unwrap().name, "mean");
    assert!(
        mean.exports
            .contains(&"fleetmeter:plugin/aggregator-api@0.2.0".to_owned())
    );
    // A plugin of contract 0.1.0 is inspected, and loads, as what it is.
    let old = inspect(&engine, &fixture("contract-0-1-mean"))
        .await
        .unwrap();
    assert_eq!(old.contract.as_deref(), Some("0.1.0"));
    assert_eq!(old.problem, None);
    assert!(
        mean.imports
            .contains(&"fleetmeter:plugin/host@0.2.0".to_owned())
    );
    assert_eq!(mean.sha256.len(), 64);
    assert!(mean.problem.is_none());

    // describe works without init, so a plugin that needs grants still inspects.
    let thermal = inspect(&engine, &plugin("thermal-zone")).await.unwrap();
    assert_eq!(thermal.metadata.unwrap().unit, "°C");

    let future = inspect(&engine, &fixture("future-contract")).await.unwrap();
    assert!(future.problem.unwrap().contains("@0.9.0"));
}

/// The metadata limits the agent enforces at load are within what the measurements API
/// accepts: a plugin at every limit at once still makes publishable rounds.
#[test]
fn the_largest_metadata_a_plugin_may_declare_makes_a_round_the_api_accepts() {
    use fleetmeter::plugin::{MAX_NAME_LEN, MAX_UNIT_CHARS, MAX_VERSION_LEN};
    let round = fleetmeter::wire::Round {
        round: 1,
        value: 21.5,
        count: 1,
        devices: vec!["1".into()],
        aggregator: format!(
            "{}@{}",
            "n".repeat(MAX_NAME_LEN),
            "9".repeat(MAX_VERSION_LEN)
        ),
        leader: "1".into(),
        ts: 1_764_201_600_000,
        unit: Some("°".repeat(MAX_UNIT_CHARS)),
        counter: None,
        version: fleetmeter::wire::VERSION,
        values: Some(vec![21.5]),
        shadow: None,
        rollout: None,
        quantities: None,
    }
    // A sensor of one value names its quantity after itself.
    .one_quantity(&"s".repeat(MAX_NAME_LEN));
    let json = serde_json::to_string(&round).unwrap();
    let stored: fleetmeter_api::round::Round = serde_json::from_str(&json).unwrap();
    assert_eq!(stored.validate().map_err(|e| e.to_string()), Ok(()));
    // One more unit character and the API refuses: the agent's limit is the API's.
    let over = json.replace(&"°".repeat(MAX_UNIT_CHARS), &"°".repeat(MAX_UNIT_CHARS + 1));
    let stored: fleetmeter_api::round::Round = serde_json::from_str(&over).unwrap();
    assert!(stored.validate().is_err());
}
