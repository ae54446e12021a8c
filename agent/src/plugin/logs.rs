//! One plugin's log budget: lines and bytes per call, and a sustained rate per second across
//! calls (a token bucket that holds at most one call's budget). What goes over is dropped
//! and counted; the runner writes one "suppressed" line at the end of the call.

use std::time::Instant;

use super::Limits;

/// Lines and bytes dropped, for the summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Suppressed {
    pub lines: u64,
    pub bytes: u64,
}

#[derive(Debug)]
pub(crate) struct LogGate {
    lines_per_call: u32,
    bytes_per_call: u64,
    lines_per_second: f64,
    bytes_per_second: f64,
    call_lines: u32,
    call_bytes: u64,
    line_tokens: f64,
    byte_tokens: f64,
    refilled: Instant,
    suppressed: Suppressed,
}

impl LogGate {
    pub fn new(limits: &Limits) -> Self {
        Self {
            lines_per_call: limits.log_lines_per_call,
            bytes_per_call: limits.log_bytes_per_call,
            lines_per_second: f64::from(limits.log_lines_per_second),
            bytes_per_second: limits.log_bytes_per_second as f64,
            call_lines: 0,
            call_bytes: 0,
            line_tokens: f64::from(limits.log_lines_per_call),
            byte_tokens: limits.log_bytes_per_call as f64,
            refilled: Instant::now(),
            suppressed: Suppressed::default(),
        }
    }

    /// A new call starts with its whole per-call budget.
    pub fn begin_call(&mut self) {
        self.call_lines = 0;
        self.call_bytes = 0;
    }

    /// Whether a line of `bytes` may be written now (and, if so, it is charged).
    pub fn admit(&mut self, bytes: usize) -> bool {
        self.admit_at(bytes, Instant::now())
    }

    fn admit_at(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.line_tokens = (self.line_tokens + elapsed * self.lines_per_second)
            .min(f64::from(self.lines_per_call));
        self.byte_tokens =
            (self.byte_tokens + elapsed * self.bytes_per_second).min(self.bytes_per_call as f64);
        let bytes64 = bytes as u64;
        let fits = self.call_lines < self.lines_per_call
            && self.call_bytes.saturating_add(bytes64) <= self.bytes_per_call
            && self.line_tokens >= 1.0
            && self.byte_tokens >= bytes as f64;
        if fits {
            self.call_lines += 1;
            self.call_bytes += bytes64;
            self.line_tokens -= 1.0;
            self.byte_tokens -= bytes as f64;
        } else {
            self.suppressed.lines += 1;
            self.suppressed.bytes = self.suppressed.bytes.saturating_add(bytes64);
        }
        fits
    }

    /// What was dropped since the last time this was asked, if anything.
    pub fn take_suppressed(&mut self) -> Option<Suppressed> {
        let taken = std::mem::take(&mut self.suppressed);
        (taken.lines > 0).then_some(taken)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn gate(
        lines_per_call: u32,
        bytes_per_call: u64,
        per_second: u32,
        bytes_per_second: u64,
    ) -> LogGate {
        LogGate::new(&Limits {
            log_lines_per_call: lines_per_call,
            log_bytes_per_call: bytes_per_call,
            log_lines_per_second: per_second,
            log_bytes_per_second: bytes_per_second,
            ..Limits::default()
        })
    }

    #[test]
    fn a_call_gets_its_line_budget_then_the_rest_is_counted() {
        let mut g = gate(3, 1000, 1000, 100_000);
        let t = Instant::now();
        g.begin_call();
        let admitted = (0..10).filter(|_| g.admit_at(10, t)).count();
        assert_eq!(admitted, 3);
        assert_eq!(
            g.take_suppressed(),
            Some(Suppressed {
                lines: 7,
                bytes: 70
            })
        );
        assert_eq!(g.take_suppressed(), None, "reported once");
    }

    #[test]
    fn a_call_gets_its_byte_budget() {
        let mut g = gate(100, 25, 1000, 100_000);
        let t = Instant::now();
        g.begin_call();
        assert!(g.admit_at(10, t));
        assert!(g.admit_at(10, t));
        assert!(!g.admit_at(10, t), "30 bytes > 25");
        assert!(g.admit_at(5, t), "a shorter line still fits");
    }

    #[test]
    fn the_rate_refills_across_calls_but_never_above_one_call() {
        let mut g = gate(5, 1_000_000, 2, 1_000_000);
        let t0 = Instant::now();
        g.begin_call();
        assert_eq!((0..5).filter(|_| g.admit_at(1, t0)).count(), 5);
        // Next call, 1 s later: the bucket refilled 2 lines, not 5.
        g.begin_call();
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..5).filter(|_| g.admit_at(1, t1)).count(), 2);
        // After a long quiet time the bucket holds one call's budget, no more.
        g.begin_call();
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| g.admit_at(1, t2)).count(), 5);
    }

    #[test]
    fn zero_silences_the_plugin() {
        let mut g = gate(0, 0, 0, 0);
        g.begin_call();
        assert!(!g.admit(1));
        assert_eq!(g.take_suppressed().map(|s| s.lines), Some(1));
    }
}
