//! A fleet of devices in one process: each device has its own ZooKeeper session, its own
//! sensor and aggregator instances and its own telemetry, and runs `round::run` — the round
//! code of `fleetmeter run` — while all of them share one tokio runtime and one plugin
//! engine (so the plugins are compiled or loaded once).
//!
//! Used by `scripts/bench-fleet` (agent/examples/bench_fleet) and by the start-storm test
//! (agent/tests/start_storm.rs).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use fleetmeter::{
    config::{self, Overrides},
    coord::Session,
    plugin::{EngineOptions, PluginEngine},
    round::{self, Device},
    telemetry::Telemetry,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Spec {
    pub devices: usize,
    /// Sampling period, seconds.
    pub period: f64,
    pub session_timeout: f64,
    /// How long a device may take to connect and start, seconds (`connect_timeout`).
    pub connect_timeout: f64,
    pub zk_hosts: String,
    /// The fleet's root node.
    pub root: String,
    pub api_url: String,
    /// The API's bearer token.
    pub token: String,
    pub plugin_dir: PathBuf,
    pub cache_dir: PathBuf,
}

impl Spec {
    /// Device ids: `d00001`, `d00002`, …
    pub fn id(i: usize) -> String {
        format!("d{:05}", i + 1)
    }

    /// The agent.toml every device reads (its id and hosts come as overrides, as flags
    /// would).
    fn agent_toml(&self, token_file: &Path) -> String {
        let toml = fleetmeter_testkit::fleet::agent_toml(
            self.session_timeout,
            self.period,
            &format!(
                "[publish]\napi_url = \"{}\"\ntoken_file = \"{}\"\n[telemetry]\nlisten = \"off\"\n",
                self.api_url,
                token_file.display()
            ),
            &self.plugin_dir,
            &self.cache_dir,
            "",
        );
        toml.replacen(
            "[zookeeper]\n",
            &format!("[zookeeper]\nconnect_timeout = {}\n", self.connect_timeout),
            1,
        )
    }
}

/// One engine for the whole fleet, with an instance slot for each device's sensor and
/// aggregator (plus room for an aggregator swap).
pub fn engine(spec: &Spec) -> Result<PluginEngine> {
    let slots = u32::try_from(spec.devices * 2 + 8).context("too many devices")?;
    PluginEngine::new(EngineOptions {
        cache_dir: Some(spec.cache_dir.clone()),
        max_instances: slots,
        ..EngineOptions::default()
    })
    .context("the plugin engine")
}

/// A running simulated fleet.
pub struct Sim {
    tasks: Vec<JoinHandle<Result<()>>>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Sim {
    /// Loads every device (plugins instantiated, nothing connected yet), then starts them
    /// all at once: every session connects in the same instant, as when a site's devices
    /// are powered on together.
    pub async fn start(spec: &Spec, engine: &PluginEngine) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let token_file = dir.path().join("api-token");
        std::fs::write(&token_file, format!("{}\n", spec.token))?;
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, spec.agent_toml(&token_file))?;
        let mut devices = Vec::with_capacity(spec.devices);
        for i in 0..spec.devices {
            let id = Spec::id(i);
            let config = config::load(
                Some(&file),
                Overrides {
                    id: Some(id.clone()),
                    zk_hosts: Some(spec.zk_hosts.clone()),
                    root: Some(spec.root.clone()),
                    ..Overrides::default()
                },
            )
            .with_context(|| format!("configuration of device {id}"))?;
            let telemetry = Arc::new(Telemetry::new(&id, config.zookeeper.session_timeout, 3));
            let device = Device::load(config, engine, telemetry)
                .await
                .with_context(|| format!("plugins of device {id}"))?;
            devices.push(device);
        }
        let shutdown = CancellationToken::new();
        let tasks = devices
            .into_iter()
            .map(|device| {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let id = device.config.device_id.clone();
                    let session = tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        s = Session::connect(device.config.zookeeper.clone()) => {
                            s.with_context(|| format!("device {id}: connecting"))?
                        }
                    };
                    let ran = round::run(device, &session, shutdown).await;
                    session.close().await;
                    ran.with_context(|| format!("device {id}"))
                })
            })
            .collect();
        Ok(Self {
            tasks,
            shutdown,
            _dir: dir,
        })
    }

    /// Devices whose task ended before [`Sim::stop`] (each an error: a device never exits
    /// by itself).
    pub fn exited(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_finished()).count()
    }

    /// Stops every device (each closes its session) and returns the errors of those that
    /// failed.
    pub async fn stop(self, within: Duration) -> Vec<String> {
        self.shutdown.cancel();
        let mut errors = Vec::new();
        for task in self.tasks {
            match tokio::time::timeout(within, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => errors.push(format!("{err:#}")),
                Ok(Err(err)) => errors.push(format!("a device task failed: {err}")),
                Err(_) => errors.push(format!("a device did not stop within {within:?}")),
            }
        }
        errors
    }
}
