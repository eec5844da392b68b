//! Rate limiting for repeated warnings (spans dropped, clients refused, host unreachable):
//! at most one line per interval, carrying how many events it stands for.
//!
//! Owns the counting and the timing only. Must never log or sleep itself.

use std::time::{Duration, Instant};

/// How often a repeated warning may be logged.
pub const WARN_EVERY: Duration = Duration::from_secs(1);

/// Events since the last report, and when that report was.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    pending: u64,
}

impl RateLimit {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            pending: 0,
        }
    }

    /// Counts `n` events at `now`; when a report is due, the events it covers (those since the
    /// previous report, these included).
    pub fn add(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.pending += n;
        if self.pending == 0 {
            return None;
        }
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_interval_carries_what_was_held_back() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(1));
        assert_eq!(r.add(0, t0), None, "nothing happened");
        assert_eq!(r.add(3, t0), Some(3), "the first event is reported at once");
        assert_eq!(r.add(2, t0 + Duration::from_millis(10)), None);
        assert_eq!(r.add(1, t0 + Duration::from_millis(900)), None);
        assert_eq!(r.add(4, t0 + Duration::from_secs(1)), Some(7));
        assert_eq!(r.add(1, t0 + Duration::from_millis(1500)), None);
    }
}
