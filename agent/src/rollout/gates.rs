//! The health gates: how the leader judges one canary round ([`judge_sensor`]) and what the
//! judged rounds lead to ([`Rollout::apply`]): promotion after `rounds` good rounds (or
//! waiting for a manual one), rollback at the first gate that fails. Pure.

use std::collections::BTreeMap;

use super::record::{Rollout, State, advertised};
use crate::wire::Advert;

impl Rollout {
    /// Adds one judged round; returns the transition it leads to, if any: `(state, reason)`.
    pub fn apply(&mut self, verdict: &Verdict) -> Option<(State, String)> {
        if self.state != State::Canary || self.judged.last_round >= Some(verdict.round) {
            return None;
        }
        let j = &mut self.judged;
        j.rounds += 1;
        j.last_round = Some(verdict.round);
        j.failures += verdict.failures.len() as u32;
        j.missing += verdict.missing.len() as u32;
        j.outliers += verdict.outliers.len() as u32;
        let g = &self.gates;
        if j.failures > g.max_failures {
            let (d, why) = &verdict.failures.first().cloned().unwrap_or_default();
            return Some((
                State::RolledBack,
                format!(
                    "failures gate: {} plugin failure(s) in {} canary round(s), at most {} allowed (round {}: device {d}: {why})",
                    j.failures, j.rounds, g.max_failures, verdict.round
                ),
            ));
        }
        if j.missing > g.max_missing {
            return Some((
                State::RolledBack,
                format!(
                    "missing gate: {} reading(s) missing from canary devices in {} round(s), at most {} allowed (round {}: {})",
                    j.missing,
                    j.rounds,
                    g.max_missing,
                    verdict.round,
                    if verdict.missing.is_empty() {
                        "-".to_owned()
                    } else {
                        verdict.missing.join(",")
                    }
                ),
            ));
        }
        if j.outliers > 0 {
            let (d, v) = verdict.outliers.first().cloned().unwrap_or_default();
            return Some((
                State::RolledBack,
                format!(
                    "band gate: device {d} read {} in round {}, more than {} median absolute deviations from the other devices",
                    crate::wire::Shown(v),
                    verdict.round,
                    g.max_mad.unwrap_or_default()
                ),
            ));
        }
        if j.rounds >= self.rounds {
            let reason = format!("passed every gate for {} round(s)", j.rounds);
            return Some(if self.manual {
                (
                    State::Waiting,
                    format!("{reason}; waiting for `fleetmeter plugin rollout promote`"),
                )
            } else {
                (State::Promoted, reason)
            });
        }
        None
    }
}

/// One canary round's findings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub round: u64,
    /// `(device, why)`.
    pub failures: Vec<(String, String)>,
    pub missing: Vec<String>,
    /// `(device, value)`.
    pub outliers: Vec<(String, f64)>,
}

/// Judges round `round` of a sensor canary from the round's readings and what each device
/// node says (its failed call, the plugin it ran). `members`: the live devices.
pub fn judge_sensor(
    r: &Rollout,
    round: u64,
    members: &[String],
    readings: &BTreeMap<String, f64>,
    adverts: &BTreeMap<String, Advert>,
) -> Verdict {
    let mut verdict = Verdict {
        round,
        ..Verdict::default()
    };
    let want = advertised(&r.artifact.sha256);
    let canaries: Vec<&String> = members.iter().filter(|d| r.is_canary(d)).collect();
    if canaries.is_empty() {
        verdict.missing.push("(no canary device is live)".into());
        return verdict;
    }
    for device in &canaries {
        let advert = adverts.get(*device);
        let failed = advert
            .and_then(|a| a.failed.as_ref())
            .filter(|f| f.round == round);
        if let Some(failed) = failed {
            verdict.failures.push((
                (*device).clone(),
                crate::text::one_line_bounded(&failed.why, 200),
            ));
        } else if readings.contains_key(*device) {
            // The digest alone is not enough: a device whose own sensor has the same bytes
            // but cannot switch (to the rollout's configuration) says why.
            let runs = advert.and_then(|a| a.sensor.as_deref());
            let error = advert.and_then(|a| a.rollout_error.as_deref());
            if runs != Some(want.as_str()) || error.is_some() {
                let why = error.map_or_else(
                    || "it has not switched".to_owned(),
                    |e| crate::text::one_line_bounded(e, 200),
                );
                verdict.failures.push((
                    (*device).clone(),
                    format!("does not run the artifact ({why})"),
                ));
            }
        } else {
            verdict.missing.push((*device).clone());
        }
    }
    if let Some(max_mad) = r.gates.max_mad {
        let mut others: Vec<f64> = readings
            .iter()
            .filter(|(d, _)| !r.is_canary(d))
            .map(|(_, v)| *v)
            .collect();
        if others.len() >= 3 {
            let median = median(&mut others);
            let mut deviations: Vec<f64> = others.iter().map(|v| (v - median).abs()).collect();
            // A fleet that reads the same value everywhere has a MAD of 0: a floor keeps the
            // band from being a point.
            let mad = median_of(&mut deviations).max(1e-9 * median.abs().max(1.0));
            for device in &canaries {
                if let Some(v) = readings.get(*device)
                    && (v - median).abs() > max_mad * mad
                {
                    verdict.outliers.push(((*device).clone(), *v));
                }
            }
        }
    }
    verdict
}

fn median(values: &mut [f64]) -> f64 {
    median_of(values)
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        rollout::record::{Kind, tests::rollout},
        wire::Failed,
    };

    #[test]
    fn gates_roll_back_on_a_failure_and_promote_after_k_rounds() {
        let members = vec!["1".to_owned(), "2".to_owned(), "3".to_owned()];
        let mut r = rollout(Kind::Sensor, State::Canary);
        let want = Advert {
            sensor: Some(advertised(&r.artifact.sha256)),
            ..Advert::default()
        };
        let adverts: BTreeMap<String, Advert> = [("1".to_owned(), want.clone())].into();
        let readings: BTreeMap<String, f64> =
            [("1".to_owned(), 20.0), ("2".to_owned(), 21.0)].into();
        for round in 10..12 {
            let v = judge_sensor(&r, round, &members, &readings, &adverts);
            assert_eq!(
                v,
                Verdict {
                    round,
                    ..Verdict::default()
                }
            );
            assert_eq!(r.apply(&v), None);
        }
        // The same round twice is judged once.
        assert_eq!(
            r.apply(&Verdict {
                round: 11,
                ..Verdict::default()
            }),
            None
        );
        let v = judge_sensor(&r, 12, &members, &readings, &adverts);
        assert_eq!(r.apply(&v).unwrap().0, State::Promoted);

        let mut r = rollout(Kind::Sensor, State::Canary);
        let failed = Advert {
            failed: Some(Failed {
                round: 10,
                why: "trap: unreachable".into(),
            }),
            ..want.clone()
        };
        let adverts: BTreeMap<String, Advert> = [("1".to_owned(), failed)].into();
        let v = judge_sensor(&r, 10, &members, &BTreeMap::new(), &adverts);
        assert_eq!(v.failures.len(), 1);
        let (state, reason) = r.apply(&v).unwrap();
        assert_eq!(state, State::RolledBack);
        assert!(reason.contains("trap: unreachable"), "{reason}");

        // A canary still on its old plugin is a failure; a missing one is missing.
        let r = rollout(Kind::Sensor, State::Canary);
        let v = judge_sensor(&r, 10, &members, &readings, &BTreeMap::new());
        assert_eq!(v.failures.len(), 1);
        let v = judge_sensor(&r, 10, &members, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(v.missing, vec!["1".to_owned()]);
    }

    #[test]
    fn the_band_gate_uses_the_other_devices() {
        let mut r = rollout(Kind::Sensor, State::Canary);
        r.gates.max_mad = Some(5.0);
        let members: Vec<String> = (1..=5).map(|i| i.to_string()).collect();
        let want = Advert {
            sensor: Some(advertised(&r.artifact.sha256)),
            ..Advert::default()
        };
        let adverts: BTreeMap<String, Advert> = [("1".to_owned(), want)].into();
        let mut readings: BTreeMap<String, f64> =
            [("2", 20.0), ("3", 21.0), ("4", 19.0), ("5", 20.5)]
                .into_iter()
                .map(|(d, v)| (d.to_owned(), v))
                .collect();
        readings.insert("1".into(), 22.0);
        assert!(
            judge_sensor(&r, 10, &members, &readings, &adverts)
                .outliers
                .is_empty()
        );
        readings.insert("1".into(), 80.0);
        assert_eq!(
            judge_sensor(&r, 10, &members, &readings, &adverts)
                .outliers
                .len(),
            1
        );
    }
}
