//! Coalescing of sync requests: kube-proxy's `BoundedFrequencyRunner` as plain
//! data over tokio's clock, so tests drive it with `tokio::time::pause()` and
//! `advance()`.
//!
//! A request marks work pending. The pending work may run once `min_period` has
//! passed since the previous run started; every request that arrives meanwhile
//! is folded into that one run. The time of the oldest folded request is kept
//! for the network-programming latency.

use std::time::Duration;

use tokio::time::Instant;

/// Allows one run per `min_period`, folding the requests in between.
#[derive(Clone, Debug)]
pub struct SyncLimiter {
    min_period: Duration,
    last_run: Option<Instant>,
    pending_since: Option<Instant>,
}

impl SyncLimiter {
    pub fn new(min_period: Duration) -> SyncLimiter {
        SyncLimiter {
            min_period,
            last_run: None,
            pending_since: None,
        }
    }

    pub fn set_min_period(&mut self, min_period: Duration) {
        self.min_period = min_period;
    }

    /// Work arrived at `now`.
    pub fn request(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// Work is waiting for a run.
    pub fn is_pending(&self) -> bool {
        self.pending_since.is_some()
    }

    /// When the pending work may run; `None` when nothing is pending.
    pub fn next_run(&self) -> Option<Instant> {
        let since = self.pending_since?;
        Some(match self.last_run {
            Some(last) => since.max(last + self.min_period),
            None => since,
        })
    }

    /// The pending work may run at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.next_run().is_some_and(|at| at <= now)
    }

    /// A run starts at `now`: the pending work is taken. Returns when the oldest
    /// folded request arrived.
    pub fn start(&mut self, now: Instant) -> Option<Instant> {
        self.last_run = Some(now);
        self.pending_since.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn first_request_runs_at_once() {
        let mut l = SyncLimiter::new(MIN);
        assert_eq!(l.next_run(), None);
        let t0 = Instant::now();
        l.request(t0);
        assert!(l.is_due(t0));
        assert_eq!(l.start(t0), Some(t0));
        assert!(!l.is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn burst_within_min_period_is_folded_into_one_run() {
        let mut l = SyncLimiter::new(MIN);
        let t0 = Instant::now();
        l.request(t0);
        l.start(t0);
        tokio::time::advance(Duration::from_millis(100)).await;
        let first = Instant::now();
        l.request(first);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(100)).await;
            l.request(Instant::now());
            assert!(!l.is_due(Instant::now()));
        }
        assert_eq!(l.next_run(), Some(t0 + MIN));
        tokio::time::advance(Duration::from_millis(400)).await;
        assert!(l.is_due(Instant::now()));
        assert_eq!(l.start(Instant::now()), Some(first), "oldest request kept");
        assert!(!l.is_due(Instant::now() + MIN));
    }

    #[tokio::test(start_paused = true)]
    async fn request_after_quiet_period_runs_immediately() {
        let mut l = SyncLimiter::new(MIN);
        let t0 = Instant::now();
        l.request(t0);
        l.start(t0);
        tokio::time::advance(Duration::from_secs(5)).await;
        let now = Instant::now();
        l.request(now);
        assert_eq!(l.next_run(), Some(now));
    }

    #[tokio::test(start_paused = true)]
    async fn shorter_min_period_takes_effect_for_pending_work() {
        let mut l = SyncLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        l.start(t0);
        l.request(t0);
        assert_eq!(l.next_run(), Some(t0 + Duration::from_secs(10)));
        l.set_min_period(Duration::from_secs(2));
        assert_eq!(l.next_run(), Some(t0 + Duration::from_secs(2)));
    }
}
