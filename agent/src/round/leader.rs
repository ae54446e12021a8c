//! What the leader does each round: collect the round's readings until every live device
//! reported or the collection deadline passed, aggregate them, and at the round's scheduled
//! end commit in one multi fenced by its election node: the result into the outbox
//! (`{root}/results/{n}`, only when there is a value), the counter (+ readings) and the
//! release of round `n + 1`. A publisher task sends the outbox while this device leads.
//!
//! A round with no readings (or no value) commits nothing but the release: nothing is
//! published, the round still advances, and the counter only ever grows by the `count` of a
//! stored result, so it equals the sum of `count` over published rounds.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use zookeeper_client::{Error as ZkError, MultiWriteError};

use super::{
    Ctx,
    collect::{self, ZkReadings},
    schedule::Schedule,
};
use crate::{
    coord::{self, CoordError, barrier, counter, election::Leadership, paths::RESULTS},
    publish,
    telemetry::CommittedRound,
    wire::{RoundResult, now_ms},
};

/// Pause after a failed commit or a lost term, so that a persistent failure is no hot loop.
const PAUSE: Duration = Duration::from_millis(200);

/// Why a term of leading rounds ended.
#[derive(Debug, thiserror::Error)]
pub enum TermEnd {
    #[error("our election node is gone (deposed)")]
    Deposed,
    #[error("cannot read the round: {0}")]
    RoundUnreadable(#[source] CoordError),
    #[error(transparent)]
    Session(CoordError),
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
enum CommitError {
    /// The check on our election node failed: we are not the leader.
    #[error("fenced off: our election node is gone")]
    Fenced,
    /// `{root}/round` changed since we read it.
    #[error("the round moved under us")]
    RoundMoved,
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Leads rounds whenever this device holds the leadership, until `stop`.
pub(super) async fn run(
    ctx: Arc<Ctx>,
    mut leadership: watch::Receiver<Leadership>,
    stop: CancellationToken,
) {
    // The leadership may still say "leader" after `stop` (the session outlives the loops):
    // checking `stop` first ends the loop instead of starting a new term.
    while !stop.is_cancelled() {
        let node = loop {
            if let Leadership::Leader { node } = &*leadership.borrow_and_update() {
                break node.clone();
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = leadership.changed() => if changed.is_err() { return },
            }
        };
        tracing::info!(device = %ctx.id, "LEADER: this device now leads the fleet");
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
            end = lead(&ctx, &node, &nudge) => {
                tracing::warn!(device = %ctx.id, reason = %end, "stopped leading rounds");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(PAUSE) => {}
                }
            }
            () = async {
                loop {
                    if leadership.changed().await.is_err() || !leadership.borrow().is_leader() {
                        return;
                    }
                }
            } => {
                tracing::warn!(device = %ctx.id, "leadership lost or uncertain: no more leader writes until it is confirmed");
            }
        }
        term.cancel();
        let _ = publisher.await;
        ctx.telemetry.leadership(false);
    }
}

/// Leads rounds until a commit is fenced off or the round cannot be read.
async fn lead(ctx: &Ctx, node: &str, nudge: &Notify) -> TermEnd {
    let mut schedule = Schedule::new(
        Instant::now(),
        *ctx.dynconfig.sampling_period.borrow(),
        ctx.collect_fraction,
    );
    loop {
        let client = match ctx.session.client() {
            Ok(client) => client,
            Err(err) => return TermEnd::Session(err),
        };
        let state = match barrier::current(&client).await {
            Ok(state) => state,
            Err(err) => return TermEnd::RoundUnreadable(err),
        };
        let round = state.round;
        let collect_started = Instant::now();
        let members = ctx.members.borrow().clone();
        let collected = collect::collect(
            &mut ZkReadings {
                session: &ctx.session,
            },
            members,
            round,
            schedule.collect_until(),
        )
        .await;
        let collect_time = collect_started.elapsed();
        tokio::time::sleep_until(schedule.commit_at()).await;

        let wanted = ctx.dynconfig.aggregator.borrow().clone();
        ctx.plugins
            .swap_aggregator_if_changed(&wanted, &ctx.telemetry)
            .await;
        let aggregated = ctx
            .plugins
            .aggregate(&collected.readings, &ctx.telemetry)
            .await;
        let result = aggregated.value.map(|value| RoundResult {
            round,
            value,
            count: u32::try_from(collected.readings.len()).unwrap_or(u32::MAX),
            devices: collected
                .readings
                .iter()
                .map(|r| r.device.clone())
                .collect(),
            aggregator: aggregated.aggregator.clone(),
            leader: ctx.id.clone(),
            ts: now_ms(),
            unit: ctx.plugins.unit().map(str::to_owned),
        });
        match commit(ctx, node, state, result.as_ref()).await {
            Ok(counter) => {
                ctx.telemetry.round_committed(&CommittedRound {
                    duration: schedule.start().elapsed(),
                    collect: collect_time,
                    used: collected.readings.len(),
                    missed: collected.missed,
                    value: result.as_ref().map(|r| r.value),
                });
                tracing::info!(
                    leader = %ctx.id,
                    round,
                    members = collected.live,
                    readings = collected.readings.len(),
                    missed = collected.missed,
                    value = result.as_ref().map(|r| r.value),
                    aggregator = %aggregated.aggregator,
                    counter,
                    "round committed; next round released"
                );
                if result.is_some() {
                    nudge.notify_one();
                }
            }
            Err(CommitError::Fenced) => return TermEnd::Deposed,
            Err(CommitError::RoundMoved) => {
                tracing::warn!(round, "the round moved under us; re-reading");
            }
            Err(CommitError::Coord(err)) => {
                tracing::warn!(round, error = %err, "commit failed; retrying the round");
                // Not a hot loop when the failure persists (a refused ACL, say).
                tokio::time::sleep(PAUSE).await;
                continue;
            }
        }
        schedule.advance(*ctx.dynconfig.sampling_period.borrow(), Instant::now());
    }
}

/// One multi: our election node exists (fence), the result (if any), the counter, and the
/// release of the next round. Returns the counter's value after the commit.
async fn commit(
    ctx: &Ctx,
    node: &str,
    state: barrier::RoundState,
    result: Option<&RoundResult>,
) -> Result<i64, CommitError> {
    let client = ctx.session.client()?;
    loop {
        let count = counter::read(&client).await?;
        let mut multi = client.new_multi_writer();
        multi
            .add_check_version(node, 0)
            .map_err(|e| CoordError::zk("check (in multi)", node, e))?;
        if let Some(result) = result {
            let data = serde_json::to_vec(result).expect("a result serializes");
            multi
                .add_create(
                    &publish::result_path(result.round),
                    &data,
                    &coord::persistent(),
                )
                .map_err(|e| CoordError::zk("create (in multi)", RESULTS, e))?;
            counter::add_increment(&mut multi, count, i64::from(result.count))?;
        }
        barrier::add_release(&mut multi, state)?;
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
                    .mkdir(RESULTS, &coord::persistent())
                    .await
                    .map_err(|e| CoordError::zk("create", RESULTS, e))?;
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
            Err(err) => Err(CoordError::zk("commit (multi)", RESULTS, ZkError::from(err)).into()),
        };
    }
}
