//! A round result as the leader publishes it, and the checks it must pass before anything
//! is stored.

use serde::{Deserialize, Serialize};

/// Longest device id, leader id or aggregator name accepted.
pub const MAX_ID_LEN: usize = 128;
/// Most devices one round may list.
pub const MAX_DEVICES: usize = 10_000;

/// One committed round: `POST /api/v1/rounds` body and `GET /api/v1/rounds` item.
///
/// ```json
/// {"round": 42, "value": 80.5, "count": 3, "devices": ["1", "2", "3"],
///  "aggregator": "mean@0.1.0", "leader": "2", "ts": 1764201600000, "unit": "°C"}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Round {
    /// The round number; also the idempotency key.
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
}

/// Why a round is refused (422); the message names the field.
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
    #[error("`{field}` must be 1 to {MAX_ID_LEN} printable characters, got {value:?}")]
    Id { field: &'static str, value: String },
    #[error("`unit` must be at most 16 printable characters")]
    Unit,
    #[error("`ts` must be the commit time in milliseconds since the Unix epoch")]
    Timestamp,
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
        for device in &self.devices {
            check_id("devices[]", device)?;
        }
        check_id("leader", &self.leader)?;
        check_id("aggregator", &self.aggregator)?;
        if let Some(unit) = &self.unit
            && (unit.chars().count() > 16 || unit.chars().any(char::is_control))
        {
            return Err(InvalidRound::Unit);
        }
        if self.ts == 0 {
            return Err(InvalidRound::Timestamp);
        }
        Ok(())
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), InvalidRound> {
    if value.is_empty() || value.len() > MAX_ID_LEN || value.chars().any(char::is_control) {
        return Err(InvalidRound::Id {
            field,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// A value stored through the original API's `GET /nuevo?dato=V`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LegacyValue {
    pub value: f64,
    /// Server time when it was stored, ms since the Unix epoch.
    pub ts: u64,
    /// Storage sequence number (keeps equal values at the same millisecond apart).
    pub seq: u64,
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
}
