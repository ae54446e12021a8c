//! What a plugin may use: time, fuel and memory per call, log lines, what one component may
//! hold (instances, memories, tables, host resources), and the host resources granted to
//! it (directories, environment, network). Nothing is granted by default.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// Per-plugin sandbox limits (`[plugins.limits]` in agent.toml).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock budget of one call (`describe`, `init` with its instantiation, `sample`,
    /// `aggregate`), in milliseconds, whatever the plugin does: computing, or blocked in a
    /// host call (sleep, poll, a read). TOML: `timeout_ms = 1000`.
    pub timeout_ms: u64,
    /// Optional fuel budget per call (roughly, WebAssembly instructions). Deterministic where
    /// the timeout is not, at a small cost on every call. TOML: `fuel = 50_000_000`.
    pub fuel: Option<u64>,
    /// Cap on the plugin's linear memory, in MiB. TOML: `max_memory_mib = 64`.
    pub max_memory_mib: u64,
    /// Consecutive failures (traps, limits) before the plugin is backed off.
    /// TOML: `failures_before_backoff = 3`.
    pub failures_before_backoff: u32,
    /// First back-off, doubled on each further failure. TOML: `backoff_initial_ms = 1000`.
    pub backoff_initial_ms: u64,
    /// Longest back-off. TOML: `backoff_max_ms = 60000`.
    pub backoff_max_ms: u64,
    /// Log lines one call may write; the rest are counted and summarised in one line.
    /// TOML: `log_lines_per_call = 100`.
    pub log_lines_per_call: u32,
    /// Log bytes one call may write. TOML: `log_bytes_per_call = 65536`.
    pub log_bytes_per_call: u64,
    /// Sustained log lines per second, across calls (a burst up to `log_lines_per_call` is
    /// allowed, refilled at this rate). TOML: `log_lines_per_second = 10`.
    pub log_lines_per_second: u32,
    /// Sustained log bytes per second. TOML: `log_bytes_per_second = 4096`.
    pub log_bytes_per_second: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_ms: 1000,
            fuel: None,
            max_memory_mib: 64,
            failures_before_backoff: 3,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            log_lines_per_call: 100,
            log_bytes_per_call: 64 * 1024,
            log_lines_per_second: 10,
            log_bytes_per_second: 4096,
        }
    }
}

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn max_memory_bytes(&self) -> usize {
        usize::try_from(self.max_memory_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// The back-off after `failures` consecutive failures, if any.
    pub fn backoff(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.failures_before_backoff.max(1))?;
        let ms = self
            .backoff_initial_ms
            .saturating_mul(1_u64 << over.min(32))
            .min(self.backoff_max_ms);
        Some(Duration::from_millis(ms))
    }

    /// Checks the values make sense; the message names the key.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err(LimitsError::Timeout(self.timeout_ms));
        }
        if self.fuel == Some(0) {
            return Err(LimitsError::NoFuel);
        }
        if self.max_memory_mib == 0 || self.max_memory_mib > 4096 {
            return Err(LimitsError::Memory(self.max_memory_mib));
        }
        if self.log_lines_per_call > MAX_LOG_LINES || self.log_lines_per_second > MAX_LOG_LINES {
            return Err(LimitsError::LogLines(
                self.log_lines_per_call.max(self.log_lines_per_second),
            ));
        }
        if self.log_bytes_per_call > MAX_LOG_BYTES || self.log_bytes_per_second > MAX_LOG_BYTES {
            return Err(LimitsError::LogBytes(
                self.log_bytes_per_call.max(self.log_bytes_per_second),
            ));
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            return Err(LimitsError::Backoff {
                initial: self.backoff_initial_ms,
                max: self.backoff_max_ms,
            });
        }
        Ok(())
    }
}

/// A `[plugins.limits]` value out of range; the message names the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("timeout_ms must be between 1 and 60000, got {0}")]
    Timeout(u64),
    #[error("fuel must be positive (omit it for no fuel limit)")]
    NoFuel,
    #[error("max_memory_mib must be between 1 and 4096, got {0}")]
    Memory(u64),
    #[error("backoff_initial_ms ({initial}) must not exceed backoff_max_ms ({max})")]
    Backoff { initial: u64, max: u64 },
    #[error("log_lines_per_call and log_lines_per_second must be at most {MAX_LOG_LINES}, got {0}")]
    LogLines(u32),
    #[error("log_bytes_per_call and log_bytes_per_second must be at most {MAX_LOG_BYTES}, got {0}")]
    LogBytes(u64),
}

/// Upper bounds of the log limits (0 silences a plugin).
pub const MAX_LOG_LINES: u32 = 100_000;
pub const MAX_LOG_BYTES: u64 = 16 << 20;

/// What one plugin instance (one component, in one store) may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreCaps {
    /// Core module instances: a Rust plugin has its own module plus wit-component's shims.
    pub core_instances: u32,
    /// Linear memories: a Rust plugin has one.
    pub memories: u32,
    /// Tables: a Rust plugin has a few (its own and the shims').
    pub tables: u32,
    /// Elements in one table.
    pub table_elements: usize,
    /// Host-side resources (streams, pollables, directory handles) alive at once.
    pub host_resources: usize,
    /// Bytes one `get-random-bytes` call may ask the host for.
    pub random_bytes: u64,
}

/// The caps of every plugin instance; every bundled plugin fits well within them (the
/// tests load each). A component over a count is refused when it is loaded, naming the
/// count (`plugins/fixtures/many-memories.wat` is one).
pub const STORE_CAPS: StoreCaps = StoreCaps {
    core_instances: 16,
    memories: 2,
    tables: 8,
    table_elements: 100_000,
    host_resources: 1_000,
    random_bytes: 1 << 20,
};

/// A directory grant that is not `HOST` or `HOST:GUEST`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a directory grant; use HOST or HOST:GUEST")]
pub struct DirGrantError(pub String);

/// A host directory made visible, read-only, inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    pub host: PathBuf,
    /// Where the plugin sees it; the same path as on the host by default.
    pub guest: String,
}

impl DirGrant {
    /// Parses `HOST` or `HOST:GUEST`.
    pub fn parse(spec: &str) -> Result<Self, DirGrantError> {
        let (host, guest) = match spec.split_once(':') {
            Some((host, guest)) => (host, guest),
            None => (spec, spec),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(DirGrantError(spec.to_owned()));
        }
        Ok(Self {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
        })
    }
}

/// Host resources granted to a sensor. Aggregators get none of these, and no clock or
/// randomness either.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grants {
    /// Read-only directories.
    pub dirs: Vec<DirGrant>,
    /// Environment variables visible to the plugin.
    pub env: Vec<(String, String)>,
    /// TCP endpoints the sensor may connect to (`host:port`).
    pub connect: Vec<super::network::Endpoint>,
    /// HTTP origins the sensor may send `wasi:http` requests to.
    pub http: Vec<super::network::Origin>,
    /// Every address, TCP and UDP, and name lookups: for local experiments only.
    pub network: bool,
}

/// Settings to load one plugin with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PluginSettings {
    /// Passed to the plugin's `init`.
    pub config: Vec<(String, String)>,
    pub limits: Limits,
    pub grants: Grants,
}

/// Enforces the memory cap and [`STORE_CAPS`], and remembers that the memory cap was hit, so
/// that the trap that follows (the guest's allocator aborts) is reported as "memory limit"
/// rather than "unreachable". (With the pooling allocator the counts are also enforced by
/// the pool; this covers the on-demand fallback.)
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub max_bytes: usize,
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn instances(&self) -> usize {
        STORE_CAPS.core_instances as usize
    }

    fn memories(&self) -> usize {
        STORE_CAPS.memories as usize
    }

    fn tables(&self) -> usize {
        STORE_CAPS.tables as usize
    }

    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= STORE_CAPS.table_elements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_threshold_doubles_and_caps() {
        let limits = Limits::default();
        assert_eq!(limits.backoff(2), None);
        assert_eq!(limits.backoff(3), Some(Duration::from_secs(1)));
        assert_eq!(limits.backoff(4), Some(Duration::from_secs(2)));
        assert_eq!(limits.backoff(10), Some(Duration::from_secs(60)));
        assert_eq!(limits.backoff(u32::MAX), Some(Duration::from_secs(60)));
    }

    #[test]
    fn dir_grant_forms() {
        let g = DirGrant::parse("/sys/class/thermal").unwrap();
        assert_eq!(g.guest, "/sys/class/thermal");
        let g = DirGrant::parse("/tmp/fake:/sys/class/thermal").unwrap();
        assert_eq!(g.host, PathBuf::from("/tmp/fake"));
        assert_eq!(g.guest, "/sys/class/thermal");
        assert!(DirGrant::parse(":x").is_err());
    }

    #[test]
    fn validate_names_the_key() {
        let bad = Limits {
            timeout_ms: 0,
            ..Limits::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("timeout_ms")
        );
        let bad = Limits {
            max_memory_mib: 0,
            ..Limits::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("max_memory_mib")
        );
        assert!(Limits::default().validate().is_ok());
    }
}
