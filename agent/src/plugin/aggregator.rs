//! A loaded aggregator plugin.

use std::{future::Future, path::Path};

use wasmtime::{Store, component::InstancePre};

use super::{
    CallError, LoadError, Metadata, PluginEngine, PluginKind, PluginSettings, PluginStats, Reading,
    bindings::{
        aggregator::{Aggregator, AggregatorPre},
        types,
    },
    engine::PluginSource,
    host::HostState,
    instance::{Call, Runner, World},
};

pub(crate) struct AggregatorWorld;

impl World for AggregatorWorld {
    const KIND: PluginKind = PluginKind::Aggregator;
    type Pre = AggregatorPre<HostState>;
    type Instance = Aggregator;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        AggregatorPre::new(pre)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Aggregator>> + Send {
        pre.instantiate_async(store)
    }

    async fn describe(
        instance: &Aggregator,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Metadata> {
        Ok(instance
            .fleetmeter_plugin_aggregator_api()
            .call_describe(store)
            .await?
            .into())
    }

    async fn init(
        instance: &Aggregator,
        store: &mut Store<HostState>,
        config: &Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), String>> {
        instance
            .fleetmeter_plugin_aggregator_api()
            .call_init(store, config)
            .await
    }
}

/// `aggregate(readings)`.
struct Aggregate(Vec<types::Reading>);

impl Call<AggregatorWorld> for Aggregate {
    type Output = Option<f64>;
    async fn call(
        self,
        aggregator: &Aggregator,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Result<Option<f64>, String>> {
        aggregator
            .fleetmeter_plugin_aggregator_api()
            .call_aggregate(store, &self.0)
            .await
    }
}

/// An aggregator, sandboxed, with no clock and no randomness: the same readings give the
/// same result on any leader. Calls end within the time limit (see [`super::SensorPlugin`]).
pub struct AggregatorPlugin {
    runner: Runner<AggregatorWorld>,
}

impl std::fmt::Debug for AggregatorPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatorPlugin")
            .field("metadata", self.metadata())
            .field("path", &self.runner.path())
            .finish_non_exhaustive()
    }
}

impl AggregatorPlugin {
    /// Loads and initialises the aggregator at `path`.
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

    /// The round's value from its readings (passed to the plugin in device-id order, as the
    /// contract says), or `None` for "publish nothing".
    pub async fn aggregate(&mut self, readings: &[Reading]) -> Result<Option<f64>, CallError> {
        let mut sorted: Vec<types::Reading> = readings
            .iter()
            .map(|r| types::Reading {
                device: r.device.clone(),
                value: r.value,
            })
            .collect();
        sorted.sort_by(|a, b| a.device.cmp(&b.device));
        let value = self.runner.call(Aggregate(sorted)).await?;
        match value {
            Some(v) if !v.is_finite() => Err(CallError::Guest {
                plugin: self.metadata().name.clone(),
                message: format!("the aggregator produced a non-finite value ({v})"),
            }),
            value => Ok(value),
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

    /// Discards the instance and builds a fresh one, as after a trap.
    pub async fn rebuild(&mut self) -> Result<(), CallError> {
        self.runner.rebuild().await
    }
}
