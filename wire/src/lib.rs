//! The wire contract between the fleet and the measurements API, in one place.
//!
//! - [`Round`]: a committed round (contract [`VERSION`]), as the leader stores it in its outbox
//!   (`{root}/results/{n}`) and sends it to `POST /api/v1/rounds`, and as the API stores and
//!   lists it. [`Round::validate`] is the one set of rules: the agent checks a result before
//!   it commits it (a result the API would refuse is never produced) and the API checks every
//!   body it is sent.
//! - [`DeviceReading`]: what a device writes to its node, `{root}/devices/{id}`.
//! - [`Quantity`] / [`RoundQuantity`]: a named value with its unit, in a sample and in a
//!   version 4 round ([`check_sample`], [`MAX_QUANTITIES`]).
//! - [`Shown`]: a value as people read it (the page, the demo, `fleetmeter status`, logs).
//! - The limits ([`MAX_ID_BYTES`], [`MAX_DEVICES`], [`MAX_UNIT_CHARS`], [`MAX_ROUND_JSON`]):
//!   device ids, plugin metadata and fleet size are checked against these at the agent's
//!   start, so the agent and the API cannot disagree.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

mod quantity;
mod shown;
pub use quantity::{
    InvalidSample, MAX_QUANTITIES, MAX_QUANTITY_NAME, Quantity, RoundQuantity, check_sample,
    valid_quantity_name,
};
pub use shown::{SIGNIFICANT_DIGITS, Shown, ShownSample};

/// Longest device id, leader id or aggregator label, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 128;
/// Most readings one round may aggregate: the largest fleet fleetmeter supports.
pub const MAX_DEVICES: usize = 10_000;
/// Longest unit, in characters.
pub const MAX_UNIT_CHARS: usize = 16;
/// The largest JSON a valid [`Round`] serializes to: every id at its longest and every byte
/// of it escaped (`"` and `\` take two bytes in JSON; control characters are refused), each
/// device's value at its longest (`-1.7976931348623157e308`, 24 bytes, and a comma), plus
/// room for the other fields; and each of [`MAX_QUANTITIES`] quantities with its name, unit
/// and value and every device's value of it (`null` at most). The API accepts bodies up to
/// this size.
pub const MAX_ROUND_JSON: usize = MAX_DEVICES * (2 * MAX_ID_BYTES + 3 + 25)
    + MAX_QUANTITIES * (MAX_DEVICES * 25 + MAX_QUANTITY_NAME + 4 * MAX_UNIT_CHARS + 64)
    + 8 * 1024;

/// The contract's version, `"version"` in a [`Round`]. 1: the round's aggregate only (a round
/// without `"version"` is a version 1 round, as agents before version 2 send them). 2: also
/// each device's value, `"values"`, in the order of `"devices"`. 3: also, while a plugin
/// rollout runs, the rollout in effect (`"rollout"`) and a shadow aggregator's value
/// (`"shadow"`). 4: also every quantity of the round's samples (`"quantities"`, each with its
/// unit, its aggregate and each device's value); `value`, `unit` and `values` are then those
/// of the round's primary quantity (the first with a value), `values` only when every
/// device carried it.
pub const VERSION: u32 = 4;

/// The oldest contract version this side reads and writes.
pub const OLDEST: u32 = 1;

/// The newest version an agent that does not advertise its versions reads: fleetmeter 0.1.0,
/// the last release without the advertisement, reads versions 1 and 2.
pub const UNADVERTISED: u32 = 2;

fn version_1() -> u32 {
    1
}

/// A version 1 round serializes as older agents and APIs wrote it: without `"version"`.
fn is_version_1(version: &u32) -> bool {
    *version == 1
}

/// One committed round.
///
/// ```json
/// {"round": 42, "value": 80.5, "count": 3, "devices": ["1", "2", "3"],
///  "aggregator": "mean@0.1.0", "leader": "2", "ts": 1764201600000, "unit": "°C",
///  "counter": 126}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Round {
    /// The round number; also the API's idempotency key.
    pub round: u64,
    /// The aggregated value (finite).
    pub value: f64,
    /// How many readings were aggregated (= `devices.len()`, at least 1).
    pub count: u32,
    /// The devices whose readings were aggregated.
    pub devices: Vec<String>,
    /// The aggregator plugin, `NAME@VERSION`.
    pub aggregator: String,
    /// The device that led the round.
    pub leader: String,
    /// When the leader committed the round, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Unit of `value`, from the sensor plugin (e.g. "°C").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The fleet's measurement counter (`{root}/counter`) once this round was committed: the
    /// sum of `count` over the fleet's committed rounds. A fleet whose ZooKeeper state was
    /// lost continues it from the API's latest round. Absent in rounds stored before it
    /// existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<i64>,
    /// The contract's version this round follows ([`VERSION`]); 1 when absent.
    #[serde(default = "version_1", skip_serializing_if = "is_version_1")]
    pub version: u32,
    /// Version 2: each device's reading, `values[i]` from `devices[i]` (finite). Absent in a
    /// version 1 round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f64>>,
    /// Version 3: what a new aggregator in canary computed from the same readings (not
    /// published: `value` is the published aggregator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
    /// Version 3: the fleet's plugin rollout in effect when the round was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutMark>,
    /// Version 4: each quantity of the round's samples, in the order the devices reported
    /// them. A fleet whose sensor reports one value has one, named after the sensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantities: Option<Vec<RoundQuantity>>,
}

/// A shadow aggregator's result for a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    /// `NAME@VERSION` of the aggregator in canary.
    pub aggregator: String,
    /// Its value (finite), or none when it published nothing or failed.
    #[serde(default)]
    pub value: Option<f64>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A plugin rollout, as a round records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutMark {
    /// The rollout's id.
    pub id: u64,
    /// `sensor` or `aggregator`.
    pub kind: String,
    /// `NAME@VERSION` of the artifact rolled out.
    pub plugin: String,
    /// `canary`, `waiting`, `promoted`, `rolled_back` or `aborted`.
    pub state: String,
}

/// The longest shadow error kept in a round.
pub const MAX_SHADOW_ERROR: usize = 256;

/// Why a round is refused; the message names the field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidRound {
    /// The aggregated value is NaN or infinite.
    #[error("`value` must be a finite number, got {0}")]
    Value(f64),
    /// A round of no readings (it publishes nothing).
    #[error("`count` must be at least 1 (a round without readings publishes nothing)")]
    NoReadings,
    /// More devices than the largest supported fleet.
    #[error("`devices` lists {0} devices; at most {MAX_DEVICES}")]
    TooManyDevices(usize),
    /// `count` and the number of `devices` differ.
    #[error("`count` is {count} but `devices` lists {devices} devices")]
    CountMismatch {
        /// The round's `count`.
        count: u32,
        /// How many `devices` it lists.
        devices: usize,
    },
    /// A device id (in `leader` or `devices`) breaks [`validate_device_id`].
    #[error("`{field}` {problem}")]
    Id {
        /// `leader` or `devices[i]`.
        field: &'static str,
        /// What is wrong with it.
        problem: InvalidId,
    },
    /// The unit is too long or holds control characters.
    #[error("`unit` must be at most {MAX_UNIT_CHARS} characters, none of them control characters")]
    Unit,
    /// The timestamp is not a plausible commit time.
    #[error("`ts` must be the commit time in milliseconds since the Unix epoch")]
    Timestamp,
    /// A contract version this side does not know.
    #[error(
        "`version` {0} is not one this side knows (1 to {VERSION}): upgrade the API before the agents"
    )]
    Version(u32),
    /// A version 2 or 3 round without its per-device values.
    #[error("`values` must be present in a version 2 or 3 round, one per device")]
    ValuesMissing,
    /// Per-device values in a version 1 round.
    #[error("`values` is only part of version 2 rounds; this round says version 1")]
    ValuesInVersion1,
    /// Not one value per device.
    #[error("`values` lists {values} values for {devices} devices")]
    ValuesMismatch {
        /// How many `values`.
        values: usize,
        /// How many `devices`.
        devices: usize,
    },
    /// `shadow` or `rollout` in a round of version 1 or 2.
    #[error("`shadow` and `rollout` are only part of version 3 rounds")]
    FieldsOfVersion3,
    /// A shadow or rollout field out of bounds.
    #[error(
        "`{0}` is out of bounds (labels of at most {MAX_ID_BYTES} bytes, no control characters, a finite value)"
    )]
    Rollout(&'static str),
    /// `quantities` in a round of version 1 to 3, or none in a version 4 round.
    #[error("`quantities` must be present in a version 4 round, and only there")]
    Quantities,
    /// A quantity out of bounds (name, unit, count, a value that is not finite, not one value
    /// per device, the same name twice).
    #[error("`quantities[{index}]` {problem}")]
    Quantity {
        /// Its position in `quantities`.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// `value`, `unit` or `values` that are not the primary quantity's.
    #[error(
        "`{0}` must be the primary quantity's (the first of `quantities` with a value; `values` only when every device carried it)"
    )]
    Primary(&'static str),
    /// A per-device value is NaN or infinite.
    #[error("`values[{index}]` must be a finite number, got {value}")]
    ValueNotFinite {
        /// Its position in `values`.
        index: usize,
        /// The value.
        value: f64,
    },
}

/// Why an id is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be 1 to {MAX_ID_BYTES} bytes of printable characters without `/`, not `.` or `..` (got {shown:?})"
)]
pub struct InvalidId {
    /// The id, cut to 80 characters.
    pub shown: String,
}

/// The rule for device ids (and so for a round's `leader` and `devices[]`): 1 to
/// [`MAX_ID_BYTES`] bytes, no control characters, no `/`, not `.` or `..` (it names a
/// ZooKeeper node).
pub fn validate_device_id(id: &str) -> Result<(), InvalidId> {
    if id.is_empty()
        || id.len() > MAX_ID_BYTES
        || id.contains('/')
        || id == "."
        || id == ".."
        || id.chars().any(char::is_control)
    {
        return Err(InvalidId {
            shown: id.chars().take(80).collect(),
        });
    }
    Ok(())
}

/// The rule for a unit: at most [`MAX_UNIT_CHARS`] characters, no control characters.
pub fn valid_unit(unit: &str) -> bool {
    unit.chars().count() <= MAX_UNIT_CHARS && !unit.chars().any(char::is_control)
}

impl Round {
    /// The first problem with the round, naming the field.
    pub fn validate(&self) -> Result<(), InvalidRound> {
        if !self.value.is_finite() {
            return Err(InvalidRound::Value(self.value));
        }
        if self.count == 0 {
            return Err(InvalidRound::NoReadings);
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(InvalidRound::TooManyDevices(self.devices.len()));
        }
        if self.devices.len() != self.count as usize {
            return Err(InvalidRound::CountMismatch {
                count: self.count,
                devices: self.devices.len(),
            });
        }
        let id = |field, value: &str| {
            validate_device_id(value).map_err(|problem| InvalidRound::Id { field, problem })
        };
        for device in &self.devices {
            id("devices[]", device)?;
        }
        id("leader", &self.leader)?;
        if self.aggregator.is_empty()
            || self.aggregator.len() > MAX_ID_BYTES
            || self.aggregator.chars().any(char::is_control)
        {
            return Err(InvalidRound::Id {
                field: "aggregator",
                problem: InvalidId {
                    shown: self.aggregator.chars().take(80).collect(),
                },
            });
        }
        if let Some(unit) = &self.unit
            && !valid_unit(unit)
        {
            return Err(InvalidRound::Unit);
        }
        if self.ts == 0 {
            return Err(InvalidRound::Timestamp);
        }
        if self.version < 3 && (self.shadow.is_some() || self.rollout.is_some()) {
            return Err(InvalidRound::FieldsOfVersion3);
        }
        let label =
            |l: &str| !l.is_empty() && l.len() <= MAX_ID_BYTES && !l.chars().any(char::is_control);
        if let Some(shadow) = &self.shadow
            && (!label(&shadow.aggregator)
                || shadow.value.is_some_and(|v| !v.is_finite())
                || shadow
                    .error
                    .as_ref()
                    .is_some_and(|e| e.len() > MAX_SHADOW_ERROR || e.chars().any(char::is_control)))
        {
            return Err(InvalidRound::Rollout("shadow"));
        }
        if let Some(mark) = &self.rollout
            && (!label(&mark.kind) || !label(&mark.plugin) || !label(&mark.state))
        {
            return Err(InvalidRound::Rollout("rollout"));
        }
        match (self.version, &self.values) {
            (1, None) | (4, None) => {}
            (1, Some(_)) => return Err(InvalidRound::ValuesInVersion1),
            (2 | 3, None) => return Err(InvalidRound::ValuesMissing),
            (2..=4, Some(values)) => {
                if values.len() != self.devices.len() {
                    return Err(InvalidRound::ValuesMismatch {
                        values: values.len(),
                        devices: self.devices.len(),
                    });
                }
                if let Some((index, &value)) =
                    values.iter().enumerate().find(|(_, v)| !v.is_finite())
                {
                    return Err(InvalidRound::ValueNotFinite { index, value });
                }
            }
            (other, _) => return Err(InvalidRound::Version(other)),
        }
        match (self.version, &self.quantities) {
            (4, Some(quantities)) => self.validate_quantities(quantities)?,
            (1..=3, None) => {}
            (1..=4, _) => return Err(InvalidRound::Quantities),
            (other, _) => return Err(InvalidRound::Version(other)),
        }
        Ok(())
    }

    fn validate_quantities(&self, quantities: &[RoundQuantity]) -> Result<(), InvalidRound> {
        let bad = |index, problem: String| InvalidRound::Quantity { index, problem };
        if quantities.is_empty() || quantities.len() > MAX_QUANTITIES {
            return Err(bad(
                quantities.len(),
                format!("1 to {MAX_QUANTITIES} quantities, got {}", quantities.len()),
            ));
        }
        for (index, q) in quantities.iter().enumerate() {
            if !valid_quantity_name(&q.name) {
                return Err(bad(
                    index,
                    format!(
                        "`name` {}",
                        InvalidSample::Name(q.name.chars().take(40).collect())
                    ),
                ));
            }
            if quantities[..index].iter().any(|p| p.name == q.name) {
                return Err(bad(index, format!("`name` {:?} appears twice", q.name)));
            }
            if !valid_unit(&q.unit) {
                return Err(bad(
                    index,
                    format!(
                        "`unit` must be at most {MAX_UNIT_CHARS} characters, none of them control characters"
                    ),
                ));
            }
            if q.value.is_some_and(|v| !v.is_finite()) {
                return Err(bad(index, "`value` must be a finite number or null".into()));
            }
            if q.values.len() != self.devices.len() {
                return Err(bad(
                    index,
                    format!(
                        "lists {} values for {} devices",
                        q.values.len(),
                        self.devices.len()
                    ),
                ));
            }
            if q.values.iter().flatten().any(|v| !v.is_finite()) {
                return Err(bad(index, "`values` must be finite numbers or null".into()));
            }
        }
        let Some(primary) = quantities.iter().find(|q| q.value.is_some()) else {
            return Err(InvalidRound::Primary("value"));
        };
        if primary.value != Some(self.value) {
            return Err(InvalidRound::Primary("value"));
        }
        if self.unit.as_deref().unwrap_or_default() != primary.unit {
            return Err(InvalidRound::Primary("unit"));
        }
        if let Some(values) = &self.values
            && !values
                .iter()
                .map(|&v| Some(v))
                .eq(primary.values.iter().copied())
        {
            return Err(InvalidRound::Primary("values"));
        }
        Ok(())
    }

    /// The round as a version 4 round of one quantity, `name`, from its `value`, `unit` and
    /// `values` (as a fleet whose sensor reports one value publishes it).
    #[must_use]
    pub fn one_quantity(mut self, name: &str) -> Self {
        self.version = VERSION;
        let values = self.values.clone().unwrap_or_default();
        self.quantities = Some(vec![RoundQuantity {
            name: name.to_owned(),
            unit: self.unit.clone().unwrap_or_default(),
            value: Some(self.value),
            values: values.into_iter().map(Some).collect(),
        }]);
        self
    }

    /// The primary quantity of a version 4 round: the first with a value.
    pub fn primary(&self) -> Option<&RoundQuantity> {
        self.quantities.as_ref()?.iter().find(|q| q.value.is_some())
    }

    /// The quantities device `index` (in `devices`) carried: from `quantities` in a version 4
    /// round, its one value (named `fallback`, the round's unit) in versions 2 and 3, none in
    /// version 1.
    pub fn device_quantities(&self, index: usize, fallback: &str) -> Vec<Quantity> {
        match &self.quantities {
            Some(quantities) => quantities
                .iter()
                .filter_map(|q| {
                    Some(Quantity {
                        name: q.name.clone(),
                        value: (*q.values.get(index)?)?,
                        unit: q.unit.clone(),
                    })
                })
                .collect(),
            None => self
                .values
                .as_ref()
                .and_then(|v| v.get(index))
                .map(|&value| Quantity {
                    name: fallback.to_owned(),
                    value,
                    unit: self.unit.clone().unwrap_or_default(),
                })
                .into_iter()
                .collect(),
        }
    }

    /// The round as contract `version` writes it (at most [`VERSION`]): version 1 has no
    /// per-device values; before version 4 there are no quantities, and a primary quantity
    /// that some devices did not carry keeps only the devices that did.
    #[must_use]
    pub fn in_version(mut self, version: u32) -> Self {
        if version < 4 {
            if self.values.is_none()
                && let Some(primary) = self.primary()
            {
                let kept: Vec<(String, f64)> = self
                    .devices
                    .iter()
                    .zip(&primary.values)
                    .filter_map(|(d, v)| Some((d.clone(), (*v)?)))
                    .collect();
                self.count = u32::try_from(kept.len()).unwrap_or(u32::MAX);
                (self.devices, self.values) = {
                    let (devices, values): (Vec<_>, Vec<_>) = kept.into_iter().unzip();
                    (devices, Some(values))
                };
            }
            self.quantities = None;
            self.version = self.version.min(3);
        }
        if version < 3 {
            self.version = self.version.min(2);
            self.shadow = None;
            self.rollout = None;
        }
        if version < 2 {
            self.version = 1;
            self.values = None;
        }
        self
    }

    /// Each device with its value (version 2 and later; the primary quantity's in version 4,
    /// where a device that did not carry it is left out), in the round's order; empty for
    /// version 1.
    pub fn readings(&self) -> impl Iterator<Item = (&str, f64)> {
        let primary = self.values.is_none().then(|| self.primary()).flatten();
        self.devices
            .iter()
            .enumerate()
            .filter_map(move |(i, device)| {
                let value = match (&self.values, primary) {
                    (Some(values), _) => values.get(i).copied(),
                    (None, Some(p)) => p.values.get(i).copied().flatten(),
                    (None, None) => None,
                };
                Some((device.as_str(), value?))
            })
    }
}

/// What a device writes to its node, `{root}/devices/{id}`: its latest reading, and what it
/// runs ([`Advert`], absent from agents before 0.2.0). Readers ignore fields they do not
/// know, so a newer agent may add some.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceReading {
    /// The round it was taken in.
    pub round: u64,
    /// The sensor's value: the sample's first quantity (what agents before quantities read).
    pub value: f64,
    /// When it was sampled, ms since the Unix epoch.
    pub ts: u64,
    /// The whole sample, each quantity with its unit (absent from agents before 0.2.0: the
    /// reading is then one quantity, `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantities: Option<Vec<Quantity>>,
    /// What the device runs.
    #[serde(flatten)]
    pub advert: Advert,
}

/// What a device runs, as its node says (before its first reading too): the leader writes
/// fleet entries in the newest contract version every member reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// The agent's version (`fleetmeter --version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The contract versions it reads and writes, `[oldest, newest]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire: Option<[u32; 2]>,
    /// The sensor it runs, `sha256:HEX` of the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<String>,
    /// Its sensor's last failed call: a node with this and no reading for the round says
    /// why the reading is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failed>,
    /// Why it cannot run what the fleet's rollout asks of it (fetch, signature, load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_error: Option<String>,
}

/// A failed sensor call, as a device node reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// The round whose reading it cost.
    pub round: u64,
    /// What failed (trap, timeout, the plugin's error), on one line.
    pub why: String,
}

impl Advert {
    /// The newest contract version the device reads: [`UNADVERTISED`] when it does not say.
    pub fn reads_up_to(&self) -> u32 {
        self.wire.map_or(UNADVERTISED, |[_, newest]| newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round() -> Round {
        Round {
            round: 7,
            value: 80.5,
            count: 2,
            devices: vec!["1".into(), "2".into()],
            aggregator: "mean@0.1.0".into(),
            leader: "1".into(),
            ts: 1_764_201_600_000,
            unit: Some("°C".into()),
            counter: Some(14),
            version: VERSION,
            values: Some(vec![80.0, 81.0]),
            shadow: None,
            rollout: None,
            quantities: Some(vec![RoundQuantity {
                name: "random-temperature".into(),
                unit: "°C".into(),
                value: Some(80.5),
                values: vec![Some(80.0), Some(81.0)],
            }]),
        }
    }

    #[test]
    fn a_good_round_passes() {
        assert_eq!(round().validate(), Ok(()));
    }

    #[test]
    fn each_problem_names_its_field() {
        let cases: Vec<(Round, &str)> = vec![
            (
                Round {
                    value: f64::NAN,
                    ..round()
                },
                "`value`",
            ),
            (
                Round {
                    value: f64::INFINITY,
                    ..round()
                },
                "`value`",
            ),
            (
                Round {
                    count: 0,
                    devices: vec![],
                    ..round()
                },
                "`count` must be at least 1",
            ),
            (
                Round {
                    count: 3,
                    ..round()
                },
                "`count` is 3 but `devices` lists 2",
            ),
            (
                Round {
                    leader: String::new(),
                    ..round()
                },
                "`leader`",
            ),
            (
                Round {
                    devices: vec!["1".into(), "a\nb".into()],
                    ..round()
                },
                "`devices[]`",
            ),
            (
                Round {
                    devices: vec!["1".into(), "a/b".into()],
                    ..round()
                },
                "`devices[]`",
            ),
            (
                Round {
                    aggregator: "x".repeat(200),
                    ..round()
                },
                "`aggregator`",
            ),
            (Round { ts: 0, ..round() }, "`ts`"),
            (
                Round {
                    version: VERSION + 1,
                    ..round()
                },
                "is not one this side knows",
            ),
            (
                Round {
                    quantities: None,
                    ..round()
                },
                "`quantities` must be present",
            ),
            (
                Round {
                    value: 1.0,
                    ..round()
                },
                "`value` must be the primary quantity's",
            ),
            (
                Round {
                    values: Some(vec![80.0, 82.0]),
                    ..round()
                },
                "`values` must be the primary quantity's",
            ),
            (
                Round {
                    values: None,
                    ..round().in_version(3)
                },
                "`values` must be present",
            ),
            (
                Round {
                    version: 1,
                    quantities: None,
                    ..round()
                },
                "`values` is only part of version 2",
            ),
            (
                Round {
                    version: 3,
                    ..round()
                },
                "`quantities` must be present in a version 4 round, and only there",
            ),
            (
                Round {
                    values: Some(vec![1.0]),
                    ..round()
                },
                "`values` lists 1 values for 2 devices",
            ),
            (
                Round {
                    values: Some(vec![1.0, f64::NAN]),
                    ..round()
                },
                "`values[1]`",
            ),
            (
                Round {
                    unit: Some("a very long unit name".into()),
                    ..round()
                },
                "`unit`",
            ),
        ];
        let mut bad_name = round();
        bad_name.quantities.as_mut().unwrap()[0].name = "a b".into();
        let mut short = round();
        short.quantities.as_mut().unwrap()[0].values.pop();
        let mut twice = round();
        let q = twice.quantities.as_ref().unwrap()[0].clone();
        twice.quantities.as_mut().unwrap().push(q);
        let mut none = round();
        none.quantities.as_mut().unwrap()[0].value = None;
        let cases = cases.into_iter().chain([
            (bad_name, "`quantities[0]` `name`"),
            (short, "`quantities[0]` lists 1 values for 2 devices"),
            (
                twice,
                "`quantities[1]` `name` \"random-temperature\" appears twice",
            ),
            (none, "`value` must be the primary"),
        ]);
        for (bad, field) in cases {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<Round>(
            r#"{"round":1,"value":1,"count":1,"devices":["1"],"aggregator":"mean@0.1.0",
               "leader":"1","ts":1,"colour":"red"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn a_round_stored_before_the_counter_field_still_reads() {
        let old: Round = serde_json::from_str(
            r#"{"round":1,"value":1,"count":1,"devices":["1"],"aggregator":"mean@0.1.0",
               "leader":"1","ts":1}"#,
        )
        .unwrap();
        assert_eq!(old.counter, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("counter"));
    }

    #[test]
    fn a_version_1_round_from_an_older_agent_is_valid_and_has_no_readings() {
        let old: Round = serde_json::from_str(
            r#"{"round":1,"value":1.5,"count":2,"devices":["1","2"],"aggregator":"mean@0.1.0",
               "leader":"1","ts":1,"counter":2}"#,
        )
        .unwrap();
        assert_eq!((old.version, old.values.as_ref()), (1, None));
        assert_eq!(old.validate(), Ok(()));
        assert_eq!(old.readings().count(), 0);
        let again = serde_json::to_string(&old).unwrap();
        assert!(
            !again.contains("version") && !again.contains("values"),
            "{again}"
        );
    }

    #[test]
    fn a_version_3_round_carries_the_rollout_and_a_shadow_value_and_older_versions_drop_them() {
        let mut r = round();
        r.shadow = Some(Shadow {
            aggregator: "median@0.1.0".into(),
            value: Some(80.5),
            error: None,
        });
        r.rollout = Some(RolloutMark {
            id: 2,
            kind: "aggregator".into(),
            plugin: "median@0.1.0".into(),
            state: "canary".into(),
        });
        assert_eq!(r.validate(), Ok(()));
        let back: Round = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let v2 = r.clone().in_version(2);
        assert_eq!((v2.version, &v2.shadow, &v2.rollout), (2, &None, &None));
        assert_eq!(v2.validate(), Ok(()));
        let mut forged = r.clone();
        forged.version = 2;
        assert_eq!(forged.validate(), Err(InvalidRound::FieldsOfVersion3));
        let mut bad = r;
        bad.shadow.as_mut().unwrap().error = Some("x\ny".into());
        assert_eq!(bad.validate(), Err(InvalidRound::Rollout("shadow")));
    }

    #[test]
    fn a_version_4_round_carries_every_quantity_and_older_versions_keep_the_primary() {
        let mut r = round();
        r.devices.push("3".into());
        r.count = 3;
        r.values = None;
        r.unit = Some("Cel".into());
        r.value = 21.5;
        r.quantities = Some(vec![
            RoundQuantity {
                name: "temperature".into(),
                unit: "Cel".into(),
                value: Some(21.5),
                values: vec![Some(21.0), None, Some(22.0)],
            },
            RoundQuantity {
                name: "humidity".into(),
                unit: "%".into(),
                value: Some(40.0),
                values: vec![Some(39.0), Some(40.0), Some(41.0)],
            },
        ]);
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(r.primary().unwrap().name, "temperature");
        assert_eq!(
            r.device_quantities(1, "x"),
            [Quantity::new("humidity", 40.0, "%")]
        );
        assert_eq!(r.readings().collect::<Vec<_>>(), [("1", 21.0), ("3", 22.0)]);
        let back: Round = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        // Version 3 has one value per device: device 2 did not carry the primary quantity.
        let v3 = r.clone().in_version(3);
        assert_eq!(v3.validate(), Ok(()));
        assert_eq!(
            (v3.devices.as_slice(), v3.values.as_deref(), v3.count),
            (
                ["1".to_owned(), "3".to_owned()].as_slice(),
                Some([21.0, 22.0].as_slice()),
                2
            )
        );
        assert_eq!(
            v3.device_quantities(1, "t"),
            [Quantity::new("t", 22.0, "Cel")]
        );
        // With every device carrying it, `values` is the primary's.
        let mut full = r;
        full.quantities.as_mut().unwrap()[0].values[1] = Some(21.5);
        full.values = Some(vec![21.0, 21.5, 22.0]);
        assert_eq!(full.validate(), Ok(()));
    }

    #[test]
    fn a_version_2_round_pairs_each_device_with_its_value() {
        let r = round().in_version(2);
        assert_eq!(r.readings().collect::<Vec<_>>(), [("1", 80.0), ("2", 81.0)]);
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains(r#""version":2,"values":[80.0,81.0]"#),
            "{json}"
        );
        let back: Round = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_largest_valid_round_fits_max_round_json() {
        // Every id at the byte limit and made of the character JSON escapes.
        let devices: Vec<String> = (0..MAX_DEVICES)
            .map(|i| format!("{i}{}", "\"".repeat(MAX_ID_BYTES - i.to_string().len())))
            .collect();
        let big = Round {
            count: MAX_DEVICES as u32,
            devices,
            aggregator: "a".repeat(MAX_ID_BYTES),
            leader: "\"".repeat(MAX_ID_BYTES),
            unit: Some("\u{1F321}".repeat(MAX_UNIT_CHARS)),
            value: -f64::MAX,
            round: u64::MAX,
            ts: u64::MAX,
            counter: Some(i64::MIN),
            version: VERSION,
            values: Some(vec![-f64::MAX; MAX_DEVICES]),
            shadow: None,
            rollout: None,
            quantities: Some(
                (0..MAX_QUANTITIES)
                    .map(|i| RoundQuantity {
                        name: format!("{i}{}", "q".repeat(MAX_QUANTITY_NAME - 2)),
                        unit: "\u{1F321}".repeat(MAX_UNIT_CHARS),
                        value: Some(-f64::MAX),
                        values: vec![Some(-f64::MAX); MAX_DEVICES],
                    })
                    .collect(),
            ),
        };
        assert_eq!(big.validate(), Ok(()));
        let json = serde_json::to_vec(&big).unwrap();
        assert!(
            json.len() <= MAX_ROUND_JSON,
            "{} > {MAX_ROUND_JSON}",
            json.len()
        );
    }
}
