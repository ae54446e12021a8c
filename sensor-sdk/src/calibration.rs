//! `scale` and `offset`: every bundled instrument sensor takes them, applied as
//! `value * scale + offset` (e.g. `scale = 0.001` for millidegrees, `offset = -273.15` for
//! kelvin to degrees Celsius).

use crate::{Config, Error, Result};

/// The config keys this reads.
pub const KEYS: [&str; 2] = ["scale", "offset"];

/// A linear calibration, `value * scale + offset`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// Multiplies the raw value.
    pub scale: f64,
    /// Added after scaling.
    pub offset: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Self {
            scale: 1.0,
            offset: 0.0,
        }
    }
}

impl Calibration {
    /// Reads `scale` (default 1) and `offset` (default 0); both must be finite.
    pub fn from_config(config: &Config) -> Result<Self> {
        let scale: f64 = config.parse_or("scale", 1.0)?;
        let offset: f64 = config.parse_or("offset", 0.0)?;
        if !scale.is_finite() || !offset.is_finite() {
            return Err(Error::new(format!(
                "config `scale` ({scale}) and `offset` ({offset}) must be finite numbers"
            )));
        }
        Ok(Self { scale, offset })
    }

    /// `raw * scale + offset`; an error if the result is not finite.
    pub fn apply(&self, raw: f64) -> Result<f64> {
        let value = raw * self.scale + self.offset;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(Error::new(format!(
                "{raw} * {} + {} is not a finite number",
                self.scale, self.offset
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_and_refuses() {
        let c =
            Calibration::from_config(&Config::new([("scale", "0.001"), ("offset", "-1")])).unwrap();
        assert_eq!(c.apply(23125.0).unwrap(), 22.125);
        assert_eq!(
            Calibration::from_config(&Config::new::<&str, &str>([])).unwrap(),
            Calibration::default()
        );
        assert!(Calibration::from_config(&Config::new([("scale", "x")])).is_err());
        assert!(Calibration::from_config(&Config::new([("scale", "inf")])).is_err());
        assert!(
            Calibration {
                scale: 1e308,
                offset: 0.0
            }
            .apply(1e10)
            .is_err()
        );
    }
}
