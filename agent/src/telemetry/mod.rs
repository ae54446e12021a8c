//! What an agent tells its operators: Prometheus metrics (`GET /metrics`, all prefixed
//! `fleetmeter_`) and a health verdict (`GET /healthz`), served on `[telemetry] listen`.
//!
//! The round loop, the publisher and the plugin calls record into one [`Telemetry`]; the
//! ZooKeeper session, the member list and the dynamic configuration are followed from their
//! `watch` channels. `/healthz` is unhealthy while the session is lost (expired, closed, or
//! disconnected for longer than the session timeout), before the first connection, and when
//! no round has closed for `unhealthy_after_periods` sampling periods.

mod server;

use std::{
    sync::{Arc, Mutex, OnceLock, atomic::AtomicU64},
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    coord::{SessionStatus, dynconfig::DynConfig},
    plugin::{PluginKind, PluginStats},
    publish::Delivery,
};

pub use server::{bind, serve};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// `sensor` or `aggregator`.
    pub kind: &'static str,
    /// The plugin's own name (its `describe`).
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    device: String,
    version: &'static str,
}

const SESSION_STATES: [&str; 4] = ["connected", "suspended", "lost", "closed"];

fn state_name(status: SessionStatus) -> &'static str {
    match status {
        SessionStatus::Connected { .. } => "connected",
        SessionStatus::Suspended { .. } => "suspended",
        SessionStatus::Lost { .. } => "lost",
        SessionStatus::Closed => "closed",
    }
}

fn kind_name(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Sensor => "sensor",
        PluginKind::Aggregator => "aggregator",
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What `/healthz` decides from.
#[derive(Debug)]
struct HealthState {
    started: Instant,
    /// The session's state and since when (`None` until the first connection).
    session: Option<(SessionStatus, Instant)>,
    /// The last round this agent saw open (its predecessor closed then).
    last_round: Option<(u64, Instant)>,
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

/// The agent's metrics and health. Cheap to share (`Arc`); recording never blocks on I/O.
pub struct Telemetry {
    registry: Registry,
    device: String,
    session_timeout: Duration,
    unhealthy_after_periods: u32,
    /// Set once the dynamic configuration is read; the period for health and the rejected
    /// values counter come from it.
    dynconfig: Arc<OnceLock<DynConfig>>,
    health: Mutex<HealthState>,

    leader: Gauge,
    leader_acquired: Counter,
    members: Gauge,
    round: Gauge,
    rounds_committed: Counter,
    round_seconds: Histogram,
    collect_seconds: Histogram,
    readings_used: Counter,
    readings_missed: Counter,
    last_round_readings: Gauge,
    last_value: Gauge<f64, AtomicU64>,
    samples: Family<OutcomeLabels, Counter>,
    plugin_calls: Family<PluginLabels, Counter>,
    plugin_failures: Family<PluginLabels, Counter>,
    plugin_guest_errors: Family<PluginLabels, Counter>,
    plugin_backed_off: Family<PluginLabels, Counter>,
    plugin_call_seconds: HistogramFamily<KindLabels>,
    publish_backlog: Gauge,
    published: Family<OutcomeLabels, Counter>,
    publish_failures: Counter,
    session_state: Family<StateLabels, Gauge>,
    sessions: Counter,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Scrape-time values: read from the dynamic configuration when `/metrics` is asked for.
#[derive(Debug)]
struct Live {
    dynconfig: Arc<OnceLock<DynConfig>>,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(config) = self.dynconfig.get() else {
            return Ok(());
        };
        let period = ConstGauge::new(config.sampling_period.borrow().as_secs_f64());
        period.encode(encoder.encode_descriptor(
            "sampling_period_seconds",
            "The sampling period in force (from {root}/config/sampling_period)",
            None,
            period.metric_type(),
        )?)?;
        let rejected = ConstCounter::new(config.rejected());
        rejected.encode(encoder.encode_descriptor(
            "config_rejected",
            "Values written to {root}/config that this agent refused (the last good value stays)",
            None,
            rejected.metric_type(),
        )?)?;
        Ok(())
    }
}

impl Telemetry {
    pub fn new(device: &str, session_timeout: Duration, unhealthy_after_periods: u32) -> Self {
        let mut registry = Registry::with_prefix("fleetmeter");
        let info = Family::<InfoLabels, Gauge>::default();
        info.get_or_create(&InfoLabels {
            device: device.to_owned(),
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        registry.register("agent_info", "This agent's device id and version", info);

        macro_rules! metric {
            ($name:literal, $help:literal, $metric:expr) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
        }
        let seconds_buckets = || Histogram::new(exponential_buckets(0.05, 2.0, 12));
        let dynconfig = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(Live {
            dynconfig: dynconfig.clone(),
        }));
        let telemetry = Self {
            leader: metric!(
                "leader",
                "1 while this agent leads the fleet",
                Gauge::default()
            ),
            leader_acquired: metric!(
                "leader_acquired",
                "Times this agent became the leader (each one after the first leader is a failover)",
                Counter::default()
            ),
            members: metric!(
                "members",
                "Live devices under {root}/devices, as this agent sees them",
                Gauge::default()
            ),
            round: metric!(
                "round",
                "The round open now, as this agent last saw it",
                Gauge::default()
            ),
            rounds_committed: metric!(
                "rounds_committed",
                "Rounds this agent committed as the leader",
                Counter::default()
            ),
            round_seconds: metric!(
                "round_duration_seconds",
                "From a round's start to its commit, for rounds this agent led",
                seconds_buckets()
            ),
            collect_seconds: metric!(
                "round_collect_seconds",
                "Time the leader waited for the round's readings",
                seconds_buckets()
            ),
            readings_used: metric!(
                "readings_used",
                "Readings aggregated into rounds this agent led",
                Counter::default()
            ),
            readings_missed: metric!(
                "readings_missed",
                "Live devices without a reading at the collection deadline, in rounds this agent led",
                Counter::default()
            ),
            last_round_readings: metric!(
                "last_round_readings",
                "Readings in the last round this agent committed",
                Gauge::default()
            ),
            last_value: metric!(
                "last_round_value",
                "Value of the last round this agent committed (unchanged by rounds without one)",
                Gauge::<f64, AtomicU64>::default()
            ),
            samples: metric!(
                "samples",
                "This device's sensor samples, by outcome (ok, failed)",
                Family::default()
            ),
            plugin_calls: metric!(
                "plugin_calls",
                "Calls into a plugin (including those refused while backing off)",
                Family::default()
            ),
            plugin_failures: metric!(
                "plugin_traps",
                "Plugin calls that trapped, panicked or hit a limit (the instance is rebuilt)",
                Family::default()
            ),
            plugin_guest_errors: metric!(
                "plugin_errors",
                "Errors a plugin returned through the contract",
                Family::default()
            ),
            plugin_backed_off: metric!(
                "plugin_backed_off",
                "Plugin calls refused while backing off after repeated failures",
                Family::default()
            ),
            plugin_call_seconds: metric!(
                "plugin_call_duration_seconds",
                "Time inside a plugin per call, instantiation included, by kind",
                HistogramFamily::<KindLabels>::new_with_constructor(|| Histogram::new(
                    exponential_buckets(0.000_001, 4.0, 12)
                ))
            ),
            publish_backlog: metric!(
                "publish_backlog",
                "Results waiting in the outbox ({root}/results), as this agent's publisher last saw it (0 when not leading)",
                Gauge::default()
            ),
            published: metric!(
                "published",
                "Results sent to the API, by outcome (stored, duplicate, refused)",
                Family::default()
            ),
            publish_failures: metric!(
                "publish_failures",
                "Attempts to publish that failed and will be retried (API unreachable or erroring)",
                Counter::default()
            ),
            session_state: metric!(
                "zookeeper_session_state",
                "1 for the ZooKeeper session's current state (connected, suspended, lost, closed)",
                Family::default()
            ),
            sessions: metric!(
                "zookeeper_sessions",
                "ZooKeeper sessions established (more than 1: a session expired and was rebuilt)",
                Counter::default()
            ),
            registry,
            device: device.to_owned(),
            session_timeout,
            unhealthy_after_periods,
            dynconfig,
            health: Mutex::new(HealthState {
                started: Instant::now(),
                session: None,
                last_round: None,
            }),
        };
        // Series that exist from the start read 0 rather than "no data" in Prometheus
        // (increase() over a series that appears later misses its first step).
        for outcome in ["ok", "failed"] {
            let _ = telemetry.samples.get_or_create(&OutcomeLabels { outcome });
        }
        for outcome in ["stored", "duplicate", "refused"] {
            let _ = telemetry
                .published
                .get_or_create(&OutcomeLabels { outcome });
        }
        telemetry
    }

    /// A plugin was loaded: its series start at 0.
    pub fn plugin_loaded(&self, kind: PluginKind, plugin: &str) {
        let labels = PluginLabels {
            kind: kind_name(kind),
            plugin: plugin.to_owned(),
        };
        for family in [
            &self.plugin_calls,
            &self.plugin_failures,
            &self.plugin_guest_errors,
            &self.plugin_backed_off,
        ] {
            let _ = family.get_or_create(&labels);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Gives the dynamic configuration to health (the period) and to the metrics.
    pub fn set_dynconfig(&self, config: DynConfig) {
        let _ = self.dynconfig.set(config);
    }

    fn health_state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the session's state until the channel closes.
    pub async fn follow_session(&self, mut status: watch::Receiver<SessionStatus>) {
        let mut generation = 0;
        loop {
            let now = *status.borrow_and_update();
            for state in SESSION_STATES {
                self.session_state
                    .get_or_create(&StateLabels { state })
                    .set(i64::from(state == state_name(now)));
            }
            if let SessionStatus::Connected { generation: g } = now
                && g > generation
            {
                self.sessions.inc_by(g - generation);
                generation = g;
            }
            {
                let mut health = self.health_state();
                let changed = health.session.is_none_or(|(s, _)| s != now);
                if changed {
                    health.session = Some((now, Instant::now()));
                }
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    }

    /// Follows the member list until the channel closes.
    pub async fn follow_members(&self, mut members: watch::Receiver<Vec<String>>) {
        loop {
            let count = members.borrow_and_update().len();
            self.members.set(count as i64);
            if members.changed().await.is_err() {
                return;
            }
        }
    }

    /// Round `round` opened (so the one before it closed).
    pub fn round_opened(&self, round: u64) {
        self.round.set(i64::try_from(round).unwrap_or(i64::MAX));
        let mut health = self.health_state();
        if health.last_round.is_none_or(|(r, _)| round > r) {
            health.last_round = Some((round, Instant::now()));
        }
    }

    pub fn leadership(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        if leading {
            self.leader_acquired.inc();
        } else {
            // Only the leader publishes: a follower's backlog is not its to report.
            self.publish_backlog.set(0);
        }
    }

    /// A round this agent committed as the leader.
    pub fn round_committed(
        &self,
        duration: Duration,
        collect: Duration,
        used: usize,
        missed: usize,
        value: Option<f64>,
    ) {
        self.rounds_committed.inc();
        self.round_seconds.observe(duration.as_secs_f64());
        self.collect_seconds.observe(collect.as_secs_f64());
        self.readings_used.inc_by(used as u64);
        self.readings_missed.inc_by(missed as u64);
        self.last_round_readings.set(used as i64);
        if let Some(value) = value {
            self.last_value.set(value);
        }
    }

    pub fn sample(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.samples.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// One plugin call: the difference between the plugin's counters before and after it.
    pub fn plugin_call(
        &self,
        kind: PluginKind,
        plugin: &str,
        before: &PluginStats,
        after: &PluginStats,
    ) {
        let kind = kind_name(kind);
        let labels = PluginLabels {
            kind,
            plugin: plugin.to_owned(),
        };
        let delta = |f: fn(&PluginStats) -> u64| f(after).saturating_sub(f(before));
        self.plugin_calls
            .get_or_create(&labels)
            .inc_by(delta(|s| s.calls));
        let failures = delta(|s| s.failures);
        if failures > 0 {
            self.plugin_failures.get_or_create(&labels).inc_by(failures);
        }
        let errors = delta(|s| s.guest_errors);
        if errors > 0 {
            self.plugin_guest_errors
                .get_or_create(&labels)
                .inc_by(errors);
        }
        let backed_off = delta(|s| s.backed_off);
        if backed_off > 0 {
            self.plugin_backed_off
                .get_or_create(&labels)
                .inc_by(backed_off);
        }
        let busy = after.busy.saturating_sub(before.busy);
        if backed_off == 0 {
            self.plugin_call_seconds
                .get_or_create(&KindLabels { kind })
                .observe(busy.as_secs_f64());
        }
    }

    pub fn publish_backlog(&self, backlog: usize) {
        self.publish_backlog.set(backlog as i64);
    }

    pub fn delivered(&self, delivery: &Delivery) {
        let outcome = match delivery {
            Delivery::Stored => "stored",
            Delivery::Duplicate => "duplicate",
            Delivery::Refused(_) => "refused",
        };
        self.published
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn publish_failed(&self) {
        self.publish_failures.inc();
    }

    /// Whether this agent is healthy now, and why not.
    pub fn health(&self) -> Health {
        let period = self.dynconfig.get().map(|c| *c.sampling_period.borrow());
        let health = self.health_state();
        let now = Instant::now();
        let mut problems = Vec::new();
        let session = match health.session {
            None => {
                problems.push("not connected to ZooKeeper yet".to_owned());
                "connecting"
            }
            Some((status, since)) => {
                let name = state_name(status);
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
                name
            }
        };
        let since_round = now - health.last_round.map_or(health.started, |(_, at)| at);
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
            device: self.device.clone(),
            session,
            round: health.last_round.map(|(r, _)| r),
            seconds_since_round: since_round.as_secs_f64(),
            sampling_period_seconds: period.map_or(0.0, |p| p.as_secs_f64()),
            problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry() -> Telemetry {
        Telemetry::new("7", Duration::from_secs(4), 3)
    }

    #[test]
    fn every_metric_is_exported_with_the_prefix() {
        let t = telemetry();
        t.leadership(true);
        t.round_opened(12);
        t.round_committed(
            Duration::from_millis(1000),
            Duration::from_millis(30),
            3,
            1,
            Some(80.5),
        );
        t.sample(true);
        t.delivered(&Delivery::Stored);
        t.publish_failed();
        let before = PluginStats::default();
        let after = PluginStats {
            calls: 1,
            failures: 1,
            busy: Duration::from_micros(40),
            ..PluginStats::default()
        };
        t.plugin_call(PluginKind::Sensor, "random-temperature", &before, &after);
        let text = t.render();
        for line in [
            "fleetmeter_agent_info{device=\"7\",version=\"0.1.0\"} 1",
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
    fn rounds_only_move_forward_in_health() {
        let t = telemetry();
        t.round_opened(5);
        t.round_opened(3);
        assert_eq!(t.health().round, Some(5));
    }
}
