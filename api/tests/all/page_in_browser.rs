//! The HTML page in a real browser (Debian's headless Chromium): it loads without console
//! messages and its chart has one point per stored round.

use crate::support::{RedisServer, TestApi, round_json};
use fleetmeter_testkit::chromium;
use reqwest::Client;

#[tokio::test]
async fn the_page_renders_one_chart_point_per_round_without_console_errors() {
    let redis = RedisServer::start();
    let api = TestApi::start(&redis, None).await;
    let client = Client::new();
    let rounds = 7;
    // Means as the leader computes them: binary-float noise in the last digits, which the
    // page must not show (the JSON keeps it).
    let values = [
        78.10000000000001,
        79.89999999999999,
        78.66666666666667,
        79.36666666666666,
        80.0,
        80.5,
        79.60000000000001,
    ];
    for n in 1..=rounds {
        let status = client
            .post(api.url("/api/v1/rounds"))
            .json(&round_json(n, values[n as usize - 1]))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, reqwest::StatusCode::CREATED);
    }
    let url = api.url("/");
    let (dom, log) = tokio::task::spawn_blocking(move || chromium::load(&url))
        .await
        .unwrap();

    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert_eq!(
        dom.matches("<circle class=\"point\"").count(),
        rounds as usize,
        "one chart point per stored round:\n{dom}"
    );
    for n in 1..=rounds {
        assert!(
            dom.contains(&format!("data-round=\"{n}\"")),
            "point for round {n}"
        );
    }
    assert!(dom.contains(&format!(
        "<span id=\"hostname\">{}</span>",
        api.state.hostname
    )));
    assert!(dom.contains("http-equiv=\"refresh\""), "auto-refresh");
    for shown in ["78.1", "79.9", "78.6667", "79.3667", "80", "80.5", "79.6"] {
        assert!(
            dom.contains(&format!("<td class=\"num\">{shown} °C</td>")),
            "the table shows {shown} °C:\n{dom}"
        );
    }
    for noise in ["0000000", "9999999", "6666666"] {
        assert!(
            !dom.contains(noise),
            "binary-float noise {noise} on the page:\n{dom}"
        );
    }
    // The JSON keeps every digit.
    let stored: Vec<serde_json::Value> = client
        .get(api.url("/api/v1/rounds?limit=7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for r in stored {
        let n = r["round"].as_u64().unwrap() as usize;
        assert_eq!(
            r["value"].as_f64(),
            Some(values[n - 1]),
            "round {n} in JSON"
        );
    }
    assert_eq!(
        dom.matches("<tr><td>").count(),
        rounds as usize,
        "one table row per round"
    );
}
