//! The round protocol: what `fleetmeter run` does.
//!
//! Every device waits on the round barrier, samples its sensor once per round and writes the
//! round-tagged reading `{"round":n,"value":v,"ts":ms}` to its node. The leader (also a
//! device) collects round `n`'s readings until every live device reported or the collection
//! deadline passes, aggregates them with the aggregator plugin, and at the round's scheduled
//! end commits in one multi, fenced by its election node: the result into the outbox
//! (`{root}/results/{n}`, only when there is a value), the counter (+ readings), and the
//! release of round `n + 1`. Rounds start every period measured from the previous start (no
//! drift); a new period applies from the next round. The publisher then sends the outbox.
//!
//! A round with no readings (or no value) commits nothing but the release: nothing is
//! published, the round still advances, and the counter only ever grows by the `count` of a
//! stored result, so it equals the sum of `count` over published rounds.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use zookeeper_client::{Error as ZkError, MultiReadResult, MultiWriteError};

use crate::{
    config::AgentConfig,
    coord::{
        CoordError, Session, barrier, counter,
        dynconfig::{self, DynConfig, KnownAggregators, Local},
        election::{Election, Leadership},
        membership::{self, Membership},
        paths::{self, DEVICES, RESULTS},
    },
    plugin::{
        self, AggregatorPlugin, EngineOptions, PluginEngine, PluginKind, Reading, SensorPlugin,
    },
    publish::{self, Publisher, RoundResult},
    telemetry::{self, Telemetry},
};

/// What a device writes to its node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceReading {
    pub round: u64,
    pub value: f64,
    pub ts: u64,
}

/// The loaded aggregator and the name it was loaded under.
struct LoadedAggregator {
    name: String,
    plugin: AggregatorPlugin,
}

struct Ctx {
    config: AgentConfig,
    session: Session,
    engine: PluginEngine,
    sensor: Arc<Mutex<SensorPlugin>>,
    unit: Option<String>,
    aggregator: Arc<Mutex<LoadedAggregator>>,
    dynconfig: DynConfig,
    members: watch::Receiver<Vec<String>>,
    publisher: Publisher,
    telemetry: Arc<Telemetry>,
}

/// Runs the device until `shutdown` is cancelled, then closes the ZooKeeper session (so a
/// successor takes over at once) and returns.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<()> {
    let id = config.device_id.clone();
    tracing::info!(device = %id, zookeeper = %config.zookeeper.hosts, root = %config.zookeeper.root, "fleetmeter starting");

    // Plugins first: a bad plugin or plugin configuration stops the start with its message.
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: config.cache_dir.clone().or_else(plugin::default_cache_dir),
        fuel: config.sensor_settings.limits.fuel.is_some(),
        ..EngineOptions::default()
    })?;
    let sensor = {
        let (engine, path, settings) = (
            engine.clone(),
            plugin::resolve(&config.sensor, &config.plugin_dir),
            config.sensor_settings.clone(),
        );
        tokio::task::spawn_blocking(move || SensorPlugin::load(&engine, &path, settings))
            .await?
            .context("loading the sensor plugin")?
    };
    let unit = Some(sensor.metadata().unit.clone()).filter(|u| !u.is_empty());
    let aggregator = load_aggregator(&engine, &config, &config.aggregator)
        .await
        .context("loading the aggregator plugin")?;
    let telemetry = Arc::new(Telemetry::new(
        &id,
        config.zookeeper.session_timeout,
        config.telemetry.unhealthy_after_periods,
    ));
    telemetry.plugin_loaded(PluginKind::Sensor, &sensor.metadata().name);
    telemetry.plugin_loaded(PluginKind::Aggregator, &aggregator.plugin.metadata().name);
    let publisher = Publisher::new(config.publish.clone())
        .context("building the HTTP client")?
        .with_telemetry(telemetry.clone());
    // Served from before the first connection, so that /healthz tells why the agent is not
    // ready yet; stopped when `run` returns.
    let telemetry_stop = CancellationToken::new();
    let _telemetry_stop = telemetry_stop.clone().drop_guard();
    if let Some(addr) = config.telemetry.listen {
        let listener = telemetry::bind(addr).await?;
        tokio::spawn(telemetry::serve(
            listener,
            telemetry.clone(),
            telemetry_stop.clone(),
        ));
    }

    let session = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        session = Session::connect(config.zookeeper.clone()) => session?,
    };
    tokio::spawn({
        let (telemetry, status) = (telemetry.clone(), session.status());
        async move { telemetry.follow_session(status).await }
    });
    let plugin_dir = config.plugin_dir.clone();
    let known: KnownAggregators =
        Arc::new(move |name| plugin_dir.join(format!("{name}.wasm")).is_file());
    let (dynconfig, _config_tasks) = dynconfig::start(
        &session,
        Local {
            sampling_period: config.period,
            api_url: config.publish.api_url.clone(),
            aggregator: config.aggregator.clone(),
        },
        known,
    )
    .await?;
    telemetry.set_dynconfig(dynconfig.clone());
    barrier::ensure(&session.client()?).await?;
    let membership = tokio::select! {
        () = shutdown.cancelled() => { session.close().await; return Ok(()); }
        m = Membership::join(&session, &id, b"{}".to_vec()) => m?,
    };
    let (members, _members_task) = membership::watch_members(&session);
    tokio::spawn({
        let (telemetry, members) = (telemetry.clone(), members.clone());
        async move { telemetry.follow_members(members).await }
    });
    let election = Election::start(&session, &id);

    let ctx = Arc::new(Ctx {
        config,
        session: session.clone(),
        engine,
        sensor: Arc::new(Mutex::new(sensor)),
        unit,
        aggregator: Arc::new(Mutex::new(aggregator)),
        dynconfig,
        members,
        publisher,
        telemetry,
    });
    let stop = session.closing();
    let device = tokio::spawn(device_loop(ctx.clone(), membership, stop.clone()));
    let leader = tokio::spawn(leader_loop(
        ctx.clone(),
        election.leadership(),
        stop.clone(),
    ));

    shutdown.cancelled().await;
    tracing::info!(device = %id, "shutting down: closing the ZooKeeper session");
    session.close().await;
    let _ = tokio::join!(device, leader);
    drop(election);
    tracing::info!(device = %id, "stopped");
    Ok(())
}

async fn load_aggregator(
    engine: &PluginEngine,
    config: &AgentConfig,
    name: &str,
) -> Result<LoadedAggregator> {
    let (engine, path, settings, name) = (
        engine.clone(),
        plugin::resolve(name, &config.plugin_dir),
        config.aggregator_settings.clone(),
        name.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        AggregatorPlugin::load(&engine, &path, settings)
            .map(|plugin| LoadedAggregator { name, plugin })
    })
    .await?
    .map_err(Into::into)
}

/// Samples once per round and writes the reading to the device's node.
async fn device_loop(ctx: Arc<Ctx>, membership: Membership, stop: CancellationToken) {
    let id = &ctx.config.device_id;
    let mut last = None;
    loop {
        let round = tokio::select! {
            () = stop.cancelled() => return,
            r = barrier::wait_for_round(&ctx.session, last) => match r {
                Ok(round) => round,
                Err(CoordError::Closed) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the round; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        last = Some(round);
        ctx.telemetry.round_opened(round);
        let sensor = ctx.sensor.clone();
        let telemetry = ctx.telemetry.clone();
        let sampled = tokio::task::spawn_blocking(move || {
            let mut sensor = sensor.lock().unwrap_or_else(|e| e.into_inner());
            let before = sensor.stats().clone();
            let sampled = sensor.sample();
            let name = &sensor.metadata().name;
            telemetry.plugin_call(PluginKind::Sensor, name, &before, sensor.stats());
            sampled
        })
        .await;
        ctx.telemetry.sample(matches!(sampled, Ok(Ok(_))));
        let value = match sampled {
            Ok(Ok(value)) => value,
            Ok(Err(err)) => {
                tracing::warn!(device = %id, round, error = %err, "no reading this round");
                continue;
            }
            Err(err) => {
                tracing::error!(device = %id, round, error = %err, "sampling task failed");
                continue;
            }
        };
        let reading = DeviceReading {
            round,
            value,
            ts: publish::now_ms(),
        };
        let data = serde_json::to_vec(&reading).expect("a reading serializes");
        match membership.publish(data).await {
            Ok(()) => tracing::info!(device = %id, round, value, "reading sent to ZooKeeper"),
            Err(CoordError::Closed) => return,
            Err(err) => {
                tracing::warn!(device = %id, round, error = %err, "cannot write the reading")
            }
        }
    }
}

/// Leads rounds whenever this device holds the leadership.
async fn leader_loop(
    ctx: Arc<Ctx>,
    mut leadership: watch::Receiver<Leadership>,
    stop: CancellationToken,
) {
    loop {
        let node = loop {
            if let Leadership::Leader { node } = &*leadership.borrow_and_update() {
                break node.clone();
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = leadership.changed() => if changed.is_err() { return },
            }
        };
        tracing::info!(device = %ctx.config.device_id, "LEADER: this device now leads the fleet");
        ctx.telemetry.leadership(true);
        let term = stop.child_token();
        let nudge = Arc::new(Notify::new());
        let publisher = {
            let (ctx, nudge, term) = (ctx.clone(), nudge.clone(), term.clone());
            tokio::spawn(async move {
                let api_url = ctx.dynconfig.api_url.clone();
                ctx.publisher
                    .run(&ctx.session, api_url, &nudge, &term)
                    .await;
            })
        };
        tokio::select! {
            () = stop.cancelled() => {}
            reason = lead(&ctx, &node, &nudge) => {
                tracing::warn!(device = %ctx.config.device_id, %reason, "stopped leading rounds");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            () = async {
                loop {
                    if leadership.changed().await.is_err() || !leadership.borrow().is_leader() {
                        return;
                    }
                }
            } => {
                tracing::warn!(device = %ctx.config.device_id, "leadership lost or uncertain: no more leader writes until it is confirmed");
            }
        }
        term.cancel();
        let _ = publisher.await;
        ctx.telemetry.leadership(false);
    }
}

/// Leads rounds until a commit is fenced off or fails for good; returns why.
async fn lead(ctx: &Ctx, node: &str, nudge: &Notify) -> String {
    let mut period = *ctx.dynconfig.sampling_period.borrow();
    // The round open now may have started under the previous leader: give it a full period.
    let mut round_start = Instant::now();
    loop {
        let commit_at = round_start + period;
        let client = match ctx.session.client() {
            Ok(client) => client,
            Err(err) => return err.to_string(),
        };
        let state = match barrier::current(&client).await {
            Ok(state) => state,
            Err(err) => return format!("cannot read the round: {err}"),
        };
        let round = state.round;
        let collect_until = round_start + period.mul_f64(ctx.config.collect_fraction);
        let collect_started = Instant::now();
        let (readings, live, missed) = collect(ctx, round, collect_until).await;
        let collect_time = collect_started.elapsed();
        tokio::time::sleep_until(commit_at).await;

        swap_aggregator_if_changed(ctx).await;
        let (value, aggregator) = aggregate(ctx, &readings).await;
        let result = value.map(|value| RoundResult {
            round,
            value,
            count: readings.len() as u32,
            devices: readings.iter().map(|r| r.device.clone()).collect(),
            aggregator: aggregator.clone(),
            leader: ctx.config.device_id.clone(),
            ts: publish::now_ms(),
            unit: ctx.unit.clone(),
        });
        match commit(ctx, node, state, result.as_ref()).await {
            Ok(counter) => {
                ctx.telemetry.round_committed(
                    round_start.elapsed(),
                    collect_time,
                    readings.len(),
                    missed,
                    result.as_ref().map(|r| r.value),
                );
                tracing::info!(
                    leader = %ctx.config.device_id,
                    round,
                    members = live,
                    readings = readings.len(),
                    missed,
                    value = result.as_ref().map(|r| r.value),
                    aggregator = %aggregator,
                    counter,
                    "round committed; next round released"
                );
                if result.is_some() {
                    nudge.notify_one();
                }
            }
            Err(CommitError::Fenced) => return "our election node is gone (deposed)".into(),
            Err(CommitError::RoundMoved) => {
                tracing::warn!(round, "the round moved under us; re-reading");
            }
            Err(CommitError::Other(err)) => {
                tracing::warn!(round, error = %err, "commit failed; retrying the round");
                // Not a hot loop when the failure persists (a refused ACL, say).
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        // The next round starts one period after this one started (no drift); a new
        // period applies from now on. After a stall, start again from now.
        round_start = commit_at;
        period = *ctx.dynconfig.sampling_period.borrow();
        if round_start + period < Instant::now() {
            round_start = Instant::now();
        }
    }
}

/// Round `round`'s readings, waiting for every live device until `until`.
/// Returns the readings (by device id), the live members and the stragglers.
async fn collect(ctx: &Ctx, round: u64, until: Instant) -> (Vec<Reading>, usize, usize) {
    let mut readings = BTreeMap::new();
    let mut live = ctx.members.borrow().clone();
    loop {
        if let Ok(client) = ctx.session.client() {
            if let Ok(children) = client.list_children(DEVICES).await {
                live = children;
            }
            let missing: Vec<&String> =
                live.iter().filter(|d| !readings.contains_key(*d)).collect();
            if !missing.is_empty() {
                let mut reader = client.new_multi_reader();
                for device in &missing {
                    let _ = reader.add_get_data(&paths::device(device));
                }
                if let Ok(results) = reader.commit().await {
                    for (device, result) in missing.iter().zip(results) {
                        if let MultiReadResult::Data { data, .. } = result
                            && let Ok(reading) = serde_json::from_slice::<DeviceReading>(&data)
                            && reading.round == round
                        {
                            readings.insert((*device).clone(), reading.value);
                        }
                    }
                }
            }
        }
        let everyone = live.iter().all(|d| readings.contains_key(d));
        if (everyone && !live.is_empty()) || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(
            Duration::from_millis(25).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    let missed = live.iter().filter(|d| !readings.contains_key(*d)).count();
    let readings = readings
        .into_iter()
        .map(|(device, value)| Reading { device, value })
        .collect();
    (readings, live.len(), missed)
}

/// Loads the aggregator named in `{root}/config/aggregator` if it changed.
async fn swap_aggregator_if_changed(ctx: &Ctx) {
    let wanted = ctx.dynconfig.aggregator.borrow().clone();
    let current = ctx
        .aggregator
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .name
        .clone();
    if wanted == current {
        return;
    }
    match load_aggregator(&ctx.engine, &ctx.config, &wanted).await {
        Ok(loaded) => {
            tracing::info!(from = %current, to = %wanted, "aggregator swapped");
            ctx.telemetry
                .plugin_loaded(PluginKind::Aggregator, &loaded.plugin.metadata().name);
            *ctx.aggregator.lock().unwrap_or_else(|e| e.into_inner()) = loaded;
        }
        Err(err) => {
            tracing::error!(aggregator = %wanted, error = %format!("{err:#}"), "cannot load the new aggregator; keeping the current one")
        }
    }
}

/// The round's value (None: nothing to publish) and `NAME@VERSION` of the aggregator.
async fn aggregate(ctx: &Ctx, readings: &[Reading]) -> (Option<f64>, String) {
    let aggregator = ctx.aggregator.clone();
    let readings = readings.to_vec();
    let telemetry = ctx.telemetry.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut loaded = aggregator.lock().unwrap_or_else(|e| e.into_inner());
        let meta = loaded.plugin.metadata();
        let (name, label) = (meta.name.clone(), format!("{}@{}", meta.name, meta.version));
        if readings.is_empty() {
            return (Ok(None), label);
        }
        let before = loaded.plugin.stats().clone();
        let value = loaded.plugin.aggregate(&readings);
        telemetry.plugin_call(
            PluginKind::Aggregator,
            &name,
            &before,
            loaded.plugin.stats(),
        );
        (value, label)
    })
    .await;
    match outcome {
        Ok((Ok(value), label)) => (value, label),
        Ok((Err(err), label)) => {
            tracing::warn!(error = %err, "aggregation failed: this round publishes nothing");
            (None, label)
        }
        Err(err) => {
            tracing::error!(error = %err, "aggregation task failed");
            (None, String::new())
        }
    }
}

#[derive(Debug)]
enum CommitError {
    /// The check on our election node failed: we are not the leader.
    Fenced,
    /// `{root}/round` changed since we read it.
    RoundMoved,
    Other(String),
}

/// One multi: our election node exists (fence), the result (if any), the counter, and the
/// release of the next round. Returns the counter's value after the commit.
async fn commit(
    ctx: &Ctx,
    node: &str,
    state: barrier::RoundState,
    result: Option<&RoundResult>,
) -> Result<i64, CommitError> {
    let client = ctx
        .session
        .client()
        .map_err(|e| CommitError::Other(e.to_string()))?;
    loop {
        let count = counter::read(&client)
            .await
            .map_err(|e| CommitError::Other(e.to_string()))?;
        let mut multi = client.new_multi_writer();
        let built = (|| -> Result<(), CoordError> {
            multi
                .add_check_version(node, 0)
                .map_err(|e| CoordError::zk("check (in multi)", node, e))?;
            if let Some(result) = result {
                let data = serde_json::to_vec(result).expect("a result serializes");
                multi
                    .add_create(
                        &publish::result_path(result.round),
                        &data,
                        &crate::coord::persistent(),
                    )
                    .map_err(|e| CoordError::zk("create (in multi)", RESULTS, e))?;
                counter::add_increment(&mut multi, count, i64::from(result.count))?;
            }
            barrier::add_release(&mut multi, state)
        })();
        built.map_err(|e| CommitError::Other(e.to_string()))?;
        let added = result.map_or(0, |r| i64::from(r.count));
        return match multi.commit().await {
            Ok(_) => Ok(count.value + added),
            Err(MultiWriteError::OperationFailed { index: 0, .. }) => Err(CommitError::Fenced),
            Err(MultiWriteError::OperationFailed {
                source: ZkError::NoNode,
                index,
            }) if index > 0 && result.is_some() => {
                // {root}/results does not exist yet.
                client
                    .mkdir(RESULTS, &crate::coord::persistent())
                    .await
                    .map_err(|e| CommitError::Other(e.to_string()))?;
                continue;
            }
            Err(MultiWriteError::OperationFailed {
                source: ZkError::BadVersion,
                ..
            }) => {
                // The counter or the round moved: if the round did, someone else released it.
                match barrier::current(&client).await {
                    Ok(now) if now.round == state.round => continue,
                    _ => Err(CommitError::RoundMoved),
                }
            }
            Err(err) => Err(CommitError::Other(err.to_string())),
        };
    }
}
