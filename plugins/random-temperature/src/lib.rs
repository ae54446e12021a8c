//! The default sensor: a bounded random walk, like the original devices' temperatures.
//!
//! Config (all optional): `min` (75), `max` (85), `step` (largest move per sample, 1.0),
//! `decimals` (rounding, 1), `seed` (fixed seed for reproducible runs; random by default).

use fleetmeter_sdk::prelude::*;

pub struct RandomTemperature {
    min: f64,
    max: f64,
    step: f64,
    scale: f64,
    value: f64,
    rng: SplitMix64,
}

impl Sensor for RandomTemperature {
    const UNIT: &'static str = "°C";

    fn new(config: &Config) -> Result<Self> {
        config.allow_only(&["min", "max", "step", "decimals", "seed"])?;
        let min: f64 = config.parse_or("min", 75.0)?;
        let max: f64 = config.parse_or("max", 85.0)?;
        let step: f64 = config.parse_or("step", 1.0)?;
        let decimals: u32 = config.parse_or("decimals", 1)?;
        if !(min.is_finite() && max.is_finite() && min < max) {
            bail!("config `min`/`max`: need finite min < max, got min={min} max={max}");
        }
        if !(step.is_finite() && step > 0.0 && step <= max - min) {
            bail!(
                "config `step`: need 0 < step <= max - min ({}), got {step}",
                max - min
            );
        }
        if decimals > 6 {
            bail!("config `decimals`: at most 6, got {decimals}");
        }
        let seed = match config.parse::<u64>("seed")? {
            Some(seed) => seed,
            None => random_seed(),
        };
        let mut rng = SplitMix64(seed);
        let value = min + rng.next_f64() * (max - min);
        Ok(Self {
            min,
            max,
            step,
            scale: 10_f64.powi(decimals as i32),
            value,
            rng,
        })
    }

    fn sample(&mut self) -> Result<f64> {
        let delta = (self.rng.next_f64() * 2.0 - 1.0) * self.step;
        self.value = (self.value + delta).clamp(self.min, self.max);
        let rounded = (self.value * self.scale).round() / self.scale;
        Ok(rounded.clamp(self.min, self.max))
    }
}

export_sensor!(RandomTemperature);

/// A seed from the host's randomness (std's hasher keys come from `wasi:random`).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// SplitMix64: tiny, fast, good enough for simulated readings (not for secrets).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_in_range_and_moves_by_at_most_step() {
        let config = Config::new([("seed", "7")]);
        let mut sensor = RandomTemperature::new(&config).unwrap();
        let mut previous = sensor.sample().unwrap();
        for _ in 0..10_000 {
            let v = sensor.sample().unwrap();
            assert!((75.0..=85.0).contains(&v), "{v} out of range");
            assert!(
                (v - previous).abs() <= 1.0 + 0.1 + 1e-9,
                "{previous} -> {v}"
            );
            previous = v;
        }
    }

    #[test]
    fn a_seed_makes_it_reproducible() {
        let config = Config::new([("seed", "42"), ("min", "0"), ("max", "1000")]);
        let a: Vec<f64> = {
            let mut s = RandomTemperature::new(&config).unwrap();
            (0..5).map(|_| s.sample().unwrap()).collect()
        };
        let mut s = RandomTemperature::new(&config).unwrap();
        let b: Vec<f64> = (0..5).map(|_| s.sample().unwrap()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_bad_config_with_the_key() {
        let err = |pairs: &[(&str, &str)]| {
            RandomTemperature::new(&Config::new(pairs.iter().copied()))
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err(&[("min", "90")]).starts_with("config `min`/`max`"));
        assert!(err(&[("step", "0")]).starts_with("config `step`"));
        assert!(err(&[("decimals", "9")]).starts_with("config `decimals`"));
        assert!(err(&[("colour", "red")]).contains("unknown config key `colour`"));
        assert!(err(&[("max", "hot")]).starts_with("config `max`: invalid value `hot`"));
    }
}
