//! The real-instrument sensors against real peers (pymodbus's Modbus/TCP server, Debian's
//! Prometheus, Python's http.server, a file tree shaped like sysfs), through `fleetmeter
//! plugin run` and in running fleets; and the network grants holding against them.

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use fleetmeter::plugin::{
    CallError, Failure, Grants, Limits, PluginSettings, SensorPlugin,
    network::{Endpoint, Origin},
};
use fleetmeter_testkit::{
    instruments::{self, JsonPeer, ModbusServer, SilentPeer},
    prometheus::PrometheusServer,
};

use crate::support::Single;
use crate::support::{
    cache_dir, engine,
    fleet::{Fleet, SERIAL, config_with_sensor},
    plugin, repo_root, wait_until,
};

fn plugin_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(["plugin", "run"])
        .args(args)
        .current_dir(repo_root())
        .env("FLEETMETER_CACHE_DIR", cache_dir())
        .env_remove("RUST_LOG")
        .output()
        .expect("run fleetmeter plugin run")
}

/// The values `plugin run` printed, one per line; panics with its stderr if it failed.
fn values(out: &Output) -> Vec<f64> {
    assert!(
        out.status.success(),
        "plugin run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("not a value: {l:?}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A sensor loaded in process with `config` and these grants.
async fn load(
    name: &str,
    config: &[(&str, &str)],
    grants: Grants,
    timeout_ms: u64,
) -> SensorPlugin {
    let settings = PluginSettings {
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        limits: Limits {
            timeout_ms,
            ..Limits::default()
        },
        grants,
    };
    SensorPlugin::load(&engine(), &plugin(name), settings)
        .await
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

fn connect(spec: &str) -> Grants {
    Grants {
        connect: vec![Endpoint::parse(spec).unwrap()],
        ..Grants::default()
    }
}

fn http(origin: &str) -> Grants {
    Grants {
        http: vec![Origin::parse(origin).unwrap()],
        ..Grants::default()
    }
}

/// The error of the first sample of a sensor loaded with `config` and `grants` (2 s limit).
async fn first_error(name: &str, config: &[(&str, &str)], grants: Grants) -> String {
    let mut sensor = load(name, config, grants, 2000).await;
    guest_error(sensor.sample().await.one())
}

fn guest_error(result: Result<f64, CallError>) -> String {
    match result {
        Err(CallError::Guest { message, .. }) => message,
        other => panic!("expected the plugin's error, got {other:?}"),
    }
}

#[test]
fn modbus_tcp_reads_every_type_and_names_an_exception() {
    let server = ModbusServer::start();
    let address = server.address();
    let grant = ["--connect", address.as_str()];
    for &(register, kind, order, expected) in instruments::HOLDING {
        let (register, kind, order) = (
            format!("register={register}"),
            format!("type={kind}"),
            format!("word_order={order}"),
        );
        let out = plugin_run(&[
            "modbus-tcp",
            "-n",
            "2",
            grant[0],
            grant[1],
            "-c",
            &format!("address={address}"),
            "-c",
            &register,
            "-c",
            &kind,
            "-c",
            &order,
        ]);
        assert_eq!(
            values(&out),
            [expected, expected],
            "{register} {kind} {order}"
        );
    }
    for &(register, expected) in instruments::INPUT {
        let out = plugin_run(&[
            "modbus-tcp",
            "-n",
            "1",
            grant[0],
            grant[1],
            "-c",
            &format!("address={address}"),
            "-c",
            &format!("register={register}"),
            "-c",
            "function=input",
            "-c",
            "scale=0.5",
            "-c",
            "offset=1",
        ]);
        assert_eq!(values(&out), [expected * 0.5 + 1.0]);
    }
    let out = plugin_run(&[
        "modbus-tcp",
        "-n",
        "1",
        grant[0],
        grant[1],
        "-c",
        &format!("address={address}"),
        "-c",
        &format!("register={}", instruments::PAST_THE_END),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Modbus exception 2 (illegal data address)"),
        "{err}"
    );
}

#[tokio::test]
async fn modbus_tcp_keeps_its_connection_and_reconnects_after_the_server_restarts() {
    let server = ModbusServer::start();
    let address = server.address();
    let config = [("address", address.as_str()), ("register", "11")];
    let mut sensor = load("modbus-tcp", &config, connect(&address), 2000).await;
    for _ in 0..3 {
        assert_eq!(sensor.sample().await.one().unwrap(), 2101.0);
    }
    assert_eq!(
        sensor.stats().instantiations,
        2,
        "describe + one live instance"
    );
    // The server goes away and comes back on the same port: one call fails or reconnects
    // within itself; the sensor reads again without a new instance.
    let port = server.port;
    drop(server);
    let refused = sensor.sample().await.one();
    assert!(refused.is_err(), "{refused:?}");
    let again = ModbusServer::start_on(port);
    assert_eq!(sensor.sample().await.one().unwrap(), 2101.0);
    assert_eq!(
        sensor.stats().failures,
        0,
        "errors, never a trap: {:?}",
        sensor.stats()
    );
    drop(again);
}

#[tokio::test]
async fn a_sensor_granted_one_address_reaches_no_other() {
    let server = ModbusServer::start();
    let other = ModbusServer::start();
    let fleet_like = ["zookeeper", "api"].map(|_| SilentPeer::start());
    let granted = server.address();
    // Another port on the same host, and two more services on loopback (as the fleet's
    // ZooKeeper and API would be): each refused, the error naming the grant to add.
    for target in [
        other.address(),
        format!("127.0.0.1:{}", fleet_like[0].port),
        format!("127.0.0.1:{}", fleet_like[1].port),
        format!("127.0.0.2:{}", server.port),
    ] {
        let config = [("address", target.as_str()), ("register", "11")];
        let err = first_error("modbus-tcp", &config, connect(&granted)).await;
        assert!(
            err.contains(&format!("grant it with `connect = [\"{target}\"]`")),
            "{target}: {err}"
        );
    }
    // No grant at all: refused the same way.
    let config = [("address", granted.as_str()), ("register", "11")];
    let err = first_error("modbus-tcp", &config, Grants::default()).await;
    assert!(
        err.contains("the sandbox refused a TCP connection"),
        "{err}"
    );
    for peer in fleet_like {
        assert_eq!(
            peer.connections(),
            0,
            "a refused connection never reaches the peer"
        );
    }
}

#[tokio::test]
async fn a_name_is_pinned_to_what_it_resolved_to_at_load() {
    let server = ModbusServer::start();
    // `localhost` resolves (here, at load) to loopback: the sensor connects by that name.
    let by_name = format!("localhost:{}", server.port);
    let config = [("address", by_name.as_str()), ("register", "12")];
    let mut sensor = load("modbus-tcp", &config, connect(&by_name), 2000).await;
    assert_eq!(sensor.sample().await.one().unwrap(), 2202.0);
    // An address the name might resolve to later (127.0.0.3 is loopback too, and the server
    // would answer there) is not the address it resolved to: refused.
    let later = format!("127.0.0.3:{}", server.port);
    let config = [("address", later.as_str()), ("register", "12")];
    let err = first_error("modbus-tcp", &config, connect(&by_name)).await;
    assert!(
        err.contains("refused a TCP connection to 127.0.0.3"),
        "{err}"
    );
    // Granted by address, asked by name: no lookups at all (no DNS channel), said so.
    let by_address = server.address();
    let config = [("address", by_name.as_str()), ("register", "12")];
    let err = first_error("modbus-tcp", &config, connect(&by_address)).await;
    assert!(
        err.contains("resolves names only when a `connect` grant names a host"),
        "{err}"
    );
}

#[tokio::test]
async fn a_peer_that_never_answers_costs_one_call_at_the_deadline() {
    let silent = SilentPeer::start();
    let address = format!("127.0.0.1:{}", silent.port);
    let config = [("address", address.as_str()), ("register", "0")];
    let mut sensor = load("modbus-tcp", &config, connect(&address), 500).await;
    for _ in 0..2 {
        let started = Instant::now();
        match sensor.sample().await.one() {
            Err(CallError::Failed {
                failure: Failure::Timeout(limit),
                ..
            }) => assert_eq!(limit, Duration::from_millis(500)),
            other => panic!("expected the time limit, got {other:?}"),
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "a hung peer held the call {took:?}"
        );
    }
    let url = format!("http://127.0.0.1:{}/status", silent.port);
    let origin = format!("http://127.0.0.1:{}", silent.port);
    let config = [("url", url.as_str()), ("pointer", "/t")];
    let mut sensor = load("http-json", &config, http(&origin), 500).await;
    let failed = sensor.sample().await.one();
    assert!(
        matches!(
            &failed,
            Err(CallError::Failed {
                failure: Failure::Timeout(_),
                ..
            })
        ) || matches!(&failed, Err(CallError::Guest { message, .. }) if message.contains("time limit")),
        "{failed:?}"
    );
    assert!(silent.connections() >= 3);
}

#[tokio::test]
async fn http_json_reads_a_page_and_follows_no_redirect() {
    let elsewhere = JsonPeer::start(r#"{"t": 99}"#, "");
    let status = r#"{"devices": {"1": {"t": 21.5}, "2": {"t": "22.25"}}, "ok": true}"#;
    let peer = JsonPeer::start(status, &format!("{}/status", elsewhere.origin()));
    let url = format!("{}/status", peer.origin());
    let out = plugin_run(&[
        "http-json",
        "-n",
        "2",
        "--http",
        &peer.origin(),
        "-c",
        &format!("url={url}"),
        "-c",
        "pointer=/devices/2/t",
        "-c",
        "scale=2",
    ]);
    assert_eq!(values(&out), [44.5, 44.5]);
    // A redirect to another origin: an error naming it, and the other origin never asked,
    // even when the plugin's grants include it (the host does not follow redirects).
    let redirect = format!("{}/redirect", peer.origin());
    for grants in [vec![peer.origin()], vec![peer.origin(), elsewhere.origin()]] {
        let mut args = vec!["http-json".to_owned(), "-n".into(), "1".into()];
        for g in &grants {
            args.extend(["--http".to_owned(), g.clone()]);
        }
        args.extend([
            "-c".into(),
            format!("url={redirect}"),
            "-c".into(),
            "pointer=/t".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = plugin_run(&args);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("HTTP 302")
                && stderr(&out).contains("redirects are not followed"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(elsewhere.hits(), 0, "the redirect's target was never asked");
    // Another origin than the granted one: refused before any request.
    let before = elsewhere.hits();
    let config_url = format!("url={}/status", elsewhere.origin());
    let out = plugin_run(&[
        "http-json",
        "-n",
        "1",
        "--http",
        &peer.origin(),
        "-c",
        &config_url,
        "-c",
        "pointer=/t",
    ]);
    assert!(
        stderr(&out).contains(&format!(
            "grant the origin with `http = [\"{}\"]`",
            elsewhere.origin()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(elsewhere.hits(), before);
    // A header whose value comes from an env grant.
    let token_url = format!("url={}/token", peer.origin());
    let out = plugin_run(&[
        "http-json",
        "-n",
        "1",
        "--http",
        &peer.origin(),
        "--env",
        "METER_TOKEN=s3cret",
        "-c",
        &token_url,
        "-c",
        "pointer=/t",
        "-c",
        "header=Authorization: Bearer $METER_TOKEN",
    ]);
    assert_eq!(values(&out), [1.5]);
    let out = plugin_run(&[
        "http-json",
        "-n",
        "1",
        "--http",
        &peer.origin(),
        "--env",
        "METER_TOKEN=wrong",
        "-c",
        &token_url,
        "-c",
        "pointer=/t",
        "-c",
        "header=Authorization: Bearer $METER_TOKEN",
    ]);
    assert!(stderr(&out).contains("HTTP 401"), "{}", stderr(&out));
}

/// Debian's Prometheus with two scrape jobs of 3 and 5 targets: its own /metrics then says
/// `prometheus_sd_discovered_targets{config="JOB",name="scrape"}` 3 and 5.
fn prometheus() -> PrometheusServer {
    let targets = |n: u16| {
        (1..=n)
            .map(|i| format!("\"127.0.0.1:{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    PrometheusServer::start(&format!(
        "global:\n  scrape_interval: 1h\nscrape_configs:\n  - job_name: three\n    \
         static_configs:\n      - targets: [{}]\n  - job_name: five\n    static_configs:\n      \
         - targets: [{}]\n",
        targets(3),
        targets(5)
    ))
}

#[test]
fn prometheus_reads_a_series_of_a_real_endpoint() {
    let server = prometheus();
    let origin = server.url();
    let url = format!("url={origin}/metrics");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "prometheus",
            "-n",
            "1",
            "--http",
            &origin,
            "-c",
            &url,
            "-c",
            "metric=prometheus_sd_discovered_targets",
        ];
        args.extend(extra);
        plugin_run(&args)
    };
    // Discovery fills in within seconds of the start.
    let start = Instant::now();
    loop {
        let out = run(&["-c", "labels=config=five,name=scrape"]);
        if out.status.success() && values(&out) == [5.0] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        values(&run(&["-c", "labels=config=three", "-c", "scale=10"])),
        [30.0]
    );
    assert_eq!(values(&run(&["-c", "reduce=sum"])), [8.0]);
    assert_eq!(values(&run(&["-c", "reduce=avg"])), [4.0]);
    let out = run(&[]);
    assert!(stderr(&out).contains("2 series match"), "{}", stderr(&out));
    let out = run(&["-c", "labels=config=nine"]);
    assert!(
        stderr(&out).contains("no series prometheus_sd_discovered_targets{config=\"nine\"}"),
        "{}",
        stderr(&out)
    );
}

/// A tree shaped like `/sys/bus/w1/devices` and `/sys/class/hwmon`.
fn sysfs(root: &Path) {
    let w1 = root.join("w1/28-000005e2fdc3");
    std::fs::create_dir_all(&w1).unwrap();
    std::fs::write(
        w1.join("w1_slave"),
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
    )
    .unwrap();
    let hwmon = root.join("hwmon/hwmon0");
    std::fs::create_dir_all(&hwmon).unwrap();
    std::fs::write(hwmon.join("temp1_input"), "45500\n").unwrap();
    std::fs::write(hwmon.join("name"), "coretemp\n").unwrap();
}

#[test]
fn file_reads_w1_and_hwmon_through_a_granted_directory() {
    let dir = tempfile::tempdir().unwrap();
    sysfs(dir.path());
    let w1 = format!("{}:/sys/bus/w1/devices", dir.path().join("w1").display());
    let out = plugin_run(&[
        "file",
        "-n",
        "1",
        "--dir",
        &w1,
        "-c",
        "path=/sys/bus/w1/devices/28-000005e2fdc3/w1_slave",
        "-c",
        r"regex=t=(-?\d+)",
        "-c",
        "scale=0.001",
    ]);
    assert_eq!(values(&out), [23.125]);
    let hwmon = format!("{}:/sys/class/hwmon", dir.path().join("hwmon").display());
    let out = plugin_run(&[
        "file",
        "-n",
        "1",
        "--dir",
        &hwmon,
        "-c",
        "path=/sys/class/hwmon/hwmon0/temp1_input",
        "-c",
        "scale=0.001",
    ]);
    assert_eq!(values(&out), [45.5]);
    // Outside the granted directory: refused at start, saying how to grant it.
    let out = plugin_run(&[
        "file",
        "-n",
        "1",
        "--dir",
        &w1,
        "-c",
        "path=/sys/class/hwmon/hwmon0/temp1_input",
    ]);
    assert!(
        stderr(&out).contains("grant the one holding it"),
        "{}",
        stderr(&out)
    );
}

/// Waits for rounds with all of `ids` and returns each device's value in the last one.
async fn per_device_values(fleet: &Fleet, ids: &[&str]) -> Vec<f64> {
    wait_until(
        "a round with every device's reading",
        Duration::from_secs(60),
        || async {
            fleet
                .rounds()
                .await
                .iter()
                .rev()
                .take(3)
                .any(|r| r["count"] == ids.len())
        },
    )
    .await;
    let rounds = fleet.rounds().await;
    let round = rounds
        .iter()
        .rev()
        .find(|r| r["count"] == ids.len())
        .unwrap();
    ids.iter()
        .map(|id| {
            let at = round["devices"]
                .as_array()
                .unwrap()
                .iter()
                .position(|d| d == id)
                .unwrap();
            round["values"][at].as_f64().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_fleet_of_modbus_devices_stores_what_the_server_serves() {
    let _serial = SERIAL.lock().await;
    let server = ModbusServer::start();
    let mut fleet = Fleet::start("").await;
    for (n, (register, _)) in instruments::PER_DEVICE.iter().enumerate() {
        let id = (n + 1).to_string();
        let config = config_with_sensor(
            &fleet,
            &format!("modbus-{id}"),
            &plugin("modbus-tcp"),
            &format!(
                "[plugins.sensor_config]\naddress = \"{}\"\nregister = {register}\nscale = 0.01\n\
                 [plugins.grants]\nconnect = [\"{}\"]\n",
                server.address(),
                server.address()
            ),
        );
        fleet.spawn_with_config(&id, &config);
    }
    let values = per_device_values(&fleet, &["1", "2", "3"]).await;
    let expected: Vec<f64> = instruments::PER_DEVICE
        .iter()
        .map(|(_, v)| v * 0.01)
        .collect();
    for (got, want) in values.iter().zip(&expected) {
        assert!((got - want).abs() < 1e-9, "{values:?} != {expected:?}");
    }
    // The same grant does not reach this fleet's own ZooKeeper or API, both on loopback.
    let zookeeper = format!("127.0.0.1:{}", fleet.zk.port);
    let config = [("address", zookeeper.as_str()), ("register", "0")];
    let err = first_error("modbus-tcp", &config, connect(&server.address())).await;
    assert!(
        err.contains(&format!("refused a TCP connection to {zookeeper}")),
        "{err}"
    );
    let api = format!("http://127.0.0.1:{}", fleet.api_port);
    let url = format!("{api}/api/v1/rounds");
    let config = [("url", url.as_str()), ("pointer", "/0/value")];
    let modbus_origin = format!("http://{}", server.address());
    let err = first_error("http-json", &config, http(&modbus_origin)).await;
    assert!(
        err.contains(&format!("refused an HTTP request to {api}")),
        "{err}"
    );
    fleet.stop_all().await;
}

#[tokio::test]
async fn a_fleet_of_http_prometheus_and_file_devices_stores_what_the_peers_serve() {
    let _serial = SERIAL.lock().await;
    let peer = JsonPeer::start(r#"{"devices": {"1": {"t": 21.5}}}"#, "");
    let prometheus = prometheus();
    let dir = tempfile::tempdir().unwrap();
    sysfs(dir.path());
    let mut fleet = Fleet::start("").await;
    // Three sensors of one value each, one quantity for the fleet (else each is its own,
    // named after its plugin).
    fleet.agent_env("FLEETMETER_QUANTITY", "temperature".into());
    let configs = [
        (
            "http-json",
            format!(
                "[plugins.sensor_config]\nurl = \"{}/status\"\npointer = \"/devices/1/t\"\n\
                 [plugins.grants]\nhttp = [\"{}\"]\n",
                peer.origin(),
                peer.origin()
            ),
        ),
        (
            "prometheus",
            format!(
                "[plugins.sensor_config]\nurl = \"{}/metrics\"\nmetric = \"prometheus_sd_discovered_targets\"\n\
                 labels = \"config=five\"\n[plugins.grants]\nhttp = [\"{}\"]\n",
                prometheus.url(),
                prometheus.url()
            ),
        ),
        (
            "file",
            format!(
                "[plugins.sensor_config]\npath = \"/sys/bus/w1/devices/28-000005e2fdc3/w1_slave\"\n\
                 regex = 't=(-?\\d+)'\nscale = 0.001\n[plugins.grants]\ndirs = [\"{}:/sys/bus/w1/devices\"]\n",
                dir.path().join("w1").display()
            ),
        ),
    ];
    for (n, (sensor, extra)) in configs.iter().enumerate() {
        let id = (n + 1).to_string();
        let config = config_with_sensor(&fleet, sensor, &plugin(sensor), extra);
        fleet.spawn_with_config(&id, &config);
    }
    // Prometheus fills in its discovered targets within seconds; device 2 reads 5 then.
    wait_until(
        "device 2 reads 5 discovered targets",
        Duration::from_secs(60),
        || async { per_device_values(&fleet, &["1", "2", "3"]).await[1] == 5.0 },
    )
    .await;
    assert_eq!(
        per_device_values(&fleet, &["1", "2", "3"]).await,
        [21.5, 5.0, 23.125]
    );
    fleet.stop_all().await;
}

#[test]
fn inspect_says_which_grants_a_sensor_may_ask_for() {
    let inspect = |name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
            .args(["plugin", "inspect", name])
            .current_dir(repo_root())
            .env("FLEETMETER_CACHE_DIR", cache_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let modbus = inspect("modbus-tcp");
    assert!(
        modbus.contains("may use:   TCP connections: a `connect` grant"),
        "{modbus}"
    );
    let json = inspect("http-json");
    assert!(json.contains("HTTP requests: an `http` grant"), "{json}");
    let mean = inspect("mean");
    assert!(
        !mean.contains("may use:"),
        "aggregators get no grants at all: {mean}"
    );
}

/// The `toml` blocks of the README and docs/instruments.md that configure an instrument
/// sensor load as an agent's configuration, grants included.
#[test]
fn the_documented_instrument_configurations_load() {
    let mut checked = 0;
    for page in ["README.md", "docs/instruments.md"] {
        let text = std::fs::read_to_string(repo_root().join(page)).unwrap();
        for block in text.split("```toml\n").skip(1) {
            let block = block.split("```").next().unwrap();
            if !block.contains("sensor = ") {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent.toml");
            std::fs::write(&path, block).unwrap();
            let config = fleetmeter::config::load(
                Some(&path),
                fleetmeter::config::Overrides {
                    id: Some("1".into()),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{page}:\n{block}\n{e}"));
            let grants = &config.sensor_settings.grants;
            assert!(
                !grants.connect.is_empty() || !grants.http.is_empty() || !grants.dirs.is_empty(),
                "{page}: an instrument example without its grant:\n{block}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} examples found");
}
