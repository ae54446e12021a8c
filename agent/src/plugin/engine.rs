//! The one WebAssembly engine of an agent: compiles plugins (once: compiled code is cached on
//! disk, see [`super::cache`]), checks that a file is the plugin it claims to be, links the
//! two worlds, caps what one component may hold, and drives the epoch clock that makes a
//! running plugin yield to the runtime.

use std::{
    collections::HashMap,
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    component::{Component, Linker},
};

use super::{
    CONTRACT_PACKAGE, CONTRACT_VERSION, CONTRACT_VERSIONS, LoadError, PluginKind,
    cache::{CacheDir, Lookup},
    host::{self, HostState},
    limits::STORE_CAPS,
};
use crate::text;

/// How the engine is built. Fuel metering is an engine-wide switch.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Where compiled plugins are cached; `None` compiles on every start.
    pub cache_dir: Option<PathBuf>,
    /// Count fuel, so that plugins with a `fuel` limit can be stopped by it.
    pub fuel: bool,
    /// Period of the epoch clock: a running plugin yields to the async runtime at least
    /// this often, so that its call's deadline can fire. The clock only ticks while a plugin
    /// call runs: an idle agent is not woken by it.
    pub epoch_tick: Duration,
    /// Live plugin instances the engine can hold at once (an agent needs 2, plus one
    /// briefly while loading).
    pub max_instances: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            fuel: false,
            epoch_tick: Duration::from_millis(10),
            max_instances: 16,
        }
    }
}

/// `$XDG_CACHE_HOME/fleetmeter/plugins`, else `~/.cache/fleetmeter/plugins` (the `dirs`
/// crate's rules: a relative `XDG_CACHE_HOME` is ignored, as the XDG spec says).
pub fn default_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|base| base.join("fleetmeter").join("plugins"))
}

/// Shared by every plugin of an agent; cheap to clone.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    clock: Arc<EpochClock>,
    /// WASI 0.2 as granted (sensors).
    sensor_linker: Linker<HostState>,
    /// WASI 0.2 with clocks that stand still, sleeps included (aggregators).
    aggregator_linker: Linker<HostState>,
    options: EngineOptions,
    /// Part of every cache file name: a cached artifact from another wasmtime version or
    /// other settings is never even opened.
    compat: String,
    /// Components compiled or loaded by this engine, by the SHA-256 of their file: an agent
    /// swapping aggregators back and forth, or a simulator loading one sensor for each of
    /// a thousand devices, reuses the code (and its memory) instead of loading it again.
    loaded: Mutex<HashMap<String, Component>>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Where a plugin's component comes from: a file, or bytes in memory (an artifact fetched
/// from the fleet's store and checked), with a name for messages.
#[derive(Clone, Debug)]
pub enum PluginSource {
    File(PathBuf),
    Bytes { label: PathBuf, bytes: Arc<Vec<u8>> },
}

/// A compiled component and where it came from.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub component: Component,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// Whether the compiled code came from the disk cache.
    pub from_cache: bool,
}

impl PluginEngine {
    pub fn new(options: EngineOptions) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .consume_fuel(options.fuel)
            // No async components: skipping the concurrency machinery makes each call
            // ~2-3x cheaper (measured: a sensor `sample()` from ~550-940 ns to ~190-300 ns).
            .concurrency_support(false);
        // The pooling allocator reuses pre-reserved slots, so re-instantiating after a trap
        // costs no fresh mmap; it only reserves address space, not memory. Where even that
        // is refused (a tight `ulimit -v`), fall back to allocating on demand (the same caps
        // per component are then enforced by each store's limiter).
        let mut pooled = config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(
            options.max_instances,
        )));
        let engine = match Engine::new(&pooled) {
            Ok(engine) => engine,
            Err(err) => {
                tracing::warn!(
                    error = %format!("{err:#}"),
                    "cannot reserve the plugin instance pool; allocating instances on demand"
                );
                Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?
            }
        };

        // Sensors get `wasi:http` (behind their grants: network.rs); aggregators frozen clocks.
        let link = |aggregator: bool| -> wasmtime::Result<Linker<HostState>> {
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
            host::link_host(&mut linker)?;
            match aggregator {
                false => wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?,
                true => host::link_frozen_clocks(&mut linker)?,
            }
            Ok(linker)
        };
        let sensor_linker = link(false).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let aggregator_linker = link(true).map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());

        let clock = EpochClock::spawn(&engine, options.epoch_tick);
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                clock,
                sensor_linker,
                aggregator_linker,
                options,
                compat,
                loaded: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Keeps the epoch clock ticking until the guard is dropped: hold it across every entry
    /// into a guest (instantiation, `init`, each export call).
    pub(crate) fn running(&self) -> Running {
        self.inner.clock.start();
        Running(self.inner.clock.clone())
    }

    pub(crate) fn linker(&self, kind: PluginKind) -> &Linker<HostState> {
        match kind {
            PluginKind::Sensor => &self.inner.sensor_linker,
            PluginKind::Aggregator => &self.inner.aggregator_linker,
        }
    }

    /// The cache directory, checked; `None` when there is none or it cannot be trusted (said
    /// in a warning: plugins are then compiled in memory).
    fn open_cache(&self) -> Option<CacheDir> {
        let dir = self.inner.options.cache_dir.as_ref()?;
        match CacheDir::open(dir) {
            Ok(cache) => Some(cache),
            Err(refused) => {
                tracing::warn!(
                    problem = %text::one_line(&refused.to_string()),
                    "not using the plugin compile cache; compiling plugins in memory"
                );
                None
            }
        }
    }

    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// Reads, checks and compiles (or loads from the cache) a component, without checking
    /// which world it implements.
    pub fn compile(&self, path: &Path) -> Result<Compiled, LoadError> {
        let bytes = fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.compile_bytes(path, &bytes)
    }

    /// Like [`Self::compile`], for a component already in memory (a fetched artifact);
    /// `path` names it in messages.
    pub fn compile_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Compiled, LoadError> {
        check_component_header(path, bytes)?;
        let sha256 = format!("{:x}", Sha256::digest(bytes));
        let size = bytes.len() as u64;
        if let Some(component) = self.loaded(&sha256) {
            tracing::debug!(path = %path.display(), "plugin already loaded by this agent");
            return Ok(Compiled {
                component,
                path: path.to_owned(),
                size,
                sha256,
                from_cache: true,
            });
        }
        let compiled = self.compile_new(path, bytes, &sha256)?;
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha256.clone(), compiled.0.clone());
        Ok(Compiled {
            component: compiled.0,
            path: path.to_owned(),
            size,
            sha256,
            from_cache: compiled.1,
        })
    }

    fn loaded(&self, sha256: &str) -> Option<Component> {
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha256)
            .cloned()
    }

    /// Loads the component from the disk cache or compiles it (and caches it); `true` when
    /// it came from the cache.
    fn compile_new(
        &self,
        path: &Path,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<(Component, bool), LoadError> {
        let size = bytes.len();
        let cache = self.open_cache();
        if let Some(cache) = &cache {
            match cache.lookup(&self.inner.engine, sha256, &self.inner.compat) {
                Lookup::Hit(component) => {
                    tracing::debug!(path = %path.display(), cache = %cache.path().display(), "plugin loaded from the compile cache");
                    return Ok((component, true));
                }
                Lookup::Miss => {}
                Lookup::Refused(why) => tracing::warn!(
                    path = %path.display(),
                    entry = %cache.path().join(CacheDir::entry_name(sha256, &self.inner.compat)).display(),
                    problem = %text::one_line(&why.to_string()),
                    "refusing a compile cache entry; recompiling the plugin and replacing it"
                ),
            }
        }

        let started = std::time::Instant::now();
        let component = Component::from_binary(&self.inner.engine, bytes).map_err(|e| {
            let reason = format!("{e:#}");
            // The pool's per-component caps (`STORE_CAPS`) are checked here, before any
            // instance exists; wasmtime reports them as a compile error.
            if reason.contains("exceeds the configured maximum") {
                LoadError::OverCaps {
                    path: path.to_owned(),
                    reason,
                }
            } else {
                LoadError::Invalid {
                    path: path.to_owned(),
                    reason,
                }
            }
        })?;
        tracing::info!(
            path = %path.display(),
            bytes = size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled plugin"
        );
        if let Some(cache) = &cache
            && let Err(err) = cache.store(&component, sha256, &self.inner.compat)
        {
            tracing::warn!(
                cache = %cache.path().display(),
                error = %err,
                "cannot write the compile cache; the plugin will be recompiled at next start"
            );
        }
        Ok((component, false))
    }

    /// Compiles `path` and checks that it implements `kind` at the supported contract version.
    pub fn compile_plugin(&self, path: &Path, kind: PluginKind) -> Result<Compiled, LoadError> {
        let compiled = self.compile(path)?;
        let exports = self.export_names(&compiled.component);
        check_world(path, kind, &exports)?;
        Ok(compiled)
    }

    /// Compiles `source` and checks that it implements `kind` at the supported contract
    /// version.
    pub fn compile_source(
        &self,
        source: &PluginSource,
        kind: PluginKind,
    ) -> Result<Compiled, LoadError> {
        match source {
            PluginSource::File(path) => self.compile_plugin(path, kind),
            PluginSource::Bytes { label, bytes } => {
                let compiled = self.compile_bytes(label, bytes)?;
                let exports = self.export_names(&compiled.component);
                check_world(label, kind, &exports)?;
                Ok(compiled)
            }
        }
    }

    /// Names of the component's top-level exports.
    pub fn export_names(&self, component: &Component) -> Vec<String> {
        component
            .component_type()
            .exports(&self.inner.engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// Names of the component's top-level imports.
    pub fn import_names(&self, component: &Component) -> Vec<String> {
        component
            .component_type()
            .imports(&self.inner.engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }
}

/// Slots for `instances` plugin instances, each within [`STORE_CAPS`] (a component that
/// needs more is refused at instantiation), and a fiber stack for each (plugin calls are
/// async).
fn pool_config(instances: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances * STORE_CAPS.core_instances)
        .total_memories(instances * STORE_CAPS.memories)
        .total_tables(instances * STORE_CAPS.tables)
        .total_stacks(instances)
        .max_core_instances_per_component(STORE_CAPS.core_instances)
        .max_memories_per_component(STORE_CAPS.memories)
        .max_tables_per_component(STORE_CAPS.tables)
        // The largest cap `Limits` accepts; each plugin's own cap is enforced by MemoryCap.
        .max_memory_size(4096 << 20)
        // Keep a small warm prefix of each slot resident: re-instantiation then skips the
        // page faults of a zeroed memory's first pages.
        .linear_memory_keep_resident(64 << 10);
    pool
}

fn check_component_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let head: String = bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(LoadError::NotWasm {
            path: path.to_owned(),
            head: if head.is_empty() {
                "nothing: it is empty".into()
            } else {
                format!("bytes {head}")
            },
        });
    }
    let version: [u8; 4] = bytes[4..8].try_into().expect("length checked");
    match version {
        [1, 0, 0, 0] => Err(LoadError::CoreModule {
            path: path.to_owned(),
        }),
        // Component-model binaries: version 0x0d (and pre-release 0x0a..0x0c), layer 1.
        [0x0a..=0x0d, 0, 1, 0] => Ok(()),
        _ => Err(LoadError::UnknownBinary {
            path: path.to_owned(),
            version,
        }),
    }
}

/// Which of the two plugin exports (and contract versions) a component has.
pub(crate) fn exported_worlds(exports: &[String]) -> Vec<(PluginKind, String)> {
    exports
        .iter()
        .filter_map(|name| {
            let rest = name.strip_prefix(CONTRACT_PACKAGE)?.strip_prefix('/')?;
            let (interface, version) = rest.split_once('@')?;
            let kind = PluginKind::ALL
                .into_iter()
                .find(|k| k.interface() == interface)?;
            Some((kind, version.to_owned()))
        })
        .collect()
}

fn check_world(path: &Path, kind: PluginKind, exports: &[String]) -> Result<(), LoadError> {
    let worlds = exported_worlds(exports);
    if let Some((_, version)) = worlds.iter().find(|(k, _)| *k == kind) {
        if CONTRACT_VERSIONS.contains(&version.as_str()) {
            return Ok(());
        }
        return Err(LoadError::IncompatibleVersion {
            path: path.to_owned(),
            found: version.clone(),
            supported: CONTRACT_VERSION,
        });
    }
    if let Some((found, _)) = worlds.first() {
        return Err(LoadError::WrongWorld {
            path: path.to_owned(),
            expected: kind,
            found: *found,
        });
    }
    Err(LoadError::MissingExport {
        path: path.to_owned(),
        expected: kind,
        export: kind.export_name(),
        exports: if exports.is_empty() {
            "none".into()
        } else {
            exports.join(", ")
        },
    })
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.clock.stop();
    }
}

/// Advances the engine's epoch every `tick` while at least one plugin call runs, and sleeps
/// on a condition variable otherwise. A clock that ticked all the time woke every agent 100
/// times a second whether or not a plugin ran (measured with `strace -c -f` on an idle
/// follower: 962 `clock_nanosleep` calls in 10 s).
struct EpochClock {
    state: Mutex<ClockState>,
    wake: Condvar,
}

#[derive(Default)]
struct ClockState {
    /// Plugin calls in progress.
    running: usize,
    /// The clock thread waits on the condition variable: only then does a call's start
    /// wake it (a wake is a futex syscall, which would cost each call about a microsecond).
    parked: bool,
    /// The engine is gone: the thread ends.
    stopped: bool,
}

impl EpochClock {
    fn spawn(engine: &Engine, tick: Duration) -> Arc<Self> {
        let clock = Arc::new(Self {
            state: Mutex::new(ClockState::default()),
            wake: Condvar::new(),
        });
        let weak = engine.weak();
        let thread_clock = clock.clone();
        let spawned = thread::Builder::new()
            .name("fleetmeter-epoch".into())
            .spawn(move || {
                // A tick after the call started, not at once: a call shorter than a tick
                // (a sample takes microseconds) is never interrupted to yield.
                while thread_clock.wait_for_calls() {
                    thread::sleep(tick);
                    let Some(engine) = weak.upgrade() else { return };
                    engine.increment_epoch();
                }
            });
        if let Err(err) = spawned {
            // Without the clock no deadline fires; fuel (if configured) still bounds calls.
            tracing::error!(error = %err, "cannot start the epoch clock thread: plugin call deadlines are not enforced");
        }
        clock
    }

    fn lock(&self) -> MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks while no call runs; `false` once the engine is gone.
    fn wait_for_calls(&self) -> bool {
        let mut state = self.lock();
        while state.running == 0 && !state.stopped {
            state.parked = true;
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.parked = false;
        !state.stopped
    }

    fn start(&self) {
        let mut state = self.lock();
        state.running += 1;
        if state.parked {
            state.parked = false;
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_one();
    }
}

/// A plugin call in progress (see [`PluginEngine::running`]).
pub(crate) struct Running(Arc<EpochClock>);

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.running = state.running.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        let p = Path::new("x.wasm");
        assert!(matches!(
            check_component_header(p, b""),
            Err(LoadError::NotWasm { .. })
        ));
        assert!(matches!(
            check_component_header(p, b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule { .. })
        ));
        assert!(check_component_header(p, b"\0asm\x0d\0\x01\0").is_ok());
        assert!(matches!(
            check_component_header(p, b"\0asm\x02\0\0\0"),
            Err(LoadError::UnknownBinary { .. })
        ));
    }

    #[test]
    fn worlds_from_exports() {
        let exports = vec![
            "wasi:cli/run@0.2.0".to_owned(),
            "fleetmeter:plugin/aggregator-api@0.1.0".to_owned(),
        ];
        assert_eq!(
            exported_worlds(&exports),
            vec![(PluginKind::Aggregator, "0.1.0".to_owned())]
        );
        let err = check_world(Path::new("m.wasm"), PluginKind::Sensor, &exports).unwrap_err();
        assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
        let err = check_world(Path::new("m.wasm"), PluginKind::Sensor, &exports[..1]).unwrap_err();
        assert!(
            err.to_string().contains("exports: wasi:cli/run@0.2.0"),
            "{err}"
        );
    }
}
