//! The health verdict behind `GET /healthz`: unhealthy before the first connection, while
//! the session is lost (expired, closed, or disconnected for longer than the session
//! timeout), when no round has closed for `unhealthy_after_periods` sampling periods,
//! while a plugin has failed [`PLUGIN_FAILURES_UNHEALTHY`] calls in a row (a stuck or broken
//! sensor: the device is up, but measures nothing), and, on the leader, while the outbox is
//! full (new results are not stored).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::metrics::state_name;
use crate::{
    coord::SessionStatus,
    plugin::{PluginKind, PluginStats},
    publish::{TlsProblem, outbox::Ledger},
};

/// Failed plugin calls in a row that make the agent unhealthy. One slow sample is not a
/// broken sensor; three in a row (the default back-off threshold) are.
pub const PLUGIN_FAILURES_UNHEALTHY: u32 = 3;

/// The last word on one plugin.
#[derive(Clone, Debug)]
struct PluginHealth {
    name: String,
    consecutive_failures: u32,
    last_failure: Option<String>,
}

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
    /// After each call of the sensor and of the aggregator.
    sensor: Option<PluginHealth>,
    aggregator: Option<PluginHealth>,
    /// The outbox's ledger and bound, while leading.
    outbox: Option<(Ledger, Ledger)>,
    /// Why TLS to the API failed on the last request, while leading.
    tls: Option<TlsProblem>,
}

impl HealthTracker {
    pub(super) fn new(session_timeout: Duration, unhealthy_after_periods: u32) -> Self {
        Self {
            session_timeout,
            unhealthy_after_periods,
            started: Instant::now(),
            session: None,
            last_round: None,
            sensor: None,
            aggregator: None,
            outbox: None,
            tls: None,
        }
    }

    pub(super) fn plugin(&mut self, kind: PluginKind, name: &str, stats: &PluginStats) {
        let health = Some(PluginHealth {
            name: name.to_owned(),
            consecutive_failures: stats.consecutive_failures,
            last_failure: stats.last_failure.clone(),
        });
        match kind {
            PluginKind::Sensor => self.sensor = health,
            PluginKind::Aggregator => self.aggregator = health,
        }
    }

    pub(super) fn session(&mut self, now: SessionStatus) {
        if self.session.is_none_or(|(s, _)| s != now) {
            self.session = Some((now, Instant::now()));
        }
    }

    /// A round the device loop opened. It only reports rounds after the last one it saw
    /// (`coord::barrier`), which after a fleet state restart may carry a lower number.
    pub(super) fn round_opened(&mut self, round: u64) {
        self.last_round = Some((round, Instant::now()));
    }

    /// The leader's outbox after its last commit (`None`: not leading).
    pub(super) fn outbox(&mut self, now: Option<(Ledger, Ledger)>) {
        self.outbox = now;
    }

    /// The TLS problem of the last request to the API (`None`: it worked, or not leading).
    pub(super) fn tls(&mut self, now: Option<TlsProblem>) {
        self.tls = now;
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
        for (kind, plugin) in [
            (PluginKind::Sensor, &self.sensor),
            (PluginKind::Aggregator, &self.aggregator),
        ] {
            if let Some(p) = plugin
                && p.consecutive_failures >= PLUGIN_FAILURES_UNHEALTHY
            {
                problems.push(format!(
                    "the {kind} plugin {} has failed its last {} calls (last: {})",
                    p.name,
                    p.consecutive_failures,
                    p.last_failure.as_deref().unwrap_or("unknown")
                ));
            }
        }
        if let Some((now, max)) = self.outbox
            && !now.fits(1, &max)
        {
            problems.push(format!(
                "the outbox is full ({} rounds, {} bytes; at most {} rounds, {} bytes): new results are not stored until the API takes some or refused ones are discarded (fleetmeter outbox list)",
                now.rounds, now.bytes, max.rounds, max.bytes
            ));
        }
        if let Some(problem) = self.tls {
            problems.push(format!(
                "results cannot reach the API (they wait in ZooKeeper): {}",
                problem.advice()
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(consecutive_failures: u32) -> PluginStats {
        PluginStats {
            consecutive_failures,
            last_failure: Some("exceeded its time limit of 500ms per call".into()),
            ..PluginStats::default()
        }
    }

    #[test]
    fn a_sensor_failing_call_after_call_is_the_named_cause() {
        let mut tracker = HealthTracker::new(Duration::from_secs(4), 5);
        tracker.session(SessionStatus::Connected { generation: 1 });
        tracker.plugin(PluginKind::Sensor, "stuck", &stats(2));
        assert!(
            tracker.verdict("1", None).healthy,
            "two slow samples are not a broken sensor"
        );
        tracker.plugin(PluginKind::Sensor, "stuck", &stats(3));
        let verdict = tracker.verdict("1", None);
        assert!(!verdict.healthy);
        assert_eq!(
            verdict.problems,
            vec![
                "the sensor plugin stuck has failed its last 3 calls (last: exceeded its time \
                 limit of 500ms per call)"
                    .to_owned()
            ]
        );
        tracker.plugin(PluginKind::Sensor, "stuck", &stats(0));
        assert!(
            tracker.verdict("1", None).healthy,
            "one good call clears it"
        );
    }
}
