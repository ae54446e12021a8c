//! Publishing committed rounds to the measurements API.
//!
//! The leader's commit multi writes each round's result to `{root}/results/{n}` (the outbox,
//! [`outbox`]) in the same transaction that advances the round and the counter. The
//! publisher then sends the outbox in round order and removes each entry only after the API
//! accepted it; while the API is down (or answers 5xx, 401, 403, 404, 408, 429, or a
//! redirect, which is never followed) it retries with capped exponential back-off and jitter
//! ([`crate::backoff`]), and a new leader drains what its predecessor left. A round the API
//! refuses (any other 4xx: retrying cannot help) is moved to `{root}/rejected/{n}` with the
//! status and the answer, never dropped; `fleetmeter outbox` lists, resends or discards it.
//! With the `json` format the round number is the API's idempotency key, so a resend after
//! a crash is a harmless duplicate: exactly once in effect. The `query` format
//! (`GET {url}nuevo?dato=V`, the original call) has no key: at least once.
//!
//! What happens is reported to a [`PublishEvents`] (the agent's telemetry implements it), so
//! this module depends on no metrics code.

mod api;
pub mod tls;

pub(crate) use api::read_bounded;
pub mod outbox;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub use api::{Delivery, Refusal, SendError};
pub use outbox::result_path;
pub use tls::{ApiTls, BadApiTls, TlsProblem};

use crate::{
    backoff::Backoff,
    config::PublishSettings,
    coord::{CoordError, Session, paths::RESULTS},
    wire::{Round, Shown},
};

/// How long the publisher idles between drains when nothing nudges it.
const IDLE: Duration = Duration::from_secs(5);

/// Receives what the publisher does; every method defaults to doing nothing.
pub trait PublishEvents: Send + Sync {
    /// Results waiting in the outbox now.
    fn backlog(&self, _waiting: usize) {}
    /// The API decided about one result.
    fn delivered(&self, _delivery: &Delivery) {}
    /// An attempt failed and will be retried.
    fn failed(&self) {}
    /// An outbox entry could not be read and was moved to `{root}/rejected`.
    fn unreadable(&self) {}
    /// Rounds in `{root}/rejected` now.
    fn rejected_waiting(&self, _rejected: usize) {}
    /// Outbox entries set aside now because they are in a newer contract version.
    fn newer(&self, _entries: usize) {}
    /// A request to the API failed on TLS (`Some`, at every failure), or one got through
    /// (`None`).
    fn tls(&self, _problem: Option<TlsProblem>) {}
}

pub struct Publisher {
    api: api::ApiClient,
    settings: PublishSettings,
    events: Option<Arc<dyn PublishEvents>>,
    /// The TLS problem of the last request, so that a change is logged once.
    tls: std::sync::Mutex<Option<TlsProblem>>,
    /// Entries set aside as newer, so that each is logged once.
    newer_seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("format", &self.api.format())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("{source} ({backlog} result(s) waiting)")]
    Api {
        #[source]
        source: SendError,
        backlog: usize,
    },
    #[error(transparent)]
    Coord(#[from] CoordError),
}

impl Publisher {
    pub fn new(settings: PublishSettings) -> Result<Self, reqwest::Error> {
        Ok(Self {
            api: api::ApiClient::new(&settings)?,
            settings,
            events: None,
            tls: std::sync::Mutex::new(None),
            newer_seen: std::sync::Mutex::default(),
        })
    }

    /// Reports deliveries, failures and the backlog to `events`.
    pub fn with_events(mut self, events: Arc<dyn PublishEvents>) -> Self {
        self.events = Some(events);
        self
    }

    fn report(&self, what: impl FnOnce(&dyn PublishEvents)) {
        if let Some(events) = &self.events {
            what(events.as_ref());
        }
    }

    pub fn settings(&self) -> &PublishSettings {
        &self.settings
    }

    /// Sends one result to `api_url`.
    pub async fn send(&self, api_url: &str, result: &Round) -> Result<Delivery, SendError> {
        let sent = self.api.send(api_url, result).await;
        self.follow_tls(&sent);
        sent
    }

    /// The API's highest stored round (`None` when it stores none, or with the `query`
    /// format, which has no round numbers): where a fleet whose ZooKeeper state is new
    /// continues.
    pub async fn latest_stored(&self, api_url: &str) -> Result<Option<Round>, SendError> {
        self.latest_stored_before(api_url, None).await
    }

    /// The API's highest stored round numbered below `before` (any when `None`).
    pub async fn latest_stored_before(
        &self,
        api_url: &str,
        before: Option<u64>,
    ) -> Result<Option<Round>, SendError> {
        let latest = self.api.latest(api_url, before).await;
        self.follow_tls(&latest);
        latest
    }

    /// Reports a request's TLS outcome, and logs a change of it once: the problem with what
    /// to set when TLS starts failing (or fails otherwise), a line when it works again.
    fn follow_tls<T>(&self, outcome: &Result<T, SendError>) {
        let now = match outcome {
            Err(SendError::Tls { problem, .. }) => Some(*problem),
            // Only an answer proves TLS works again; an API that is down says nothing.
            Err(_) => return,
            Ok(_) => None,
        };
        self.report(|e| e.tls(now));
        let before = std::mem::replace(
            &mut *self.tls.lock().unwrap_or_else(|e| e.into_inner()),
            now,
        );
        match (before, now) {
            (before, Some(problem)) if before != Some(problem) => {
                if let Err(err) = outcome {
                    tracing::error!(reason = problem.reason(), error = %err, "TLS to the API fails; results wait in ZooKeeper");
                }
            }
            (Some(_), None) => tracing::info!("TLS to the API works again"),
            _ => {}
        }
    }

    /// Publishes the outbox in round order; stops at the first transient failure. A refused
    /// round, or an entry that cannot be read, moves to `{root}/rejected`. Returns how many
    /// entries are left.
    pub async fn drain(
        &self,
        session: &Session,
        api_url: &watch::Receiver<String>,
    ) -> Result<usize, DrainError> {
        let client = session.client()?;
        let mut pending = match client.list_children(RESULTS).await {
            Ok(children) => children,
            Err(zookeeper_client::Error::NoNode) => Vec::new(),
            Err(e) => return Err(CoordError::zk("list", RESULTS, e).into()),
        };
        pending.sort();
        let total = pending.len();
        let mut newer = 0;
        // Entries set aside earlier and gone since (published by a newer leader, discarded)
        // are forgotten: the set stays within the outbox's bound.
        self.newer_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|path| {
                path.rsplit('/')
                    .next()
                    .is_some_and(|name| pending.binary_search_by(|p| p.as_str().cmp(name)).is_ok())
            });
        self.report(|e| e.backlog(total));
        for (done, name) in pending.iter().enumerate() {
            let path = format!("{RESULTS}/{name}");
            let url = api_url.borrow().clone();
            let loaded = match outbox::load(&client, &path, self.settings.mark_key.as_ref()).await {
                Ok(loaded) => loaded,
                Err(outbox::LoadError::Gone) => continue, // published meanwhile
                Err(outbox::LoadError::Corrupt {
                    reason,
                    data,
                    parts: _,
                }) => {
                    tracing::error!(node = %path, %reason, "unreadable outbox entry; moved to {{root}}/rejected");
                    let rejected = outbox::Rejected::new(None, &reason, None, &data);
                    outbox::reject(&client, name, &rejected).await?;
                    self.report_rejected(&client).await?;
                    self.report(|e| e.unreadable());
                    continue;
                }
                Err(outbox::LoadError::Newer { version, round }) => {
                    newer += 1;
                    self.set_aside(&path, version, round);
                    continue;
                }
                Err(outbox::LoadError::Coord(e)) => return Err(e.into()),
            };
            if loaded.round.version > self.settings.wire_version {
                newer += 1;
                self.set_aside(&path, loaded.round.version, Some(loaded.round.round));
                continue;
            }
            let result = &loaded.round;
            match self.send(&url, result).await {
                Ok(delivery) => {
                    self.report(|e| e.delivered(&delivery));
                    match &delivery {
                        Delivery::Stored => {
                            tracing::info!(round = result.round, value = %Shown(result.value), api = %url, "round published to the API");
                            outbox::remove_delivered(&client, &path, &loaded).await?;
                        }
                        Delivery::Duplicate => {
                            tracing::info!(round = result.round, api = %url, "round was already stored by the API");
                            outbox::remove_delivered(&client, &path, &loaded).await?;
                        }
                        Delivery::Refused(refusal) => {
                            tracing::error!(round = result.round, api = %url, status = %refusal.status, answer = %refusal.body, "the API refused the round; kept in {{root}}/rejected (see `fleetmeter outbox list`)");
                            let rejected = outbox::Rejected::new(
                                Some(refusal.status.as_u16()),
                                &refusal.body,
                                Some(&url),
                                &loaded.data,
                            );
                            outbox::reject(&client, name, &rejected).await?;
                            self.report_rejected(&client).await?;
                        }
                    }
                    self.report(|e| e.backlog(total - done - 1));
                }
                Err(source) => {
                    self.report(|e| e.failed());
                    self.report(|e| e.newer(newer));
                    return Err(DrainError::Api {
                        source,
                        backlog: total - done,
                    });
                }
            }
        }
        self.report(|e| e.backlog(newer));
        self.report(|e| e.newer(newer));
        self.report_rejected(&client).await?;
        let collected = outbox::collect_garbage(&client).await?;
        if collected > 0 {
            tracing::info!(
                directories = collected,
                "deleted the parts of rounds no entry refers to"
            );
        }
        Ok(0)
    }

    /// An entry in a newer contract version than this agent reads stays where it is,
    /// unchanged, for a leader that reads it; said once per entry.
    fn set_aside(&self, path: &str, version: u32, round: Option<u64>) {
        let first = self
            .newer_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_owned());
        if first {
            tracing::warn!(node = %path, ?round, version, reads_up_to = self.settings.wire_version, "an outbox entry in a newer wire contract version than this agent reads: set aside unchanged (not sent, not deleted); a leader that reads version {version} publishes it — upgrade this agent");
        }
    }

    /// Reports how many rounds wait in `{root}/rejected` (after each move there, and at the
    /// end of each drain: an operator may resend or discard meanwhile).
    async fn report_rejected(&self, client: &crate::coord::FleetClient) -> Result<(), CoordError> {
        if self.events.is_some() {
            let rejected = outbox::rejected_rounds(client).await?.len();
            self.report(|e| e.rejected_waiting(rejected));
        }
        Ok(())
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
        let backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        retry_loop(backoff, nudge, stop, || self.drain(session, &api_url)).await;
    }
}

/// Calls `drain` until `stop`: after a success, again when nudged or after [`IDLE`]; after a
/// failure, again after the back-off's next delay (a nudge does not cut a back-off short, or
/// every committed round would hammer an API that is down).
async fn retry_loop<F, Fut>(
    mut backoff: Backoff,
    nudge: &Notify,
    stop: &CancellationToken,
    mut drain: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, DrainError>>,
{
    loop {
        // Interruptible: a result sent but not yet deleted is sent again by the next
        // leader, which the API recognises as a duplicate.
        let Some(drained) = stop.run_until_cancelled(drain()).await else {
            return;
        };
        let wait = match drained {
            Ok(_) => {
                backoff.reset();
                None
            }
            Err(DrainError::Api { source, backlog }) => {
                let wait = backoff.next_delay();
                tracing::warn!(reason = %source, backlog, retry_in = ?wait, "cannot publish yet; results wait in ZooKeeper");
                Some(wait)
            }
            Err(DrainError::Coord(err)) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %err, retry_in = ?wait, "cannot read the outbox; retrying");
                Some(wait)
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = nudge.notified(), if wait.is_none() => {}
            () = tokio::time::sleep(wait.unwrap_or(IDLE)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    #[test]
    fn outbox_names_sort_in_round_order() {
        let mut names = vec![result_path(10), result_path(9), result_path(100)];
        names.sort();
        assert_eq!(names, [result_path(9), result_path(10), result_path(100)]);
    }

    fn api_down() -> DrainError {
        DrainError::Api {
            source: SendError::Status {
                status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
                body: "down".into(),
            },
            backlog: 1,
        }
    }

    /// Runs the retry loop for `until` with a drain whose `n`th attempt (from 1) fails when
    /// `fails(n)`; returns when each attempt happened, relative to the start.
    async fn attempts(
        fails: impl Fn(usize) -> bool,
        backoff: Backoff,
        until: Duration,
    ) -> Vec<Duration> {
        let start = Instant::now();
        let calls = Mutex::new(Vec::new());
        let (nudge, stop) = (Notify::new(), CancellationToken::new());
        let drain = || {
            let mut calls = calls.lock().unwrap();
            calls.push(start.elapsed());
            let failed = fails(calls.len());
            async move { if failed { Err(api_down()) } else { Ok(0) } }
        };
        tokio::select! {
            () = retry_loop(backoff, &nudge, &stop, drain) => panic!("the loop ends only on stop"),
            () = tokio::time::sleep(until) => {}
        }
        calls.into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_that_is_down_is_retried_with_doubling_capped_delays() {
        let backoff =
            Backoff::new(Duration::from_millis(500), Duration::from_secs(4)).without_jitter();
        let at = attempts(|n| n <= 6, backoff, Duration::from_secs(26)).await;
        let gaps: Vec<u128> = at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
        // Six failures wait 0.5, 1, 2, 4, 4, 4 s; the seventh attempt (at 15.5 s) succeeds;
        // then the loop idles 5 s between drains.
        assert_eq!(gaps, [500, 1000, 2000, 4000, 4000, 4000, 5000, 5000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_back_off() {
        // Fails twice, succeeds, then fails again: the second run of failures starts over
        // at the initial delay.
        let backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).without_jitter();
        let at = attempts(|n| n != 3, backoff, Duration::from_millis(5350)).await;
        let at: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        // 0: fail, +100: fail, +200 = 300: ok, +5000 idle = 5300: fail (initial delay again).
        assert_eq!(at, [0, 100, 300, 5300]);
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_retries_stay_within_half_to_one_and_a_half_of_the_schedule() {
        let backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(2));
        let at = attempts(|n| n <= 5, backoff, Duration::from_secs(12)).await;
        let gaps: Vec<f64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        for (gap, nominal) in gaps.iter().zip([0.4, 0.8, 1.6, 2.0, 2.0]) {
            assert!(
                *gap >= nominal * 0.5 && *gap < nominal * 1.5,
                "{gap} s for a nominal {nominal} s ({gaps:?})"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_nudge_drains_at_once_when_idle_and_stop_ends_the_loop() {
        let stop = CancellationToken::new();
        let nudge = Notify::new();
        let start = Instant::now();
        let calls = Mutex::new(Vec::<Duration>::new());
        let drain = || {
            calls.lock().unwrap().push(start.elapsed());
            async { Ok(0) }
        };
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let driver = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            nudge.notify_one();
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.cancel();
        };
        tokio::join!(retry_loop(backoff, &nudge, &stop, drain), driver);
        let at: Vec<u128> = calls
            .into_inner()
            .unwrap()
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(at, [0, 1000], "drained at the start and right at the nudge");
        assert_eq!(start.elapsed(), Duration::from_secs(2), "stopped at once");
    }
}
