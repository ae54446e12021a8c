//! The leader's side of a plugin rollout, beside each round: a new aggregator in canary runs
//! in shadow on the round's readings ([`shadow`]), and each canary round is judged by the
//! gates and the record written, fenced ([`judge`]).

use std::collections::BTreeMap;

use super::{Ctx, collect::Collected};
use crate::{
    coord::roster::Roster,
    plugin::Reading,
    rollout::{
        State, View,
        follow::slot_of,
        gates::{Verdict, judge_sensor},
        record::{Assignment, Kind, ShadowValue, wanted},
        store,
    },
    round::plugins::Slot,
    wire::{self, RolloutMark, Shadow, now_ms},
};

/// The aggregator that publishes round `round`: the rollout's or the fleet's assignment
/// when they name one, else `{root}/config/aggregator`.
pub(super) fn published_aggregator(ctx: &Ctx, round: u64, view: &View) -> Slot {
    let local = Slot::Local(ctx.dynconfig.aggregator.borrow().clone());
    let want = wanted(
        Kind::Aggregator,
        &ctx.id,
        round,
        view.rollout.as_ref(),
        view.assignment(Kind::Aggregator),
    );
    slot_of(&want, local)
}

/// The rollout in effect, as the round records it.
pub(super) fn mark(view: &View) -> Option<RolloutMark> {
    view.rollout.as_ref().map(|r| RolloutMark {
        id: r.id,
        kind: r.kind.name().to_owned(),
        plugin: round_label(&r.artifact.label()),
        state: r.state.name().to_owned(),
    })
}

/// A label from plugin metadata or the rollout record, made safe for a round (the API's
/// bound on labels, no control characters), so that it can never make a round
/// unpublishable.
fn round_label(text: &str) -> String {
    round_label_long(text, 100)
}

fn round_label_long(text: &str, max_bytes: usize) -> String {
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    if out.is_empty() { "?".to_owned() } else { out }
}

/// While an aggregator rollout is in canary: the new aggregator's value on the same
/// readings (never published).
pub(super) async fn shadow(
    ctx: &Ctx,
    round: u64,
    view: &View,
    readings: &[Reading],
) -> Option<Shadow> {
    let r = view.rollout.as_ref()?;
    if r.kind != Kind::Aggregator || r.state != State::Canary || round < r.start_round {
        return None;
    }
    let slot = Slot::Artifact {
        sha256: r.artifact.sha256.clone(),
        config: r.config.clone(),
    };
    let bounded = |e: &str| round_label_long(e, wire::MAX_SHADOW_ERROR);
    Some(
        match ctx
            .plugins
            .aggregate_shadow(&slot, readings, &ctx.telemetry)
            .await
        {
            Some((aggregator, Ok(value))) => Shadow {
                aggregator: round_label(&aggregator),
                value,
                error: None,
            },
            Some((aggregator, Err(err))) => Shadow {
                aggregator: round_label(&aggregator),
                value: None,
                error: Some(bounded(&err)),
            },
            None => Shadow {
                aggregator: round_label(&r.artifact.label()),
                value: None,
                error: Some(bounded(&format!(
                    "not loaded on leader {}: {}",
                    ctx.id,
                    view.errors
                        .get(&r.artifact.sha256)
                        .map_or("not fetched yet", String::as_str)
                ))),
            },
        },
    )
}

/// Judges a canary round by the gates and moves the rollout on: promoted (every device
/// from two rounds on), waiting for a manual promotion, or rolled back. The record is
/// written every judged round, fenced, so that a new leader continues from it.
pub(super) async fn judge(
    ctx: &Ctx,
    node: &str,
    roster: &Roster,
    round: u64,
    collected: &Collected,
    published: Option<f64>,
    shadow: Option<&Shadow>,
) {
    let view = ctx.rollouts.borrow().clone();
    let (Some(mut r), Some(version)) = (view.rollout.clone(), view.rollout_version) else {
        return;
    };
    if r.state != State::Canary || round < r.start_round || r.judged.last_round >= Some(round) {
        return;
    }
    let verdict = match r.kind {
        Kind::Sensor => {
            // A sample's first quantity: what the gates compare between canary and fleet.
            let readings: BTreeMap<String, f64> = collected
                .readings
                .iter()
                .filter_map(|x| Some((x.device.clone(), x.quantities.first()?.value)))
                .collect();
            judge_sensor(&r, round, &roster.members(), &readings, &collected.adverts)
        }
        Kind::Aggregator => {
            let mut verdict = Verdict {
                round,
                ..Verdict::default()
            };
            if let Some(shadow) = shadow {
                r.record_shadow(ShadowValue {
                    round,
                    published,
                    shadow: shadow.value,
                    error: shadow.error.clone(),
                });
                if let Some(err) = &shadow.error {
                    verdict.failures.push((ctx.id.clone(), err.clone()));
                }
            }
            verdict
        }
    };
    let transition = r.apply(&verdict);
    let mut assignment = None;
    if let Some((state, reason)) = &transition {
        let end = round + 2;
        r.transition(
            *state,
            round,
            (*state != State::Waiting).then_some(end),
            reason.clone(),
            &ctx.id,
            now_ms(),
        );
        if *state == State::Promoted {
            assignment = Some(Assignment {
                artifact: r.artifact.clone(),
                config: r.config.clone(),
                rollout: r.id,
                since_round: end,
            });
        }
    }
    let Ok(client) = ctx.session.client() else {
        return;
    };
    let written = store::write(
        &client,
        &r,
        Some(version),
        assignment
            .as_ref()
            .map(|a| (a, view.assignment_version(r.kind))),
        Some(node),
    )
    .await;
    match (written, transition) {
        (Ok(()), Some((state, reason))) => {
            ctx.telemetry.rollout_transition(state.name());
            let end = r
                .end_round
                .map_or_else(|| "-".to_owned(), |e| e.to_string());
            match state {
                State::RolledBack => {
                    tracing::error!(rollout = r.id, artifact = %r.artifact.short(), round, from_round = %end, reason = %reason, "ROLLOUT ROLLED BACK: a health gate failed; every device runs its previous plugin from round {end}")
                }
                _ => {
                    tracing::info!(rollout = r.id, artifact = %r.artifact.short(), round, state = state.name(), from_round = %end, reason = %reason, "ROLLOUT {}", state.name().to_uppercase())
                }
            }
        }
        (Ok(()), None) => {
            tracing::debug!(
                rollout = r.id,
                round,
                judged = r.judged.rounds,
                "canary round judged"
            )
        }
        (Err(err), _) => {
            tracing::warn!(rollout = r.id, round, error = %err, "cannot write the rollout's judgement; the round is judged again by whoever leads next")
        }
    }
}
