//! HTTPS to the measurements API with real parts only: the real `fleetmeter-api` serving
//! TLS with certificates Debian's `openssl` makes here, the agent's publisher (rustls), curl
//! as an outside client, and a fleet of real agents. Every TLS failure an operator can make
//! is produced for real, and its message must name the cause and the key to set.

use std::{path::Path, process::Command, time::Duration};

use fleetmeter::{
    config::{PublishFormat, PublishSettings},
    publish::{ApiTls, Publisher, SendError, TlsProblem},
};

use crate::support::{
    api::ApiProcess,
    fleet::{Fleet, SERIAL, final_check},
    pki::{Issued, Pki},
    redis::RedisServer,
    wait_until,
};

/// The API serving TLS with `server`, requiring client certificates signed by `client_ca`.
async fn tls_api(redis: &RedisServer, server: &Issued, client_ca: Option<&Path>) -> ApiProcess {
    let mut env = vec![
        ("API_TLS_CERT", server.cert.as_path()),
        ("API_TLS_KEY", server.key.as_path()),
    ];
    env.extend(client_ca.map(|ca| ("API_TLS_CLIENT_CA", ca)));
    ApiProcess::start(redis, env).await
}

/// A publisher that may send to `url` only, trusting and presenting `tls`.
fn publisher(url: &str, tls: ApiTls) -> Publisher {
    let origin = url::Url::parse(url).unwrap().origin().ascii_serialization();
    Publisher::new(PublishSettings {
        api_url: url.to_owned(),
        format: PublishFormat::Json,
        token: None,
        tls,
        allowed_origins: vec![origin],
        timeout: Duration::from_secs(5),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
        outbox_max: fleetmeter::publish::outbox::Ledger {
            rounds: 100,
            bytes: 1 << 20,
        },
        wire_version: fleetmeter::wire::VERSION,
        mark_key: None,
    })
    .unwrap()
}

fn trusting(ca: &Path) -> ApiTls {
    ApiTls::read(Some(ca), None, None).unwrap()
}

/// Asks the API at `url` for its latest round; the TLS problem, if it failed on TLS.
async fn problem(url: &str, tls: ApiTls) -> Result<Option<TlsProblem>, SendError> {
    match publisher(url, tls).latest_stored(url).await {
        Ok(_) => Ok(None),
        Err(SendError::Tls { problem, .. }) => Ok(Some(problem)),
        Err(other) => Err(other),
    }
}

/// The failure's whole message.
async fn message(url: &str, tls: ApiTls) -> String {
    publisher(url, tls)
        .latest_stored(url)
        .await
        .expect_err("the request must fail")
        .to_string()
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs (scripts/test installs it)")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tls_failure_names_its_cause_and_the_key_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "fleetmeter test CA");
    let here = "IP:127.0.0.1,DNS:localhost";
    let good = pki.server("api", here);
    let elsewhere = pki.server("elsewhere", "DNS:other.example");
    let expired = pki.expired("expired", here);
    let redis = RedisServer::start();
    let tls = tls_api(&redis, &good, None).await;
    let wrong_name = tls_api(&redis, &elsewhere, None).await;
    let old = tls_api(&redis, &expired, None).await;
    let plain = ApiProcess::start(&redis, Vec::<(&str, &str)>::new()).await;
    let ca = pki.ca();

    // It works with the CA, by IP and by name, and from outside with curl --cacert.
    for host in ["127.0.0.1", "localhost"] {
        assert_eq!(
            problem(&tls.url("https", host), trusting(&ca))
                .await
                .unwrap(),
            None,
            "{host}"
        );
    }
    let out = curl(&[
        "--cacert",
        path(&ca),
        &format!("{}healthz", tls.url("https", "127.0.0.1")),
    ]);
    assert!(
        out.status.success(),
        "curl --cacert: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cases = [
        (
            "no tls_ca: the system's roots do not know the private CA",
            tls.url("https", "127.0.0.1"),
            ApiTls::default(),
            TlsProblem::Untrusted,
            "FLEETMETER_API_TLS_CA",
        ),
        (
            "a certificate for another name",
            wrong_name.url("https", "127.0.0.1"),
            trusting(&ca),
            TlsProblem::NameMismatch,
            "not valid for the API URL's host",
        ),
        (
            "an expired certificate",
            old.url("https", "127.0.0.1"),
            trusting(&ca),
            TlsProblem::Expired,
            "has expired",
        ),
        (
            "https:// to a plain-HTTP API",
            plain.url("https", "127.0.0.1"),
            trusting(&ca),
            TlsProblem::NotTls,
            "answers in plain HTTP",
        ),
        (
            "http:// to an API serving TLS",
            tls.url("http", "127.0.0.1"),
            trusting(&ca),
            TlsProblem::TlsOnHttp,
            "use an https:// URL",
        ),
    ];
    for (what, url, trust, expected, says) in cases {
        assert_eq!(
            problem(&url, trust.clone()).await.unwrap(),
            Some(expected),
            "{what}"
        );
        let message = message(&url, trust).await;
        assert!(message.contains(says), "{what}: {message}");
        assert!(message.contains("TLS to the API at"), "{what}: {message}");
    }
    drop((tls, wrong_name, old, plain));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_a_client_certificate_and_refuses_none() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "fleetmeter test CA");
    let stranger = Pki::new(&dir.path().join("other"), "someone else's CA");
    let server = pki.server("api", "IP:127.0.0.1,DNS:localhost");
    let client = pki.client("device-1");
    let forged = stranger.client("device-1");
    let redis = RedisServer::start();
    let api = tls_api(&redis, &server, Some(&pki.ca())).await;
    let url = api.url("https", "127.0.0.1");
    let with = |id: &Issued| ApiTls::read(Some(&pki.ca()), Some(&id.cert), Some(&id.key)).unwrap();

    assert_eq!(problem(&url, with(&client)).await.unwrap(), None);
    for (what, tls) in [
        ("no client certificate", trusting(&pki.ca())),
        ("a certificate from another CA", with(&forged)),
    ] {
        assert_eq!(
            problem(&url, tls.clone()).await.unwrap(),
            Some(TlsProblem::ClientCertificate),
            "{what}"
        );
        let message = message(&url, tls).await;
        assert!(
            message.contains("FLEETMETER_API_TLS_CERT"),
            "{what}: {message}"
        );
    }
    // And from outside: curl with the client certificate is served, without it refused.
    let health = format!("{url}healthz");
    let ca = pki.ca();
    let served = curl(&[
        "--cacert",
        path(&ca),
        "--cert",
        path(&client.cert),
        "--key",
        path(&client.key),
        &health,
    ]);
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
    assert!(!curl(&["--cacert", path(&ca), &health]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_publish_to_an_api_serving_tls_exactly_once() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    let pki = Pki::new(&fleet.dir.path().join("pki"), "fleetmeter test CA");
    let server = pki.server("api", "IP:127.0.0.1,DNS:localhost");
    fleet.with_tls(&pki.ca(), &server.cert, &server.key, true);
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    wait_until(
        "five rounds with all three devices, over TLS",
        Duration::from_secs(60),
        || async {
            fleet
                .rounds()
                .await
                .iter()
                .filter(|r| r["count"] == 3)
                .count()
                >= 5
        },
    )
    .await;
    // From outside: curl reads the same rounds with the CA.
    let out = curl(&[
        "--cacert",
        path(&pki.ca()),
        &format!("{}api/v1/rounds?limit=1", fleet.api_url()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let latest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(latest[0]["round"].as_u64().is_some(), "{latest}");
    let rounds = final_check(&mut fleet).await;
    assert!(rounds.len() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_api_is_logged_once_counted_and_shown_in_health() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    let pki = Pki::new(&fleet.dir.path().join("pki"), "fleetmeter test CA");
    let server = pki.server("api", "IP:127.0.0.1,DNS:localhost");
    // This agent does not trust the private CA.
    fleet.with_tls(&pki.ca(), &server.cert, &server.key, false);
    fleet.spawn("1");
    let counted = "fleetmeter_publish_tls_errors_total{reason=\"untrusted\"}";
    wait_until(
        "several TLS failures counted",
        Duration::from_secs(60),
        || async {
            fleet
                .metrics("1")
                .await
                .get(counted)
                .is_some_and(|n| *n >= 3.0)
        },
    )
    .await;
    let (status, answer) = fleet.health("1").await.expect("/healthz answers");
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer.to_string().contains("FLEETMETER_API_TLS_CA"),
        "/healthz names the key to set: {answer}"
    );
    let log = fleet.agents.log("1");
    assert_eq!(
        log.matches("TLS to the API fails").count(),
        1,
        "logged once per change, not per retry:\n{log}"
    );
    assert!(
        log.contains("reason=\"untrusted\"") || log.contains("reason=untrusted"),
        "{log}"
    );
    assert!(fleet.rounds().await.is_empty(), "nothing reached the API");
    fleet.stop_all().await;
}

/// A host without CA certificates (a minimal image without `ca-certificates`): the HTTP
/// client used to fail to build, so an agent could not start even for an `http://` API
/// (compose-check caught it). Now plain HTTP works and a warning says what an `https://`
/// API needs. The system's roots are hidden from the child through rustls-native-certs'
/// SSL_CERT_FILE / SSL_CERT_DIR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_ca_certificates_still_speaks_plain_http() {
    let redis = RedisServer::start();
    let api = ApiProcess::start(&redis, Vec::<(&str, &str)>::new()).await;
    let empty = tempfile::tempdir().unwrap();
    let health = || {
        Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
            .args(["health", "--address", &format!("127.0.0.1:{}", api.port)])
            .env("SSL_CERT_FILE", empty.path().join("none.pem"))
            .env("SSL_CERT_DIR", empty.path())
            .output()
            .unwrap()
    };
    wait_until(
        "the API's /healthz over plain HTTP",
        Duration::from_secs(15),
        || async { health().status.success() },
    )
    .await;
    let stderr = String::from_utf8_lossy(&health().stderr).into_owned();
    assert!(
        stderr.contains("no CA certificates on this system")
            && stderr.contains("FLEETMETER_API_TLS_CA"),
        "{stderr}"
    );
}
