//! The round protocol, as a library: [`run`] takes an established ZooKeeper session, a
//! [`Device`] (configuration, loaded plugins, publisher, telemetry handle) and a shutdown
//! token, so that the `fleetmeter run` command, tests and a fleet simulator can run one or
//! many devices in one process.
//!
//! Every device waits on the round barrier, samples its sensor once per round and writes its
//! round-tagged reading to its node ([`device`]). The leader (also a device) collects round
//! `n`'s readings, aggregates them and commits the result, the counter and the release of
//! round `n + 1` in one fenced multi ([`leader`]); the publisher then sends the outbox.
//!
//! # Layout
//! - [`schedule`]: when a round starts, stops collecting and commits (no drift).
//! - [`collect`]: the leader's wait for the round's readings, up to the deadline.
//! - [`plugins`]: the loaded sensor and aggregator, as the loop calls them, with the
//!   instances a rollout switches to on standby.
//! - [`device`]: the sampling loop every device runs.
//! - [`leader`]: a leader's term, one named step after another.
//! - `plan`: the commit as data (a labelled transaction and what it will have done), pure.
//! - `guard`: what the leader trusts (only the round and counter it left), pure.
//! - `commit`: reading what a commit builds on, applying the plan, retrying.
//! - `resume`: starting the fleet's state where the API and the outbox say it continues, or
//!   from the clock when the API cannot be asked.
//! - [`handover`]: the round in flight at a change of leader, finished or given up.
//! - `canary`: the leader's side of a plugin rollout: the shadow aggregator, the gates.
//! - `versions`: the wire contract version results are written in.

mod canary;
pub mod collect;
mod commit;
mod device;
#[cfg(test)]
mod fixtures;
mod guard;
pub mod handover;
pub mod leader;
mod plan;
pub mod plugins;
pub mod quantities;
mod resume;
pub mod schedule;
mod versions;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

pub use plugins::{Aggregated, Plugins, PluginsError};
pub use resume::clock_round;

use crate::{
    backoff::Backoff,
    config::AgentConfig,
    coord::{
        CoordError, Session,
        dynconfig::{self, DynConfig, KnownAggregators, Local},
        election::Election,
        membership::Membership,
        paths::{self, DEVICES},
    },
    plugin::PluginEngine,
    publish::Publisher,
    telemetry::Telemetry,
    wire::MAX_DEVICES,
};

/// Everything a device runs with, except its session.
#[derive(Debug)]
pub struct Device {
    pub config: AgentConfig,
    pub plugins: Plugins,
    pub publisher: Publisher,
    pub telemetry: Arc<Telemetry>,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Plugins(#[from] PluginsError),
    #[error("building the HTTP client")]
    Http(#[source] reqwest::Error),
}

impl Device {
    /// Loads the plugins with `engine` (one per process is enough) and builds the
    /// publisher, which reports to `telemetry`. A bad plugin stops the start here, before
    /// anything is connected to.
    pub async fn load(
        config: AgentConfig,
        engine: &PluginEngine,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, StartError> {
        let plugins = Plugins::load(engine, &config, &telemetry).await?;
        let publisher = Publisher::new(config.publish.clone())
            .map_err(StartError::Http)?
            .with_events(telemetry.clone());
        Ok(Self {
            config,
            plugins,
            publisher,
            telemetry,
        })
    }
}

/// What the device and leader loops share.
pub(crate) struct Ctx {
    id: String,
    /// What this agent advertises in its device node (its version, the contract versions
    /// it reads and writes).
    advert: crate::wire::Advert,
    collect_fraction: f64,
    session: Session,
    plugins: Arc<Plugins>,
    /// The fleet's rollout state, as this agent's follower last read and prepared it.
    rollouts: tokio::sync::watch::Receiver<Arc<crate::rollout::View>>,
    dynconfig: DynConfig,
    publisher: Publisher,
    telemetry: Arc<Telemetry>,
}

impl Ctx {
    /// The sampling period the fleet's config names now.
    fn period(&self) -> Duration {
        *self.dynconfig.sampling_period.borrow()
    }

    /// The key of the outbox's commit marks (`None`: entries are not marked).
    fn mark_key(&self) -> Option<&crate::publish::outbox::MarkKey> {
        self.publisher.settings().mark_key.as_ref()
    }
}

/// Runs `device` on `session` until `shutdown` is cancelled or the session is closed. The
/// caller owns the session. For the fastest failover, close the session instead of
/// cancelling `shutdown` (`fleetmeter run` does): the device's nodes vanish at once and `run`
/// returns as soon as its loops notice. After a `shutdown`, close the session when `run`
/// returns.
pub async fn run(
    device: Device,
    session: &Session,
    shutdown: CancellationToken,
) -> Result<(), CoordError> {
    let Device {
        config,
        plugins,
        publisher,
        telemetry,
    } = device;
    let id = config.device_id.clone();
    // Ends by itself when the session is dropped, so /healthz says "closed" while the
    // process shuts down.
    tokio::spawn({
        let (telemetry, status) = (telemetry.clone(), session.status());
        async move { telemetry.follow_session(status).await }
    });
    let started = Instant::now();
    // Devices powered on together connect together; their first writes (configuration,
    // device node) are spread over up to a quarter period (at most 250 ms).
    let spread = (config.period / 4)
        .min(Duration::from_millis(250))
        .mul_f64(rand::random_range(0.0..1.0));
    if shutdown
        .run_until_cancelled(tokio::time::sleep(spread))
        .await
        .is_none()
    {
        return Ok(());
    }
    let local = Local {
        sampling_period: config.period,
        api_url: config.publish.api_url.clone(),
        allowed_origins: config.publish.allowed_origins.clone(),
        aggregator: config.aggregator.clone(),
    };
    let known = known_aggregators(config.plugin_dir.clone());
    let start = retry_start(
        session,
        started,
        &shutdown,
        "read the configuration",
        || dynconfig::start(session, local.clone(), known.clone()),
    );
    let Some((dynconfig, config_tasks)) = start.await? else {
        return Ok(());
    };
    // They end with this function, however it returns.
    let _config_tasks = config_tasks;
    telemetry.set_dynconfig(dynconfig.clone());
    let advert = crate::wire::advert(publisher.settings().wire_version);
    let check = retry_start(session, started, &shutdown, "count the fleet", || {
        check_fleet_size(session, &id)
    });
    if check.await?.is_none() {
        return Ok(());
    }
    let Some(membership) = shutdown
        .run_until_cancelled(Membership::join(
            session,
            &id,
            serde_json::to_vec(&advert).expect("an advert serializes"),
        ))
        .await
    else {
        return Ok(());
    };
    let membership = membership?;
    let election = Election::start(session, &id);

    let plugins = Arc::new(plugins);
    let (rollouts_tx, rollouts) = tokio::sync::watch::channel(Arc::default());
    let follower = tokio::spawn(crate::rollout::follow::follow(
        session.clone(),
        plugins.clone(),
        config.rollouts.clone(),
        telemetry.clone(),
        rollouts_tx,
    ));
    // Ends with this function, however it returns.
    let _follower = AbortOnDrop(follower);
    let ctx = Arc::new(Ctx {
        id: id.clone(),
        advert,
        collect_fraction: config.collect_fraction,
        session: session.clone(),
        plugins,
        rollouts,
        dynconfig,
        publisher,
        telemetry,
    });
    let stop = shutdown.child_token();
    let device = tokio::spawn(device::run(ctx.clone(), membership, stop.clone()));
    let leader = tokio::spawn(leader::run(ctx, election.leadership(), stop.clone()));
    let closing = session.closing();
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = closing.cancelled() => {}
    }
    tracing::info!(device = %id, "stopping the round loops");
    stop.cancel();
    let _ = tokio::join!(device, leader);
    drop(election);
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a start step again after transient ZooKeeper errors — a start storm (every device
/// of a site powered on at once) makes a busy server answer late — with jittered back-off,
/// until the session's `connect_timeout` has passed since `started`: a device waits rather
/// than exits. `None` when `shutdown` came first.
async fn retry_start<T, F, Fut>(
    session: &Session,
    started: Instant,
    shutdown: &CancellationToken,
    what: &str,
    mut step: F,
) -> Result<Option<T>, CoordError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CoordError>>,
{
    let limit = session.settings().connect_timeout;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let err = match shutdown.run_until_cancelled(step()).await {
            None => return Ok(None),
            Some(Ok(value)) => return Ok(Some(value)),
            Some(Err(err)) => err,
        };
        let delay = backoff.next_delay();
        if !err.is_transient() || started.elapsed() + delay >= limit {
            return Err(err);
        }
        tracing::warn!(error = %err, retry_in = ?delay, "cannot {what} yet; retrying");
        if shutdown
            .run_until_cancelled(tokio::time::sleep(delay))
            .await
            .is_none()
        {
            return Ok(None);
        }
    }
}

/// Refuses to join a fleet that already has the most devices fleetmeter supports (a round
/// could not publish them all). A device whose own node is still there (a restart) joins.
async fn check_fleet_size(session: &Session, id: &str) -> Result<(), CoordError> {
    let client = session.client()?;
    let members = match client.check_stat(DEVICES).await {
        Ok(Some(stat)) => usize::try_from(stat.num_children).unwrap_or(0),
        Ok(None) => 0,
        Err(e) => return Err(CoordError::zk("stat", DEVICES, e)),
    };
    if members < MAX_DEVICES {
        return Ok(());
    }
    let ours = client
        .check_stat(&paths::device(id))
        .await
        .map_err(|e| CoordError::zk("stat", DEVICES, e))?
        .is_some();
    if ours {
        return Ok(());
    }
    Err(CoordError::FleetFull {
        members,
        supported: MAX_DEVICES,
    })
}

/// Aggregator names that exist as files in `plugin_dir`.
fn known_aggregators(plugin_dir: PathBuf) -> KnownAggregators {
    Arc::new(move |name| plugin_dir.join(format!("{name}.wasm")).is_file())
}
