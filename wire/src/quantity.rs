//! Named quantities: what one sample carries (contract 0.2 sensors report several, each with
//! its unit) and what a version 4 round publishes for each.
//!
//! The rules here bound everything a plugin can put into a round, a device node, a metrics
//! label or a chart title: at most [`MAX_QUANTITIES`] per sample, names of the plugin-name
//! alphabet, units within [`MAX_UNIT_CHARS`](crate::MAX_UNIT_CHARS).

use serde::{Deserialize, Serialize};

use crate::valid_unit;

/// Most quantities one sample (and so one round) may carry.
pub const MAX_QUANTITIES: usize = 16;
/// Longest quantity name, in bytes: the same rule as a plugin's name, so that a sensor of
/// contract 0.1.0 gives its one quantity its own name.
pub const MAX_QUANTITY_NAME: usize = 64;

/// One named value of a sample, with its unit (UCUM-style: `Cel`, `V`, `A`, `W`, `%`, `hPa`;
/// empty when unitless).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantity {
    /// Its name, e.g. `temperature` ([`valid_quantity_name`]).
    pub name: String,
    /// The value (finite).
    pub value: f64,
    /// Its unit ([`valid_unit`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
}

impl Quantity {
    /// A quantity; handy in tests.
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
        }
    }
}

/// What a version 4 round publishes for one quantity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundQuantity {
    /// Its name ([`valid_quantity_name`]).
    pub name: String,
    /// The unit every device reported it in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
    /// The aggregated value (finite), or `null` when the aggregator published nothing for it.
    pub value: Option<f64>,
    /// Each device's value, in the order of the round's `devices`; `null` where a device's
    /// sample did not carry it.
    pub values: Vec<Option<f64>>,
}

/// The rule for a quantity's name: 1 to [`MAX_QUANTITY_NAME`] bytes of ASCII letters, digits,
/// `-`, `_` and `.`, starting with a letter or digit. It becomes a metrics label value, a
/// chart title and part of a URL, so nothing else is allowed.
pub fn valid_quantity_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_QUANTITY_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Why a sample is refused; the message names the quantity.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidSample {
    /// No quantity at all.
    #[error("the sample carries no quantity")]
    Empty,
    /// More than [`MAX_QUANTITIES`].
    #[error("the sample carries {0} quantities; at most {MAX_QUANTITIES}")]
    TooMany(usize),
    /// A name outside [`valid_quantity_name`].
    #[error(
        "quantity name {0:?} must be 1 to {MAX_QUANTITY_NAME} ASCII letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    Name(String),
    /// The same name twice.
    #[error("quantity {0:?} appears twice in one sample")]
    Duplicate(String),
    /// A unit outside [`valid_unit`].
    #[error(
        "quantity {name:?}: unit {unit:?} must be at most {} characters, none of them control characters",
        crate::MAX_UNIT_CHARS
    )]
    Unit {
        /// The quantity.
        name: String,
        /// Its unit, cut to 40 characters.
        unit: String,
    },
    /// NaN or infinite.
    #[error("quantity {name:?} is not a finite number ({value})")]
    NotFinite {
        /// The quantity.
        name: String,
        /// Its value.
        value: f64,
    },
}

/// The shown form of a name or unit in an error: escaped and cut, whatever it holds.
fn shown(text: &str) -> String {
    text.chars().take(40).collect()
}

/// The first problem with `sample` (a sensor's output or a device node's `quantities`).
pub fn check_sample(sample: &[Quantity]) -> Result<(), InvalidSample> {
    if sample.is_empty() {
        return Err(InvalidSample::Empty);
    }
    if sample.len() > MAX_QUANTITIES {
        return Err(InvalidSample::TooMany(sample.len()));
    }
    for (i, q) in sample.iter().enumerate() {
        if !valid_quantity_name(&q.name) {
            return Err(InvalidSample::Name(shown(&q.name)));
        }
        if sample[..i].iter().any(|p| p.name == q.name) {
            return Err(InvalidSample::Duplicate(q.name.clone()));
        }
        if !valid_unit(&q.unit) {
            return Err(InvalidSample::Unit {
                name: q.name.clone(),
                unit: shown(&q.unit),
            });
        }
        if !q.value.is_finite() {
            return Err(InvalidSample::NotFinite {
                name: q.name.clone(),
                value: q.value,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_plugin_name_alphabet() {
        for good in [
            "temperature",
            "rh",
            "v_l1",
            "power.active",
            "random-temperature",
            "0",
        ] {
            assert!(valid_quantity_name(good), "{good}");
        }
        let long = "a".repeat(MAX_QUANTITY_NAME + 1);
        for bad in [
            "",
            "-x",
            "_x",
            "a b",
            "a/b",
            "température",
            "a\"b",
            "a{b}",
            &long,
        ] {
            assert!(!valid_quantity_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn each_problem_of_a_sample_names_the_quantity() {
        let ok = Quantity::new("t", 1.0, "Cel");
        assert_eq!(check_sample(std::slice::from_ref(&ok)), Ok(()));
        assert_eq!(check_sample(&[]), Err(InvalidSample::Empty));
        let many: Vec<Quantity> = (0..=MAX_QUANTITIES)
            .map(|i| Quantity::new(format!("q{i}"), 1.0, ""))
            .collect();
        assert_eq!(
            check_sample(&many),
            Err(InvalidSample::TooMany(MAX_QUANTITIES + 1))
        );
        assert_eq!(
            check_sample(&[ok.clone(), ok.clone()]),
            Err(InvalidSample::Duplicate("t".into()))
        );
        let err = check_sample(&[Quantity::new("a b", 1.0, "")]).unwrap_err();
        assert!(err.to_string().contains("\"a b\""), "{err}");
        let err = check_sample(&[Quantity::new("t", 1.0, "x".repeat(17))]).unwrap_err();
        assert!(err.to_string().contains("quantity \"t\": unit"), "{err}");
        let err = check_sample(&[Quantity::new("t", f64::NAN, "")]).unwrap_err();
        assert!(err.to_string().contains("not a finite"), "{err}");
    }

    #[test]
    fn a_quantity_round_trips_and_refuses_unknown_fields() {
        let q = Quantity::new("rh", 40.5, "%");
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(json, r#"{"name":"rh","value":40.5,"unit":"%"}"#);
        assert_eq!(serde_json::from_str::<Quantity>(&json).unwrap(), q);
        assert!(serde_json::from_str::<Quantity>(r#"{"name":"a","value":1,"x":1}"#).is_err());
        let unitless = serde_json::to_string(&Quantity::new("n", 1.0, "")).unwrap();
        assert_eq!(unitless, r#"{"name":"n","value":1.0}"#);
    }
}
