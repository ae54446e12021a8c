//! Shipping plugins to a running fleet, with real parts only (ZooKeeper, Redis, the API,
//! `fleetmeter run` processes, Debian's `minisign` where it is installed): no agent is
//! restarted in any of these. Sensors switch at the announced round, canaries are judged by
//! the leader, a trapping sensor is rolled back by itself, an aggregator runs in shadow,
//! untrusted or altered artifacts are refused while rounds go on, a leader killed
//! mid-rollout hands it over, and a device that joins mid-rollout runs the right plugin.

use std::{path::Path, process::Command, time::Duration};

use crate::support::{
    fixture,
    fleet::{Fleet, SERIAL, fleetmeter, leader_of},
    plugin, wait_until,
};
use fleetmeter::coord::barrier;
use serde_json::Value;

/// Runs `fleetmeter` on the fleet; panics with its output unless it succeeds.
fn ok(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleetmeter(fleet, args);
    assert!(
        out.status.success(),
        "fleetmeter {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a `fleetmeter` command that needs no fleet (keygen, sign).
fn local(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "fleetmeter {args:?} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key pair made by `fleetmeter plugin keygen` in DIR: the public key.
fn keygen(_fleet: &Fleet, dir: &Path) -> String {
    local(&["plugin", "keygen", "--out", dir.to_str().unwrap()])
        .trim()
        .to_owned()
}

/// Copies `wasm` into the fleet's directory as NAME.wasm, signs it with `secret`, publishes
/// it; returns `NAME@sha256:HEX` as `publish` printed it.
fn sign_and_publish(fleet: &Fleet, wasm: &Path, name: &str, secret: &Path) -> String {
    let file = fleet.dir.path().join(format!("{name}.wasm"));
    std::fs::copy(wasm, &file).unwrap();
    local(&[
        "plugin",
        "sign",
        file.to_str().unwrap(),
        "--secret-key",
        secret.to_str().unwrap(),
    ]);
    ok(fleet, &["plugin", "publish", file.to_str().unwrap()])
        .trim()
        .to_owned()
}

/// Starts a rollout of `reference` whose canaries switch `lead` rounds from now, with
/// `extra` options; returns that round.
async fn start_rollout(
    fleet: &Fleet,
    kind: &str,
    reference: &str,
    lead: u64,
    extra: &[&str],
) -> u64 {
    let at = fleet.open_round().await + lead;
    let at_round = at.to_string();
    let mut args = vec![
        "plugin",
        "rollout",
        kind,
        reference,
        "--at-round",
        &at_round,
    ];
    args.extend_from_slice(extra);
    ok(fleet, &args);
    at
}

/// Why the rollout took its last transition.
fn last_reason(record: &Value) -> String {
    record["history"].as_array().unwrap().last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn rollout_status(fleet: &Fleet) -> Value {
    serde_json::from_str(&ok(fleet, &["plugin", "rollout", "status", "--json"])).unwrap()
}

/// Waits until the rollout's state is `state`; returns the record.
async fn wait_for_state(fleet: &Fleet, state: &str, deadline: Duration) -> Value {
    wait_until(&format!("the rollout {state}"), deadline, || async {
        rollout_status(fleet)["state"] == state
    })
    .await;
    rollout_status(fleet)
}

/// Device `id`'s value in a stored round.
fn value_of(round: &Value, id: &str) -> Option<f64> {
    let devices = round["devices"].as_array()?;
    let at = devices.iter().position(|d| d == id)?;
    round["values"][at].as_f64()
}

/// The fleet's sensor reports °C (random-temperature): the rolled-out fixtures report the
/// same unit (raw-sensor reads it from its environment), so that their one value is the same
/// quantity as the fleet's, aggregated with it (a quantity whose unit differs between devices
/// is refused for the round).
const SAME_UNIT: &str = "[plugins.grants.env]\nFIXTURE_UNIT = \"°C\"\n";

/// A fleet of three whose agents trust the key made in `keys/`; returns the fleet and the
/// secret key's path.
async fn fleet_with_key() -> (Fleet, std::path::PathBuf) {
    let mut fleet = Fleet::start(SAME_UNIT).await;
    let keys = fleet.dir.path().join("keys");
    let public = keygen(&fleet, &keys);
    assert!(public.starts_with("RW"), "{public}");
    fleet.agent_env("FLEETMETER_TRUSTED_KEYS", public);
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    fleet.round_once_joined(&["1", "2", "3"]).await;
    fleet.wait_for_rounds(2, Duration::from_secs(30)).await;
    (fleet, keys.join("fleetmeter.key"))
}

/// The tutorial's path end to end: a sensor signed with Debian's `minisign` (the standard
/// tool, a peer nobody here wrote), published, canaried on one device, promoted by its gates; each device's stored
/// values switch at the announced rounds, and a device that joins mid-rollout runs what the
/// rollout says for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_is_canaried_on_one_device_then_promoted_at_the_announced_rounds() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start(SAME_UNIT).await;
    let keys = fleet.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (secret, public_file) = (keys.join("k.key"), keys.join("k.pub"));
    // The standard tool (Debian's `minisign`; scripts/test installs it): a key pair without a
    // password (-W), and the agents trust its public key.
    let made = Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&public_file)
        .arg("-s")
        .arg(&secret)
        .output()
        .expect("minisign is not installed: apt-get install minisign (scripts/test does)");
    assert!(made.status.success(), "{made:?}");
    let public = std::fs::read_to_string(&public_file)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    fleet.agent_env("FLEETMETER_TRUSTED_KEYS", public.clone());
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    fleet.round_once_joined(&["1", "2", "3"]).await;
    fleet.wait_for_rounds(2, Duration::from_secs(30)).await;

    let file = fleet.dir.path().join("one.wasm");
    std::fs::copy(fixture("raw-sensor"), &file).unwrap();
    let signed = Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&secret)
        .arg("-m")
        .arg(&file)
        .output()
        .unwrap();
    assert!(signed.status.success(), "{signed:?}");
    // Checked before publishing as the agents will check it (the .pub file as is).
    let published = ok(
        &fleet,
        &[
            "plugin",
            "publish",
            file.to_str().unwrap(),
            "--trusted-keys-file",
            public_file.to_str().unwrap(),
        ],
    );
    let reference = published.trim();
    assert!(reference.starts_with("raw-sensor@sha256:"), "{reference}");
    // The same bytes again: a no-op.
    let again = fleetmeter(&fleet, &["plugin", "publish", file.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already stored"),
        "{again:?}"
    );
    let listed = ok(&fleet, &["plugin", "list"]);
    assert!(listed.contains("raw-sensor@0.1.0"), "{listed}");

    let started = std::time::Instant::now();
    let at = start_rollout(
        &fleet,
        "sensor",
        reference,
        10,
        &["--canary", "2", "--rounds", "4"],
    )
    .await;
    // A second rollout while this one runs is refused, naming it.
    let second = fleetmeter(
        &fleet,
        &["plugin", "rollout", "sensor", reference, "--canary", "1"],
    );
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("rollout 1"),
        "{second:?}"
    );
    // A device that joins during the canary: not a canary, so it runs its own sensor until
    // the promotion.
    wait_until("the canary round", Duration::from_secs(30), || async {
        fleet.open_round().await >= at
    })
    .await;
    eprintln!(
        "canary switch {} s after `rollout`",
        started.elapsed().as_secs_f64()
    );
    fleet.spawn("4");
    let record = wait_for_state(&fleet, "promoted", Duration::from_secs(60)).await;
    let end = record["end_round"].as_u64().unwrap();
    assert_eq!(record["judged"]["rounds"], 4, "{record}");
    fleet.wait_for_round(end + 2, Duration::from_secs(30)).await;
    let rounds = fleet.rounds().await;
    for round in &rounds {
        let n = round["round"].as_u64().unwrap();
        for id in ["1", "2", "3", "4"] {
            let Some(v) = value_of(round, id) else {
                continue;
            };
            let switched = n >= end || (id == "2" && n >= at);
            assert_eq!(
                v == 1.0,
                switched,
                "round {n}, device {id}: value {v} (canary from {at}, everyone from {end})"
            );
        }
    }
    // Every round was stored: none lost to the switches.
    let numbers: Vec<u64> = rounds
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    // The status shows each device's digest, and the metrics carry it.
    let digest = reference.split("sha256:").nth(1).unwrap();
    let status = ok(&fleet, &["status"]);
    assert!(status.contains(&digest[..12]), "{status}");
    let metrics = fleet.scrape(&fleet.metrics_url("3")).await;
    assert!(
        metrics.contains(&format!("sha256=\"{digest}\"")),
        "{metrics}"
    );
    let round = rounds.last().unwrap();
    assert_eq!(round["rollout"]["state"], "promoted", "{round}");
    assert_eq!(round["version"], fleetmeter::wire::VERSION);
}

/// A sensor that traps on every call is rolled back by itself within its canary rounds;
/// no round is lost, and the canary reads its old sensor again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_sensor_is_rolled_back_by_itself_with_no_round_lost() {
    let _serial = SERIAL.lock().await;
    let (fleet, secret) = fleet_with_key().await;
    let reference = sign_and_publish(&fleet, &fixture("misbehaving-sensor"), "trap", &secret);
    let at = start_rollout(
        &fleet,
        "sensor",
        &reference,
        10,
        &["--canary", "1", "--config", "mode=trap", "--rounds", "5"],
    )
    .await;
    let record = wait_for_state(&fleet, "rolled_back", Duration::from_secs(60)).await;
    let end = record["end_round"].as_u64().unwrap();
    assert!(end <= at + 5 + 2, "rolled back at {end}, canary from {at}");
    let reason = last_reason(&record);
    assert!(reason.contains("failures gate"), "{reason}");
    fleet.wait_for_round(end + 2, Duration::from_secs(30)).await;
    let rounds = fleet.rounds().await;
    let numbers: Vec<u64> = rounds
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    for round in &rounds {
        let n = round["round"].as_u64().unwrap();
        let has_1 = value_of(round, "1").is_some();
        // The canary's readings are missing while it trapped, and back from the end round.
        if (at..end).contains(&n) {
            assert!(
                !has_1,
                "round {n} has device 1 while its sensor trapped: {round}"
            );
        } else if n >= end {
            assert!(
                has_1,
                "round {n} misses device 1 after the rollback: {round}"
            );
        }
    }
    let log = fleet.log("agent-1.log");
    assert!(log.contains("SWITCHED sensor"), "{log}");
}

/// An aggregator runs in shadow on the leader: its values are recorded beside the published
/// ones, in the stored rounds and the record, then it is promoted and publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_runs_in_shadow_then_is_promoted() {
    let _serial = SERIAL.lock().await;
    let (fleet, secret) = fleet_with_key().await;
    let reference = sign_and_publish(&fleet, &plugin("median"), "median", &secret);
    start_rollout(&fleet, "aggregator", &reference, 10, &["--rounds", "3"]).await;
    let record = wait_for_state(&fleet, "promoted", Duration::from_secs(60)).await;
    let end = record["end_round"].as_u64().unwrap();
    let shadow = record["shadow"].as_array().unwrap();
    assert_eq!(shadow.len(), 3, "{record}");
    fleet.wait_for_round(end + 1, Duration::from_secs(30)).await;
    let rounds = fleet.rounds().await;
    let mut shadowed = 0;
    for round in &rounds {
        let n = round["round"].as_u64().unwrap();
        let aggregator = round["aggregator"].as_str().unwrap();
        if n >= end {
            assert!(aggregator.starts_with("median@"), "round {n}: {round}");
        } else {
            assert!(aggregator.starts_with("mean@"), "round {n}: {round}");
        }
        if !round["shadow"].is_null() {
            shadowed += 1;
            assert!(
                round["shadow"]["aggregator"]
                    .as_str()
                    .unwrap()
                    .starts_with("median@")
            );
            // The shadow is the median of the same readings.
            let mut values: Vec<f64> = round["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            values.sort_by(f64::total_cmp);
            let median = if values.len() % 2 == 1 {
                values[values.len() / 2]
            } else {
                (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
            };
            let got = round["shadow"]["value"].as_f64().unwrap();
            assert!((got - median).abs() < 1e-9, "round {n}: {got} vs {median}");
        }
    }
    assert!(shadowed >= 3, "{shadowed} rounds with a shadow value");
    let status = ok(&fleet, &["plugin", "rollout", "status"]);
    assert!(
        status.contains("shadow (round: published | shadow)"),
        "{status}"
    );
}

/// Unsigned, signed by an untrusted key, a chunk altered in ZooKeeper: each refused by the
/// agents (logged, counted), the canary keeps its sensor, the rollout is rolled back, and
/// the fleet's rounds go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_or_altered_artifacts_are_refused_while_the_fleet_runs_on() {
    let _serial = SERIAL.lock().await;
    let (fleet, _secret) = fleet_with_key().await;
    // Unsigned.
    let unsigned = fleet.dir.path().join("unsigned.wasm");
    std::fs::copy(fixture("raw-sensor"), &unsigned).unwrap();
    let unsigned = ok(&fleet, &["plugin", "publish", unsigned.to_str().unwrap()]);
    // Signed by a key the agents do not trust.
    let other = fleet.dir.path().join("other");
    keygen(&fleet, &other);
    let stranger = sign_and_publish(
        &fleet,
        &fixture("misbehaving-sensor"),
        "stranger",
        &other.join("fleetmeter.key"),
    );
    // `publish --trusted-keys-file` refuses it up front, as the agents will.
    let refused = fleetmeter(
        &fleet,
        &[
            "plugin",
            "publish",
            fleet.dir.path().join("stranger.wasm").to_str().unwrap(),
            "--trusted-keys-file",
            fleet
                .dir
                .path()
                .join("keys/fleetmeter.pub")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not trust"),
        "{refused:?}"
    );
    // Altered after publication: one chunk rewritten in ZooKeeper.
    let altered = sign_and_publish(
        &fleet,
        &plugin("thermal-zone"),
        "altered",
        &fleet.dir.path().join("keys/fleetmeter.key"),
    );
    let digest = altered.split("sha256:").nth(1).unwrap().to_owned();
    {
        let admin = fleet.admin().await;
        let client = admin.client().unwrap();
        let chunk = format!("/artifacts/sha256-{digest}/c0000");
        let (mut data, _) = client.get_data(&chunk).await.unwrap();
        data[100] ^= 0xff;
        client.set_data(&chunk, &data, None).await.unwrap();
        drop(client);
        admin.close().await;
    }
    for (reference, expect) in [
        (unsigned.trim(), "unsigned"),
        (stranger.as_str(), "does not trust"),
        (altered.as_str(), "altered"),
    ] {
        let before = fleet.rounds().await.len();
        start_rollout(
            &fleet,
            "sensor",
            reference,
            8,
            &["--canary", "2", "--rounds", "3"],
        )
        .await;
        let record = wait_for_state(&fleet, "rolled_back", Duration::from_secs(60)).await;
        let reason = last_reason(&record);
        assert!(reason.contains("does not run the artifact"), "{reason}");
        assert!(reason.contains(expect), "{expect}: {reason}");
        let log = fleet.log("agent-2.log");
        assert!(log.contains("REFUSED a fleet plugin artifact"), "{log}");
        // The canary never ran it; the fleet stored rounds throughout.
        assert!(!log.contains("SWITCHED sensor"), "{log}");
        assert!(fleet.rounds().await.len() > before);
    }
    let metrics = fleet.metrics("2").await;
    for reason in ["signature", "bad_chunk"] {
        let key = format!("fleetmeter_artifacts_refused_total{{reason=\"{reason}\"}}");
        assert!(
            metrics.get(&key).copied().unwrap_or(0.0) >= 1.0,
            "{key}: {metrics:?}"
        );
    }
}

/// The leader killed mid-canary: the next leader continues the rollout from the stored
/// record and promotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_rollout_and_the_next_finishes_it() {
    let _serial = SERIAL.lock().await;
    let (mut fleet, secret) = fleet_with_key().await;
    let reference = sign_and_publish(&fleet, &fixture("raw-sensor"), "one", &secret);
    let leader = leader_of(fleet.rounds().await.last().unwrap());
    let canary = ["1", "2", "3"].into_iter().find(|d| *d != leader).unwrap();
    start_rollout(
        &fleet,
        "sensor",
        &reference,
        10,
        &["--canary", canary, "--rounds", "6"],
    )
    .await;
    wait_until(
        "two judged canary rounds",
        Duration::from_secs(40),
        || async { rollout_status(&fleet)["judged"]["rounds"].as_u64() >= Some(2) },
    )
    .await;
    fleet.signal(&leader, "KILL").wait().unwrap();
    let record = wait_for_state(&fleet, "promoted", Duration::from_secs(60)).await;
    let deciders: Vec<&str> = record["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["by"].as_str())
        .collect();
    assert!(
        deciders.last().is_some_and(|by| *by != leader),
        "promoted by {deciders:?}; the killed leader was {leader}"
    );
    // Judged exactly `rounds` rounds in all: none counted twice across the leaders.
    assert_eq!(record["judged"]["rounds"], 6, "{record}");
}

/// The artifact store against a real ZooKeeper: a plugin larger than one transaction is
/// written in several and is visible only once complete; the same bytes twice are a no-op;
/// an artifact over the reader's bound is refused before any chunk is read; a missing chunk,
/// an altered chunk and a manifest naming other bytes are each refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_artifact_store_checks_every_byte_it_hands_out() {
    use fleetmeter::{
        coord::{Session, ZkSettings},
        rollout::artifacts::{self, ArtifactError, Manifest, Published},
    };
    let zk = crate::support::zk::ZkServer::start();
    let session = Session::connect(ZkSettings {
        connect_timeout: Duration::from_secs(20),
        ..ZkSettings::new(zk.hosts(), "/store")
    })
    .await
    .unwrap();
    session.ensure_root().await.unwrap();
    let client = session.client().unwrap();
    let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let manifest = artifacts::describe(
        &bytes,
        Manifest {
            format: 0,
            name: "big".into(),
            version: "1.0.0".into(),
            kind: "sensor".into(),
            contract: "0.1.0".into(),
            unit: String::new(),
            sha256: String::new(),
            size: 0,
            chunk_bytes: 0,
            chunks: Vec::new(),
            signature: None,
            signer: None,
            published_at: 1,
        },
    );
    let digest = manifest.sha256.clone();
    let published = artifacts::publish(&client, &bytes, &manifest)
        .await
        .unwrap();
    let Published::Stored {
        transactions,
        bytes: written,
    } = published
    else {
        panic!("{published:?}")
    };
    assert_eq!(transactions, 2, "1 MB in transactions of at most 768 KiB");
    eprintln!("1,000,000 bytes stored as {written} bytes in {transactions} transactions");
    assert_eq!(
        artifacts::publish(&client, &bytes, &manifest)
            .await
            .unwrap(),
        Published::AlreadyThere
    );
    let (read, fetched) = artifacts::fetch(&client, &digest, 4 << 20).await.unwrap();
    assert_eq!(read, manifest);
    assert_eq!(fetched, bytes);
    // Every node has the root's ACL (here: open, as the root).
    let node = artifacts::node(&digest);
    let (acl, _) = client.get_acl(&format!("{node}/c0000")).await.unwrap();
    let (root_acl, _) = client.get_acl("/").await.unwrap();
    assert_eq!(acl, root_acl);

    // Over the reader's bound: refused from the manifest alone.
    let err = artifacts::fetch(&client, &digest, 512 * 1024)
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
    // A manifest that claims 20 MiB over no chunks at all: refused before any chunk read.
    let fake = "f".repeat(64);
    let mut huge = manifest.clone();
    huge.sha256 = fake.clone();
    huge.size = 20 << 20;
    huge.chunks = vec!["0".repeat(64); (20 << 20) / artifacts::CHUNK_BYTES];
    client
        .create(
            &artifacts::node(&fake),
            &serde_json::to_vec(&huge).unwrap(),
            &client.persistent(),
        )
        .await
        .unwrap();
    let err = artifacts::fetch(&client, &fake, 4 << 20).await.unwrap_err();
    assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");

    // An altered chunk.
    let chunk = format!("{node}/c0003");
    let (original, _) = client.get_data(&chunk).await.unwrap();
    let mut altered = original.clone();
    altered[0] ^= 1;
    client.set_data(&chunk, &altered, None).await.unwrap();
    let err = artifacts::fetch(&client, &digest, 4 << 20)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("chunk 3"), "{err}");
    assert_eq!(err.reason(), "bad_chunk");
    // A truncated chunk list.
    client.set_data(&chunk, &original, None).await.unwrap();
    client.delete(&format!("{node}/c0007"), None).await.unwrap();
    let err = artifacts::fetch(&client, &digest, 4 << 20)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("list"), "{err}");
    // A manifest naming other bytes.
    let mut other = manifest.clone();
    other.sha256 = "e".repeat(64);
    client
        .set_data(&node, &serde_json::to_vec(&other).unwrap(), None)
        .await
        .unwrap();
    let err = artifacts::fetch(&client, &digest, 4 << 20)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "bad_manifest", "{err}");
    // Unknown.
    let err = artifacts::fetch(&client, &"a".repeat(64), 4 << 20)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "unknown", "{err}");
    drop(client);
    session.close().await;
}

/// A rollout record of garbage is refused by every agent (logged, counted); the fleet's
/// rounds go on with the plugins it runs. Agents with no trusted key refuse rollouts, and
/// say both ways out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_record_and_an_agent_without_keys_refuse_and_the_fleet_runs_on() {
    let _serial = SERIAL.lock().await;
    let fleet = Fleet::running("", &["1", "2"]).await;
    {
        let admin = fleet.admin().await;
        let client = admin.client().unwrap();
        client
            .create(
                "/rollout",
                b"{\"id\": \"garbage\x1b[31m",
                &client.persistent(),
            )
            .await
            .unwrap();
        drop(client);
        admin.close().await;
    }
    wait_until(
        "the garbage record refused",
        Duration::from_secs(20),
        || async { fleet.log("agent-1.log").contains("does not parse") },
    )
    .await;
    let before = fleet.rounds().await.len();
    fleet
        .wait_for_rounds(before + 2, Duration::from_secs(20))
        .await;
    let metrics = fleet.metrics("1").await;
    assert!(
        metrics
            .get("fleetmeter_artifacts_refused_total{reason=\"bad_record\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{metrics:?}"
    );
    assert!(!fleet.log("agent-1.log").contains("\x1b[31m"), "escaped");
    let status = ok(&fleet, &["status"]);
    assert!(status.contains("does not parse"), "{status}");
    // A well-formed record naming an artifact that is not stored: refused by the agents
    // (`unknown`), the canary keeps its sensor and the rollout is rolled back.
    {
        let admin = fleet.admin().await;
        let client = admin.client().unwrap();
        let now = barrier::current(&client).await.unwrap().unwrap().round;
        let record = serde_json::json!({
            "id": 1, "kind": "sensor",
            "artifact": {"name": "ghost", "version": "1", "sha256": "b".repeat(64)},
            "canary": {"devices": ["1"]}, "rounds": 2, "state": "canary",
            "start_round": now + 4,
        });
        client
            .set_data("/rollout", &serde_json::to_vec(&record).unwrap(), None)
            .await
            .unwrap();
        drop(client);
        admin.close().await;
    }
    let record = wait_for_state(&fleet, "rolled_back", Duration::from_secs(40)).await;
    let reason = last_reason(&record);
    assert!(reason.contains("no artifact sha256:bbbb"), "{reason}");
    // Replace it with a real rollout: these agents trust no key.
    {
        let admin = fleet.admin().await;
        let client = admin.client().unwrap();
        client.delete("/rollout", None).await.unwrap();
        drop(client);
        admin.close().await;
    }
    let file = fleet.dir.path().join("one.wasm");
    std::fs::copy(fixture("raw-sensor"), &file).unwrap();
    let reference = ok(&fleet, &["plugin", "publish", file.to_str().unwrap()]);
    start_rollout(&fleet, "sensor", reference.trim(), 6, &["--canary", "1"]).await;
    let record = wait_for_state(&fleet, "rolled_back", Duration::from_secs(40)).await;
    let reason = last_reason(&record);
    assert!(reason.contains("trusted_keys"), "{reason}");
    assert!(reason.contains("allow_unsigned_rollouts"), "{reason}");
}

/// `--manual` waits after its gates pass until `promote`; `abort` sends the canaries back to
/// their previous sensor; `gc` removes what nothing references and keeps what the fleet runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_promotion_abort_and_gc() {
    let _serial = SERIAL.lock().await;
    let (fleet, secret) = fleet_with_key().await;
    let one = sign_and_publish(&fleet, &fixture("raw-sensor"), "one", &secret);
    start_rollout(
        &fleet,
        "sensor",
        &one,
        8,
        &["--canary", "3", "--rounds", "2", "--manual"],
    )
    .await;
    let record = wait_for_state(&fleet, "waiting", Duration::from_secs(40)).await;
    assert!(record["end_round"].is_null(), "{record}");
    let promoted = ok(&fleet, &["plugin", "rollout", "promote"]);
    assert!(promoted.contains("promoted"), "{promoted}");
    let record = rollout_status(&fleet);
    assert_eq!(record["state"], "promoted");
    assert!(
        record["history"].as_array().unwrap().last().unwrap()["by"]
            .as_str()
            .unwrap()
            .starts_with("cli:")
    );
    let end = record["end_round"].as_u64().unwrap();
    wait_until(
        "every device on the new sensor",
        Duration::from_secs(30),
        || async {
            fleet.rounds().await.iter().any(|r| {
                r["round"].as_u64().unwrap() >= end
                    && ["1", "2", "3"].iter().all(|d| value_of(r, d) == Some(1.0))
            })
        },
    )
    .await;

    // A second sensor, aborted by hand while in canary: the canary returns to `one`, the
    // fleet's sensor since the promotion (not to its own configuration).
    let counting = sign_and_publish(&fleet, &fixture("misbehaving-sensor"), "counting", &secret);
    let at = start_rollout(
        &fleet,
        "sensor",
        &counting,
        8,
        &[
            "--canary", "1", "--config", "mode=ok", "--config", "unit=°C", "--rounds", "100",
        ],
    )
    .await;
    wait_until("the canary running it", Duration::from_secs(40), || async {
        fleet.rounds().await.iter().any(|r| {
            r["round"].as_u64().unwrap() >= at && value_of(r, "1").is_some_and(|v| v != 1.0)
        })
    })
    .await;
    let aborted = ok(
        &fleet,
        &["plugin", "rollout", "abort", "--reason", "changed my mind"],
    );
    assert!(aborted.contains("aborted"), "{aborted}");
    let record = rollout_status(&fleet);
    assert_eq!(record["state"], "aborted");
    let end = record["end_round"].as_u64().unwrap();
    fleet.wait_for_round(end + 1, Duration::from_secs(30)).await;
    for r in fleet.rounds_after(end - 1).await {
        assert_eq!(
            value_of(&r, "1"),
            Some(1.0),
            "device 1 after the abort: {r}"
        );
    }

    // gc: an artifact nothing references goes; the fleet's sensor (`one`) and the aborted
    // rollout's artifact stay.
    let spare = sign_and_publish(&fleet, &plugin("median"), "spare", &secret);
    let spare_digest = spare.split("sha256:").nth(1).unwrap().to_owned();
    ok(&fleet, &["plugin", "gc", "--keep", "0"]);
    let listed = ok(&fleet, &["plugin", "list"]);
    assert!(!listed.contains(&spare_digest), "{listed}");
    for kept in [&one, &counting] {
        let digest = kept.split("sha256:").nth(1).unwrap();
        assert!(listed.contains(digest), "{kept} removed:\n{listed}");
    }
    assert!(
        listed.contains("the fleet's sensor since round"),
        "{listed}"
    );
}
