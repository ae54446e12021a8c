//! What the leader does each round: collect the round's readings until every live device
//! reported or the collection deadline passed, aggregate them, and at the round's scheduled
//! end commit in one multi fenced by its election node: the result into the outbox
//! (`{root}/results/{n}` and its ledger, only when there is a value), the counter
//! (+ readings) and the release of round `n + 1`. A publisher task sends the outbox while
//! this device leads. When `{root}/round` is absent the leader first starts the fleet's
//! state ([`super::resume`]).
//!
//! A round with no readings (or no value) commits nothing but the release: nothing is
//! published, the round still advances, and the counter only ever grows by the `count` of a
//! stored result, so it equals the sum of `count` over stored rounds. A result is checked
//! against the wire contract before it is committed (one the API would refuse is never
//! stored) and is stored only while the outbox is under its bound; otherwise the round
//! still advances and the result is counted as dropped, with the reason
//! (`fleetmeter_results_dropped_total`, `/healthz`).

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
    resume,
    schedule::Schedule,
};
use crate::{
    backoff::Backoff,
    coord::{self, CoordError, barrier, counter, election::Leadership, paths::RESULTS},
    publish::outbox::{self, Ledger},
    telemetry::CommittedRound,
    wire::{InvalidRound, MAX_DEVICES, Round, now_ms},
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
    let period = || *ctx.dynconfig.sampling_period.borrow();
    let mut schedule = Schedule::new(Instant::now(), period(), ctx.collect_fraction);
    let settings = ctx.publisher.settings();
    let mut starting = Backoff::new(settings.retry_initial, settings.retry_max);
    let mut committer = Committer::new(node, settings.outbox_max);
    loop {
        let client = match ctx.session.client() {
            Ok(client) => client,
            Err(err) => return TermEnd::Session(err),
        };
        let state = match barrier::current(&client).await {
            Ok(Some(state)) => state,
            Ok(None) => {
                drop(client);
                match start_state(ctx, node).await {
                    Ok(()) => {
                        starting.reset();
                        // The first round gets a whole period, however long the start took.
                        schedule = Schedule::new(Instant::now(), period(), ctx.collect_fraction);
                    }
                    Err(resume::StartError::Fenced) => return TermEnd::Deposed,
                    Err(err) => {
                        let wait = starting.next_delay();
                        tracing::warn!(error = %err, retry_in = ?wait, "the fleet has no state in ZooKeeper (a new fleet, or ZooKeeper lost its data): cannot start it yet");
                        tokio::time::sleep(wait).await;
                    }
                }
                continue;
            }
            Err(err) => return TermEnd::RoundUnreadable(err),
        };
        let round = state.round;
        let collect_started = Instant::now();
        let members = ctx.members.borrow().clone();
        let mut collected = collect::collect(
            &mut ZkReadings {
                session: &ctx.session,
            },
            members,
            round,
            schedule.collect_until(),
        )
        .await;
        let collect_time = collect_started.elapsed();
        if collected.readings.len() > MAX_DEVICES {
            tracing::error!(
                round,
                readings = collected.readings.len(),
                supported = MAX_DEVICES,
                "more readings than the largest supported fleet: the round aggregates the first {MAX_DEVICES} devices by id, the rest are left out"
            );
            collected.readings.truncate(MAX_DEVICES);
        }
        tokio::time::sleep_until(schedule.commit_at()).await;

        let wanted = ctx.dynconfig.aggregator.borrow().clone();
        ctx.plugins
            .swap_aggregator_if_changed(&wanted, &ctx.telemetry)
            .await;
        let aggregated = ctx
            .plugins
            .aggregate(&collected.readings, &ctx.telemetry)
            .await;
        let result = aggregated.value.map(|value| Round {
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
            counter: None,
        });
        match committer.commit(ctx, state, result.as_ref()).await {
            Ok(committed) => {
                if let Some(ledger) = committed.ledger {
                    ctx.telemetry.outbox(ledger, committer.max);
                }
                let value = committed
                    .stored
                    .then(|| result.as_ref().map(|r| r.value))
                    .flatten();
                ctx.telemetry.round_committed(&CommittedRound {
                    duration: schedule.start().elapsed(),
                    collect: collect_time,
                    used: collected.readings.len(),
                    missed: collected.missed,
                    value,
                });
                if let Some(dropped) = &committed.dropped {
                    ctx.telemetry.result_dropped(dropped.reason());
                    tracing::error!(round, reason = %dropped, "the round's result was NOT stored; the next round is released");
                }
                tracing::info!(
                    leader = %ctx.id,
                    round,
                    members = collected.live,
                    readings = collected.readings.len(),
                    missed = collected.missed,
                    value,
                    aggregator = %aggregated.aggregator,
                    counter = committed.counter,
                    "round committed; next round released"
                );
                if committed.stored {
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
        schedule.advance(period(), Instant::now());
    }
}

/// Asks where the fleet continues, then starts its state.
async fn start_state(ctx: &Ctx, node: &str) -> Result<(), resume::StartError> {
    let point = resume::resume_point(ctx).await?;
    resume::start(ctx, node, point).await
}

/// Why a round's result was not stored.
#[derive(Debug, thiserror::Error)]
pub enum Dropped {
    #[error("the API would refuse it: {0}")]
    Invalid(#[from] InvalidRound),
    #[error("the outbox is full ({} rounds, {} bytes; at most {} rounds, {} bytes): publish or discard what waits (`fleetmeter outbox list`)", .now.rounds, .now.bytes, .max.rounds, .max.bytes)]
    OutboxFull { now: Ledger, max: Ledger },
}

impl Dropped {
    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Dropped::Invalid(_) => "invalid",
            Dropped::OutboxFull { .. } => "outbox_full",
        }
    }
}

/// What a commit did.
#[derive(Debug)]
struct Committed {
    /// The counter after the commit.
    counter: i64,
    /// Whether the result went into the outbox.
    stored: bool,
    /// The outbox's ledger after the commit, when it was read.
    ledger: Option<Ledger>,
    dropped: Option<Dropped>,
}

/// Commits rounds for one term.
struct Committer<'a> {
    node: &'a str,
    max: Ledger,
    /// When the ledger was last recounted because it said "full".
    recounted: Option<Instant>,
}

/// A full outbox is recounted (in case entries went missing by hand) at most this often.
const RECOUNT_EVERY: Duration = Duration::from_secs(60);

impl<'a> Committer<'a> {
    fn new(node: &'a str, max: Ledger) -> Self {
        Self {
            node,
            max,
            recounted: None,
        }
    }

    /// One multi: our election node exists (fence), the result (if any and if it fits) and
    /// the outbox ledger, the counter, and the release of the next round.
    async fn commit(
        &mut self,
        ctx: &Ctx,
        state: barrier::RoundState,
        result: Option<&Round>,
    ) -> Result<Committed, CommitError> {
        let client = ctx.session.client()?;
        let mut parts_written: Option<Vec<u8>> = None;
        loop {
            let count = counter::read(&client).await?;
            let mut multi = client.new_multi_writer();
            multi
                .add_check_version(self.node, 0)
                .map_err(|e| CoordError::zk("check (in multi)", self.node, e))?;
            let mut committed = Committed {
                counter: count.value,
                stored: false,
                ledger: None,
                dropped: None,
            };
            if let Some(result) = result {
                let mut result = result.clone();
                let delta = i64::from(result.count);
                result.counter = Some(count.value.saturating_add(delta));
                match result.validate() {
                    Err(invalid) => committed.dropped = Some(invalid.into()),
                    Ok(()) => {
                        let encoded = outbox::encode(&result, self.node);
                        let mut ledger = outbox::ledger(&client).await?;
                        if !ledger.ledger.fits(encoded.bytes, &self.max)
                            && self.recounted.is_none_or(|at| at.elapsed() > RECOUNT_EVERY)
                        {
                            self.recounted = Some(Instant::now());
                            ledger = outbox::recount(&client).await?;
                        }
                        if ledger.ledger.fits(encoded.bytes, &self.max) {
                            if !encoded.parts.is_empty()
                                && parts_written.as_deref() != Some(&encoded.entry)
                            {
                                outbox::write_parts(&client, &encoded).await?;
                                parts_written = Some(encoded.entry.clone());
                            }
                            committed.ledger = Some(outbox::add_entry(
                                &mut multi,
                                result.round,
                                &encoded,
                                ledger,
                            )?);
                            counter::add_increment(&mut multi, count, delta)?;
                            committed.counter = committed.counter.saturating_add(delta);
                            committed.stored = true;
                        } else {
                            committed.ledger = Some(ledger.ledger);
                            committed.dropped = Some(Dropped::OutboxFull {
                                now: ledger.ledger,
                                max: self.max,
                            });
                        }
                    }
                }
            }
            barrier::add_release(&mut multi, state)?;
            return match multi.commit().await {
                Ok(_) => Ok(committed),
                Err(MultiWriteError::OperationFailed { index: 0, .. }) => Err(CommitError::Fenced),
                Err(MultiWriteError::OperationFailed {
                    source: ZkError::NoNode,
                    index: 1,
                }) if committed.stored => {
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
                    // The counter, the ledger or the round moved: if the round did, someone
                    // else released it.
                    match barrier::current(&client).await {
                        Ok(Some(now)) if now == state => continue,
                        _ => Err(CommitError::RoundMoved),
                    }
                }
                Err(err) => {
                    Err(CoordError::zk("commit (multi)", RESULTS, ZkError::from(err)).into())
                }
            };
        }
    }
}
