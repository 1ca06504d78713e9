//! The Lease record as one candidate has observed it, judged by that
//! candidate's own monotonic clock (client-go's `observedRecord` and
//! `observedTime`), and the records it writes. Pure: no API calls.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

/// The Lease as last read or written, and when its record last changed.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The whole object: its resourceVersion guards the next write.
    lease: Lease,
    /// The local moment the record (the spec) was last seen to differ from
    /// what was seen before. Never the holder's `renewTime`: that is the
    /// holder's clock, and clocks of two replicas may disagree.
    changed_at: Instant,
}

impl Observed {
    pub fn new(lease: Lease, now: Instant) -> Observed {
        Observed {
            lease,
            changed_at: now,
        }
    }

    /// Take in the Lease as read or written at `now`: the object is kept for
    /// its resourceVersion, the change time moves only when the record changed.
    pub fn update(&mut self, lease: Lease, now: Instant) {
        if lease.spec != self.lease.spec {
            self.changed_at = now;
        }
        self.lease = lease;
    }

    pub fn spec(&self) -> Option<&LeaseSpec> {
        self.lease.spec.as_ref()
    }

    /// The holder, if the Lease is held at all.
    pub fn holder(&self) -> Option<&str> {
        holder_of(self.spec())
    }

    /// Whether the record names `identity` as its holder (client-go's `IsLeader`).
    pub fn is_held_by(&self, identity: &str) -> bool {
        self.holder() == Some(identity)
    }

    /// Whether the record is still in force at `now`: less than its
    /// `leaseDurationSeconds` (`fallback` when it has none) since it last changed.
    pub fn is_valid(&self, now: Instant, fallback: Duration) -> bool {
        let duration = self
            .spec()
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(fallback, Duration::from_secs);
        self.changed_at + duration > now
    }

    /// The Lease with us as holder, as of the observed resourceVersion.
    pub fn claimed(&self, identity: &str, duration: Duration, now: Timestamp) -> Lease {
        Lease {
            spec: Some(next_record(self.spec(), identity, duration, now)),
            ..self.lease.clone()
        }
    }

    /// The Lease given up (client-go's `release`): no holder, and a duration
    /// of one second for candidates that still look at it.
    pub fn released(&self, now: Timestamp) -> Lease {
        let spec = LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: self.spec().and_then(|s| s.lease_transitions),
            ..LeaseSpec::default()
        };
        Lease {
            spec: Some(spec),
            ..self.lease.clone()
        }
    }
}

/// The holder a record names, if the Lease is held at all.
fn holder_of(spec: Option<&LeaseSpec>) -> Option<&str> {
    spec.and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// The record to write when taking or keeping the Lease (`previous`: the
/// record read, `None` when the Lease does not exist yet). A renewal keeps
/// `acquireTime` and the transition count; a take-over counts a transition.
pub fn next_record(
    previous: Option<&LeaseSpec>,
    identity: &str,
    duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
    let (acquire_time, lease_transitions) = match previous {
        Some(spec) if holder_of(previous) == Some(identity) => {
            (spec.acquire_time.clone(), transitions)
        }
        Some(_) => (Some(MicroTime(now)), transitions + 1),
        None => (Some(MicroTime(now)), 0),
    };
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(seconds(duration)),
        acquire_time,
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(lease_transitions),
        ..LeaseSpec::default()
    }
}

/// `leaseDurationSeconds` as the API stores it.
fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}
