//! The API's Prometheus metrics (`GET /metrics`, OpenMetrics text), all prefixed
//! `fleetmeter_api_`.

use std::{
    collections::BTreeSet,
    sync::{Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuantityLabels {
    pub quantity: String,
}

/// Distinct `quantity` label values this process exports: names beyond the first ones seen
/// get no series, so a client cannot grow the scrape without end.
pub const MAX_QUANTITY_LABELS: usize = 64;

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily,
    pub rounds_stored: Counter,
    pub round_duplicates: Counter,
    pub round_conflicts: Counter,
    pub values_stored: Counter,
    pub redis_errors: Counter,
    latest_round: Gauge,
    latest_value: Gauge<f64, AtomicU64>,
    latest_quantity: Family<QuantityLabels, Gauge<f64, AtomicU64>>,
    /// The round the gauges above describe; they move together.
    latest: Mutex<Option<u64>>,
    /// The quantity names given a series.
    quantities: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fleetmeter_api");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let request_seconds: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_25, 2.0, 14)));
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request, by route",
            request_seconds.clone(),
        );
        let rounds_stored = Counter::default();
        registry.register(
            "rounds_stored",
            "Rounds stored (first write of a round number)",
            rounds_stored.clone(),
        );
        let round_duplicates = Counter::default();
        registry.register(
            "round_duplicates",
            "Replays of an already stored round with the same content (nothing stored)",
            round_duplicates.clone(),
        );
        let round_conflicts = Counter::default();
        registry.register(
            "round_conflicts",
            "Writes of an already stored round with different content (refused with 409)",
            round_conflicts.clone(),
        );
        let values_stored = Counter::default();
        registry.register(
            "values_stored",
            "Values stored through GET /nuevo",
            values_stored.clone(),
        );
        let redis_errors = Counter::default();
        registry.register(
            "redis_errors",
            "Requests that failed because Redis did not answer",
            redis_errors.clone(),
        );
        let latest_round = Gauge::default();
        registry.register(
            "latest_round",
            "Highest round number stored by this process",
            latest_round.clone(),
        );
        let latest_value = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "latest_value",
            "Value of the highest round stored by this process",
            latest_value.clone(),
        );
        let latest_quantity = Family::<QuantityLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "latest_quantity_value",
            "Each quantity's value in the highest round stored by this process (version 4 rounds)",
            latest_quantity.clone(),
        );
        Self {
            latest_quantity,
            quantities: Mutex::new(BTreeSet::new()),
            registry,
            requests,
            request_seconds,
            rounds_stored,
            round_duplicates,
            round_conflicts,
            values_stored,
            redis_errors,
            latest_round,
            latest_value,
            latest: Mutex::new(None),
        }
    }

    /// Records a newly stored round; the latest-round gauges only move forward.
    pub fn round_stored(&self, round: &crate::round::Round) {
        self.rounds_stored.inc();
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if latest.is_none_or(|l| round.round >= l) {
            *latest = Some(round.round);
            self.latest_round
                .set(i64::try_from(round.round).unwrap_or(i64::MAX));
            self.latest_value.set(round.value);
            let mut known = self.quantities.lock().unwrap_or_else(|e| e.into_inner());
            for q in round.quantities.iter().flatten() {
                let Some(value) = q.value else { continue };
                if !known.contains(&q.name) {
                    if known.len() >= MAX_QUANTITY_LABELS {
                        continue;
                    }
                    known.insert(q.name.clone());
                }
                self.latest_quantity
                    .get_or_create(&QuantityLabels {
                        quantity: q.name.clone(),
                    })
                    .set(value);
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
