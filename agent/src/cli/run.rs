//! `fleetmeter run`: reads the configuration, loads the plugins, serves telemetry, connects
//! to ZooKeeper and runs the round loop ([`crate::round::run`]) until SIGTERM or ctrl-c, then
//! closes the session so that the next leader takes over at once.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{self, AgentConfig, keys},
    coord::Session,
    plugin::{self, EngineOptions, PluginEngine},
    round::{self, Device},
    telemetry::{self, Telemetry},
};

/// `fleetmeter run`. Every value is optional here: what is missing comes from agent.toml or
/// the defaults (see agent.toml for all keys).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file [default: ./agent.toml when it exists].
    #[arg(long = keys::CONFIG.long(), env = keys::CONFIG.var(), value_name = keys::CONFIG.value())]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: config::Overrides,
    /// Only check the configuration (file, environment and flags, as `run` would read
    /// them), print what the agent would run with, and exit: 0 when valid, 1 when not.
    /// Nothing is connected to.
    #[arg(long = keys::CHECK.long())]
    pub check: bool,
}

pub(super) fn run(args: RunArgs) -> Result<ExitCode> {
    let config = config::load(args.config.as_deref(), args.overrides)?;
    if args.check {
        print!("{}", config::describe(&config));
        return Ok(ExitCode::SUCCESS);
    }
    // One thread runs the agent: a device samples and writes once a period, and a second
    // worker only added wakeups (with the ZooKeeper check every 300 ms instead of 200, a
    // follower's CPU per round went from 1.87 to 1.26 ms, `perf stat -e task-clock` over
    // 30 s). Plugin calls still cannot hold it: a running guest yields at every epoch tick,
    // and blocking work goes to the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("fleetmeter")
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                wait_for_signal().await;
                shutdown.cancel();
            }
        });
        run_device(config, shutdown).await
    });
    // Do not wait for blocking threads: one may still hold a plugin's host call abandoned
    // at its deadline (a read that never returns), and exit must not wait for it.
    runtime.shutdown_background();
    outcome?;
    Ok(ExitCode::SUCCESS)
}

/// Wires one device: plugins first (a bad plugin stops the start with its message), then
/// telemetry (served from before the first connection, so that /healthz tells why the agent
/// is not ready yet), then the session and the round loop.
async fn run_device(config: AgentConfig, shutdown: CancellationToken) -> Result<()> {
    let id = config.device_id.clone();
    tracing::info!(device = %id, zookeeper = %config.zookeeper.hosts, root = %config.zookeeper.root, "fleetmeter starting");
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: config.cache_dir.clone().or_else(plugin::default_cache_dir),
        fuel: config.sensor_settings.limits.fuel.is_some(),
        ..EngineOptions::default()
    })?;
    let telemetry = Arc::new(Telemetry::new(
        &id,
        config.zookeeper.session_timeout,
        config.telemetry.unhealthy_after_periods,
    ));
    let device = Device::load(config, &engine, telemetry.clone()).await?;
    let telemetry_stop = CancellationToken::new();
    let _telemetry_stop = telemetry_stop.clone().drop_guard();
    if let Some(addr) = device.config.telemetry.listen {
        let listener = telemetry::bind(addr).await?;
        tokio::spawn(telemetry::serve(listener, telemetry, telemetry_stop));
    }
    let session = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        session = Session::connect(device.config.zookeeper.clone()) => session?,
    };
    // On SIGTERM the session is closed first, so that the successor takes over at once
    // (the device's nodes go with it); the round loop, still polled meanwhile, then ends
    // because the session closed, whatever it was doing (starting up, a plugin call).
    let rounds = round::run(device, &session, CancellationToken::new());
    let closer = async {
        shutdown.cancelled().await;
        tracing::info!(device = %id, "shutting down: closing the ZooKeeper session");
        session.close().await;
        std::future::pending::<()>().await;
    };
    let ran = tokio::select! {
        ran = rounds => ran,
        () = closer => unreachable!("the closer never completes"),
    };
    // Finishes a close the select interrupted, or closes after the loop failed by itself.
    session.close().await;
    match ran {
        // Closing the session under a starting loop fails its next ZooKeeper call: expected.
        Err(err) if shutdown.is_cancelled() => {
            tracing::debug!(device = %id, error = %err, "the round loop ended with the session");
        }
        ran => ran?,
    }
    tracing::info!(device = %id, "stopped");
    Ok(())
}

/// SIGTERM (docker stop, systemd) or ctrl-c.
async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; ctrl-c still stops");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
