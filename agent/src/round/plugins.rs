//! A device's loaded plugins as the round loop uses them: the sensor, sampled on a blocking
//! thread (plugin calls are synchronous), and the aggregator, swapped when
//! `{root}/config/aggregator` names another one. Each call is recorded in telemetry.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use crate::{
    config::AgentConfig,
    plugin::{
        self, AggregatorPlugin, CallError, LoadError, PluginEngine, PluginKind, PluginSettings,
        Reading, SensorPlugin,
    },
    telemetry::Telemetry,
};

/// Why a plugin call produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum PluginCallError {
    #[error(transparent)]
    Call(#[from] CallError),
    /// The blocking task running the call panicked or was cancelled (a host bug).
    #[error("the plugin task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

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
    sensor: Arc<Mutex<SensorPlugin>>,
    /// The sensor's unit; `None` when it declares none.
    unit: Option<String>,
    aggregator: Arc<Mutex<LoadedAggregator>>,
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
    #[error("a plugin loading task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl Plugins {
    /// Loads the configured sensor and aggregator with `engine` (shared by every device of
    /// a process) and records them in `telemetry`.
    pub async fn load(
        engine: &PluginEngine,
        config: &AgentConfig,
        telemetry: &Telemetry,
    ) -> Result<Self, PluginsError> {
        let sensor = {
            let (engine, path, settings) = (
                engine.clone(),
                plugin::resolve(&config.sensor, &config.plugin_dir),
                config.sensor_settings.clone(),
            );
            tokio::task::spawn_blocking(move || SensorPlugin::load(&engine, &path, settings))
                .await?
                .map_err(PluginsError::Sensor)?
        };
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
            aggregator: Arc::new(Mutex::new(LoadedAggregator {
                name: config.aggregator.clone(),
                plugin: aggregator,
            })),
            sensor: Arc::new(Mutex::new(sensor)),
            unit,
        };
        telemetry.plugin_loaded(PluginKind::Sensor, &plugins.lock_sensor().metadata().name);
        telemetry.plugin_loaded(
            PluginKind::Aggregator,
            &plugins.lock_aggregator().plugin.metadata().name,
        );
        Ok(plugins)
    }

    async fn load_aggregator_with(
        engine: &PluginEngine,
        plugin_dir: &std::path::Path,
        settings: &PluginSettings,
        name: &str,
    ) -> Result<AggregatorPlugin, PluginsError> {
        let (engine, path, settings) = (
            engine.clone(),
            plugin::resolve(name, plugin_dir),
            settings.clone(),
        );
        tokio::task::spawn_blocking(move || AggregatorPlugin::load(&engine, &path, settings))
            .await?
            .map_err(PluginsError::Aggregator)
    }

    fn lock_sensor(&self) -> std::sync::MutexGuard<'_, SensorPlugin> {
        self.sensor.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_aggregator(&self) -> std::sync::MutexGuard<'_, LoadedAggregator> {
        self.aggregator.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sensor's unit, sent with every result.
    pub fn unit(&self) -> Option<&str> {
        self.unit.as_deref()
    }

    /// One sample of the sensor.
    pub async fn sample(&self, telemetry: &Arc<Telemetry>) -> Result<f64, PluginCallError> {
        let (sensor, telemetry) = (self.sensor.clone(), telemetry.clone());
        let sampled = tokio::task::spawn_blocking(move || {
            let mut sensor = sensor.lock().unwrap_or_else(|e| e.into_inner());
            let before = sensor.stats().clone();
            let sampled = sensor.sample();
            let name = &sensor.metadata().name;
            telemetry.plugin_call(PluginKind::Sensor, name, &before, sensor.stats());
            sampled
        })
        .await;
        Ok(sampled??)
    }

    /// Loads the aggregator named `wanted` if it is not the one loaded; on failure the
    /// current one stays (logged).
    pub async fn swap_aggregator_if_changed(&self, wanted: &str, telemetry: &Telemetry) {
        let current = self.lock_aggregator().name.clone();
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
                *self.lock_aggregator() = LoadedAggregator {
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
        let (aggregator, readings, telemetry) = (
            self.aggregator.clone(),
            readings.to_vec(),
            telemetry.clone(),
        );
        let outcome = tokio::task::spawn_blocking(move || {
            let mut loaded = aggregator.lock().unwrap_or_else(|e| e.into_inner());
            let meta = loaded.plugin.metadata();
            let (name, label) = (meta.name.clone(), format!("{}@{}", meta.name, meta.version));
            if readings.is_empty() {
                return (Ok(None), label);
            }
            let before = loaded.plugin.stats().clone();
            let value = loaded.plugin.aggregate(&readings);
            telemetry.plugin_call(
                PluginKind::Aggregator,
                &name,
                &before,
                loaded.plugin.stats(),
            );
            (value, label)
        })
        .await;
        match outcome {
            Ok((Ok(value), aggregator)) => Aggregated { value, aggregator },
            Ok((Err(err), aggregator)) => {
                tracing::warn!(error = %err, "aggregation failed: this round publishes nothing");
                Aggregated {
                    value: None,
                    aggregator,
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "aggregation task failed");
                Aggregated {
                    value: None,
                    aggregator: String::new(),
                }
            }
        }
    }
}
