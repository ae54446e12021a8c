//! Every agent's side of a rollout: it watches `{root}/rollout` and
//! `{root}/plugins/{sensor,aggregator}`, fetches each artifact they name, checks its digest,
//! its signature against the agent's trusted keys and every load-time check, and loads it on
//! standby (through the compile cache), so that the round loop switches at the announced
//! round without waiting. What it cannot fetch or load it reports (logged once, counted,
//! and in the device node's `rollout_error`) and the device keeps its current plugin.
//!
//! A record that does not parse is refused and the last good one stays in force.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;
use zookeeper_client::Error as ZkError;

use super::{
    artifacts,
    record::{Assignment, Kind, Rollout, State},
    store,
};
use crate::{
    config::RolloutSettings,
    coord::{
        Session,
        paths::{PLUGINS, ROLLOUT},
    },
    plugin::PluginKind,
    round::plugins::{Plugins, Slot},
    telemetry::Telemetry,
};

/// A failed artifact is tried again after this long (or when the record changes).
const RETRY: Duration = Duration::from_secs(30);
/// Fetches start within this long of seeing the record (spread, not all at once).
const FETCH_SPREAD: Duration = Duration::from_secs(2);

/// What the fleet's rollout state says, as this agent last read it.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub rollout: Option<Rollout>,
    /// The record's version, for the leader's compare-and-set.
    pub rollout_version: Option<i32>,
    pub sensor: Option<Assignment>,
    pub aggregator: Option<Assignment>,
    pub sensor_version: Option<i32>,
    pub aggregator_version: Option<i32>,
    /// Why this agent cannot run an artifact, by digest.
    pub errors: BTreeMap<String, String>,
}

impl View {
    pub fn assignment(&self, kind: Kind) -> Option<&Assignment> {
        match kind {
            Kind::Sensor => self.sensor.as_ref(),
            Kind::Aggregator => self.aggregator.as_ref(),
        }
    }

    pub fn assignment_version(&self, kind: Kind) -> Option<i32> {
        match kind {
            Kind::Sensor => self.sensor_version,
            Kind::Aggregator => self.aggregator_version,
        }
    }
}

/// The slot a [`super::record::Want`] names (`local`: the agent's own plugin of that kind).
pub fn slot_of(want: &super::record::Want<'_>, local: Slot) -> Slot {
    match want {
        super::record::Want::Local => local,
        super::record::Want::Artifact { artifact, config } => Slot::Artifact {
            sha256: artifact.sha256.clone(),
            config: config.to_vec(),
        },
    }
}

/// What an agent needs at hand for a view: `(kind, slot, label)`.
fn needed(view: &View) -> Vec<(Kind, Slot, String)> {
    let mut need = Vec::new();
    let mut add = |kind: Kind, a: &super::record::ArtifactRef, config: &[(String, String)]| {
        need.push((
            kind,
            Slot::Artifact {
                sha256: a.sha256.clone(),
                config: config.to_vec(),
            },
            format!("artifact {}", a.short()),
        ));
    };
    if let Some(r) = &view.rollout {
        // Every device loads the artifact while the rollout runs: a canary to run it, the
        // others to switch at promotion without waiting, any of them to lead (an aggregator
        // runs in shadow on the leader).
        if matches!(r.state, State::Canary | State::Waiting | State::Promoted) {
            add(r.kind, &r.artifact, &r.config);
        }
        if let Some(p) = &r.previous {
            add(r.kind, &p.artifact, &p.config);
        }
    }
    for (kind, a) in [
        (Kind::Sensor, &view.sensor),
        (Kind::Aggregator, &view.aggregator),
    ] {
        if let Some(a) = a {
            add(kind, &a.artifact, &a.config);
        }
    }
    need
}

/// Follows the fleet's rollout state until the session closes, publishing each view on
/// `tx` once what it names is loaded (or refused).
pub async fn follow(
    session: Session,
    plugins: Arc<Plugins>,
    settings: RolloutSettings,
    telemetry: Arc<Telemetry>,
    tx: watch::Sender<Arc<View>>,
) {
    let mut status = session.status();
    let closing = session.closing();
    let mut view = View::default();
    // Refusals already logged (digest → message) and when each failed.
    let mut failed: BTreeMap<String, (String, Instant)> = BTreeMap::new();
    let mut bad_records: BTreeMap<String, String> = BTreeMap::new();
    loop {
        if session.connected().await.is_err() {
            return;
        }
        let Ok(client) = session.client() else { return };
        let mut watchers = Vec::new();
        for path in [
            ROLLOUT.to_owned(),
            store::assignment_path(Kind::Sensor),
            store::assignment_path(Kind::Aggregator),
        ] {
            let read = match client.get_and_watch_data(&path).await {
                Ok((data, stat, watcher)) => {
                    watchers.push(watcher);
                    Some((data, stat.version))
                }
                Err(ZkError::NoNode) => match client.check_and_watch_stat(&path).await {
                    Ok((None, watcher)) => {
                        watchers.push(watcher);
                        None
                    }
                    // Created between the two reads, or an error: read everything again.
                    Ok((Some(_), _)) | Err(_) => {
                        watchers.clear();
                        break;
                    }
                },
                Err(_) => {
                    watchers.clear();
                    break;
                }
            };
            apply(&mut view, &path, read, &mut bad_records, &telemetry);
        }
        if watchers.len() == 3 {
            prepare(
                &client,
                &plugins,
                &settings,
                &telemetry,
                &mut view,
                &mut failed,
            )
            .await;
            tx.send_replace(Arc::new(view.clone()));
        }
        let changed = async {
            if watchers.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
            let fired = watchers.into_iter().map(|w| Box::pin(w.changed()));
            futures_util::future::select_all(fired).await;
        };
        let retry = async {
            if failed.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(RETRY).await;
        };
        tokio::select! {
            () = closing.cancelled() => return,
            () = changed => {}
            () = retry => {}
            _ = status.changed() => {}
        }
    }
}

/// Puts what a node holds into the view; a record that does not parse is refused (logged
/// once, counted) and the last good one stays.
fn apply(
    view: &mut View,
    path: &str,
    read: Option<(Vec<u8>, i32)>,
    bad: &mut BTreeMap<String, String>,
    telemetry: &Telemetry,
) {
    let refuse = |bad: &mut BTreeMap<String, String>, problem: String| {
        if bad.get(path) != Some(&problem) {
            tracing::error!(node = %path, problem = %problem, "refusing the fleet's rollout state: it does not parse; keeping the last good one");
            telemetry.artifact_refused("bad_record");
            bad.insert(path.to_owned(), problem);
        }
    };
    if path == ROLLOUT {
        match read {
            None => {
                view.rollout = None;
                view.rollout_version = None;
            }
            Some((data, version)) => match Rollout::parse(&data) {
                Ok(r) => {
                    bad.remove(path);
                    view.rollout = Some(r);
                    view.rollout_version = Some(version);
                }
                Err(problem) => {
                    // Writers compare-and-set on the version they read: keep it current.
                    view.rollout_version = Some(version);
                    refuse(bad, problem);
                }
            },
        }
        return;
    }
    let kind = if path.ends_with("/sensor") {
        Kind::Sensor
    } else {
        Kind::Aggregator
    };
    debug_assert!(path.starts_with(PLUGINS));
    let (slot, version) = match kind {
        Kind::Sensor => (&mut view.sensor, &mut view.sensor_version),
        Kind::Aggregator => (&mut view.aggregator, &mut view.aggregator_version),
    };
    match read {
        None => {
            *slot = None;
            *version = None;
        }
        Some((data, v)) => {
            *version = Some(v);
            match store::parse_assignment(&data) {
                Ok(a) => {
                    bad.remove(path);
                    *slot = Some(a);
                }
                Err(problem) => refuse(bad, problem),
            }
        }
    }
}

/// Fetches, checks and loads what the view needs and is not at hand; records why not.
async fn prepare(
    client: &crate::coord::FleetClient,
    plugins: &Plugins,
    settings: &RolloutSettings,
    telemetry: &Telemetry,
    view: &mut View,
    failed: &mut BTreeMap<String, (String, Instant)>,
) {
    let need = needed(view);
    view.errors.clear();
    for (kind, slot, label) in &need {
        let Slot::Artifact { sha256, .. } = slot else {
            continue;
        };
        if plugins.has(kind.plugin(), slot).await {
            continue;
        }
        if let Some((message, at)) = failed.get(sha256)
            && at.elapsed() < RETRY
        {
            view.errors.insert(sha256.clone(), message.clone());
            continue;
        }
        // Every device of the fleet sees the record at once: a random pause spreads their
        // fetches from ZooKeeper (the rollout's lead leaves time for it).
        tokio::time::sleep(FETCH_SPREAD.mul_f64(rand::random_range(0.0..1.0))).await;
        let started = Instant::now();
        match load(client, plugins, settings, *kind, slot, label).await {
            Ok(()) => {
                failed.remove(sha256);
                tracing::info!(artifact = %label, kind = kind.name(), elapsed_ms = started.elapsed().as_millis() as u64, "fleet plugin artifact fetched, verified and loaded; ready to switch");
            }
            Err((reason, message)) => {
                let repeated = failed.get(sha256).is_some_and(|(m, _)| *m == message);
                if !repeated {
                    tracing::error!(artifact = %label, kind = kind.name(), reason, problem = %message, "REFUSED a fleet plugin artifact: this device keeps its current plugin");
                    telemetry.artifact_refused(reason);
                }
                view.errors.insert(sha256.clone(), message.clone());
                failed.insert(sha256.clone(), (message, Instant::now()));
            }
        }
    }
    let keep: Vec<Slot> = need.into_iter().map(|(_, slot, _)| slot).collect();
    plugins.retain_standby(&keep).await;
}

/// One artifact: fetch (bounded), digest, signature, kind, load.
async fn load(
    client: &crate::coord::FleetClient,
    plugins: &Plugins,
    settings: &RolloutSettings,
    kind: Kind,
    slot: &Slot,
    label: &str,
) -> Result<(), (&'static str, String)> {
    let Slot::Artifact { sha256, .. } = slot else {
        return Ok(());
    };
    let (manifest, bytes) = artifacts::fetch(client, sha256, settings.max_artifact_bytes)
        .await
        .map_err(|e| (e.reason(), e.to_string()))?;
    settings
        .trust
        .check(&bytes, manifest.signature.as_deref())
        .map_err(|e| ("signature", e.to_string()))?;
    if manifest.kind != kind.name() {
        return Err((
            "bad_manifest",
            format!("a {} artifact named as a {}", manifest.kind, kind.name()),
        ));
    }
    let kind: PluginKind = kind.plugin();
    plugins
        .prepare_artifact(kind, slot.clone(), label.to_owned(), Arc::new(bytes))
        .await
        .map_err(|e| ("load", format!("{:#}", anyhow::Error::from(e))))
}
