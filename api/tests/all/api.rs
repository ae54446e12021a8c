//! The measurements API against a real Redis: every endpoint, every class of bad input, the
//! token, idempotency under concurrency, Redis going away and coming back.

use std::time::Duration;

use crate::support::{RedisServer, TestApi, round_json, wait_until};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

async fn post(client: &Client, api: &TestApi, body: &Value) -> (StatusCode, Value) {
    let response = client
        .post(api.url("/api/v1/rounds"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

async fn get_json(client: &Client, url: &str) -> (StatusCode, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

async fn stored_rounds(client: &Client, api: &TestApi) -> Vec<Value> {
    let (status, body) = get_json(client, &api.url("/api/v1/rounds?limit=1000")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().expect("an array").clone()
}

#[tokio::test]
async fn rounds_are_stored_listed_newest_first_and_fetched() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    for n in [3, 1, 2] {
        let (status, body) = post(&client, &api, &round_json(n, 80.0 + n as f64)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(
            body,
            json!({"round": n, "stored": true, "duplicate": false})
        );
    }
    let rounds = stored_rounds(&client, &api).await;
    let numbers: Vec<u64> = rounds
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2, 1], "newest (highest round) first");
    assert_eq!(rounds[0], round_json(3, 83.0), "stored exactly as sent");
    for key in [
        "round",
        "value",
        "count",
        "devices",
        "aggregator",
        "leader",
        "ts",
    ] {
        assert!(rounds[0].get(key).is_some(), "missing {key}");
    }

    let (_, limited) = get_json(&client, &api.url("/api/v1/rounds?limit=2")).await;
    assert_eq!(limited.as_array().unwrap().len(), 2);
    let (_, default) = get_json(&client, &api.url("/api/v1/rounds")).await;
    assert_eq!(default.as_array().unwrap().len(), 3);
    // `before`: where the counter stood before a round (an agent whose fleet started while
    // the API was down asks it).
    for (before, expected) in [("3", vec![2]), ("2", vec![1]), ("1", vec![]), ("0", vec![])] {
        let (status, below) = get_json(
            &client,
            &api.url(&format!("/api/v1/rounds?limit=1&before={before}")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let numbers: Vec<u64> = below
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["round"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, expected, "before={before}");
    }

    let (status, one) = get_json(&client, &api.url("/api/v1/rounds/2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, round_json(2, 82.0));
    let (status, missing) = get_json(&client, &api.url("/api/v1/rounds/99")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["error"], "round 99 is not stored");
    api.stop().await.expect("clean stop");
}

/// A version 2 round: each device's value in `values`, in the order of `devices`.
#[tokio::test]
async fn one_api_serves_several_fleets_each_under_its_own_path() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    // Two fleets that numbered their rounds alike (both from the clock, say): no conflict.
    for (fleet, value) in [("north", 81.0), ("south", 62.0)] {
        let response = client
            .post(api.url(&format!("/fleets/{fleet}/api/v1/rounds")))
            .json(&round_json(17_650_000_000, value))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{fleet}");
    }
    for (fleet, value) in [("north", 81.0), ("south", 62.0)] {
        let (status, rounds) =
            get_json(&client, &api.url(&format!("/fleets/{fleet}/api/v1/rounds"))).await;
        assert_eq!(status, StatusCode::OK);
        let rounds = rounds.as_array().unwrap();
        assert_eq!(rounds.len(), 1, "{fleet}");
        assert_eq!(rounds[0]["value"], value, "{fleet}");
        let (status, one) = get_json(
            &client,
            &api.url(&format!("/fleets/{fleet}/api/v1/rounds/17650000000")),
        )
        .await;
        assert_eq!((status, &one["value"]), (StatusCode::OK, &json!(value)));
        let (status, devices) = get_json(
            &client,
            &api.url(&format!("/fleets/{fleet}/api/v1/devices")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(!devices.as_array().unwrap().is_empty(), "{fleet}");
        let page = client
            .get(api.url(&format!("/fleets/{fleet}/")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.text().await.unwrap().contains("17650000000"));
    }
    // The default fleet (the root paths) is a third one, untouched.
    assert!(stored_rounds(&client, &api).await.is_empty());
    // A name that could escape its keys or its URL is refused.
    for bad in ["a:b", "a.b", "a%20b", "x".repeat(65).as_str()] {
        let (status, error) =
            get_json(&client, &api.url(&format!("/fleets/{bad}/api/v1/rounds"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {error}");
        assert!(
            error["error"].as_str().unwrap().contains("fleet"),
            "{error}"
        );
    }
    api.stop().await.expect("clean stop");
}

fn round_v2(round: u64, readings: &[(&str, f64)]) -> Value {
    let values: Vec<f64> = readings.iter().map(|(_, v)| *v).collect();
    let mut body = round_json(round, values.iter().sum::<f64>() / values.len() as f64);
    body["count"] = json!(readings.len());
    body["devices"] = json!(readings.iter().map(|(d, _)| *d).collect::<Vec<_>>());
    body["version"] = json!(2);
    body["values"] = json!(values);
    body
}

#[tokio::test]
async fn devices_and_their_readings_come_from_the_stored_rounds() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    // Device 3 stops after round 2; round 4 comes from an older agent (version 1: no values)
    // and names device 4, which no version 2 round has.
    let bodies = [
        round_v2(1, &[("1", 80.1), ("2", 79.5), ("3", 81.0)]),
        round_v2(2, &[("1", 80.2), ("2", 79.6), ("3", 81.1)]),
        round_v2(3, &[("1", 80.3), ("2", 79.7)]),
        {
            let mut old = round_json(4, 80.0);
            old["devices"] = json!(["1", "2", "4"]);
            old
        },
    ];
    for body in &bodies {
        let (status, answer) = post(&client, &api, body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let rounds = stored_rounds(&client, &api).await;
    assert_eq!(rounds[1], bodies[2], "a version 2 round is stored as sent");
    assert_eq!(rounds[0], bodies[3], "so is a version 1 round");

    let (status, devices) = get_json(&client, &api.url("/api/v1/devices")).await;
    assert_eq!(status, StatusCode::OK, "{devices}");
    let by_id = |id: &str| {
        devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("device {id} in {devices}"))
            .clone()
    };
    assert_eq!(devices.as_array().unwrap().len(), 4, "{devices}");
    assert_eq!(
        by_id("1"),
        json!({"id": "1", "last_round": 3, "last_seen": bodies[2]["ts"], "last_value": 80.3,
               "recent_rounds": 4, "missed_recently": 0})
    );
    let stopped = by_id("3");
    assert_eq!(stopped["last_round"], 2);
    assert_eq!(stopped["last_value"], 81.1);
    assert_eq!(
        stopped["missed_recently"], 2,
        "rounds 3 and 4 went without it"
    );
    let old_only = by_id("4");
    assert_eq!(
        old_only["last_value"],
        Value::Null,
        "only a version 1 round names it"
    );
    assert_eq!(old_only["missed_recently"], 3);

    let (status, readings) =
        get_json(&client, &api.url("/api/v1/devices/1/readings?limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{readings}");
    assert_eq!(
        readings,
        json!([
            {"round": 3, "value": 80.3, "ts": bodies[2]["ts"]},
            {"round": 2, "value": 80.2, "ts": bodies[1]["ts"]},
        ]),
        "newest first"
    );
    let (_, all) = get_json(&client, &api.url("/api/v1/devices/3/readings")).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (status, unknown) = get_json(&client, &api.url("/api/v1/devices/9/readings")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
    let (status, bad) = get_json(&client, &api.url("/api/v1/devices/1/readings?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("`limit`"), "{bad}");

    // A replay of a stored round changes nothing; a version 2 round whose values do not
    // match its devices is refused, naming the field.
    let (status, _) = post(&client, &api, &bodies[0]).await;
    assert_eq!(status, StatusCode::OK);
    let mut short = round_v2(5, &[("1", 1.0), ("2", 2.0)]);
    short["values"] = json!([1.0]);
    let (status, refused) = post(&client, &api, &short).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("`values`"),
        "{refused}"
    );
    let next = fleetmeter_wire::VERSION + 1;
    let mut future = round_v2(5, &[("1", 1.0)]);
    future["version"] = json!(next);
    let (status, refused) = post(&client, &api, &future).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains(&format!("`version` {next}")),
        "{refused}"
    );
    let (_, readings) = get_json(&client, &api.url("/api/v1/devices/1/readings")).await;
    assert_eq!(
        readings.as_array().unwrap().len(),
        3,
        "nothing stored twice or refused"
    );
    api.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_replay_is_a_duplicate_and_different_content_is_a_conflict() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    let round = round_json(7, 80.5);
    assert_eq!(post(&client, &api, &round).await.0, StatusCode::CREATED);
    let (status, body) = post(&client, &api, &round).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"round": 7, "stored": false, "duplicate": true})
    );

    let (status, body) = post(&client, &api, &round_json(7, 99.0)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"],
        "round 7 is already stored with different content"
    );
    assert_eq!(body["stored"], round, "the 409 shows what is stored");
    let rounds = stored_rounds(&client, &api).await;
    assert_eq!(rounds, vec![round], "the first write wins");
}

#[tokio::test]
async fn fifty_concurrent_replays_of_one_round_store_it_exactly_once() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    let round = round_json(42, 81.25);
    let posts: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            let url = api.url("/api/v1/rounds");
            let round = round.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&round)
                    .send()
                    .await
                    .expect("request")
                    .status()
            })
        })
        .collect();
    let mut created = 0;
    let mut duplicates = 0;
    for post in posts {
        match post.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => duplicates += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((created, duplicates), (1, 49));
    assert_eq!(stored_rounds(&client, &api).await, vec![round]);
    let metrics = api.state.metrics.render();
    assert!(
        metrics.contains("fleetmeter_api_rounds_stored_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fleetmeter_api_round_duplicates_total 49\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx_and_stores_nothing() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    let with = |key: &str, value: Value| {
        let mut body = round_json(1, 80.0);
        body[key] = value;
        body.to_string()
    };
    let without = |key: &str| {
        let mut body = round_json(1, 80.0);
        body.as_object_mut().unwrap().remove(key);
        body.to_string()
    };
    let huge = format!(
        r#"{{"round":1,"value":1,"count":1,"devices":["{}"],"aggregator":"a","leader":"1","ts":1}}"#,
        "x".repeat(fleetmeter_api::routes::MAX_BODY)
    );
    let json = "application/json";
    let cases: Vec<(&str, String, &str, StatusCode)> = vec![
        (
            "non-numeric value",
            with("value", json!("abc")),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "NaN literal",
            round_json(1, 80.0).to_string().replace("80.0", "NaN"),
            json,
            StatusCode::BAD_REQUEST,
        ),
        (
            "out-of-range number (1e999)",
            round_json(1, 80.0).to_string().replace("80.0", "1e999"),
            json,
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing field",
            without("devices"),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            with("colour", json!("red")),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "count mismatch",
            with("count", json!(5)),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "zero readings",
            with("count", json!(0)),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "negative round",
            with("round", json!(-1)),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "not JSON",
            "round=1".to_owned(),
            json,
            StatusCode::BAD_REQUEST,
        ),
        (
            "truncated JSON",
            r#"{"round":1,"#.to_owned(),
            json,
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong content type",
            round_json(1, 80.0).to_string(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        ("oversized body", huge, json, StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (what, body, content_type, expected) in cases {
        let response = client
            .post(api.url("/api/v1/rounds"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{what}");
        let error: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: no JSON error body: {e}"));
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {error}"
        );
    }

    for (what, path) in [
        ("non-numeric dato", "/nuevo?dato=abc"),
        ("NaN dato", "/nuevo?dato=NaN"),
        ("infinite dato", "/nuevo?dato=inf"),
        ("missing dato", "/nuevo"),
        ("limit zero", "/api/v1/rounds?limit=0"),
        ("limit too large", "/api/v1/rounds?limit=1001"),
        ("limit not a number", "/api/v1/rounds?limit=ten"),
        ("before not a number", "/api/v1/rounds?before=-1"),
        ("round not a number", "/api/v1/rounds/ten"),
    ] {
        let (status, error) = get_json(&client, &api.url(path)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {error}");
        assert!(error["error"].is_string(), "{what}: {error}");
    }

    assert!(
        stored_rounds(&client, &api).await.is_empty(),
        "nothing stored"
    );
    assert!(
        api.state.store.values(10).await.unwrap().is_empty(),
        "no /nuevo value stored"
    );
    let (status, _) = get_json(&client, &api.url("/no/such/endpoint")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_original_nuevo_call_stores_values_with_server_time() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    for v in ["81.5", "83", "-2.25"] {
        let (status, body) = get_json(&client, &api.url(&format!("/nuevo?dato={v}"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["stored"], true);
        assert!(body["ts"].as_u64().unwrap() > 1_700_000_000_000);
    }
    let values = api.state.store.values(10).await.unwrap();
    let stored: Vec<f64> = values.iter().map(|v| v.value).collect();
    assert_eq!(stored, [-2.25, 83.0, 81.5], "newest first");
    let page = client
        .get(api.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("----&gt; 83 °C"),
        "the page lists them like the original"
    );
}

#[tokio::test]
async fn with_a_token_writes_need_it_and_reads_do_not() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, Some("s3cret")).await;
    let client = Client::new();
    let url = api.url("/api/v1/rounds");
    let round = round_json(1, 80.0);

    let response = client.post(&url).json(&round).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = client
        .post(&url)
        .bearer_auth("wrong")
        .json(&round)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = client.get(api.url("/nuevo?dato=1")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(stored_rounds(&client, &api).await.is_empty());

    let response = client
        .post(&url)
        .bearer_auth("s3cret")
        .json(&round)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = client
        .get(api.url("/nuevo?dato=1"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for path in [
        "/",
        "/api/v1/rounds",
        "/api/v1/rounds/1",
        "/metrics",
        "/healthz",
    ] {
        let status = client.get(api.url(path)).send().await.unwrap().status();
        assert_eq!(status, StatusCode::OK, "{path} is a read");
    }
}

#[tokio::test]
async fn redis_down_gives_503_and_the_api_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    assert_eq!(
        post(&client, &api, &round_json(1, 80.0)).await.0,
        StatusCode::CREATED
    );

    redis.stop();
    let (status, body) = post(&client, &api, &round_json(2, 80.0)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("storage unavailable"),
        "{body}"
    );
    let (status, _) = get_json(&client, &api.url("/api/v1/rounds")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, health) = get_json(&client, &api.url("/healthz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["status"], "unavailable");
    let page = client.get(api.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        api.state
            .metrics
            .render()
            .contains("fleetmeter_api_redis_errors_total")
    );

    // Same port, empty (no persistence): the API reconnects without a restart.
    redis.restart();
    wait_until(
        "healthz to report Redis back",
        Duration::from_secs(15),
        || async {
            client
                .get(api.url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        },
    )
    .await;
    assert_eq!(
        post(&client, &api, &round_json(2, 80.0)).await.0,
        StatusCode::CREATED
    );
    api.stop().await.expect("clean stop");
}

#[tokio::test]
async fn metrics_follow_the_stored_rounds() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    post(&client, &api, &round_json(5, 81.5)).await;
    post(&client, &api, &round_json(4, 70.0)).await; // older: the latest gauges stay
    post(&client, &api, &round_json(5, 81.5)).await; // duplicate
    let response = client.get(api.url("/metrics")).send().await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    for line in [
        "fleetmeter_api_rounds_stored_total 2",
        "fleetmeter_api_round_duplicates_total 1",
        "fleetmeter_api_latest_round 5",
        "fleetmeter_api_latest_value 81.5",
        r#"fleetmeter_api_http_requests_total{method="POST",route="/api/v1/rounds",status="201"} 2"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    assert!(text.contains("fleetmeter_api_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn the_binary_serves_and_stops_cleanly_on_sigterm() {
    let redis = RedisServer::start();
    let port = crate::support::free_port();
    let mut child = std::process::Command::new(crate::support::api_binary())
        .env("API_LISTEN", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis.url())
        .env_remove("API_TOKEN")
        .env("API_ALLOW_ANONYMOUS_WRITES", "true")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start fleetmeter-api");
    let client = Client::new();
    let health = format!("http://127.0.0.1:{port}/healthz");
    wait_until(
        "the binary to answer /healthz",
        Duration::from_secs(15),
        || async {
            client
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        },
    )
    .await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no exit 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "SIGTERM is a clean stop: {exit}");
}

#[tokio::test]
async fn the_binary_explains_a_bad_listen_address() {
    let output = std::process::Command::new(crate::support::api_binary())
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--listen"), "{err}");
}

/// The binary's secure defaults: no start without a write token (unless anonymous writes
/// are allowed on purpose), the legacy GET write off, the token file read, and no password
/// of the Redis URL in its log.
#[tokio::test]
async fn the_binary_needs_a_token_and_serves_no_legacy_write_by_default() {
    let redis = RedisServer::start();
    let refused = std::process::Command::new(crate::support::api_binary())
        .env("API_LISTEN", "127.0.0.1:0")
        .env("REDIS_URL", redis.url())
        .env_remove("API_TOKEN")
        .env_remove("API_TOKEN_FILE")
        .env_remove("API_ALLOW_ANONYMOUS_WRITES")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("no write token") && err.contains("API_ALLOW_ANONYMOUS_WRITES"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token-31337\n").unwrap();
    let port = crate::support::free_port();
    let log = dir.path().join("api.log");
    let _api = Killed(
        std::process::Command::new(crate::support::api_binary())
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .env("REDIS_URL", redis.url())
            .env("API_TOKEN_FILE", &token_file)
            .env_remove("API_TOKEN")
            .env_remove("API_LEGACY_QUERY")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let client = Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until("the binary to serve", Duration::from_secs(15), || async {
        client.get(format!("{base}/healthz")).send().await.is_ok()
    })
    .await;
    let nuevo = client
        .get(format!("{base}/nuevo?dato=1"))
        .bearer_auth("file-token-31337")
        .send()
        .await
        .unwrap();
    assert_eq!(nuevo.status(), StatusCode::NOT_FOUND);
    assert!(nuevo.text().await.unwrap().contains("API_LEGACY_QUERY"));
    let anonymous = client
        .post(format!("{base}/api/v1/rounds"))
        .json(&round_json(1, 80.0))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let with = client
        .post(format!("{base}/api/v1/rounds"))
        .bearer_auth("file-token-31337")
        .json(&round_json(1, 80.0))
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), StatusCode::CREATED, "the token file's token");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("fleetmeter-api serving"), "{logged}");
    assert!(!logged.contains("31337"), "{logged}");
}

/// A password in the Redis URL never reaches the log (here Redis is not even up: the API
/// says so, with the URL, without the password).
#[tokio::test]
async fn the_redis_password_is_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("api.log");
    let port = crate::support::free_port();
    let _api = Killed(
        std::process::Command::new(crate::support::api_binary())
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "REDIS_URL",
                format!(
                    "redis://:hunter2-31337@127.0.0.1:{}/",
                    crate::support::free_port()
                ),
            )
            .env("API_ALLOW_ANONYMOUS_WRITES", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let client = Client::new();
    wait_until("the binary to answer", Duration::from_secs(15), || async {
        client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("redis://:***@127.0.0.1"), "{logged}");
    assert!(!logged.contains("hunter2"), "{logged}");
}

/// A child process killed when the test ends, passing or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Clients cannot multiply the request metric's series: made-up methods and paths fold into
/// one label each.
#[tokio::test]
async fn made_up_methods_and_paths_do_not_grow_the_metrics() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        let _ = client
            .request(method, api.url(&format!("/nope/{i}")))
            .send()
            .await
            .unwrap();
    }
    let text = client
        .get(api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = text
        .lines()
        .filter(|l| l.starts_with("fleetmeter_api_http_requests_total{"))
        .count();
    assert!(series <= 3, "{text}");
    assert!(!text.contains("X1") && !text.contains("/nope/"), "{text}");
}

/// A version 4 round of two quantities: temperature from every device, humidity from two.
fn round_v4(round: u64) -> Value {
    json!({
        "round": round, "value": 21.5, "count": 3, "devices": ["1", "2", "3"],
        "aggregator": "mean@0.1.0", "leader": "1", "ts": 1_766_334_379_000u64 + round,
        "unit": "Cel", "version": 4, "values": [21.0, 21.5, 22.0],
        "quantities": [
            {"name": "temperature", "unit": "Cel", "value": 21.5, "values": [21.0, 21.5, 22.0]},
            {"name": "humidity", "unit": "%", "value": 41.0, "values": [40.0, null, 42.0]}
        ]
    })
}

#[tokio::test]
async fn rounds_of_several_quantities_are_stored_with_each_devices_values() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    let (status, body) = post(&client, &api, &round_v4(7)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        stored_rounds(&client, &api).await[0],
        round_v4(7),
        "stored as sent"
    );
    // Each device's readings: the primary quantity's value and its whole sample.
    let (_, readings) = get_json(&client, &api.url("/api/v1/devices/2/readings")).await;
    assert_eq!(
        readings[0]["quantities"],
        json!([{"name": "temperature", "value": 21.5, "unit": "Cel"}]),
        "device 2 carried no humidity"
    );
    assert_eq!(readings[0]["value"], 21.5);
    let (_, devices) = get_json(&client, &api.url("/api/v1/devices")).await;
    assert_eq!(
        devices[0]["last_quantities"][1],
        json!({"name": "humidity", "value": 40.0, "unit": "%"}),
        "{devices}"
    );
    // The metrics have a `quantity` label.
    let metrics = client
        .get(api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("fleetmeter_api_latest_quantity_value{quantity=\"humidity\"} 41.0"),
        "{metrics}"
    );
    // Out of bounds: the API refuses it, naming the quantity, and stores nothing.
    for (mut bad, field) in [
        (round_v4(8), "`quantities[1]` `name`"),
        (round_v4(9), "`quantities[1]` lists 2 values for 3 devices"),
        (round_v4(10), "`value` must be the primary quantity's"),
    ] {
        match field {
            f if f.contains("`name`") => bad["quantities"][1]["name"] = json!("rh %"),
            f if f.contains("lists 2") => {
                bad["quantities"][1]["values"] = json!([40.0, 42.0]);
            }
            _ => bad["value"] = json!(99.0),
        }
        let (status, body) = post(&client, &api, &bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    assert_eq!(stored_rounds(&client, &api).await.len(), 1);
}
