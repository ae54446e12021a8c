//! Publishing committed rounds to the measurements API.
//!
//! The leader's commit multi writes each round's result to `{root}/results/{n}` (the outbox)
//! in the same transaction that advances the round and the counter. The publisher then sends
//! the outbox in round order and deletes each entry only after the API accepted it; while the
//! API is down it retries with capped exponential back-off and jitter, and a new leader
//! drains what its predecessor left. With the `json` format the round number is the API's
//! idempotency key, so a resend after a crash is a harmless duplicate: exactly once in
//! effect. The `query` format (`GET {url}nuevo?dato=V`, the original call) has no key: at
//! least once.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use zookeeper_client::Error as ZkError;

use crate::{
    config::{PublishFormat, PublishSettings},
    coord::{CoordError, Session, paths::RESULTS},
    telemetry::Telemetry,
};

/// A committed round, as stored in the outbox and sent to `POST /api/v1/rounds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundResult {
    pub round: u64,
    pub value: f64,
    pub count: u32,
    pub devices: Vec<String>,
    /// `NAME@VERSION` of the aggregator plugin.
    pub aggregator: String,
    pub leader: String,
    /// Commit time, ms since the Unix epoch.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

pub fn result_path(round: u64) -> String {
    // Zero-padded so that a plain sort is round order, like sequential nodes.
    format!("{RESULTS}/{round:020}")
}

/// What the API did with one result.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    Stored,
    /// Already stored (a resend after a crash or a failover).
    Duplicate,
    /// The API will never accept it (e.g. 409: a different result is stored under this round,
    /// or 422). Logged loudly and dropped from the outbox: retrying cannot help.
    Refused(String),
}

pub struct Publisher {
    http: reqwest::Client,
    settings: PublishSettings,
    telemetry: Option<Arc<Telemetry>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("format", &self.settings.format)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(settings: PublishSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("fleetmeter/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            settings,
            telemetry: None,
        })
    }

    /// Records deliveries, failures and the backlog in `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    fn record(&self, what: impl FnOnce(&Telemetry)) {
        if let Some(telemetry) = &self.telemetry {
            what(telemetry);
        }
    }

    fn backlog(&self, backlog: usize) {
        self.record(|t| t.publish_backlog(backlog));
    }

    /// Sends one result to `api_url`. `Err` is a transient failure: retry later.
    pub async fn send(&self, api_url: &str, result: &RoundResult) -> Result<Delivery, String> {
        let base = if api_url.ends_with('/') {
            api_url.to_owned()
        } else {
            format!("{api_url}/")
        };
        let request = match self.settings.format {
            PublishFormat::Json => self.http.post(format!("{base}api/v1/rounds")).json(result),
            PublishFormat::Query => self
                .http
                .get(format!("{base}nuevo"))
                .query(&[("dato", result.value.to_string())]),
        };
        let request = match &self.settings.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach the API at {base}: {e}"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            let duplicate = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("duplicate").and_then(serde_json::Value::as_bool))
                .unwrap_or(false);
            return Ok(if duplicate {
                Delivery::Duplicate
            } else {
                Delivery::Stored
            });
        }
        let detail = format!("{status}: {}", body.trim());
        if status.is_server_error()
            || status == reqwest::StatusCode::UNAUTHORIZED
            || status == reqwest::StatusCode::FORBIDDEN
            || status == reqwest::StatusCode::NOT_FOUND
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            // The API is down, misconfigured (wrong URL or token: fix and it goes through)
            // or busy: keep the result and retry.
            return Err(format!("the API answered {detail}"));
        }
        Ok(Delivery::Refused(detail))
    }

    /// Publishes the outbox in round order; stops at the first transient failure.
    /// Returns how many entries are left.
    pub async fn drain(
        &self,
        session: &Session,
        api_url: &watch::Receiver<String>,
    ) -> Result<usize, DrainError> {
        let client = session.client()?;
        let mut pending = match client.list_children(RESULTS).await {
            Ok(children) => children,
            Err(ZkError::NoNode) => {
                self.backlog(0);
                return Ok(0);
            }
            Err(e) => return Err(CoordError::zk("list", RESULTS, e).into()),
        };
        pending.sort();
        let total = pending.len();
        self.backlog(total);
        for (done, name) in pending.iter().enumerate() {
            let path = format!("{RESULTS}/{name}");
            let data = match client.get_data(&path).await {
                Ok((data, _)) => data,
                Err(ZkError::NoNode) => continue, // published meanwhile
                Err(e) => return Err(CoordError::zk("read", &path, e).into()),
            };
            let result: RoundResult = match serde_json::from_slice(&data) {
                Ok(result) => result,
                Err(err) => {
                    tracing::error!(node = %path, error = %err, "unreadable outbox entry; dropping it");
                    let _ = client.delete(&path, None).await;
                    continue;
                }
            };
            let url = api_url.borrow().clone();
            match self.send(&url, &result).await {
                Ok(delivery) => {
                    self.record(|t| t.delivered(&delivery));
                    match &delivery {
                        Delivery::Stored => {
                            tracing::info!(round = result.round, value = result.value, api = %url, "round published to the API")
                        }
                        Delivery::Duplicate => {
                            tracing::info!(round = result.round, api = %url, "round was already stored by the API")
                        }
                        Delivery::Refused(reason) => {
                            tracing::error!(round = result.round, api = %url, %reason, "the API refused the round; dropping it from the outbox")
                        }
                    }
                    match client.delete(&path, None).await {
                        Ok(()) | Err(ZkError::NoNode) => self.backlog(total - done - 1),
                        Err(e) => return Err(CoordError::zk("delete", &path, e).into()),
                    }
                }
                Err(reason) => {
                    self.record(Telemetry::publish_failed);
                    return Err(DrainError::Api {
                        reason,
                        backlog: total - done,
                    });
                }
            }
        }
        self.backlog(0);
        Ok(0)
    }

    /// Drains the outbox whenever nudged (and every few seconds), retrying with back-off,
    /// until `stop` is cancelled.
    pub async fn run(
        &self,
        session: &Session,
        api_url: watch::Receiver<String>,
        nudge: &Notify,
        stop: &CancellationToken,
    ) {
        let mut delay = self.settings.retry_initial;
        loop {
            // Interruptible: a result sent but not yet deleted is sent again by the next
            // leader, which the API recognises as a duplicate.
            let drained = tokio::select! {
                () = stop.cancelled() => return,
                drained = self.drain(session, &api_url) => drained,
            };
            let wait = match drained {
                Ok(_) => {
                    delay = self.settings.retry_initial;
                    None
                }
                Err(DrainError::Api {
                    reason,
                    backlog: left,
                }) => {
                    let wait = jitter(delay);
                    tracing::warn!(%reason, backlog = left, retry_in = ?wait, "cannot publish yet; results wait in ZooKeeper");
                    delay = (delay * 2).min(self.settings.retry_max);
                    Some(wait)
                }
                Err(DrainError::Coord(err)) => {
                    tracing::warn!(error = %err, "cannot read the outbox; retrying");
                    Some(jitter(delay))
                }
            };
            let idle = wait.unwrap_or(Duration::from_secs(5));
            tokio::select! {
                () = stop.cancelled() => return,
                () = nudge.notified(), if wait.is_none() => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("{reason} ({backlog} result(s) waiting)")]
    Api { reason: String, backlog: usize },
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// `delay` scaled by a factor in [0.5, 1.5), so that agents do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.5 + f64::from(nanos % 1000) / 1000.0;
    delay.mul_f64(factor)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_names_sort_in_round_order() {
        let mut names = vec![result_path(10), result_path(9), result_path(100)];
        names.sort();
        assert_eq!(names, [result_path(9), result_path(10), result_path(100)]);
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(2));
            assert!(
                d >= Duration::from_secs(1) && d < Duration::from_secs(3),
                "{d:?}"
            );
        }
    }
}
