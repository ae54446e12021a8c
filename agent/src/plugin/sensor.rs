//! A loaded sensor plugin.

use std::path::Path;

use wasmtime::{Store, component::InstancePre};

use super::{
    CallError, Contract, LoadError, Metadata, PluginEngine, PluginKind, PluginSettings,
    PluginStats, Quantity,
    bindings::{v1, v2},
    engine::PluginSource,
    host::HostState,
    instance::{Call, Runner, World},
    metadata::printable,
};
use crate::{text, wire};

pub(crate) struct SensorWorld;

/// A linked sensor of either contract version.
pub(crate) enum SensorPre {
    V1(v1::sensor::SensorPre<HostState>),
    V2(v2::sensor::SensorPre<HostState>),
}

/// A live sensor of either contract version.
pub(crate) enum Sensor {
    V1(v1::sensor::Sensor),
    V2(v2::sensor::Sensor),
}

impl World for SensorWorld {
    const KIND: PluginKind = PluginKind::Sensor;
    type Pre = SensorPre;
    type Instance = Sensor;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        // The load-time check made sure it exports one of the two versions.
        match v2::sensor::SensorPre::new(pre.clone()) {
            Ok(pre) => Ok(SensorPre::V2(pre)),
            Err(_) => Ok(SensorPre::V1(v1::sensor::SensorPre::new(pre)?)),
        }
    }

    fn contract(pre: &Self::Pre) -> Contract {
        match pre {
            SensorPre::V1(_) => Contract::V1,
            SensorPre::V2(_) => Contract::V2,
        }
    }

    async fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Sensor> {
        Ok(match pre {
            SensorPre::V1(pre) => Sensor::V1(pre.instantiate_async(store).await?),
            SensorPre::V2(pre) => Sensor::V2(pre.instantiate_async(store).await?),
        })
    }

    async fn describe(
        instance: &Sensor,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Metadata> {
        Ok(match instance {
            Sensor::V1(s) => s
                .fleetmeter_plugin_sensor_api()
                .call_describe(store)
                .await?
                .into(),
            Sensor::V2(s) => s
                .fleetmeter_plugin_sensor_api()
                .call_describe(store)
                .await?
                .into(),
        })
    }

    async fn init(
        instance: &Sensor,
        store: &mut Store<HostState>,
        config: &Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), String>> {
        match instance {
            Sensor::V1(s) => {
                s.fleetmeter_plugin_sensor_api()
                    .call_init(store, config)
                    .await
            }
            Sensor::V2(s) => {
                s.fleetmeter_plugin_sensor_api()
                    .call_init(store, config)
                    .await
            }
        }
    }
}

/// What `sample()` returned, before the host checks it.
enum Raw {
    /// Contract 0.1.0: one value.
    One(f64),
    /// Contract 0.2.0: named quantities.
    Many(Vec<v2::types::Quantity>),
}

/// `sample()`.
struct Sample;

impl Call<SensorWorld> for Sample {
    type Output = Raw;
    async fn call(
        self,
        sensor: &Sensor,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Result<Raw, String>> {
        Ok(match sensor {
            Sensor::V1(s) => s
                .fleetmeter_plugin_sensor_api()
                .call_sample(store)
                .await?
                .map(Raw::One),
            Sensor::V2(s) => s
                .fleetmeter_plugin_sensor_api()
                .call_sample(store)
                .await?
                .map(Raw::Many),
        })
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

    /// One sample: its quantities, each checked (count, names, units, finite values). A
    /// failure, or a sample out of bounds, costs this reading only: the instance is rebuilt
    /// if needed. A sensor of contract 0.1.0 gives one quantity named after the plugin, in
    /// its metadata unit.
    pub async fn sample(&mut self) -> Result<Vec<Quantity>, CallError> {
        let sample = match self.runner.call(Sample).await? {
            Raw::One(value) => vec![Quantity {
                name: self.metadata().name.clone(),
                value,
                unit: self.metadata().unit.clone(),
            }],
            Raw::Many(quantities) => quantities
                .into_iter()
                .map(|q| Quantity {
                    name: q.name,
                    value: q.value,
                    unit: q.unit,
                })
                .collect(),
        };
        let refused = |message: String| CallError::Guest {
            plugin: self.metadata().name.clone(),
            message,
        };
        if let [one] = sample.as_slice()
            && !one.value.is_finite()
        {
            return Err(refused(format!(
                "the sensor produced a non-finite value ({})",
                one.value
            )));
        }
        if let Err(err) = wire::check_sample(&sample) {
            return Err(refused(format!(
                "its sample is refused: {}",
                text::one_line_bounded(&err.to_string(), 200)
            )));
        }
        if let Some(q) = sample.iter().find(|q| !printable(&q.unit)) {
            return Err(refused(format!(
                "its sample is refused: quantity {:?}: unit {} holds characters that are not \
                 printable",
                q.name,
                text::one_line_bounded(&q.unit, 40)
            )));
        }
        Ok(sample)
    }

    /// The contract version it was built for.
    pub fn contract(&self) -> Contract {
        self.runner.contract()
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
