//! What a plugin file is: for `fleetmeter plugin inspect`.

use std::path::{Path, PathBuf};

use super::{
    CONTRACT_VERSIONS, LoadError, Metadata, PluginEngine, PluginKind, PluginSettings,
    aggregator::AggregatorWorld,
    engine::exported_worlds,
    instance::{Runner, World},
    sensor::SensorWorld,
};

/// The facts about one plugin file.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub kind: Option<PluginKind>,
    /// The contract version the plugin was built for.
    pub contract: Option<String>,
    pub metadata: Option<Metadata>,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    /// Why the agent would refuse to load it, if it would.
    pub problem: Option<String>,
}

/// Compiles `path` (through the cache) and describes it. A file that is not a component at
/// all is an error; a component that is not a usable plugin is reported in `problem`.
pub async fn inspect(engine: &PluginEngine, path: &Path) -> Result<Inspection, LoadError> {
    let compiled = {
        let (engine, path) = (engine.clone(), path.to_owned());
        tokio::task::spawn_blocking(move || engine.compile(&path))
            .await
            .map_err(|e| LoadError::Engine(format!("the compile task failed: {e}")))??
    };
    let exports = engine.export_names(&compiled.component);
    let imports = engine.import_names(&compiled.component);
    let worlds = exported_worlds(&exports);
    let mut inspection = Inspection {
        path: path.to_owned(),
        size: compiled.size,
        sha256: compiled.sha256.clone(),
        kind: worlds.first().map(|(kind, _)| *kind),
        contract: worlds.first().map(|(_, version)| version.clone()),
        metadata: None,
        exports,
        imports,
        problem: None,
    };
    match worlds.as_slice() {
        [] => {
            inspection.problem = Some(format!(
                "not a fleetmeter plugin: it exports neither {} nor {}",
                PluginKind::Sensor.export_name(),
                PluginKind::Aggregator.export_name()
            ))
        }
        [(_, version), ..] if !CONTRACT_VERSIONS.contains(&version.as_str()) => {
            inspection.problem = Some(format!(
                "built for contract @{version}; this agent loads @{}",
                CONTRACT_VERSIONS.join(" and @")
            ))
        }
        [(kind, _), ..] => {
            let described = match kind {
                PluginKind::Sensor => describe::<SensorWorld>(engine, compiled).await,
                PluginKind::Aggregator => describe::<AggregatorWorld>(engine, compiled).await,
            };
            match described {
                Ok(metadata) => inspection.metadata = Some(metadata),
                Err(err) => inspection.problem = Some(err.to_string()),
            }
        }
    }
    Ok(inspection)
}

async fn describe<W: World>(
    engine: &PluginEngine,
    compiled: super::engine::Compiled,
) -> Result<Metadata, LoadError> {
    Runner::<W>::prepare(engine, compiled, PluginSettings::default())
        .await
        .map(|r| r.metadata().clone())
}
