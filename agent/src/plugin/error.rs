//! Why a plugin could not be loaded, and why one call failed.

use std::{path::PathBuf, time::Duration};

/// A plugin file that cannot become a running plugin. Each message names the file and says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a WebAssembly file (it starts with {head}); point to the .wasm that \
         `cargo build --release --target wasm32-wasip2` produced"
    )]
    NotWasm { path: PathBuf, head: String },
    #[error(
        "{path} is a core WebAssembly module, not a component; build the plugin for \
         wasm32-wasip2 (which emits a component), or wrap it with `wasm-tools component new`"
    )]
    CoreModule { path: PathBuf },
    #[error("{path} has an unknown WebAssembly binary version/layer {version:02x?}")]
    UnknownBinary { path: PathBuf, version: [u8; 4] },
    #[error("{path} is not a valid component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} needs more than the sandbox allows one plugin: {reason} (plugins built with \
         fleetmeter-sdk fit well within it)"
    )]
    OverCaps { path: PathBuf, reason: String },
    #[error(
        "{path} implements the fleetmeter {found} world, not the {expected} world; use it as \
         the {found}"
    )]
    WrongWorld {
        path: PathBuf,
        expected: super::PluginKind,
        found: super::PluginKind,
    },
    #[error(
        "{path} was built for plugin contract fleetmeter:plugin@{found}, but this agent \
         loads @{supported} and @0.1.0; rebuild the plugin with fleetmeter-sdk {supported}"
    )]
    IncompatibleVersion {
        path: PathBuf,
        found: String,
        supported: &'static str,
    },
    #[error(
        "{path} is not a fleetmeter {expected} plugin: it does not export {export} \
         (its exports: {exports})"
    )]
    MissingExport {
        path: PathBuf,
        expected: super::PluginKind,
        export: String,
        exports: String,
    },
    #[error("{path} does not match the fleetmeter {kind} contract: {reason}")]
    Mismatch {
        path: PathBuf,
        kind: super::PluginKind,
        reason: String,
    },
    #[error(
        "{path} needs an import the sandbox does not provide: {reason} (plugins get WASI \
         0.2, wasi:http for sensors, and fleetmeter:plugin/host only)"
    )]
    UnsatisfiedImport { path: PathBuf, reason: String },
    #[error("plugin {plugin} ({path}) rejected its configuration: {message}")]
    Config {
        plugin: String,
        path: PathBuf,
        message: String,
    },
    #[error("plugin {plugin} ({path}) failed while starting: {failure}")]
    Start {
        plugin: String,
        path: PathBuf,
        failure: Failure,
    },
    #[error("{path} cannot be loaded: {problem}; fix what the plugin's `describe` returns")]
    Metadata {
        path: PathBuf,
        problem: super::metadata::BadMetadata,
    },
    #[error("cannot grant directory {host} to the plugin: {reason}")]
    Grant { host: PathBuf, reason: String },
    #[error("cannot load {path} with its network grants: {error}")]
    NetworkGrant {
        path: PathBuf,
        #[source]
        error: super::network::GrantError,
    },
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// One call that did not produce a value. The agent goes on: the call costs one reading.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The instance trapped or hit a limit; it has been discarded and is rebuilt on the
    /// next call.
    #[error("plugin {plugin} {failure}")]
    Failed { plugin: String, failure: Failure },
    /// The plugin returned an error through the contract; the instance is kept.
    #[error("plugin {plugin} returned an error: {message}")]
    Guest { plugin: String, message: String },
    /// After repeated failures the plugin is not called until the back-off ends.
    #[error(
        "plugin {plugin} is backing off after {failures} consecutive failures; next try in \
         {remaining:.1?}"
    )]
    BackingOff {
        plugin: String,
        failures: u32,
        remaining: Duration,
    },
}

/// How an instance died.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Failure {
    #[error("exceeded its time limit of {0:?} per call")]
    Timeout(Duration),
    #[error("ran out of fuel (budget {0} per call)")]
    OutOfFuel(u64),
    #[error("hit its memory limit of {} MiB", .0 / (1024 * 1024))]
    MemoryLimit(usize),
    /// The message the SDK's panic hook reported, on one line.
    #[error("{}", if .0.starts_with("panicked") { .0.clone() } else { format!("panicked: {}", .0) })]
    Panic(String),
    #[error("trapped ({0})")]
    Trap(String),
    #[error("failed to re-initialise: {0}")]
    Init(String),
}
