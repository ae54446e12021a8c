use std::{fmt::Display, str::FromStr};

use crate::{Error, Result};

/// A plugin's configuration: the string pairs from agent.toml or `--config key=value`.
///
/// The helpers produce errors that name the key and the bad value, which is what the agent
/// shows when it refuses to start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// Builds a configuration; handy in native unit tests.
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self {
            entries: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The raw value of `key`; the last one wins if a key is repeated.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Parses `key` if present.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(key)
            .map(|raw| {
                raw.trim().parse::<T>().map_err(|err| {
                    Error::new(format!("config `{key}`: invalid value `{raw}`: {err}"))
                })
            })
            .transpose()
    }

    /// Parses `key`, or returns `default` when it is absent. A value that does not parse is
    /// an error naming the key and the value:
    ///
    /// ```
    /// use fleetmeter_sdk::Config;
    ///
    /// let config = Config::new([("step", "2.5"), ("decimals", "two")]);
    /// assert_eq!(config.parse_or("step", 1.0).unwrap(), 2.5);
    /// assert_eq!(config.parse_or("start", 0.0).unwrap(), 0.0);
    /// let err = config.parse_or("decimals", 1u32).unwrap_err().to_string();
    /// assert!(err.contains("decimals") && err.contains("two"), "{err}");
    /// ```
    pub fn parse_or<T>(&self, key: &str, default: T) -> Result<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    /// Fails on any key not in `known`, so a typo in agent.toml is caught at start instead
    /// of silently falling back to a default. The error names the key and lists the known
    /// ones:
    ///
    /// ```
    /// use fleetmeter_sdk::Config;
    ///
    /// let config = Config::new([("stpe", "2")]);
    /// let err = config.allow_only(&["start", "step"]).unwrap_err().to_string();
    /// assert!(err.contains("stpe") && err.contains("start, step"), "{err}");
    /// assert!(Config::new([("step", "2")]).allow_only(&["start", "step"]).is_ok());
    /// ```
    pub fn allow_only(&self, known: &[&str]) -> Result<()> {
        match self
            .entries
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) if known.is_empty() => Err(Error::new(format!(
                "unknown config key `{k}`: this plugin takes no configuration"
            ))),
            Some((k, _)) => Err(Error::new(format!(
                "unknown config key `{k}` (this plugin accepts: {})",
                known.join(", ")
            ))),
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::new(iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_key_and_value() {
        let config = Config::new([("min", "abc")]);
        let err = config.parse_or("min", 1.0_f64).unwrap_err();
        assert_eq!(
            err.message(),
            "config `min`: invalid value `abc`: invalid float literal"
        );
    }

    #[test]
    fn last_value_wins_and_default_applies() {
        let config = Config::new([("n", "1"), ("n", " 2 ")]);
        assert_eq!(config.parse_or("n", 0_u32).unwrap(), 2);
        assert_eq!(config.parse_or("missing", 7_u32).unwrap(), 7);
    }

    #[test]
    fn allow_only_reports_the_unknown_key() {
        let config = Config::new([("min", "1"), ("mxa", "2")]);
        let err = config.allow_only(&["min", "max"]).unwrap_err();
        assert_eq!(
            err.message(),
            "unknown config key `mxa` (this plugin accepts: min, max)"
        );
        let err = Config::new([("x", "1")]).allow_only(&[]).unwrap_err();
        assert!(err.message().contains("takes no configuration"));
        assert!(Config::default().allow_only(&[]).is_ok());
    }
}
