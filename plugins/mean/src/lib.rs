//! The default aggregator: the arithmetic mean of the round's readings.

use fleetmeter_sdk::prelude::*;

pub struct Mean;

impl Aggregator for Mean {
    fn new(config: &Config) -> Result<Self> {
        config.allow_only(&[])?;
        Ok(Mean)
    }

    fn aggregate(&mut self, readings: &[Reading]) -> Result<Option<f64>> {
        if readings.is_empty() {
            return Ok(None);
        }
        let sum: f64 = readings.iter().map(|r| r.value).sum();
        Ok(Some(sum / readings.len() as f64))
    }
}

export_aggregator!(Mean);

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(values: &[f64]) -> Vec<Reading> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Reading::new((i + 1).to_string(), *v))
            .collect()
    }

    #[test]
    fn mean_of_values() {
        let mut mean = Mean::new(&Config::default()).unwrap();
        assert_eq!(
            mean.aggregate(&readings(&[1.0, 2.0, 3.0, 10.0])).unwrap(),
            Some(4.0)
        );
        assert_eq!(
            mean.aggregate(&readings(&[83.0, 83.0, 84.0])).unwrap(),
            Some(250.0 / 3.0)
        );
        assert_eq!(mean.aggregate(&[]).unwrap(), None);
    }

    #[test]
    fn takes_no_config() {
        assert!(Mean::new(&Config::new([("fraction", "0.1")])).is_err());
    }
}
