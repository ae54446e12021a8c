//! A loaded sensor plugin.

use std::{future::Future, path::Path};

use wasmtime::{Store, component::InstancePre};

use super::{
    CallError, LoadError, Metadata, PluginEngine, PluginKind, PluginSettings, PluginStats,
    bindings::sensor::{Sensor, SensorPre},
    engine::PluginSource,
    host::HostState,
    instance::{Call, Runner, World},
};

pub(crate) struct SensorWorld;

impl World for SensorWorld {
    const KIND: PluginKind = PluginKind::Sensor;
    type Pre = SensorPre<HostState>;
    type Instance = Sensor;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        SensorPre::new(pre)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Sensor>> + Send {
        pre.instantiate_async(store)
    }

    async fn describe(
        instance: &Sensor,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Metadata> {
        Ok(instance
            .fleetmeter_plugin_sensor_api()
            .call_describe(store)
            .await?
            .into())
    }

    async fn init(
        instance: &Sensor,
        store: &mut Store<HostState>,
        config: &Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), String>> {
        instance
            .fleetmeter_plugin_sensor_api()
            .call_init(store, config)
            .await
    }
}

/// `sample()`.
struct Sample;

impl Call<SensorWorld> for Sample {
    type Output = f64;
    async fn call(
        self,
        sensor: &Sensor,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Result<f64, String>> {
        sensor
            .fleetmeter_plugin_sensor_api()
            .call_sample(store)
            .await
    }
}

/// A sensor, sandboxed. Every call is a future that ends within the time limit, whatever
/// the plugin does.
pub struct SensorPlugin {
    runner: Runner<SensorWorld>,
}

impl std::fmt::Debug for SensorPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorPlugin")
            .field("metadata", self.metadata())
            .field("path", &self.runner.path())
            .finish_non_exhaustive()
    }
}

impl SensorPlugin {
    /// Loads and initialises the sensor at `path`.
    pub async fn load(
        engine: &PluginEngine,
        path: &Path,
        settings: PluginSettings,
    ) -> Result<Self, LoadError> {
        Self::load_source(engine, PluginSource::File(path.to_owned()), settings).await
    }

    /// Loads and initialises the plugin from `source` (a file, or a fetched artifact).
    pub async fn load_source(
        engine: &PluginEngine,
        source: PluginSource,
        settings: PluginSettings,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            runner: Runner::load(engine, source, settings).await?,
        })
    }

    /// Hex SHA-256 of the component it runs.
    pub fn sha256(&self) -> &str {
        self.runner.sha256()
    }

    /// One reading. A failure costs this reading only: the instance is rebuilt if needed.
    pub async fn sample(&mut self) -> Result<f64, CallError> {
        let value = self.runner.call(Sample).await?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(CallError::Guest {
                plugin: self.metadata().name.clone(),
                message: format!("the sensor produced a non-finite value ({value})"),
            })
        }
    }

    pub fn metadata(&self) -> &Metadata {
        self.runner.metadata()
    }

    pub fn stats(&self) -> &PluginStats {
        self.runner.stats()
    }

    /// Whether the compiled code came from the disk cache rather than a compilation.
    pub fn loaded_from_cache(&self) -> bool {
        self.runner.loaded_from_cache()
    }

    /// Discards the instance and builds a fresh one (store, instance, `init`), as after a
    /// trap. Exposed for benchmarks and tests.
    pub async fn rebuild(&mut self) -> Result<(), CallError> {
        self.runner.rebuild().await
    }
}
