//! What the leader does each round: collect the round's readings until every live device
//! reported or the collection deadline passed, aggregate them, and at the round's scheduled
//! end commit in one multi fenced by its election node: the result into the outbox
//! (`{root}/results/{n}` and its ledger, only when there is a value), the counter
//! (+ readings) and the release of round `n + 1`. A publisher task sends the outbox while
//! this device leads. When `{root}/round` is absent the leader first starts the fleet's
//! state ([`super::resume`]).
//!
//! The term's first round was released by someone else (the previous leader): it is
//! finished on that leader's schedule, late, or given up ([`super::handover`]). Each result is
//! written in the newest wire contract version every member reads ([`super::versions`]).
//!
//! A round with no readings (or no value) commits nothing but the release: nothing is
//! published, the round still advances, and the counter only ever grows by the `count` of a
//! stored result, so it equals the sum of `count` over stored rounds. A result is checked
//! against the wire contract before it is committed (one the API would refuse is never
//! stored) and is stored only while the outbox is under its bound; otherwise the round
//! still advances and the result is counted as dropped, with the reason
//! (`fleetmeter_results_dropped_total`, `/healthz`).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

pub use super::plan::Dropped;
use super::{
    Ctx,
    collect::{self, Collected, ZkReadings},
    commit::{CommitError, Committed, Committer},
    handover::{self, GivenUp, Handover},
    plugins::Aggregated,
    quantities, resume,
    schedule::Schedule,
    versions,
};
use crate::{
    backoff::Backoff,
    coord::{CoordError, barrier, election::Leadership, roster::Roster},
    round::canary,
    telemetry::CommittedRound,
    wire::{Advert, MAX_DEVICES, Round, Shadow, Shown, VERSION, now_ms},
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
            if !matches!(
                stop.run_until_cancelled(leadership.changed()).await,
                Some(Ok(()))
            ) {
                return;
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
            end = Term::new(&ctx, &node, &nudge).lead() => {
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

/// What a step of the term says to do next.
enum Next<T> {
    Go(T),
    /// Start the round over (read `{root}/round` again).
    Again,
    End(TermEnd),
}

/// A round's readings and result, between collection and commit.
struct Gathered {
    collected: Collected,
    collect_time: Duration,
    aggregated: Aggregated,
    result: Option<Round>,
}

/// One term of leading rounds: the steps of each round, in order ([`Term::lead`]).
struct Term<'a> {
    ctx: &'a Ctx,
    node: &'a str,
    nudge: &'a Notify,
    schedule: Schedule,
    /// Back-off of the fleet's start and of postponed commits.
    starting: Backoff,
    committer: Committer<'a>,
    /// Set up on the first collection; its watch goes with the term.
    roster: Roster,
    /// The term's first round was released by someone else (a predecessor, or this device
    /// in an earlier term): it is finished on its own schedule ([`handover`]).
    taking_over: bool,
    /// How the round being led was taken over (`on_time`, `late`), for its report.
    taken_over: Option<&'static str>,
    /// What each member advertises, as last read ([`versions`]).
    adverts: BTreeMap<String, Advert>,
    /// The contract version results were last written in.
    version: Option<u32>,
    /// The shadow aggregator's result of the round being led.
    shadow: Option<Shadow>,
}

impl<'a> Term<'a> {
    fn new(ctx: &'a Ctx, node: &'a str, nudge: &'a Notify) -> Self {
        let settings = ctx.publisher.settings();
        Self {
            ctx,
            node,
            nudge,
            schedule: Schedule::new(Instant::now(), ctx.period(), ctx.collect_fraction),
            starting: Backoff::new(settings.retry_initial, settings.retry_max),
            committer: Committer::new(node, settings.outbox_max),
            roster: Roster::new(&ctx.session),
            taking_over: true,
            taken_over: None,
            adverts: BTreeMap::new(),
            version: None,
            shadow: None,
        }
    }

    /// Leads rounds until a commit is fenced off or the round cannot be read.
    async fn lead(mut self) -> TermEnd {
        loop {
            let (state, released_ms) = match self.round_state().await {
                Next::Go(state) => state,
                Next::Again => continue,
                Next::End(end) => return end,
            };
            match self.guard(state).await {
                Next::Go(()) => {}
                Next::Again => continue,
                Next::End(end) => return end,
            }
            if std::mem::take(&mut self.taking_over)
                && let Some(released_ms) = released_ms
            {
                match self.take_over(state, released_ms).await {
                    Next::Go(()) => {}
                    Next::Again => continue,
                    Next::End(end) => return end,
                }
            }
            self.check_base().await;
            let (collected, collect_time) = self.collect(state.round).await;
            tokio::time::sleep_until(self.schedule.commit_at()).await;
            let (aggregated, result) = self.aggregate(state.round, &collected).await;
            let gathered = Gathered {
                collected,
                collect_time,
                aggregated,
                result,
            };
            match self.commit(state, &gathered).await {
                Next::Go(()) => {
                    canary::judge(
                        self.ctx,
                        self.node,
                        &self.roster,
                        state.round,
                        &gathered.collected,
                        gathered.aggregated.value(),
                        self.shadow.as_ref(),
                    )
                    .await
                }
                Next::Again => continue,
                Next::End(end) => return end,
            }
            self.schedule.advance(self.ctx.period(), Instant::now());
        }
    }

    /// `{root}/round` and when it was released (`None`: unknown), starting the fleet's state
    /// when it has none.
    async fn round_state(&mut self) -> Next<(barrier::RoundState, Option<i64>)> {
        let client = match self.ctx.session.client() {
            Ok(client) => client,
            Err(err) => return Next::End(TermEnd::Session(err)),
        };
        match barrier::current_released(&client).await {
            Ok(Some((state, released_ms))) => Next::Go((state, Some(released_ms))),
            Ok(None) => {
                drop(client);
                self.start_state().await
            }
            Err(CoordError::BadData { found, .. }) => {
                match barrier::current_unreadable(&client).await {
                    Ok(Some(state)) => {
                        tracing::error!(found = %found, "{{root}}/round holds something that is not a round number");
                        Next::Go((state, None))
                    }
                    Ok(None) => Next::Again,
                    Err(err) => Next::End(TermEnd::RoundUnreadable(err)),
                }
            }
            Err(err) => Next::End(TermEnd::RoundUnreadable(err)),
        }
    }

    /// Asks where the fleet continues, then starts its state; backs off while it cannot.
    async fn start_state(&mut self) -> Next<(barrier::RoundState, Option<i64>)> {
        let started = match resume::resume_point(self.ctx).await {
            Ok(point) => resume::start(self.ctx, self.node, point).await,
            Err(err) => Err(err),
        };
        match started {
            Ok(()) => {
                self.starting.reset();
                self.committer.forget();
                // Its first round is ours, released now.
                self.taking_over = false;
                // The first round gets a whole period, however long the start took.
                self.schedule =
                    Schedule::new(Instant::now(), self.ctx.period(), self.ctx.collect_fraction);
            }
            Err(resume::StartError::Fenced) => return Next::End(TermEnd::Deposed),
            Err(err) => {
                let wait = self.starting.next_delay();
                tracing::warn!(error = %err, retry_in = ?wait, "the fleet has no state in ZooKeeper (a new fleet, or ZooKeeper lost its data): cannot start it yet");
                tokio::time::sleep(wait).await;
            }
        }
        Next::Again
    }

    /// Refuses a round this leader did not release (see [`Committer::guard_round`]).
    async fn guard(&mut self, state: barrier::RoundState) -> Next<()> {
        match self.committer.guard_round(self.ctx, state).await {
            Ok(false) => Next::Go(()),
            Ok(true) => Next::Again,
            Err(CommitError::Fenced) => Next::End(TermEnd::Deposed),
            Err(err) => {
                tracing::warn!(error = %err, "cannot check the round; retrying");
                tokio::time::sleep(PAUSE).await;
                Next::Again
            }
        }
    }

    /// The round the term starts with was released by someone else: finish it on its own
    /// schedule, late, or (far too late) give it up and release the next one.
    async fn take_over(&mut self, state: barrier::RoundState, released_ms: i64) -> Next<()> {
        let ctx = self.ctx;
        let round = state.round;
        let period = ctx.period();
        let grace = handover::grace(ctx.session.settings().session_timeout, period);
        let elapsed = handover::elapsed_since(released_ms, now_ms());
        let decision =
            handover::decide(Instant::now(), elapsed, period, ctx.collect_fraction, grace);
        let ago_ms = elapsed.as_millis();
        match decision {
            Handover::OnTime(schedule) => {
                tracing::info!(
                    round,
                    released_ms_ago = ago_ms,
                    "taking over the round in flight: finishing it at its deadline"
                );
                self.schedule = schedule;
                self.taken_over = Some("on_time");
                Next::Go(())
            }
            Handover::Late { schedule, late_by } => {
                tracing::warn!(
                    round,
                    late_ms = late_by.as_millis(),
                    "taking over the round in flight after its deadline (the previous leader's session had to expire): finishing it now with the readings devices wrote"
                );
                self.schedule = schedule;
                self.taken_over = Some("late");
                Next::Go(())
            }
            Handover::GiveUp { late_by } => self.give_up(state, late_by).await,
        }
    }

    /// Releases past `state`'s round unfinished, saying so everywhere an operator looks.
    async fn give_up(&mut self, state: barrier::RoundState, late_by: Duration) -> Next<()> {
        let ctx = self.ctx;
        let round = state.round;
        let late_ms = u64::try_from(late_by.as_millis()).unwrap_or(u64::MAX);
        tracing::error!(
            round,
            late_ms,
            grace_ms =
                handover::grace(ctx.session.settings().session_timeout, ctx.period()).as_millis(),
            "GIVEN UP: round {round} was released by a previous leader and its deadline passed longer ago than a hand-over can cover (the fleet was down?); releasing the next round without a result for it"
        );
        ctx.telemetry.round_given_up("too_late");
        let entry = GivenUp {
            round,
            reason: "too_late".into(),
            late_ms,
            leader: ctx.id.clone(),
            at: now_ms(),
        };
        match ctx.session.client() {
            Ok(client) => {
                if let Err(err) = handover::record(&client, self.node, entry).await {
                    tracing::warn!(round, error = %err, "cannot record the given-up round in {{root}}/given-up");
                }
            }
            Err(err) => return Next::End(TermEnd::Session(err)),
        }
        let started = Instant::now();
        match self.committer.commit(ctx, state, None).await {
            Ok(committed) => {
                tracing::info!(round, counter = committed.counter, commit_ms = %format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0), "round given up; next round released");
                self.schedule = Schedule::new(Instant::now(), ctx.period(), ctx.collect_fraction);
                Next::Again
            }
            Err(err) => {
                // Decide again with the round read again: it is still not ours.
                self.taking_over = true;
                match self.commit_failed(round, err).await {
                    Next::End(end) => Next::End(end),
                    Next::Go(()) | Next::Again => Next::Again,
                }
            }
        }
    }

    /// While the counter's base is pending, asks the API for it; bounded, so that it only
    /// eats into the round's collection.
    async fn check_base(&mut self) {
        let bound = (self.schedule.period() / 4).min(Duration::from_secs(2));
        if let Ok(Err(err)) = tokio::time::timeout(bound, self.committer.check_base(self.ctx)).await
        {
            tracing::warn!(error = %err, "cannot read the counter's base");
        }
    }

    /// The round's readings, until every live device reported or collection ends.
    async fn collect(&mut self, round: u64) -> (Collected, Duration) {
        let started = Instant::now();
        let members = self.roster.members();
        let legacy = self.ctx.plugins.legacy_quantity();
        let mut collected = collect::collect(
            &mut ZkReadings::new(&mut self.roster),
            members,
            round,
            self.schedule.collect_until(),
            &legacy,
        )
        .await;
        self.ctx.telemetry.members(self.roster.len());
        let collect_time = started.elapsed();
        if collected.readings.len() > MAX_DEVICES {
            tracing::error!(
                round,
                readings = collected.readings.len(),
                supported = MAX_DEVICES,
                "more readings than the largest supported fleet: the round aggregates the first {MAX_DEVICES} devices by id, the rest are left out"
            );
            collected.readings.truncate(MAX_DEVICES);
        }
        (collected, collect_time)
    }

    /// The contract version to write this round's result in: the newest every live member
    /// reads; logged when it changes.
    fn result_version(&mut self, collected: &Collected) -> u32 {
        self.adverts.extend(
            collected
                .adverts
                .iter()
                .map(|(device, advert)| (device.clone(), advert.clone())),
        );
        let members = self.roster.members();
        // A set: a fleet of 10,000 devices must not cost 10^8 comparisons a round.
        let live: std::collections::BTreeSet<&String> = members.iter().collect();
        self.adverts.retain(|device, _| live.contains(device));
        let choice = versions::choose(
            &members,
            &self.adverts,
            self.ctx.publisher.settings().wire_version,
        );
        if self.version != Some(choice.version) {
            match &choice.held_by {
                Some(device) => tracing::warn!(
                    version = choice.version,
                    device = %device,
                    // What a device node says is bounded and escaped before it is logged.
                    agent = %self.adverts.get(device).and_then(|a| a.agent.as_deref()).map_or_else(|| "0.1.0 or older".to_owned(), |a| crate::text::one_line_bounded(a, 64)),
                    "results are written in wire contract version {} while device {device} reads no newer (upgrade it to write version {VERSION})",
                    choice.version
                ),
                None => tracing::info!(
                    version = choice.version,
                    "results are written in wire contract version {}",
                    choice.version
                ),
            }
            self.version = Some(choice.version);
        }
        choice.version
    }

    /// The round's result with the aggregator the fleet's config names now.
    async fn aggregate(
        &mut self,
        round: u64,
        collected: &Collected,
    ) -> (Aggregated, Option<Round>) {
        let version = self.result_version(collected);
        let ctx = self.ctx;
        let view = ctx.rollouts.borrow().clone();
        ctx.plugins
            .switch_aggregator(
                &canary::published_aggregator(ctx, round, &view),
                &ctx.telemetry,
            )
            .await;
        let (readings, refused) = quantities::screen(&collected.readings);
        quantities::report_refused(round, &refused, &ctx.telemetry);
        let aggregated = ctx.plugins.aggregate(&readings, &ctx.telemetry).await;
        self.shadow = canary::shadow(ctx, round, &view, &readings).await;
        let mark = canary::mark(&view);
        let result = quantities::publish(&readings, &aggregated.published).map(|p| {
            Round {
                round,
                value: p.value,
                count: u32::try_from(p.devices.len()).unwrap_or(u32::MAX),
                devices: p.devices,
                aggregator: aggregated.aggregator.clone(),
                leader: ctx.id.clone(),
                ts: now_ms(),
                unit: p.unit,
                counter: None,
                version: VERSION,
                values: p.values,
                shadow: self.shadow.clone(),
                rollout: mark,
                quantities: Some(p.quantities),
            }
            .in_version(version)
        });
        (aggregated, result)
    }

    /// Commits the round and reports it; `Again` when the round must be read again.
    async fn commit(&mut self, state: barrier::RoundState, gathered: &Gathered) -> Next<()> {
        let round = state.round;
        let started = Instant::now();
        let commit = self
            .committer
            .commit(self.ctx, state, gathered.result.as_ref())
            .await;
        let commit_time = started.elapsed();
        match commit {
            Ok(committed) => {
                self.report(round, &committed, gathered, commit_time);
                Next::Go(())
            }
            Err(err) => self.commit_failed(round, err).await,
        }
    }

    /// What a failed commit of `round` leads to.
    async fn commit_failed(&mut self, round: u64, err: CommitError) -> Next<()> {
        match err {
            CommitError::Fenced => Next::End(TermEnd::Deposed),
            CommitError::RoundMoved => {
                tracing::warn!(round, "the round moved under us; re-reading");
                Next::Go(())
            }
            err @ CommitError::CounterUnknown(_) => {
                let wait = self.starting.next_delay();
                tracing::warn!(round, error = %err, retry_in = ?wait, "commit postponed");
                tokio::time::sleep(wait).await;
                Next::Again
            }
            CommitError::Coord(err) => {
                tracing::warn!(round, error = %err, "commit failed; retrying the round");
                // Not a hot loop when the failure persists (a refused ACL, say).
                tokio::time::sleep(PAUSE).await;
                Next::Again
            }
        }
    }

    /// Metrics, the round's log line, and a nudge to the publisher when a result was stored.
    fn report(
        &mut self,
        round: u64,
        committed: &Committed,
        gathered: &Gathered,
        commit_time: Duration,
    ) {
        let ctx = self.ctx;
        let Gathered {
            collected,
            collect_time,
            aggregated,
            result,
        } = gathered;
        let collect_time = *collect_time;
        if let Some(ledger) = committed.ledger {
            ctx.telemetry.outbox(ledger, self.committer.max);
        }
        let stored = result.as_ref().filter(|_| committed.stored);
        let value = stored.map(|r| r.value);
        ctx.telemetry.round_committed(&CommittedRound {
            duration: self.schedule.start().elapsed(),
            collect: collect_time,
            used: collected.readings.len(),
            missed: collected.missed,
            value,
            quantities: stored
                .and_then(|r| r.quantities.as_deref())
                .unwrap_or_default(),
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
        if let Some(outcome) = self.taken_over.take() {
            ctx.telemetry.round_taken_over(outcome);
            tracing::info!(
                round,
                outcome,
                "the round in flight at the change of leader is finished"
            );
        }
        if committed.stored {
            self.nudge.notify_one();
        }
    }
}
