//! `fleetmeter replay` against the real API and Redis: stored rounds recomputed with `median`
//! and `trimmed-mean` from the readings stored with them, compared with the same aggregators
//! run directly (`fleetmeter plugin aggregate`); an older agent's round and a missing round are
//! reported, not guessed.

use std::process::Command;

use crate::support::{cache_dir, fleet::api_binary, repo_root};
use fleetmeter_testkit::{api::ApiServer, redis::RedisServer};
use serde_json::{Value, json};

const TOKEN: &str = "replay-token";

/// Five devices per round, so that trimming a fifth at each end changes the answer.
const ROUNDS: [[f64; 5]; 3] = [
    [78.1, 79.9, 80.3, 91.0, 79.5],
    [80.0, 80.2, 12.5, 80.1, 79.8],
    [79.6, 79.7, 79.8, 79.9, 80.0],
];

fn fleetmeter(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(args)
        .arg("--plugin-dir")
        .arg(repo_root().join("plugins/dist"))
        .arg("--cache-dir")
        .arg(cache_dir())
        .output()
        .expect("fleetmeter runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// What the aggregator says when run directly on `values` (devices 1..=5).
fn direct(aggregator: &str, config: &[&str], values: &[f64]) -> f64 {
    let mut args = vec!["plugin", "aggregate", aggregator];
    for c in config {
        args.extend(["--config", c]);
    }
    let readings: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{}={v}", i + 1))
        .collect();
    args.extend(readings.iter().map(String::as_str));
    let (stdout, stderr, ok) = fleetmeter(&args);
    assert!(ok, "{stderr}");
    stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{stdout:?}"))
}

#[tokio::test]
async fn replay_recomputes_stored_rounds_as_the_aggregator_run_directly_would() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let api = ApiServer::start(
        &api_binary(),
        &redis.url(),
        TOKEN,
        &logs.path().join("api.log"),
    );
    let http = reqwest::Client::new();
    let devices = ["1", "2", "3", "4", "5"];
    let mut bodies: Vec<Value> = ROUNDS
        .iter()
        .enumerate()
        .map(|(i, values)| {
            json!({
                "round": i + 1, "value": values.iter().sum::<f64>() / 5.0, "count": 5,
                "devices": devices, "aggregator": "mean@0.1.0", "leader": "1",
                "ts": 1_766_334_379_000_u64 + i as u64 * 1000, "unit": "°C",
                "version": 2, "values": values,
            })
        })
        .collect();
    // Round 4 from an older agent (version 1: no per-device values); round 5 never stored.
    bodies.push(json!({
        "round": 4, "value": 79.60000000000001, "count": 5, "devices": devices,
        "aggregator": "mean@0.1.0", "leader": "1", "ts": 1_766_334_383_000_u64,
    }));
    for body in &bodies {
        let status = http
            .post(format!("{}api/v1/rounds", api.url()))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, reqwest::StatusCode::CREATED);
    }

    for (aggregator, config) in [("median", vec![]), ("trimmed-mean", vec!["fraction=0.2"])] {
        let mut args = vec![
            "replay",
            "--api",
            api.url().leak(),
            "--rounds",
            "1..5",
            "--aggregator",
            aggregator,
            "--json",
        ];
        for c in &config {
            args.extend(["--config", c]);
        }
        let (stdout, stderr, ok) = tokio::task::spawn_blocking(move || fleetmeter(&args))
            .await
            .unwrap();
        assert!(ok, "{stderr}");
        let replayed: Vec<Value> = serde_json::from_str(&stdout).unwrap();
        assert_eq!(replayed.len(), 5, "{stdout}");
        for (i, values) in ROUNDS.iter().enumerate() {
            let r = &replayed[i];
            assert_eq!(r["round"], i + 1);
            assert_eq!(
                r["stored"], bodies[i]["value"],
                "the stored value, unchanged"
            );
            assert_eq!(
                r["recomputed"].as_f64(),
                Some(direct(aggregator, &config, values)),
                "{aggregator} on round {}: {r}",
                i + 1
            );
            assert!(r["aggregator"].as_str().unwrap().starts_with(aggregator));
        }
        assert_eq!(replayed[3]["recomputed"], Value::Null, "{stdout}");
        assert!(replayed[3]["why"].as_str().unwrap().contains("version 1"));
        assert_eq!(replayed[4], json!({"round": 5, "stored": null}));
    }
    // The medians differ from the means where a device read far off (rounds 1 and 2): what
    // replay is for.
    assert_eq!(direct("median", &[], &ROUNDS[1]), 80.0);

    // The table, as people read it: rounded values, the reasons spelled out.
    let url = api.url();
    let (table, stderr, ok) = tokio::task::spawn_blocking(move || {
        fleetmeter(&[
            "replay",
            "--api",
            &url,
            "--rounds",
            "1..5",
            "--aggregator",
            "median",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    assert!(table.contains("recomputed (median)"), "{table}");
    assert!(
        table.contains("+13.48"),
        "round 2: median 80 against a mean of 66.52: {table}"
    );
    assert!(
        table.contains("66.52 (mean)"),
        "round 2's mean, rounded: {table}"
    );
    assert!(
        table.contains("79.6 (mean)"),
        "round 4's stored value, rounded: {table}"
    );
    assert!(
        table.contains("version 1 round: no per-device readings"),
        "{table}"
    );
    assert!(table.contains("not stored"), "{table}");
    assert!(
        table.contains(
            "3 round(s) recomputed, 1 without per-device readings (version 1), 1 not stored"
        ),
        "{table}"
    );
    assert!(
        !table.contains("00000000") && !table.contains("99999999"),
        "{table}"
    );

    // Bad input is refused with the reason, before any request.
    let (_, stderr, ok) = fleetmeter(&[
        "replay",
        "--api",
        "http://127.0.0.1:9/",
        "--rounds",
        "5..1",
        "--aggregator",
        "median",
    ]);
    assert!(
        !ok && stderr.contains("the first round is after the last"),
        "{stderr}"
    );
    let (_, stderr, ok) = fleetmeter(&[
        "replay",
        "--api",
        &api.url(),
        "--rounds",
        "1",
        "--aggregator",
        "no-such-plugin",
    ]);
    assert!(
        !ok && stderr.contains("no plugin `no-such-plugin`"),
        "{stderr}"
    );
}
