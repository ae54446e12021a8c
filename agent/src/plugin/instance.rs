//! One plugin's life: a store per instance, built from the `InstancePre` made once at load;
//! every entry into the guest is an async call under a deadline; a trap, a limit hit or a
//! deadline discards the instance, is logged and counted, and the next call rebuilds it;
//! repeated failures back off. Shared by sensors and aggregators, which differ only in their
//! [`World`].
//!
//! # Why async calls
//! An epoch deadline alone stops a guest that computes, but not one blocked inside a WASI
//! host call (a sleep, `poll`, a read): with synchronous calls the host blocks on the
//! guest's behalf and never looks at the deadline. With async calls every host call that
//! waits is a future, and the guest itself yields to the runtime at every epoch tick
//! (`epoch_deadline_async_yield_and_update`), so one `tokio::time::timeout` around the call
//! bounds it whatever the guest does: dropping the future unwinds the guest's fiber and the
//! instance is discarded. (The other way, host-call implementations that honour a deadline,
//! would mean re-implementing every blocking WASI call; wasmtime's docs recommend this one.)

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use wasmtime::{Store, Trap, component::InstancePre};

use super::{
    CallError, Contract, Failure, LoadError, Metadata, PluginEngine, PluginKind, PluginSettings,
    engine::{Compiled, PluginSource},
    host::{HostState, MAX_MESSAGE, wasi_ctx},
    logs::LogGate,
    metadata,
    network::NetworkPolicy,
};
use crate::text;

/// What distinguishes a sensor from an aggregator, for the runner.
pub(crate) trait World: Send + 'static {
    const KIND: PluginKind;
    type Pre: Send + Sync;
    type Instance: Send + Sync;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre>;
    /// The contract version the linked component was built for.
    fn contract(pre: &Self::Pre) -> Contract;
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Self::Instance>> + Send;
    fn describe(
        instance: &Self::Instance,
        store: &mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Metadata>> + Send;
    #[expect(clippy::ptr_arg, reason = "`&Vec` is what the generated binding takes")]
    fn init(
        instance: &Self::Instance,
        store: &mut Store<HostState>,
        config: &Vec<(String, String)>,
    ) -> impl Future<Output = wasmtime::Result<Result<(), String>>> + Send;
}

/// One call into a live instance of world `W` (`sample`, `aggregate`, …).
pub(crate) trait Call<W: World> {
    type Output;
    fn call(
        self,
        instance: &W::Instance,
        store: &mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Result<Self::Output, String>>> + Send;
}

/// No call at all: the instance is only made ready (for `rebuild`).
pub(crate) struct Ready;

impl<W: World> Call<W> for Ready {
    type Output = ();
    #[expect(
        clippy::manual_async_fn,
        reason = "the trait's signature spells out `+ Send`, which `async fn` cannot"
    )]
    fn call(
        self,
        _: &W::Instance,
        _: &mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Result<(), String>>> + Send {
        async { Ok(Ok(())) }
    }
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
    /// Failures since the last call that worked.
    pub consecutive_failures: u32,
    /// How the last failed call failed, on one line.
    pub last_failure: Option<String>,
    /// Log lines dropped over the plugin's log budget.
    pub logs_suppressed: u64,
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
    logs: Arc<Mutex<LogGate>>,
    live: Option<Live<W::Instance>>,
    failures: u32,
    backoff_until: Option<Instant>,
    stats: PluginStats,
    from_cache: bool,
    /// Hex SHA-256 of the component.
    sha256: String,
    /// The network grants, names resolved at load.
    network: Arc<NetworkPolicy>,
}

impl<W: World> Runner<W> {
    /// Compiles (or loads from the cache, on a blocking thread), checks, links, and starts
    /// one instance with the configuration: a configuration the plugin rejects fails here,
    /// not at the first call.
    pub async fn load(
        engine: &PluginEngine,
        source: PluginSource,
        settings: PluginSettings,
    ) -> Result<Self, LoadError> {
        let compiled = {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || engine.compile_source(&source, W::KIND))
                .await
                .map_err(|e| LoadError::Engine(format!("the compile task failed: {e}")))??
        };
        let mut runner = Self::prepare(engine, compiled, settings).await?;
        let started = Instant::now();
        match runner.instantiate_ready().await {
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
        runner.report_suppressed();
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
    /// `describe` must not depend on `init`) and checks it, without initialising it.
    pub async fn prepare(
        engine: &PluginEngine,
        compiled: Compiled,
        settings: PluginSettings,
    ) -> Result<Self, LoadError> {
        let path = compiled.path;
        let from_cache = compiled.from_cache;
        let sha256 = compiled.sha256;
        let stem: Arc<str> = path
            .file_stem()
            .map(|s| text::one_line(&s.to_string_lossy()).into())
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
        let grants = &settings.grants;
        let network = match W::KIND {
            PluginKind::Sensor => NetworkPolicy::resolve(
                grants.network,
                &grants.connect,
                &grants.http,
                settings.limits.timeout(),
            )
            .await
            .map_err(|error| LoadError::NetworkGrant {
                path: path.clone(),
                error,
            })?,
            PluginKind::Aggregator => NetworkPolicy::default(),
        };
        let instance_pre = engine
            .linker(W::KIND)
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
            engine: engine.clone(),
            pre,
            path,
            name: stem.clone(),
            metadata: Metadata {
                name: stem.to_string(),
                ..Metadata::default()
            },
            logs: Arc::new(Mutex::new(LogGate::new(&settings.limits))),
            settings,
            live: None,
            failures: 0,
            backoff_until: None,
            stats: PluginStats::default(),
            from_cache,
            sha256,
            network: Arc::new(network),
        };
        let metadata = runner
            .describe()
            .await
            .map_err(|failure| LoadError::Start {
                plugin: stem.to_string(),
                path: runner.path.clone(),
                failure,
            })?;
        metadata::validate(&metadata).map_err(|problem| LoadError::Metadata {
            path: runner.path.clone(),
            problem,
        })?;
        runner.name = metadata.name.as_str().into();
        runner.metadata = metadata;
        Ok(runner)
    }

    /// `describe` on a fresh instance, within the time limit.
    async fn describe(&mut self) -> Result<Metadata, Failure> {
        let _running = self.engine.running();
        self.logs().begin_call();
        let mut store = self.new_store()?;
        let limit = self.settings.limits.timeout();
        let pre = &self.pre;
        let outcome = tokio::time::timeout(limit, async {
            let instance = W::instantiate(pre, &mut store).await?;
            W::describe(&instance, &mut store).await
        })
        .await;
        self.report_suppressed();
        match outcome {
            Ok(Ok(metadata)) => Ok(metadata),
            Ok(Err(err)) => Err(self.classify(&mut store, &err)),
            Err(_elapsed) => Err(Failure::Timeout(limit)),
        }
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    pub fn contract(&self) -> Contract {
        W::contract(&self.pre)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn loaded_from_cache(&self) -> bool {
        self.from_cache
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Drops the live instance and builds a new one, as after a trap.
    pub async fn rebuild(&mut self) -> Result<(), CallError> {
        self.live = None;
        self.call(Ready).await
    }

    /// Runs `call` against a ready instance, within the limits. If this future is dropped
    /// before it finishes, the instance is dropped with it and the next call builds a new
    /// one.
    pub async fn call<C: Call<W>>(&mut self, call: C) -> Result<C::Output, CallError> {
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
        let _running = self.engine.running();
        self.logs().begin_call();
        // A refusal belongs to the call that caused it: one left by a call that trapped or
        // timed out must not be told with the next call's error.
        self.network.take_refusal();
        let live = match self.live.take() {
            Some(live) => Ok(live),
            None => self.instantiate_ready().await,
        };
        let mut live = match live {
            Ok(live) => live,
            Err(err) => {
                self.stats.busy += started.elapsed();
                self.report_suppressed();
                let failure = match err {
                    StartError::Rejected(message) => Failure::Init(message),
                    StartError::Failed(failure) => failure,
                };
                return Err(self.fail(failure));
            }
        };
        self.arm(&mut live.store);
        let limit = self.settings.limits.timeout();
        let outcome = tokio::time::timeout(limit, call.call(&live.instance, &mut live.store)).await;
        self.stats.busy += started.elapsed();
        self.report_suppressed();
        match outcome {
            Ok(Ok(result)) => {
                self.live = Some(live);
                self.failures = 0;
                self.stats.consecutive_failures = 0;
                let refused = self.network.take_refusal();
                result.map_err(|message| {
                    self.stats.guest_errors += 1;
                    let message = match refused {
                        Some(refused) => format!("{message} ({refused})"),
                        None => message,
                    };
                    CallError::Guest {
                        plugin: self.name.to_string(),
                        message: text::one_line_bounded(&message, MAX_MESSAGE),
                    }
                })
            }
            Ok(Err(err)) => {
                // The instance is dead after a trap (wasmtime refuses to re-enter it); the
                // next call builds a new one.
                let failure = self.classify(&mut live.store, &err);
                Err(self.fail(failure))
            }
            // The guest's fiber was unwound when the call's future was dropped; the
            // instance goes with it.
            Err(_elapsed) => Err(self.fail(Failure::Timeout(limit))),
        }
    }

    fn fail(&mut self, failure: Failure) -> CallError {
        self.failures = self.failures.saturating_add(1);
        self.stats.failures += 1;
        self.stats.consecutive_failures = self.failures;
        self.stats.last_failure = Some(failure.to_string());
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

    fn logs(&self) -> std::sync::MutexGuard<'_, LogGate> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One line for the log lines dropped during the call that just ended.
    fn report_suppressed(&mut self) {
        let Some(suppressed) = self.logs().take_suppressed() else {
            return;
        };
        self.stats.logs_suppressed += suppressed.lines;
        let limits = &self.settings.limits;
        tracing::warn!(
            target: "plugin",
            plugin = %self.name,
            lines = suppressed.lines,
            bytes = suppressed.bytes,
            "suppressed {} log line(s) over the plugin's budget ({} lines / {} bytes per call, {} lines / {} bytes per second)",
            suppressed.lines,
            limits.log_lines_per_call,
            limits.log_bytes_per_call,
            limits.log_lines_per_second,
            limits.log_bytes_per_second,
        );
    }

    /// A new instance, initialised with the plugin's configuration; instantiation and `init`
    /// share one time limit.
    async fn instantiate_ready(&mut self) -> Result<Live<W::Instance>, StartError> {
        let _running = self.engine.running();
        let mut store = self.new_store().map_err(StartError::Failed)?;
        let limit = self.settings.limits.timeout();
        let (pre, config) = (&self.pre, &self.settings.config);
        let outcome = tokio::time::timeout(limit, async {
            let instance = W::instantiate(pre, &mut store).await?;
            let init = W::init(&instance, &mut store, config).await?;
            Ok::<_, wasmtime::Error>((instance, init))
        })
        .await;
        match outcome {
            Ok(Ok((instance, Ok(())))) => Ok(Live { store, instance }),
            Ok(Ok((_, Err(message)))) => {
                let message = match self.network.take_refusal() {
                    Some(refused) => format!("{message} ({refused})"),
                    None => message,
                };
                Err(StartError::Rejected(text::one_line_bounded(
                    &message,
                    MAX_MESSAGE,
                )))
            }
            Ok(Err(err)) => Err(StartError::Failed(self.classify(&mut store, &err))),
            Err(_elapsed) => Err(StartError::Failed(Failure::Timeout(limit))),
        }
    }

    /// A store for a new instance, armed for its first entry.
    fn new_store(&mut self) -> Result<Store<HostState>, Failure> {
        self.stats.instantiations += 1;
        let wasi = wasi_ctx(W::KIND, &self.settings.grants, &self.network)
            .map_err(|e| Failure::Init(e.to_string()))?;
        let state = HostState::new(
            self.name.clone(),
            wasi,
            self.settings.limits.max_memory_bytes(),
            self.logs.clone(),
            self.network.clone(),
        );
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|state| &mut state.memory);
        // Past the deadline (one tick ahead, re-armed before every call), a running guest
        // yields to the runtime and gets one more tick: the call's timeout can then fire.
        store.epoch_deadline_async_yield_and_update(1);
        self.arm(&mut store);
        Ok(store)
    }

    /// Resets the per-call budget. Must precede every entry into the guest.
    fn arm(&self, store: &mut Store<HostState>) {
        store.set_epoch_deadline(1);
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
            None => Failure::Trap(text::one_line_bounded(
                &err.root_cause().to_string(),
                MAX_MESSAGE,
            )),
        }
    }
}
