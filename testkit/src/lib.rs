//! Fixtures for fleetmeter's tests: real servers started on free loopback ports with
//! temporary data, stopped when dropped, and a way to wait on a condition instead of sleeping.
//!
//! - [`zk`]: ZooKeeper from Debian's package (standalone and a 3-node ensemble).
//! - [`redis`]: Debian's `redis-server`.
//! - [`proxy`]: a TCP proxy that injects connection faults in front of ZooKeeper.
//! - [`gateway`]: an HTTP gateway in front of the API that passes, redirects or refuses.
//! - [`prometheus`]: Debian's Prometheus server, to scrape a fleet and run the dashboard's
//!   queries.
//! - [`fleet`]: real `fleetmeter run` processes, started and stopped by signal.
//! - [`api`]: the real `fleetmeter-api` binary.
//! - [`instruments`]: pymodbus's Modbus/TCP server, an HTTP JSON page, a peer that never
//!   answers: the real-instrument sensors' peers.
//!
//! The crate lives at the repository's top level so that every crate's tests (the agent's,
//! the API's) and the benchmarks share one set of fixtures.

pub mod api;
pub mod chromium;
pub mod fleet;
pub mod gateway;
pub mod instruments;
pub mod prometheus;
pub mod proxy;
pub mod redis;
pub mod zk;

use std::{future::Future, net::TcpListener, time::Duration};

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `check` until it holds or `deadline` passes (then panics naming `what`). Tests wait
/// on conditions, never for a fixed time.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
