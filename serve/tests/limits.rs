//! The bounds of the server loop, against a real socket: what a slow or greedy client gets.

use std::time::{Duration, Instant};

use axum::{
    Router,
    body::Bytes,
    routing::{get, post},
};
use fleetmeter_serve::{Limits, serve};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

const SMALL: Limits = Limits {
    max_connections: 2,
    header_timeout: Duration::from_millis(400),
    request_timeout: Duration::from_millis(600),
    drain: Duration::from_secs(1),
};

async fn start(limits: Limits) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let router = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/echo", post(|body: Bytes| async move { body }));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve(listener, router, limits, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop, server)
}

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn a_client_that_sends_no_request_head_is_dropped() {
    let (addr, _stop, _server) = start(SMALL).await;
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.is_some(), "the connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // A head sent a byte at a time, too slowly, is dropped as well (slowloris).
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let answer = read_to_close(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.is_some_and(|a| !a.contains("200 OK")));
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let (addr, _stop, _server) = start(SMALL).await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn past_the_connection_limit_a_client_waits_for_a_free_slot() {
    let limits = Limits {
        header_timeout: Duration::from_secs(30),
        ..SMALL
    };
    let (addr, _stop, _server) = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        // Connected and accepted, but no request yet: each holds a slot.
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!("http://{addr}/");
    let third = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "no slot: the third client waits");
    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("answered once a slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn shutdown_stops_taking_connections_and_returns() {
    let (addr, stop, server) = start(SMALL).await;
    let answer = reqwest::get(format!("http://{addr}/")).await.unwrap();
    assert_eq!(answer.text().await.unwrap(), "ok");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "the port is closed"
    );
}
