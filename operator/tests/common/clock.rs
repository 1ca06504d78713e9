//! A clock that stands still.

use k8s_openapi::jiff::Timestamp;
use switchyard_operator::clock::Clock;

pub struct FixedClock(pub Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

/// The moment every test starts at.
pub fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}
