//! Aggregator: the median of the round's readings (the mean of the two middle values when
//! the count is even). One wild device cannot move it.

use fleetmeter_sdk::prelude::*;

pub struct Median;

impl Aggregator for Median {
    fn new(config: &Config) -> Result<Self> {
        config.allow_only(&[])?;
        Ok(Median)
    }

    fn aggregate(&mut self, readings: &[Reading]) -> Result<Option<f64>> {
        let mut values: Vec<f64> = readings.iter().map(|r| r.value).collect();
        if values.is_empty() {
            return Ok(None);
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        Ok(Some(if values.len().is_multiple_of(2) {
            (values[mid - 1] + values[mid]) / 2.0
        } else {
            values[mid]
        }))
    }
}

export_aggregator!(Median);

#[cfg(test)]
mod tests {
    use super::*;

    fn median(values: &[f64]) -> Option<f64> {
        let readings: Vec<Reading> = values.iter().map(|v| Reading::new("d", *v)).collect();
        Median::new(&Config::default())
            .unwrap()
            .aggregate(&readings)
            .unwrap()
    }

    #[test]
    fn odd_even_and_empty() {
        assert_eq!(median(&[1.0, 2.0, 3.0, 10.0]), Some(2.5));
        assert_eq!(median(&[10.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[-4.0]), Some(-4.0));
        assert_eq!(median(&[]), None);
    }
}
