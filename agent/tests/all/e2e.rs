//! The whole system with real parts only: a real ZooKeeper, a real Redis, the real
//! `fleetmeter-api` binary and several `fleetmeter run` processes with the real plugins.
//! Checked from the API's stored rounds and from ZooKeeper's state.

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use crate::support::{
    fixture,
    fleet::{
        Fleet, SERIAL, SESSION_TIMEOUT, config_with_sensor, final_check, fleetmeter, leader_of,
        metric, wait_for_outbox,
    },
    repo_root, wait_until,
};
use fleetmeter::coord::{dynconfig::Key, election, paths};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_publish_every_period_exactly_once() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    let rounds = fleet.wait_for_rounds(8, Duration::from_secs(60)).await;
    let full: Vec<&Value> = rounds.iter().filter(|r| r["count"] == 3).collect();
    assert!(
        full.len() >= 4,
        "rounds with all three devices: {rounds:#?}"
    );
    for r in &full {
        assert_eq!(r["devices"], serde_json::json!(["1", "2", "3"]));
        assert_eq!(r["aggregator"], "mean@0.1.0");
        assert_eq!(r["unit"], "°C");
        let v = r["value"].as_f64().unwrap();
        assert!((75.0..=85.0).contains(&v), "{v}");
        // Contract version 2 and later: each device's reading travels with the round, and
        // the mean aggregator's value is their mean.
        assert_eq!(r["version"], fleetmeter::wire::VERSION, "{r}");
        let values: Vec<f64> = r["values"]
            .as_array()
            .unwrap_or_else(|| panic!("values in {r}"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(values.len(), 3, "{r}");
        assert!(values.iter().all(|x| (75.0..=85.0).contains(x)), "{r}");
        let mean = values.iter().sum::<f64>() / 3.0;
        assert!(
            (mean - v).abs() < 1e-9,
            "value {v} is not the mean of {values:?}"
        );
    }
    // The API keeps each device's readings.
    let devices: Vec<Value> = reqwest::get(format!("{}api/v1/devices", fleet.api_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = devices.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3"], "{devices:?}");
    for d in &devices {
        let last = d["last_value"].as_f64().unwrap_or_else(|| panic!("{d}"));
        assert!((75.0..=85.0).contains(&last), "{d}");
    }
    // A fixed schedule: the median spacing of commits is the period.
    let mut gaps: Vec<u64> = rounds
        .windows(2)
        .map(|w| w[1]["ts"].as_u64().unwrap() - w[0]["ts"].as_u64().unwrap())
        .collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        (800..=1200).contains(&median),
        "median spacing {median} ms for a 1 s period: {gaps:?}"
    );
    let rounds = final_check(&mut fleet).await;
    assert!(rounds.len() >= 8);
    fleet.stop_all().await;
}

/// The API's page in headless Chromium with a real fleet's data: the leader is stopped
/// (SIGTERM), so there is a failover and a device that stops reporting. The page must mark the
/// leader change, the rounds without that device and its card, show values without float
/// noise, and log nothing to the console. The screenshots are for people to look at:
/// `target/page-screenshot.png`, and 390 px wide as on a phone, `-phone.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_marks_a_failover_and_a_stopped_device() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    fleet.round_once_joined(&["1", "2", "3"]).await;
    let rounds = fleet.wait_for_rounds(4, Duration::from_secs(60)).await;
    let leader = leader_of(rounds.last().unwrap());
    let status = fleet.signal(&leader, "TERM").wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    let new_leader = fleet
        .wait_for_new_leader(&leader, "SIGTERM", Duration::from_secs(60))
        .await;
    let rounds = fleet.rounds().await;
    let first_led = rounds
        .iter()
        .find(|r| leader_of(r) == new_leader && r["ts"].as_u64() > rounds[0]["ts"].as_u64())
        .map(|r| r["round"].as_u64().unwrap())
        .unwrap();
    let last = rounds.last().unwrap()["round"].as_u64().unwrap();
    wait_until(
        "3 rounds without the stopped device",
        Duration::from_secs(30),
        || async { fleet.rounds_after(last).await.len() >= 3 },
    )
    .await;

    let url = fleet.api_url();
    let shot = repo_root().join("target/page-screenshot.png");
    let phone = repo_root().join("target/page-screenshot-phone.png");
    let (dom, log) = {
        let (url, shot, phone) = (url.clone(), shot.clone(), phone.clone());
        tokio::task::spawn_blocking(move || {
            fleetmeter_testkit::chromium::screenshot(&url, &shot, 1000, 1400);
            fleetmeter_testkit::chromium::screenshot(&url, &phone, 390, 1500);
            fleetmeter_testkit::chromium::load(&url)
        })
        .await
        .unwrap()
    };
    eprintln!(
        "the page, as Chromium drew it: {} (and 390 px wide: {})",
        shot.display(),
        phone.display()
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(
        dom.contains(&format!(
            "<g class=\"mark-leader\" data-round=\"{first_led}\">"
        )),
        "the leader change at round {first_led}:\n{dom}"
    );
    assert!(
        dom.contains(&format!("leader {leader} → {new_leader}")),
        "{dom}"
    );
    assert!(
        dom.contains("class=\"point missing\""),
        "rounds without the stopped device are marked:\n{dom}"
    );
    assert!(dom.contains(&format!("missing: {leader}")), "{dom}");
    assert_eq!(dom.matches("<div class=\"device").count(), 3, "{dom}");
    assert!(
        dom.contains(&format!(
            "<div class=\"device stale\" data-device=\"{leader}\">"
        )),
        "the stopped device's card:\n{dom}"
    );
    assert!(dom.contains("not in the latest round"), "{dom}");
    for noise in ["00000", "99999"] {
        assert!(
            !dom.contains(noise),
            "float noise {noise} on the page:\n{dom}"
        );
    }
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_sigkill_and_sigterm_loses_and_doubles_nothing() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    let rounds = fleet.wait_for_rounds(3, Duration::from_secs(60)).await;
    let first_leader = leader_of(rounds.last().unwrap());

    // SIGKILL: the session must expire first, then another device leads. How long that
    // takes is measured by `scripts/bench-failover`, not asserted here.
    let mut killed = fleet.signal(&first_leader, "KILL");
    let killed_at = Instant::now();
    let _ = killed.wait();
    let second_leader = fleet
        .wait_for_new_leader(&first_leader, "SIGKILL", Duration::from_secs(60))
        .await;
    eprintln!("failover after SIGKILL: {:?}", killed_at.elapsed());

    // SIGTERM: the agent closes its session before it exits, so its ephemeral nodes are
    // already gone when the process is (no session timeout for the fleet to wait out).
    let mut stopped = fleet.signal(&second_leader, "TERM");
    let stopped_at = Instant::now();
    let status = stopped.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    assert_eq!(
        client
            .check_stat(&paths::device(&second_leader))
            .await
            .unwrap(),
        None,
        "device {second_leader}'s node outlived its process"
    );
    assert!(
        !election::contenders(&client)
            .await
            .unwrap()
            .contains(&second_leader),
        "device {second_leader}'s election node outlived its process"
    );
    drop(client);
    admin.close().await;
    assert!(
        fleet
            .log(&format!("agent-{second_leader}.log"))
            .contains("ZooKeeper session closed")
    );
    fleet
        .wait_for_new_leader(&second_leader, "SIGTERM", Duration::from_secs(30))
        .await;
    eprintln!("failover after SIGTERM: {:?}", stopped_at.elapsed());

    // A few more rounds with the last device, then the invariants.
    let n = fleet.rounds().await.len();
    fleet.wait_for_rounds(n + 2, Duration::from_secs(30)).await;
    final_check(&mut fleet).await;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_committed_while_the_api_is_down_are_all_stored_once_in_order() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    let stored_before = fleet
        .wait_for_rounds(2, Duration::from_secs(60))
        .await
        .len();
    fleet.stop_api();
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    wait_for_outbox(
        &client,
        4,
        "several rounds committed into the outbox",
        Duration::from_secs(30),
    )
    .await;
    drop(client);
    admin.close().await;
    fleet.start_api();
    let rounds = final_check(&mut fleet).await;
    assert!(
        rounds.len() >= stored_before + 4,
        "the outbox was delivered: {}",
        rounds.len()
    );
    let numbers: Vec<u64> = rounds
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (numbers[0]..=*numbers.last().unwrap()).collect();
    assert_eq!(numbers, expected, "every committed round stored, none lost");
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_recovers_from_zookeeper_restarts_without_process_restarts() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    fleet.wait_for_rounds(2, Duration::from_secs(60)).await;

    for (what, outage) in [("short", None), ("long", Some(SESSION_TIMEOUT * 3))] {
        let before = fleet.rounds().await.len();
        fleet.zk.stop();
        if let Some(outage) = outage {
            // Longer than the session timeout: sessions expire and are rebuilt.
            tokio::time::sleep(outage).await;
        }
        fleet.zk.restart();
        fleet
            .wait_for_rounds(before + 3, Duration::from_secs(60))
            .await;
        for (id, child) in fleet.agents.children.iter_mut() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "agent {id} still running after the {what} outage"
            );
        }
    }
    final_check(&mut fleet).await;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_is_swapped_by_agent_toml_and_live_through_zookeeper() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("aggregator = \"median\"\n").await;
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    let rounds = fleet.wait_for_rounds(2, Duration::from_secs(60)).await;
    assert_eq!(
        rounds.last().unwrap()["aggregator"],
        "median@0.1.0",
        "from agent.toml"
    );

    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    client
        .set_data(&Key::Aggregator.path(), b"trimmed-mean", None)
        .await
        .unwrap();
    wait_until(
        "rounds aggregated by trimmed-mean",
        Duration::from_secs(30),
        || async {
            fleet
                .rounds()
                .await
                .last()
                .is_some_and(|r| r["aggregator"] == "trimmed-mean@0.1.0")
        },
    )
    .await;
    // An unknown aggregator is refused; the last good one stays.
    client
        .set_data(&Key::Aggregator.path(), b"no-such-aggregator", None)
        .await
        .unwrap();
    let n = fleet.rounds().await.len();
    fleet.wait_for_rounds(n + 2, Duration::from_secs(30)).await;
    assert_eq!(
        fleet.rounds().await.last().unwrap()["aggregator"],
        "trimmed-mean@0.1.0"
    );
    drop(client);
    admin.close().await;
    final_check(&mut fleet).await;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_sensor_traps_contributes_nothing_and_the_fleet_goes_on() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    fleet.spawn("1");
    fleet.spawn("2");
    // Device 3 runs the misbehaving fixture, trapping on every sample.
    let trap_toml = config_with_sensor(
        &fleet,
        "trap",
        &fixture("misbehaving-sensor"),
        "[plugins.sensor_config]\nmode = \"trap\"\n",
    );
    fleet.spawn_with_config("3", &trap_toml);
    let open = fleet.round_once_joined(&["1", "2", "3"]).await;
    wait_until(
        "5 rounds opened after every device joined",
        Duration::from_secs(60),
        || async { fleet.rounds_after(open).await.len() >= 5 },
    )
    .await;
    for r in fleet.rounds_after(open).await {
        assert_eq!(r["devices"], serde_json::json!(["1", "2"]), "{r}");
    }
    let log = fleet.log("agent-3.log");
    assert!(
        log.contains("no reading this round"),
        "device 3 reports its failures"
    );
    assert!(
        fleet
            .agents
            .children
            .get_mut("3")
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "device 3 is alive"
    );
    final_check(&mut fleet).await;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_that_sleeps_or_floods_the_log_costs_its_reading_only() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    fleet.spawn("1");
    let sensor = fixture("misbehaving-sensor");
    // Device 2 sleeps an hour in every sample; device 3 logs 5000 lines per sample.
    let sleepy = config_with_sensor(
        &fleet,
        "sleepy",
        &sensor,
        "[plugins.sensor_config]\nmode = \"sleep\"\n[plugins.limits]\ntimeout_ms = 300\n",
    );
    let noisy = config_with_sensor(
        &fleet,
        "noisy",
        &sensor,
        "[plugins.sensor_config]\nmode = \"flood\"\nlines = 5000\n",
    );
    fleet.spawn_with_config("2", &sleepy);
    fleet.spawn_with_config("3", &noisy);
    let started = Instant::now();
    let open = fleet.round_once_joined(&["1", "2", "3"]).await;
    wait_until(
        "6 rounds opened after every device joined",
        Duration::from_secs(60),
        || async { fleet.rounds_after(open).await.len() >= 6 },
    )
    .await;
    // Rounds go on, on time; the sleeping device's reading is just missing.
    for r in fleet.rounds_after(open).await {
        assert_eq!(r["devices"], serde_json::json!(["1", "3"]), "{r}");
    }

    // The sleeping device keeps its session and says why it is unhealthy.
    let (status, health) = fleet.health("2").await.expect("device 2 answers /healthz");
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["session"], "connected", "{health}");
    let problems = health["problems"].to_string();
    assert!(
        problems.contains("the sensor plugin misbehaving-sensor has failed its last")
            && problems.contains("exceeded its time limit of 300ms per call"),
        "{health}"
    );
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    assert!(
        client
            .check_stat(&paths::device("2"))
            .await
            .is_ok_and(|s| s.is_some()),
        "device 2 is still a member"
    );
    drop(client);
    admin.close().await;

    // The noisy device's log stays within its budget: a burst of 100, then 10 a second.
    let log = fleet.log("agent-3.log");
    let flood = log.lines().filter(|l| l.contains("flood line")).count();
    let allowed = 100 + (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        flood <= allowed,
        "{flood} flood lines logged, at most {allowed} allowed"
    );
    assert!(
        log.contains("over the plugin's budget"),
        "summaries are logged"
    );

    // SIGTERM ends the sleeping device at once: its call in progress is dropped.
    let stopping = Instant::now();
    let status = fleet.signal("2", "TERM").wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        stopping.elapsed()
    );
    final_check(&mut fleet).await;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_config_set_against_a_running_fleet() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    fleet.wait_for_rounds(3, Duration::from_secs(60)).await;

    let out = fleetmeter(&fleet, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let leader = status["leader"].as_str().unwrap().to_owned();
    assert!(["1", "2", "3"].contains(&leader.as_str()), "{status}");
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    for m in members {
        assert!(m["reading"]["round"].as_u64().unwrap() >= 1, "{m}");
    }
    assert!(status["round"].as_u64().unwrap() >= 3);
    assert!(status["counter"].as_i64().unwrap() >= 3);
    assert_eq!(status["config"]["sampling_period"], "1");
    assert_eq!(status["config"]["aggregator"], "mean");
    let text = String::from_utf8(fleetmeter(&fleet, &["status"]).stdout).unwrap();
    assert!(text.contains(&format!("leader:   {leader}")), "{text}");
    assert!(text.contains(" (leader): "), "{text}");

    // Refused, with the reason, and nothing written.
    let plugin_dir = repo_root().join("plugins/dist");
    for (key, bad, reason) in [
        ("sampling_period", "0", "sampling_period must be positive"),
        ("sampling_period", "abc", "must be a number of seconds"),
        ("api_url", "localhost:4000", "api_url"),
        ("aggregator", "max", "not an installed aggregator plugin"),
        ("colour", "red", "unknown key"),
    ] {
        let out = fleetmeter(
            &fleet,
            &[
                "config",
                "set",
                key,
                bad,
                "--plugin-dir",
                plugin_dir.to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{key}={bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{key}={bad}: {err}");
    }
    let out = fleetmeter(&fleet, &["config", "get", "sampling_period"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");

    // A good value: every agent applies it, and rounds follow the new period.
    let out = fleetmeter(&fleet, &["config", "set", "sampling_period", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sampling_period = 2\n"
    );
    for id in ["1", "2", "3"] {
        wait_until(
            &format!("agent {id} to apply the period"),
            Duration::from_secs(10),
            || async {
                fleet.log(&format!("agent-{id}.log")).lines().any(|l| {
                    l.contains("configuration changed")
                        && l.contains("key=\"sampling_period\"")
                        && l.contains("value=2")
                })
            },
        )
        .await;
        let m = fleet.metrics(id).await;
        assert_eq!(metric(&m, "fleetmeter_sampling_period_seconds"), 2.0);
    }
    // The schedule of the rounds opened after every agent applied the period, averaged
    // over three gaps so that one late commit on a busy machine does not decide.
    let n = fleet.rounds().await.len();
    let rounds = fleet.wait_for_rounds(n + 5, Duration::from_secs(40)).await;
    let after: Vec<&Value> = rounds[n + 1..n + 5].iter().collect();
    let spacing = (after[3]["ts"].as_u64().unwrap() - after[0]["ts"].as_u64().unwrap())
        / (after[3]["round"].as_u64().unwrap() - after[0]["round"].as_u64().unwrap());
    assert!(
        (1700..=2300).contains(&spacing),
        "rounds now {spacing} ms apart: {after:?}"
    );
    final_check(&mut fleet).await;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_rounds_and_health_flips_with_zookeeper() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    let ids = ["1", "2", "3"];
    for id in ids {
        fleet.spawn(id);
    }
    fleet.wait_for_rounds(3, Duration::from_secs(60)).await;

    let leader = leader_of(fleet.rounds().await.last().unwrap());
    let mut before = BTreeMap::new();
    for id in ids {
        let m = fleet.metrics(id).await;
        let expected_leader = if id == leader { 1.0 } else { 0.0 };
        assert_eq!(
            metric(&m, "fleetmeter_leader"),
            expected_leader,
            "agent {id}"
        );
        // Only the leader keeps the member list (followers watch nothing under devices/).
        assert_eq!(
            metric(&m, "fleetmeter_members"),
            3.0 * expected_leader,
            "agent {id}"
        );
        assert_eq!(metric(&m, "fleetmeter_sampling_period_seconds"), 1.0);
        assert_eq!(
            metric(
                &m,
                "fleetmeter_zookeeper_session_state{state=\"connected\"}"
            ),
            1.0
        );
        assert_eq!(
            metric(
                &m,
                &format!(
                    "fleetmeter_agent_info{{device=\"{id}\",version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            1.0
        );
        let (code, health) = fleet.health(id).await.expect("/healthz answers");
        assert_eq!(code, 200, "agent {id}: {health}");
        assert_eq!(health["session"], "connected");
        assert_eq!(health["device"], id);
        before.insert(id, m);
    }
    let health_command = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
            .args(["health", "--address"])
            .arg(format!("127.0.0.1:{}", fleet.metrics_ports[id]))
            .output()
            .unwrap()
    };
    dashboard_metrics_are_exported(&fleet, &ids).await;
    let out = health_command("1");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"healthy\":true"));
    let n = fleet.rounds().await.len();
    fleet.wait_for_rounds(n + 3, Duration::from_secs(30)).await;
    // Stored rounds trail what the agents saw by up to a publish: wait for every counter
    // checked below to catch up rather than read them at one instant.
    let leader_counters = [
        "fleetmeter_rounds_committed_total",
        "fleetmeter_round_duration_seconds_count",
        "fleetmeter_published_total{outcome=\"stored\"}",
    ];
    let samples = "fleetmeter_samples_total{outcome=\"ok\"}";
    let caught_up = |id: &str, new: &BTreeMap<String, f64>| {
        let old = &before[id];
        let grown =
            |name: &str, by: f64| new.contains_key(name) && new[name] >= metric(old, name) + by;
        grown("fleetmeter_round", 3.0)
            && grown(samples, 3.0)
            && (id != leader
                || (leader_counters.iter().all(|c| grown(c, 3.0))
                    && grown("fleetmeter_readings_used_total", 9.0)))
    };
    for id in ids {
        wait_until(
            &format!("agent {id}'s metrics to show 3 more rounds"),
            Duration::from_secs(10),
            || async { caught_up(id, &fleet.metrics(id).await) },
        )
        .await;
    }
    for id in ids {
        let (old, new) = (&before[id], fleet.metrics(id).await);
        assert!(metric(&new, "fleetmeter_round") >= metric(old, "fleetmeter_round") + 3.0);
        assert!(
            metric(&new, samples) >= metric(old, samples) + 3.0,
            "agent {id}"
        );
        let calls = "fleetmeter_plugin_calls_total{kind=\"sensor\",plugin=\"random-temperature\"}";
        assert!(metric(&new, calls) > metric(old, calls));
        assert!(
            metric(
                &new,
                "fleetmeter_plugin_call_duration_seconds_count{kind=\"sensor\"}"
            ) > 0.0
        );
    }
    let (old, new) = (&before[leader.as_str()], fleet.metrics(&leader).await);
    for counter in leader_counters {
        assert!(
            metric(&new, counter) >= metric(old, counter) + 3.0,
            "{counter}: {} then {}",
            metric(old, counter),
            metric(&new, counter)
        );
    }
    let used = metric(&new, "fleetmeter_readings_used_total")
        - metric(old, "fleetmeter_readings_used_total");
    assert!(used >= 9.0, "3 readings per round: {used}");
    assert_eq!(metric(&new, "fleetmeter_last_round_readings"), 3.0);
    // A round committed a moment before the scrape may still be on its way to the API: the
    // backlog drains, it does not stay.
    wait_until(
        "the leader's backlog to drain",
        Duration::from_secs(10),
        || async { metric(&fleet.metrics(&leader).await, "fleetmeter_publish_backlog") == 0.0 },
    )
    .await;
    assert_eq!(metric(&new, "fleetmeter_leader_acquired_total"), 1.0);

    // ZooKeeper stops: every agent turns unhealthy and says why.
    fleet.zk.stop();
    for id in ids {
        wait_until(
            &format!("agent {id} to report unhealthy"),
            Duration::from_secs(20),
            || async { fleet.health(id).await.is_some_and(|(code, _)| code == 503) },
        )
        .await;
        let (_, health) = fleet.health(id).await.unwrap();
        assert_eq!(health["healthy"], false);
        assert!(
            !health["problems"].as_array().unwrap().is_empty(),
            "{health}"
        );
    }
    let out = health_command("1");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    eprintln!(
        "unhealthy while ZooKeeper is down: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // ... and healthy again once it is back and rounds close.
    fleet.zk.restart();
    for id in ids {
        wait_until(
            &format!("agent {id} to report healthy again"),
            Duration::from_secs(40),
            || async { fleet.health(id).await.is_some_and(|(code, _)| code == 200) },
        )
        .await;
    }
    let m = fleet.metrics(ids[0]).await;
    assert_eq!(
        metric(
            &m,
            "fleetmeter_zookeeper_session_state{state=\"connected\"}"
        ),
        1.0
    );
    final_check(&mut fleet).await;
    fleet.stop_all().await;
}

/// Every (panel title, PromQL expression) of the Grafana dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/dashboards/fleetmeter.json"))
            .unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            queries.push((
                title.to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    queries
}

/// Every metric the Grafana dashboard queries is exported by a running agent or the API
/// (families are named by their `# TYPE` lines; samples add _total, _bucket, ... suffixes).
async fn dashboard_metrics_are_exported(fleet: &Fleet, ids: &[&str]) {
    let mut urls: Vec<String> = ids.iter().map(|id| fleet.metrics_url(id)).collect();
    urls.push(format!("{}metrics", fleet.api_url()));
    let mut families = std::collections::BTreeSet::new();
    for url in urls {
        let text = fleet.scrape(&url).await;
        assert!(!text.is_empty(), "{url} answers");
        families.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned),
        );
    }
    let mut queried = std::collections::BTreeSet::new();
    for (_, expr) in dashboard_queries() {
        queried.extend(
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|t| t.starts_with("fleetmeter_"))
                .map(str::to_owned),
        );
    }
    assert!(queried.len() >= 10, "{queried:?}");
    let suffixes = ["", "_total", "_bucket", "_count", "_sum"];
    for name in &queried {
        assert!(
            families
                .iter()
                .any(|f| suffixes.iter().any(|s| name == &format!("{f}{s}"))),
            "the dashboard queries {name}, which no running agent or API exports \
             (exported: {families:?})"
        );
    }
}

/// Runs a PromQL query; `Err` is Prometheus' error (a query that does not parse, say).
async fn promql(
    http: &reqwest::Client,
    prometheus: &str,
    expr: &str,
) -> Result<Vec<Value>, String> {
    let body: Value = http
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(body.to_string());
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// A query's series by their `device` label.
fn by_device(series: &[Value]) -> BTreeMap<String, f64> {
    series
        .iter()
        .map(|s| {
            (
                s["metric"]["device"].as_str().unwrap().to_owned(),
                sample_value(s),
            )
        })
        .collect()
}

fn sample_value(series: &Value) -> f64 {
    series["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_return_data_from_prometheus_scraping_the_fleet() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    let ids = ["1", "2", "3"];
    for id in ids {
        fleet.spawn(id);
    }
    // The deployment's Prometheus configuration, its compose targets mapped to these processes
    // and its interval shortened so that rate windows fill quickly.
    let mut config =
        std::fs::read_to_string(repo_root().join("deploy/prometheus/prometheus.yml")).unwrap();
    for id in ids {
        config = config.replace(
            &format!("agent-{id}:9464"),
            &format!("127.0.0.1:{}", fleet.metrics_ports[id]),
        );
    }
    config = config
        .replace("api:4000", &format!("127.0.0.1:{}", fleet.api_port))
        .replace("scrape_interval: 5s", "scrape_interval: 1s");
    assert!(
        !config.contains("agent-") && !config.contains("api:"),
        "every compose target is mapped:\n{config}"
    );
    let prometheus = crate::support::prometheus::PrometheusServer::start(&config);
    let url = prometheus.url();
    let http = &fleet.http;
    wait_until(
        "Prometheus to scrape 4 targets up",
        Duration::from_secs(60),
        || async {
            promql(http, &url, "up == 1")
                .await
                .is_ok_and(|r| r.len() == 4)
        },
    )
    .await;

    for (title, expr) in dashboard_queries() {
        if let Err(err) = promql(http, &url, &expr).await {
            panic!("panel {title}: {expr} is refused: {err}");
        }
        wait_until(
            &format!("data for {expr} (panel {title})"),
            Duration::from_secs(60),
            || async { promql(http, &url, &expr).await.is_ok_and(|r| !r.is_empty()) },
        )
        .await;
    }
    // The joins mean what the panels say.
    let devices = by_device(
        &promql(
            http,
            &url,
            "fleetmeter_leader * on(instance) group_left(device) fleetmeter_agent_info",
        )
        .await
        .unwrap(),
    );
    assert_eq!(devices.keys().collect::<Vec<_>>(), ["1", "2", "3"]);
    assert_eq!(
        devices.values().filter(|v| **v == 1.0).count(),
        1,
        "{devices:?}"
    );
    let per_device = by_device(
        &promql(
            http,
            &url,
            "fleetmeter_sample_value * on(instance) group_left(device) fleetmeter_agent_info",
        )
        .await
        .unwrap(),
    );
    assert_eq!(per_device.keys().collect::<Vec<_>>(), ["1", "2", "3"]);
    assert!(
        per_device.values().all(|v| (75.0..=85.0).contains(v)),
        "each device's own reading: {per_device:?}"
    );
    let readings = promql(
        http,
        &url,
        "sum(fleetmeter_last_round_readings * fleetmeter_leader)",
    )
    .await
    .unwrap();
    assert_eq!(sample_value(&readings[0]), 3.0);
    let value = promql(http, &url, "fleetmeter_api_latest_value")
        .await
        .unwrap();
    assert!(
        (75.0..=85.0).contains(&sample_value(&value[0])),
        "{value:?}"
    );
    drop(prometheus);
    final_check(&mut fleet).await;
    fleet.stop_all().await;
}
