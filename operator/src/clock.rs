//! Wall-clock time behind a trait, so rollout timeouts run on paused tokio
//! time in tests (their clock is in `tests/common/clock.rs`).

use k8s_openapi::jiff::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}
