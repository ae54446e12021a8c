//! One plugin's life: a store per instance, built from the `InstancePre` made once at load;
//! every call armed with a fresh deadline (and fuel); a trap or a limit hit discards the
//! instance, is logged and counted, and the next call rebuilds it; repeated failures back
//! off. Shared by sensors and aggregators, which differ only in their [`World`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use wasmtime::{Store, Trap, component::InstancePre};
use wasmtime_wasi::ResourceTable;

use super::{
    CallError, Failure, LoadError, Metadata, PluginEngine, PluginKind, PluginSettings,
    engine::Compiled,
    host::{HostState, truncate, wasi_ctx},
    limits::MemoryCap,
};

/// What distinguishes a sensor from an aggregator, for the runner.
pub(crate) trait World {
    const KIND: PluginKind;
    type Pre;
    type Instance;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre>;
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Self::Instance>;
    fn describe(
        instance: &Self::Instance,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Metadata>;
    // `&Vec` because that is what the generated binding takes.
    #[allow(clippy::ptr_arg)]
    fn init(
        instance: &Self::Instance,
        store: &mut Store<HostState>,
        config: &Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), String>>;
}

/// Counters of one plugin, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PluginStats {
    /// Calls asked for (including those refused while backing off).
    pub calls: u64,
    /// Traps and limit hits (each cost one call and an instance).
    pub failures: u64,
    /// Errors the plugin returned through the contract.
    pub guest_errors: u64,
    /// Calls refused while backing off.
    pub backed_off: u64,
    /// Instances created (the first one included).
    pub instantiations: u64,
    /// Time spent inside the plugin, instantiation included.
    pub busy: Duration,
}

struct Live<I> {
    store: Store<HostState>,
    instance: I,
}

enum StartError {
    Rejected(String),
    Failed(Failure),
}

pub(crate) struct Runner<W: World> {
    engine: PluginEngine,
    pre: W::Pre,
    path: PathBuf,
    name: Arc<str>,
    metadata: Metadata,
    settings: PluginSettings,
    ticks: u64,
    live: Option<Live<W::Instance>>,
    failures: u32,
    backoff_until: Option<Instant>,
    stats: PluginStats,
    from_cache: bool,
}

impl<W: World> Runner<W> {
    /// Compiles (or loads from the cache), checks, links, and starts one instance with the
    /// configuration: a configuration the plugin rejects fails here, not at the first call.
    pub fn load(
        engine: &PluginEngine,
        path: &Path,
        settings: PluginSettings,
    ) -> Result<Self, LoadError> {
        let compiled = engine.compile_plugin(path, W::KIND)?;
        let mut runner = Self::prepare(engine, compiled, settings)?;
        let started = Instant::now();
        match runner.instantiate_ready() {
            Ok(live) => runner.live = Some(live),
            Err(StartError::Rejected(message)) => {
                return Err(LoadError::Config {
                    plugin: runner.name.to_string(),
                    path: runner.path.clone(),
                    message,
                });
            }
            Err(StartError::Failed(failure)) => {
                return Err(LoadError::Start {
                    plugin: runner.name.to_string(),
                    path: runner.path.clone(),
                    failure,
                });
            }
        }
        runner.stats.busy += started.elapsed();
        tracing::info!(
            plugin = %runner.name,
            version = %runner.metadata.version,
            kind = %W::KIND,
            path = %runner.path.display(),
            from_cache = runner.from_cache,
            "plugin ready"
        );
        Ok(runner)
    }

    /// Links a compiled component and reads its metadata (from a throw-away instance:
    /// `describe` must not depend on `init`), without initialising it.
    pub fn prepare(
        engine: &PluginEngine,
        compiled: Compiled,
        settings: PluginSettings,
    ) -> Result<Self, LoadError> {
        let path = compiled.path;
        let from_cache = compiled.from_cache;
        let stem: Arc<str> = path
            .file_stem()
            .map(|s| s.to_string_lossy().into())
            .unwrap_or_else(|| "plugin".into());
        settings
            .limits
            .validate()
            .map_err(|message| LoadError::Config {
                plugin: stem.to_string(),
                path: path.clone(),
                message: format!("sandbox limits: {message}"),
            })?;
        if settings.limits.fuel.is_some() && !engine.options().fuel {
            return Err(LoadError::Engine(
                "a fuel limit is set but the engine was built without fuel metering".into(),
            ));
        }
        let instance_pre = engine
            .linker()
            .instantiate_pre(&compiled.component)
            .map_err(|e| LoadError::UnsatisfiedImport {
                path: path.clone(),
                reason: format!("{e:#}"),
            })?;
        let pre = W::pre(instance_pre).map_err(|e| LoadError::Mismatch {
            path: path.clone(),
            kind: W::KIND,
            reason: format!("{e:#}"),
        })?;
        let mut runner = Self {
            ticks: engine.deadline_ticks(settings.limits.timeout()),
            engine: engine.clone(),
            pre,
            path,
            name: stem.clone(),
            metadata: Metadata {
                name: stem.to_string(),
                ..Metadata::default()
            },
            settings,
            live: None,
            failures: 0,
            backoff_until: None,
            stats: PluginStats::default(),
            from_cache,
        };
        let failed_path = runner.path.clone();
        let start_failed = |failure| LoadError::Start {
            plugin: stem.to_string(),
            path: failed_path.clone(),
            failure,
        };
        let mut live = runner.instantiate().map_err(start_failed)?;
        runner.arm(&mut live.store);
        let metadata = W::describe(&live.instance, &mut live.store)
            .map_err(|err| runner.classify(&mut live.store, &err))
            .map_err(start_failed)?;
        if !metadata.name.is_empty() {
            runner.name = metadata.name.as_str().into();
        }
        runner.metadata = metadata;
        Ok(runner)
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn loaded_from_cache(&self) -> bool {
        self.from_cache
    }

    /// Drops the live instance and builds a new one, as after a trap.
    pub fn rebuild(&mut self) -> Result<(), CallError> {
        self.live = None;
        self.call(|_, _| Ok(Ok(())))
    }

    /// Runs `f` against a ready instance, within the limits.
    pub fn call<R>(
        &mut self,
        f: impl FnOnce(&W::Instance, &mut Store<HostState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, CallError> {
        self.stats.calls += 1;
        if let Some(until) = self.backoff_until {
            let now = Instant::now();
            if now < until {
                self.stats.backed_off += 1;
                return Err(CallError::BackingOff {
                    plugin: self.name.to_string(),
                    failures: self.failures,
                    remaining: until - now,
                });
            }
            self.backoff_until = None;
        }
        let started = Instant::now();
        let live = match self.live.take() {
            Some(live) => Ok(live),
            None => self.instantiate_ready(),
        };
        let mut live = match live {
            Ok(live) => live,
            Err(err) => {
                self.stats.busy += started.elapsed();
                let failure = match err {
                    StartError::Rejected(message) => Failure::Init(message),
                    StartError::Failed(failure) => failure,
                };
                return Err(self.fail(failure));
            }
        };
        self.arm(&mut live.store);
        let outcome = f(&live.instance, &mut live.store);
        self.stats.busy += started.elapsed();
        match outcome {
            Ok(result) => {
                self.live = Some(live);
                self.failures = 0;
                result.map_err(|message| {
                    self.stats.guest_errors += 1;
                    CallError::Guest {
                        plugin: self.name.to_string(),
                        message: truncate(message),
                    }
                })
            }
            Err(err) => {
                // The instance is dead after a trap (wasmtime refuses to re-enter it); the
                // next call builds a new one.
                let failure = self.classify(&mut live.store, &err);
                Err(self.fail(failure))
            }
        }
    }

    fn fail(&mut self, failure: Failure) -> CallError {
        self.failures = self.failures.saturating_add(1);
        self.stats.failures += 1;
        let backoff = self.settings.limits.backoff(self.failures);
        self.backoff_until = backoff.map(|d| Instant::now() + d);
        tracing::warn!(
            plugin = %self.name,
            %failure,
            consecutive_failures = self.failures,
            backoff_ms = backoff.map(|d| d.as_millis() as u64),
            "plugin call failed; the instance is discarded and rebuilt on the next call"
        );
        CallError::Failed {
            plugin: self.name.to_string(),
            failure,
        }
    }

    /// A new instance, initialised with the plugin's configuration.
    fn instantiate_ready(&mut self) -> Result<Live<W::Instance>, StartError> {
        let mut live = self.instantiate().map_err(StartError::Failed)?;
        self.arm(&mut live.store);
        match W::init(&live.instance, &mut live.store, &self.settings.config) {
            Ok(Ok(())) => Ok(live),
            Ok(Err(message)) => Err(StartError::Rejected(truncate(message))),
            Err(err) => Err(StartError::Failed(self.classify(&mut live.store, &err))),
        }
    }

    fn instantiate(&mut self) -> Result<Live<W::Instance>, Failure> {
        self.stats.instantiations += 1;
        let wasi =
            wasi_ctx(W::KIND, &self.settings.grants).map_err(|e| Failure::Init(e.to_string()))?;
        let state = HostState {
            plugin: self.name.clone(),
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                max_bytes: self.settings.limits.max_memory_bytes(),
                hit: false,
            },
            panic: None,
        };
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|state| &mut state.memory);
        self.arm(&mut store);
        let instance =
            W::instantiate(&self.pre, &mut store).map_err(|err| self.classify(&mut store, &err))?;
        Ok(Live { store, instance })
    }

    /// Resets the per-call budget. Must precede every entry into the guest: the deadline is
    /// absolute, so a stale one would fire spuriously in a later call.
    fn arm(&self, store: &mut Store<HostState>) {
        store.set_epoch_deadline(self.ticks);
        if let Some(fuel) = self.settings.limits.fuel {
            // Cannot fail: `prepare` checked the engine meters fuel.
            let _ = store.set_fuel(fuel);
        }
        let state = store.data_mut();
        state.memory.hit = false;
        state.panic = None;
    }

    fn classify(&self, store: &mut Store<HostState>, err: &wasmtime::Error) -> Failure {
        tracing::debug!(plugin = %self.name, error = ?err, "plugin trap details");
        let state = store.data_mut();
        if let Some(message) = state.panic.take() {
            return Failure::Panic(message);
        }
        if state.memory.hit {
            return Failure::MemoryLimit(state.memory.max_bytes);
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Failure::Timeout(self.settings.limits.timeout()),
            Some(Trap::OutOfFuel) => Failure::OutOfFuel(self.settings.limits.fuel.unwrap_or(0)),
            Some(trap) => Failure::Trap(trap.to_string()),
            None => Failure::Trap(err.root_cause().to_string()),
        }
    }
}
