//! The leader's commits for one term: reads what a commit builds on, applies the plan
//! ([`super::plan`]), and retries what a conflict or a missing directory asks for.
//!
//! The leader trusts nothing it did not write: `{root}/round` and `{root}/counter` must be
//! what its last commit left (or, at a term's start, readable and above the outbox); any
//! other value is refused, logged, counted (`fleetmeter_zk_refused_total`) and written back
//! in a fenced transaction.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    Ctx,
    guard::{self, CounterCheck, RoundCheck},
    plan::{self, Failure, Inputs},
    resume::{self, CounterStart, ResumePoint},
};
use crate::{
    coord::{self, CoordError, barrier, counter, paths::RESULTS},
    publish::outbox::{self, Ledger, LedgerState},
    wire::Round,
};

pub(super) use plan::Committed;

/// How often a leader asks the API for a pending counter base while it does not answer.
const BASE_RETRY: Duration = Duration::from_secs(5);
/// ... and while it answers without the `before` filter (an API older than the agents).
const BASE_RETRY_OLD_API: Duration = Duration::from_secs(60);

/// The counter's base, as this term knows it ([`counter::PendingBase`]).
#[derive(Clone, Copy, Debug)]
enum Base {
    /// Not read yet this term.
    Unread,
    /// The counter is the fleet's total.
    Settled,
    /// Pending; the API is asked again from `next_try`.
    Pending {
        pending: counter::PendingBase,
        next_try: Instant,
    },
    /// The API said where the counter stood: add `base` in the next commit.
    Ready {
        pending: counter::PendingBase,
        base: i64,
    },
}

/// A full outbox is recounted (in case entries went missing by hand) at most this often.
const RECOUNT_EVERY: Duration = Duration::from_secs(60);

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub(super) enum CommitError {
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

/// Commits rounds for one term.
pub(super) struct Committer<'a> {
    node: &'a str,
    pub(super) max: Ledger,
    /// When the ledger was last recounted because it said "full".
    recounted: Option<Instant>,
    /// `{root}/round` as our last release (or our first read of the term) left it: any
    /// other value was written by someone else, and is refused.
    released: Option<barrier::RoundState>,
    /// The counter as our last commit left it, likewise.
    counter: Option<counter::CounterValue>,
    base: Base,
}

impl<'a> Committer<'a> {
    pub(super) fn new(node: &'a str, max: Ledger) -> Self {
        Self {
            node,
            max,
            recounted: None,
            released: None,
            counter: None,
            base: Base::Unread,
        }
    }

    /// The fleet's state was (re)started: nothing is expected of the nodes any more.
    pub(super) fn forget(&mut self) {
        self.released = None;
        self.counter = None;
        self.base = Base::Unread;
    }

    /// While the counter's base is pending, asks the API (at most every [`BASE_RETRY`]) where
    /// the counter stood before the first round counted without it; the next commit adds it.
    /// The caller bounds the time this takes: it runs before a round's collection.
    pub(super) async fn check_base(&mut self, ctx: &Ctx) -> Result<(), CoordError> {
        if let Base::Unread = self.base {
            let client = ctx.session.client()?;
            self.base = match counter::pending_base(&client).await? {
                None => Base::Settled,
                Some(pending) => Base::Pending {
                    pending,
                    next_try: Instant::now(),
                },
            };
        }
        let Base::Pending { pending, next_try } = self.base else {
            return Ok(());
        };
        if Instant::now() < next_try {
            return Ok(());
        }
        let api_url = ctx.dynconfig.api_url.borrow().clone();
        let retry = |after| Base::Pending {
            pending,
            next_try: Instant::now() + after,
        };
        self.base = match ctx
            .publisher
            .latest_stored_before(&api_url, Some(pending.since))
            .await
        {
            Ok(None) => Base::Ready { pending, base: 0 },
            Ok(Some(latest)) if latest.round < pending.since => {
                if latest.counter.is_none() {
                    tracing::warn!(
                        round = latest.round,
                        "the API's latest round before the counter was started carries no counter: its base is 0"
                    );
                }
                Base::Ready {
                    pending,
                    base: latest.counter.unwrap_or(0),
                }
            }
            Ok(Some(latest)) => {
                tracing::error!(
                    since = pending.since,
                    answered = latest.round,
                    "the API answered `GET /api/v1/rounds?before=` with a later round: it is older than this agent (upgrade the API first); the counter's base stays pending"
                );
                retry(BASE_RETRY_OLD_API)
            }
            Err(err) => {
                tracing::debug!(error = %err, "the counter's base is still pending: the API does not answer");
                retry(BASE_RETRY)
            }
        };
        Ok(())
    }

    /// Refuses a round the leader did not release ([`guard::check_round`]); the first round
    /// of a term must lie above every round in the outbox. A refused round is written back,
    /// fenced; `Ok(true)` then (read it again).
    pub(super) async fn guard_round(
        &mut self,
        ctx: &Ctx,
        state: barrier::RoundState,
    ) -> Result<bool, CommitError> {
        let client = ctx.session.client()?;
        let floor = match self.released {
            Some(_) => None,
            None => outbox::highest_round(&client, ctx.mark_key())
                .await?
                .map(|h| h.saturating_add(1)),
        };
        let expected = match guard::check_round(self.released, state, floor) {
            RoundCheck::Ours => return Ok(false),
            RoundCheck::Adopt => {
                self.released = Some(state);
                return Ok(false);
            }
            RoundCheck::Refuse { expected } => expected,
            // Where the fleet's rounds continue, as at a start; the outbox alone when the
            // API cannot say.
            RoundCheck::BelowFloor { floor } => match resume::resume_point(ctx).await {
                Ok(point) => point.round.max(floor),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot ask the API where rounds continue: using the outbox's highest round");
                    floor
                }
            },
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
        let (txn, after) = guard::restore_round(self.node, state, expected);
        match txn.commit(&client).await {
            Ok(()) => {
                self.released = Some(after);
                Ok(true)
            }
            Err(err) => match plan::judge(&err) {
                Failure::Fenced => Err(CommitError::Fenced),
                Failure::Conflict => Ok(true),
                Failure::NoResultsDir | Failure::Other => Err(err.into_coord().into()),
            },
        }
    }

    /// The counter to build on ([`guard::check_counter`]), and whether it is written back:
    /// ours when someone else changed it, or (first read of a term, unreadable) where the
    /// fleet's stored rounds say it stands.
    async fn guard_counter(
        &mut self,
        ctx: &Ctx,
        client: &coord::FleetClient,
    ) -> Result<(counter::CounterValue, bool), CommitError> {
        let (value, version) = counter::read_lenient(client).await?;
        let expected = match guard::check_counter(value, version, self.counter) {
            CounterCheck::Build(count) => return Ok((count, false)),
            CounterCheck::Restore { value } => value,
            CounterCheck::Unknown => match resume::resume_point(ctx).await {
                Ok(ResumePoint {
                    counter: CounterStart::Continue(value),
                    ..
                }) => value.unwrap_or(0),
                Ok(ResumePoint {
                    counter: CounterStart::Pending,
                    ..
                }) => {
                    return Err(CommitError::CounterUnknown(
                        "the API cannot say where it stands".into(),
                    ));
                }
                Err(err) => return Err(CommitError::CounterUnknown(err.to_string())),
            },
        };
        ctx.telemetry.zk_refused("counter");
        tracing::error!(
            found = ?value,
            expected,
            "{{root}}/counter was changed by someone other than the leader (or is not a number): refused; writing back {expected}"
        );
        let count = counter::CounterValue {
            value: expected,
            version,
        };
        Ok((count, true))
    }

    /// The ledger a result of `bytes` is stored against; recounted (at most every
    /// [`RECOUNT_EVERY`]) when it says the result does not fit, in case entries went
    /// missing by hand.
    async fn ledger_for(
        &mut self,
        client: &coord::FleetClient,
        bytes: u64,
    ) -> Result<LedgerState, CoordError> {
        let ledger = outbox::ledger::read(client).await?;
        if !ledger.ledger.fits(bytes, &self.max)
            && self.recounted.is_none_or(|at| at.elapsed() > RECOUNT_EVERY)
        {
            self.recounted = Some(Instant::now());
            return outbox::ledger::recount(client).await;
        }
        Ok(ledger)
    }

    /// Commits round `state` with `result` ([`plan::plan`]), retrying on a conflict that
    /// leaves the round ours.
    pub(super) async fn commit(
        &mut self,
        ctx: &Ctx,
        state: barrier::RoundState,
        result: Option<&Round>,
    ) -> Result<Committed, CommitError> {
        let client = ctx.session.client()?;
        let mut parts_written: Option<Vec<u8>> = None;
        loop {
            let (count, restore_counter) = self.guard_counter(ctx, &client).await?;
            let (count, restore_counter, counter_known, settle) = match self.base {
                Base::Ready { pending, base } => (
                    counter::CounterValue {
                        value: counter::checked_add(count.value, base)?,
                        version: count.version,
                    },
                    true,
                    true,
                    Some((pending, base)),
                ),
                Base::Pending { .. } => (count, restore_counter, false, None),
                Base::Unread | Base::Settled => (count, restore_counter, true, None),
            };
            let staged = plan::stage(
                result,
                count.value,
                counter_known,
                self.node,
                ctx.mark_key(),
            )?;
            let ledger = match staged.encoded() {
                Some(encoded) => Some(self.ledger_for(&client, encoded.bytes).await?),
                None => None,
            };
            let plan = plan::plan(
                Inputs {
                    node: self.node,
                    acl: client.acl(),
                    state,
                    counter: count,
                    restore_counter,
                    settle: settle.map(|(pending, _)| pending),
                    ledger,
                    max: self.max,
                },
                staged,
            )?;
            if let Some(entry) = &plan.entry
                && !entry.parts.is_empty()
                && parts_written.as_deref() != Some(&entry.entry)
            {
                // Once per commit: a retry of the same entry reuses them.
                outbox::write_parts(&client, entry).await?;
                parts_written = Some(entry.entry.clone());
            }
            match plan.txn.commit(&client).await {
                Ok(()) => {
                    self.released = Some(plan.released);
                    self.counter = Some(plan.counter);
                    if let Some((pending, base)) = settle {
                        tracing::info!(
                            since = pending.since,
                            base,
                            counter = plan.counter.value,
                            "the counter's base is known again (the API answered): added to the counter"
                        );
                        self.base = Base::Settled;
                    }
                    return Ok(plan.committed);
                }
                Err(err) => match plan::judge(&err) {
                    Failure::Fenced => return Err(CommitError::Fenced),
                    Failure::NoResultsDir => {
                        client
                            .mkdir(RESULTS, &client.persistent())
                            .await
                            .map_err(|e| CoordError::zk("create", RESULTS, e))?;
                    }
                    // If the round moved, someone else released it.
                    Failure::Conflict => match barrier::current(&client).await {
                        Ok(Some(now)) if now == state => {}
                        _ => return Err(CommitError::RoundMoved),
                    },
                    Failure::Other => return Err(err.into_coord().into()),
                },
            }
        }
    }
}
