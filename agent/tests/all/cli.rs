//! The `fleetmeter plugin` commands, run as a user would run them (the real binary, from
//! the repository root so that plugin names resolve in plugins/dist).

use std::process::{Command, Output};

use crate::support::{cache_dir, fixture, plugin, repo_root};

fn fleetmeter(args: &[&str]) -> Output {
    // Make sure the plugins exist, with the fixture's clear message if they do not.
    plugin("mean");
    Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(args)
        .current_dir(repo_root())
        .env("FLEETMETER_CACHE_DIR", cache_dir())
        .env_remove("RUST_LOG")
        .env_remove("FLEETMETER_PLUGIN_DIR")
        .output()
        .expect("run fleetmeter")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failure is one `error:` line and exit code 1, never a Rust panic.
fn assert_clean_failure(out: &Output, expected: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked at"), "the host panicked: {err}");
    let line = err.lines().last().unwrap_or_default();
    assert!(line.starts_with("error: "), "{err}");
    assert!(line.contains(expected), "expected {expected:?} in {line:?}");
}

#[test]
fn aggregate_prints_the_result() {
    let out = fleetmeter(&[
        "plugin",
        "aggregate",
        "plugins/dist/mean.wasm",
        "1",
        "2",
        "3",
        "10",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "4\n");

    let out = fleetmeter(&[
        "plugin",
        "aggregate",
        "plugins/dist/median.wasm",
        "1",
        "2",
        "3",
        "10",
    ]);
    assert_eq!(stdout(&out), "2.5\n");

    // By name, negative values, explicit device ids, configuration.
    let out = fleetmeter(&["plugin", "aggregate", "mean", "-1", "-3"]);
    assert_eq!(stdout(&out), "-2\n", "{}", stderr(&out));
    let out = fleetmeter(&["plugin", "aggregate", "median", "a=1", "b=7", "c=3"]);
    assert_eq!(stdout(&out), "3\n", "{}", stderr(&out));
    let out = fleetmeter(&[
        "plugin",
        "aggregate",
        "trimmed-mean",
        "--config",
        "fraction=0.25",
        "1",
        "2",
        "3",
        "10",
    ]);
    assert_eq!(stdout(&out), "2.5\n", "{}", stderr(&out));
}

#[test]
fn run_prints_one_value_per_sample() {
    let out = fleetmeter(&[
        "plugin",
        "run",
        "random-temperature",
        "--samples",
        "4",
        "--config",
        "seed=9",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let values: Vec<f64> = stdout(&out)
        .lines()
        .map(|l| l.parse().expect("a number per line"))
        .collect();
    assert_eq!(values.len(), 4);
    assert!(
        values.iter().all(|v| (75.0..=85.0).contains(v)),
        "{values:?}"
    );
    assert!(stderr(&out).contains("4 ok, 0 failed"), "{}", stderr(&out));
}

#[test]
fn run_shows_the_plugins_own_log_lines_tagged_with_its_name() {
    let path = fixture("misbehaving-sensor");
    let out = fleetmeter(&["plugin", "run", path.to_str().unwrap(), "-n", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("ready, misbehaving every 1 sample(s)"))
        .unwrap_or_else(|| panic!("plugin log line missing: {err}"));
    assert!(line.contains("misbehaving-sensor"), "{line}");
}

#[test]
fn run_reports_failing_samples_and_exits_1() {
    let path = fixture("misbehaving-sensor");
    let out = fleetmeter(&[
        "plugin",
        "run",
        path.to_str().unwrap(),
        "-n",
        "4",
        "-c",
        "mode=trap",
        "-c",
        "every=2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "1\n1\n",
        "the samples between traps still print"
    );
    let err = stderr(&out);
    assert!(
        err.contains("sample 2: plugin misbehaving-sensor trapped"),
        "{err}"
    );
    assert!(err.contains("2 ok, 2 failed"), "{err}");
    assert!(!err.contains("panicked at"), "{err}");
}

#[test]
fn inspect_describes_a_plugin() {
    let out = fleetmeter(&["plugin", "inspect", "random-temperature"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "world:     sensor (fleetmeter:plugin@0.2.0)",
        "plugin:    random-temperature 0.1.0",
        "unit:      °C",
        "exports:   fleetmeter:plugin/sensor-api@0.2.0",
        "fleetmeter:plugin/host@0.2.0",
        "sha256:    ",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn inspect_exits_1_on_a_plugin_the_agent_would_refuse() {
    let path = fixture("future-contract");
    let out = fleetmeter(&["plugin", "inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("problem:   built for contract @0.9.0"));
}

#[test]
fn failures_are_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm").unwrap();
    let text = text.to_str().unwrap();
    let future = fixture("future-contract");
    let misbehaving = fixture("misbehaving-sensor");

    assert_clean_failure(
        &fleetmeter(&["plugin", "run", text]),
        "is not a WebAssembly file",
    );
    assert_clean_failure(
        &fleetmeter(&["plugin", "inspect", text]),
        "is not a WebAssembly file",
    );
    assert_clean_failure(
        &fleetmeter(&["plugin", "run", "mean"]),
        "implements the fleetmeter aggregator world, not the sensor world",
    );
    assert_clean_failure(
        &fleetmeter(&["plugin", "aggregate", "random-temperature", "1"]),
        "implements the fleetmeter sensor world, not the aggregator world",
    );
    assert_clean_failure(
        &fleetmeter(&["plugin", "run", future.to_str().unwrap()]),
        "fleetmeter:plugin@0.9.0",
    );
    assert_clean_failure(
        &fleetmeter(&["plugin", "run", "no-such-plugin"]),
        "no plugin `no-such-plugin`: plugins/dist/no-such-plugin.wasm does not exist",
    );
    assert_clean_failure(
        &fleetmeter(&["plugin", "run", "random-temperature", "-c", "min=abc"]),
        "config `min`: invalid value `abc`",
    );
    assert_clean_failure(
        &fleetmeter(&["plugin", "aggregate", "mean", "1", "two"]),
        "reading `two`: `two` is not a number",
    );
    assert_clean_failure(
        &fleetmeter(&["plugin", "aggregate", "mean", "1", "inf"]),
        "the value must be finite",
    );
    assert_clean_failure(
        &fleetmeter(&[
            "plugin",
            "run",
            misbehaving.to_str().unwrap(),
            "--timeout-ms",
            "0",
        ]),
        "timeout_ms must be between 1 and 60000",
    );
    assert_clean_failure(
        &fleetmeter(&["plugin", "run", "thermal-zone"]),
        "grant the host directory read-only",
    );
}

#[test]
fn help_explains_the_commands() {
    let out = fleetmeter(&["plugin", "run", "--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for expected in [
        "--samples",
        "--config <KEY=VALUE>",
        "--dir <HOST[:GUEST]>",
        "--fuel",
    ] {
        assert!(help.contains(expected), "missing {expected} in:\n{help}");
    }
}

#[test]
fn run_without_a_device_id_exits_1_and_says_how_to_give_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .arg("run")
        .current_dir(repo_root())
        .env_remove("DEVICE_ID")
        .env_remove("FLEETMETER_CONFIG")
        .output()
        .unwrap();
    assert_clean_failure(&out, "a device id is required");
    assert!(stderr(&out).contains("DEVICE_ID"));
}

#[test]
fn run_refuses_bad_configuration_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "[round]\nsampling_perod = 5\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
            .args(args)
            .current_dir(repo_root())
            .env_remove("SAMPLING_PERIOD")
            .env_remove("FLEETMETER_CONFIG")
            .output()
            .unwrap()
    };
    assert_clean_failure(
        &run(&["run", "1", "--config", file.to_str().unwrap()]),
        "unknown field `sampling_perod`",
    );
    assert_clean_failure(
        &run(&["run", "1", "--period", "abc"]),
        "sampling period (from --period or SAMPLING_PERIOD)",
    );
    assert_clean_failure(
        &run(&["run", "1", "--sensor", "no-such-sensor"]),
        "no-such-sensor.wasm",
    );
}

#[test]
fn run_refuses_a_metrics_port_in_use_and_names_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(["run", "1", "--metrics-listen", &addr, "--zk", "127.0.0.1:1"])
        .current_dir(repo_root())
        .env_remove("FLEETMETER_CONFIG")
        .env_remove("ZK_HOST")
        .output()
        .unwrap();
    assert_clean_failure(&out, &format!("cannot serve metrics on {addr}"));
    assert!(stderr(&out).contains("--metrics-listen or FLEETMETER_METRICS_LISTEN"));
}

#[test]
fn run_check_prints_the_configuration_and_connects_to_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args([
            "run",
            "4",
            "--check",
            "--zk",
            "zk-a:2181,zk-b:2181",
            "--period",
            "2.5",
        ])
        .current_dir(repo_root())
        .env_remove("FLEETMETER_CONFIG")
        .env_remove("FLEETMETER_METRICS_LISTEN")
        .env("FLEETMETER_ZK_AUTH", "digest:fleet:zk-pass-4711")
        .env("FLEETMETER_API_TOKEN", "api-token-4711")
        .env("API_URL", "https://api.example/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "configuration OK",
        "device id:        4",
        "zookeeper:        zk-a:2181,zk-b:2181",
        "zk credentials:   user \"fleet\" (password hidden)",
        "sampling period:  2.5s",
        "api url:          https://api.example/ (format json, token set, hidden;",
        "sensor grants:    none (no files, environment or network)",
        "metrics, health:  127.0.0.1:9464",
    ] {
        assert!(text.contains(expected), "{expected:?} in {text}");
    }
    assert!(!text.contains("4711"), "no secret is printed: {text}");
    // A password in the API URL would be seeded into ZooKeeper: refused, and not echoed.
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(["run", "4", "--check"])
        .current_dir(repo_root())
        .env_remove("FLEETMETER_CONFIG")
        .env("API_URL", "https://meter:url-pass-4711@api.example/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("carries a password"), "{err}");
    assert!(!err.contains("4711"), "{err}");
}
