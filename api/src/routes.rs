//! The HTTP endpoints.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, RawPathParams, Request,
        State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use fleetmeter_wire::Shown;
use serde_json::{Value, json};

use crate::{
    AppState,
    error::ApiError,
    metrics::{RequestLabels, RouteLabels},
    page,
    round::Round,
    store::{PutOutcome, Store, StoreError, StoredReading, valid_fleet_name},
};

/// Largest accepted request body: the largest valid round (10,000 devices with the longest
/// ids), from the shared wire contract.
pub const MAX_BODY: usize = fleetmeter_wire::MAX_ROUND_JSON;
/// Default and largest `limit` of `GET /api/v1/rounds`.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 1000;
/// Rounds shown on the HTML page.
pub const PAGE_ROUNDS: usize = 50;
/// The latest rounds `GET /api/v1/devices` counts a device's missed rounds in.
pub const RECENT_ROUNDS: usize = 20;

pub fn router(state: Arc<AppState>) -> Router {
    // A fleet's page and endpoints: the default fleet's at the root, any other's under
    // `/fleets/{fleet}/` with its own keys ([`FleetStore`]).
    let fleet = || {
        Router::new()
            .route("/api/v1/rounds", post(post_round).get(list_rounds))
            .route("/api/v1/rounds/{n}", get(get_round))
            .route("/api/v1/devices", get(list_devices))
            .route("/api/v1/devices/{id}/readings", get(device_readings))
    };
    Router::new()
        .route("/", get(index))
        .route("/fleets/{fleet}", get(index))
        .route("/fleets/{fleet}/", get(index))
        .merge(fleet())
        .nest("/fleets/{fleet}", fleet())
        .route("/nuevo", get(nuevo))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Counts and times every request by route and status.
async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    // Known methods by name; anything a client makes up folds into one label, so clients
    // cannot multiply the metric's series (unknown paths are `unmatched` already).
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "PATCH") => m,
        _ => "other",
    }
    .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .request_seconds
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The store of the fleet a request is for: `/fleets/{fleet}/…` has its own keys
/// ([`Store::for_fleet`]); every other path is the default fleet's.
struct FleetStore(Store);

impl FromRequestParts<Arc<AppState>> for FleetStore {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let Some((_, name)) = params.iter().find(|(key, _)| *key == "fleet") else {
            return Ok(Self(state.store.clone()));
        };
        if !valid_fleet_name(name) {
            return Err(ApiError::BadRequest(format!(
                "a fleet's name is 1 to 64 letters, digits, `-` or `_`, got {:?}",
                name.chars().take(80).collect::<String>()
            )));
        }
        Ok(Self(state.store.for_fleet(name)))
    }
}

/// A named path parameter (`{n}`, `{id}`), beside the fleet's when there is one.
fn param(params: &HashMap<String, String>, name: &str) -> Result<String, ApiError> {
    params
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::Internal(format!("no `{name}` in the route")))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl AppState {
    /// Writes need `Authorization: Bearer <API_TOKEN>` when a token is configured.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    fn storage_failed(&self, err: StoreError) -> ApiError {
        match err {
            StoreError::Redis(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(error = %e, "Redis request failed");
                ApiError::Unavailable(format!("storage unavailable: {e}"))
            }
            corrupt @ StoreError::Corrupt { .. } => {
                tracing::error!(error = %corrupt, "corrupt data in Redis");
                ApiError::Internal(corrupt.to_string())
            }
        }
    }
}

/// Compares a presented token with the configured one in time independent of where they
/// differ (`subtle`; the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

fn parse_value(raw: &str, what: &str) -> Result<f64, ApiError> {
    let value: f64 = raw
        .trim()
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{what} must be a number, got {raw:?}")))?;
    if !value.is_finite() {
        return Err(ApiError::BadRequest(format!(
            "{what} must be a finite number, got {raw:?}"
        )));
    }
    Ok(value)
}

/// `GET /nuevo?dato=V`: the original API's call. Stores V with the server's time. Off unless
/// enabled (API_LEGACY_QUERY); takes the token like any write.
async fn nuevo(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    if !state.legacy_query {
        return Err(ApiError::NotFound(
            "the original API's write GET /nuevo?dato= is off: start the API with API_LEGACY_QUERY=true (--legacy-query) for agents with format = \"query\"".into(),
        ));
    }
    state.authorize(&headers)?;
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let raw = params.get("dato").ok_or_else(|| {
        ApiError::BadRequest("missing query parameter `dato` (e.g. /nuevo?dato=81.5)".into())
    })?;
    let value = parse_value(raw, "`dato`")?;
    let stored = state
        .store
        .add_value(value, now_ms())
        .await
        .map_err(|e| state.storage_failed(e))?;
    state.metrics.values_stored.inc();
    Ok(Json(
        json!({ "stored": true, "value": stored.value, "ts": stored.ts }),
    ))
}

/// `POST /api/v1/rounds`: idempotent by round number.
async fn post_round(
    State(state): State<Arc<AppState>>,
    FleetStore(store): FleetStore,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    state.authorize(&headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(MAX_BODY)
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let round: Round = serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(format!("invalid round: {e}")),
        _ => ApiError::BadRequest(format!("body is not valid JSON: {e}")),
    })?;
    round
        .validate()
        .map_err(|e| ApiError::Unprocessable(format!("invalid round: {e}")))?;
    let outcome = store
        .put_round(&round)
        .await
        .map_err(|e| state.storage_failed(e))?;
    match outcome {
        PutOutcome::Stored => {
            state.metrics.round_stored(&round);
            tracing::info!(round = round.round, value = %Shown(round.value), count = round.count, leader = %round.leader, "round stored");
            Ok((
                StatusCode::CREATED,
                Json(json!({ "round": round.round, "stored": true, "duplicate": false })),
            ))
        }
        PutOutcome::Duplicate => {
            state.metrics.round_duplicates.inc();
            tracing::debug!(round = round.round, "duplicate round ignored");
            Ok((
                StatusCode::OK,
                Json(json!({ "round": round.round, "stored": false, "duplicate": true })),
            ))
        }
        PutOutcome::Conflict(existing) => {
            state.metrics.round_conflicts.inc();
            tracing::warn!(
                round = round.round,
                "conflicting write of a stored round refused"
            );
            Err(ApiError::Conflict(existing))
        }
    }
}

/// `GET /api/v1/rounds?limit=N&before=R`: newest first; with `before`, only rounds numbered
/// below `R` (an agent that started its fleet while the API was down asks where the counter
/// stood before its first round).
async fn list_rounds(
    State(state): State<Arc<AppState>>,
    FleetStore(store): FleetStore,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Vec<Round>>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = limit(&params)?;
    let before = match params.get("before") {
        None => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "`before` must be a round number (a non-negative integer), got {raw:?}"
            ))
        })?),
    };
    let rounds = store
        .rounds_before(limit, before)
        .await
        .map_err(|e| state.storage_failed(e))?;
    Ok(Json(rounds))
}

/// `?limit=N`: [`DEFAULT_LIMIT`] when absent, at most [`MAX_LIMIT`].
fn limit(params: &HashMap<String, String>) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "`limit` must be an integer from 1 to {MAX_LIMIT}, got {raw:?}"
            ))),
        },
    }
}

/// `GET /api/v1/devices`: every device seen in a stored round, by id, with its latest
/// reading (from version 2 rounds; `null` when only older agents' rounds name it) and how
/// many of the latest [`RECENT_ROUNDS`] stored rounds went without it.
async fn list_devices(
    State(state): State<Arc<AppState>>,
    FleetStore(store): FleetStore,
) -> Result<Json<Vec<Value>>, ApiError> {
    let failed = |e| state.storage_failed(e);
    let latest = store.devices().await.map_err(failed)?;
    let recent = store.rounds(RECENT_ROUNDS).await.map_err(failed)?;
    let mut ids: std::collections::BTreeSet<&str> = latest.keys().map(String::as_str).collect();
    ids.extend(
        recent
            .iter()
            .flat_map(|r| r.devices.iter().map(String::as_str)),
    );
    // Each recent round's devices as a set, once: 10,000 devices × 20 rounds stays linear.
    let present: Vec<HashSet<&str>> = recent
        .iter()
        .map(|r| r.devices.iter().map(String::as_str).collect())
        .collect();
    let devices = ids
        .into_iter()
        .map(|id| {
            let missed = present.iter().filter(|set| !set.contains(id)).count();
            let last = latest.get(id);
            let mut device = json!({
                "id": id,
                "last_round": last.map(|r| r.round),
                "last_seen": last.map(|r| r.ts),
                "last_value": last.map(|r| r.value),
                "recent_rounds": recent.len(),
                "missed_recently": missed,
            });
            // A device whose latest reading came from a round of several quantities.
            if let Some(quantities) = last.and_then(|r| r.quantities.as_ref()) {
                device["last_quantities"] = json!(quantities);
            }
            device
        })
        .collect();
    Ok(Json(devices))
}

/// `GET /api/v1/devices/{id}/readings?limit=N`: the device's latest readings, newest first.
async fn device_readings(
    State(state): State<Arc<AppState>>,
    FleetStore(store): FleetStore,
    Path(path): Path<HashMap<String, String>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Vec<StoredReading>>, ApiError> {
    let id = param(&path, "id")?;
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = limit(&params)?;
    fleetmeter_wire::validate_device_id(&id)
        .map_err(|e| ApiError::BadRequest(format!("device id {e}")))?;
    let readings = store
        .readings(&id, limit)
        .await
        .map_err(|e| state.storage_failed(e))?;
    if readings.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no readings stored for device {:?} (only version 2 rounds carry them)",
            id.chars().take(80).collect::<String>()
        )));
    }
    Ok(Json(readings))
}

/// `GET /api/v1/rounds/{n}`.
async fn get_round(
    State(state): State<Arc<AppState>>,
    FleetStore(store): FleetStore,
    Path(path): Path<HashMap<String, String>>,
) -> Result<Json<Round>, ApiError> {
    let n = param(&path, "n")?;
    let n: u64 = n.parse().map_err(|_| {
        ApiError::BadRequest(format!("round must be a non-negative integer, got {n:?}"))
    })?;
    match store.round(n).await.map_err(|e| state.storage_failed(e))? {
        Some(round) => Ok(Json(round)),
        None => Err(ApiError::NotFound(format!("round {n} is not stored"))),
    }
}

/// `GET /` (and `/fleets/{fleet}/`): the HTML page.
async fn index(
    State(state): State<Arc<AppState>>,
    FleetStore(store): FleetStore,
) -> Result<Html<String>, ApiError> {
    let rounds = store
        .rounds(PAGE_ROUNDS)
        .await
        .map_err(|e| state.storage_failed(e))?;
    let values = store
        .values(20)
        .await
        .map_err(|e| state.storage_failed(e))?;
    Ok(Html(page::render(&state.hostname, &rounds, &values)))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// 200 while Redis answers, 503 otherwise.
async fn healthz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "redis": "ok" })),
        ),
        Err(err) => {
            state.metrics.redis_errors.inc();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "redis": err.to_string() })),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn values_must_be_finite_numbers() {
        assert_eq!(parse_value(" 81.5", "x").unwrap(), 81.5);
        for bad in ["abc", "NaN", "inf", "-infinity", ""] {
            assert!(
                matches!(parse_value(bad, "x"), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }
}
