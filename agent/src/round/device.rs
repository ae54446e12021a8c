//! What every device does, leader or not: wait for the next round on the barrier, switch to
//! the sensor the fleet's rollout names for that round (if it is not running), sample it
//! once, and write the round-tagged reading `{"round":n,"value":v,"ts":ms}` with the sensor's
//! digest to its node. A failed sample costs that round's reading only; the node then says
//! why (`"failed":{"round":n,"why":…}`).

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::{
    coord::{CoordError, barrier, membership::Membership},
    rollout::{
        follow::slot_of,
        record::{Kind, advertised, wanted},
    },
    wire::{DeviceReading, Failed, Shown, ShownSample, now_ms},
};

/// Switches to the sensor the fleet's rollout state says this device runs in `round`;
/// `Some(why)` when that sensor is not ready here (the current one keeps running).
async fn switch_sensor(ctx: &Ctx, round: u64, last_problem: &mut Option<String>) -> Option<String> {
    let view = ctx.rollouts.borrow().clone();
    let want = wanted(
        Kind::Sensor,
        &ctx.id,
        round,
        view.rollout.as_ref(),
        view.assignment(Kind::Sensor),
    );
    let slot = slot_of(&want, ctx.plugins.local_sensor());
    match ctx.plugins.switch_sensor(&slot, &ctx.telemetry).await {
        Ok(switched) => {
            if switched {
                tracing::info!(device = %ctx.id, round, sha256 = %ctx.plugins.sensor_sha256(), "SWITCHED sensor at the round the fleet's rollout announced");
            }
            *last_problem = None;
            None
        }
        Err(why) => {
            let why = slot
                .sha256()
                .and_then(|d| view.errors.get(d).cloned())
                .unwrap_or(why);
            let why = crate::text::one_line_bounded(&why, 300);
            // Once per problem: it stands every round until the rollout or the agent changes.
            if last_problem.as_ref() != Some(&why) {
                tracing::warn!(device = %ctx.id, round, problem = %why, "cannot switch to the sensor the fleet's rollout names; keeping the current one (its node says why)");
                *last_problem = Some(why.clone());
            }
            Some(why)
        }
    }
}

/// Pause before re-reading the round after a ZooKeeper error.
const RETRY: Duration = Duration::from_millis(500);

/// Samples once per round until `stop`.
pub(super) async fn run(ctx: Arc<Ctx>, membership: Membership, stop: CancellationToken) {
    let id = &ctx.id;
    let mut rounds = barrier::RoundWatch::new(&ctx.session, None);
    let mut last = None;
    let mut last_problem = None;
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
        let rollout_error = switch_sensor(&ctx, round, &mut last_problem).await;
        // Bounded by the sensor's time limit; dropped at once on shutdown.
        let Some(sampled) = stop
            .run_until_cancelled(ctx.plugins.sample(&ctx.telemetry))
            .await
        else {
            return;
        };
        ctx.telemetry.sample(sampled.as_deref().ok());
        let mut advert = ctx.advert.clone();
        advert.sensor = Some(advertised(&ctx.plugins.sensor_sha256()));
        advert.rollout_error = rollout_error;
        let data = match sampled {
            // `value` is the first quantity: what a leader before 0.2.0 reads.
            Ok(sample) => serde_json::to_vec(&DeviceReading {
                round,
                value: sample[0].value,
                ts: now_ms(),
                quantities: Some(sample),
                advert,
            }),
            Err(err) => {
                tracing::warn!(device = %id, round, error = %err, "no reading this round");
                // The node says why the reading is missing (the leader judges a canary
                // by it); it carries no reading, so no leader takes an old one for new.
                advert.failed = Some(Failed {
                    round,
                    why: crate::text::one_line_bounded(&err.to_string(), 200),
                });
                serde_json::to_vec(&advert)
            }
        }
        .expect("a device node serializes");
        let sent = serde_json::from_slice::<DeviceReading>(&data);
        match membership.publish(data).await {
            Ok(()) => match sent {
                Ok(reading) => {
                    let sample = ShownSample(reading.quantities.as_deref().unwrap_or_default());
                    tracing::info!(device = %id, round, value = %Shown(reading.value), sample = %sample, "reading sent to ZooKeeper")
                }
                Err(_) => tracing::info!(device = %id, round, "failure sent to ZooKeeper"),
            },
            Err(CoordError::Closed) => return,
            Err(err) => {
                tracing::warn!(device = %id, round, error = %err, "cannot write the reading")
            }
        }
    }
}
