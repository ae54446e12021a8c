//! A device's loaded plugins as the round loop uses them: the sensor, and the aggregator,
//! swapped when `{root}/config/aggregator` names another one or a rollout says so
//! ([`crate::rollout`]). Instances fetched for a rollout wait on standby and the one that ran
//! before a switch stays there, so a switch — and a rollback — at a round boundary costs no
//! compilation. Each call ends within the plugin's time limit (dropping a call's future drops
//! the instance, so a caller may also give up sooner, at shutdown) and is recorded in
//! telemetry.

use std::{path::PathBuf, sync::Arc};

use tokio::sync::{Mutex, MutexGuard};

use crate::{
    config::AgentConfig,
    plugin::{
        self, AggregatorPlugin, CallError, LoadError, PluginEngine, PluginKind, PluginSettings,
        PluginSource, Quantity, Reading, SensorPlugin,
    },
    telemetry::Telemetry,
};

/// Which instance of a kind: the agent's own configuration (for an aggregator, the name
/// `{root}/config/aggregator` gives), or a fleet artifact with its configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    Local(String),
    Artifact {
        sha256: String,
        config: Vec<(String, String)>,
    },
}

impl Slot {
    /// The digest, for an artifact.
    pub fn sha256(&self) -> Option<&str> {
        match self {
            Slot::Local(_) => None,
            Slot::Artifact { sha256, .. } => Some(sha256),
        }
    }
}

/// A plugin and the slot it fills.
struct Held<P> {
    slot: Slot,
    plugin: P,
}

/// Most instances of one kind kept on standby.
const STANDBY: usize = 4;

/// A round's aggregation: the value of each quantity to publish (none: nothing to publish),
/// in the order the quantities appear, and `NAME@VERSION` of the aggregator that computed
/// them.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregated {
    pub published: Vec<(String, f64)>,
    pub aggregator: String,
}

impl Aggregated {
    /// The primary quantity's value: the first published.
    pub fn value(&self) -> Option<f64> {
        self.published.first().map(|(_, v)| *v)
    }
}

pub struct Plugins {
    engine: PluginEngine,
    plugin_dir: PathBuf,
    sensor_settings: PluginSettings,
    aggregator_settings: PluginSettings,
    /// The sensor of the agent's own configuration.
    local_sensor: String,
    /// The name a one-value sample's quantity gets: `[plugins] quantity`, else the name of
    /// the sensor of the agent's own configuration, whichever sensor runs (a rollout does not
    /// rename the fleet's series).
    quantity: String,
    sensor: Mutex<Held<SensorPlugin>>,
    /// The quantity a device node without quantities (an agent before 0.2.0) stands for:
    /// the running sensor's name and metadata unit; and the sensor's digest.
    sensor_facts: std::sync::Mutex<((String, String), String)>,
    aggregator: Mutex<Held<AggregatorPlugin>>,
    standby_sensors: Mutex<Vec<Held<SensorPlugin>>>,
    standby_aggregators: Mutex<Vec<Held<AggregatorPlugin>>>,
    /// The artifact aggregator last found missing (said once).
    missing_aggregator: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("plugin_dir", &self.plugin_dir)
            .finish_non_exhaustive()
    }
}

/// Which plugin failed to load.
#[derive(Debug, thiserror::Error)]
pub enum PluginsError {
    #[error("loading the sensor plugin")]
    Sensor(#[source] LoadError),
    #[error("loading the aggregator plugin")]
    Aggregator(#[source] LoadError),
}

fn facts(sensor: &SensorPlugin) -> ((String, String), String) {
    let meta = sensor.metadata();
    (
        (meta.name.clone(), meta.unit.clone()),
        sensor.sha256().to_owned(),
    )
}

impl Plugins {
    /// Loads the configured sensor and aggregator with `engine` (shared by every device of
    /// a process) and records them in `telemetry`.
    pub async fn load(
        engine: &PluginEngine,
        config: &AgentConfig,
        telemetry: &Telemetry,
    ) -> Result<Self, PluginsError> {
        let sensor = SensorPlugin::load(
            engine,
            &plugin::resolve(&config.sensor, &config.plugin_dir),
            config.sensor_settings.clone(),
        )
        .await
        .map_err(PluginsError::Sensor)?;
        let aggregator = Self::load_aggregator_with(
            engine,
            &config.plugin_dir,
            &config.aggregator_settings,
            &config.aggregator,
        )
        .await?;
        telemetry.plugin_loaded(PluginKind::Sensor, &sensor.metadata().name);
        telemetry.plugin_loaded(PluginKind::Aggregator, &aggregator.metadata().name);
        telemetry.plugin_running(PluginKind::Sensor, &sensor.metadata().name, sensor.sha256());
        telemetry.plugin_running(
            PluginKind::Aggregator,
            &aggregator.metadata().name,
            aggregator.sha256(),
        );
        Ok(Self {
            engine: engine.clone(),
            plugin_dir: config.plugin_dir.clone(),
            sensor_settings: config.sensor_settings.clone(),
            local_sensor: config.sensor.clone(),
            quantity: config
                .quantity
                .clone()
                .unwrap_or_else(|| sensor.metadata().name.clone()),
            aggregator_settings: config.aggregator_settings.clone(),
            sensor_facts: std::sync::Mutex::new(facts(&sensor)),
            sensor: Mutex::new(Held {
                slot: Slot::Local(config.sensor.clone()),
                plugin: sensor,
            }),
            aggregator: Mutex::new(Held {
                slot: Slot::Local(config.aggregator.clone()),
                plugin: aggregator,
            }),
            standby_sensors: Mutex::new(Vec::new()),
            standby_aggregators: Mutex::new(Vec::new()),
            missing_aggregator: std::sync::Mutex::new(None),
        })
    }

    async fn load_aggregator_with(
        engine: &PluginEngine,
        plugin_dir: &std::path::Path,
        settings: &PluginSettings,
        name: &str,
    ) -> Result<AggregatorPlugin, PluginsError> {
        AggregatorPlugin::load(engine, &plugin::resolve(name, plugin_dir), settings.clone())
            .await
            .map_err(PluginsError::Aggregator)
    }

    async fn lock_aggregator(&self) -> MutexGuard<'_, Held<AggregatorPlugin>> {
        self.aggregator.lock().await
    }

    fn facts(&self) -> std::sync::MutexGuard<'_, ((String, String), String)> {
        self.sensor_facts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name and unit of the one quantity a device node without quantities (written by
    /// an agent before 0.2.0, whose sensors report one value) stands for: this device's name
    /// for a one-value sample, in the running sensor's unit.
    pub fn legacy_quantity(&self) -> (String, String) {
        (self.quantity.clone(), self.facts().0.1.clone())
    }

    /// The slot of the agent's own sensor.
    pub fn local_sensor(&self) -> Slot {
        Slot::Local(self.local_sensor.clone())
    }

    /// Hex SHA-256 of the running sensor.
    pub fn sensor_sha256(&self) -> String {
        self.facts().1.clone()
    }

    /// One sample of the sensor: its quantities, checked.
    pub async fn sample(&self, telemetry: &Arc<Telemetry>) -> Result<Vec<Quantity>, CallError> {
        let mut sensor = self.sensor.lock().await;
        let before = sensor.plugin.stats().clone();
        let mut sampled = sensor.plugin.sample().await;
        let name = &sensor.plugin.metadata().name;
        // A one-value sample, named after the plugin that took it: the device's name for it.
        if let Ok([one]) = sampled.as_deref_mut()
            && one.name == *name
        {
            one.name.clone_from(&self.quantity);
        }
        telemetry.plugin_call(PluginKind::Sensor, name, &before, sensor.plugin.stats());
        sampled
    }

    /// Loads `bytes` (a fetched, checked artifact) as a `kind` plugin with `config` and the
    /// agent's own limits and grants (a rollout never widens what the device grants), and
    /// puts it on standby for `slot`.
    pub async fn prepare_artifact(
        &self,
        kind: PluginKind,
        slot: Slot,
        label: String,
        bytes: Arc<Vec<u8>>,
    ) -> Result<(), LoadError> {
        let Slot::Artifact { config, .. } = &slot else {
            return Ok(());
        };
        let source = PluginSource::Bytes {
            label: PathBuf::from(label),
            bytes,
        };
        match kind {
            PluginKind::Sensor => {
                let settings = PluginSettings {
                    config: config.clone(),
                    ..self.sensor_settings.clone()
                };
                let plugin = SensorPlugin::load_source(&self.engine, source, settings).await?;
                push_standby(
                    &mut *self.standby_sensors.lock().await,
                    Held { slot, plugin },
                );
            }
            PluginKind::Aggregator => {
                let settings = PluginSettings {
                    config: config.clone(),
                    ..self.aggregator_settings.clone()
                };
                let plugin = AggregatorPlugin::load_source(&self.engine, source, settings).await?;
                push_standby(
                    &mut *self.standby_aggregators.lock().await,
                    Held { slot, plugin },
                );
            }
        }
        Ok(())
    }

    /// Whether `slot` of `kind` is running or on standby.
    pub async fn has(&self, kind: PluginKind, slot: &Slot) -> bool {
        match kind {
            PluginKind::Sensor => {
                self.sensor.lock().await.slot == *slot
                    || self
                        .standby_sensors
                        .lock()
                        .await
                        .iter()
                        .any(|h| h.slot == *slot)
            }
            PluginKind::Aggregator => {
                self.lock_aggregator().await.slot == *slot
                    || self
                        .standby_aggregators
                        .lock()
                        .await
                        .iter()
                        .any(|h| h.slot == *slot)
            }
        }
    }

    /// Drops standby instances whose slot is not in `keep`.
    pub async fn retain_standby(&self, keep: &[Slot]) {
        self.standby_sensors
            .lock()
            .await
            .retain(|h| matches!(h.slot, Slot::Local(_)) || keep.contains(&h.slot));
        self.standby_aggregators
            .lock()
            .await
            .retain(|h| matches!(h.slot, Slot::Local(_)) || keep.contains(&h.slot));
    }

    /// Runs the sensor of `slot` from now on, if it is not the one running: `Ok(true)` when
    /// it switched, `Err` when that instance is not ready (the current one keeps running).
    pub async fn switch_sensor(&self, slot: &Slot, telemetry: &Telemetry) -> Result<bool, String> {
        let mut active = self.sensor.lock().await;
        if active.slot == *slot {
            return Ok(false);
        }
        let mut standby = self.standby_sensors.lock().await;
        let Some(at) = standby.iter().position(|h| h.slot == *slot) else {
            return Err("not fetched and loaded yet".into());
        };
        let next = standby.swap_remove(at);
        let previous = std::mem::replace(&mut *active, next);
        *self.facts() = facts(&active.plugin);
        tracing::info!(
            from = %previous.plugin.metadata().name,
            to = %active.plugin.metadata().name,
            sha256 = %active.plugin.sha256(),
            "sensor switched"
        );
        telemetry.plugin_loaded(PluginKind::Sensor, &active.plugin.metadata().name);
        telemetry.plugin_running(
            PluginKind::Sensor,
            &active.plugin.metadata().name,
            active.plugin.sha256(),
        );
        push_standby(&mut standby, previous);
        Ok(true)
    }

    /// Publishes with the aggregator of `slot` from now on. A local one is loaded from the
    /// plugin directory if needed; an artifact must be on standby. On failure the current
    /// one stays (logged).
    pub async fn switch_aggregator(&self, slot: &Slot, telemetry: &Telemetry) {
        let mut active = self.lock_aggregator().await;
        if active.slot == *slot {
            return;
        }
        let mut standby = self.standby_aggregators.lock().await;
        // Not in the match's scrutinee: its temporaries would live across the load below.
        let found = standby.iter().position(|h| h.slot == *slot);
        let next = match found {
            Some(at) => standby.swap_remove(at),
            None => match slot {
                Slot::Local(name) => {
                    let loaded = Self::load_aggregator_with(
                        &self.engine,
                        &self.plugin_dir,
                        &self.aggregator_settings,
                        name,
                    )
                    .await;
                    match loaded {
                        Ok(plugin) => Held {
                            slot: slot.clone(),
                            plugin,
                        },
                        Err(err) => {
                            let err = anyhow::Error::from(err);
                            tracing::error!(aggregator = %name, error = %format!("{err:#}"), "cannot load the new aggregator; keeping the current one");
                            return;
                        }
                    }
                }
                Slot::Artifact { sha256, .. } => {
                    // Once per artifact: the same holds every round until it is loaded.
                    let mut missing = self
                        .missing_aggregator
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    if missing.as_deref() != Some(sha256.as_str()) {
                        tracing::error!(sha256 = %sha256, "the aggregator the fleet's rollout names is not loaded here (see this agent's REFUSED line); publishing with the current one");
                        *missing = Some(sha256.clone());
                    }
                    return;
                }
            },
        };
        let previous = std::mem::replace(&mut *active, next);
        tracing::info!(from = %previous.plugin.metadata().name, to = %active.plugin.metadata().name, "aggregator swapped");
        telemetry.plugin_loaded(PluginKind::Aggregator, &active.plugin.metadata().name);
        telemetry.plugin_running(
            PluginKind::Aggregator,
            &active.plugin.metadata().name,
            active.plugin.sha256(),
        );
        push_standby(&mut standby, previous);
    }

    /// Aggregates a round's readings. No readings, or a failed call, is no value: the round
    /// publishes nothing (logged, counted).
    pub async fn aggregate(&self, readings: &[Reading], telemetry: &Arc<Telemetry>) -> Aggregated {
        let mut loaded = self.lock_aggregator().await;
        match call_aggregator(&mut loaded.plugin, readings, telemetry).await {
            (aggregator, Ok(published)) => Aggregated {
                published,
                aggregator,
            },
            (aggregator, Err(err)) => {
                tracing::warn!(error = %err, "aggregation failed: this round publishes nothing");
                Aggregated {
                    published: Vec::new(),
                    aggregator,
                }
            }
        }
    }

    /// Runs the standby aggregator of `slot` on the readings, in shadow (nothing it returns
    /// is published): `NAME@VERSION` and its primary quantity's value, or why it failed.
    pub async fn aggregate_shadow(
        &self,
        slot: &Slot,
        readings: &[Reading],
        telemetry: &Arc<Telemetry>,
    ) -> Option<(String, Result<Option<f64>, String>)> {
        let mut standby = self.standby_aggregators.lock().await;
        let held = standby.iter_mut().find(|h| h.slot == *slot)?;
        let (aggregator, published) = call_aggregator(&mut held.plugin, readings, telemetry).await;
        Some((
            aggregator,
            published
                .map(|p| p.first().map(|(_, v)| *v))
                .map_err(|e| e.to_string()),
        ))
    }
}

async fn call_aggregator(
    plugin: &mut AggregatorPlugin,
    readings: &[Reading],
    telemetry: &Arc<Telemetry>,
) -> (String, Result<Vec<(String, f64)>, CallError>) {
    let meta = plugin.metadata();
    let (name, aggregator) = (meta.name.clone(), format!("{}@{}", meta.name, meta.version));
    if readings.is_empty() {
        return (aggregator, Ok(Vec::new()));
    }
    let before = plugin.stats().clone();
    let value = plugin.aggregate(readings).await;
    telemetry.plugin_call(PluginKind::Aggregator, &name, &before, plugin.stats());
    (aggregator, value)
}

/// Keeps at most [`STANDBY`] instances, dropping the oldest artifact first (local ones are
/// cheap to keep and are what a rollback returns to).
fn push_standby<P>(standby: &mut Vec<Held<P>>, held: Held<P>) {
    standby.retain(|h| h.slot != held.slot);
    standby.push(held);
    while standby.len() > STANDBY {
        let at = standby
            .iter()
            .position(|h| matches!(h.slot, Slot::Artifact { .. }))
            .unwrap_or(0);
        standby.remove(at);
    }
}
