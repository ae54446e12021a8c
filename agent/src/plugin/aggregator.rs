//! A loaded aggregator plugin.

use std::path::Path;

use wasmtime::{Store, component::InstancePre};

use super::{
    CallError, Contract, LoadError, Metadata, PluginEngine, PluginKind, PluginSettings,
    PluginStats, Reading,
    bindings::{v1, v2},
    engine::PluginSource,
    host::HostState,
    instance::{Call, Runner, World},
};

pub(crate) struct AggregatorWorld;

/// A linked aggregator of either contract version.
pub(crate) enum AggregatorPre {
    V1(v1::aggregator::AggregatorPre<HostState>),
    V2(v2::aggregator::AggregatorPre<HostState>),
}

/// A live aggregator of either contract version.
pub(crate) enum Aggregator {
    V1(v1::aggregator::Aggregator),
    V2(v2::aggregator::Aggregator),
}

impl World for AggregatorWorld {
    const KIND: PluginKind = PluginKind::Aggregator;
    type Pre = AggregatorPre;
    type Instance = Aggregator;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        // The load-time check made sure it exports one of the two versions.
        match v2::aggregator::AggregatorPre::new(pre.clone()) {
            Ok(pre) => Ok(AggregatorPre::V2(pre)),
            Err(_) => Ok(AggregatorPre::V1(v1::aggregator::AggregatorPre::new(pre)?)),
        }
    }

    fn contract(pre: &Self::Pre) -> Contract {
        match pre {
            AggregatorPre::V1(_) => Contract::V1,
            AggregatorPre::V2(_) => Contract::V2,
        }
    }

    async fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Aggregator> {
        Ok(match pre {
            AggregatorPre::V1(pre) => Aggregator::V1(pre.instantiate_async(store).await?),
            AggregatorPre::V2(pre) => Aggregator::V2(pre.instantiate_async(store).await?),
        })
    }

    async fn describe(
        instance: &Aggregator,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Metadata> {
        Ok(match instance {
            Aggregator::V1(a) => a
                .fleetmeter_plugin_aggregator_api()
                .call_describe(store)
                .await?
                .into(),
            Aggregator::V2(a) => a
                .fleetmeter_plugin_aggregator_api()
                .call_describe(store)
                .await?
                .into(),
        })
    }

    async fn init(
        instance: &Aggregator,
        store: &mut Store<HostState>,
        config: &Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), String>> {
        match instance {
            Aggregator::V1(a) => {
                a.fleetmeter_plugin_aggregator_api()
                    .call_init(store, config)
                    .await
            }
            Aggregator::V2(a) => {
                a.fleetmeter_plugin_aggregator_api()
                    .call_init(store, config)
                    .await
            }
        }
    }
}

/// Contract 0.1.0's `aggregate(readings)`: one quantity's readings.
struct AggregateOne(Vec<v1::types::Reading>);

impl Call<AggregatorWorld> for AggregateOne {
    type Output = Option<f64>;
    async fn call(
        self,
        aggregator: &Aggregator,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Result<Option<f64>, String>> {
        match aggregator {
            Aggregator::V1(a) => {
                a.fleetmeter_plugin_aggregator_api()
                    .call_aggregate(store, &self.0)
                    .await
            }
            Aggregator::V2(_) => Ok(Err("a 0.1.0 call to a 0.2.0 aggregator".into())),
        }
    }
}

/// Contract 0.2.0's `aggregate(devices, quantities)`.
struct AggregateAll(Vec<String>, Vec<v2::types::Column>);

impl Call<AggregatorWorld> for AggregateAll {
    type Output = Vec<v2::types::Published>;
    async fn call(
        self,
        aggregator: &Aggregator,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Result<Vec<v2::types::Published>, String>> {
        match aggregator {
            Aggregator::V2(a) => {
                a.fleetmeter_plugin_aggregator_api()
                    .call_aggregate(store, &self.0, &self.1)
                    .await
            }
            Aggregator::V1(_) => Ok(Err("a 0.2.0 call to a 0.1.0 aggregator".into())),
        }
    }
}

/// `reading`'s quantity `name`.
fn quantity<'a>(reading: &'a Reading, name: &str) -> Option<&'a crate::wire::Quantity> {
    reading.quantities.iter().find(|q| q.name == name)
}

/// The quantity names of `readings`, in the order they first appear.
pub(crate) fn quantity_order<'a>(readings: impl IntoIterator<Item = &'a Reading>) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    for q in readings.into_iter().flat_map(|r| &r.quantities) {
        if !names.contains(&q.name.as_str()) {
            names.push(&q.name);
        }
    }
    names
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

    /// The value of each quantity of the round to publish, in the order the quantities
    /// appear in the samples (passed to the plugin in device-id order, as the contract says);
    /// a quantity it leaves out publishes nothing. A 0.2.0 aggregator gets every sample at
    /// once, by quantity (the device ids, then a column of values per quantity), and may
    /// publish each quantity once; a 0.1.0 aggregator is called once per quantity, with the
    /// devices that carried it.
    pub async fn aggregate(
        &mut self,
        readings: &[Reading],
    ) -> Result<Vec<(String, f64)>, CallError> {
        let mut sorted: Vec<&Reading> = readings.iter().collect();
        sorted.sort_by(|a, b| a.device.cmp(&b.device));
        let order = quantity_order(sorted.iter().copied());
        let plugin = self.metadata().name.clone();
        let refused = |message: String| CallError::Guest {
            plugin: plugin.clone(),
            message,
        };
        let mut published: Vec<(String, f64)> = Vec::new();
        match self.contract() {
            Contract::V1 => {
                for name in &order {
                    let one: Vec<v1::types::Reading> = sorted
                        .iter()
                        .filter_map(|r| {
                            let q = r.quantities.iter().find(|q| q.name == *name)?;
                            Some(v1::types::Reading {
                                device: r.device.clone(),
                                value: q.value,
                            })
                        })
                        .collect();
                    if let Some(value) = self.runner.call(AggregateOne(one)).await? {
                        published.push(((*name).to_owned(), value));
                    }
                }
            }
            Contract::V2 => {
                // By quantity: each device's id once, each quantity's unit once.
                let devices: Vec<String> = sorted.iter().map(|r| r.device.clone()).collect();
                let columns = order
                    .iter()
                    .map(|name| v2::types::Column {
                        name: (*name).to_owned(),
                        unit: sorted
                            .iter()
                            .find_map(|r| quantity(r, name))
                            .map(|q| q.unit.clone())
                            .unwrap_or_default(),
                        values: sorted
                            .iter()
                            .map(|r| quantity(r, name).map(|q| q.value))
                            .collect(),
                    })
                    .collect();
                let returned = self.runner.call(AggregateAll(devices, columns)).await?;
                // Each quantity at most once: a longer list is refused before it is looked at.
                if returned.len() > order.len() {
                    return Err(refused(format!(
                        "it published {} values for {} quantities",
                        returned.len(),
                        order.len()
                    )));
                }
                for p in returned {
                    if !order.contains(&p.name.as_str()) {
                        return Err(refused(format!(
                            "it published quantity {}, which no sample carries",
                            crate::text::one_line_bounded(&p.name, 64)
                        )));
                    }
                    if published.iter().any(|(n, _)| *n == p.name) {
                        return Err(refused(format!("it published quantity {} twice", p.name)));
                    }
                    published.push((p.name, p.value));
                }
                published.sort_by_key(|(n, _)| order.iter().position(|o| o == n));
            }
        }
        if let Some((name, value)) = published.iter().find(|(_, v)| !v.is_finite()) {
            return Err(refused(if order.len() == 1 {
                format!("the aggregator produced a non-finite value ({value})")
            } else {
                format!("the aggregator produced a non-finite value for {name} ({value})")
            }));
        }
        Ok(published)
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

    /// Discards the instance and builds a fresh one, as after a trap.
    pub async fn rebuild(&mut self) -> Result<(), CallError> {
        self.runner.rebuild().await
    }
}
