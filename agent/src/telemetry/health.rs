//! The health verdict behind `GET /healthz`: unhealthy before the first connection, while
//! the session is lost (expired, closed, or disconnected for longer than the session
//! timeout), and when no round has closed for `unhealthy_after_periods` sampling periods.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::metrics::state_name;
use crate::coord::SessionStatus;

/// The `/healthz` answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    pub healthy: bool,
    pub device: String,
    /// `connecting`, `connected`, `suspended`, `lost` or `closed`.
    pub session: &'static str,
    pub round: Option<u64>,
    /// Seconds since a round last closed (or since the agent started, before the first).
    pub seconds_since_round: f64,
    pub sampling_period_seconds: f64,
    /// Why it is unhealthy; empty when healthy.
    pub problems: Vec<String>,
}

/// What the verdict is decided from.
#[derive(Debug)]
pub(super) struct HealthTracker {
    session_timeout: Duration,
    unhealthy_after_periods: u32,
    started: Instant,
    /// The session's state and since when (`None` until the first connection).
    session: Option<(SessionStatus, Instant)>,
    /// The last round this agent saw open (its predecessor closed then).
    last_round: Option<(u64, Instant)>,
}

impl HealthTracker {
    pub(super) fn new(session_timeout: Duration, unhealthy_after_periods: u32) -> Self {
        Self {
            session_timeout,
            unhealthy_after_periods,
            started: Instant::now(),
            session: None,
            last_round: None,
        }
    }

    pub(super) fn session(&mut self, now: SessionStatus) {
        if self.session.is_none_or(|(s, _)| s != now) {
            self.session = Some((now, Instant::now()));
        }
    }

    /// Rounds only move forward: an older round seen late changes nothing.
    pub(super) fn round_opened(&mut self, round: u64) {
        if self.last_round.is_none_or(|(r, _)| round > r) {
            self.last_round = Some((round, Instant::now()));
        }
    }

    /// The verdict now; `period` is the sampling period in force, once known.
    pub(super) fn verdict(&self, device: &str, period: Option<Duration>) -> Health {
        let now = Instant::now();
        let mut problems = Vec::new();
        let session = match self.session {
            None => {
                problems.push("not connected to ZooKeeper yet".to_owned());
                "connecting"
            }
            Some((status, since)) => {
                match status {
                    SessionStatus::Connected { .. } => {}
                    SessionStatus::Suspended { .. } => {
                        let for_how_long = now - since;
                        if for_how_long > self.session_timeout {
                            problems.push(format!(
                                "disconnected from ZooKeeper for {:.1} s, longer than the session timeout ({:.1} s): the session is lost",
                                for_how_long.as_secs_f64(),
                                self.session_timeout.as_secs_f64()
                            ));
                        }
                    }
                    SessionStatus::Lost { .. } => {
                        problems.push("the ZooKeeper session expired; rebuilding it".to_owned())
                    }
                    SessionStatus::Closed => {
                        problems.push("the ZooKeeper session is closed (shutting down)".to_owned())
                    }
                }
                state_name(status)
            }
        };
        let since_round = now - self.last_round.map_or(self.started, |(_, at)| at);
        if let Some(period) = period {
            let limit = period * self.unhealthy_after_periods;
            if since_round > limit {
                problems.push(format!(
                    "no round has closed for {:.1} s ({} sampling periods of {:.1} s)",
                    since_round.as_secs_f64(),
                    self.unhealthy_after_periods,
                    period.as_secs_f64()
                ));
            }
        }
        Health {
            healthy: problems.is_empty(),
            device: device.to_owned(),
            session,
            round: self.last_round.map(|(r, _)| r),
            seconds_since_round: since_round.as_secs_f64(),
            sampling_period_seconds: period.map_or(0.0, |p| p.as_secs_f64()),
            problems,
        }
    }
}
