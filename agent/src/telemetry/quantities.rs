//! The per-quantity metrics, whose `quantity` label is bounded: the first
//! [`MAX_QUANTITY_LABELS`] names this agent sees get a series each, later ones none (said once
//! in the log), so a plugin that names its quantities anew every round cannot grow the
//! scrape without end.

use std::{
    collections::BTreeSet,
    sync::{Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::wire::{Quantity, RoundQuantity};

/// Distinct `quantity` label values one agent exports.
pub const MAX_QUANTITY_LABELS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QuantityLabels {
    quantity: String,
}

type ValueFamily = Family<QuantityLabels, Gauge<f64, AtomicU64>>;

pub(super) struct QuantityMetrics {
    sample: ValueFamily,
    round: ValueFamily,
    refused: Family<QuantityLabels, Counter>,
    /// The names given a series so far, and whether a name was turned away.
    known: Mutex<(BTreeSet<String>, bool)>,
}

impl QuantityMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            sample: ValueFamily::default(),
            round: ValueFamily::default(),
            refused: Family::default(),
            known: Mutex::new((BTreeSet::new(), false)),
        };
        registry.register(
            "sample_quantity_value",
            "This device's last successful sample, by quantity",
            metrics.sample.clone(),
        );
        registry.register(
            "last_round_quantity_value",
            "Each quantity's value in the last round this agent committed (unchanged by rounds without one)",
            metrics.round.clone(),
        );
        registry.register(
            "quantities_refused",
            "Quantities left out of a round this agent led because the devices disagreed on their unit",
            metrics.refused.clone(),
        );
        metrics
    }

    /// `name`'s labels, unless the bound is reached and it has none yet.
    fn labels(&self, name: &str) -> Option<QuantityLabels> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let (names, warned) = &mut *known;
        if !names.contains(name) {
            if names.len() >= MAX_QUANTITY_LABELS {
                if !*warned {
                    *warned = true;
                    tracing::warn!(
                        quantity = %name,
                        "more than {MAX_QUANTITY_LABELS} distinct quantities seen: later ones get no per-quantity metrics (restart the agent to reset)"
                    );
                }
                return None;
            }
            names.insert(name.to_owned());
        }
        Some(QuantityLabels {
            quantity: name.to_owned(),
        })
    }

    pub(super) fn sample(&self, sample: &[Quantity]) {
        for q in sample {
            if let Some(labels) = self.labels(&q.name) {
                self.sample.get_or_create(&labels).set(q.value);
            }
        }
    }

    pub(super) fn round(&self, quantities: &[RoundQuantity]) {
        for q in quantities {
            if let (Some(value), Some(labels)) = (q.value, self.labels(&q.name)) {
                self.round.get_or_create(&labels).set(value);
            }
        }
    }

    pub(super) fn refused(&self, name: &str) {
        if let Some(labels) = self.labels(name) {
            self.refused.get_or_create(&labels).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantity_label_is_bounded() {
        let mut registry = Registry::default();
        let metrics = QuantityMetrics::register(&mut registry);
        for i in 0..MAX_QUANTITY_LABELS + 10 {
            metrics.sample(&[Quantity::new(format!("q{i}"), 1.0, "")]);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("sample_quantity_value{"))
            .count();
        assert_eq!(series, MAX_QUANTITY_LABELS);
        // A known name still updates.
        metrics.sample(&[Quantity::new("q0", 5.0, "")]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("sample_quantity_value{quantity=\"q0\"} 5.0"),
            "{text}"
        );
    }
}
