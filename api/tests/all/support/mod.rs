//! Shared fixtures: a real `redis-server` (Debian's package) on a free loopback port, and the
//! real API served in-process on `127.0.0.1:0`. Both stop when dropped.

use std::{path::PathBuf, sync::Arc};

use fleetmeter_api::{AppState, store::Store};
pub use fleetmeter_testkit::{free_port, redis::RedisServer, wait_until};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// The real API, served in-process.
pub struct TestApi {
    pub base: String,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApi {
    pub async fn start(redis: &RedisServer, token: Option<&str>) -> Self {
        let store = Store::new(&redis.url(), "fleetmeter").expect("store");
        let state =
            Arc::new(AppState::new(store, token.map(str::to_owned)).with_legacy_query(true));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(fleetmeter_api::run(listener, state.clone(), async {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Graceful stop; returns what `run` returned.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task
            .take()
            .expect("running")
            .await
            .expect("server task")
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn api_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fleetmeter-api"))
}

/// A valid round body.
pub fn round_json(round: u64, value: f64) -> serde_json::Value {
    serde_json::json!({
        "round": round,
        "value": value,
        "count": 3,
        "devices": ["1", "2", "3"],
        "aggregator": "mean@0.1.0",
        "leader": "1",
        "ts": 1_766_334_379_000_u64 + round * 5000,
        "unit": "°C",
    })
}
