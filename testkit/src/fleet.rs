//! Real `fleetmeter run` processes: spawned with a config file and per-agent environment,
//! each logging to its own file, stopped by signal, killed when dropped. Used by the
//! end-to-end tests and the failover benchmark (`agent/examples/failover.rs`).

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// The agents of one fleet, by device id.
#[derive(Debug)]
pub struct Agents {
    binary: PathBuf,
    logs: PathBuf,
    env: Vec<(String, String)>,
    /// The running agents; a test may wait on or inspect them directly.
    pub children: BTreeMap<String, Child>,
}

impl Agents {
    /// Agents run from `binary` (a `fleetmeter`), logging to `logs/agent-ID.log`. The
    /// variables a developer's shell may set for a real agent (`DEVICE_ID`,
    /// `SAMPLING_PERIOD`, `API_URL`) are removed; set what a fleet needs with [`Agents::env`].
    pub fn new(binary: impl Into<PathBuf>, logs: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            logs: logs.into(),
            env: vec![("RUST_LOG".into(), "info".into())],
            children: BTreeMap::new(),
        }
    }

    /// A variable every agent of this fleet gets.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Starts device `id` with `config`; `env` is this agent's own (its metrics port, say).
    /// The log is appended to, so a restarted device keeps its history in one file.
    pub fn spawn(&mut self, id: &str, config: &Path, env: &[(&str, String)]) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let mut command = Command::new(&self.binary);
        command
            .args(["run", id, "--config"])
            .arg(config)
            .env_remove("DEVICE_ID")
            .env_remove("SAMPLING_PERIOD")
            .env_remove("API_URL")
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("starting {}: {e}", self.binary.display()))
        })?;
        self.children.insert(id.to_owned(), child);
        Ok(())
    }

    /// Sends `signal` (`KILL`, `TERM`) to device `id` and hands its process back, to wait on.
    pub fn signal(&mut self, id: &str, signal: &str) -> io::Result<Child> {
        let child = self.children.remove(id).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no running agent {id}"))
        })?;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "kill -{signal} {} failed",
                child.id()
            )));
        }
        Ok(child)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.logs.join(format!("agent-{id}.log"))
    }

    /// Device `id`'s log so far (empty when it has none).
    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Kills every agent (SIGKILL) and reaps it.
    pub fn kill_all(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The `agent.toml` of a test fleet: its session timeout and period, `sections` (more
/// sections, e.g. `[publish]`), then `[plugins]` with the plugin directory, the compile cache
/// and `plugins_extra` (more `[plugins]` keys, or sub-tables).
pub fn agent_toml(
    session_timeout: f64,
    period: f64,
    sections: &str,
    plugin_dir: &Path,
    cache_dir: &Path,
    plugins_extra: &str,
) -> String {
    format!(
        "[zookeeper]\nsession_timeout = {session_timeout}\n[round]\nsampling_period = {period}\n\
         {sections}[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n{plugins_extra}",
        plugin_dir.display(),
        cache_dir.display(),
    )
}
