//! Starting the fleet's state when `{root}/round` does not exist: a new fleet, a ZooKeeper
//! that lost its data (recreated without its volume, a disk replaced), or a root deleted by
//! hand. Only the leader does it, in one multi fenced by its election node:
//!
//! - the first round is one above the highest round the API stores for this fleet and any
//!   round still in `{root}/results` or `{root}/rejected`, so no round number is used twice
//!   and none the API holds is refused as a conflict;
//! - the counter continues from the `counter` the API's latest round carries (the fleet's
//!   counter when that round was committed); a counter node that survived stays as it is.
//!   When the latest round predates the field the counter starts at 0, and the log says so.
//!
//! With the `query` format the API has no round numbers: rounds start above the outbox's
//! (or at 1) and the counter at 0. While the API cannot be asked (down, wrong token), the
//! fleet does not start: the leader retries with back-off and says why.

use zookeeper_client::Error as ZkError;

use super::Ctx;
use crate::{
    coord::{
        CoordError, barrier, counter,
        paths::{COUNTER, ROUND},
        txn::{Label, Txn},
    },
    publish::{SendError, outbox},
};

/// Where a new fleet state starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    pub round: u64,
    /// `None`: keep the counter node that exists, or start at 0.
    pub counter: Option<i64>,
}

/// Why the fleet's state could not be started (yet).
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    #[error("cannot ask the API where round numbers continue: {0}")]
    Api(#[from] SendError),
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error("fenced off: our election node is gone")]
    Fenced,
}

/// Where round numbers and the counter continue: above the API's latest round and anything
/// left in the outbox.
pub(super) async fn resume_point(ctx: &Ctx) -> Result<ResumePoint, StartError> {
    let api_url = ctx.dynconfig.api_url.borrow().clone();
    let latest = ctx.publisher.latest_stored(&api_url).await?;
    let client = ctx.session.client()?;
    let left = outbox::highest_round(&client, ctx.mark_key()).await?;
    let highest = latest.as_ref().map(|r| r.round).max(left);
    let counter = match &latest {
        Some(round) if round.counter.is_none() => {
            tracing::warn!(
                round = round.round,
                "the API's latest round carries no counter (stored by an older fleetmeter): the counter starts again at 0"
            );
            None
        }
        Some(round) => round.counter,
        None => None,
    };
    Ok(ResumePoint {
        round: highest.map_or(1, |h| h.saturating_add(1)),
        counter,
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
        let mut txn = Txn::new("start (multi)", ROUND);
        txn.check(Label::Fence, node, 0).extend(barrier::start(
            client.acl(),
            point.round,
            barrier_exists,
        ));
        if !counter_exists {
            txn.push(counter::create(client.acl(), point.counter.unwrap_or(0)));
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
            // The barrier or counter was created meanwhile.
            Err(err) if err.failed().is_some_and(|(_, e)| *e == ZkError::NodeExists) => continue,
            Err(err) => Err(err.into_coord().into()),
        };
    }
}
