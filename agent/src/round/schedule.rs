//! When a leader's rounds start, stop collecting and commit. Rounds start every period
//! measured from the previous start, so commits do not drift by the time each takes; a new
//! period applies from the next round; after a stall longer than a period the schedule starts
//! again from now instead of firing the missed rounds back to back.

use std::time::Duration;

use tokio::time::Instant;

/// One round's deadlines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    start: Instant,
    period: Duration,
    collect_fraction: f64,
}

impl Schedule {
    /// A round that starts at `start` (a leader's own release: now; a round taken over from
    /// the previous leader: when it released it, see `round::handover`).
    pub fn new(start: Instant, period: Duration, collect_fraction: f64) -> Self {
        Self {
            start,
            period,
            collect_fraction,
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Until when the leader waits for stragglers.
    pub fn collect_until(&self) -> Instant {
        self.start + self.period.mul_f64(self.collect_fraction)
    }

    /// When the round is committed and the next one released.
    pub fn commit_at(&self) -> Instant {
        self.start + self.period
    }

    /// Moves to the next round, with `period` (the one in force now) from then on.
    pub fn advance(&mut self, period: Duration, now: Instant) {
        self.start = self.commit_at();
        self.period = period;
        if self.start + self.period < now {
            self.start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Runs `rounds` rounds the way the leader does: sleep to the commit, "work" for
    /// `work(n)`, advance. Returns each round's start and commit, relative to the beginning.
    async fn run(
        rounds: usize,
        mut period: impl FnMut(usize) -> Duration,
        mut work: impl FnMut(usize) -> Duration,
    ) -> Vec<(Duration, Duration)> {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0, period(0), 0.8);
        let mut seen = Vec::new();
        for n in 0..rounds {
            tokio::time::sleep_until(schedule.commit_at()).await;
            seen.push((schedule.start() - t0, Instant::now() - t0));
            tokio::time::sleep(work(n)).await;
            schedule.advance(period(n + 1), Instant::now());
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_start_every_period_without_drift() {
        // Each commit takes 300 ms; the rounds still start on the second.
        let seen = run(5, |_| SECOND, |_| Duration::from_millis(300)).await;
        let starts: Vec<u64> = seen.iter().map(|(s, _)| s.as_secs()).collect();
        assert_eq!(starts, [0, 1, 2, 3, 4]);
        for (start, commit) in seen {
            assert_eq!(
                commit - start,
                SECOND,
                "committed one period after the start"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_period_applies_from_the_next_round() {
        // The period changes to 2 s while round 2 (index) runs.
        let seen = run(
            5,
            |n| if n < 3 { SECOND } else { 2 * SECOND },
            |_| Duration::ZERO,
        )
        .await;
        let starts: Vec<u64> = seen.iter().map(|(s, _)| s.as_secs()).collect();
        assert_eq!(starts, [0, 1, 2, 3, 5]);
        assert_eq!(seen[2].1, 3 * SECOND, "the round open keeps its period");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_stall_the_schedule_restarts_from_now() {
        // Round 1's commit stalls for 3.5 s (ZooKeeper slow, say): no burst of late rounds.
        let seen = run(
            4,
            |_| SECOND,
            |n| {
                if n == 1 {
                    Duration::from_millis(3500)
                } else {
                    Duration::ZERO
                }
            },
        )
        .await;
        let starts: Vec<u128> = seen.iter().map(|(s, _)| s.as_millis()).collect();
        assert_eq!(starts, [0, 1000, 5500, 6500]);
        let commits: Vec<u128> = seen.iter().map(|(_, c)| c.as_millis()).collect();
        assert_eq!(commits, [1000, 2000, 6500, 7500]);
    }

    #[tokio::test(start_paused = true)]
    async fn collection_stops_at_the_fraction_of_the_period() {
        let t0 = Instant::now();
        let schedule = Schedule::new(t0, Duration::from_secs(5), 0.8);
        assert_eq!(schedule.collect_until() - t0, Duration::from_secs(4));
        assert_eq!(schedule.commit_at() - t0, Duration::from_secs(5));
        assert_eq!(schedule.period(), Duration::from_secs(5));
    }
}
