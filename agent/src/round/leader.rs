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
    coord::{
        self, CoordError, barrier, counter,
        election::Leadership,
        paths::{RESULTS, ROUND},
        roster::Roster,
    },
    publish::outbox::{self, Ledger},
    telemetry::CommittedRound,
    wire::{InvalidRound, MAX_DEVICES, Round, Shown, VERSION, now_ms},
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
    /// The counter node is unreadable and the API cannot say where it stands.
    #[error("the counter is unreadable and cannot be restored yet: {0}")]
    CounterUnknown(String),
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
    // Set up on the first collection; its watch goes with the term.
    let mut roster = Roster::new(&ctx.session);
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
                        committer.forget();
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
            Err(CoordError::BadData { found, .. }) => {
                match barrier::current_unreadable(&client).await {
                    Ok(Some(state)) => {
                        tracing::error!(found = %found, "{{root}}/round holds something that is not a round number");
                        state
                    }
                    Ok(None) => continue,
                    Err(err) => return TermEnd::RoundUnreadable(err),
                }
            }
            Err(err) => return TermEnd::RoundUnreadable(err),
        };
        drop(client);
        match committer.guard_round(ctx, state).await {
            Ok(false) => {}
            Ok(true) => continue,
            Err(CommitError::Fenced) => return TermEnd::Deposed,
            Err(err) => {
                tracing::warn!(error = %err, "cannot check the round; retrying");
                tokio::time::sleep(PAUSE).await;
                continue;
            }
        }
        let round = state.round;
        let collect_started = Instant::now();
        let members = roster.members();
        let mut collected = collect::collect(
            &mut ZkReadings::new(&mut roster),
            members,
            round,
            schedule.collect_until(),
        )
        .await;
        ctx.telemetry.members(roster.len());
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
            version: VERSION,
            values: Some(collected.readings.iter().map(|r| r.value).collect()),
        });
        let commit_started = Instant::now();
        let commit = committer.commit(ctx, state, result.as_ref()).await;
        let commit_time = commit_started.elapsed();
        match commit {
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
                    value = value.map(|v| tracing::field::display(Shown(v))),
                    aggregator = %aggregated.aggregator,
                    counter = committed.counter,
                    collect_ms = %format_args!("{:.1}", collect_time.as_secs_f64() * 1000.0),
                    commit_ms = %format_args!("{:.1}", commit_time.as_secs_f64() * 1000.0),
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
            Err(err @ CommitError::CounterUnknown(_)) => {
                let wait = starting.next_delay();
                tracing::warn!(round, error = %err, retry_in = ?wait, "commit postponed");
                tokio::time::sleep(wait).await;
                continue;
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
    /// `{root}/round` as our last release (or our first read of the term) left it: any
    /// other value was written by someone else, and is refused.
    released: Option<barrier::RoundState>,
    /// The counter as our last commit left it, likewise.
    counter: Option<counter::CounterValue>,
}

/// A full outbox is recounted (in case entries went missing by hand) at most this often.
const RECOUNT_EVERY: Duration = Duration::from_secs(60);

impl<'a> Committer<'a> {
    fn new(node: &'a str, max: Ledger) -> Self {
        Self {
            node,
            max,
            recounted: None,
            released: None,
            counter: None,
        }
    }

    /// The fleet's state was (re)started: nothing is expected of the nodes any more.
    fn forget(&mut self) {
        self.released = None;
        self.counter = None;
    }

    /// Refuses a round the leader did not release: only the leader moves `{root}/round`, by
    /// one per commit, so a round other than the one it left (lower: backwards; higher: a
    /// jump) was written by someone else. The first round of a term must lie above every
    /// round in the outbox. A refused round is written back, fenced; `Ok(true)` then (read
    /// it again).
    async fn guard_round(
        &mut self,
        ctx: &Ctx,
        state: barrier::RoundState,
    ) -> Result<bool, CommitError> {
        let client = ctx.session.client()?;
        let expected = match self.released {
            Some(released) if released == state => return Ok(false),
            Some(released) => released.round,
            None => {
                let floor = outbox::highest_round(&client)
                    .await?
                    .map_or(1, |h| h.saturating_add(1));
                if state.round >= floor {
                    self.released = Some(state);
                    return Ok(false);
                }
                // Where the fleet's rounds continue, as at a start; the outbox alone when
                // the API cannot say.
                match resume::resume_point(ctx).await {
                    Ok(point) => point.round.max(floor),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot ask the API where rounds continue: using the outbox's highest round");
                        floor
                    }
                }
            }
        };
        ctx.telemetry.zk_refused("round");
        tracing::error!(
            found = state.round,
            expected,
            "{{root}}/round was changed by someone other than the leader (moved {}): refused; writing back round {expected}",
            if state.round < expected {
                "backwards"
            } else {
                "ahead"
            }
        );
        let mut multi = client.new_multi_writer();
        multi
            .add_check_version(self.node, 0)
            .map_err(|e| CoordError::zk("check (in multi)", self.node, e))?;
        barrier::add_restore(&mut multi, state, expected)?;
        match multi.commit().await {
            Ok(_) => {
                self.released = Some(barrier::RoundState {
                    round: expected,
                    version: state.version.wrapping_add(1),
                    created: state.created,
                });
                Ok(true)
            }
            Err(MultiWriteError::OperationFailed { index: 0, .. }) => Err(CommitError::Fenced),
            Err(MultiWriteError::OperationFailed {
                source: ZkError::BadVersion,
                ..
            }) => Ok(true),
            Err(err) => Err(CoordError::zk("restore (multi)", ROUND, ZkError::from(err)).into()),
        }
    }

    /// The counter to build on: the node's value when it is what our last commit left (or
    /// the first read of the term gives a readable value); otherwise the value is refused,
    /// and the one to write back is returned: ours, or (first read of a term, unreadable)
    /// where the fleet's stored rounds say it stands.
    async fn guard_counter(
        &mut self,
        ctx: &Ctx,
        client: &coord::FleetClient,
    ) -> Result<(counter::CounterValue, bool), CommitError> {
        let (value, version) = counter::read_lenient(client).await?;
        let expected = match (value, self.counter) {
            (Some(value), None) => return Ok((counter::CounterValue { value, version }, false)),
            (Some(value), Some(ours)) if ours.value == value && ours.version == version => {
                return Ok((ours, false));
            }
            (_, Some(ours)) => ours.value,
            (None, None) => match resume::resume_point(ctx).await {
                Ok(point) => point.counter.unwrap_or(0),
                Err(err) => return Err(CommitError::CounterUnknown(err.to_string())),
            },
        };
        ctx.telemetry.zk_refused("counter");
        tracing::error!(
            found = ?value,
            expected,
            "{{root}}/counter was changed by someone other than the leader (or is not a number): refused; writing back {expected}"
        );
        Ok((
            counter::CounterValue {
                value: expected,
                version,
            },
            true,
        ))
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
            let (count, restore) = self.guard_counter(ctx, &client).await?;
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
                result.counter = Some(counter::checked_add(count.value, delta)?);
                match result.validate() {
                    Err(invalid) => committed.dropped = Some(invalid.into()),
                    Ok(()) => {
                        let encoded = outbox::encode(&result, self.node, client.mark_key());
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
                                client.acl(),
                                result.round,
                                &encoded,
                                ledger,
                            )?);
                            counter::add_increment(&mut multi, count, delta)?;
                            committed.counter = counter::checked_add(committed.counter, delta)?;
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
            if restore && !committed.stored {
                counter::add_increment(&mut multi, count, 0)?;
            }
            barrier::add_release(&mut multi, client.acl(), state)?;
            return match multi.commit().await {
                Ok(_) => {
                    self.released = Some(barrier::RoundState {
                        round: state.round.saturating_add(1),
                        version: state.version.wrapping_add(1),
                        created: state.created,
                    });
                    let written = committed.stored || restore;
                    self.counter = Some(counter::CounterValue {
                        value: committed.counter,
                        version: if written {
                            count.version.wrapping_add(1)
                        } else {
                            count.version
                        },
                    });
                    Ok(committed)
                }
                Err(MultiWriteError::OperationFailed { index: 0, .. }) => Err(CommitError::Fenced),
                Err(MultiWriteError::OperationFailed {
                    source: ZkError::NoNode,
                    index: 1,
                }) if committed.stored => {
                    // {root}/results does not exist yet.
                    client
                        .mkdir(RESULTS, &client.persistent())
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
