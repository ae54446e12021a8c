//! What every device does, leader or not: wait for the next round on the barrier, sample the
//! sensor once, and write the round-tagged reading `{"round":n,"value":v,"ts":ms}` to its
//! node. A failed sample costs that round's reading only.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::{
    coord::{CoordError, barrier, membership::Membership},
    wire::{DeviceReading, Shown, now_ms},
};

/// Pause before re-reading the round after a ZooKeeper error.
const RETRY: Duration = Duration::from_millis(500);

/// Samples once per round until `stop`.
pub(super) async fn run(ctx: Arc<Ctx>, membership: Membership, stop: CancellationToken) {
    let id = &ctx.id;
    let mut rounds = barrier::RoundWatch::new(&ctx.session, None);
    let mut last = None;
    loop {
        let Some(next) = stop.run_until_cancelled(rounds.next()).await else {
            return;
        };
        let round = match next {
            Ok(round) => round,
            Err(CoordError::Closed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the round; retrying");
                if stop
                    .run_until_cancelled(tokio::time::sleep(RETRY))
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        };
        if last.is_some_and(|l: barrier::RoundState| l.created != round.created) {
            tracing::warn!(device = %id, round = round.round, "the fleet's state was started again (ZooKeeper lost its data, or the root was recreated): following the leader's round");
        }
        last = Some(round);
        let round = round.round;
        ctx.telemetry.round_opened(round);
        // Bounded by the sensor's time limit; dropped at once on shutdown.
        let Some(sampled) = stop
            .run_until_cancelled(ctx.plugins.sample(&ctx.telemetry))
            .await
        else {
            return;
        };
        ctx.telemetry.sample(sampled.as_ref().ok().copied());
        let value = match sampled {
            Ok(value) => value,
            Err(err) => {
                tracing::warn!(device = %id, round, error = %err, "no reading this round");
                continue;
            }
        };
        let reading = DeviceReading {
            round,
            value,
            ts: now_ms(),
            advert: ctx.advert.clone(),
        };
        let data = serde_json::to_vec(&reading).expect("a reading serializes");
        match membership.publish(data).await {
            Ok(()) => {
                tracing::info!(device = %id, round, value = %Shown(value), "reading sent to ZooKeeper")
            }
            Err(CoordError::Closed) => return,
            Err(err) => {
                tracing::warn!(device = %id, round, error = %err, "cannot write the reading")
            }
        }
    }
}
