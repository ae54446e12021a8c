//! A device's loaded plugins as the round loop uses them: the sensor, and the aggregator,
//! swapped when `{root}/config/aggregator` names another one. Each call ends within the
//! plugin's time limit (dropping a call's future drops the instance, so a caller may also
//! give up sooner, at shutdown) and is recorded in telemetry.

use std::{path::PathBuf, sync::Arc};

use tokio::sync::{Mutex, MutexGuard};

use crate::{
    config::AgentConfig,
    plugin::{
        self, AggregatorPlugin, CallError, LoadError, PluginEngine, PluginKind, PluginSettings,
        Reading, SensorPlugin,
    },
    telemetry::Telemetry,
};

/// The aggregator and the name it was loaded under.
struct LoadedAggregator {
    name: String,
    plugin: AggregatorPlugin,
}

/// A round's aggregation: the value (`None`: nothing to publish) and `NAME@VERSION` of the
/// aggregator that computed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregated {
    pub value: Option<f64>,
    pub aggregator: String,
}

pub struct Plugins {
    engine: PluginEngine,
    plugin_dir: PathBuf,
    aggregator_settings: PluginSettings,
    sensor: Mutex<SensorPlugin>,
    /// The sensor's unit; `None` when it declares none.
    unit: Option<String>,
    aggregator: Mutex<LoadedAggregator>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("plugin_dir", &self.plugin_dir)
            .field("unit", &self.unit)
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
        let unit = Some(sensor.metadata().unit.clone()).filter(|u| !u.is_empty());
        let aggregator = Self::load_aggregator_with(
            engine,
            &config.plugin_dir,
            &config.aggregator_settings,
            &config.aggregator,
        )
        .await?;
        let plugins = Self {
            engine: engine.clone(),
            plugin_dir: config.plugin_dir.clone(),
            aggregator_settings: config.aggregator_settings.clone(),
            aggregator: Mutex::new(LoadedAggregator {
                name: config.aggregator.clone(),
                plugin: aggregator,
            }),
            sensor: Mutex::new(sensor),
            unit,
        };
        telemetry.plugin_loaded(
            PluginKind::Sensor,
            &plugins.sensor.lock().await.metadata().name,
        );
        telemetry.plugin_loaded(
            PluginKind::Aggregator,
            &plugins.lock_aggregator().await.plugin.metadata().name,
        );
        Ok(plugins)
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

    async fn lock_aggregator(&self) -> MutexGuard<'_, LoadedAggregator> {
        self.aggregator.lock().await
    }

    /// The sensor's unit, sent with every result.
    pub fn unit(&self) -> Option<&str> {
        self.unit.as_deref()
    }

    /// One sample of the sensor.
    pub async fn sample(&self, telemetry: &Arc<Telemetry>) -> Result<f64, CallError> {
        let mut sensor = self.sensor.lock().await;
        let before = sensor.stats().clone();
        let sampled = sensor.sample().await;
        let name = &sensor.metadata().name;
        telemetry.plugin_call(PluginKind::Sensor, name, &before, sensor.stats());
        sampled
    }

    /// Loads the aggregator named `wanted` if it is not the one loaded; on failure the
    /// current one stays (logged).
    pub async fn swap_aggregator_if_changed(&self, wanted: &str, telemetry: &Telemetry) {
        let current = self.lock_aggregator().await.name.clone();
        if wanted == current {
            return;
        }
        let loaded = Self::load_aggregator_with(
            &self.engine,
            &self.plugin_dir,
            &self.aggregator_settings,
            wanted,
        )
        .await;
        match loaded {
            Ok(plugin) => {
                tracing::info!(from = %current, to = %wanted, "aggregator swapped");
                telemetry.plugin_loaded(PluginKind::Aggregator, &plugin.metadata().name);
                *self.lock_aggregator().await = LoadedAggregator {
                    name: wanted.to_owned(),
                    plugin,
                };
            }
            Err(err) => {
                let err = anyhow::Error::from(err);
                tracing::error!(aggregator = %wanted, error = %format!("{err:#}"), "cannot load the new aggregator; keeping the current one");
            }
        }
    }

    /// Aggregates a round's readings. No readings, or a failed call, is no value: the round
    /// publishes nothing (logged, counted).
    pub async fn aggregate(&self, readings: &[Reading], telemetry: &Arc<Telemetry>) -> Aggregated {
        let mut loaded = self.lock_aggregator().await;
        let meta = loaded.plugin.metadata();
        let (name, aggregator) = (meta.name.clone(), format!("{}@{}", meta.name, meta.version));
        if readings.is_empty() {
            return Aggregated {
                value: None,
                aggregator,
            };
        }
        let before = loaded.plugin.stats().clone();
        let value = loaded.plugin.aggregate(readings).await;
        telemetry.plugin_call(
            PluginKind::Aggregator,
            &name,
            &before,
            loaded.plugin.stats(),
        );
        match value {
            Ok(value) => Aggregated { value, aggregator },
            Err(err) => {
                tracing::warn!(error = %err, "aggregation failed: this round publishes nothing");
                Aggregated {
                    value: None,
                    aggregator,
                }
            }
        }
    }
}
