//! The publisher against the real `fleetmeter-api` binary and a real Redis: both formats,
//! idempotency, the bearer token, and an unreachable API as a transient failure.

use std::time::Duration;

use crate::support::{api::ApiProcess, free_port, redis::RedisServer, wait_until};
use fleetmeter::{
    config::{PublishFormat, PublishSettings, Secret},
    publish::{Delivery, Publisher, SendError},
    wire::Round,
};

struct Api {
    _process: ApiProcess,
    url: String,
}

async fn api(redis: &RedisServer, token: Option<&str>) -> Api {
    let mut env = vec![("API_LEGACY_QUERY", "true")];
    env.extend(token.map(|token| ("API_TOKEN", token)));
    let process = ApiProcess::start(redis, env).await;
    let api = Api {
        url: process.url("http", "127.0.0.1"),
        _process: process,
    };
    let health = format!("{}healthz", api.url);
    wait_until("the API to serve", Duration::from_secs(15), || async {
        reqwest::get(&health)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    api
}

/// Settings for a publisher that may send to `api_url`'s origin only.
fn settings(format: PublishFormat, token: Option<&str>, api_url: &str) -> PublishSettings {
    PublishSettings {
        api_url: api_url.to_owned(),
        format,
        token: token.map(Secret::new),
        tls: Default::default(),
        allowed_origins: vec![
            url::Url::parse(api_url)
                .unwrap()
                .origin()
                .ascii_serialization(),
        ],
        timeout: Duration::from_secs(2),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
        outbox_max: fleetmeter::publish::outbox::Ledger {
            rounds: 100,
            bytes: 1 << 20,
        },
        wire_version: fleetmeter::wire::VERSION,
        mark_key: None,
    }
}

fn result(round: u64, value: f64) -> Round {
    Round {
        round,
        value,
        count: 2,
        devices: vec!["1".into(), "2".into()],
        aggregator: "mean@0.1.0".into(),
        leader: "1".into(),
        ts: 1_766_334_379_000,
        unit: Some("°C".into()),
        counter: Some(round as i64),
        version: fleetmeter::wire::VERSION,
        values: Some(vec![value - 0.5, value + 0.5]),
        shadow: None,
        rollout: None,
        quantities: None,
    }
    .one_quantity("t")
}

async fn stored(api: &Api, path: &str) -> serde_json::Value {
    reqwest::get(format!("{}{path}", api.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn json_publishing_is_idempotent_by_round() {
    let redis = RedisServer::start();
    let api = api(&redis, None).await;
    let publisher = Publisher::new(settings(PublishFormat::Json, None, &api.url)).unwrap();
    assert_eq!(
        publisher.send(&api.url, &result(1, 80.5)).await.unwrap(),
        Delivery::Stored
    );
    assert_eq!(
        publisher.send(&api.url, &result(1, 80.5)).await.unwrap(),
        Delivery::Duplicate
    );
    match publisher.send(&api.url, &result(1, 99.0)).await.unwrap() {
        Delivery::Refused(reason) => assert!(reason.to_string().starts_with("409"), "{reason}"),
        other => panic!("a different result for a stored round is refused, got {other:?}"),
    }
    let rounds = stored(&api, "api/v1/rounds").await;
    assert_eq!(rounds.as_array().unwrap().len(), 1);
    assert_eq!(rounds[0]["value"], 80.5);
    assert_eq!(rounds[0]["unit"], "°C", "the wire format matches the API's");
    // A base URL without the trailing slash works too.
    let bare = api.url.trim_end_matches('/');
    assert_eq!(
        publisher.send(bare, &result(2, 81.0)).await.unwrap(),
        Delivery::Stored
    );
}

#[tokio::test]
async fn query_publishing_uses_the_original_call() {
    let redis = RedisServer::start();
    let api = api(&redis, None).await;
    let publisher = Publisher::new(settings(PublishFormat::Query, None, &api.url)).unwrap();
    assert_eq!(
        publisher.send(&api.url, &result(1, 83.25)).await.unwrap(),
        Delivery::Stored
    );
    let page = reqwest::get(&api.url).await.unwrap().text().await.unwrap();
    assert!(
        page.contains("----&gt; 83.25 °C"),
        "stored through GET /nuevo?dato="
    );
    assert_eq!(stored(&api, "api/v1/rounds").await, serde_json::json!([]));
}

#[tokio::test]
async fn the_bearer_token_is_sent_and_a_missing_one_is_retried_not_dropped() {
    let redis = RedisServer::start();
    let api = api(&redis, Some("s3cret")).await;
    let without = Publisher::new(settings(PublishFormat::Json, None, &api.url)).unwrap();
    let err = without.send(&api.url, &result(1, 80.0)).await.unwrap_err();
    assert!(
        matches!(err, SendError::Status { status, .. } if status == 401),
        "a wrong or missing token is transient (fix it and it goes through): {err}"
    );
    let with = Publisher::new(settings(PublishFormat::Json, Some("s3cret"), &api.url)).unwrap();
    assert_eq!(
        with.send(&api.url, &result(1, 80.0)).await.unwrap(),
        Delivery::Stored
    );
}

/// The attack of issue 13: `{root}/config/api_url` pointed at an outsider's server. The
/// dynamic configuration refuses it; should a URL of another origin reach the publisher
/// anyway, nothing is sent there: no round, no token.
#[tokio::test]
async fn nothing_is_sent_to_an_origin_the_configuration_does_not_allow() {
    use tokio::io::AsyncReadExt;
    let redis = RedisServer::start();
    let api = api(&redis, Some("s3cret")).await;
    let publisher =
        Publisher::new(settings(PublishFormat::Json, Some("s3cret"), &api.url)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outsider = format!("http://{}/", listener.local_addr().unwrap());
    let heard = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = vec![0; 4096];
        let n = socket.read(&mut request).await.unwrap_or(0);
        String::from_utf8_lossy(&request[..n]).into_owned()
    });
    let err = publisher
        .send(&outsider, &result(1, 80.0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SendError::OriginNotAllowed { .. }),
        "another origin is refused before any connection: {err}"
    );
    assert!(
        err.to_string().contains(api.url.trim_end_matches('/')),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!heard.is_finished(), "the outsider heard nothing");
    heard.abort();
    // The allowed origin written another way (no trailing slash) is the API still.
    assert_eq!(
        publisher
            .send(api.url.trim_end_matches('/'), &result(1, 80.0))
            .await
            .unwrap(),
        Delivery::Stored
    );
}

#[tokio::test]
async fn an_unreachable_api_is_a_transient_failure() {
    let url = format!("http://127.0.0.1:{}/", free_port());
    let publisher = Publisher::new(settings(PublishFormat::Json, None, &url)).unwrap();
    let err = publisher.send(&url, &result(1, 80.0)).await.unwrap_err();
    assert!(matches!(err, SendError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("cannot reach the API"), "{err}");
}

/// A server that answers every request with `status` and `body`, once.
async fn answering(status: &str, body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let status = status.to_owned();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = vec![0; 64 * 1024];
        let _ = socket.read(&mut request).await;
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = socket.write_all(head.as_bytes()).await;
        let _ = socket.write_all(&body).await;
    });
    url
}

#[tokio::test]
async fn the_api_answer_is_bounded_and_kept_on_one_line() {
    // 4 MiB of answer: the agent keeps a bounded part of it.
    let url = answering("503 Service Unavailable", vec![b'x'; 4 << 20]).await;
    let publisher = Publisher::new(settings(PublishFormat::Json, None, &url)).unwrap();
    match publisher.send(&url, &result(1, 80.0)).await.unwrap_err() {
        SendError::Status { status, body } => {
            assert_eq!(status, 503);
            assert!(body.len() <= 16 * 1024, "kept {} bytes", body.len());
        }
        other => panic!("a 503 is a transient failure, got {other:?}"),
    }
    // A refusal whose answer tries to forge a log line stays one line.
    let forged = b"no\n2026-01-01T00:00:00Z ERROR forged".to_vec();
    let url = answering("422 Unprocessable Entity", forged).await;
    let publisher = Publisher::new(settings(PublishFormat::Json, None, &url)).unwrap();
    match publisher.send(&url, &result(1, 80.0)).await.unwrap() {
        Delivery::Refused(refusal) => {
            assert_eq!(refusal.status, 422);
            assert!(!refusal.to_string().contains('\n'), "{refusal}");
            assert!(refusal.body.contains("forged"), "{refusal}");
        }
        other => panic!("a 422 is a refusal, got {other:?}"),
    }
}
