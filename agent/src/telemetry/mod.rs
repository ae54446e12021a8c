//! What an agent tells its operators: Prometheus metrics (`GET /metrics`) and a health
//! verdict (`GET /healthz`), served on `[telemetry] listen`.
//!
//! # Layout
//! - [`metrics`]: registration and recording of every `fleetmeter_` metric.
//! - [`health`]: the `/healthz` verdict.
//! - [`server`]: the HTTP endpoints.
//!
//! The round loop, the publisher (through [`PublishEvents`]) and the plugin calls record into
//! one [`Telemetry`]; the ZooKeeper session, the member list and the dynamic configuration are
//! followed from their `watch` channels.

mod health;
mod labels;
mod metrics;
mod quantities;
mod server;

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use tokio::sync::watch;

pub use health::Health;
pub use metrics::{CommittedRound, PluginLabels};
pub use server::{BindError, bind, serve};

use crate::{
    coord::{SessionStatus, dynconfig::DynConfig},
    plugin::{PluginKind, PluginStats},
    publish::{Delivery, PublishEvents, TlsProblem, outbox::Ledger},
};

/// The agent's metrics and health. Cheap to share (`Arc`); recording never blocks on I/O.
pub struct Telemetry {
    device: String,
    /// Set once the dynamic configuration is read; the period for health and the
    /// scrape-time metrics come from it.
    dynconfig: std::sync::Arc<OnceLock<DynConfig>>,
    metrics: metrics::Metrics,
    health: Mutex<health::HealthTracker>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    pub fn new(device: &str, session_timeout: Duration, unhealthy_after_periods: u32) -> Self {
        let dynconfig = std::sync::Arc::new(OnceLock::new());
        Self {
            device: device.to_owned(),
            metrics: metrics::Metrics::new(device, dynconfig.clone()),
            dynconfig,
            health: Mutex::new(health::HealthTracker::new(
                session_timeout,
                unhealthy_after_periods,
            )),
        }
    }

    fn health_tracker(&self) -> std::sync::MutexGuard<'_, health::HealthTracker> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.metrics.render()
    }

    /// Whether this agent is healthy now, and why not.
    pub fn health(&self) -> Health {
        let period = self.dynconfig.get().map(|c| *c.sampling_period.borrow());
        self.health_tracker().verdict(&self.device, period)
    }

    /// Gives the dynamic configuration to health (the period) and to the metrics.
    pub fn set_dynconfig(&self, config: DynConfig) {
        let _ = self.dynconfig.set(config);
    }

    /// A plugin was loaded: its series start at 0.
    pub fn plugin_loaded(&self, kind: PluginKind, plugin: &str) {
        self.metrics.plugin_loaded(kind, plugin);
    }

    /// Follows the session's state until the channel closes.
    pub async fn follow_session(&self, mut status: watch::Receiver<SessionStatus>) {
        let mut generation = 0;
        loop {
            let now = *status.borrow_and_update();
            let mut new_sessions = 0;
            if let SessionStatus::Connected { generation: g } = now
                && g > generation
            {
                new_sessions = g - generation;
                generation = g;
            }
            self.metrics.session(now, new_sessions);
            self.health_tracker().session(now);
            if status.changed().await.is_err() {
                return;
            }
        }
    }

    /// The live devices the leader saw in its last collection. Followers keep no member
    /// list (see `coord::roster`): they report 0.
    pub fn members(&self, count: usize) {
        self.metrics.members(count);
    }

    /// Round `round` opened (so the one before it closed).
    pub fn round_opened(&self, round: u64) {
        self.metrics.round_opened(round);
        self.health_tracker().round_opened(round);
    }

    pub fn leadership(&self, leading: bool) {
        self.metrics.leadership(leading);
        if !leading {
            self.metrics.members(0);
            self.health_tracker().outbox(None);
            self.health_tracker().tls(None);
        }
    }

    /// The outbox after a commit, and its bound (the leader reports it).
    pub fn outbox(&self, now: Ledger, max: Ledger) {
        self.metrics.outbox(now, max);
        self.health_tracker().outbox(Some((now, max)));
    }

    /// A value read from ZooKeeper was refused as not written by the fleet (`what`: `round`,
    /// `counter`, `result`).
    pub fn zk_refused(&self, what: &'static str) {
        self.metrics.zk_refused(what);
    }

    /// A round the previous leader released, finished by this agent (`on_time` or `late`).
    pub fn round_taken_over(&self, outcome: &'static str) {
        self.metrics.round_taken_over(outcome);
    }

    /// A fleet artifact or rollout record refused (`reason`: the metrics label).
    pub fn artifact_refused(&self, reason: &'static str) {
        self.metrics.artifact_refused(reason);
    }

    /// A rollout transition this agent decided as the leader.
    pub fn rollout_transition(&self, state: &'static str) {
        self.metrics.rollout_transition(state);
    }

    /// What runs for `kind` now, with its component's digest.
    pub fn plugin_running(&self, kind: PluginKind, plugin: &str, sha256: &str) {
        self.metrics.plugin_running(kind, plugin, sha256);
    }

    /// A round the previous leader released that this agent released past unfinished.
    pub fn round_given_up(&self, reason: &'static str) {
        self.metrics.round_given_up(reason);
    }

    /// A round's result was not stored (`reason`: `invalid` or `outbox_full`).
    pub fn result_dropped(&self, reason: &'static str) {
        self.metrics.result_dropped(reason);
    }

    /// A round this agent committed as the leader.
    pub fn round_committed(&self, round: &CommittedRound) {
        self.metrics.round_committed(round);
    }

    /// One sensor sample: its quantities, or `None` when it failed.
    pub fn sample(&self, sample: Option<&[crate::wire::Quantity]>) {
        self.metrics.sample(sample);
    }

    /// A quantity left out of a round this agent led (its units differ between devices).
    pub fn quantity_refused(&self, name: &str) {
        self.metrics.quantity_refused(name);
    }

    /// One plugin call: the difference between the plugin's counters before and after it.
    pub fn plugin_call(
        &self,
        kind: PluginKind,
        plugin: &str,
        before: &PluginStats,
        after: &PluginStats,
    ) {
        self.metrics.plugin_call(kind, plugin, before, after);
        self.health_tracker().plugin(kind, plugin, after);
    }
}

impl PublishEvents for Telemetry {
    fn backlog(&self, waiting: usize) {
        self.metrics.publish_backlog(waiting);
    }

    fn delivered(&self, delivery: &Delivery) {
        self.metrics.delivered(delivery);
    }

    fn failed(&self) {
        self.metrics.publish_failed();
    }

    fn unreadable(&self) {
        self.metrics.unreadable();
    }

    fn rejected_waiting(&self, rejected: usize) {
        self.metrics.rejected_waiting(rejected);
    }

    fn newer(&self, entries: usize) {
        self.metrics.newer_entries(entries);
    }

    fn tls(&self, problem: Option<TlsProblem>) {
        if let Some(problem) = problem {
            self.metrics.publish_tls_error(problem.reason());
        }
        self.health_tracker().tls(problem);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::publish::{Delivery, PublishEvents};

    fn telemetry() -> Telemetry {
        Telemetry::new("7", Duration::from_secs(4), 3)
    }

    #[test]
    fn every_metric_is_exported_with_the_prefix() {
        let t = telemetry();
        t.leadership(true);
        t.round_opened(12);
        t.round_committed(&CommittedRound {
            duration: Duration::from_millis(1000),
            collect: Duration::from_millis(30),
            used: 3,
            missed: 1,
            value: Some(80.5),
            quantities: &[crate::wire::RoundQuantity {
                name: "t".into(),
                unit: "Cel".into(),
                value: Some(80.5),
                values: vec![Some(80.0)],
            }],
        });
        t.sample(Some(&[crate::wire::Quantity::new("t", 79.5, "Cel")]));
        t.quantity_refused("rh");
        t.delivered(&Delivery::Stored);
        t.failed();
        let before = PluginStats::default();
        let after = PluginStats {
            calls: 1,
            failures: 1,
            busy: Duration::from_micros(40),
            ..PluginStats::default()
        };
        t.plugin_call(PluginKind::Sensor, "random-temperature", &before, &after);
        let text = t.render();
        let info = format!(
            "fleetmeter_agent_info{{device=\"7\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        for line in [
            info.as_str(),
            "fleetmeter_leader 1",
            "fleetmeter_leader_acquired_total 1",
            "fleetmeter_round 12",
            "fleetmeter_rounds_committed_total 1",
            "fleetmeter_round_duration_seconds_count 1",
            "fleetmeter_round_collect_seconds_count 1",
            "fleetmeter_readings_used_total 3",
            "fleetmeter_readings_missed_total 1",
            "fleetmeter_last_round_readings 3",
            "fleetmeter_last_round_value 80.5",
            "fleetmeter_samples_total{outcome=\"ok\"} 1",
            "fleetmeter_sample_value 79.5",
            "fleetmeter_published_total{outcome=\"stored\"} 1",
            "fleetmeter_publish_failures_total 1",
            "fleetmeter_plugin_calls_total{kind=\"sensor\",plugin=\"random-temperature\"} 1",
            "fleetmeter_plugin_traps_total{kind=\"sensor\",plugin=\"random-temperature\"} 1",
            "fleetmeter_plugin_call_duration_seconds_count{kind=\"sensor\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        t.leadership(false);
        assert!(t.render().contains("fleetmeter_leader 0"));
    }

    #[test]
    fn unhealthy_before_the_first_connection() {
        let health = telemetry().health();
        assert!(!health.healthy);
        assert_eq!(health.session, "connecting");
        assert_eq!(health.problems, ["not connected to ZooKeeper yet"]);
    }

    #[tokio::test]
    async fn session_state_drives_health_and_the_state_gauge() {
        let t = Arc::new(telemetry());
        let (tx, rx) = watch::channel(SessionStatus::Connected { generation: 1 });
        let follower = tokio::spawn({
            let t = t.clone();
            async move { t.follow_session(rx).await }
        });
        let wait_for = |state: &'static str| {
            let t = t.clone();
            async move {
                for _ in 0..200 {
                    if t.health().session == state {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                panic!("session never became {state}");
            }
        };
        wait_for("connected").await;
        assert!(t.health().healthy, "{:?}", t.health());
        tx.send(SessionStatus::Lost { generation: 1 }).unwrap();
        wait_for("lost").await;
        let health = t.health();
        assert!(!health.healthy);
        assert!(health.problems[0].contains("expired"), "{health:?}");
        let text = t.render();
        assert!(text.contains("fleetmeter_zookeeper_session_state{state=\"lost\"} 1"));
        assert!(text.contains("fleetmeter_zookeeper_session_state{state=\"connected\"} 0"));
        tx.send(SessionStatus::Connected { generation: 2 }).unwrap();
        wait_for("connected").await;
        assert!(t.health().healthy);
        assert!(t.render().contains("fleetmeter_zookeeper_sessions_total 2"));
        drop(tx);
        follower.await.unwrap();
    }

    #[test]
    fn a_restarted_fleet_state_is_followed_in_health() {
        // The device loop reports only rounds after the last it saw; after ZooKeeper lost its
        // data the new state may number lower, and health follows it.
        let t = telemetry();
        t.round_opened(5);
        t.round_opened(3);
        assert_eq!(t.health().round, Some(3));
    }

    #[test]
    fn a_full_outbox_makes_the_leader_unhealthy_and_shows_in_metrics() {
        let t = telemetry();
        let max = Ledger {
            rounds: 2,
            bytes: 1000,
        };
        t.outbox(
            Ledger {
                rounds: 1,
                bytes: 10,
            },
            max,
        );
        assert!(!t.health().problems.iter().any(|p| p.contains("outbox")));
        t.outbox(
            Ledger {
                rounds: 2,
                bytes: 20,
            },
            max,
        );
        let health = t.health();
        assert!(
            health
                .problems
                .iter()
                .any(|p| p.contains("the outbox is full (2 rounds")),
            "{:?}",
            health.problems
        );
        t.result_dropped("outbox_full");
        t.rejected_waiting(4);
        let text = t.render();
        assert!(text.contains("fleetmeter_outbox_rounds 2"), "{text}");
        assert!(text.contains("fleetmeter_outbox_max_rounds 2"), "{text}");
        assert!(text.contains("fleetmeter_outbox_bytes 20"), "{text}");
        assert!(text.contains("fleetmeter_outbox_rejected 4"), "{text}");
        assert!(
            text.contains(r#"fleetmeter_results_dropped_total{reason="outbox_full"} 1"#),
            "{text}"
        );
        t.leadership(false);
        assert!(t.health().healthy || !t.health().problems.iter().any(|p| p.contains("outbox")));
    }
}
