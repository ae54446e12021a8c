//! What the host gives one plugin instance: the store's data ([`HostState`]), the `host`
//! import (logging, panic messages) and the WASI context, which holds nothing but what the
//! plugin's grants name (and, for aggregators, clocks that stand still and a constant random
//! source).
//!
//! The engine links against [`HostState`]; the runner in `instance` builds one per instance.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use wasmtime::component::{HasData, HasSelf, Linker, Resource};
use wasmtime_wasi::{
    FsPerms, HostMonotonicClock, HostWallClock, ResourceTable, WasiCtx, WasiCtxBuilder,
    WasiCtxView, WasiView,
    p2::{DynPollable, Pollable, bindings::clocks::monotonic_clock},
};

use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::{
    Grants, LoadError, PluginKind, STORE_CAPS,
    bindings::{v1, v2::host},
    limits::MemoryCap,
    logs::LogGate,
    network::{HttpHooks, NetworkPolicy},
};
use crate::text;

/// Longest log line or panic message kept from a plugin, in bytes (before escaping).
pub(super) const MAX_MESSAGE: usize = 4096;

/// The data of one instance's store.
pub struct HostState {
    pub(super) plugin: Arc<str>,
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) memory: MemoryCap,
    /// The plugin's log budget, shared by its successive instances.
    pub(super) logs: Arc<Mutex<LogGate>>,
    /// The message of the guest's last panic, reported with its trap.
    pub(super) panic: Option<String>,
    /// `wasi:http` (linked for sensors only): every request passes the grants' check.
    http: WasiHttpCtx,
    http_hooks: HttpHooks,
}

impl HostState {
    pub(super) fn new(
        plugin: Arc<str>,
        wasi: WasiCtx,
        max_memory_bytes: usize,
        logs: Arc<Mutex<LogGate>>,
        network: Arc<NetworkPolicy>,
    ) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(STORE_CAPS.host_resources);
        Self {
            plugin,
            wasi,
            table,
            memory: MemoryCap {
                max_bytes: max_memory_bytes,
                hit: false,
            },
            logs,
            panic: None,
            http: WasiHttpCtx::new(),
            http_hooks: HttpHooks { policy: network },
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        let admitted = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(message.len().min(MAX_MESSAGE));
        if !admitted {
            return;
        }
        let message = text::one_line_bounded(&message, MAX_MESSAGE);
        let plugin = &*self.plugin;
        match level {
            host::Level::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            host::Level::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            host::Level::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            host::Level::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            host::Level::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
    }

    fn panicked(&mut self, message: String) {
        // std's format is "panicked at FILE:LINE:COL:\nMESSAGE": one line, escaped.
        self.panic = Some(text::one_line_bounded(
            &message.replacen('\n', " ", 1),
            MAX_MESSAGE,
        ));
    }
}

/// Contract 0.1.0's `host` interface is the same as 0.2.0's: the same implementation.
impl v1::host::Host for HostState {
    fn log(&mut self, level: v1::host::Level, message: String) {
        let level = match level {
            v1::host::Level::Trace => host::Level::Trace,
            v1::host::Level::Debug => host::Level::Debug,
            v1::host::Level::Info => host::Level::Info,
            v1::host::Level::Warn => host::Level::Warn,
            v1::host::Level::Error => host::Level::Error,
        };
        host::Host::log(self, level, message);
    }

    fn panicked(&mut self, message: String) {
        host::Host::panicked(self, message);
    }
}

/// Aggregators see time stand still at the epoch: results must not depend on when, or on
/// which leader, they run.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

/// `wasi:clocks/monotonic-clock` for aggregators: always 0, and every sleep is over at once
/// (time does not pass, so no real time is spent waiting for it). Linked over WASI's own.
/// The `host` interface of both contract versions: plugins of either load.
pub(super) fn link_host(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host::add_to_linker::<HostState, HasSelf<_>>(linker, |state| state)?;
    v1::host::add_to_linker::<HostState, HasSelf<_>>(linker, |state| state)
}

pub(super) fn link_frozen_clocks(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<HostState, FrozenClocks>(linker, |state| FrozenClocksView {
        table: &mut state.table,
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

struct FrozenClocks;

impl HasData for FrozenClocks {
    type Data<'a> = FrozenClocksView<'a>;
}

struct FrozenClocksView<'a> {
    table: &'a mut ResourceTable,
}

impl FrozenClocksView<'_> {
    fn ready_now(&mut self) -> wasmtime::Result<Resource<DynPollable>> {
        let ready = self.table.push(ReadyNow { yielded: false })?;
        wasmtime_wasi::p2::subscribe(self.table, ready)
    }
}

impl monotonic_clock::Host for FrozenClocksView<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(0)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1)
    }

    fn subscribe_instant(
        &mut self,
        _when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.ready_now()
    }

    fn subscribe_duration(
        &mut self,
        _duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.ready_now()
    }
}

/// A pollable that is ready at once; it yields to the runtime the first time, as WASI's own
/// zero-length sleeps do, so that a plugin polling in a loop cannot starve it.
struct ReadyNow {
    yielded: bool,
}

#[async_trait::async_trait]
impl Pollable for ReadyNow {
    async fn ready(&mut self) {
        if !self.yielded {
            self.yielded = true;
            tokio::task::yield_now().await;
        }
    }
}

/// The WASI context: nothing but what `grants` names for sensors (sockets only through
/// `network`'s check); for aggregators no grants at all, frozen clocks and a constant
/// "random" source.
pub(super) fn wasi_ctx(
    kind: PluginKind,
    grants: &Grants,
    network: &Arc<NetworkPolicy>,
) -> Result<WasiCtx, LoadError> {
    let mut builder = WasiCtxBuilder::new();
    builder.max_random_size(STORE_CAPS.random_bytes);
    match kind {
        PluginKind::Sensor => {
            for dir in &grants.dirs {
                builder
                    .preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)
                    .map_err(|e| LoadError::Grant {
                        host: dir.host.clone(),
                        reason: format!("{e:#}"),
                    })?;
            }
            builder.envs(&grants.env);
            // TCP goes through the grants' check even with no grant, so that a refused
            // connection is named (with the grant to add) rather than a bare "not allowed".
            let check = network.clone();
            builder
                .allow_tcp(true)
                .allow_udp(network.any())
                .allow_ip_name_lookup(network.lookups())
                .socket_addr_check(move |addr, use_| {
                    let allowed = check.allows_socket(addr, use_);
                    Box::pin(async move { allowed })
                });
        }
        PluginKind::Aggregator => {
            builder
                .wall_clock(FrozenClock)
                .monotonic_clock(FrozenClock)
                .secure_random(wasmtime_wasi::Deterministic::new(vec![0]))
                .insecure_random(wasmtime_wasi::Deterministic::new(vec![0]))
                .insecure_random_seed(0);
        }
    }
    Ok(builder.build())
}
