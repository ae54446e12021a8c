//! The label sets of the agent's metrics, and the names their values take.

use prometheus_client::encoding::EncodeLabelSet;

use crate::{coord::SessionStatus, plugin::PluginKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// `sensor` or `aggregator`.
    pub kind: &'static str,
    /// The plugin's own name (its `describe`).
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabels {
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabels {
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabels {
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct WhatLabels {
    pub(super) what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StateLabels {
    pub(super) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RunningLabels {
    pub(super) kind: &'static str,
    pub(super) plugin: String,
    pub(super) sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct InfoLabels {
    pub(super) device: String,
    pub(super) version: &'static str,
}

pub(super) const SESSION_STATES: [&str; 4] = ["connected", "suspended", "lost", "closed"];

pub(super) fn state_name(status: SessionStatus) -> &'static str {
    match status {
        SessionStatus::Connected { .. } => "connected",
        SessionStatus::Suspended { .. } => "suspended",
        SessionStatus::Lost { .. } => "lost",
        SessionStatus::Closed => "closed",
    }
}

pub(super) fn kind_name(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Sensor => "sensor",
        PluginKind::Aggregator => "aggregator",
    }
}
