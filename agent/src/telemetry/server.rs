//! The agent's HTTP endpoints: `/metrics`, `/healthz`, and `/` naming them.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Telemetry;

/// The telemetry address cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot serve metrics on {addr}: {error}. Another agent on this host? Give each agent its \
     own address with {setting}, or \"off\""
)]
pub struct BindError {
    pub addr: SocketAddr,
    /// Quoted in the message (not a `source`: the one-line error would repeat it).
    pub error: std::io::Error,
    /// Where the address is set, from the configuration key table.
    setting: String,
}

/// Binds `addr`; the error names the setting to change.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|error| BindError {
        addr,
        error,
        setting: crate::config::keys::METRICS_LISTEN.where_set(),
    })
}

fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(telemetry)
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, shutdown: CancellationToken) {
    let addr = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(address = %addr, "serving /metrics and /healthz");
    // Bounded: a connection limit and header/request timeouts (a port reachable from a
    // network must not be held open by idle or slow clients).
    let served = fleetmeter_serve::serve(
        listener,
        router(telemetry),
        fleetmeter_serve::Limits::TELEMETRY,
        async move { shutdown.cancelled().await },
    )
    .await;
    if let Err(err) = served {
        tracing::error!(error = %err, "the metrics endpoint stopped");
    }
}

async fn index(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    format!(
        "fleetmeter agent, device {}\n\n/metrics  Prometheus metrics (OpenMetrics text)\n/healthz  \
         200 when healthy, 503 with the problems otherwise (JSON)\n",
        telemetry.device
    )
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        telemetry.render(),
    )
}

async fn healthz(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    let health = telemetry.health();
    let status = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health))
}
