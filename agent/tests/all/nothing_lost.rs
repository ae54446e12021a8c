//! Nothing lost, visibly, with real parts only (ZooKeeper, Redis, the `fleetmeter-api`
//! binary, `fleetmeter run` processes): a ZooKeeper that lost its data and a root deleted by
//! hand, each refusal class the API (or a gateway in front of it) can answer, the outbox's
//! bound, and a fleet of 10,000 devices with 128-byte ids.

use std::{process::Command, time::Duration, time::Instant};

use crate::support::{
    fleet::{Fleet, PERIOD, SERIAL, fleetmeter, metric},
    wait_until,
};
use fleetmeter::coord::{Session, paths};
use fleetmeter_testkit::gateway::{Gateway, Mode};
use serde_json::Value;

/// Every stored round's `counter` is the previous stored round's plus its own `count`: the
/// counter is continuous across everything that happened to the fleet.
fn assert_counter_continues(rounds: &[Value]) {
    for pair in rounds.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(
            after["round"].as_u64() > before["round"].as_u64(),
            "round numbers only grow: {before} then {after}"
        );
        assert_eq!(
            after["counter"].as_i64().unwrap(),
            before["counter"].as_i64().unwrap() + after["count"].as_i64().unwrap(),
            "the counter continues: {before} then {after}"
        );
    }
}

/// Deletes `path` and everything under it in one multi, as an operator's `deleteall`
/// would; retried while live agents re-create nodes under it between the listing and the
/// delete.
async fn delete_all(session: &Session, path: &str) {
    let client = session.client().unwrap().into_client().chroot("/").unwrap();
    for _ in 0..100 {
        let mut stack = vec![path.to_owned()];
        let mut order = Vec::new();
        while let Some(node) = stack.pop() {
            if let Ok(children) = client.list_children(&node).await {
                stack.extend(children.iter().map(|c| format!("{node}/{c}")));
            }
            order.push(node);
        }
        let mut multi = client.new_multi_writer();
        for node in order.iter().rev() {
            multi.add_delete(node, None).unwrap();
        }
        if multi.commit().await.is_ok() {
            return;
        }
    }
    panic!("{path} could not be deleted");
}

/// The stored rounds above `after`, once there are `n` of them.
async fn rounds_above(fleet: &Fleet, after: u64, n: usize, what: &str) -> Vec<Value> {
    wait_until(what, Duration::from_secs(60), || async {
        fleet.rounds_after(after).await.len() >= n
    })
    .await;
    fleet.rounds_after(after).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_zookeeper_loses_its_data_or_its_root_the_fleet_continues_its_numbers_and_counter() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    fleet.round_once_joined(&["1", "2", "3"]).await;
    let before = fleet.wait_for_rounds(4, Duration::from_secs(30)).await;
    assert!(before.iter().all(|r| r["counter"].is_i64()), "{before:?}");

    // 1. ZooKeeper recreated without its data, while Redis keeps the rounds.
    let last = before.last().unwrap()["round"].as_u64().unwrap();
    fleet.zk.wipe();
    let back = Instant::now();
    let first = rounds_above(&fleet, last, 1, "a round published after the wipe").await;
    eprintln!(
        "after the wipe: first new round {} stored {:.1} s after ZooKeeper was back (period {:?})",
        first[0]["round"],
        back.elapsed().as_secs_f64(),
        PERIOD
    );
    let after_wipe = rounds_above(&fleet, last, 3, "rounds published after the wipe").await;
    // Every device follows the new state: the rounds after the first have all three.
    assert!(
        after_wipe[1..].iter().any(|r| r["count"] == 3),
        "all devices sample again: {after_wipe:?}"
    );

    // 2. The root deleted by hand while every session lives.
    let last = fleet.rounds().await.last().unwrap()["round"]
        .as_u64()
        .unwrap();
    let admin = fleet.admin().await;
    delete_all(&admin, "/fleetmeter").await;
    let deleted = Instant::now();
    let first = rounds_above(&fleet, last, 1, "a round published after the deleteall").await;
    eprintln!(
        "after the deleteall: first new round {} stored {:.1} s later",
        first[0]["round"],
        deleted.elapsed().as_secs_f64()
    );
    let after_delete = rounds_above(&fleet, last, 3, "rounds published after the deleteall").await;
    assert!(
        after_delete[1..].iter().any(|r| r["count"] == 3),
        "all devices sample again: {after_delete:?}"
    );

    // Nothing the API stores was overwritten or refused, numbers only grew, the counter went
    // on from the API's latest round each time.
    let all = fleet.rounds().await;
    assert_counter_continues(&all);
    let client = admin.client().unwrap();
    assert!(
        client
            .list_children(paths::REJECTED)
            .await
            .unwrap_or_default()
            .is_empty(),
        "no round was refused"
    );
    for id in ["1", "2", "3"] {
        let metrics = fleet.metrics(id).await;
        assert_eq!(
            metrics
                .get(r#"fleetmeter_published_total{outcome="refused"}"#)
                .copied()
                .unwrap_or(0.0),
            0.0,
            "device {id}"
        );
    }
    let log = fleet.agents.log("1") + &fleet.agents.log("2") + &fleet.agents.log("3");
    assert!(
        log.contains("started the fleet's state in ZooKeeper"),
        "the leader says what it did"
    );
    drop(client);
    admin.close().await;
    fleet.stop_all().await;
}

/// The `redis-cli` of Debian's redis-tools (installed with redis-server).
fn redis_cli(fleet: &Fleet, args: &[&str]) {
    let status = Command::new("redis-cli")
        .args(["-u", &fleet.redis_url])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("redis-cli (Debian's redis-tools)");
    assert!(status.success(), "redis-cli {args:?}");
}

/// The rejected rounds, as `fleetmeter outbox list --json` shows them.
fn listed(fleet: &Fleet) -> Vec<Value> {
    let out = fleetmeter(fleet, &["outbox", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rejected_with(fleet: &Fleet, status: u64) -> Vec<u64> {
    listed(fleet)
        .iter()
        .filter(|e| e["state"] == "rejected" && e["status"] == status)
        .map(|e| e["round"].as_u64().unwrap())
        .collect()
}

async fn wait_for_rejection(fleet: &Fleet, status: u64) -> Vec<u64> {
    wait_until(
        &format!("a round refused with {status} in the dead-letter place"),
        Duration::from_secs(30),
        || async { !rejected_with(fleet, status).is_empty() },
    )
    .await;
    rejected_with(fleet, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rounds_are_kept_shown_and_resent_redirects_wait_and_a_full_outbox_is_visible() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    let gateway = Gateway::start(fleet.api_port).await;
    // Bounded outbox: 12 rounds.
    let config = fleet.dir.path().join("bounded.toml");
    let toml = std::fs::read_to_string(fleet.dir.path().join("agent.toml"))
        .unwrap()
        .replace("[publish]\n", "[publish]\noutbox_max_rounds = 12\n");
    std::fs::write(&config, toml).unwrap();
    fleet.agent_env("API_URL", gateway.url());
    fleet.spawn_with_config("1", &config);
    fleet.wait_for_rounds(2, Duration::from_secs(30)).await;

    // 409: the API already holds a different round under the number the leader commits next.
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    let open = round_open(&client).await;
    let taken = open + 2;
    let conflicting = serde_json::json!({"round": taken, "value": -1.0, "count": 1,
        "devices": ["someone-else"], "aggregator": "mean@0.1.0", "leader": "someone-else",
        "ts": 1});
    let response = fleet
        .http
        .post(format!("{}api/v1/rounds", fleet.api_url()))
        .json(&conflicting)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(wait_for_rejection(&fleet, 409).await, [taken]);
    let status = fleetmeter(&fleet, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!("rejected: 1 round(s) the API refused: {taken}")),
        "{status}"
    );
    let list =
        String::from_utf8_lossy(&fleetmeter(&fleet, &["outbox", "list"]).stdout).into_owned();
    assert!(list.contains("HTTP 409"), "{list}");
    assert!(
        list.contains("is already stored with different content"),
        "{list}"
    );

    // 422 and 413 from a gateway in front of the API (a stricter API version, a body limit).
    gateway.set(Mode::answer(
        "422 Unprocessable Entity",
        r#"{"error":"invalid round: `unit` is not allowed by this API version"}"#,
    ));
    let unprocessable = wait_for_rejection(&fleet, 422).await;
    gateway.set(Mode::answer(
        "413 Payload Too Large",
        "request body larger than the gateway's limit",
    ));
    let too_large = wait_for_rejection(&fleet, 413).await;

    // A redirect is never followed and never refuses: the rounds wait in the outbox.
    gateway.set(Mode::redirect(
        "301 Moved Permanently",
        "http://elsewhere.invalid/",
    ));
    let answered = gateway.answered();
    wait_until(
        "the redirect answered twice",
        Duration::from_secs(30),
        || async { gateway.answered() >= answered + 2 },
    )
    .await;
    assert!(
        rejected_with(&fleet, 301).is_empty(),
        "a redirect is a transient failure"
    );
    assert!(
        fleet
            .agents
            .log("1")
            .contains("redirecting to http://elsewhere.invalid/"),
        "the log names the Location"
    );
    let metrics = fleet.metrics("1").await;
    assert!(metric(&metrics, "fleetmeter_outbox_rejected") >= 3.0);
    assert!(metric(&metrics, r#"fleetmeter_published_total{outcome="refused"}"#) >= 3.0);

    // The causes fixed: the gateway passes, the conflicting round is removed from the API.
    gateway.set(Mode::Pass);
    redis_cli(&fleet, &["DEL", &format!("fleetmeter:round:{taken}")]);
    redis_cli(&fleet, &["ZREM", "fleetmeter:rounds", &taken.to_string()]);
    let resend = fleetmeter(&fleet, &["outbox", "resend", "--all"]);
    assert!(
        resend.status.success(),
        "{}",
        String::from_utf8_lossy(&resend.stderr)
    );
    wait_until("the outbox to drain", Duration::from_secs(30), || async {
        listed(&fleet).is_empty()
    })
    .await;
    let rounds = fleet.rounds().await;
    let stored: Vec<u64> = rounds
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    for round in [taken].iter().chain(&unprocessable).chain(&too_large) {
        let found = rounds.iter().find(|r| r["round"] == *round);
        assert!(
            found.is_some_and(|r| r["leader"] == "1"),
            "round {round} re-sent and stored: {stored:?}"
        );
    }
    // Nothing lost: a round missing between two stored ones would break the counter's chain.
    assert_counter_continues(&rounds);

    // The bound: with the API down the outbox fills to 12, then /healthz says so and new
    // results are counted as dropped; when the API is back it drains and all is well.
    fleet.stop_api();
    wait_until("the outbox to fill", Duration::from_secs(40), || async {
        fleet.health("1").await.is_some_and(|(code, body)| {
            code == 503 && body.to_string().contains("the outbox is full")
        })
    })
    .await;
    wait_until("a dropped result", Duration::from_secs(10), || async {
        fleet
            .metrics("1")
            .await
            .get(r#"fleetmeter_results_dropped_total{reason="outbox_full"}"#)
            .is_some_and(|v| *v >= 1.0)
    })
    .await;
    assert_eq!(
        metric(&fleet.metrics("1").await, "fleetmeter_outbox_rounds"),
        12.0
    );
    fleet.start_api();
    wait_until("healthy again", Duration::from_secs(40), || async {
        fleet.health("1").await.is_some_and(|(code, _)| code == 200)
    })
    .await;
    let highest = fleet.rounds().await.last().unwrap()["round"]
        .as_u64()
        .unwrap();
    rounds_above(
        &fleet,
        highest,
        1,
        "a new round stored after the outbox drained",
    )
    .await;
    drop(client);
    admin.close().await;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_devices_with_the_longest_ids_publish_and_one_more_is_told_why_not() {
    use fleetmeter::wire::{DeviceReading, MAX_DEVICES, MAX_ID_BYTES, now_ms};
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    // A longer period: the simulated devices' readings are written in time for their round.
    fleet.agent_env("SAMPLING_PERIOD", "6".into());
    fleet.spawn("0");
    let open = fleet.round_once_joined(&["0"]).await;

    // 9,999 more devices, created directly, each with a 128-byte id and a reading for a
    // round two ahead (the one after next opens with all of them in place).
    let target = open + 2;
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    let ids: Vec<String> = (1..MAX_DEVICES)
        .map(|i| format!("{i:0>width$}", width = MAX_ID_BYTES))
        .collect();
    let created = Instant::now();
    for batch in ids.chunks(500) {
        let mut writes = tokio::task::JoinSet::new();
        for (i, id) in batch.iter().enumerate() {
            let (client, path) = (client.clone(), paths::device(id));
            let reading = serde_json::to_vec(&DeviceReading {
                round: target,
                value: 20.0 + (i % 10) as f64,
                ts: now_ms(),
                quantities: None,
                advert: Default::default(),
            })
            .unwrap();
            writes.spawn(async move {
                client
                    .create(
                        &path,
                        &reading,
                        &fleetmeter::coord::zk::CreateMode::Ephemeral
                            .with_acls(fleetmeter::coord::zk::Acls::anyone_all()),
                    )
                    .await
                    .map(|_| ())
            });
        }
        while let Some(done) = writes.join_next().await {
            done.unwrap().unwrap();
        }
    }
    eprintln!(
        "created {} device nodes in {:.1} s",
        ids.len(),
        created.elapsed().as_secs_f64()
    );
    assert!(
        round_open(&client).await < target,
        "the nodes were in place before round {target} opened"
    );

    wait_until(
        &format!("round {target} stored"),
        Duration::from_secs(60),
        || async { fleet.rounds().await.iter().any(|r| r["round"] == target) },
    )
    .await;
    let rounds = fleet.rounds().await;
    let big = rounds.iter().find(|r| r["round"] == target).unwrap();
    assert_eq!(big["count"], MAX_DEVICES as u64, "every device's reading");
    let devices = big["devices"].as_array().unwrap();
    assert_eq!(devices.len(), MAX_DEVICES);
    assert!(devices.iter().any(|d| d == &serde_json::json!(ids[0])));
    eprintln!(
        "round {target}: {} devices, {} bytes of JSON",
        devices.len(),
        serde_json::to_vec(big).unwrap().len()
    );
    // Published and cleaned up: no entry, no parts left.
    wait_until(
        "the outbox and its parts to empty",
        Duration::from_secs(30),
        || async {
            let results = client
                .list_children(paths::RESULTS)
                .await
                .unwrap_or_default();
            let parts = client.list_children(paths::PARTS).await.unwrap_or_default();
            results.is_empty() && parts.is_empty()
        },
    )
    .await;
    assert!(
        fleet
            .agents
            .log("0")
            .contains(&format!("round={target} value=")),
        "the leader committed it"
    );

    // One more is past the supported size: it says so and exits.
    fleet.spawn("one-too-many");
    let extra = fleet.agents.children.get_mut("one-too-many").unwrap();
    let started = Instant::now();
    let code = loop {
        if let Some(status) = extra.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the extra device did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(1));
    let log = fleet.agents.log("one-too-many");
    assert!(
        log.contains("the fleet already has 10000 devices, the most fleetmeter supports (10000"),
        "{log}"
    );
    drop(client);
    admin.close().await;
    fleet.stop_all().await;
}

/// The round open now.
async fn round_open(client: &fleetmeter::coord::FleetClient) -> u64 {
    fleetmeter::coord::barrier::current(client)
        .await
        .unwrap()
        .unwrap()
        .round
}
