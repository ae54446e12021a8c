//! Aggregator: the mean after dropping `fraction` of the readings at each end.
//!
//! Config: `fraction` in [0, 0.5), default 0.1 — with 10 devices, the lowest and the
//! highest reading are dropped. At least one reading always remains.

use fleetmeter_sdk::prelude::*;

pub struct TrimmedMean {
    fraction: f64,
}

impl Aggregator for TrimmedMean {
    fn new(config: &Config) -> Result<Self> {
        config.allow_only(&["fraction"])?;
        let fraction: f64 = config.parse_or("fraction", 0.1)?;
        if !(0.0..0.5).contains(&fraction) {
            bail!("config `fraction`: need 0 <= fraction < 0.5, got {fraction}");
        }
        Ok(Self { fraction })
    }

    fn aggregate(&mut self, readings: &[Reading]) -> Result<Option<f64>> {
        let mut values: Vec<f64> = readings.iter().map(|r| r.value).collect();
        if values.is_empty() {
            return Ok(None);
        }
        values.sort_by(f64::total_cmp);
        // n - 2 * floor(n * f) >= 1 for f < 0.5, so `kept` is never empty.
        let cut = (values.len() as f64 * self.fraction).floor() as usize;
        let kept = &values[cut..values.len() - cut];
        Ok(Some(kept.iter().sum::<f64>() / kept.len() as f64))
    }
}

export_aggregator!(TrimmedMean);

#[cfg(test)]
mod tests {
    use super::*;

    fn trimmed(fraction: &str, values: &[f64]) -> Option<f64> {
        let readings: Vec<Reading> = values.iter().map(|v| Reading::new("d", *v)).collect();
        TrimmedMean::new(&Config::new([("fraction", fraction)]))
            .unwrap()
            .aggregate(&readings)
            .unwrap()
    }

    #[test]
    fn drops_the_extremes() {
        let values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1000.0];
        assert_eq!(trimmed("0.1", &values), Some(5.5));
        assert_eq!(trimmed("0", &[1.0, 2.0, 3.0, 10.0]), Some(4.0));
        assert_eq!(trimmed("0.25", &[1.0, 2.0, 3.0, 10.0]), Some(2.5));
        assert_eq!(trimmed("0.49", &[7.0]), Some(7.0));
        assert_eq!(trimmed("0.1", &[]), None);
    }

    #[test]
    fn rejects_out_of_range_fraction() {
        for bad in ["0.5", "-0.1", "NaN", "half"] {
            let err = TrimmedMean::new(&Config::new([("fraction", bad)]))
                .err()
                .unwrap();
            assert!(
                err.message().starts_with("config `fraction`"),
                "{bad}: {err}"
            );
        }
    }
}
