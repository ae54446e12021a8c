//! The one WebAssembly engine of an agent: compiles plugins (once: compiled code is cached on
//! disk, keyed by the component's sha256 and the engine's settings), checks that a file is
//! the plugin it claims to be, and drives the epoch clock that enforces call deadlines.

use std::{
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::Duration,
};

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    component::{Component, Linker},
};

use super::{CONTRACT_PACKAGE, CONTRACT_VERSION, LoadError, PluginKind, host::HostState};

/// How the engine is built. Fuel metering is an engine-wide switch.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Where compiled plugins are cached; `None` compiles on every start.
    pub cache_dir: Option<PathBuf>,
    /// Count fuel, so that plugins with a `fuel` limit can be stopped by it.
    pub fuel: bool,
    /// Period of the epoch clock; call deadlines are a whole number of ticks.
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
    linker: Linker<HostState>,
    options: EngineOptions,
    /// Part of every cache file name: a cached artifact from another wasmtime version or
    /// other settings is never even opened.
    compat: String,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
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
        // is refused (a tight `ulimit -v`), fall back to allocating on demand.
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

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        super::bindings::host::add_to_linker::<HostState, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());

        spawn_epoch_clock(&engine, options.epoch_tick);
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                options,
                compat,
            }),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// Ticks of the epoch clock that make up `timeout` (at least one).
    pub(crate) fn deadline_ticks(&self, timeout: Duration) -> u64 {
        let tick = self.inner.options.epoch_tick.as_nanos().max(1);
        u64::try_from(timeout.as_nanos().div_ceil(tick))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Reads, checks and compiles (or loads from the cache) a component, without checking
    /// which world it implements.
    pub fn compile(&self, path: &Path) -> Result<Compiled, LoadError> {
        let bytes = fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        check_component_header(path, &bytes)?;
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        let size = bytes.len() as u64;

        let cache_file = self
            .inner
            .options
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{sha256}-{}.cwasm", self.inner.compat)));
        if let Some(file) = cache_file.as_ref().filter(|f| f.exists()) {
            // SAFETY: the file was written by `store_in_cache` below for this sha256 and this
            // engine configuration (both in its name), atomically (temp file + rename), in a
            // directory that belongs to the agent. wasmtime still checks its header and
            // compatibility and refuses a mismatch, which we handle by recompiling.
            // The file is mapped, not read: entries are only ever replaced by rename (a new
            // inode), never rewritten in place, so a running agent's mapping stays valid.
            // Truncating an entry by hand under a running agent would crash it (SIGBUS),
            // like truncating its binary would.
            match unsafe { Component::deserialize_file(&self.inner.engine, file) } {
                Ok(component) => {
                    tracing::debug!(path = %path.display(), cache = %file.display(), "plugin loaded from the compile cache");
                    return Ok(Compiled {
                        component,
                        path: path.to_owned(),
                        size,
                        sha256,
                        from_cache: true,
                    });
                }
                Err(err) => tracing::warn!(
                    cache = %file.display(),
                    error = %format!("{err:#}"),
                    "ignoring an unusable compile cache entry; recompiling"
                ),
            }
        }

        let started = std::time::Instant::now();
        let component =
            Component::from_binary(&self.inner.engine, &bytes).map_err(|e| LoadError::Invalid {
                path: path.to_owned(),
                reason: format!("{e:#}"),
            })?;
        tracing::info!(
            path = %path.display(),
            bytes = size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled plugin"
        );
        if let Some(file) = &cache_file
            && let Err(err) = store_in_cache(&component, file)
        {
            tracing::warn!(
                cache = %file.display(),
                error = %err,
                "cannot write the compile cache; the plugin will be recompiled at next start"
            );
        }
        Ok(Compiled {
            component,
            path: path.to_owned(),
            size,
            sha256,
            from_cache: false,
        })
    }

    /// Compiles `path` and checks that it implements `kind` at the supported contract version.
    pub fn compile_plugin(&self, path: &Path, kind: PluginKind) -> Result<Compiled, LoadError> {
        let compiled = self.compile(path)?;
        let exports = self.export_names(&compiled.component);
        check_world(path, kind, &exports)?;
        Ok(compiled)
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

/// Slots for `instances` plugin instances. A Rust component has one linear memory and a
/// handful of core instances and tables (its own module plus wit-component's shims).
fn pool_config(instances: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances * 8)
        .total_memories(instances * 2)
        .total_tables(instances * 8)
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
        if version == CONTRACT_VERSION {
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

fn store_in_cache(component: &Component, file: &Path) -> std::io::Result<()> {
    let dir = file
        .parent()
        .expect("cache files live in the cache directory");
    fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// Advances the engine's epoch every `tick`, until the engine is dropped.
fn spawn_epoch_clock(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    let spawned = thread::Builder::new()
        .name("fleetmeter-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(tick);
            }
        });
    if let Err(err) = spawned {
        // Without the clock no deadline fires; fuel (if configured) still bounds calls.
        tracing::error!(error = %err, "cannot start the epoch clock thread: plugin call deadlines are not enforced");
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
