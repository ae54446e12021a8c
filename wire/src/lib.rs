//! The wire contract between the fleet and the measurements API, in one place.
//!
//! - [`Round`]: a committed round, as the leader stores it in its outbox
//!   (`{root}/results/{n}`) and sends it to `POST /api/v1/rounds`, and as the API stores and
//!   lists it. [`Round::validate`] is the one set of rules: the agent checks a result before
//!   it commits it (a result the API would refuse is never produced) and the API checks every
//!   body it is sent.
//! - [`DeviceReading`]: what a device writes to its node, `{root}/devices/{id}`.
//! - [`Shown`]: a value as people read it (the page, the demo, `fleetmeter status`, logs).
//! - The limits ([`MAX_ID_BYTES`], [`MAX_DEVICES`], [`MAX_UNIT_CHARS`], [`MAX_ROUND_JSON`]):
//!   device ids, plugin metadata and fleet size are checked against these at the agent's
//!   start, so the agent and the API cannot disagree.

use serde::{Deserialize, Serialize};

mod shown;
pub use shown::{SIGNIFICANT_DIGITS, Shown};

/// Longest device id, leader id or aggregator label, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 128;
/// Most readings one round may aggregate: the largest fleet fleetmeter supports.
pub const MAX_DEVICES: usize = 10_000;
/// Longest unit, in characters.
pub const MAX_UNIT_CHARS: usize = 16;
/// The largest JSON a valid [`Round`] serializes to: every id at its longest and every byte
/// of it escaped (`"` and `\` take two bytes in JSON; control characters are refused), plus
/// room for the other fields. The API accepts bodies up to this size.
pub const MAX_ROUND_JSON: usize = MAX_DEVICES * (2 * MAX_ID_BYTES + 3) + 8 * 1024;

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
}

/// Why a round is refused; the message names the field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidRound {
    #[error("`value` must be a finite number, got {0}")]
    Value(f64),
    #[error("`count` must be at least 1 (a round without readings publishes nothing)")]
    NoReadings,
    #[error("`devices` lists {0} devices; at most {MAX_DEVICES}")]
    TooManyDevices(usize),
    #[error("`count` is {count} but `devices` lists {devices} devices")]
    CountMismatch { count: u32, devices: usize },
    #[error("`{field}` {problem}")]
    Id {
        field: &'static str,
        problem: InvalidId,
    },
    #[error("`unit` must be at most {MAX_UNIT_CHARS} characters, none of them control characters")]
    Unit,
    #[error("`ts` must be the commit time in milliseconds since the Unix epoch")]
    Timestamp,
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
        Ok(())
    }
}

/// What a device writes to its node, `{root}/devices/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceReading {
    pub round: u64,
    pub value: f64,
    /// When it was sampled, ms since the Unix epoch.
    pub ts: u64,
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
                    unit: Some("a very long unit name".into()),
                    ..round()
                },
                "`unit`",
            ),
        ];
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
