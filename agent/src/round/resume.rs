//! Starting the fleet's state when `{root}/round` does not exist: a new fleet, a ZooKeeper
//! that lost its data (recreated without its volume, a disk replaced), or a root deleted by
//! hand. Only the leader does it, in one multi fenced by its election node. Measuring never
//! waits for the API:
//!
//! - when the API answers, the first round is one above the highest round it stores for this
//!   fleet and any round still in `{root}/results` or `{root}/rejected`, and the counter
//!   continues from the `counter` the API's latest round carries (a counter node that
//!   survived stays as it is; a latest round without the field starts it at 0, logged);
//! - when it does not (down, unreachable, refusing the token), the first round is derived
//!   from the clock — the Unix time in units of the shortest sampling period (100 ms),
//!   [`clock_round`] — and is above the outbox's. A fleet commits at most one round per
//!   shortest period, so every round it ever numbered lies below the clock's number: no
//!   round the API holds is reused, without asking it (as long as the agents' clocks do not
//!   run behind the clocks that numbered the earlier rounds). The counter starts at 0 with its
//!   base pending (`{root}/counter-base`, [`counter::PendingBase`]): rounds commit and wait
//!   in the outbox without a `counter`, and the leader adds the base once the API answers.
//!
//! With the `query` format the API has no round numbers: rounds start above the outbox's
//! (or at 1) and the counter at 0.

use zookeeper_client::Error as ZkError;

use super::Ctx;
use crate::{
    coord::{
        CoordError, barrier, counter,
        dynconfig::MIN_PERIOD,
        paths::{COUNTER, ROUND},
        txn::{Label, Txn},
    },
    publish::outbox,
    wire::now_ms,
};

/// Where a new fleet state starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    pub round: u64,
    pub counter: CounterStart,
}

/// Where the counter of a new fleet state starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterStart {
    /// Where the API's latest round left it; `None`: keep the counter node that exists, or
    /// start at 0.
    Continue(Option<i64>),
    /// The API could not be asked: keep the counter node that exists, or start at 0 with the
    /// base pending.
    Pending,
}

/// Why the fleet's state could not be started (yet).
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error("fenced off: our election node is gone")]
    Fenced,
}

/// The round number the clock gives at `now_ms`: the Unix time in units of the shortest
/// sampling period. Above every round a fleet numbered before `now_ms`, which commits at
/// most one round per shortest period.
pub fn clock_round(now_ms: u64) -> u64 {
    let unit = u64::try_from(MIN_PERIOD.as_millis()).unwrap_or(100).max(1);
    now_ms / unit
}

/// Where round numbers and the counter continue: above the API's latest round and anything
/// left in the outbox; above the clock's number when the API cannot be asked.
pub(super) async fn resume_point(ctx: &Ctx) -> Result<ResumePoint, StartError> {
    let api_url = ctx.dynconfig.api_url.borrow().clone();
    let client = ctx.session.client()?;
    let left = outbox::highest_round(&client, ctx.mark_key()).await?;
    let above_outbox = left.map_or(1, |h| h.saturating_add(1));
    let latest = match ctx.publisher.latest_stored(&api_url).await {
        Ok(latest) => latest,
        Err(err) => {
            let round = clock_round(now_ms()).max(above_outbox);
            tracing::warn!(error = %err, round, "the API cannot say where round numbers continue: measuring starts anyway, at a round number derived from the clock (above any the fleet used); rounds wait in the outbox, and the counter's base is added when the API answers");
            return Ok(ResumePoint {
                round,
                counter: CounterStart::Pending,
            });
        }
    };
    let counter = match &latest {
        Some(round) if round.counter.is_none() => {
            tracing::warn!(
                round = round.round,
                "the API's latest round carries no counter (stored by an older fleetmeter, or while a counter's base was pending): the counter starts again at 0"
            );
            None
        }
        Some(round) => round.counter,
        None => None,
    };
    let highest = latest.as_ref().map(|r| r.round).max(left);
    Ok(ResumePoint {
        round: highest.map_or(1, |h| h.saturating_add(1)),
        counter: CounterStart::Continue(counter),
    })
}

/// Creates `{root}/round`, `{root}/barrier` and (when absent) `{root}/counter` at `point`, fenced
/// by `node`. `Ok` also when another leader started it first.
pub(super) async fn start(ctx: &Ctx, node: &str, point: ResumePoint) -> Result<(), StartError> {
    loop {
        let client = ctx.session.client()?;
        let barrier_exists = barrier::barrier_exists(&client).await?;
        let counter_exists = client
            .check_stat(COUNTER)
            .await
            .map_err(|e| CoordError::zk("stat", COUNTER, e))?
            .is_some();
        let base_pending = counter::pending_base(&client).await?.is_some();
        let mut txn = Txn::new("start (multi)", ROUND);
        txn.check(Label::Fence, node, 0).extend(barrier::start(
            client.acl(),
            point.round,
            barrier_exists,
        ));
        if !counter_exists {
            match point.counter {
                CounterStart::Continue(value) => {
                    txn.push(counter::create(client.acl(), value.unwrap_or(0)));
                }
                CounterStart::Pending => {
                    txn.push(counter::create(client.acl(), 0));
                    if !base_pending {
                        txn.push(counter::pend_base(client.acl(), point.round));
                    }
                }
            }
        }
        return match txn.commit(&client).await {
            Ok(()) => {
                tracing::info!(
                    round = point.round,
                    counter = ?point.counter,
                    kept_counter = counter_exists,
                    "started the fleet's state in ZooKeeper: round numbers continue above what the API and the outbox hold"
                );
                Ok(())
            }
            // Our election node is gone (with the root, when it was deleted by hand): the
            // election re-joins, making the root again.
            Err(err) if err.is(Label::Fence) => Err(StartError::Fenced),
            // Another leader started it first.
            Err(err) if err.is_at(Label::Round, &ZkError::NodeExists) => Ok(()),
            // The barrier, the counter or its pending base was created meanwhile.
            Err(err)
                if [Label::Barrier, Label::Counter, Label::CounterBase]
                    .into_iter()
                    .any(|label| err.is_at(label, &ZkError::NodeExists)) =>
            {
                continue;
            }
            Err(err) => Err(err.into_coord().into()),
        };
    }
}
