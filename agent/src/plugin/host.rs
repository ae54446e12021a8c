//! What the host gives one plugin instance: the store's data ([`HostState`]), the `host`
//! import (logging, panic messages) and the WASI context, which holds nothing but what the
//! plugin's grants name (and, for aggregators, a frozen clock and a constant random source).
//!
//! The engine links against [`HostState`]; the runner in `instance` builds one per instance.

use std::{sync::Arc, time::Duration};

use wasmtime_wasi::{
    FsPerms, HostMonotonicClock, HostWallClock, ResourceTable, WasiCtx, WasiCtxBuilder,
    WasiCtxView, WasiView,
};

use super::{Grants, LoadError, PluginKind, bindings::host, limits::MemoryCap};

/// Longest log line or panic message kept from a plugin.
const MAX_MESSAGE: usize = 4096;

/// The data of one instance's store.
pub struct HostState {
    pub(super) plugin: Arc<str>,
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) memory: MemoryCap,
    /// The message of the guest's last panic, reported with its trap.
    pub(super) panic: Option<String>,
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
        let message = truncate(message);
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
        // std's format is "panicked at FILE:LINE:COL:\nMESSAGE": keep it on one line.
        self.panic = Some(truncate(message.replace('\n', " ")));
    }
}

pub(super) fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" [truncated]");
    }
    message
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

/// The WASI context: nothing but what `grants` names for sensors; for aggregators no
/// grants at all, a frozen clock and a constant "random" source.
pub(super) fn wasi_ctx(kind: PluginKind, grants: &Grants) -> Result<WasiCtx, LoadError> {
    let mut builder = WasiCtxBuilder::new();
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
            if grants.network {
                builder.inherit_network().allow_ip_name_lookup(true);
            }
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
