//! No measurement period lost, with real parts only (ZooKeeper, Redis, the `fleetmeter-api`
//! binary, `fleetmeter run` processes): the round in flight when the leader is stopped or
//! killed is finished by its successor, a round found far too late is given up visibly,
//! measuring starts and resumes with the API down, and agents of different wire versions
//! share one fleet.

use std::time::{Duration, Instant};

use crate::support::{
    fleet::{Fleet, PERIOD, SERIAL, final_check, fleetmeter, leader_of, metric, wait_for_outbox},
    wait_until,
};
use fleetmeter::coord::{barrier, paths};
use serde_json::Value;

/// Waits until the open round has been open for about `fraction` of a period, and returns it.
async fn round_open_for(fleet: &Fleet, fraction: f64) -> u64 {
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    let start = barrier::current(&client).await.unwrap().unwrap();
    // The next release, then `fraction` of a period into it.
    wait_until("the next release", Duration::from_secs(10), || async {
        barrier::current(&client)
            .await
            .is_ok_and(|s| s.is_some_and(|s| s.round > start.round))
    })
    .await;
    tokio::time::sleep(PERIOD.mul_f64(fraction)).await;
    let open = barrier::current(&client).await.unwrap().unwrap().round;
    drop(client);
    admin.close().await;
    open
}

/// The stored round `n`, once stored.
async fn stored(fleet: &Fleet, n: u64, deadline: Duration) -> Value {
    wait_until(&format!("round {n} stored"), deadline, || async {
        fleet.rounds().await.iter().any(|r| r["round"] == n)
    })
    .await;
    fleet
        .rounds()
        .await
        .into_iter()
        .find(|r| r["round"] == n)
        .unwrap()
}

fn ts(round: &Value) -> i64 {
    round["ts"].as_i64().unwrap()
}

/// Stops the leader with `signal` while round `open` is in flight, and checks that its
/// successor stored that very round with the readings the other devices wrote, taken over
/// `outcome`.
async fn the_successor_finishes_the_round(signal: &str, outcome: &str) {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    fleet.round_once_joined(&["1", "2", "3"]).await;
    let before = fleet.wait_for_rounds(3, Duration::from_secs(30)).await;
    let old = leader_of(before.last().unwrap());
    let open = round_open_for(&fleet, 0.4).await;
    let mut child = fleet.signal(&old, signal);
    let signalled = Instant::now();
    child.wait().unwrap();
    let exited = signalled.elapsed();

    let finished = stored(&fleet, open, Duration::from_secs(30)).await;
    let previous = stored(&fleet, open - 1, Duration::from_secs(5)).await;
    let successor = leader_of(&finished);
    assert_ne!(
        successor, old,
        "round {open} was finished by another device"
    );
    assert!(
        finished["count"].as_u64().unwrap() >= 2,
        "the readings the other devices wrote for round {open} are in it: {finished}"
    );
    eprintln!(
        "kill -{signal} of the leader {} ms into round {open}: exited after {:.1} ms; round {open} committed by {successor} {} ms after round {}",
        (PERIOD.as_millis() as f64 * 0.4) as u64,
        exited.as_secs_f64() * 1000.0,
        ts(&finished) - ts(&previous),
        open - 1
    );
    let metrics = fleet.metrics(&successor).await;
    assert_eq!(
        metric(
            &metrics,
            &format!(r#"fleetmeter_rounds_taken_over_total{{outcome="{outcome}"}}"#)
        ),
        1.0,
        "{successor} took round {open} over {outcome}"
    );
    assert!(
        fleet
            .agents
            .log(&successor)
            .contains("taking over the round in flight"),
        "the successor says what it does"
    );
    // Numbers continue without a gap: every round from before the stop on is stored.
    let next = stored(&fleet, open + 2, Duration::from_secs(30)).await;
    assert_eq!(leader_of(&next), successor);
    let rounds = final_check(&mut fleet).await;
    let numbers: Vec<u64> = rounds
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    let first = numbers[0];
    let contiguous: Vec<u64> = (first..first + numbers.len() as u64).collect();
    assert_eq!(numbers, contiguous, "no round skipped");
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigterm_of_the_leader_its_successor_finishes_the_round_at_its_deadline() {
    the_successor_finishes_the_round("TERM", "on_time").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_crashes_its_successor_finishes_the_round_late() {
    the_successor_finishes_the_round("KILL", "late").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_found_far_too_late_is_given_up_and_said_so() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::running("", &["1", "2"]).await;
    // The whole fleet stops while a round is open, and stays down longer than the
    // hand-over's grace (2 × session timeout + period, at least 30 s).
    let open = round_open_for(&fleet, 0.3).await;
    for id in ["1", "2"] {
        fleet.signal(id, "TERM").wait().unwrap();
    }
    assert_eq!(fleet.open_round().await, open, "nobody released past it");
    tokio::time::sleep(Duration::from_secs(33)).await;
    for id in ["1", "2"] {
        fleet.spawn(id);
    }
    let later = stored(&fleet, open + 2, Duration::from_secs(30)).await;
    let leader = leader_of(&later);
    assert!(
        !fleet.rounds().await.iter().any(|r| r["round"] == open),
        "round {open} was not published"
    );
    let metrics = fleet.metrics(&leader).await;
    assert_eq!(
        metric(
            &metrics,
            r#"fleetmeter_rounds_given_up_total{reason="too_late"}"#
        ),
        1.0
    );
    assert!(fleet.agents.log(&leader).contains(&format!(
        "GIVEN UP: round {open} was released by a previous leader"
    )));
    let status = fleetmeter(&fleet, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("given up: round {open} (too_late,")),
        "{text}"
    );
    final_check(&mut fleet).await;
    fleet.stop_all().await;
}

/// Checks the counter across rounds with and without `counter` (those committed while its
/// base was pending): every stored counter is the first one plus the counts since.
fn assert_counter_exact(rounds: &[Value]) {
    let mut running = rounds[0]["counter"].as_i64().unwrap();
    for round in &rounds[1..] {
        running += round["count"].as_i64().unwrap();
        if let Some(counter) = round["counter"].as_i64() {
            assert_eq!(counter, running, "the counter is exact at {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measuring_starts_and_resumes_with_the_api_down() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();

    // 1. A new fleet whose API is down for 15 s: rounds are measured and wait in the outbox.
    fleet.stop_api();
    let started = fleetmeter::wire::now_ms();
    let down = Instant::now();
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    fleet.round_once_joined(&["1", "2", "3"]).await;
    wait_for_outbox(
        &client,
        4,
        "rounds committed while the API is down",
        Duration::from_secs(30),
    )
    .await;
    let first = fleet.open_round().await;
    assert!(
        first >= fleetmeter::round::clock_round(started),
        "round numbers from the clock: {first}"
    );
    let status = fleetmeter(&fleet, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("counted from 0 since round"), "{text}");
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(down.elapsed())).await;

    fleet.start_api();
    let up = Instant::now();
    wait_for_outbox(&client, 0, "the outbox to drain", Duration::from_secs(30)).await;
    let rounds = fleet.rounds().await;
    eprintln!(
        "{} rounds measured with the API down for {:.1} s reached it {:.1} s after it came up",
        rounds.len(),
        (up - down).as_secs_f64(),
        up.elapsed().as_secs_f64()
    );
    let numbers: Vec<u64> = rounds
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    let contiguous: Vec<u64> = (numbers[0]..numbers[0] + numbers.len() as u64).collect();
    assert_eq!(
        numbers, contiguous,
        "a round for every period since the start"
    );
    // The base (nothing stored before: 0) is added once the API answers; from then on
    // rounds carry the counter again.
    wait_until("the counter's base", Duration::from_secs(30), || async {
        client
            .check_stat(paths::COUNTER_BASE)
            .await
            .is_ok_and(|s| s.is_none())
    })
    .await;
    let counted = wait_for_counted(&fleet, 2).await;

    // 2. ZooKeeper loses its data while the API is down: numbers continue from the clock,
    //    above everything stored; the counter continues once the API answers.
    let before = counted.last().unwrap()["round"].as_u64().unwrap();
    fleet.stop_api();
    drop(client);
    admin.close().await;
    fleet.zk.wipe();
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    wait_for_outbox(
        &client,
        3,
        "rounds committed after the wipe, API down",
        Duration::from_secs(60),
    )
    .await;
    fleet.start_api();
    wait_until(
        "a counted round after the wipe",
        Duration::from_secs(60),
        || async {
            fleet
                .rounds_after(before)
                .await
                .iter()
                .any(|r| r["counter"].is_i64())
        },
    )
    .await;
    let all = fleet.rounds().await;
    assert!(
        all.windows(2)
            .all(|w| w[0]["round"].as_u64() < w[1]["round"].as_u64()),
        "numbers only grow"
    );
    let from = all.iter().position(|r| r["counter"].is_i64()).unwrap();
    assert_counter_exact(&all[from..]);
    assert!(
        client
            .list_children(paths::REJECTED)
            .await
            .unwrap_or_default()
            .is_empty(),
        "nothing collided with what the API stores"
    );
    drop(client);
    admin.close().await;
    final_check(&mut fleet).await;
    fleet.stop_all().await;
}

/// Stored rounds, once `n` of them carry the counter.
async fn wait_for_counted(fleet: &Fleet, n: usize) -> Vec<Value> {
    wait_until(
        "rounds with the counter",
        Duration::from_secs(30),
        || async {
            fleet
                .rounds()
                .await
                .iter()
                .filter(|r| r["counter"].is_i64())
                .count()
                >= n
        },
    )
    .await;
    fleet.rounds().await
}

/// Writes `NAME.toml`: the fleet's agent.toml reading and writing wire versions up to 1.
fn version_1_config(fleet: &Fleet) -> std::path::PathBuf {
    let toml = std::fs::read_to_string(fleet.dir.path().join("agent.toml")).unwrap();
    assert!(toml.contains("[publish]\n"));
    let path = fleet.dir.path().join("v1.toml");
    std::fs::write(
        &path,
        toml.replacen("[publish]\n", "[publish]\nwire_version = 1\n", 1),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_coexist_results_follow_the_oldest_member_and_newer_entries_wait() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    let v1 = version_1_config(&fleet);
    fleet.spawn("1");
    fleet.spawn("2");
    fleet.spawn_with_config("3", &v1);
    let open = fleet.round_once_joined(&["1", "2", "3"]).await;

    // A member that reads only version 1: every result is version 1 (no per-device values).
    let joined = stored(&fleet, open + 2, Duration::from_secs(30)).await;
    assert!(
        joined.get("version").is_none() && joined.get("values").is_none(),
        "a version 1 round: {joined}"
    );
    let status = fleetmeter(&fleet, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!(
            "[fleetmeter {}, wire 1-1, sensor sha256:",
            fleetmeter::wire::AGENT_VERSION
        )),
        "{text}"
    );

    // Without it, the newest version again.
    fleet.signal("3", "TERM").wait().unwrap();
    let after = fleet.open_round().await;
    let v2 = stored(&fleet, after + 1, Duration::from_secs(30)).await;
    assert_eq!(v2["version"], fleetmeter::wire::VERSION, "{v2}");

    // Newer results wait in the outbox (API down); only the version-1 agent is left to lead:
    // it sets them aside, unchanged, and publishes its own.
    fleet.stop_api();
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    wait_for_outbox(&client, 2, "newer results waiting", Duration::from_secs(30)).await;
    for id in ["1", "2"] {
        fleet.signal(id, "TERM").wait().unwrap();
    }
    let mut waiting = client.list_children(paths::RESULTS).await.unwrap();
    waiting.sort();
    let mut set_aside = Vec::new();
    for name in &waiting {
        let path = format!("{}/{name}", paths::RESULTS);
        let (data, _) = client.get_data(&path).await.unwrap();
        let round: Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(round["version"], fleetmeter::wire::VERSION, "{round}");
        set_aside.push((path, data));
    }
    fleet.spawn_with_config("3", &v1);
    fleet.start_api();
    wait_until(
        "the version 1 leader's own rounds published",
        Duration::from_secs(30),
        || async {
            fleet
                .rounds()
                .await
                .last()
                .is_some_and(|r| leader_of(r) == "3")
        },
    )
    .await;
    let metrics = fleet.metrics("3").await;
    assert_eq!(
        metric(&metrics, "fleetmeter_outbox_newer_entries"),
        set_aside.len() as f64
    );
    for (path, data) in &set_aside {
        let (now, _) = client.get_data(path).await.expect("still there");
        assert_eq!(&now, data, "{path} unchanged");
    }
    assert!(fleet.agents.log("3").contains("set aside unchanged"));

    // A leader that reads their version publishes them.
    fleet.spawn("1");
    fleet.round_once_joined(&["1"]).await;
    fleet.signal("3", "TERM").wait().unwrap();
    wait_for_outbox(
        &client,
        0,
        "the set-aside rounds published",
        Duration::from_secs(30),
    )
    .await;
    let rounds = fleet.rounds().await;
    for (path, _) in &set_aside {
        let n: u64 = path.rsplit('/').next().unwrap().parse().unwrap();
        assert!(
            rounds
                .iter()
                .any(|r| r["round"] == n && r["version"] == fleetmeter::wire::VERSION),
            "round {n} published in its version"
        );
    }
    assert!(
        client
            .list_children(paths::REJECTED)
            .await
            .unwrap_or_default()
            .is_empty()
    );
    drop(client);
    admin.close().await;
    final_check(&mut fleet).await;

    // A round from a future version (one more field, the next version) is listed for what
    // it is.
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    // A round of the contract version after this one's (a field this agent does not know).
    let future = format!(
        r#"{{"round":999999,"value":1,"count":1,"devices":["1"],"aggregator":"a@1","leader":"1","ts":1,"version":{},"colour":{{}}}}"#,
        fleetmeter::wire::VERSION + 1
    );
    let future = future.as_bytes();
    client
        .create(
            &format!("{}/{:020}", paths::RESULTS, 999_999),
            future,
            &client.persistent(),
        )
        .await
        .unwrap();
    let listed = fleetmeter(&fleet, &["outbox", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("999999  newer") && text.contains("set aside for a newer leader"),
        "{text}"
    );
    drop(client);
    admin.close().await;
    fleet.stop_all().await;
}

/// An admin session on `root` of the fleet's ZooKeeper.
async fn admin_on(fleet: &Fleet, root: &str) -> fleetmeter::coord::Session {
    fleetmeter::coord::Session::connect(fleetmeter::coord::ZkSettings {
        connect_timeout: Duration::from_secs(20),
        ..fleetmeter::coord::ZkSettings::new(fleet.zk.hosts(), root)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_serves_two_fleets_that_numbered_their_rounds_from_the_clock() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    fleet.stop_api();
    let config = fleet.dir.path().join("agent.toml");
    let fleets = [("north", ["n1", "n2"]), ("south", ["s1", "s2"])];
    for (name, ids) in fleets {
        for id in ids {
            let env = [
                ("FLEETMETER_ROOT", format!("/{name}")),
                ("API_URL", format!("{}fleets/{name}/", fleet.api_url())),
                ("FLEETMETER_METRICS_LISTEN", "off".to_owned()),
            ];
            fleet.agents.spawn(id, &config, &env).unwrap();
        }
    }
    // Both measure with the API down: their numbers come from the same clock.
    let mut admins = Vec::new();
    for (name, _) in fleets {
        let admin = admin_on(&fleet, &format!("/{name}")).await;
        let client = admin.client().unwrap();
        wait_for_outbox(
            &client,
            3,
            &format!("{name}'s rounds waiting"),
            Duration::from_secs(60),
        )
        .await;
        admins.push(admin);
    }
    fleet.start_api();
    let mut numbers = Vec::new();
    for (admin, (name, ids)) in admins.iter().zip(fleets) {
        let client = admin.client().unwrap();
        wait_for_outbox(
            &client,
            0,
            &format!("{name}'s outbox to drain"),
            Duration::from_secs(30),
        )
        .await;
        assert!(
            client
                .list_children(paths::REJECTED)
                .await
                .unwrap_or_default()
                .is_empty(),
            "nothing of {name} refused as a conflict"
        );
        let rounds = fleet.rounds_at(&format!("fleets/{name}/")).await;
        assert!(rounds.len() >= 3, "{name}: {rounds:?}");
        for round in &rounds {
            for device in round["devices"].as_array().unwrap() {
                assert!(
                    ids.contains(&device.as_str().unwrap()),
                    "{name}'s round holds only its devices: {round}"
                );
            }
        }
        numbers.push(
            rounds
                .iter()
                .map(|r| r["round"].as_u64().unwrap())
                .collect::<std::collections::BTreeSet<u64>>(),
        );
    }
    eprintln!(
        "north and south stored rounds {:?} and {:?}; numbers in both: {}",
        numbers[0].first()..=numbers[0].last(),
        numbers[1].first()..=numbers[1].last(),
        numbers[0].intersection(&numbers[1]).count()
    );
    assert!(
        fleet.rounds().await.is_empty(),
        "the default fleet's paths hold neither"
    );
    for admin in admins {
        admin.close().await;
    }
    fleet.stop_all().await;
}
