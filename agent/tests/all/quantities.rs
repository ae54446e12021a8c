//! Several quantities per sample (contract 0.2): a fleet whose sensor reports temperature and
//! humidity stores both per round, aggregated apart, with each device's values, shown on the
//! page (in Chromium), in `replay`, in the metrics; plugins of contract 0.1.0 run unchanged
//! beside 0.2 ones; a quantity whose unit differs between devices is refused for the round
//! (only it); a sensor whose sample breaks the bounds costs its reading only.

use std::{path::PathBuf, time::Duration};

use fleetmeter_testkit::instruments::{self, ModbusServer};
use serde_json::Value;

use crate::support::{
    engine, fixture,
    fleet::{Fleet, SERIAL, config_with_sensor, fleetmeter, leader_of},
    plugin, settings, wait_until,
};
use fleetmeter::plugin::SensorPlugin;

/// The last stored round with `count` devices, once there are `rounds` of them.
async fn full_rounds(fleet: &Fleet, count: usize, rounds: usize) -> Vec<Value> {
    wait_until(
        "rounds with every device's sample",
        Duration::from_secs(90),
        || async {
            fleet
                .rounds()
                .await
                .iter()
                .filter(|r| r["count"] == count)
                .count()
                >= rounds
        },
    )
    .await;
    fleet
        .rounds()
        .await
        .into_iter()
        .filter(|r| r["count"] == count)
        .collect()
}

/// `name`'s entry in a round's `quantities`.
fn quantity<'a>(round: &'a Value, name: &str) -> &'a Value {
    round["quantities"]
        .as_array()
        .unwrap_or_else(|| panic!("no quantities: {round}"))
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no quantity {name}: {round}"))
}

/// A quantity's per-device values (every device carried it).
fn values_of(q: &Value) -> Vec<f64> {
    q["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no values: {q}"))
        .iter()
        .map(|v| v.as_f64().unwrap_or_else(|| panic!("not a number: {q}")))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_measuring_temperature_and_humidity_stores_both_aggregated_apart() {
    let _serial = SERIAL.lock().await;
    let server = ModbusServer::start();
    let mut fleet = Fleet::start("").await;
    let ids = ["1", "2", "3"];
    for (id, (register, _, _)) in ids.iter().zip(instruments::ENVIRONMENT) {
        let config = config_with_sensor(
            &fleet,
            &format!("environment-{id}"),
            &plugin("modbus-tcp"),
            &format!(
                "[plugins.sensor_config]\naddress = \"{a}\"\nregister = {register}\nscale = 0.01\n\
                 quantities = \"temperature:Cel, humidity:%\"\n\
                 [plugins.grants]\nconnect = [\"{a}\"]\n",
                a = server.address()
            ),
        );
        fleet.spawn_with_config(id, &config);
    }
    let rounds = full_rounds(&fleet, 3, 3).await;
    let round = rounds.last().unwrap().clone();
    let devices: Vec<&str> = round["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(devices, ids, "{round}");
    let names: Vec<&str> = round["quantities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["temperature", "humidity"], "{round}");
    // Each quantity in its unit, each device's value, and the mean of each on its own.
    for (name, unit, index) in [("temperature", "Cel", 1), ("humidity", "%", 2)] {
        let q = quantity(&round, name);
        assert_eq!(q["unit"], unit, "{round}");
        let expected: Vec<f64> = instruments::ENVIRONMENT
            .iter()
            .map(|e| [e.1, e.2][index - 1] * 0.01)
            .collect();
        let values: Vec<f64> = values_of(q);
        assert!(
            values.iter().zip(&expected).all(|(a, b)| close(*a, *b)),
            "{name}: {values:?} != {expected:?}"
        );
        let mean = expected.iter().sum::<f64>() / 3.0;
        assert!(close(q["value"].as_f64().unwrap(), mean), "{name}: {q}");
    }
    // The round's own value, unit and values are the primary quantity's (the first).
    assert_eq!(round["unit"], "Cel");
    assert_eq!(round["value"], quantity(&round, "temperature")["value"]);
    assert_eq!(round["values"], quantity(&round, "temperature")["values"]);

    // Each device's readings carry its quantities.
    let readings: Vec<Value> = reqwest::get(format!(
        "{}api/v1/devices/2/readings?limit=1",
        fleet.api_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let sample = &readings[0]["quantities"];
    assert_eq!(sample[1]["name"], "humidity", "{readings:?}");
    assert!(
        close(sample[1]["value"].as_f64().unwrap(), 41.3),
        "{readings:?}"
    );
    assert_eq!(sample[1]["unit"], "%");

    // The page, as Chromium draws it: one chart per quantity, its unit on the axis, each
    // device's quantities on its card; no console message.
    let url = fleet.api_url();
    let (dom, log) = tokio::task::spawn_blocking(move || fleetmeter_testkit::chromium::load(&url))
        .await
        .unwrap();
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    for (name, unit) in [("temperature", "Cel"), ("humidity", "%")] {
        assert!(
            dom.contains(&format!(
                r#"id="chart-{name}" data-quantity="{name}" data-unit="{unit}""#
            )),
            "no chart for {name}:\n{dom}"
        );
    }
    assert!(dom.contains(" %</text>"), "the humidity axis in %:\n{dom}");
    assert!(
        dom.contains(r#"<span data-quantity="humidity">humidity 41.3 %</span>"#),
        "device 2's humidity on its card:\n{dom}"
    );

    // replay recomputes each quantity with another aggregator.
    let n = round["round"].as_u64().unwrap();
    let api = fleet.api_url();
    let range = format!("{n}..={n}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
            .args([
                "replay",
                "--api",
                &api,
                "--rounds",
                &range,
                "--aggregator",
                "median",
                "--json",
            ])
            .args([
                "--plugin-dir",
                crate::support::repo_root()
                    .join("plugins/dist")
                    .to_str()
                    .unwrap(),
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let replayed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let humidity = replayed[0]["quantities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["quantity"] == "humidity")
        .unwrap_or_else(|| panic!("{replayed:?}"));
    assert!(
        close(humidity["recomputed"].as_f64().unwrap(), 40.2),
        "{replayed:?}"
    );

    // The leader's and the API's metrics, with a `quantity` label.
    let leader = leader_of(&round);
    let scraped = fleet.scrape(&fleet.metrics_url(&leader)).await;
    assert!(
        scraped.contains("fleetmeter_last_round_quantity_value{quantity=\"humidity\"}"),
        "{scraped}"
    );
    let api_metrics = fleet.scrape(&format!("{}metrics", fleet.api_url())).await;
    assert!(
        api_metrics.contains("fleetmeter_api_latest_quantity_value{quantity=\"humidity\"}"),
        "{api_metrics}"
    );
    fleet.stop_all().await;
}

/// The 0.1.0 fixtures: a sensor and an aggregator built against `wit/v0.1.0` directly.
fn contract_0_1(name: &str) -> PathBuf {
    fixture(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_of_contract_0_1_run_unchanged_beside_0_2_ones_in_one_fleet() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    // An aggregator is named, not a path: a plugin directory with the bundled plugins and the
    // 0.1.0 mean.
    let dir = tempfile::tempdir().unwrap();
    for name in ["random-temperature", "mean"] {
        std::fs::copy(plugin(name), dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    std::fs::copy(
        contract_0_1("contract-0-1-mean"),
        dir.path().join("contract-0-1-mean.wasm"),
    )
    .unwrap();
    let plugin_dir = dir.path().to_str().unwrap().to_owned();
    fleet.agent_env("FLEETMETER_PLUGIN_DIR", plugin_dir.clone());
    let with_aggregator = |path: PathBuf| {
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace(
            "[plugins]\n",
            "[plugins]\naggregator = \"contract-0-1-mean\"\n",
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    // Devices 1 and 2: the bundled random-temperature (0.2); device 3: a 0.1.0 sensor that
    // says it is random-temperature in °C (so its value is the same quantity).
    for id in ["1", "2"] {
        let config = config_with_sensor(
            &fleet,
            &format!("new-{id}"),
            &plugin("random-temperature"),
            "",
        );
        fleet.spawn_with_config(id, &with_aggregator(config));
    }
    let old = config_with_sensor(
        &fleet,
        "old-3",
        &contract_0_1("raw-sensor"),
        "[plugins.grants.env]\nFIXTURE_NAME = \"random-temperature\"\nFIXTURE_UNIT = \"°C\"\n",
    );
    fleet.spawn_with_config("3", &with_aggregator(old));
    let rounds = full_rounds(&fleet, 3, 2).await;
    let round = rounds.last().unwrap();
    assert!(
        round["aggregator"]
            .as_str()
            .unwrap()
            .starts_with("contract-0-1-mean@"),
        "{round}"
    );
    let q = quantity(round, "random-temperature");
    assert_eq!(
        (
            q["unit"].as_str(),
            round["quantities"].as_array().unwrap().len()
        ),
        (Some("°C"), 1)
    );
    let values: Vec<f64> = values_of(q);
    assert_eq!(values[2], 1.0, "the 0.1.0 sensor's value: {round}");
    assert!(
        close(
            q["value"].as_f64().unwrap(),
            values.iter().sum::<f64>() / 3.0
        ),
        "{round}"
    );

    // The fleet switches to the bundled mean (0.2) and goes on with the same devices.
    let out = fleetmeter(
        &fleet,
        &[
            "config",
            "set",
            "aggregator",
            "mean",
            "--plugin-dir",
            &plugin_dir,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "a round aggregated by the 0.2 mean",
        Duration::from_secs(60),
        || async {
            fleet.rounds().await.iter().any(|r| {
                r["count"] == 3
                    && r["aggregator"]
                        .as_str()
                        .is_some_and(|a| a.starts_with("mean@"))
            })
        },
    )
    .await;
    let rounds = fleet.rounds().await;
    let round = rounds
        .iter()
        .rev()
        .find(|r| r["count"] == 3 && r["aggregator"].as_str().unwrap().starts_with("mean@"))
        .unwrap();
    let q = quantity(round, "random-temperature");
    let values: Vec<f64> = values_of(q);
    assert!(
        close(
            q["value"].as_f64().unwrap(),
            values.iter().sum::<f64>() / 3.0
        ),
        "{round}"
    );
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quantity_whose_unit_differs_between_devices_is_refused_for_the_round_only() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    for (id, humidity) in [("1", "40:%"), ("2", "42:%"), ("3", "0.41:1")] {
        let config = config_with_sensor(
            &fleet,
            &format!("fixed-{id}"),
            &fixture("misbehaving-sensor"),
            &format!(
                "[plugins.sensor_config]\nmode = \"fixed\"\n\
                 quantities = \"temperature:2{id}:Cel,humidity:{humidity}\"\n"
            ),
        );
        fleet.spawn_with_config(id, &config);
    }
    let rounds = full_rounds(&fleet, 3, 2).await;
    let round = rounds.last().unwrap();
    let names: Vec<&str> = round["quantities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["temperature"],
        "humidity is refused, temperature kept: {round}"
    );
    assert!(close(round["value"].as_f64().unwrap(), 22.0), "{round}");
    let leader = leader_of(round);
    let log = fleet.log(&format!("agent-{leader}.log"));
    // A round with all three devices names each unit and who sent it.
    let line = log
        .lines()
        .find(|l| {
            l.contains("quantity refused for this round") && l.contains(r#""%" from device 1, 2"#)
        })
        .unwrap_or_else(|| {
            panic!("no refusal naming the three devices in the leader's log:\n{log}")
        });
    assert!(
        line.contains("quantity=humidity") && line.contains(r#""1" from device 3"#),
        "{line}"
    );
    let scraped = fleet.scrape(&fleet.metrics_url(&leader)).await;
    assert!(
        scraped.contains("fleetmeter_quantities_refused_total{quantity=\"humidity\"}"),
        "{scraped}"
    );
    fleet.stop_all().await;
}

#[tokio::test]
async fn a_sample_out_of_bounds_costs_its_reading_only() {
    let engine = engine();
    for (mode, why) in [
        ("too-many", "carries 17 quantities; at most 16"),
        ("bad-name", r#"quantity name "bad name\nforged" must be"#),
        ("twice", r#"quantity "t" appears twice"#),
        ("bad-unit", r#"quantity "t": unit"#),
    ] {
        let mut sensor = SensorPlugin::load(
            &engine,
            &fixture("misbehaving-sensor"),
            settings(&[("mode", mode), ("every", "2")]),
        )
        .await
        .unwrap();
        // Samples 1 and 3 behave; sample 2 breaks the bounds.
        let first = sensor.sample().await.unwrap();
        assert_eq!(
            (first[0].name.as_str(), first[0].value),
            ("misbehaving-sensor", 1.0)
        );
        let err = sensor.sample().await.unwrap_err().to_string();
        assert!(
            err.contains("its sample is refused") && err.contains(why),
            "{mode}: {err}"
        );
        assert!(!err.contains('\n'), "one line, escaped: {err}");
        let third = sensor.sample().await.unwrap();
        assert_eq!(third[0].value, 3.0, "{mode}: the same instance goes on");
        assert_eq!(sensor.stats().failures, 0, "{mode}: not a trap");
    }
}

#[tokio::test]
async fn an_aggregator_that_breaks_the_rules_publishes_nothing() {
    use fleetmeter::plugin::{AggregatorPlugin, Quantity, Reading};
    let engine = engine();
    let readings = [
        Reading {
            device: "2".into(),
            quantities: vec![
                Quantity::new("t", 22.0, "Cel"),
                Quantity::new("rh", 42.0, "%"),
            ],
        },
        Reading {
            device: "1".into(),
            quantities: vec![
                Quantity::new("t", 20.0, "Cel"),
                Quantity::new("rh", 40.0, "%"),
            ],
        },
    ];
    // A generous time limit: what is checked is the output, not how fast a busy machine
    // builds a large one.
    let load = async |mode: &str| {
        let mut settings = settings(&[("mode", mode)]);
        settings.limits.timeout_ms = 60_000;
        AggregatorPlugin::load(&engine, &fixture("raw-aggregator"), settings)
            .await
            .unwrap()
    };
    // By the rules: each quantity's value, in the samples' order (device 1's first).
    let published = load("mean").await.aggregate(&readings).await.unwrap();
    assert_eq!(published, [("t".to_owned(), 21.0), ("rh".to_owned(), 41.0)]);
    for (mode, why) in [
        (
            "unknown",
            "it published quantity not-in-any-sample, which no sample carries",
        ),
        ("twice", "it published quantity t twice"),
        ("many", "it published 1000000 values for 2 quantities"),
        ("nan", "non-finite value for t"),
    ] {
        let err = load(mode)
            .await
            .aggregate(&readings)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{mode}: {err}");
    }
}
