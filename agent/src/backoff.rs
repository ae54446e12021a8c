//! Capped exponential back-off with jitter, for every retry loop of the agent: reaching
//! ZooKeeper, rebuilding an expired session, publishing to an API that is down.
//!
//! The delay sequence comes from `backon` (doubling from `initial`, capped at `max`); the
//! jitter is ours, drawn from `rand`, because backon's only adds up to one whole delay (a
//! retry could then wait twice `max`): here each delay is scaled by a factor in [0.5, 1.5),
//! so agents that failed together do not retry in lockstep and the mean stays the nominal
//! delay.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A retry schedule: call [`Backoff::next_delay`] after each failure and
/// [`Backoff::reset`] after a success.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    jitter: bool,
}

impl Backoff {
    /// Jittered delays doubling from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(initial)
            .with_max_delay(max.max(initial))
            .with_factor(2.0)
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            jitter: true,
        }
    }

    /// The same schedule without jitter (for loops that only one process runs).
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // `without_max_times`: the iterator never ends; the fallback only guards the type.
        let nominal = self.delays.next().unwrap_or(Duration::from_secs(1));
        // backon multiplies in f32 (200 ms comes out as 200.000003 ms): round to the
        // microsecond so that the nominal schedule is exact.
        let nominal = Duration::from_micros(
            u64::try_from((nominal.as_nanos() + 500) / 1000).unwrap_or(u64::MAX),
        );
        if self.jitter {
            jitter(nominal)
        } else {
            nominal
        }
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

/// `delay` scaled by a random factor in [0.5, 1.5).
pub fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_after_a_success() {
        let mut backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(700)).without_jitter();
        let delays: Vec<u128> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700, 700]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half_and_varies() {
        let delays: Vec<Duration> = (0..200).map(|_| jitter(Duration::from_secs(2))).collect();
        for d in &delays {
            assert!(
                *d >= Duration::from_secs(1) && *d < Duration::from_secs(3),
                "{d:?}"
            );
        }
        let low = delays
            .iter()
            .filter(|d| **d < Duration::from_secs(2))
            .count();
        // 200 fair draws all on one side of the middle: probability 2^-199.
        assert!(
            low > 0 && low < delays.len(),
            "jitter must vary, not come from a clock's constant digits: {low} of 200 below 2 s"
        );
    }

    #[test]
    fn jittered_delays_stay_around_the_nominal_schedule() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        for nominal in [100, 200, 400, 400] {
            let d = backoff.next_delay().as_secs_f64() * 1000.0;
            let nominal = f64::from(nominal);
            assert!(
                d >= nominal * 0.5 && d < nominal * 1.5,
                "{d} ms vs {nominal}"
            );
        }
    }
}
