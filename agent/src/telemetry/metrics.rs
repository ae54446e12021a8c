//! The agent's Prometheus metrics (all prefixed `fleetmeter_`): registered once, recorded by
//! the round loop, the publisher and the plugin calls through [`super::Telemetry`], rendered
//! in the OpenMetrics text format for `GET /metrics`.

use std::{
    sync::{Arc, OnceLock, atomic::AtomicU64},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

pub use super::labels::PluginLabels;
pub(super) use super::labels::state_name;
use super::labels::{
    InfoLabels, KindLabels, OutcomeLabels, ReasonLabels, RunningLabels, SESSION_STATES,
    StateLabels, WhatLabels, kind_name,
};
use super::quantities::QuantityMetrics;
use crate::{
    coord::{SessionStatus, dynconfig::DynConfig},
    plugin::{PluginKind, PluginStats},
    publish::{Delivery, outbox::Ledger},
};

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A round the leader committed, as the metrics record it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CommittedRound<'a> {
    /// From the round's start to its commit.
    pub duration: Duration,
    /// How long the leader waited for readings.
    pub collect: Duration,
    /// Readings aggregated.
    pub used: usize,
    /// Live devices without a reading at the collection deadline.
    pub missed: usize,
    /// The round's value; `None` when it published nothing.
    pub value: Option<f64>,
    /// Its quantities (version 4 results; empty when it published nothing).
    pub quantities: &'a [crate::wire::RoundQuantity],
}

pub(super) struct Metrics {
    registry: Registry,
    quantities: QuantityMetrics,
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
    sample_value: Gauge<f64, AtomicU64>,
    plugin_calls: Family<PluginLabels, Counter>,
    plugin_failures: Family<PluginLabels, Counter>,
    plugin_guest_errors: Family<PluginLabels, Counter>,
    plugin_backed_off: Family<PluginLabels, Counter>,
    plugin_logs_suppressed: Family<PluginLabels, Counter>,
    plugin_call_seconds: HistogramFamily<KindLabels>,
    publish_backlog: Gauge,
    published: Family<OutcomeLabels, Counter>,
    publish_failures: Counter,
    outbox_rounds: Gauge,
    outbox_bytes: Gauge,
    outbox_max_rounds: Gauge,
    outbox_max_bytes: Gauge,
    outbox_rejected: Gauge,
    results_dropped: Family<ReasonLabels, Counter>,
    rounds_taken_over: Family<OutcomeLabels, Counter>,
    rounds_given_up: Family<ReasonLabels, Counter>,
    artifacts_refused: Family<ReasonLabels, Counter>,
    rollout_transitions: Family<StateLabels, Counter>,
    plugin_running: Family<RunningLabels, Gauge>,
    entries_newer: Gauge,
    publish_tls_errors: Family<ReasonLabels, Counter>,
    untrusted_refused: Family<WhatLabels, Counter>,
    session_state: Family<StateLabels, Gauge>,
    sessions: Counter,
    running_last: std::sync::Mutex<std::collections::HashMap<&'static str, RunningLabels>>,
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

impl Metrics {
    pub(super) fn new(device: &str, dynconfig: Arc<OnceLock<DynConfig>>) -> Self {
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
        registry.register_collector(Box::new(Live { dynconfig }));
        let quantities = QuantityMetrics::register(&mut registry);
        let metrics = Self {
            quantities,
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
                "Value of the last round this agent committed, its primary quantity (unchanged by rounds without one)",
                Gauge::<f64, AtomicU64>::default()
            ),
            samples: metric!(
                "samples",
                "This device's sensor samples, by outcome (ok, failed)",
                Family::default()
            ),
            sample_value: metric!(
                "sample_value",
                "This device's last successful sensor sample, its first quantity (the per-device panel)",
                Gauge::<f64, AtomicU64>::default()
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
            plugin_logs_suppressed: metric!(
                "plugin_log_lines_suppressed",
                "Plugin log lines dropped over the plugin's log budget",
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
                "Results sent to the API, by outcome (stored, duplicate, refused: moved to {root}/rejected), and outbox entries that could not be read (unreadable: moved there too)",
                Family::default()
            ),
            outbox_rounds: metric!(
                "outbox_rounds",
                "Rounds in the outbox ({root}/results waiting plus {root}/rejected) after this leader's last commit",
                Gauge::default()
            ),
            outbox_bytes: metric!(
                "outbox_bytes",
                "Bytes of round JSON in the outbox after this leader's last commit",
                Gauge::default()
            ),
            outbox_max_rounds: metric!(
                "outbox_max_rounds",
                "The outbox's bound in rounds ([publish] outbox_max_rounds)",
                Gauge::default()
            ),
            outbox_max_bytes: metric!(
                "outbox_max_bytes",
                "The outbox's bound in bytes ([publish] outbox_max_mib)",
                Gauge::default()
            ),
            outbox_rejected: metric!(
                "outbox_rejected",
                "Rounds the API refused, kept in {root}/rejected until an operator resends or discards them",
                Gauge::default()
            ),
            results_dropped: metric!(
                "results_dropped",
                "Round results not stored, by reason (outbox_full; invalid: the API would refuse it)",
                Family::default()
            ),
            rounds_taken_over: metric!(
                "rounds_taken_over",
                "Rounds released by a previous leader that this agent finished as the new leader, by outcome (on_time: within the round's deadline; late: after it, within the hand-over grace)",
                Family::default()
            ),
            rounds_given_up: metric!(
                "rounds_given_up",
                "Rounds released by a previous leader that this agent could not finish and released past, by reason (too_late: later than the round's deadline plus the hand-over grace)",
                Family::default()
            ),
            artifacts_refused: metric!(
                "artifacts_refused",
                "Fleet plugin artifacts or rollout records this agent refused, by reason (unknown, incomplete, bad_manifest, too_large, bad_chunk, digest_mismatch, signature, load, bad_record, zookeeper); it keeps its current plugin",
                Family::default()
            ),
            rollout_transitions: metric!(
                "rollout_transitions",
                "Plugin rollout transitions this agent decided as the leader, by state entered (promoted, waiting, rolled_back)",
                Family::default()
            ),
            plugin_running: metric!(
                "plugin_running",
                "1 for the plugin this agent runs for each kind, with its component's sha256 (0 for the ones it ran before)",
                Family::default()
            ),
            entries_newer: metric!(
                "outbox_newer_entries",
                "Outbox entries in a newer wire contract version than this agent reads, set aside (kept, not sent) for a newer leader",
                Gauge::default()
            ),
            publish_tls_errors: metric!(
                "publish_tls_errors",
                "Requests to the API that failed on TLS, by reason (untrusted, name_mismatch, expired, not_tls, tls_on_http, client_certificate, other)",
                Family::default()
            ),
            untrusted_refused: metric!(
                "zk_refused",
                "Values read from ZooKeeper that the fleet did not write and this agent refused, by what (round: moved outside the leader; counter: unreadable or moved; result: an outbox entry without a valid commit mark)",
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
            running_last: std::sync::Mutex::default(),
            registry,
        };
        // Series that exist from the start read 0 rather than "no data" in Prometheus
        // (increase() over a series that appears later misses its first step).
        for outcome in ["ok", "failed"] {
            let _ = metrics.samples.get_or_create(&OutcomeLabels { outcome });
        }
        for outcome in ["stored", "duplicate", "refused"] {
            let _ = metrics.published.get_or_create(&OutcomeLabels { outcome });
        }
        metrics
    }

    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub(super) fn plugin_loaded(&self, kind: PluginKind, plugin: &str) {
        let labels = PluginLabels {
            kind: kind_name(kind),
            plugin: plugin.to_owned(),
        };
        for family in [
            &self.plugin_calls,
            &self.plugin_failures,
            &self.plugin_guest_errors,
            &self.plugin_backed_off,
            &self.plugin_logs_suppressed,
        ] {
            let _ = family.get_or_create(&labels);
        }
    }

    pub(super) fn session(&self, now: SessionStatus, new_sessions: u64) {
        for state in SESSION_STATES {
            self.session_state
                .get_or_create(&StateLabels { state })
                .set(i64::from(state == state_name(now)));
        }
        if new_sessions > 0 {
            self.sessions.inc_by(new_sessions);
        }
    }

    pub(super) fn members(&self, count: usize) {
        self.members.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub(super) fn round_opened(&self, round: u64) {
        self.round.set(i64::try_from(round).unwrap_or(i64::MAX));
    }

    pub(super) fn leadership(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        if leading {
            self.leader_acquired.inc();
        } else {
            // Only the leader publishes: a follower's backlog is not its to report.
            self.publish_backlog.set(0);
            self.outbox_rounds.set(0);
            self.outbox_bytes.set(0);
            self.outbox_rejected.set(0);
        }
    }

    pub(super) fn round_committed(&self, round: &CommittedRound) {
        self.rounds_committed.inc();
        self.round_seconds.observe(round.duration.as_secs_f64());
        self.collect_seconds.observe(round.collect.as_secs_f64());
        self.readings_used.inc_by(round.used as u64);
        self.readings_missed.inc_by(round.missed as u64);
        self.last_round_readings
            .set(i64::try_from(round.used).unwrap_or(i64::MAX));
        if let Some(value) = round.value {
            self.last_value.set(value);
        }
        self.quantities.round(round.quantities);
    }

    /// A sample: its quantities, or `None` when it failed.
    pub(super) fn sample(&self, sample: Option<&[crate::wire::Quantity]>) {
        let outcome = if sample.is_some() { "ok" } else { "failed" };
        self.samples.get_or_create(&OutcomeLabels { outcome }).inc();
        if let Some(first) = sample.and_then(<[_]>::first) {
            self.sample_value.set(first.value);
        }
        self.quantities.sample(sample.unwrap_or_default());
    }

    pub(super) fn quantity_refused(&self, name: &str) {
        self.quantities.refused(name);
    }

    pub(super) fn plugin_call(
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
        let suppressed = delta(|s| s.logs_suppressed);
        if suppressed > 0 {
            self.plugin_logs_suppressed
                .get_or_create(&labels)
                .inc_by(suppressed);
        }
        let busy = after.busy.saturating_sub(before.busy);
        if backed_off == 0 {
            self.plugin_call_seconds
                .get_or_create(&KindLabels { kind })
                .observe(busy.as_secs_f64());
        }
    }

    pub(super) fn publish_backlog(&self, backlog: usize) {
        self.publish_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
    }

    pub(super) fn delivered(&self, delivery: &Delivery) {
        let outcome = match delivery {
            Delivery::Stored => "stored",
            Delivery::Duplicate => "duplicate",
            Delivery::Refused(_) => "refused",
        };
        self.published
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(super) fn publish_failed(&self) {
        self.publish_failures.inc();
    }

    pub(super) fn unreadable(&self) {
        self.published
            .get_or_create(&OutcomeLabels {
                outcome: "unreadable",
            })
            .inc();
    }

    pub(super) fn rejected_waiting(&self, rejected: usize) {
        self.outbox_rejected
            .set(i64::try_from(rejected).unwrap_or(i64::MAX));
    }

    pub(super) fn outbox(&self, now: Ledger, max: Ledger) {
        let set = |gauge: &Gauge, v: u64| gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&self.outbox_rounds, now.rounds);
        set(&self.outbox_bytes, now.bytes);
        set(&self.outbox_max_rounds, max.rounds);
        set(&self.outbox_max_bytes, max.bytes);
    }

    pub(super) fn zk_refused(&self, what: &'static str) {
        self.untrusted_refused
            .get_or_create(&WhatLabels { what })
            .inc();
    }

    pub(super) fn publish_tls_error(&self, reason: &'static str) {
        self.publish_tls_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(super) fn round_taken_over(&self, outcome: &'static str) {
        self.rounds_taken_over
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(super) fn artifact_refused(&self, reason: &'static str) {
        self.artifacts_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(super) fn rollout_transition(&self, state: &'static str) {
        self.rollout_transitions
            .get_or_create(&StateLabels { state })
            .inc();
    }

    /// `plugin`@`sha256` is what runs for `kind` now; the others of that kind are set to 0.
    pub(super) fn plugin_running(&self, kind: PluginKind, plugin: &str, sha256: &str) {
        let kind = kind_name(kind);
        let labels = RunningLabels {
            kind,
            plugin: plugin.to_owned(),
            sha256: sha256.to_owned(),
        };
        // A family cannot be iterated: the one set before is remembered instead.
        let mut last = self.running_last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(previous) = last.insert(kind, labels.clone())
            && previous != labels
        {
            self.plugin_running.get_or_create(&previous).set(0);
        }
        self.plugin_running.get_or_create(&labels).set(1);
    }

    pub(super) fn round_given_up(&self, reason: &'static str) {
        self.rounds_given_up
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(super) fn newer_entries(&self, count: usize) {
        self.entries_newer
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub(super) fn result_dropped(&self, reason: &'static str) {
        self.results_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
