//! fleetmeter-api: the measurements API the fleet's leader publishes rounds to.
//!
//! # Layout
//! - [`round`]: the round result and its validation.
//! - [`store`]: rounds in Redis, stored atomically and idempotently by round number.
//! - [`routes`]: the HTTP endpoints; [`error`]: JSON errors.
//! - [`page`]: the HTML page; [`metrics`]: Prometheus metrics.
//!
//! [`run`] takes the listener and a shutdown future, so tests start the real server on
//! `127.0.0.1:0` and stop it cleanly; `main.rs` only parses flags and calls it.

#![forbid(unsafe_code)]

pub mod error;
pub mod metrics;
pub mod page;
pub mod round;
pub mod routes;
pub mod store;

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;

use crate::{metrics::Metrics, store::Store};

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub metrics: Metrics,
    /// Required as `Authorization: Bearer ...` on writes when set. The binary refuses to
    /// start without one unless anonymous writes are allowed explicitly.
    pub token: Option<String>,
    /// Whether the original API's write `GET /nuevo?dato=` is served (off by default: a
    /// GET that writes is easy to trigger from a browser or a link).
    pub legacy_query: bool,
    /// Shown on the page, as the original API showed it.
    pub hostname: String,
}

impl AppState {
    pub fn new(store: Store, token: Option<String>) -> Self {
        Self {
            store,
            metrics: Metrics::new(),
            token: token.filter(|t| !t.is_empty()),
            legacy_query: false,
            hostname: hostname(),
        }
    }

    /// Serves `GET /nuevo?dato=` (the original API's write, for `format = "query"` agents).
    pub fn with_legacy_query(mut self, on: bool) -> Self {
        self.legacy_query = on;
        self
    }
}

/// Serves until `shutdown` completes, then finishes the requests in flight. Bounded
/// ([`fleetmeter_serve::Limits::API`]): a connection limit, header and request timeouts.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, state, fleetmeter_serve::Limits::API, shutdown).await
}

/// [`run`] with other bounds.
pub async fn run_with(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: fleetmeter_serve::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    fleetmeter_serve::serve(listener, routes::router(state), limits, shutdown).await
}

/// [`run_with`] over TLS ([`fleetmeter_serve::tls::server_config`]).
pub async fn run_tls(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: fleetmeter_serve::Limits,
    tls: Arc<fleetmeter_serve::tls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    fleetmeter_serve::serve_tls(listener, routes::router(state), limits, tls, shutdown).await
}

/// The machine's (or container's) hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
